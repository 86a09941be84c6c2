"""The ``calibkit`` command.

``calibkit monitor`` follows a JSON Lines stream of predictions (see
:mod:`calibkit.monitor`). ``calibkit evaluate DUMP`` measures how calibrated a model's evaluation dump
is: top-label ECE (equal-width and equal-mass), MCE, RMS calibration error,
class-wise ECE, accuracy, Brier score and NLL, and the reliability table.

A dump is either one ``.npz`` file holding a scores array and a labels array,
or two ``.npy`` files (``--scores``/``--labels``), which are memory-mapped so
dumps larger than memory are read in one streaming pass.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

SCORE_KEYS = ("logits", "test_logits", "probs", "probabilities", "scores", "test_probs")
LABEL_KEYS = ("labels", "test_labels", "y", "targets")


def _pick(keys, wanted, explicit, what):
    if explicit is not None:
        if explicit not in keys:
            raise SystemExit(f"calibkit: no array {explicit!r} in the file (it has {sorted(keys)})")
        return explicit
    for k in wanted:
        if k in keys:
            return k
    raise SystemExit(f"calibkit: cannot tell which array holds the {what} (the file has {sorted(keys)}); "
                     f"name it with --{what}-key")


def load_dump(args):
    """Return (scores, labels, scores_name, from_logits) for the command-line arguments."""
    if args.dump is not None:
        if args.dump.endswith(".npy"):
            raise SystemExit("calibkit: a .npy dump holds one array; give --scores S.npy --labels L.npy")
        with np.load(args.dump, allow_pickle=False) as z:
            keys = set(z.files)
            skey = _pick(keys, SCORE_KEYS, args.scores_key, "scores")
            lkey = _pick(keys, LABEL_KEYS, args.labels_key, "labels")
            scores, labels = z[skey], z[lkey]
        name = f"{args.dump}:{skey}"
    else:
        if args.scores is None or args.labels is None:
            raise SystemExit("calibkit: give a .npz dump, or both --scores and --labels .npy files")
        scores = np.load(args.scores, mmap_mode="r", allow_pickle=False)
        labels = np.load(args.labels, mmap_mode="r", allow_pickle=False)
        name = args.scores
        skey = args.scores
    if args.from_logits is None:
        # Said out loud in the output, never silently: a key or file named *logit* holds logits.
        from_logits = "logit" in skey.lower()
    else:
        from_logits = args.from_logits
    return scores, labels, name, from_logits


def evaluate(scores, labels, *, n_bins=15, from_logits=False, backend="auto"):
    """All the calibration metrics of one dump, as a JSON-safe dict."""
    from . import metrics

    kw = dict(from_logits=from_logits, backend=backend)
    table = metrics.reliability_table(scores, labels, n_bins=n_bins, **kw)
    out = {
        "n": int(table.count.sum()),
        "n_classes": int(scores.shape[1]) if scores.ndim == 2 else 2,
        "n_bins": n_bins,
        "accuracy": table.accuracy_overall,
        "mean_confidence": table.mean_confidence_overall,
        "ece": table.ece,
        "mce": table.mce,
        "rmsce": table.rmsce,
        "ace": metrics.ece(scores, labels, n_bins=n_bins, strategy="quantile", **kw),
        "brier": metrics.brier_score(scores, labels, **kw),
        "nll": metrics.nll(scores, labels, **kw),
    }
    if scores.ndim == 2:
        out["classwise_ece"] = metrics.classwise_calibration_error(scores, labels, n_bins=n_bins, **kw)
    return out, table


def _cmd_evaluate(args) -> int:
    scores, labels, name, from_logits = load_dump(args)
    try:
        result, table = evaluate(scores, labels, n_bins=args.n_bins, from_logits=from_logits,
                                 backend=args.backend)
    except (ValueError, TypeError) as exc:
        print(f"calibkit: {exc}", file=sys.stderr)
        return 2
    result["scores"] = name
    result["from_logits"] = from_logits
    if args.json:
        result["reliability_table"] = table.to_dict()
        print(json.dumps(result, indent=2))
        return 0
    kind = "logits" if from_logits else "probabilities"
    print(f"{name}: {result['n']} rows x {result['n_classes']} classes, read as {kind}")
    for key in ("accuracy", "mean_confidence", "ece", "ace", "mce", "rmsce", "classwise_ece", "brier", "nll"):
        if key in result:
            print(f"  {key:<16} {result[key]:.6f}")
    print(table)
    return 0


def _cmd_monitor(args) -> int:
    from . import monitor

    if args.every < 1:
        raise SystemExit("calibkit: --every must be >= 1")
    source = sys.stdin if args.input in (None, "-") else open(args.input, encoding="utf-8")
    try:
        return monitor.run(source, every=args.every, window=args.window, n_bins=args.n_bins,
                           bootstrap=args.bootstrap, seed=args.seed, state=args.state, prometheus=args.prometheus,
                           resume_input=args.resume_input, backend=args.backend)
    except (ValueError, TypeError, OSError) as exc:
        print(f"calibkit monitor: {exc}", file=sys.stderr)
        return 2
    finally:
        if source is not sys.stdin:
            source.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="calibkit", description="Calibration metrics for model outputs.")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="calibration metrics and reliability table of an evaluation dump")
    ev.add_argument("dump", nargs="?", help=".npz file with a scores array and a labels array")
    ev.add_argument("--scores", help=".npy file of scores (N, K) or (N,), memory-mapped")
    ev.add_argument("--labels", help=".npy file of integer labels (N,), memory-mapped")
    ev.add_argument("--scores-key", help=f"array name in the .npz (default: first of {SCORE_KEYS})")
    ev.add_argument("--labels-key", help=f"array name in the .npz (default: first of {LABEL_KEYS})")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--from-logits", dest="from_logits", action="store_true", default=None,
                      help="scores are logits (default: when the array or file name contains 'logit')")
    mode.add_argument("--probabilities", dest="from_logits", action="store_false", help="scores are probabilities")
    ev.add_argument("--n-bins", type=int, default=15)
    ev.add_argument("--backend", default="auto", choices=("auto", "cpp", "numba"))
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=_cmd_evaluate)

    mo = sub.add_parser("monitor", help="calibration of a JSON Lines stream of predictions",
                        description="Reads records {\"probs\": [...], \"label\": k}, {\"logits\": [...], "
                                    "\"label\": k} or {\"confidence\": c, \"correct\": 0|1} (optional "
                                    "\"weight\") and writes one JSON line of metrics every --every records "
                                    "and at the end (also on SIGINT/SIGTERM).")
    mo.add_argument("input", nargs="?", help="JSON Lines file (default: standard input)")
    mo.add_argument("--every", type=int, default=1000, help="report every N input lines")
    mo.add_argument("--window", type=int, default=None, help="metrics over the most recent N rows")
    mo.add_argument("--n-bins", type=int, default=15)
    mo.add_argument("--bootstrap", type=int, default=0, help="bootstrap replicates for ece_ci / ece_se")
    mo.add_argument("--seed", type=int, default=0)
    mo.add_argument("--state", help="state file to resume from and save to (written atomically)")
    mo.add_argument("--resume-input", action="store_true",
                    help="skip the input lines the state has already consumed (re-reading the same file)")
    mo.add_argument("--prometheus", help="write the current values to this file in Prometheus text format")
    mo.add_argument("--backend", default="auto", choices=("auto", "cpp", "numba"))
    mo.set_defaults(func=_cmd_monitor)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
