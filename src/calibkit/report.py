"""How calibrated is this dump, and what fixes it best: the work behind ``calibkit report``.

The evaluation rows are read chunk by chunk into a :class:`CalibrationAccumulator`
(raw scores) and one more per calibrator (its calibrated logits or
probabilities), so peak memory is bounded by the chunk size plus the
validation rows the calibrators are fitted on. The validation rows are read
first, by themselves (:meth:`~calibkit.io.Dump.take`: a file's selected rows
only, not the whole dump), and every calibrator fitted on them in memory; then
one pass reads each block of evaluation rows once (a reading thread fetches
the next block while the kernels work on this one) for the raw metrics (one
fused kernel call per block: top-label, class-wise, equal-mass, Brier and
NLL) and every fitted calibrator's in turn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import calibrators as cal
from ._typing import ArrayLike, Backend, Strategy
from ._validation import OK, BadElementError, check_scores
from .calibrators import nonparametric as npm
from .io import DenseDump, Dump, DumpError, SplitBlock, located
from .streaming import CalibrationAccumulator

if TYPE_CHECKING:
    import pandas as pd

METHODS = {
    "temperature": lambda from_logits, backend: cal.TemperatureScaling(backend=backend),
    "vector": lambda from_logits, backend: cal.VectorScaling(backend=backend),
    "matrix": lambda from_logits, backend: cal.MatrixScaling(reg=1e-2),  # NumPy only: no kernels
    "isotonic": lambda from_logits, backend: cal.IsotonicCalibration(from_logits=from_logits, backend=backend),
    "histogram": lambda from_logits, backend: cal.HistogramBinning(from_logits=from_logits, backend=backend),
    "ets": lambda from_logits, backend: cal.EnsembleTemperatureScaling(backend=backend),
    "beta": lambda from_logits, backend: cal.BetaCalibration(from_logits=from_logits, backend=backend),
    "venn_abers": lambda from_logits, backend: cal.VennAbers(from_logits=from_logits, backend=backend),
    "top_label": lambda from_logits, backend: cal.TopLabelHistogramBinning(from_logits=from_logits, backend=backend),
    "dirichlet": lambda from_logits, backend: cal.DirichletCalibration(reg_lambda=1e-2, reg_mu=1e-2,
                                                                       from_logits=from_logits, backend=backend),
}
LOGIT_METHODS = ("temperature", "vector", "matrix", "ets")
MAX_VAL_BYTES = 1 << 30  # validation rows held in memory for the fits
# The text table's headline columns (the JSON and to_frame() have every field of a row), and their headers.
COLUMNS = ("n", "accuracy", "ece", "classwise_ece", "smooth_ece", "debiased_rmsce", "ecce_r_sigma", "ecce_pvalue",
           "brier", "nll")
HEADERS = {"debiased_rmsce": "rmsce_debias", "ecce_r_sigma": "ecce_r/sigma", "ecce_pvalue": "ecce_p"}


def as_logits(scores, from_logits):
    """Logits for a logit calibrator: the scores, or log-probabilities (valid logits up to a per-row constant)."""
    if from_logits:
        return scores
    return np.log(np.clip(np.asarray(scores, dtype=np.float64), 1e-300, None))


def make_calibrator(method, from_logits, backend="auto"):
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {sorted(METHODS)}")
    return METHODS[method](from_logits, backend)


def fit_calibrator(method, scores, labels, from_logits, backend="auto"):
    """Fit one method on in-memory validation scores (with the kernels of ``backend``)."""
    c = make_calibrator(method, from_logits, backend)
    if method in LOGIT_METHODS:
        return c.fit(as_logits(scores, from_logits), labels)
    return c.fit(scores, labels)


def calibrated_probabilities(calibrator, method, scores, from_logits):
    if method in LOGIT_METHODS:
        return calibrator.predict_proba(as_logits(scores, from_logits))
    return calibrator._probabilities(scores)  # binary scores (N,): P(y = 1), shape (N,)


def locate(exc, dump, first_row=0, skipped=None) -> DumpError:
    """:func:`calibkit.io.located` with the scores named ``scores`` whichever function found the fault (a
    calibrator calls them ``logits``): one wording for one fault, the row numbered in the whole dump."""
    if exc._context.get("scores_name") != "scores":
        exc = BadElementError(exc.status, **{**exc._context, "scores_name": "scores"})
    return located(exc, dump, first_row, skipped)


def _method_accumulator(method, calibrator, n_bins, n_classes, smooth, backend):
    """The accumulator of one calibrator's metrics. Temperature scaling is evaluated from the logits
    themselves (the kernel applies 1/T as it reads them: no scaled copy of a chunk)."""
    kw = dict(classwise=True, n_classes=n_classes, smooth=smooth, backend=backend)
    if method == "temperature":
        return CalibrationAccumulator(n_bins, from_logits=True, temperature=calibrator.temperature_, **kw)
    return CalibrationAccumulator(n_bins, from_logits=method in LOGIT_METHODS, **kw)


def _method_input(calibrator, method, scores, from_logits):
    """What a method's accumulator reads: the logits (temperature), calibrated logits, or probabilities."""
    if method == "temperature":
        return as_logits(scores, from_logits)
    if method in LOGIT_METHODS:
        return calibrator.transform(as_logits(scores, from_logits))
    return calibrator._probabilities(scores)  # binary scores (N,): P(y = 1), shape (N,)


# Values per sub-block of vector scaling from probabilities: a float64 sub-block (256 KB) of their logarithms
# stays in the L2 cache while the kernel reads it.
SUB_BLOCK_VALUES = 1 << 15


class _CalibratedInputs:
    """What each fitted calibrator's accumulator reads, block after block (:func:`_method_input`, the same
    numbers), written into buffers allocated once for the whole pass (a fresh block-sized array per
    calibrator and block would be a fresh mapping to fault in, each time).

    Isotonic calibration and histogram binning map a whole block in one kernel call for both
    (``step_apply_many``, threaded over rows, on search tables built once for the pass): from logits, the
    softmax of each chunk of rows is computed once (the numbers of the fused kernel of ``predict_proba``) and
    mapped by both while it is in cache. Vector scaling maps a whole block of logits in one kernel call
    (``vector_scale``; from probabilities, their logarithms sub-block by sub-block, ``SUB_BLOCK_VALUES`` values
    in cache). Every row is computed on its own, by the arithmetic of the calibrator's own ``transform`` /
    ``predict_proba``, so the values are those of ``transform`` / ``predict_proba`` of the block, bit for bit.
    The other methods (temperature: the logits themselves; matrix scaling) take their ordinary path.
    """

    def __init__(self, fitted, from_logits, block_rows, n_classes):
        self.fitted, self.from_logits = fitted, from_logits
        c = fitted.get("vector")
        self.vector = c if isinstance(c, cal.VectorScaling) else None
        steps = {m: c for m, c in fitted.items() if m in ("isotonic", "histogram") and not c.binary_}
        self.backend = next(iter(steps.values())).backend if steps else "auto"
        # one kernel call maps them all: tables of one backend (a calibrator of another takes its ordinary path)
        self.steps = {m: c._step_tables() for m, c in steps.items() if c.backend == self.backend}
        self.out = {"vector": np.empty((block_rows, n_classes))} if self.vector is not None else {}
        # the step calibrators' outputs in one buffer: for a block of n rows, its first S n K values as one
        # C-ordered (S, n, K) array (S calibrators), as step_apply_many writes them
        self.steps_out = np.empty(len(self.steps) * block_rows * n_classes)
        self.n_classes = n_classes
        self.sub = max(1, SUB_BLOCK_VALUES // max(1, n_classes))

    def __call__(self, scores):
        """``{method: its accumulator's input}`` for the (n, K) block ``scores`` (n <= the block rows)."""
        n = len(scores)
        both = self.steps_out[:len(self.steps) * n * self.n_classes].reshape(len(self.steps), n, self.n_classes)
        step_out = dict(zip(self.steps, both))
        out = {m: (self.out[m][:n] if m in self.out else step_out[m] if m in step_out else
                   _method_input(c, m, scores, self.from_logits)) for m, c in self.fitted.items()}
        if not (self.out or self.steps) or n == 0:
            return out
        scores = npm._readable(check_scores(scores))
        ok = dict.fromkeys(list(self.out) + list(self.steps), True)
        if self.vector is not None and self.from_logits:
            ok["vector"] = self.vector._scaled_into(scores, out["vector"])  # the whole block, logits in place
        elif self.vector is not None:
            for a in range(0, n, self.sub):  # the log-probabilities of a sub-block, in cache
                s = scores[a:a + self.sub]
                ok["vector"] &= self.vector._scaled_into(as_logits(s, False), out["vector"][a:a + len(s)])
        if self.steps:
            # one kernel call for every step calibrator: from logits, each chunk's softmax computed once (the
            # numbers predict_proba's fused kernel computes), checked finite, and mapped by all while in cache
            check = npm._CHECK_FINITE if self.from_logits else npm._CHECK_PROBABILITY
            status = npm._kernels(self.backend).step_apply_many(scores, list(self.steps.values()), check, True, both,
                                                                self.from_logits)
            ok.update(dict.fromkeys(self.steps, status[0] == OK))
        for m in [m for m, good in ok.items() if not good]:
            # the calibrator's own path on the whole block raises the error it always raised
            out[m] = _method_input(self.fitted[m], m, scores, self.from_logits)
        return out


def _fit_temperature_out_of_core(dump, mask, chunk_rows, backend):
    """Temperature scaling fitted on the rows of `dump` (where `mask`, if given), read chunk by chunk at every
    Newton step: the NLL and its derivatives are sums over rows."""
    def sums(b):
        total = dict.fromkeys(("count", "weight", "loss", "d1", "d2", "d3", "d4", "d5", "r4d2"), 0.0)
        largest = 0.0  # the largest row range: a maximum over blocks, not a sum (it bounds the fit's error)
        # The rows where `mask` is True are those not held out of the complement: read straight into one array.
        for blk in _blocks(dump, None if mask is None else ~mask, chunk_rows, gather=False):
            if len(blk.labels):
                try:
                    r = cal.temperature_nll(as_logits(blk.scores, dump.from_logits), blk.labels, b, backend=backend)
                except BadElementError as exc:
                    raise locate(exc, dump, blk.first_row, blk.held_mask) from None
                for key in total:
                    total[key] += r[key]
                largest = max(largest, r["range"])
        total["range"] = largest
        return total

    return cal.TemperatureScaling(backend=backend).fit_from_sums(sums, dump.n_classes)


def _blocks(dump, held, chunk_rows, gather):
    """The :class:`~calibkit.io.SplitBlock` of each block of `dump`: the rows where `held` (bool, (N,), or None)
    is False, and with `gather` those where it is True (read straight into their own arrays, no copy)."""
    if held is None:
        for a, s, y in dump.chunks(chunk_rows):
            yield SplitBlock(a, len(y), None, s, y, None, None)
    else:
        yield from dump.split_chunks(held, chunk_rows, held=gather)


def _row(result, n_classes, strategy):
    ece = result.ace if strategy == "quantile" else result.ece
    out = {"n": result.count, "accuracy": result.accuracy, "mean_confidence": result.mean_confidence, "ece": ece,
           "mce": result.mce, "rmsce": result.rmsce,
           "ace": result.ace, "ace_bound": result.ace_bound, "classwise_ece": result.classwise_ece,
           "brier": result.brier, "nll": result.nll,
           "debiased_rmsce": result.debiased_rmsce, "smooth_ece": result.smooth_ece}
    c = result.cumulative  # from the fine histogram: within [ecce_r, ecce_r + ecce_r_bound] of the exact value
    out.update(ecce_r=c.range, ecce_r_bound=c.range_bound, ecce_mad=c.max_abs, ecce_mad_bound=c.max_abs_bound,
               ecce_sigma=c.sigma, ecce_r_sigma=c.range_sigma, ecce_pvalue=c.range_pvalue)
    if n_classes == 2 and out["classwise_ece"] is None:
        out.pop("classwise_ece")
    return out


def report(test: Dump, *, val: Dump | None = None, val_mask: ArrayLike | None = None, methods: Sequence[str] = (),
           n_bins: int = 15, strategy: Strategy = "uniform", chunk_rows: int | None = None,
           progress: Callable[[int], object] | None = None,
           stage: Callable[[str, int | None], object] | None = None, max_val_bytes: int = MAX_VAL_BYTES,
           details: bool = False, groups: ArrayLike | None = None, smooth: bool = True,
           backend: Backend = "auto") -> "ReportResult":
    """Metrics of the raw scores and of each calibrator fitted on the validation rows.

    Parameters
    ----------
    test : Dump
        The rows to evaluate (all of them, or those where ``val_mask`` is False). A
        :class:`~calibkit.io.DenseDump` (scores ``(N, K, *spatial)``, from :func:`calibkit.io.open_dump`) is read
        as rows too: every counted pixel is a row (pixels with ``ignore_index`` or masked out are left out), in
        the order of ``np.moveaxis(scores, axis, -1).reshape(-1, K)``, each block a strided view of the memory
        map (no transposed or flattened copy). The table equals that of the explicitly flattened dump without
        the ignored pixels, to rounding (relative 1e-12: the sums of each block are added, and a dense dump's
        blocks end where an image or a piece of the adapter ends, not at multiples of ``chunk_rows``); the
        result then also has ``"dense"`` (shape, class axis, pixels, ignored pixels) and, with ``details``,
        ``"dense_map"``: the entropy and error maps of the first image (:func:`calibkit.plot.uncertainty_image`).
    val : Dump, optional
        Validation rows to fit the calibrators on (read into memory).
    val_mask : (N,) bool array, optional
        Instead of ``val``: the rows of ``test`` to fit on (and leave out of the evaluation). For a dense dump,
        one per counted pixel (``test.n_rows``), e.g. :func:`calibkit.io.split_mask` ``(test.n_rows, f)``: pixel
        j of the flattened order without the ignored pixels is a validation row when its splitmix64 draw is
        below f, so the split is that of the flattened dump (this mask, and the confidences kept with
        ``details``, take memory proportional to the pixels, N * prod(spatial), never times K).
    methods : sequence of str
        Calibrators to fit, from ``METHODS``.
    strategy : {"uniform", "quantile"}
        Bins of the ECE column: equal-width (exact), or equal-mass (the
        streaming estimate of :class:`CalibrationAccumulator`, within
        ``ace_bound`` of the exact value; also the ACE column). MCE is always
        over equal-width bins.
    progress : callable(n_rows), optional
        Called after each chunk with the rows done so far; reading the
        validation rows of ``val_mask`` counts as a first pass over the dump's
        rows (called once, when they are read).
    groups : (N,) array of int, optional
        A group id in [0, 65536) per row of ``test`` (a data source, a language, ...): the raw scores then
        also get a light state per group (``n_groups`` of :class:`CalibrationAccumulator`, 1280 fine
        buckets each), and the result a ``"groups"`` entry: the worst groups and the multicalibration
        ECCE-R / sigma (:class:`calibkit.streaming.GroupResults`).
    stage : callable(name, n_rows), optional
        Called as each stage begins, with its name and the rows it reads (None
        for a fit): with ``val_mask``, ``"pass 1/2: N validation rows"``, then
        ``"fit 1/3: temperature ..."``, ..., ``"pass 2/2: raw metrics, temperature, ..."``
        (with ``val``: ``"reading N validation rows"``, the fits, ``"pass 1/1: ..."``);
        ``progress`` counts on across them.
    max_val_bytes : int
        Validation rows up to this size are held in memory for the fits.
        Larger ones are read chunk by chunk at every step of the temperature
        fit (one pass over them per Newton step; the only method fitted out
        of core).
    smooth : bool, default True
        Also the smooth ECE of every row (raw and each calibrator: ``smooth=True`` of
        :class:`CalibrationAccumulator`, one more kernel pass over each block per accumulator). Every row
        also has the debiased RMS calibration error (``debiased_rmsce``, Kumar et al. 2019, over the
        equal-width bins) and the cumulative measures of Arrieta-Ibarra et al. 2022 read from the streaming
        state's fine histogram (``ecce_r`` and ``ecce_mad`` with their exact bounds ``ecce_r_bound``,
        ``ecce_mad_bound``; ``ecce_sigma``, ``ecce_r_sigma`` and the Kuiper p-value ``ecce_pvalue``; see
        :class:`calibkit.cumulative.StreamedCumulative`).
    details : bool
        Also gather what ``calibkit report --html`` shows: the per-class table
        (``"per_class"``: rows labelled with each class, the accuracy on them,
        and the class-wise ECE of each class, raw and after each calibrator)
        and the risk-coverage curve of the raw scores (``"selective"``: AURC,
        E-AURC and the :class:`~calibkit.ood.RiskCoverageCurve`). This holds the
        confidence and correctness of every evaluated row in memory (9 bytes
        a row) and sorts them once.

    Returns
    -------
    ReportResult
        A dict ``{"dump", "n_rows", "n_classes", "from_logits", "n_val", "n_bins", "strategy",
        "rows": {"raw": {...}, method: {..., "params"}}, "tables": {name: ReliabilityTable}}`` (and
        ``"per_class"``, ``"selective"`` with ``details``), with :meth:`~ReportResult.to_frame` and
        :meth:`~ReportResult.to_dict`.

    Examples
    --------
    >>> import calibkit
    >>> from calibkit import io, report
    >>> path = calibkit.datasets.example_path()
    >>> test, val = io.open_dump(path, split="test"), io.open_dump(path, split="val")
    >>> r = report.report(test, val=val, methods=["temperature"])
    >>> sorted(r["tables"])
    ['raw', 'temperature']
    >>> round(r["tables"]["raw"].ece, 4), round(r["tables"]["temperature"].ece, 4)
    (0.0182, 0.0112)
    """
    methods = list(methods)
    for m in methods:
        make_calibrator(m, test.from_logits, backend)  # checks the method name (and the backend)
    if strategy not in ("uniform", "quantile"):
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    binary = len(test.scores.shape) == 1
    if binary and methods:
        raise ValueError("calibrators in the report need (N, K) scores; binary (N,) dumps are reported raw")
    if methods and val is None and val_mask is None:
        raise ValueError("calibrators need validation rows: give --val DUMP or --val-fraction F")
    if val is not None and (val.n_classes != test.n_classes or val.from_logits != test.from_logits):
        raise DumpError(f"the validation dump ({val.n_classes} classes, "
                        f"{'logits' if val.from_logits else 'probabilities'}) does not match the dump "
                        f"({test.n_classes} classes, {'logits' if test.from_logits else 'probabilities'})")
    if val_mask is not None and np.shape(val_mask) != (test.n_rows,):
        raise ValueError(f"val_mask must be a bool array of shape ({test.n_rows},) (one per row of the dump), "
                         f"got shape {np.shape(val_mask)}")
    n_val = 0
    if methods:
        n_val = val.n_rows if val is not None else int(np.count_nonzero(val_mask))
        if n_val == 0:
            raise DumpError(f"{test.name}: the validation split holds no rows")
    out_of_core = bool(methods) and n_val * test.row_bytes > max_val_bytes
    if out_of_core and set(methods) != {"temperature"}:
        raise ValueError(f"the {n_val:,} validation rows ({n_val * test.row_bytes / 2**30:.1f} GiB) exceed the "
                         f"{max_val_bytes / 2**30:.1f} GiB held in memory, and only temperature scaling is fitted "
                         "chunk by chunk: use a smaller validation set or --calibrate temperature")
    K = test.n_classes
    group_ids = None if groups is None else _check_group_ids(groups, test.n_rows)
    accs = {"raw": CalibrationAccumulator(n_bins, from_logits=test.from_logits, classwise=not binary,
                                          n_classes=None if binary else K, smooth=smooth, backend=backend,
                                          **_group_config(group_ids))}
    held = None if val_mask is None else np.asarray(val_mask, dtype=bool)
    gather = bool(methods) and val is None and not out_of_core
    passes = 2 if gather else 1
    done = 0
    seen = _Details(test.n_rows, K, binary, test.from_logits) if details else None

    def begin(name, rows=None):
        if stage is not None:
            stage(name, rows)

    # The validation rows first (read by themselves), the fits, then one pass over the evaluation rows: each block
    # read once for the raw metrics and every fitted calibrator's.
    fitted = {}
    if methods and out_of_core:
        begin(f"fit 1/1: temperature (out of core, {n_val:,} rows per step)")
        source, mask = (val, None) if val is not None else (test, held)
        fitted["temperature"] = _fit_temperature_out_of_core(source, mask, chunk_rows, backend)
    elif methods:
        if val is not None:
            begin(f"reading {n_val:,} validation rows")
            vs, vy = val.take(np.ones(val.n_rows, dtype=bool), chunk_rows)
        else:
            begin(f"pass 1/2: {n_val:,} validation rows", test.n_rows)
            vs, vy = test.take(held, chunk_rows)
            done = test.n_rows
            if progress is not None:
                progress(done)
        for j, m in enumerate(methods):
            begin(f"fit {j + 1}/{len(methods)}: {m} on {n_val:,} rows")
            try:
                fitted[m] = fit_calibrator(m, vs, vy, test.from_logits, backend)
            except BadElementError as exc:  # vs holds all of `val`, or the rows of `test` where val_mask
                raise (locate(exc, val, 0, None) if val is not None else
                       locate(exc, test, 0, ~held)) from None
        del vs, vy
    for m in methods:
        accs[m] = _method_accumulator(m, fitted[m], n_bins, K, smooth, backend)
    begin(f"pass {passes}/{passes}: raw metrics" + (f", {', '.join(methods)}" if methods else ""), test.n_rows)
    inputs = _CalibratedInputs(fitted, test.from_logits, chunk_rows or test.chunk_rows(), K) if fitted else None
    for blk in _blocks(test, held, chunk_rows, gather=False):
        try:
            if len(blk.labels):
                accs["raw"].update(blk.scores, blk.labels, groups=_block_groups(group_ids, blk))
                if seen is not None:
                    seen.update(blk.scores, blk.labels)
                if inputs is not None:
                    for m, x in inputs(blk.scores).items():
                        accs[m].update(x, blk.labels)
        except BadElementError as exc:
            raise locate(exc, test, blk.first_row, blk.held_mask) from None
        done += blk.n_rows
        if progress is not None:
            progress(done)
    if accs["raw"].count == 0:
        raise DumpError(f"{test.name}: no rows left to evaluate")
    rows = {}
    results = {name: acc.compute() for name, acc in accs.items()}  # once each (K class-wise errors apiece)
    for name, result in results.items():
        rows[name] = _row(result, K, strategy)
        if name in fitted:
            rows[name]["params"] = fitted[name].to_dict()["fitted"]
    out = ReportResult(dump=test.name, n_rows=test.n_rows, n_classes=K, from_logits=test.from_logits, n_val=n_val,
                       n_bins=n_bins, strategy=strategy, rows=rows, tables={k: r.table for k, r in results.items()})
    if seen is not None:
        out["per_class"], out["selective"] = seen.result(accs, backend)
    if group_ids is not None:
        out["groups"] = _group_summary(results["raw"].groups)
    if isinstance(test, DenseDump):
        out["dense"] = test.describe()
        if details:
            out["dense_map"] = _first_image_map(test, backend)
    return out


def _first_image_map(dump, backend):
    """The entropy map and error map of the first image of a dense dump (:func:`calibkit.plot.uncertainty_image`:
    that image's rows read in place), for the HTML page."""
    from .plot import uncertainty_image

    scores, labels, mask = dump.first_image()
    return uncertainty_image(scores, labels, image=0, axis=dump.axis, from_logits=dump.from_logits,
                             score="entropy", ignore_index=dump.ignore_index, mask=mask, backend=backend)


# -- groups (``calibkit report --groups``) -----------------------------------------------------------------------

#: Groups listed by format_table (the JSON has all of them).
WORST_GROUPS = 5


def _check_group_ids(groups, n_rows):
    from .streaming import MAX_GROUPS

    g = np.asarray(groups)
    if g.dtype.kind not in "iu":
        raise TypeError(f"groups must be integer group ids, got dtype {g.dtype}")
    if g.shape != (n_rows,):
        raise ValueError(f"groups must hold one id per row of the dump ({n_rows:,}), got shape {g.shape}")
    bad = (g < 0) | (g >= MAX_GROUPS)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"groups[{i}] = {g[i]} is out of range [0, {MAX_GROUPS})")
    return g


def _group_config(group_ids):
    if group_ids is None:
        return {}
    return {"n_groups": int(group_ids.max()) + 1 if group_ids.size else 1, "group_fine_bits": 5,
            "group_fine_levels": 20}


def _block_groups(group_ids, blk):
    if group_ids is None:
        return None
    ids = np.asarray(group_ids[blk.first_row:blk.first_row + blk.n_rows])
    return ids if blk.held_mask is None else ids[~blk.held_mask]


def _group_summary(g) -> dict:
    """JSON-safe: every non-empty group's headline numbers, the worst group by each measure, the multicalibration
    ECCE-R / sigma of the raw scores."""
    rows = []
    for k, r in enumerate(g.results):
        if r is not None:
            c = r.cumulative
            rows.append({"group": k, "n": r.count, "accuracy": r.accuracy, "ece": r.ece, "ecce_r": c.range,
                         "ecce_r_sigma": c.range_sigma, "ecce_pvalue": c.range_pvalue})
    return {"groups": rows, "worst": dict(g.worst), "mce_sigma": g.mce_sigma, "mce_pvalue": g.mce_pvalue}


def _format_groups(summary) -> list[str]:
    rows = summary["groups"]
    key = "ecce_r_sigma" if all(r["ecce_r_sigma"] is not None for r in rows) else "ece"
    worst = sorted(rows, key=lambda r: -r[key])[:WORST_GROUPS]
    head = f"groups: {len(rows)} non-empty"
    if summary["mce_sigma"] is not None:
        head += f"; multicalibration ECCE-R/sigma {summary['mce_sigma']:.3f} (p = {summary['mce_pvalue']:.3g})"
    lines = ["", head + f"; worst by {key}:", f"{'group':>12}{'n':>14}{'accuracy':>14}{'ece':>14}{'ecce_r':>14}"
             f"{'ecce_r/sigma':>14}{'p':>14}"]
    for r in worst:
        sig = "-" if r["ecce_r_sigma"] is None else f"{r['ecce_r_sigma']:.3f}"
        p = "-" if r["ecce_pvalue"] is None else f"{r['ecce_pvalue']:.3g}"
        lines.append(f"{r['group']:>12}{r['n']:>14,}{r['accuracy']:>14.5f}{r['ece']:>14.5f}{r['ecce_r']:>14.5f}"
                     f"{sig:>14}{p:>14}")
    return lines


class _Details:
    """The per-class counts and the confidence / correctness of every evaluated row (``report(details=True)``)."""

    def __init__(self, n_rows, n_classes, binary, from_logits):
        self.binary, self.from_logits, self.n = binary, from_logits, 0
        self.confidence = np.empty(n_rows)
        self.correct = np.empty(n_rows, dtype=bool)
        self.count = np.zeros(n_classes, dtype=np.int64)
        self.hits = np.zeros(n_classes, dtype=np.int64)

    def update(self, scores, labels):
        """One block of rows, already checked by the raw accumulator."""
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels).astype(np.int64, copy=False)
        if self.binary:
            with np.errstate(over="ignore"):  # exp(-s) = inf for a very negative logit: p = 0, as it should be
                p = 1.0 / (1.0 + np.exp(-s)) if self.from_logits else s
            pred = (p > 0.5).astype(np.int64)
            conf = np.maximum(p, 1.0 - p)
        else:
            pred = np.argmax(s, axis=1)
            top = np.take_along_axis(s, pred[:, None], axis=1)
            conf = 1.0 / np.exp(s - top).sum(axis=1) if self.from_logits else top[:, 0]
        ok = pred == y
        k = len(y)
        self.confidence[self.n:self.n + k], self.correct[self.n:self.n + k] = conf, ok
        self.n += k
        self.count += np.bincount(y, minlength=len(self.count))
        self.hits += np.bincount(y[ok], minlength=len(self.count))

    def result(self, accs, backend):
        from .metrics import _errors_from_bins
        from .ood import _optimal_aurc, risk_coverage_curve

        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = self.hits / self.count
        ece = {}
        for name, acc in accs.items():
            bins = acc._classwise_bins
            if bins is not None:
                w, sp, sy = bins
                ece[name] = np.array([_errors_from_bins(w[c], sp[c], sy[c])[0] for c in range(w.shape[0])])
        per_class = {"class": np.arange(len(self.count)), "count": self.count, "accuracy": accuracy,
                     "classwise_ece": ece}
        conf, ok = self.confidence[:self.n], self.correct[:self.n]
        curve = risk_coverage_curve(conf, ok, backend=backend)
        aurc = float(np.sum(np.diff(curve.coverage, prepend=0.0) * curve.risk))
        selective = {"aurc": aurc, "e_aurc": aurc - _optimal_aurc(int(ok.sum()), self.n), "curve": curve}
        return per_class, selective


class ReportResult(dict):
    """The result of :func:`report`: a dict (see there) that also converts to a table.

    ``to_frame()`` gives a pandas DataFrame with one row per evaluated set
    (``raw``, then each calibrator) and one column per metric; ``to_dict()``
    gives the JSON-safe dict that ``calibkit report --json`` writes.
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the reliability tables as lists, no arrays (see :func:`json_safe`)."""
        return json_safe(self)

    def to_frame(self) -> pd.DataFrame:
        """The metrics as a :class:`pandas.DataFrame`: index ``raw`` and each calibrator, a column per metric.

        Needs pandas (``pip install 'calibkit[pandas]'``)."""
        from ._frames import require_pandas

        pd = require_pandas()
        rows = {name: {k: v for k, v in r.items() if k != "params"} for name, r in self["rows"].items()}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "calibration"
        return frame



def format_table(result: Mapping[str, Any]) -> str:
    """The report as a fixed-width text table.

    Examples
    --------
    >>> import calibkit
    >>> from calibkit import io, report
    >>> r = report.report(io.open_dump(calibkit.datasets.example_path(), split="test"))
    >>> table = report.format_table(r).splitlines()
    >>> table[0].endswith("10,000 rows x 10 classes (logits)")
    True
    >>> for line in table[1:]:
    ...     print(line)
                             n      accuracy           ece classwise_ece    smooth_ece  rmsce_debias  ecce_r/sigma        ecce_p         brier           nll
    raw                 10,000       0.95000       0.01819       0.00462       0.01794       0.02889      11.18402       2.2e-16       0.08149       0.18672
    """
    kind = "logits" if result["from_logits"] else "probabilities"
    dense = result.get("dense")
    rows = f"{result['n_rows']:,} rows"
    if dense is not None:
        rows = (f"{result['n_rows']:,} pixels of {tuple(dense['shape'])} (classes on axis {dense['class_axis']}"
                + (f", {dense['ignored']:,} ignored" if dense["ignored"] else "") + ")")
    head = (f"{result['dump']}: {rows} x {result['n_classes']} classes ({kind})"
            + (f"; calibrators fitted on {result['n_val']:,} validation rows" if result["n_val"] else ""))
    cols = [c for c in COLUMNS if any(c in r for r in result["rows"].values())]
    lines = [head, f"{'':<12}" + "".join(f"{HEADERS.get(c, c):>14}" for c in cols)]
    for name, r in result["rows"].items():
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(f"{'-':>14}")
            elif c == "n":
                cells.append(f"{v:>14,}")
            elif c == "ecce_pvalue":
                cells.append(f"{v:>14.1e}")
            else:
                cells.append(f"{v:>14.5f}")
        lines.append(f"{name:<12}" + "".join(cells))
    if result.get("groups") is not None:
        lines += _format_groups(result["groups"])
    return "\n".join(lines)


def json_safe(result) -> dict:
    """The report as plain JSON-safe values (the risk-coverage curve itself is left out; AURC and E-AURC stay)."""
    out = {k: v for k, v in result.items() if k not in ("tables", "per_class", "selective", "dense_map")}
    out["reliability_tables"] = {k: t.to_dict() for k, t in result["tables"].items()}
    if "per_class" in result:
        pc = result["per_class"]
        out["per_class"] = {"class": pc["class"].tolist(), "count": pc["count"].tolist(),
                            "accuracy": _floats(pc["accuracy"]),
                            "classwise_ece": {k: _floats(v) for k, v in pc["classwise_ece"].items()}}
    if "selective" in result:
        out["selective"] = {k: result["selective"][k] for k in ("aurc", "e_aurc")}
    return out


def _floats(a):
    return [None if v != v else v for v in np.asarray(a, dtype=np.float64).tolist()]


__all__ = ["METHODS", "ReportResult", "format_table", "report"]
