"""Mergeable, serialisable calibration state for streams of predictions.

:class:`CalibrationAccumulator` keeps sufficient statistics, never the rows:
per equal-width bin the count, weight, Σ w·confidence and Σ w·correct (and
Σ w² and Σ w²·c(1 − c), for the debiased error and the sigma of the cumulative
measures of weighted streams); the same over a fine histogram of confidences (for equal-mass bins); the totals
behind accuracy, Brier score and NLL; optionally class-wise bins and Poisson
bootstrap replicates. ``update`` runs the same native kernels as
:mod:`calibkit.metrics` (one pass, GIL released); ``merge`` adds states;
``compute`` turns a state into metrics. Merging the states of any split of a
stream gives the metrics of the whole stream (counts exactly, sums to
rounding).

Equal-mass bins (``ace``)
-------------------------
Equal-mass edges depend on all the data, so the state keeps a fine histogram
of confidences, log-scaled towards 0 and 1 where the confidences of
over-confident networks pile up: with d = min(c, 1 - c), 2^``fine_bits``
buckets (default 128) per power of two of d, for d from 2^-(``fine_levels``+1)
(default 2^-37 ~ 7.3e-12) to 1/2, on each side of 1/2 (9216 buckets by
default, 368 KB of state; the bucket of c spans at most 0.8 % of d). The buckets are read from
the bits of d (as in HDR histograms), so no logarithm is computed per row.
``compute`` assigns whole fine bins to equal-mass bins. Rows are then placed
as the exact ``strategy="quantile"`` metric places them except inside the
fine bins that contain an exact quantile edge. Moving a row (weight w,
confidence c, correctness y) between bins changes the ECE by at most
2 w |y - c| / n, and the fine histogram also keeps A_f = Σ w |y - c| per fine
bin, so

    |ace - ece(strategy="quantile")| <= ace_bound = 2 Σ_{f ∋ edge} A_f / n,

which ``compute`` reports alongside (it is exact to rounding, not a
statistical bound, and the tests check it).

Bootstrap
---------
With ``bootstrap=B`` the state also keeps B Poisson(1) bootstrap replicates of
the equal-width bin sums (Oza & Russell's online bootstrap): a row enters
replicate b with multiplicity k ~ Poisson(1) drawn from a counter-based
generator keyed by (``seed``, the row's position in the stream, b). Positions
count from ``start``; give each worker of a split stream the position of its
first row and the merged state is the one a single pass would give.
``compute`` reports the standard error of the ECE over the replicates and a
percentile interval at ``confidence_level``.

Cumulative calibration and groups
---------------------------------
The fine buckets are contiguous in confidence, so ``compute().cumulative``
reads ECCE-R / ECCE-MAD (:func:`calibkit.cumulative_calibration_error`) off
the bucket boundaries, exact there, with the largest possible move inside a
bucket (from A_f) as an exact bound (:class:`calibkit.cumulative.StreamedCumulative`). Their
sigma, sqrt(Σ w² c (1 - c)) / Σ w, is exact, weighted or not: the equal-width bins also keep Σ w² and
Σ w² c (1 - c) (Kish's effective counts of the weighted ``debiased_rmsce`` too). States written before these
sums were kept load with them unknown: a weighted one then has no sigma and no ``debiased_rmsce`` (None), an
unweighted one bounds sigma from the fine buckets (``sigma_bound``).
With ``n_groups=G``, ``update(..., groups=ids)`` also keeps a light state per
group, and ``compute().groups`` (:class:`GroupResults`) gives a result per
group, the worst group by each measure and the multicalibration error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
import struct
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._validation import (
    MAX_BOOTSTRAP, MAX_CLASSES, MAX_FINE_BINS, MAX_FINE_BITS, MAX_FINE_LEVELS, MAX_ROWS, MAX_WINDOW_BLOCKS,
    MAX_STREAM_WEIGHT, MIN_STREAM_WEIGHT, BadElementError, check_bool, check_cells, check_n_bins, check_size,
    check_stream_weight, raise_for_status,
)
from .cumulative import StreamedCumulative, _from_fine, kuiper_pvalue
from .metrics import (
    ReliabilityTable, _binary_probabilities, _debiased_squares, _equal_width_edges, _errors_from_bins, _nll_eps,
    _prepare,
)
from .smooth import AUTO_GRID_SIZES, _Grids

if TYPE_CHECKING:
    import pandas as pd

    from .ood import OODAccumulator

__all__ = ["CalibrationAccumulator", "CalibrationResult", "WindowedAccumulator", "load_state"]

FORMAT_MAGIC = b"CKSTATE\x00"
FORMAT_VERSION = 1

# Totals slots.
_T_COUNT, _T_WEIGHT, _T_CORRECT, _T_CONFIDENCE, _T_BRIER, _T_NLL = range(6)
_FLOAT_MAX = float(np.finfo(np.float64).max)
_MAX_EXACT = float(2 ** 53)  # counts are exact integers in float64 up to here
_SUM_TOL = 1e-6  # relative slack of "sum <= weight" checks on decoded states (rounding of long streams)
#: The sums of w² a weighted stream keeps (Σ w² and Σ w² c (1 - c) per bin) stay within [MIN_SQUARES, MAX_SQUARES]:
#: a batch that takes Σ w² past MAX_SQUARES (or to inf) drops them (unknown from then on), and a stream whose Σ w² is
#: below MIN_SQUARES (every weight below about 1e-125: their squares underflow) reports them as unknown.
MAX_SQUARES = 1e300
MIN_SQUARES = 1e-250


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """Metrics of a calibration state (see :meth:`CalibrationAccumulator.compute`).

    ``ece``/``mce``/``rmsce`` use equal-width bins, ``ace`` equal-mass bins (with
    ``ace_bound`` its largest possible distance from the exact one-shot value).
    ``ece_se`` and ``ece_ci`` are None without bootstrap replicates;
    ``classwise_ece`` is None unless enabled. ``debiased_rmsce`` is Kumar, Liang & Ma's debiased RMS
    calibration error over the equal-width bins (:func:`calibkit.debiased_calibration_error`:
    sqrt(max(0, ``debiased_squared``))); with weights, n_m is Kish's effective count (Σw)²/Σw² of the bin, as
    the one-shot function. Both are None for a weighted state written before the state kept Σw² per bin.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> acc = calibkit.CalibrationAccumulator(n_bins=10).update(rng.dirichlet(np.ones(3), 500), rng.integers(0, 3, 500))
    >>> result = acc.compute()
    >>> result.count, round(result.ece, 4), round(result.accuracy, 3)
    (500, 0.301, 0.31)
    >>> result.reliability_table().n_bins
    10
    """

    ece: float
    mce: float
    rmsce: float
    ace: float
    ace_bound: float
    classwise_ece: float | None
    accuracy: float
    mean_confidence: float
    brier: float
    nll: float
    count: int
    weight: float
    ece_se: float | None
    ece_ci: tuple[float, float] | None
    confidence_level: float
    table: ReliabilityTable = dataclasses.field(repr=False)
    debiased_rmsce: float | None = None
    debiased_squared: float | None = None
    smooth_ece: float | None = None  # with smooth=True: calibkit.smooth_ece of the rows (automatic bandwidth)
    #: ECCE-R / ECCE-MAD from the fine histogram with their bounds (:class:`calibkit.cumulative.StreamedCumulative`).
    cumulative: StreamedCumulative | None = None
    #: Per-group results with ``n_groups`` (:class:`GroupResults`), else None.
    groups: GroupResults | None = None

    def reliability_table(self) -> ReliabilityTable:
        """Per-bin counts, confidence and accuracy (equal-width bins)."""
        return self.table

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe metrics (the reliability table under ``"reliability_table"``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "table"}
        out["ece_ci"] = list(self.ece_ci) if self.ece_ci is not None else None
        for name in ("cumulative", "groups"):
            out[name] = out[name].to_dict() if out[name] is not None else None
        out["reliability_table"] = self.table.to_dict()
        return out

    def to_frame(self) -> pd.DataFrame:
        """The metrics as a one-row :class:`pandas.DataFrame`, a column per metric (``ece_ci`` as
        ``ece_ci_low`` / ``ece_ci_high``); the reliability table is ``self.table.to_frame()``.

        Needs pandas (``pip install 'calibkit[pandas]'``)."""
        from ._frames import require_pandas

        pd = require_pandas()
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("table", "ece_ci", "cumulative", "groups")}
        if self.cumulative is not None:
            row.update({f"ecce_{k}": v for k, v in self.cumulative.to_dict().items()})
        low, high = self.ece_ci if self.ece_ci is not None else (None, None)
        row["ece_ci_low"], row["ece_ci_high"] = low, high
        return pd.DataFrame([row])


#: Largest ``n_groups`` of a CalibrationAccumulator, and the most float64 values all group states may hold
#: together (``n_groups * (6 n_bins + 5 fine buckets + 6)``, 512 MiB).
MAX_GROUPS = 1 << 16
MAX_GROUP_VALUES = 1 << 26
#: The measures ``GroupResults.worst`` ranks groups by (larger is worse for each).
_WORST = ("ece", "mce", "rmsce", "ace", "brier", "nll", "ecce_range", "ecce_max_abs", "ecce_range_sigma",
          "ecce_max_abs_sigma")


@dataclasses.dataclass(frozen=True)
class GroupResults:
    """Per-group metrics of a :class:`CalibrationAccumulator` with ``n_groups`` (see its ``compute``).

    ``results[g]`` is the :class:`CalibrationResult` of group g (None for a group without rows);
    ``worst[measure]`` the group with the largest value of that measure (``ece``, ``mce``, ``rmsce``,
    ``ace``, ``brier``, ``nll``, ``ecce_range``, ``ecce_max_abs``, ``ecce_range_sigma``,
    ``ecce_max_abs_sigma``), None when no group has it. ``mce_sigma`` is the multicalibration error of
    Guy et al. 2025 on the sigma scale as ``mcgrad.metrics.MulticalibrationError.mce_sigma`` computes it
    with the groups as its segments: the largest ECCE-R / sigma over the whole stream and every non-empty
    group (mcgrad by default also drops segments of fewer than 10 rows; here every non-empty group counts).
    The ECCE values come from the fine histograms (:class:`calibkit.cumulative.StreamedCumulative`), so
    ``mce_sigma_interval`` holds the exact one-shot value; ``mce_pvalue`` is the Kuiper p-value of
    ``mce_sigma`` (not adjusted for multiple testing, as mcgrad's). The three are None for a weighted state
    written before the state kept Σ w² c (1 - c).
    """

    results: tuple
    worst: dict
    mce_sigma: float | None
    mce_sigma_interval: tuple[float, float] | None
    mce_pvalue: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the per-group results as dictionaries (None for empty groups)."""
        return {"results": [None if r is None else r.to_dict() for r in self.results], "worst": dict(self.worst),
                "mce_sigma": self.mce_sigma,
                "mce_sigma_interval": None if self.mce_sigma_interval is None else list(self.mce_sigma_interval),
                "mce_pvalue": self.mce_pvalue}


def _measure(result, name):
    if name.startswith("ecce_"):
        value = getattr(result.cumulative, name[5:]) if result.cumulative is not None else None
    else:
        value = getattr(result, name)
    return None if value is None or not np.isfinite(value) and value != math.inf else float(value)


def _sigma_interval(c):
    """[lo, hi] of the exact one-shot ECCE-R / sigma from a StreamedCumulative's values and bounds."""
    lo_s, hi_s = c.sigma - c.sigma_bound, c.sigma + c.sigma_bound
    lo = c.range / hi_s if hi_s > 0 else (math.inf if c.range > 0 else 0.0)
    top = c.range + c.range_bound
    hi = top / lo_s if lo_s > 0 else (math.inf if top > 0 else 0.0)
    return lo, hi


def _group_results(overall, results):
    worst = {}
    for name in _WORST:
        best, at = None, None
        for g, r in enumerate(results):
            v = None if r is None else _measure(r, name)
            if v is not None and (best is None or v > best):
                best, at = v, g
        worst[name] = at
    everything = [overall] + [r for r in results if r is not None]
    if any(r.cumulative is None or r.cumulative.range_sigma is None for r in everything):
        return GroupResults(tuple(results), worst, None, None, None)
    mce = max(r.cumulative.range_sigma for r in everything)
    bounds = [_sigma_interval(r.cumulative) for r in everything]
    interval = (max(b[0] for b in bounds), max(b[1] for b in bounds))
    return GroupResults(tuple(results), worst, mce, interval, kuiper_pvalue(mce))


class CalibrationAccumulator:
    """Calibration state of a stream: update with batches, merge, compute, serialise.

    Parameters
    ----------
    n_bins : int, default 15
        Equal-width (and equal-mass) bins of the metrics, at most ``MAX_BINS`` = 2**20.
    from_logits : bool, default False
        Whether batches hold logits (as in :func:`calibkit.ece`).
    temperature : float, default 1.0
        With logits: the metrics are those of softmax(z / temperature), e.g. a
        temperature-scaled model (:class:`calibkit.TemperatureScaling`) followed
        from its raw logits. The division happens inside the kernel: no scaled
        copy of a batch is made.
    classwise : bool, default False
        Also keep class-wise bins (``classwise_ece``, Kull et al. 2019);
        ``n_classes * n_bins`` must be at most ``MAX_CELLS`` = 2**26.
    n_classes : int, optional
        Number of classes K (at most ``MAX_CLASSES`` = 2**26); taken from the
        first batch when not given.
    bootstrap : int, default 0
        Number B of Poisson bootstrap replicates (0: no intervals), at most
        ``MAX_BOOTSTRAP`` = 100000, with ``bootstrap * n_bins`` at most 2**26.
    seed : int, default 0
        Key of the bootstrap generator.
    start : int, default 0
        Stream position of the first row this accumulator will see.
    fine_bits, fine_levels : int
        Resolution and range of the fine histogram behind ``ace`` (see the
        module docs): ``fine_bits`` in [0, 12], ``fine_levels`` in [1, 1000],
        and at most 2**20 buckets, 2 * (fine_levels << fine_bits).
    confidence_level : float, default 0.95
        Level of ``ece_ci``.
    smooth : bool, default False
        Also keep the grid sums of the smooth ECE (:func:`calibkit.smooth_ece`, automatic bandwidth):
        ``compute().smooth_ece`` equals the one-shot value to rounding. Adds 20762 x 2 float64 (332 KB)
        to the state; an (N, K) batch is still read once (the grid sums come from the update's own pass),
        except logits with K < 16 columns, whose grid sums take a second pass.
    n_groups : int, default 0
        Keep also a state per group (segment) of rows, for :meth:`update`'s ``groups=`` ids in
        [0, n_groups): ``compute().groups`` then holds a result per group, the worst group by each measure
        and the multicalibration summary (:class:`GroupResults`). At most ``MAX_GROUPS`` = 65536. A group
        state has the equal-width bins and a fine histogram, no bootstrap and no class-wise bins:
        8 * (6 n_bins + 5 * 2 (group_fine_levels << group_fine_bits) + 6) bytes, about 370 KB with the
        default fine histogram and 15 bins, about 8 KB with ``group_fine_bits=3, group_fine_levels=12``
        (192 buckets; a coarser histogram only widens the ``ace`` and ECCE bounds). All groups together
        hold at most ``MAX_GROUP_VALUES`` = 2**26 values (512 MiB), checked before anything is allocated.
    group_fine_bits, group_fine_levels : int, optional
        The fine histogram of the group states (default: ``fine_bits``, ``fine_levels``).
    backend : {"auto", "cpp", "numba"}

    Raises
    ------
    ValueError
        A size above its maximum (the limits live in :mod:`calibkit._validation`):
        nothing is allocated before every size is checked.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> acc = calibkit.CalibrationAccumulator(n_bins=10, from_logits=True, bootstrap=100)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(5):
    ...     _ = acc.update(rng.normal(size=(1000, 4)), rng.integers(0, 4, 1000))
    >>> result = acc.compute()
    >>> result.count
    5000
    """

    def __init__(self, n_bins: int = 15, *, from_logits: bool = False, temperature: float = 1.0,
                 classwise: bool = False, n_classes: int | None = None, bootstrap: int = 0, seed: int = 0,
                 start: int = 0, fine_bits: int = 7, fine_levels: int = 36, confidence_level: float = 0.95,
                 n_groups: int = 0, group_fine_bits: int | None = None, group_fine_levels: int | None = None,
                 backend: Backend = "auto", smooth: bool = False):
        self._configure(n_bins, from_logits=from_logits, temperature=temperature, classwise=classwise,
                        n_classes=n_classes, bootstrap=bootstrap, seed=seed, start=start, fine_bits=fine_bits,
                        fine_levels=fine_levels, confidence_level=confidence_level, backend=backend, smooth=smooth)
        self._configure_groups(n_groups, group_fine_bits, group_fine_levels)
        self.reset()

    def _configure(self, n_bins=15, *, from_logits=False, temperature=1.0, classwise=False, n_classes=None,
                   bootstrap=0, seed=0, start=0, fine_bits=7, fine_levels=36, confidence_level=0.95,
                   backend="auto", smooth=False):
        """Check and store the configuration; allocates nothing (sizes are bounded first)."""
        self.smooth = check_bool(smooth, "smooth")
        self.n_bins = check_n_bins(n_bins)
        self.from_logits = check_bool(from_logits, "from_logits")
        if isinstance(temperature, (bool, np.bool_)) or not isinstance(temperature, numbers.Real) \
                or not (0 < temperature <= _FLOAT_MAX) or not np.isfinite(1.0 / float(temperature)):
            raise ValueError(f"temperature must be a finite number > 0 (with a finite 1/temperature), "
                             f"got {temperature!r}")
        if temperature != 1 and not self.from_logits:
            raise ValueError("temperature applies to logits: give from_logits=True")
        self.temperature = float(temperature)
        self.classwise = check_bool(classwise, "classwise")
        self.n_classes = None if n_classes is None else check_size(n_classes, "n_classes", 2, MAX_CLASSES)
        if self.classwise and self.n_classes is not None:
            check_cells(self.n_classes, "n_classes", self.n_bins)
        self.bootstrap = check_size(bootstrap, "bootstrap", 0, MAX_BOOTSTRAP)
        check_cells(self.bootstrap, "bootstrap", self.n_bins)
        self.seed = check_size(seed, "seed", 0, 2**64 - 1)
        self.start = check_size(start, "start", 0, MAX_ROWS)
        self.fine_bits = check_size(fine_bits, "fine_bits", 0, MAX_FINE_BITS)
        self.fine_levels = check_size(fine_levels, "fine_levels", 1, MAX_FINE_LEVELS)
        self.fine_bins = 2 * (self.fine_levels << self.fine_bits)
        if self.fine_bins > MAX_FINE_BINS:
            raise ValueError(f"2 * (fine_levels << fine_bits) fine buckets must be <= {MAX_FINE_BINS} (2**20), "
                             f"got fine_levels={self.fine_levels} and fine_bits={self.fine_bits}")
        if isinstance(confidence_level, (bool, np.bool_)) or not isinstance(confidence_level, numbers.Real) \
                or not 0 < confidence_level < 1:
            raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
        self.confidence_level = float(confidence_level)
        _backend.resolve_backend(backend)
        self.backend = backend
        return self

    # -- configuration -----------------------------------------------------------

    def _config(self) -> dict:
        return {
            "n_bins": self.n_bins, "from_logits": self.from_logits, "temperature": self.temperature,
            "classwise": self.classwise,
            "n_classes": self.n_classes, "bootstrap": self.bootstrap, "seed": self.seed,
            "fine_bits": self.fine_bits, "fine_levels": self.fine_levels,
            **({"smooth": True} if self.smooth else {}),  # states without smooth ECE keep their bytes
            **({"n_groups": self.n_groups, "group_fine_bits": self.group_fine_bits,
                "group_fine_levels": self.group_fine_levels} if getattr(self, "n_groups", 0) else {}),
        }

    def _compatible(self, other) -> None:
        if not isinstance(other, CalibrationAccumulator):
            raise TypeError(f"can only merge a CalibrationAccumulator, got {type(other).__name__}")
        mine, theirs = self._config(), other._config()
        if self.smooth != other.smooth:
            raise ValueError(f"cannot merge accumulators with different smooth: {self.smooth!r} != {other.smooth!r}")
        for key in mine:
            if key == "n_classes":
                continue
            if mine[key] != theirs[key]:
                raise ValueError(f"cannot merge accumulators with different {key}: {mine[key]!r} != {theirs[key]!r}")
        if self.n_classes is not None and other.n_classes is not None and self.n_classes != other.n_classes:
            raise ValueError(f"cannot merge accumulators with different n_classes: {self.n_classes} != "
                             f"{other.n_classes}")
        if self._kind is not None and other._kind is not None and self._kind != other._kind:
            raise ValueError(f"cannot merge a {self._kind} state with a {other._kind} state")

    # -- state ---------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every row (the configuration stays)."""
        M, R, B = self.n_bins, self.fine_bins, self.bootstrap
        self._bins = np.zeros((4, M))
        # Σ w² and Σ w² c (1 - c) per equal-width bin; None when unknown (a non-empty state written before it was kept)
        self._squares = np.zeros((2, M))
        self._fine = np.zeros((5, R))
        self._boot = np.zeros((B, 3, M))
        self._totals = np.zeros(6)
        self._smooth = np.zeros((int(AUTO_GRID_SIZES.sum()), 2)) if self.smooth else None
        self._classwise_bins = None
        if self.classwise and self.n_classes is not None:
            self._classwise_bins = np.zeros((3, self.n_classes, M))
        self._position = self.start
        self._groups = [self._new_group() for _ in range(getattr(self, "n_groups", 0))]
        self._kind = None  # "top-label" or "binary", fixed by the first batch
        self._weighted = False
        if not hasattr(self, "metadata"):
            self.metadata = {}  # JSON-safe user data saved with the state

    @property
    def count(self) -> int:
        """Number of rows added so far."""
        return int(self._totals[_T_COUNT])

    def update(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None,
               groups: ArrayLike | None = None, *, axis: int = 1, ignore_index: int | None = None,
               mask: ArrayLike | None = None) -> "CalibrationAccumulator":
        """Add a batch: any input :func:`calibkit.ece` accepts. Atomic: a bad batch raises and adds nothing.

        Dense batches (a segmentation model's maps): ``scores`` of shape ``(B, K, *spatial)`` (``axis=1``, the
        default) or channel-last ``(B, *spatial, K)`` (``axis=-1``), with ``labels``, ``mask``, ``sample_weight``
        and ``groups`` of shape ``(B, *spatial)``; every pixel is a row. ``ignore_index`` (an integer label, e.g.
        255) and ``mask`` (bool, True = counted) leave pixels out, for (N, K) and (N,) batches too. The class
        axis is read with its stride and no flattened copy of the scores is made (only a piece of at most
        ``calibkit._dense.PIECE_ROWS`` rows with ignored pixels is gathered); the kernel runs piece by piece
        with the stream positions the flattened rows would have, so the bootstrap replicates are those of one
        update with the flattened kept rows. Counts are exact; bins and totals are added piece by piece
        (each image is a piece of class-second maps), so they equal that flattened update to rounding
        (bit-for-bit when the flattened rows are added in the same pieces). A dense update copies the state
        once (to undo a batch with a bad pixel: still atomic); a batch in which every pixel is ignored is
        not an error (a monitor never stops): it adds nothing and leaves the state as it was. Bad elements
        are named at their place in the caller's arrays (``labels[2, 4, 6] = 9 is out of range ...``).

        With ``n_groups``, ``groups`` gives each row's group id (integers in [0, n_groups), required); each
        group's rows are also added to its state (one copy of the batch's rows in all, taken group by group).

        (N, K) batches take one kernel call (:func:`_fused_update`): the top-label pass and the
        stream pass together (and the smooth ECE's grid sums with ``smooth=True``), the state updated in
        place; a batch of at most one chunk runs on the calling thread, in one pass over its rows.

        The state also keeps Σ w² and Σ w² c (1 - c) per equal-width bin (Kish's effective counts of the
        debiased error and the sigma of the cumulative measures with ``sample_weight``). Limits: a batch
        that takes Σ w² past ``MAX_SQUARES`` = 1e300 drops them, and a stream whose Σ w² is below
        ``MIN_SQUARES`` = 1e-250 (all weights below about 1e-125) cannot use them; ``compute()`` then gives
        ``debiased_rmsce`` and the cumulative ``sigma`` as None for a weighted stream (divide every weight by
        one common factor: the metrics do not change).
        """
        if mask is not None or ignore_index is not None or axis != 1 or getattr(scores, "ndim", 2) > 2:
            return self._update_dense(scores, labels, sample_weight, groups, axis, ignore_index, mask)
        k = _backend.kernels(self.backend)
        scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, self.from_logits)
        shape = scores.shape
        n = shape[0]
        group_ids = self._check_groups(groups, n) if groups is not None or self.n_groups else None
        squares = self._squares
        if squares is None and self._kind is None:
            squares = self._known_squares()
        if sample_weight is not None:
            check_stream_weight(sample_weight, float(self._totals[_T_WEIGHT]))
        kind = "binary" if len(shape) == 1 else "top-label"
        if self._kind is not None and kind != self._kind:
            raise ValueError(f"this accumulator holds a {self._kind} stream; got a batch of shape {shape}")
        if kind == "top-label":
            n_classes = shape[1]
            if self.n_classes is not None and n_classes != self.n_classes:
                raise ValueError(f"scores has {n_classes} columns but the accumulator has n_classes={self.n_classes}")
            classwise = None
            if self.classwise:
                check_cells(n_classes, "n_classes", self.n_bins)
                classwise = self._classwise_bins
                if classwise is None:  # kept only if the batch is clean
                    classwise = np.zeros((3, n_classes, self.n_bins))
            smooth = self._smooth
            status = _fused_update(k)(scores, labels, sample_weight, from_logits, _nll_eps(scores.dtype),
                                      1.0 / self.temperature, self._position, self.n_bins, self.fine_bits,
                                      self.fine_levels, self.bootstrap, self.seed, self._bins, self._fine,
                                      self._boot, self._totals, self.n_bins if classwise is not None else 0,
                                      classwise, squares, None if smooth is None else AUTO_GRID_SIZES, smooth)
            if status[0]:
                raise_for_status(status, n_classes=n_classes)
            self._classwise_bins = classwise
            self.n_classes = n_classes
        else:
            if self.classwise:
                raise ValueError("classwise=True needs scores of shape (N, K); got shape (N,)")
            if from_logits and self.temperature != 1.0:
                scores = np.asarray(scores, dtype=np.float64) / self.temperature
            confidence = np.ascontiguousarray(_binary_probabilities(scores, from_logits))
            r = k.binary_stats(confidence, labels, sample_weight, 0, None, _nll_eps(confidence.dtype))
            raise_for_status(r["status"], binary=True)
            status = k.stream_accumulate(confidence, labels, sample_weight, self._position, self.n_bins,
                                         self.fine_bits, self.fine_levels, self.bootstrap, self.seed, self._bins,
                                         self._fine, self._boot, squares)
            raise_for_status(status, binary=True)
            t = r["totals"]
            self._totals += (t["count"], t["weight"], t["correct"], t["confidence"], t["brier"], t["nll"])
        if self._smooth is not None and kind == "binary":  # the smooth ECE's grid sums (the rows were checked above)
            r = k.smooth_grid(confidence, labels, sample_weight, False, AUTO_GRID_SIZES, False, 1.0)
            raise_for_status(r["status"], binary=True)
            self._smooth += r["grid"]
        self._kind = kind
        if sample_weight is not None:
            self._weighted = True
            if squares is not None and not float(squares[0].sum()) <= MAX_SQUARES:
                squares = None  # Σ w² overflowed (or passed MAX_SQUARES): unknown from now on
        self._squares = squares
        self._position += n
        if group_ids is not None:
            self._update_groups(scores, labels, sample_weight, group_ids)
        return self

    # -- dense batches (maps) ---------------------------------------------------------

    def _update_dense(self, scores, labels, sample_weight, groups, axis, ignore_index, mask):
        """update() of a dense batch, or of a batch with ``mask`` / ``ignore_index``: see :meth:`update`."""
        if np.ndim(scores) == 1:  # a binary stream: the kept rows (a copy of N floats), then the plain path
            kept = _kept_binary(scores, labels, sample_weight, groups, axis, ignore_index, mask)
            if kept is None:
                return self
            index, args = kept
            try:
                return self.update(*args)
            except BadElementError as exc:
                raise exc.at_row(int(index[exc.row])) from None
        dense = _dense_batch(scores, labels, sample_weight, axis, ignore_index, mask)
        self._check_dense_batch(dense)
        ids = self._check_groups(groups, dense.row_shape)
        saved = self._snapshot()
        try:
            for piece in dense.pieces():
                self._add_piece(dense, piece, 0, piece.n_rows, piece.sample_weight,
                                None if ids is None else _piece_values(dense, ids, piece), saved)
        except BaseException:
            self._restore(saved)
            raise
        return self

    def _check_dense_batch(self, dense):
        """The checks of a dense batch against the state (before anything is added)."""
        K = dense.n_classes
        if self._kind is not None and self._kind != "top-label":
            raise ValueError(f"this accumulator holds a {self._kind} stream; got a batch of shape {dense.scores.shape}")
        if self.n_classes is not None and K != self.n_classes:
            raise ValueError(f"scores has {K} classes on axis {dense.axis} but the accumulator has "
                             f"n_classes={self.n_classes}")
        if self.classwise:
            check_cells(K, "n_classes", self.n_bins)

    def _add_piece(self, dense, piece, lo, hi, sample_weight, ids, saved):
        """Rows [lo, hi) of a dense piece into the state (``sample_weight`` the piece's weights, or None).

        Bad rows raise with their position in the caller's arrays; the caller restores ``saved``.
        """
        k = _backend.kernels(self.backend)
        scores = piece.scores[lo:hi]
        labels = piece.labels[lo:hi]
        w = None if sample_weight is None else sample_weight[lo:hi]
        K = dense.n_classes
        if w is not None:
            _check_piece_weight(w, float(self._totals[_T_WEIGHT]), dense, piece, lo)
        if ids is not None:
            ids = ids[lo:hi]
            bad = (ids < 0) | (ids >= self.n_groups)
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"groups[{_at(dense, piece, lo + i)}] = {ids[i]} is out of range for "
                                 f"n_groups={self.n_groups}")
        squares = self._known_squares()
        classwise = None
        if self.classwise:
            classwise = self._classwise_bins
            if classwise is None:
                classwise = np.zeros((3, K, self.n_bins))
        status = _fused_update(k)(scores, labels, w, self.from_logits, _nll_eps(scores.dtype),
                                  1.0 / self.temperature, self._position, self.n_bins, self.fine_bits,
                                  self.fine_levels, self.bootstrap, self.seed, self._bins, self._fine,
                                  self._boot, self._totals, self.n_bins if self.classwise else 0, classwise,
                                  squares, None if self._smooth is None else AUTO_GRID_SIZES, self._smooth)
        if status[0] != 0:  # the kernel added nothing; the caller undoes the earlier pieces
            dense.raise_for_status((status[0], int(status[1]) + lo, status[2], status[3]), piece, n_classes=K)
        self._classwise_bins = classwise
        self.n_classes = K
        self._kind = "top-label"
        self._weighted |= w is not None
        if squares is not None and w is not None and not float(squares[0].sum()) <= MAX_SQUARES:
            squares = None
        self._squares = squares
        self._position += hi - lo
        if ids is not None:
            for g in np.unique(ids):
                if int(g) not in saved["groups"]:
                    saved["groups"][int(g)] = self._groups[g]._snapshot()
            self._update_groups(scores, labels, w, ids)

    def _snapshot(self) -> dict:
        """A copy of the mutable state (to undo a dense batch); group states are copied when first touched."""
        copy = (lambda a: None if a is None else a.copy())
        return {"bins": self._bins.copy(), "squares": copy(self._squares), "fine": self._fine.copy(),
                "boot": self._boot.copy(), "totals": self._totals.copy(), "smooth": copy(self._smooth),
                "classwise": copy(self._classwise_bins), "n_classes": self.n_classes, "kind": self._kind,
                "weighted": self._weighted, "position": self._position, "groups": {}}

    def _restore(self, saved) -> None:
        """Back to a :meth:`_snapshot` (once: the snapshot's arrays become the state's)."""
        for g, snap in saved["groups"].items():
            self._groups[g]._restore(snap)
        (self._bins, self._squares, self._fine, self._boot, self._totals, self._smooth, self._classwise_bins,
         self.n_classes, self._kind, self._weighted, self._position) = (
            saved["bins"], saved["squares"], saved["fine"], saved["boot"], saved["totals"], saved["smooth"],
            saved["classwise"], saved["n_classes"], saved["kind"], saved["weighted"], saved["position"])

    def _known_squares(self):
        """The sums of squares, zeros for an empty state (whatever it was loaded from), None when unknown."""
        if self._squares is None and self._kind is None:
            return np.zeros((2, self.n_bins))
        return self._squares

    def merge(self, other: "CalibrationAccumulator") -> "CalibrationAccumulator":
        """Add another state of the same configuration into this one (returns self)."""
        self._compatible(other)
        if other._kind is None:
            return self
        self._bins += other._bins
        mine = self._known_squares()
        if mine is not None and other._squares is not None:
            self._squares = mine + other._squares
        else:  # one side does not know its sums of squares: neither does the merged state
            self._squares = None
        self._fine += other._fine
        self._boot += other._boot
        self._totals += other._totals
        if self._smooth is not None:
            self._smooth += other._smooth
        if other._classwise_bins is not None:
            if self._classwise_bins is None:
                self._classwise_bins = np.zeros_like(other._classwise_bins)
            self._classwise_bins += other._classwise_bins
        self.n_classes = self.n_classes if self.n_classes is not None else other.n_classes
        self._kind = other._kind
        self._weighted |= other._weighted
        self._position = max(self._position, other._position)
        for mine, theirs in zip(self._groups, other._groups):
            mine.merge(theirs)
        return self

    def copy(self) -> "CalibrationAccumulator":
        return self.from_bytes(self.to_bytes(), backend=self.backend)

    def __add__(self, other):
        return self.copy().merge(other)

    def __iadd__(self, other):
        return self.merge(other)

    # -- metrics -----------------------------------------------------------------

    def compute(self) -> CalibrationResult:
        """Metrics of everything added so far."""
        if self._kind is None:
            raise ValueError("the accumulator is empty: update() it with at least one batch before compute()")
        t = self._totals
        weight = t[_T_WEIGHT]
        if not weight > 0:
            raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
        bin_weight, sum_conf, sum_acc = self._bins[1], self._bins[2], self._bins[3]
        ece, mce, rmsce = _errors_from_bins(bin_weight, sum_conf, sum_acc)
        ace, ace_bound = self._equal_mass()
        classwise_ece = None
        if self._classwise_bins is not None:
            w, sp, sy = self._classwise_bins
            classwise_ece = float(np.mean([_errors_from_bins(w[c], sp[c], sy[c])[0] for c in range(w.shape[0])]))
        ece_se = ece_ci = None
        if self.bootstrap:
            replicates = _replicate_ece(self._boot)
            replicates = replicates[np.isfinite(replicates)]
            if replicates.size >= 2:
                ece_se = float(np.std(replicates, ddof=1))
                alpha = (1.0 - self.confidence_level) / 2
                lo, hi = np.quantile(replicates, [alpha, 1.0 - alpha])
                ece_ci = (float(lo), float(hi))
        filled = bin_weight > 0
        # Empty bins: NaN, and no division (as reliability_table; np.errstate costs more than the divisions).
        conf = np.divide(sum_conf, bin_weight, out=np.full(self.n_bins, np.nan), where=filled)
        acc = np.divide(sum_acc, bin_weight, out=np.full(self.n_bins, np.nan), where=filled)
        edges = _equal_width_edges(self.n_bins)  # shared and read-only: the table gets copies
        table = ReliabilityTable(lower=edges[:-1].copy(), upper=edges[1:].copy(), count=self._bins[0].astype(np.int64),
                                 weight=bin_weight.copy(), mean_confidence=conf, accuracy=acc, gap=acc - conf,
                                 strategy="uniform")
        sq = self._squares
        if sq is not None and self._weighted and not float(sq[0].sum()) >= MIN_SQUARES:
            sq = None  # every weight so small that its square underflows (see MIN_SQUARES)
        cumulative = _from_fine(self._fine, self.fine_bits, self.fine_levels, self._weighted,
                                None if sq is None else float(sq[1].sum()))
        debiased_squared = None
        if not self._weighted:
            debiased_squared = float(_debiased_squares(self._bins[0], *self._bins[1:]))
        elif sq is not None:  # Kish's effective count (Σw)²/Σw² per bin, as debiased_calibration_error
            debiased_squared = float(_debiased_squares(self._bins[0], *self._bins[1:], sq_weight=sq[0]))
        result = CalibrationResult(
            ece=ece, mce=mce, rmsce=rmsce, ace=ace, ace_bound=ace_bound, classwise_ece=classwise_ece,
            accuracy=float(t[_T_CORRECT] / weight), mean_confidence=float(t[_T_CONFIDENCE] / weight),
            brier=float(t[_T_BRIER] / weight), nll=float(t[_T_NLL] / weight), count=int(t[_T_COUNT]),
            weight=float(weight), ece_se=ece_se, ece_ci=ece_ci, confidence_level=self.confidence_level, table=table,
            smooth_ece=None if self._smooth is None else
            _Grids(AUTO_GRID_SIZES, self._smooth, t[_T_COUNT], weight).search("reflected_gaussian")[1],
            cumulative=cumulative, debiased_squared=debiased_squared,
            debiased_rmsce=None if debiased_squared is None else math.sqrt(max(0.0, debiased_squared)))
        if self._groups:
            results = [g.compute() if g._kind is not None and g._totals[_T_WEIGHT] > 0 else None for g in self._groups]
            result = dataclasses.replace(result, groups=_group_results(result, results))
        return result

    def _equal_mass(self):
        fine = self._fine
        R = self.fine_bins
        total = fine[1].sum()  # over every bucket (pairwise, as the bound's division always did)
        # Only the buckets holding rows take part: every other bucket holds zeros only (a state that holds weight
        # in a bucket without rows is rejected when decoded), and adding those zeros changes no cumulative sum,
        # bincount or search below. Everything then runs on a few hundred buckets rather than all 9216.
        nz = (fine[0] > 0).nonzero()[0]  # counts are >= 0 (a comparison first: nonzero() on floats is slow)
        count, w, sc, sy = fine[:4].take(nz, axis=1)
        cum = w.cumsum()
        before = cum - w
        M = self.n_bins
        targets = np.arange(1, M) * (total / M)
        coarse = targets.searchsorted(before + w / 2, side="left")  # #{m: t_m < midpoint}
        cw = np.bincount(coarse, weights=w, minlength=M)
        cc = np.bincount(coarse, weights=sc, minlength=M)
        cy = np.bincount(coarse, weights=sy, minlength=M)
        ace = _errors_from_bins(cw, cc, cy)[0]
        # Fine buckets that may hold an exact equal-mass edge (see the module docs): M - 1 runs of buckets
        # [first, last], as indices into all R buckets (a search over the buckets with rows lands on one of them;
        # past the end is the last bucket); both ends are non-decreasing in m.
        found = nz.shape[0]
        if self._weighted:
            # Weighted quantiles (inverted CDF): the first value whose cumulative weight reaches t_m.
            f = cum.searchsorted(targets, side="left")
            first = last = np.where(f < found, nz[np.minimum(f, found - 1)], R - 1)
        else:
            # numpy.quantile (linear): between the order statistics floor(p) and ceil(p), p = m (n-1) / M: every
            # bucket from the one of floor(p) to the one of ceil(p).
            n = int(round(count.sum()))
            ccount = count.cumsum()
            p = np.arange(1, M) * (n - 1) / M
            lo = ccount.searchsorted(np.floor(p), side="right")
            hi = ccount.searchsorted(np.ceil(p), side="right")
            first = np.where(lo < found, nz[np.minimum(lo, found - 1)], R)
            last = np.minimum(np.where(hi < found, nz[np.minimum(hi, found - 1)], R), R - 1)
        # The union of the runs in increasing order, each bucket once (a run starts after the previous one's
        # end): the buckets a mask over all R buckets would select, summed in the same order.
        first = np.maximum(first, np.concatenate(([0], last[:-1] + 1)))
        lengths = np.maximum(last - first + 1, 0)
        edge = np.repeat(first - (lengths.cumsum() - lengths), lengths) + np.arange(int(lengths.sum()))
        bound = float(2.0 * fine[4].take(edge).sum() / total)
        return ace, bound

    # -- groups (segments) ----------------------------------------------------------

    def _configure_groups(self, n_groups=0, group_fine_bits=None, group_fine_levels=None):
        """Check and store the group configuration (sizes bounded before anything is allocated)."""
        self.n_groups = check_size(n_groups, "n_groups", 0, MAX_GROUPS)
        self.group_fine_bits = self.fine_bits if group_fine_bits is None else check_size(
            group_fine_bits, "group_fine_bits", 0, MAX_FINE_BITS)
        self.group_fine_levels = self.fine_levels if group_fine_levels is None else check_size(
            group_fine_levels, "group_fine_levels", 1, MAX_FINE_LEVELS)
        fine = 2 * (self.group_fine_levels << self.group_fine_bits)
        if fine > MAX_FINE_BINS:
            raise ValueError(f"2 * (group_fine_levels << group_fine_bits) fine buckets must be <= {MAX_FINE_BINS} "
                             f"(2**20), got group_fine_levels={self.group_fine_levels} and "
                             f"group_fine_bits={self.group_fine_bits}")
        values = self.n_groups * (6 * self.n_bins + 5 * fine + 6)
        if values > MAX_GROUP_VALUES:
            raise ValueError(f"n_groups={self.n_groups} group states of {6 * self.n_bins + 5 * fine + 6} values each "
                             f"would hold {values} values, more than MAX_GROUP_VALUES = 2**26 (512 MiB): use fewer "
                             "groups or a smaller group_fine_bits / group_fine_levels")
        return self

    def _new_group(self) -> "CalibrationAccumulator":
        return CalibrationAccumulator(self.n_bins, from_logits=self.from_logits, temperature=self.temperature,
                                      n_classes=self.n_classes, fine_bits=self.group_fine_bits,
                                      fine_levels=self.group_fine_levels, backend=self.backend)

    def _check_groups(self, groups, shape):
        """The group ids of a batch (None without n_groups): (N,) int64 for ``shape`` = N rows (bad ids named by
        row, here), or a C-ordered int64 map for the (N, *spatial) ``shape`` of a dense batch (N·H·W ids, never
        ·K; the ids are checked piece by piece, bad ones named at their pixel)."""
        dense = not isinstance(shape, (int, np.integer))
        unit = "pixel's" if dense else "row's"
        if not self.n_groups:
            if groups is not None:
                raise ValueError("groups= needs an accumulator made with n_groups > 0")
            return None
        if groups is None:
            raise ValueError(f"this accumulator keeps n_groups={self.n_groups} groups: give update(..., groups=...) "
                             f"with each {unit} group id")
        g = np.asarray(groups)
        if g.dtype.kind not in "iu":
            raise TypeError(f"groups must be integer group ids, got dtype {g.dtype}")
        if dense:
            if g.shape != shape:
                raise ValueError(f"groups must have shape {shape} (one id per pixel, the labels' shape), "
                                 f"got shape {g.shape}")
            return np.ascontiguousarray(g, dtype=np.int64)  # C order merges with any row axes of the scores
        if g.shape != (shape,):
            raise ValueError(f"groups must have shape ({shape},) (one id per row of scores), got shape {g.shape}")
        bad = (g < 0) | (g >= self.n_groups)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"groups[{i}] = {g[i]} is out of range for n_groups={self.n_groups}")
        return g.astype(np.int64, copy=False)

    def _update_groups(self, scores, labels, sample_weight, ids):
        """Each group's rows into its state (the rows were checked by the whole batch's update)."""
        order = np.argsort(ids, kind="stable")
        ends = np.cumsum(np.bincount(ids, minlength=self.n_groups))
        for g in np.flatnonzero(np.diff(ends, prepend=0)):
            rows = order[ends[g - 1] if g else 0:ends[g]]
            self._groups[g].update(scores[rows], labels[rows],
                                   None if sample_weight is None else sample_weight[rows])

    def _group_arrays(self) -> dict:
        gs = self._groups
        arrays = {"group_bins": np.stack([g._bins for g in gs]), "group_fine": np.stack([g._fine for g in gs]),
                  "group_totals": np.stack([g._totals for g in gs]),
                  "group_weighted": np.array([float(g._weighted) for g in gs])}
        squares = [g._known_squares() for g in gs]
        if all(q is not None for q in squares):  # else none is written: they load as unknown
            arrays["group_squares"] = np.stack(squares)
        return arrays

    def _groups_from_arrays(self, arrays, kind, backend):
        """The group states of a decoded state (each checked as a state of its own)."""
        flags = arrays["group_weighted"]
        if not np.isin(flags, (0.0, 1.0)).all():
            raise ValueError("corrupt calibration state: group_weighted must hold 0 or 1")
        if arrays["group_totals"][:, _T_COUNT].sum() != arrays["totals"][_T_COUNT]:
            raise ValueError("corrupt calibration state: the group row counts do not add up to the row count")
        cfg = self._new_group()._config()
        groups = []
        for g in range(self.n_groups):
            totals = arrays["group_totals"][g]
            meta = {"config": cfg, "start": 0, "position": int(min(totals[_T_COUNT], MAX_ROWS)),
                    "kind": kind if totals[_T_COUNT] > 0 else None, "weighted": bool(flags[g]),
                    "confidence_level": self.confidence_level, "metadata": {}}
            part = {"bins": arrays["group_bins"][g], "fine": arrays["group_fine"][g],
                    "boot": np.zeros((0, 3, self.n_bins)), "totals": totals}
            if "group_squares" in arrays:
                part["squares"] = arrays["group_squares"][g]
            try:
                groups.append(CalibrationAccumulator._from_parts(meta, part, backend))
            except ValueError as exc:
                raise ValueError(f"corrupt calibration state: group {g}: {exc}") from None
        return groups

    # -- persistence ---------------------------------------------------------------

    def _arrays(self) -> dict:
        arrays = {"bins": self._bins, "fine": self._fine, "boot": self._boot, "totals": self._totals}
        if self._squares is not None:
            arrays["squares"] = self._squares
        if self._classwise_bins is not None:
            arrays["classwise"] = self._classwise_bins
        if self._smooth is not None:
            arrays["smooth"] = self._smooth
        if self._groups:
            arrays.update(self._group_arrays())
        return arrays

    def _meta(self) -> dict:
        return {"config": self._config(), "start": self.start, "position": self._position, "kind": self._kind,
                "weighted": self._weighted, "confidence_level": self.confidence_level, "metadata": self.metadata}

    def to_bytes(self) -> bytes:
        """The state in calibkit's versioned, checksummed binary format (see :func:`encode_state`)."""
        return encode_state("CalibrationAccumulator", self._meta(), self._arrays())

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend = "auto") -> "CalibrationAccumulator":
        """Rebuild a state written by :meth:`to_bytes`; malformed input raises ValueError."""
        kind, meta, arrays = decode_state(data)
        if kind != "CalibrationAccumulator":
            raise ValueError(f"the state holds a {kind}, not a CalibrationAccumulator")
        return cls._from_parts(meta, arrays, backend)

    _CONFIG_KEYS = ("n_bins", "from_logits", "temperature", "classwise", "n_classes", "bootstrap", "seed",
                    "fine_bits", "fine_levels", "smooth", "n_groups", "group_fine_bits", "group_fine_levels")
    _META_KEYS = ("config", "start", "position", "kind", "weighted", "confidence_level", "metadata")

    @classmethod
    def _from_parts(cls, meta, arrays, backend):
        """An accumulator from a decoded header and its arrays.

        The configuration is checked (sizes bounded) and the arrays' shapes compared with it before
        anything is allocated; then the content is checked against what a real stream can produce.
        """
        _backend.resolve_backend(backend)
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError("corrupt calibration state: the configuration is missing or not a dictionary")
        cfg = meta["config"]
        for where, given, known in (("configuration", cfg, cls._CONFIG_KEYS), ("header", meta, cls._META_KEYS)):
            unknown = set(given) - set(known) - {"format", "version", "arrays"}
            if unknown:
                raise ValueError(f"corrupt calibration state: unknown {where} keys {sorted(map(str, unknown))}")
        try:
            acc = cls.__new__(cls)._configure(
                cfg["n_bins"], from_logits=cfg["from_logits"], temperature=cfg.get("temperature", 1.0),
                classwise=cfg["classwise"], n_classes=cfg["n_classes"], bootstrap=cfg["bootstrap"], seed=cfg["seed"],
                start=meta["start"], fine_bits=cfg["fine_bits"], fine_levels=cfg["fine_levels"],
                confidence_level=meta["confidence_level"], backend=backend, smooth=cfg.get("smooth", False))
            acc._configure_groups(cfg.get("n_groups", 0), cfg.get("group_fine_bits"), cfg.get("group_fine_levels"))
            position, kind, weighted = meta["position"], meta["kind"], meta["weighted"]
        except KeyError as exc:
            raise ValueError(f"corrupt calibration state: bad configuration (the key {exc} is missing)") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"corrupt calibration state: bad configuration ({exc})") from None
        if isinstance(position, bool) or not isinstance(position, int) or not acc.start <= position <= MAX_ROWS:
            raise ValueError(f"corrupt calibration state: position {position!r} is not an integer in "
                             f"[start={acc.start}, 2**63 - 1]")
        if kind not in (None, "binary", "top-label") or not isinstance(weighted, bool):
            raise ValueError("corrupt calibration state: bad kind or weighted flag")
        if acc.classwise and kind == "binary":
            raise ValueError("corrupt calibration state: class-wise bins in a binary stream")
        if acc.classwise and kind == "top-label" and acc.n_classes is None:
            raise ValueError("corrupt calibration state: a class-wise top-label stream without n_classes")
        M, B = acc.n_bins, acc.bootstrap
        expected = {"bins": (4, M), "fine": (5, acc.fine_bins), "boot": (B, 3, M), "totals": (6,)}
        if acc.classwise and acc.n_classes is not None:
            expected["classwise"] = (3, acc.n_classes, M)
        if acc.smooth:  # states written before smooth ECE have neither the key nor the array
            expected["smooth"] = (int(AUTO_GRID_SIZES.sum()), 2)
        if acc.n_groups:
            G, RG = acc.n_groups, 2 * (acc.group_fine_levels << acc.group_fine_bits)
            expected.update(group_bins=(G, 4, M), group_fine=(G, 5, RG), group_totals=(G, 6), group_weighted=(G,))
        # States written before the sums of squares were kept have neither array (and then load as unknown).
        if "squares" in arrays:
            expected["squares"] = (2, M)
        if acc.n_groups and "group_squares" in arrays:
            expected["group_squares"] = (acc.n_groups, 2, M)
        if set(arrays) != set(expected):
            raise ValueError(f"corrupt calibration state: arrays {sorted(arrays)}, expected {sorted(expected)} "
                             f"(classwise={acc.classwise}, n_classes={acc.n_classes}, kind={kind})")
        for name, shape in expected.items():
            a = arrays[name]
            if a.shape != shape:
                raise ValueError(f"corrupt calibration state: {name} has shape {a.shape}, expected {shape} from the "
                                 f"configuration n_bins={M}, bootstrap={B}, fine_bits={acc.fine_bits}, "
                                 f"fine_levels={acc.fine_levels}, classwise={acc.classwise}, n_classes={acc.n_classes}")
            if not np.isfinite(a).all():
                raise ValueError(f"corrupt calibration state: {name} holds NaN or inf")
        _check_state_content(arrays, kind, weighted)
        acc._groups = acc._groups_from_arrays(arrays, kind, backend) if acc.n_groups else []
        acc._bins, acc._fine, acc._boot, acc._totals = (arrays["bins"], arrays["fine"], arrays["boot"],
                                                        arrays["totals"])
        acc._classwise_bins = arrays.get("classwise")
        acc._squares = arrays.get("squares")  # None in states written before it was kept (zeros once updated)
        acc._smooth = arrays.get("smooth")
        if acc._smooth is not None:  # each grid holds the total weight and the total residual Σ w (f - y)
            t = arrays["totals"]
            sums = np.add.reduceat(acc._smooth, np.cumsum(AUTO_GRID_SIZES) - AUTO_GRID_SIZES, axis=0)
            want = np.array([t[_T_WEIGHT], t[_T_CONFIDENCE] - t[_T_CORRECT]])
            if (np.abs(sums - want) > _SUM_TOL * t[_T_WEIGHT] + 1e-300).any():
                raise ValueError("corrupt calibration state: the smooth grids do not add up to the totals")
        acc._position, acc._kind, acc._weighted = position, kind, weighted
        metadata = meta.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("corrupt calibration state: metadata must be a dictionary")
        acc.metadata = metadata
        return acc

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (lists of floats); :meth:`from_dict` reads it back."""
        return {"format": "calibkit.CalibrationAccumulator", "version": FORMAT_VERSION, **self._meta(),
                "arrays": {k: {"shape": list(v.shape), "data": v.ravel().tolist()} for k, v in self._arrays().items()}}

    @classmethod
    def from_dict(cls, d: dict, *, backend: Backend = "auto") -> "CalibrationAccumulator":
        """Rebuild a state written by :meth:`to_dict`; malformed input raises ValueError naming the key.

        The same checks as :meth:`from_bytes`: sizes bounded, arrays of the configured shapes, content
        that a real stream can produce. Array data must be lists of numbers (no strings, booleans or
        integers too large for a float).
        """
        if not isinstance(d, dict) or d.get("format") != "calibkit.CalibrationAccumulator":
            raise ValueError("not a calibkit.CalibrationAccumulator dictionary")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported state version {d.get('version')!r} (this calibkit reads {FORMAT_VERSION})")
        raw = d.get("arrays")
        if not isinstance(raw, dict):
            raise ValueError("corrupt calibration state: 'arrays' must be a dictionary")
        arrays = {}
        for name, entry in raw.items():
            if not isinstance(name, str) or not isinstance(entry, dict) or set(entry) != {"shape", "data"}:
                raise ValueError(f"corrupt calibration state: arrays[{name!r}] must be "
                                 "{'shape': [...], 'data': [...]}")
            shape, data = entry["shape"], entry["data"]
            if not isinstance(shape, list) or len(shape) > 4 or not all(
                    isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _MAX_VALUES for n in shape):
                raise ValueError(f"corrupt calibration state: arrays[{name!r}]['shape'] = {shape!r} is not a shape")
            if not isinstance(data, list) or len(data) != math.prod(shape):
                raise ValueError(f"corrupt calibration state: arrays[{name!r}]['data'] must be a list of "
                                 f"{math.prod(shape)} numbers")
            try:
                a = np.asarray(data) if data else np.zeros(0)
            except (TypeError, ValueError, OverflowError):  # ragged lists
                a = np.zeros((0, 0))
            if a.ndim != 1 or a.dtype.kind not in "iuf":
                raise ValueError(f"corrupt calibration state: arrays[{name!r}]['data'] must hold numbers only "
                                 "(no strings, booleans, lists or integers too large for a float)")
            arrays[name] = a.astype(np.float64).reshape(shape)
        return cls._from_parts(d, arrays, backend)

    def __reduce__(self):
        return (_accumulator_from_bytes, (self.to_bytes(), self.backend))

    def __repr__(self) -> str:
        return (f"CalibrationAccumulator(n_bins={self.n_bins}, from_logits={self.from_logits}, "
                f"classwise={self.classwise}, bootstrap={self.bootstrap}, count={self.count})")


def _dense_batch(scores, labels, sample_weight, axis, ignore_index, mask):
    """A dense batch through the adapter (shapes and types checked; contents are checked by the kernel)."""
    from ._dense import as_dense

    if labels is None:
        raise TypeError("labels are required: an accumulator counts labelled rows")
    return as_dense(scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight)


def _kept_binary(scores, labels, sample_weight, groups, axis, ignore_index, mask):
    """The kept rows of a binary (N,) batch with ``mask`` / ``ignore_index``: (index of the kept rows, the
    (scores, labels, sample_weight, groups) to add), or None when every row is left out."""
    from ._validation import check_scores

    s = check_scores(scores)
    if isinstance(axis, (bool, np.bool_)) or axis not in (1, -1):
        raise ValueError(f"axis must be 1 or -1 (the class axis); binary scores of shape {s.shape} have none, "
                         f"got axis={axis!r}")
    n = s.shape[0]
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match scores of shape ({n},), got shape {y.shape}")
    keep = np.ones(n, bool)
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool:
            raise TypeError(f"mask must be a boolean array (True where a row is counted), got dtype {m.dtype}")
        if m.shape != (n,):
            raise ValueError(f"mask must have shape ({n},) to match scores of shape ({n},), got shape {m.shape}")
        keep &= m
    if ignore_index is not None:
        if isinstance(ignore_index, (bool, np.bool_)) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an integer label (e.g. 255) or None, "
                            f"got {type(ignore_index).__name__}")
        keep &= y != ignore_index
    index = np.flatnonzero(keep)
    if index.shape[0] == 0:
        return None

    def take(a, name):
        if a is None:
            return None
        a = np.asarray(a)
        if a.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match scores of shape ({n},), got shape {a.shape}")
        return a[index]

    return index, (s[index], y[index], take(sample_weight, "sample_weight"), take(groups, "groups"))


def _piece_values(dense, a, piece):
    """The values of a C-ordered ``(N, *spatial)`` map ``a`` at the rows of a dense piece, in the piece's order."""
    return dense.values(a, piece)


def _at(dense, piece, row):
    """The caller's index of a piece's row, as text: ``2, 4, 6``."""
    return ", ".join(map(str, dense.position(piece, row)))


def _check_piece_weight(w, total, dense, piece, lo):
    """check_stream_weight on rows of a dense piece, a bad weight named at its place in the caller's map."""
    bad = (w != 0) & ((w < MIN_STREAM_WEIGHT) | (w > MAX_STREAM_WEIGHT))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"sample_weight[{_at(dense, piece, lo + i)}] = {float(w[i])!r} is outside "
                         f"[{MIN_STREAM_WEIGHT:g}, {MAX_STREAM_WEIGHT:g}] (0 is allowed): a streaming accumulator "
                         "keeps raw weighted sums; divide every weight by one common factor (the metrics do not "
                         "change)")
    if total + float(np.sum(w)) > MAX_STREAM_WEIGHT:
        raise ValueError(f"sample_weight: the total weight of the stream would pass {MAX_STREAM_WEIGHT:g}; divide "
                         "every weight by one common factor (the metrics do not change)")


def _accumulator_from_bytes(data, backend):
    return CalibrationAccumulator.from_bytes(data, backend=backend)


def _check_state_content(arrays, kind, weighted=True):
    """Reject decoded arrays that no real stream can produce (forged or corrupted states)."""
    def fail(what):
        raise ValueError(f"corrupt calibration state: {what}")

    bins, fine, boot, totals = arrays["bins"], arrays["fine"], arrays["boot"], arrays["totals"]
    cw = arrays.get("classwise")
    counts = (("bins", bins[0]), ("fine", fine[0]), ("totals", totals[_T_COUNT:_T_COUNT + 1]))
    for name, c in counts:
        if (c < 0).any() or (c != np.floor(c)).any() or (c > _MAX_EXACT).any():
            fail(f"{name} holds negative counts, or counts that are fractional or beyond 2**53 (wrapped)")
    n = totals[_T_COUNT]
    if bins[0].sum() != n or fine[0].sum() != n:
        fail(f"the counts in bins ({bins[0].sum():.17g}) and fine ({fine[0].sum():.17g}) do not add up to the "
             f"row count in totals ({n:.17g})")
    if (kind is None) != (n == 0) or (kind is None and (bins.any() or fine.any() or boot.any() or totals.any()
                                                        or (cw is not None and cw.any()))):
        fail("an empty state must hold zeros only, and a non-empty one a kind")

    def sums_within(name, weight, *sums):
        if (weight < 0).any():
            fail(f"{name} holds negative weights")
        limit = weight * (1 + _SUM_TOL) + 1e-300
        for s in sums:
            if (s < 0).any() or (s > limit).any():
                fail(f"{name} holds a sum outside [0, weight] (each value is a probability or 0/1)")

    sums_within("bins", bins[1], bins[2], bins[3])
    sums_within("fine", fine[1], fine[2], fine[3], fine[4])
    sums_within("boot", boot[:, 0], boot[:, 1], boot[:, 2])
    if cw is not None:
        sums_within("classwise", cw[0], cw[1], cw[2])
    w = totals[_T_WEIGHT]
    sums_within("totals", totals[_T_WEIGHT:_T_WEIGHT + 1], totals[_T_CORRECT:_T_CONFIDENCE + 1])
    if not 0 <= totals[_T_BRIER] <= 2 * w * (1 + _SUM_TOL) + 1e-300 or totals[_T_NLL] < -_SUM_TOL * max(w, 1.0):
        fail("totals holds a Brier sum outside [0, 2 weight] or a negative NLL")
    parts = [("bins", bins[1].sum()), ("fine", fine[1].sum())]
    if cw is not None:  # every row adds its weight to one bin of every class
        parts += [("classwise", x) for x in (cw[0].sum(axis=1).min(initial=w), cw[0].sum(axis=1).max(initial=w))]
    for name, total in parts:
        if abs(total - w) > _SUM_TOL * max(w, total) + 1e-300:
            fail(f"the {name} weights add up to {total:.17g}, not to the total weight {w:.17g}")
    if ((bins[0] == 0) & (bins[1] > 0)).any() or ((fine[0] == 0) & (fine[1] > 0)).any():
        fail("a bin without rows holds weight")
    sq = arrays.get("squares")
    if sq is not None:
        _check_squares(sq, bins, weighted, fail)


def _check_squares(sq, bins, weighted, fail):
    """Σ w² and Σ w² c (1 - c) per bin against the bin's count n and weight W: 0 <= Σ w² c (1 - c) <= Σ w² / 4,
    W² / n <= Σ w² <= W² (Cauchy-Schwarz), zero in a bin without rows, and Σ w² = n without weights."""
    count, weight = bins[0], bins[1]
    sq_w, sq_v = sq
    if (sq_w < 0).any() or (sq_v < 0).any():
        fail("squares holds negative sums")
    if ((count == 0) & ((sq_w != 0) | (sq_v != 0))).any():
        fail("a bin without rows holds sums of squares")
    if (sq_v > sq_w / 4 * (1 + _SUM_TOL) + 1e-300).any():
        fail("squares holds a sum of w^2 c (1 - c) above a quarter of the sum of w^2")
    ww = weight * weight
    lower = np.divide(ww, count, out=np.zeros_like(ww), where=count > 0)
    if (sq_w > ww * (1 + _SUM_TOL) + 1e-300).any() or (sq_w < lower * (1 - _SUM_TOL) - 1e-300).any():
        fail("squares holds a sum of w^2 outside [weight^2 / count, weight^2] (Cauchy-Schwarz)")
    if not weighted and (sq_w != count).any():
        fail("an unweighted state's sum of w^2 differs from its row count")


def _replicate_ece(boot):
    """ECE of every bootstrap replicate, vectorised over replicates (NaN for an empty replicate)."""
    w, sc, sy = boot[:, 0], boot[:, 1], boot[:, 2]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(w > 0, np.abs(sy - sc), 0.0)
        return gap.sum(axis=1) / total


# ----------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------


class WindowedAccumulator:
    """Calibration metrics over the recent past of a stream.

    Exactly one of:

    window : int
        Metrics over the most recent ``window`` rows, kept as a ring of
        ``n_blocks`` blocks of ``ceil(window / n_blocks)`` rows. A full block
        leaves the window whole (exact: its state is dropped, nothing is
        subtracted), so once ``window`` rows have been seen the window covers
        between ``window - block + 1`` and ``window`` rows (exactly ``window``
        when ``n_blocks`` divides it and a block has just filled).
    decay : float in (0, 1)
        Exponential forgetting per row: a row seen j rows ago has weight
        decay**j (counts stay raw counts). The effective window is about
        1 / (1 - decay) rows.

    n_blocks : int, default 16
        Blocks of the ring (``window`` only), at most ``MAX_WINDOW_BLOCKS`` = 1024
        (each block holds one accumulator state).

    ``window`` is at most 2**63 - 1. The other keywords are those of
    :class:`CalibrationAccumulator`, with the same limits.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> win = calibkit.WindowedAccumulator(window=1000, n_bins=10, from_logits=True)
    >>> for _ in range(5):
    ...     _ = win.update(rng.normal(size=(400, 3)), rng.integers(0, 3, 400))
    >>> win.count <= 1000 + win.block_size  # the most recent rows, in whole blocks
    True
    >>> round(win.compute().ece, 4)
    0.2532
    """

    def __init__(self, window: int | None = None, *, decay: float | None = None, n_blocks: int = 16,
                 **kwargs: Any):
        self._configure(window, decay=decay, n_blocks=n_blocks, **kwargs)
        self.reset()

    def _configure(self, window=None, *, decay=None, n_blocks=16, **kwargs):
        """Check and store the configuration; allocates nothing."""
        if (window is None) == (decay is None):
            raise ValueError("give exactly one of window= or decay=")
        self.window = None if window is None else check_size(window, "window", 1, MAX_ROWS)
        if decay is not None and (isinstance(decay, (bool, np.bool_)) or not isinstance(decay, numbers.Real)
                                  or not 0 < decay < 1):
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = None if decay is None else float(decay)
        self.n_blocks = check_size(n_blocks, "n_blocks", 1, MAX_WINDOW_BLOCKS)
        self._kwargs = dict(kwargs)
        CalibrationAccumulator.__new__(CalibrationAccumulator)._configure(**self._kwargs)  # checked now
        if not hasattr(self, "metadata"):
            self.metadata = {}
        return self

    @property
    def block_size(self) -> int | None:
        return None if self.window is None else -(-self.window // self.n_blocks)

    def reset(self) -> None:
        """Forget every row (the configuration and ``metadata`` stay)."""
        if not hasattr(self, "metadata"):
            self.metadata = {}  # JSON-safe user data saved with the state
        self._blocks = deque()
        self._current = CalibrationAccumulator(**self._kwargs)
        self._seen = 0

    @property
    def count(self) -> int:
        """Rows inside the window now."""
        return sum(b.count for b in self._blocks) + self._current.count

    def update(self, scores: ArrayLike, labels: ArrayLike, sample_weight: ArrayLike | None = None, *,
               axis: int = 1, ignore_index: int | None = None,
               mask: ArrayLike | None = None) -> "WindowedAccumulator":
        """Add a batch (as :meth:`CalibrationAccumulator.update`, dense maps and ``ignore_index`` / ``mask`` too).

        A dense batch ``(B, K, *spatial)`` (``axis=1``) or ``(B, *spatial, K)`` (``axis=-1``) adds its kept pixels as
        rows, in the order of the flattened maps, read piece by piece in place (no flattened copy): with
        ``window`` they fill the blocks as the flattened rows would (the same blocks, bins to rounding), with
        ``decay`` the newest kept pixel has weight 1. Atomic (the window's current state is copied once to
        undo a bad batch); a batch in which every pixel is ignored adds nothing.
        """
        if mask is not None or ignore_index is not None or axis != 1 or getattr(scores, "ndim", 2) > 2:
            return self._update_dense(scores, labels, sample_weight, axis, ignore_index, mask)
        if self.decay is not None:
            return self._update_decayed(scores, labels, sample_weight)
        from ._validation import check_scores

        scores = check_scores(scores)
        n = scores.shape[0]
        labels = np.asarray(labels)
        sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        # Validate the whole batch once (atomic), then split it over blocks.
        CalibrationAccumulator(**{**self._kwargs, "bootstrap": 0, "smooth": False}).update(scores, labels,
                                                                                           sample_weight)
        i = 0
        while i < n:
            room = self.block_size - self._current.count
            j = min(n, i + room)
            self._current.update(scores[i:j], labels[i:j], None if sample_weight is None else sample_weight[i:j])
            i = j
            self._roll()
        self._seen += n
        return self

    def _update_dense(self, scores, labels, sample_weight, axis, ignore_index, mask):
        if np.ndim(scores) == 1:  # a binary stream: its kept rows, then the plain path
            kept = _kept_binary(scores, labels, sample_weight, None, axis, ignore_index, mask)
            if kept is None:
                return self
            index, args = kept
            try:
                return self.update(*args[:3])
            except BadElementError as exc:
                raise exc.at_row(int(index[exc.row])) from None
        dense = _dense_batch(scores, labels, sample_weight, axis, ignore_index, mask)
        self._current._check_dense_batch(dense)
        K = dense.n_classes
        for b in self._blocks:
            if b.n_classes is not None and b.n_classes != K:
                raise ValueError(f"scores has {K} classes on axis {dense.axis} but the window holds rows of "
                                 f"{b.n_classes} classes")
        blocks, current, seen = list(self._blocks), self._current, self._seen
        saved = current._snapshot()
        try:
            if self.decay is not None:
                self._add_decayed(dense)
            else:
                self._add_windowed(dense)
        except BaseException:
            current._restore(saved)
            self._blocks, self._current, self._seen = deque(blocks), current, seen
            raise
        return self

    def _roll(self):
        """A full current block joins the ring and a new one starts at its stream position; at most n_blocks
        blocks hold rows (the current one included)."""
        if self._current.count >= self.block_size:
            self._blocks.append(self._current)
            position = self._current._position
            self._current = CalibrationAccumulator(**{**self._kwargs, "start": position})
        while len(self._blocks) + (self._current.count > 0) > self.n_blocks:
            self._blocks.popleft()

    def _add_windowed(self, dense):
        """The kept pixels of a dense batch into the ring of blocks, block boundaries inside pieces."""
        for piece in dense.pieces():
            i, m = 0, piece.n_rows
            while i < m:
                room = self.block_size - self._current.count
                j = min(m, i + room)
                self._current._add_piece(dense, piece, i, j, piece.sample_weight, None, None)
                i = j
                self._roll()
            self._seen += m

    def _add_decayed(self, dense):
        """The kept pixels of a dense batch with decayed weights: the newest kept pixel weighs 1."""
        n = dense.n_kept()
        if n == 0:
            return
        acc = self._current
        if acc._kind is not None:
            fade = self.decay ** n
            acc._bins[1:] *= fade
            if acc._squares is not None:
                acc._squares *= fade * fade
            acc._fine[1:] *= fade
            acc._boot *= fade
            acc._totals[1:] *= fade
            if acc._smooth is not None:
                acc._smooth *= fade
            if acc._classwise_bins is not None:
                acc._classwise_bins *= fade
        for piece in dense.pieces():
            m = piece.n_rows
            if piece.sample_weight is not None:
                _check_piece_weight(piece.sample_weight, 0.0, dense, piece, 0)
            top = n - 1 - piece.offset  # the newest row of the whole batch has exponent 0
            factors = self.decay ** np.arange(top, top - m, -1, dtype=np.float64)
            w = factors if piece.sample_weight is None else piece.sample_weight * factors
            w[w < MIN_STREAM_WEIGHT] = 0.0
            acc._add_piece(dense, piece, 0, m, w, None, None)
        self._seen += n

    def _update_decayed(self, scores, labels, sample_weight):
        from ._validation import check_sample_weight, check_scores

        scores = check_scores(scores)
        n = scores.shape[0]
        w = check_sample_weight(sample_weight, n)
        check_stream_weight(w, 0.0)
        factors = self.decay ** np.arange(n - 1, -1, -1, dtype=np.float64)  # newest row: weight 1
        w = factors if w is None else w * factors
        w[w < MIN_STREAM_WEIGHT] = 0.0  # faded below 1e-300: nothing left to count
        trial = CalibrationAccumulator(**{**self._kwargs, "bootstrap": 0, "smooth": False})
        trial.update(scores, labels, w)  # validates the batch before the state is touched
        acc = self._current
        if acc._kind is not None:
            fade = self.decay ** n
            acc._bins[1:] *= fade
            if acc._squares is not None:  # sums of w² fade with the square
                acc._squares *= fade * fade
            acc._fine[1:] *= fade
            acc._boot *= fade
            acc._totals[1:] *= fade
            if acc._smooth is not None:
                acc._smooth *= fade
            if acc._classwise_bins is not None:
                acc._classwise_bins *= fade
        acc.update(scores, labels, w)
        self._seen += n
        return self

    def _merged(self) -> CalibrationAccumulator:
        total = CalibrationAccumulator(**self._kwargs)
        for b in self._blocks:
            total.merge(b)
        return total.merge(self._current)

    def compute(self) -> CalibrationResult:
        """Metrics of the rows in the window."""
        return self._merged().compute()

    def to_bytes(self) -> bytes:
        meta = {"window": self.window, "decay": self.decay, "n_blocks": self.n_blocks, "seen": self._seen,
                "metadata": self.metadata,
                "kwargs": {k: v for k, v in self._kwargs.items() if k != "backend"},
                "blocks": [b._meta() for b in [*self._blocks, self._current]]}
        arrays = {}
        for i, b in enumerate([*self._blocks, self._current]):
            for name, a in b._arrays().items():
                arrays[f"{i}.{name}"] = a
        return encode_state("WindowedAccumulator", meta, arrays)

    @classmethod
    def from_bytes(cls, data: bytes, *, backend: Backend = "auto") -> "WindowedAccumulator":
        """Rebuild a state written by :meth:`to_bytes`; malformed input raises ValueError.

        The configuration is checked and every block's arrays compared with it before anything is
        allocated; each block must hold the window's configuration and a state a real stream can produce.
        """
        kind, meta, arrays = decode_state(data)
        if kind != "WindowedAccumulator":
            raise ValueError(f"the state holds a {kind}, not a WindowedAccumulator")
        _backend.resolve_backend(backend)
        try:
            kwargs = meta["kwargs"]
            if not isinstance(kwargs, dict) or "backend" in kwargs:
                raise TypeError("kwargs must be a dictionary of accumulator keywords")
            win = cls.__new__(cls)._configure(meta["window"], decay=meta["decay"], n_blocks=meta["n_blocks"],
                                              backend=backend, **kwargs)
            block_meta = meta["blocks"]
            seen = meta["seen"]
        except KeyError as exc:
            raise ValueError(f"corrupt calibration state: bad window configuration (the key {exc} is "
                             "missing)") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"corrupt calibration state: bad window configuration ({exc})") from None
        if not isinstance(block_meta, list) or not block_meta or len(block_meta) > win.n_blocks + 1 or \
                (win.decay is not None and len(block_meta) != 1):
            raise ValueError("corrupt calibration state: bad block list")
        if isinstance(seen, bool) or not isinstance(seen, int) or not 0 <= seen <= MAX_ROWS:
            raise ValueError(f"corrupt calibration state: seen = {seen!r} is not a row count")
        parts = [{} for _ in block_meta]
        for name, a in arrays.items():
            index, _, field = name.partition(".")
            if not index.isdigit() or int(index) >= len(parts) or not field:
                raise ValueError(f"corrupt calibration state: array {name!r} belongs to no block")
            parts[int(index)][field] = a
        reference = CalibrationAccumulator.__new__(CalibrationAccumulator)._configure(**win._kwargs)._config()
        blocks = []
        for bm, part in zip(block_meta, parts):
            block = CalibrationAccumulator._from_parts(bm, part, backend)
            config = block._config()
            if reference["n_classes"] is None:
                config["n_classes"] = None
            if config != reference or block.confidence_level != win._kwargs.get("confidence_level", 0.95):
                raise ValueError("corrupt calibration state: a block's configuration differs from the window's")
            blocks.append(block)
        if sum(b.count for b in blocks) > seen:
            raise ValueError(f"corrupt calibration state: the blocks hold more rows than the {seen} seen")
        metadata = meta.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("corrupt calibration state: metadata must be a dictionary")
        win._blocks = deque(blocks[:-1])
        win._current = blocks[-1]
        win._seen = seen
        win.metadata = metadata
        return win

    def __reduce__(self):
        return (_windowed_from_bytes, (self.to_bytes(),))


def _fused_update(k):
    """The fused top-label stream update (``stream_top_label``) of a kernels module."""
    return k.stream_top_label


def _windowed_from_bytes(data):
    return WindowedAccumulator.from_bytes(data)


# ----------------------------------------------------------------------------
# The binary format
# ----------------------------------------------------------------------------
#
#   magic        8 bytes  b"CKSTATE\0"
#   version      uint32   FORMAT_VERSION
#   header_len   uint32   length of the header
#   header       UTF-8 JSON: {"type": ..., "meta": {...}, "arrays": [[name, [shape...]], ...]}
#   data         the arrays, in header order, float64 little-endian, C order
#   crc32        uint32   zlib.crc32 of every byte before it
#
# All integers little-endian.

_MAX_HEADER = 1 << 20  # bytes of header JSON
_MAX_DEPTH = 32  # nesting of the header JSON (user metadata included)
_MAX_NDIM = 4
_MAX_VALUES = 1 << 28  # float64 values of one array (the payload must hold them anyway)
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def encode_state(kind: str, meta: dict, arrays: dict) -> bytes:
    """Serialise a state: see the format above."""
    header = json.dumps({"type": kind, "meta": meta,
                         "arrays": [[name, list(a.shape)] for name, a in arrays.items()]},
                        separators=(",", ":"), sort_keys=True).encode()
    # Never write what decode_state would refuse (e.g. a state whose metadata is too big or too deep).
    if len(header) > _MAX_HEADER or _json_depth(header) > _MAX_DEPTH:
        raise ValueError(f"the state's header (metadata included) must be at most {_MAX_HEADER} bytes of JSON "
                         f"nested at most {_MAX_DEPTH} deep; got {len(header)} bytes, {_json_depth(header)} deep")
    parts = [FORMAT_MAGIC, struct.pack("<II", FORMAT_VERSION, len(header)), header]
    parts += [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays.values()]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _json_depth(text: bytes) -> int:
    """Deepest nesting of [ and { in JSON text, brackets inside strings not counted (no recursion)."""
    bare = np.frombuffer(_STRINGS.sub(b'""', text), dtype=np.uint8)
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def decode_state(data) -> tuple[str, dict, dict]:
    """Parse and check a serialised state; any malformed bytes raise ValueError.

    The header is checked before anything it declares is allocated: at most 1 MB of JSON nested at
    most 32 deep (checked on the raw text, before parsing), every array entry a
    name and a shape of at most 4 dimensions, all float64 (the only data type of the format), and
    the declared sizes adding up exactly to the payload length. The arrays are then read from the
    payload (never more bytes than were given).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"state must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(FORMAT_MAGIC) + 12:
        raise ValueError(f"corrupt calibration state: {len(data)} bytes is too short")
    if data[:8] != FORMAT_MAGIC:
        raise ValueError("not a calibkit state (bad magic bytes)")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise ValueError("corrupt calibration state: checksum mismatch (truncated or modified)")
    version, header_len = struct.unpack("<II", body[8:16])
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported state version {version} (this calibkit reads {FORMAT_VERSION})")
    if header_len > min(_MAX_HEADER, len(body) - 16):
        raise ValueError(f"corrupt calibration state: header length {header_len} is beyond the data or 1 MB")
    raw = body[16:16 + header_len]
    depth = _json_depth(raw)
    if depth > _MAX_DEPTH:
        raise ValueError(f"corrupt calibration state: the header is nested {depth} deep (at most {_MAX_DEPTH})")
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
        kind, meta, layout = header["type"], header["meta"], header["arrays"]
        if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(layout, list):
            raise TypeError("bad header types")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
        raise ValueError(f"corrupt calibration state: bad header ({type(exc).__name__}: {exc})") from None
    sizes = []
    for entry in layout:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and len(entry[1]) <= _MAX_NDIM
                and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _MAX_VALUES
                        for n in entry[1])):
            raise ValueError(f"corrupt calibration state: bad array entry {str(entry)[:80]} "
                             f"(expected [name, shape of at most {_MAX_NDIM} sizes])")
        size = math.prod(entry[1])
        if size > _MAX_VALUES:
            raise ValueError(f"corrupt calibration state: array {entry[0]!r} declares {size} values")
        sizes.append(size)
    names = [entry[0] for entry in layout]
    if len(set(names)) != len(names):
        raise ValueError("corrupt calibration state: an array name appears twice")
    payload = len(body) - 16 - header_len
    if 8 * sum(sizes) != payload:
        raise ValueError(f"corrupt calibration state: the header declares {8 * sum(sizes)} bytes of arrays, "
                         f"the data holds {payload}")
    offset = 16 + header_len
    arrays = {}
    for (name, shape), size in zip(layout, sizes):
        arrays[name] = np.frombuffer(body, dtype="<f8", count=size, offset=offset).astype(np.float64).reshape(shape)
        offset += 8 * size
    return kind, meta, arrays


def load_state(data: bytes, *,
               backend: Backend = "auto") -> CalibrationAccumulator | WindowedAccumulator | OODAccumulator:
    """Rebuild whichever accumulator ``data`` holds (CalibrationAccumulator, WindowedAccumulator, OODAccumulator)."""
    kind, _, _ = decode_state(data)
    if kind == "CalibrationAccumulator":
        return CalibrationAccumulator.from_bytes(data, backend=backend)
    if kind == "WindowedAccumulator":
        return WindowedAccumulator.from_bytes(data, backend=backend)
    if kind == "OODAccumulator":
        from .ood import OODAccumulator

        return OODAccumulator.from_bytes(data)
    raise ValueError(f"unknown state type {kind!r}")
