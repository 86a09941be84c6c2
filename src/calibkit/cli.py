"""The ``calibkit`` command.

``calibkit report DUMP`` tabulates how calibrated an evaluation dump is and
what each calibrator (fitted on validation rows) makes of it, reading the dump
chunk by chunk; ``--json`` writes the numbers (``--json -``: to standard
output), ``--plot`` the reliability diagrams and ``--html`` one self-contained
HTML page (see :mod:`calibkit.html`). ``calibkit evaluate`` is another name of
``calibkit report`` (same flags, same output). ``calibkit fit`` /
``calibkit apply`` fit a calibrator to a dump and write calibrated
probabilities, chunk by chunk (see :mod:`calibkit.report` and
:mod:`calibkit.io`). ``calibkit monitor`` follows a JSON Lines stream of
predictions (see :mod:`calibkit.monitor`).

User errors (a missing, empty, truncated or foreign file, a missing array,
bad options, bad data, an output path that is one of the inputs) print one
line on stderr naming the file and saying what to do, and exit with code 2.
Every command reads its dumps through :func:`calibkit.io.open_dump`, and
every file it writes goes through :func:`calibkit._files.atomic_output`: a
temporary in the output's folder, renamed over the output only when the
command succeeds, so a failure (or SIGTERM) leaves the old file as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import pathlib
import sys
import threading
from collections.abc import Sequence

import numpy as np


class UsageError(SystemExit):
    """A user error: `main` prints its one-line message and returns exit code 2."""


from .report import METHODS

METHOD_NAMES = tuple(METHODS)
EXAMPLE_METHODS = "temperature,vector,isotonic,histogram"


def _in_memory(dump, advice):
    """The scores and labels of `dump` as arrays: memory-mapped ones as they are (no copy), others (compressed
    members, shards, Parquet) gathered block by block into one array each; `advice` says what to do when they
    do not fit in memory."""
    from .io import DenseDump

    if isinstance(dump.scores, np.ndarray) and isinstance(dump.labels, np.ndarray) \
            and not isinstance(dump, DenseDump):
        return dump.scores, dump.labels
    try:
        return dump.take(np.ones(dump.n_rows, dtype=bool))
    except MemoryError:
        raise UsageError(f"calibkit: {dump.name}: its {dump.n_rows:,} rows ({dump.n_rows * dump.row_bytes / 2**30:.1f}"
                         f" GiB) do not fit in memory; {advice}") from None


def _check_sizes(args):
    """Every size flag through the library's checks, before anything is read or allocated."""
    from ._validation import check_n_bins

    if getattr(args, "n_bins", None) is not None:
        try:
            check_n_bins(args.n_bins)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"calibkit {args.command}: {_cli_words(exc)}") from None


def _inputs(*paths):
    """The files a command reads (a directory of shards stands for every file in it): no output may be one."""
    import os

    out = []
    for p in paths:
        if p is None:
            continue
        if os.path.isdir(p):
            out.extend(os.path.join(p, n) for n in sorted(os.listdir(p)))
        else:
            out.append(p)
    return out


def _cmd_monitor(args) -> int:
    from . import monitor

    if args.every < 1:
        raise UsageError("calibkit: --every must be >= 1")
    stdin = args.input in (None, "-")
    try:
        # Bytes: each line is decoded on its own, and a line that is not UTF-8 is rejected, not fatal.
        source = sys.stdin.buffer if stdin else open(args.input, "rb")
    except OSError as exc:
        print(f"calibkit monitor: cannot read {args.input}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        return monitor.run(source, every=args.every, window=args.window, n_bins=args.n_bins,
                           bootstrap=args.bootstrap, seed=args.seed, state=args.state, prometheus=args.prometheus,
                           smooth=args.smooth, cumulative=args.cumulative,
                           serve=args.serve, resume_input=args.resume_input, backend=args.backend,
                           input_path=None if stdin else args.input)
    except (ValueError, TypeError, OSError, ImportError) as exc:  # ImportError: --serve without prometheus_client
        print(f"calibkit monitor: {_cli_words(exc)}", file=sys.stderr)
        return 2
    finally:
        if not stdin:
            source.close()


def example_path() -> pathlib.Path:
    """The example dump inside the package (see :mod:`calibkit.datasets`); a usage error if it is missing."""
    from .datasets import example_path as packaged

    try:
        return packaged()
    except FileNotFoundError as e:
        raise UsageError(f"calibkit: {e}") from None


def _progress(total, quiet, what):
    """A tqdm bar on stderr (rows done), or a no-op when stderr is not a terminal or --quiet."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, lambda: None
    bar = tqdm(total=total, unit="rows", unit_scale=True, desc=what, file=sys.stderr, leave=False)
    state = {"done": 0}

    def update(done):
        bar.update(done - state["done"])
        state["done"] = done

    return update, bar.close


def _staged_progress(quiet, what, unit="rows"):
    """``(update, stage, close)`` of a tqdm bar per stage on stderr (see :func:`calibkit.report.report`): a pass
    counts its own rows against the dump's row count, a fit shows its name and the time it has taken. All three
    are no-ops when stderr is not a terminal or with --quiet."""
    if quiet or not sys.stderr.isatty():
        return None, None, lambda: None
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None, lambda: None
    state = {"bar": None, "start": 0, "done": 0, "ticker": None}

    def close():
        if state["ticker"] is not None:  # stop the fit's clock first
            stop, thread = state["ticker"]
            stop.set()
            thread.join()
            state["ticker"] = None
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    def tick(bar, stop):
        while not stop.wait(0.5):
            bar.refresh()

    def stage(name, rows):
        close()
        state["start"] = state["done"]
        if rows is None:  # a fit: no rows to count, only the time it takes, its clock kept running
            state["bar"] = tqdm(total=None, desc=f"{what}: {name}", file=sys.stderr, leave=False,
                                bar_format="{desc} [{elapsed}]")
            stop = threading.Event()
            thread = threading.Thread(target=tick, args=(state["bar"], stop), daemon=True,
                                      name="calibkit-progress")
            thread.start()
            state["ticker"] = (stop, thread)
        else:
            state["bar"] = tqdm(total=rows, unit=unit, unit_scale=True, desc=f"{what}: {name}", file=sys.stderr,
                                leave=False)

    def update(done):
        state["done"] = done
        bar = state["bar"]
        if bar is not None:
            bar.update(done - state["start"] - bar.n)

    return update, stage, close


def _open(path, args, **kw):
    from . import io

    kw.setdefault("labels", getattr(args, "labels", None))
    kw.setdefault("mask", getattr(args, "mask", None))
    return io.open_dump(path, from_logits=args.from_logits, scores_key=getattr(args, "scores_key", None),
                        labels_key=getattr(args, "labels_key", None), axis=getattr(args, "class_axis", 1),
                        ignore_index=getattr(args, "ignore_index", None), **kw)


def _plot_format(path, command, flag="--plot"):
    """The figure format of ``--plot PATH`` (from its suffix), checked before any work (pyplot is not imported:
    the figures are drawn on plain matplotlib Figures, whatever backend the user has)."""
    import pathlib

    try:
        import matplotlib  # noqa: F401
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError(f"calibkit {command}: {flag} {path}: figures need matplotlib: pip install "
                         "'calibkit[plot]'") from None
    fmt = pathlib.Path(path).suffix[1:].lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise UsageError(f"calibkit {command}: {flag} {path}: unknown figure format {fmt or '(no suffix)'!r}; "
                         f"end the name with one of .{', .'.join(sorted(supported))}")
    return fmt


def _group_ids(spec, path, cmd):
    """The --groups ids: a .npy file, else an array of the .npz dump (test_SPEC first) or a Parquet column."""
    import os

    if spec.endswith(".npy") or os.path.isfile(spec):
        try:
            return np.load(spec, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"calibkit {cmd}: --groups: cannot read {spec} as a .npy file ({exc})") from None
    p = str(path)
    if p.endswith(".npz"):
        with np.load(p, allow_pickle=False) as z:
            for key in (f"test_{spec}", spec):
                if key in z.files:
                    return z[key]
            raise UsageError(f"calibkit {cmd}: --groups: {p} holds no array {spec!r} (arrays: {', '.join(z.files)})")
    if p.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq

            return pq.read_table(p, columns=[spec]).column(spec).to_numpy()
        except (ImportError, KeyError, ValueError) as exc:
            raise UsageError(f"calibkit {cmd}: --groups: cannot read the column {spec!r} of {p} ({exc})") from None
    raise UsageError(f"calibkit {cmd}: --groups: {spec} is not a .npy file, and the dump is not an .npz or "
                     "Parquet file to read a column from")


def _cmd_report(args) -> int:
    from . import datasets, io, report
    from ._files import atomic_output

    cmd = args.command
    if args.dump is not None and args.scores is not None:
        raise UsageError(f"calibkit {cmd}: give a DUMP or --scores, not both")
    dump_path = args.dump if args.dump is not None else args.scores
    if args.example and dump_path:
        raise UsageError(f"calibkit {cmd}: give a DUMP or --example, not both")
    path = example_path() if args.example else dump_path
    if path is None and args.json and args.json.endswith((".npy", ".npz", ".parquet", ".arrow", ".feather")):
        raise UsageError(f"calibkit {cmd}: --json took {args.json} as the file to write; give the DUMP before "
                         "--json, or write --json - (standard output) or --json FILE.json")
    if path is None:
        raise UsageError(f"calibkit {cmd}: give a DUMP (.npz, or .npy with --labels, or a directory of shards), "
                         "--scores S.npy --labels L.npy, or --example")
    _check_sizes(args)
    calibrate = args.calibrate if args.calibrate is not None or not args.example else EXAMPLE_METHODS
    methods = [m.strip() for m in (calibrate or "").split(",") if m.strip()]
    for m in methods:
        if m not in report.METHODS:
            raise UsageError(f"calibkit {cmd}: --calibrate: unknown calibration method {m!r}; choose from "
                             f"{', '.join(METHOD_NAMES)}")
    if args.val and args.val_fraction is not None:
        raise UsageError(f"calibkit {cmd}: give --val or --val-fraction, not both")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"calibkit {cmd}: --val-fraction must be in (0, 1), got {args.val_fraction!r}")
    plot_format = _plot_format(args.plot, cmd) if args.plot else None
    if args.html:
        _plot_format("figures.png", cmd, "--html")  # the page's figures: matplotlib must be there
    to_stdout = args.json == "-"
    inputs = _inputs(path, args.labels, args.val, args.val_labels, args.mask)
    with contextlib.ExitStack() as outputs:  # opened first: a bad output path fails before the work
        json_file = (outputs.enter_context(atomic_output(args.json, "w", inputs=inputs))
                     if args.json and not to_stdout else None)
        plot_file = outputs.enter_context(atomic_output(args.plot, "wb", inputs=inputs)) if args.plot else None
        html_file = outputs.enter_context(atomic_output(args.html, "w", inputs=inputs)) if args.html else None
        test = _open(path, args)
        val = val_mask = None
        split = None
        if args.val:
            val = _open(args.val, args, labels=args.val_labels, mask=None)
            validation = f"the dump {val.name} ({val.n_rows:,} rows)"
        elif args.val_fraction is not None:
            val_mask = io.split_mask(test.n_rows, args.val_fraction, seed=args.seed)
            validation = f"a fraction {args.val_fraction:g} of the rows (--val-fraction, seed {args.seed})"
            if isinstance(test, io.DenseDump):
                validation = (f"a fraction {args.val_fraction:g} of the counted pixels (--val-fraction, seed "
                              f"{args.seed}; pixel j of the flattened order without ignored pixels)")
        elif methods and {"val", "test"} <= set(io.splits(path)):  # a file with val_* / test_* arrays splits itself
            test, val = _open(path, args, split="test"), _open(path, args, split="val")
            split, validation = "test", f"its val split ({val.name})"
        else:
            validation = None
        if split is None and str(path).endswith(".npz") and "test" in io.splits(path):
            split = "test"
        if args.example:
            test.name = f"{datasets.EXAMPLE_FILE} test split ({datasets.EXAMPLE_ORIGIN})"
        groups = _group_ids(args.groups, path, cmd) if args.groups else None
        update, stage, close = _staged_progress(args.quiet, f"calibkit {cmd}",
                                                "pixels" if isinstance(test, io.DenseDump) else "rows")
        try:
            result = report.report(test, val=val, val_mask=val_mask, methods=methods, n_bins=args.n_bins,
                                   strategy=args.strategy, progress=update, stage=stage, details=bool(args.html),
                                   groups=groups, smooth=not args.no_smooth, backend=args.backend)
        finally:
            close()
        if to_stdout:
            print(json.dumps(report.json_safe(result), indent=2))
        else:
            print(report.format_table(result))
        if json_file is not None:
            json.dump(report.json_safe(result), json_file, indent=2)
        if plot_file is not None:
            from . import plot

            fig = plot.report_figure(result, None)
            fig.savefig(plot_file, format=plot_format, dpi=100)
        if html_file is not None:
            from . import html

            provenance = {"path": str(path), "split": split or "(whole dump)",
                          "validation": validation or "(no calibrators)"}
            html_file.write(html.report_html(result, provenance))
    return 0


def _cmd_fit(args) -> int:
    from . import io, report
    from ._files import atomic_output
    from ._validation import BadElementError

    with atomic_output(args.out, "w", inputs=_inputs(args.dump, args.labels, args.mask)) as out:
        dump = _open(args.dump, args, split=args.split or _default_split(args.dump, "val"))
        scores, labels = _in_memory(dump, "fit on a smaller split (--split) or store the dump uncompressed "
                                          "(np.savez), which is memory-mapped")
        try:
            calibrator = report.fit_calibrator(args.method, scores, labels, dump.from_logits, args.backend)
        except BadElementError as exc:
            raise report.locate(exc, dump) from None
        except ValueError as exc:  # a calibrator's own check of its input (e.g. a score that is no probability)
            raise io.DumpError(f"{dump.name}: {exc}") from None
        payload = calibrator.to_dict()
        payload["input"] = {"from_logits": dump.from_logits, "method": args.method, "n_classes": dump.n_classes,
                            "fitted_on": dump.name, "n_rows": dump.n_rows}
        json.dump(payload, out, indent=2)
    print(f"{args.method} calibrator fitted on {dump.n_rows:,} rows of {dump.name} -> {args.out}")
    return 0


def _cmd_apply(args) -> int:
    from . import io, report
    from ._files import atomic_output
    from ._validation import BadElementError
    from .calibrators import Calibrator

    try:
        with open(args.calibrator, encoding="utf-8") as f:
            payload = json.load(f)
    except OSError as exc:
        raise UsageError(f"calibkit apply: cannot read {args.calibrator}: {_os_words(exc)}") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UsageError(f"calibkit apply: cannot read {args.calibrator}: {exc}") from None
    meta = payload.get("input") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("method") not in report.METHODS:
        raise UsageError(f"calibkit apply: {args.calibrator} was not written by `calibkit fit`")
    calibrator = Calibrator.from_dict(payload)
    if args.from_logits is None:
        args.from_logits = bool(meta["from_logits"])
    dump = _open(args.dump, args, split=args.split)
    if isinstance(dump, io.DenseDump):
        raise UsageError(f"calibkit apply: {dump.name} holds dense scores {tuple(dump.scores.shape)}; apply writes "
                         "(N, K) rows: transform dense scores in Python (the calibrator's transform / predict_proba "
                         "on the (N, K, *spatial) array)")
    if dump.n_classes != meta["n_classes"]:
        raise UsageError(f"calibkit apply: the calibrator was fitted on {meta['n_classes']} classes, "
                         f"the dump has {dump.n_classes}")
    dtype, shape = np.dtype(args.dtype), (dump.n_rows, dump.n_classes)
    update, close = _progress(dump.n_rows, args.quiet, "calibkit apply")
    try:
        # The rows go to a temporary .npy in the output's folder, chunk by chunk, renamed over --out only when
        # every row is written: a failure leaves the old --out as it was, and --out may not be an input.
        with atomic_output(args.out, "wb", inputs=_inputs(args.calibrator, args.dump)) as out:
            np.lib.format.write_array_header_1_0(
                out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
            rows = dump.chunk_rows()
            for a in range(0, dump.n_rows, rows):
                s = dump.rows(a, min(dump.n_rows, a + rows))
                try:
                    p = report.calibrated_probabilities(calibrator, meta["method"], s, dump.from_logits)
                except BadElementError as exc:
                    raise report.locate(exc, dump, a) from None
                block = np.empty((len(s), shape[1]), dtype=dtype)
                block[...] = p
                out.write(memoryview(block).cast("B"))
                if update:
                    update(a + len(s))
    finally:
        close()
    print(f"{dump.n_rows:,} rows of calibrated probabilities -> {args.out}")
    return 0


def _default_split(path, wanted):
    """`wanted` when `path` is an .npz with that split (val_* / test_* arrays), else None."""
    from . import io

    return wanted if wanted in io.splits(path) else None


def _add_dump_options(p, labels=True):
    if labels:
        p.add_argument("--labels", help="labels .npy file when the dump holds none")
    p.add_argument("--scores-key", help="scores array name inside an .npz")
    p.add_argument("--labels-key", help="labels array name inside an .npz")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--from-logits", dest="from_logits", action="store_true", default=None,
                      help="scores are logits (default: when the array or file name contains 'logit')")
    mode.add_argument("--probabilities", dest="from_logits", action="store_false", help="scores are probabilities")
    p.add_argument("--backend", default="auto", choices=("auto", "cpp", "numba"))
    if labels:
        p.add_argument("--class-axis", type=int, default=1, choices=(1, -1),
                       help="dense dumps: the class axis of the scores, 1 for (N, K, *spatial) (default), -1 for "
                            "channel-last (N, *spatial, K); labels (N, *spatial)")
        p.add_argument("--ignore-index", type=int, metavar="LABEL",
                       help="a label whose pixels (rows) are never counted, e.g. 255")
        p.add_argument("--mask", metavar="FILE",
                       help="a bool .npy of the labels' shape: True where a pixel (row) is counted")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calibkit", description="Calibration metrics for model outputs.")
    parser.add_argument("--version", action=_Version, nargs=0, help="print calibkit's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("report", aliases=["evaluate"],
                        help="calibration of an evaluation dump, raw and after each calibrator",
                        description="Prints N, K, accuracy, ECE, MCE, ACE, class-wise ECE, Brier and NLL of the "
                                    "raw scores and of each calibrator fitted on the validation rows and "
                                    "evaluated on the rest. Dumps: .npy (with --labels), .npz (logits/probs + "
                                    "labels, or val_*/test_* splits) or a directory of shards; read in chunks. "
                                    "`calibkit evaluate` is another name of this command.")
    rp.add_argument("dump", nargs="?", help="the evaluation dump")
    rp.add_argument("--scores", help=".npy file of scores (N, K) or (N,), instead of DUMP (labels from --labels)")
    rp.add_argument("--example", action="store_true",
                    help="report on a real dump shipped with calibkit (focal_cifar10_resnet50_brier.npz: ResNet-50 "
                         f"on CIFAR-10, Mukhoti et al. 2020), with --calibrate {EXAMPLE_METHODS} unless given")
    _add_dump_options(rp)
    rp.add_argument("--n-bins", type=int, default=15)
    rp.add_argument("--strategy", default="uniform", choices=("uniform", "quantile"),
                    help="bins of the ECE column (quantile: equal-mass, as the ACE column)")
    rp.add_argument("--val", help="validation dump to fit the calibrators on")
    rp.add_argument("--val-labels", help="labels .npy file of the --val dump when it holds none")
    rp.add_argument("--val-fraction", type=float,
                    help="fit on this fraction of the rows (a fixed pseudo-random split by row index; for a dense "
                         "dump, of the counted pixels in the flattened order)")
    rp.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split")
    rp.add_argument("--calibrate", help="comma-separated methods: " + ",".join(METHOD_NAMES))
    rp.add_argument("--json", nargs="?", const="-", metavar="FILE",
                    help="write the numbers as JSON to FILE; to standard output (instead of the table) with "
                         "--json - or a bare --json")
    rp.add_argument("--plot", metavar="FILE", help="write reliability diagrams to this .png / .svg / .pdf")
    rp.add_argument("--html", metavar="FILE",
                    help="write one self-contained HTML page: provenance, metrics, reliability diagrams, "
                         "per-class table, risk-coverage curve")
    rp.add_argument("--quiet", action="store_true", help="no progress bar")
    rp.add_argument("--no-smooth", action="store_true",
                    help="leave out the smooth ECE column (saves one kernel pass over each block per row of the table)")
    rp.add_argument("--groups", metavar="COLUMN_OR_FILE",
                    help="group id per row (integers): a .npy file, or an array of the .npz (its test_ one first) "
                         "or a column of the Parquet dump; prints the worst groups and the multicalibration error")
    rp.set_defaults(func=_cmd_report)

    ft = sub.add_parser("fit", help="fit a calibrator to a dump and save it as JSON")
    ft.add_argument("dump")
    ft.add_argument("--method", required=True, choices=METHOD_NAMES)
    ft.add_argument("--out", required=True, help="calibrator JSON file to write")
    ft.add_argument("--split", help="split of an .npz with val_*/test_* arrays (default: val if present)")
    _add_dump_options(ft)
    ft.set_defaults(func=_cmd_fit)

    ap = sub.add_parser("apply", help="write calibrated probabilities of a dump, chunk by chunk")
    ap.add_argument("calibrator", help="JSON file written by `calibkit fit`")
    ap.add_argument("dump")
    ap.add_argument("--out", required=True, help=".npy file to write (N, K)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--split", help="split of an .npz with val_*/test_* arrays (default: test if present)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_dump_options(ap, labels=False)
    ap.set_defaults(func=_cmd_apply)

    mo = sub.add_parser("monitor", help="calibration of a JSON Lines stream of predictions",
                        description="Reads records {\"probs\": [...], \"label\": k}, {\"logits\": [...], "
                                    "\"label\": k} or {\"confidence\": c, \"correct\": 0|1} (optional "
                                    "\"weight\") and writes one JSON line of metrics every --every records "
                                    "and at the end (also on SIGINT/SIGTERM). A malformed line is counted as "
                                    "rejected, by reason, and never stops the monitor.")
    mo.add_argument("input", nargs="?", help="JSON Lines file (default: standard input)")
    mo.add_argument("--every", type=int, default=1000, help="report every N input lines")
    mo.add_argument("--window", type=int, default=None, help="metrics over the most recent N rows")
    mo.add_argument("--n-bins", type=int, default=15)
    mo.add_argument("--bootstrap", type=int, default=0, help="bootstrap replicates for ece_ci / ece_se")
    mo.add_argument("--seed", type=int, default=0)
    mo.add_argument("--smooth", action="store_true", help="also report smooth_ece (Blasiok & Nakkiran 2023)")
    mo.add_argument("--cumulative", action="store_true",
                    help="also report ecce_r (with ecce_r_bound), ecce_r_sigma and ecce_pvalue (Arrieta-Ibarra et al. "
                         "2022), from the state's fine histogram")
    mo.add_argument("--state", help="state file to resume from and save to (written atomically)")
    mo.add_argument("--resume-input", action="store_true",
                    help="skip the input lines the state has already consumed (re-reading the same file)")
    mo.add_argument("--prometheus", help="write the current values to this file in Prometheus text format")
    mo.add_argument("--serve", metavar="HOST:PORT",
                    help="also serve the current values on http://HOST:PORT/metrics (Prometheus format; "
                         "needs the extra prometheus); stops at the end of the input")
    mo.add_argument("--backend", default="auto", choices=("auto", "cpp", "numba"))
    mo.set_defaults(func=_cmd_monitor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every user error (bad file, flag, data or output path) prints one line on stderr and
    returns 2."""
    from .io import DumpError

    args = build_parser().parse_args(argv)
    try:
        with _terminate_as_exit(args.command != "monitor"):  # the monitor handles its signals itself
            return args.func(args)
    except BrokenPipeError:  # e.g. `calibkit report ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as exc:
        print(_one_line(exc.code), file=sys.stderr)
        return 2
    except DumpError as exc:
        print(f"calibkit: {_cli_words(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"calibkit {args.command}: {_os_words(exc)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"calibkit {args.command}: {_cli_words(exc)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _terminate_as_exit(enabled):
    """SIGTERM (``kill``, a job scheduler's time limit) raises SystemExit(128 + 15) while a command runs, so
    the temporary of an output being written is removed and the old file stays (``kill -9`` cannot be
    caught: the next write to that output removes its temporary)."""
    import signal
    import threading

    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(text) -> str:
    return " ".join(str(text).split())


# The library's advice in command-line words: (regex, replacement string or function), applied in order. The library speaks of its
# keyword arguments; the command line of its flags (tests/test_cli_errors.py runs every error path and checks
# that no keyword is left).
_CLI_WORDS = (
    (r"pass from_logits=True for logits, or check_sums=False to skip this check", "give --from-logits for logits"),
    (r"(?:pass|give) (?:logits with )?from_logits=True", "give --from-logits"),
    (r"\(give them with labels=\.\.\. / --labels\)", "(give them with --labels)"),
    (r"with labels=\)", "with --labels)"),
    (r"\bn_bins must be", "--n-bins must be"),
    (r"leave them out with ignore_index=(-?\d+)", r"leave them out with --ignore-index \1"),
    (r"give axis=1 or axis=-1", "give --class-axis 1 or -1"),
    (r"give axis=(-?1)\b", r"give --class-axis \1"),
    (r"out of range for n_classes=(\d+)", lambda m: f"out of range for {m[1]} classes (0 to {int(m[1]) - 1})"),
    (r": no such file$", ": no such file or directory"),
    (r": no such file([;,(])", r": no such file or directory\1"),
    (r"No such file or directory", "no such file or directory"),
)


def _cli_words(exc) -> str:
    """An error message on one line, with the library's advice in command-line words (see ``_CLI_WORDS``)."""
    import re

    text = _one_line(exc)
    for pattern, replacement in _CLI_WORDS:
        text = re.sub(pattern, replacement, text)
    return text


def _os_words(exc) -> str:
    """An OSError as ``FILE: what went wrong`` (``missing.npy: no such file or directory``), never Python's
    ``[Errno 2] ...`` repr."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    return _cli_words(exc)


class _Version(argparse.Action):
    """``calibkit --version``: the installed version (looked up only when asked)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"calibkit {__version__}")
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {_one_line(message)} (see {self.prog} --help)\n")


def run() -> None:
    """The ``calibkit`` command as a process (``python -m calibkit.cli``, and the ``calibkit`` script): exit
    with the code of :func:`main`.

    What the command leaves behind (the imported modules; with ``--backend numba``, Numba's typing and
    compilation tables) is moved out of the garbage collector's reach first (:func:`gc.freeze`): the
    interpreter's finalisation then does not trace it again in each of its collections (measured after a
    report: 0.33-0.41 s of CPU at exit after a Numba run, 0.04-0.05 s frozen; 0.03-0.04 s after a C++ run,
    0.01 s frozen). Everything else of the exit is as before: atexit handlers, joins of running threads,
    the final flushes and the exit code.
    """
    code = main()
    gc.freeze()
    raise SystemExit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
