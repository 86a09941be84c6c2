"""Mergeable, serialisable calibration state for streams of predictions.

:class:`CalibrationAccumulator` keeps sufficient statistics, never the rows:
per equal-width bin the count, weight, Σ w·confidence and Σ w·correct; the
same over a fine histogram of confidences (for equal-mass bins); the totals
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
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
import zlib
from collections import deque

import numpy as np

from . import _backend
from ._validation import check_bool, check_n_bins, raise_for_status
from .metrics import ReliabilityTable, _binary_probabilities, _errors_from_bins, _nll_eps, _prepare

__all__ = ["CalibrationAccumulator", "CalibrationResult", "WindowedAccumulator", "load_state"]

FORMAT_MAGIC = b"CKSTATE\x00"
FORMAT_VERSION = 1

# Totals slots.
_T_COUNT, _T_WEIGHT, _T_CORRECT, _T_CONFIDENCE, _T_BRIER, _T_NLL = range(6)


def _check_int(value, name, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """Metrics of a calibration state (see :meth:`CalibrationAccumulator.compute`).

    ``ece``/``mce``/``rmsce`` use equal-width bins, ``ace`` equal-mass bins (with
    ``ace_bound`` its largest possible distance from the exact one-shot value).
    ``ece_se`` and ``ece_ci`` are None without bootstrap replicates;
    ``classwise_ece`` is None unless enabled.
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

    def reliability_table(self) -> ReliabilityTable:
        """Per-bin counts, confidence and accuracy (equal-width bins)."""
        return self.table

    def to_dict(self) -> dict:
        """JSON-safe metrics (the reliability table under ``"reliability_table"``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "table"}
        out["ece_ci"] = list(self.ece_ci) if self.ece_ci is not None else None
        out["reliability_table"] = self.table.to_dict()
        return out


class CalibrationAccumulator:
    """Calibration state of a stream: update with batches, merge, compute, serialise.

    Parameters
    ----------
    n_bins : int, default 15
        Equal-width (and equal-mass) bins of the metrics.
    from_logits : bool, default False
        Whether batches hold logits (as in :func:`calibkit.ece`).
    temperature : float, default 1.0
        With logits: the metrics are those of softmax(z / temperature), e.g. a
        temperature-scaled model (:class:`calibkit.TemperatureScaling`) followed
        from its raw logits. The division happens inside the kernel: no scaled
        copy of a batch is made.
    classwise : bool, default False
        Also keep class-wise bins (``classwise_ece``, Kull et al. 2019).
    n_classes : int, optional
        Number of classes K; taken from the first batch when not given.
    bootstrap : int, default 0
        Number B of Poisson bootstrap replicates (0: no intervals).
    seed : int, default 0
        Key of the bootstrap generator.
    start : int, default 0
        Stream position of the first row this accumulator will see.
    fine_bits, fine_levels : int
        Resolution and range of the fine histogram behind ``ace`` (see the
        module docs).
    confidence_level : float, default 0.95
        Level of ``ece_ci``.
    backend : {"auto", "cpp", "numba"}

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> acc = calibkit.CalibrationAccumulator(n_bins=10, from_logits=True, bootstrap=100)
    >>> rng = np.random.default_rng(0)
    >>> for _ in range(5):
    ...     acc.update(rng.normal(size=(1000, 4)), rng.integers(0, 4, 1000))
    >>> result = acc.compute()
    >>> result.count
    5000
    """

    def __init__(self, n_bins=15, *, from_logits=False, temperature=1.0, classwise=False, n_classes=None,
                 bootstrap=0, seed=0, start=0, fine_bits=7, fine_levels=36, confidence_level=0.95, backend="auto"):
        self.n_bins = check_n_bins(n_bins)
        self.from_logits = check_bool(from_logits, "from_logits")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) \
                or not (0 < temperature < np.inf):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if temperature != 1 and not self.from_logits:
            raise ValueError("temperature applies to logits: give from_logits=True")
        self.temperature = float(temperature)
        self.classwise = check_bool(classwise, "classwise")
        self.n_classes = None if n_classes is None else _check_int(n_classes, "n_classes", 2)
        self.bootstrap = _check_int(bootstrap, "bootstrap", 0, 100_000)
        self.seed = _check_int(seed, "seed", 0, 2**64 - 1)
        self.start = _check_int(start, "start", 0, 2**63 - 1)
        self.fine_bits = _check_int(fine_bits, "fine_bits", 0, 12)
        self.fine_levels = _check_int(fine_levels, "fine_levels", 1, 1000)
        self.fine_bins = 2 * (self.fine_levels << self.fine_bits)
        if not isinstance(confidence_level, (int, float)) or not 0 < confidence_level < 1:
            raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
        self.confidence_level = float(confidence_level)
        _backend.resolve_backend(backend)
        self.backend = backend
        self.reset()

    # -- configuration -----------------------------------------------------------

    def _config(self) -> dict:
        return {
            "n_bins": self.n_bins, "from_logits": self.from_logits, "temperature": self.temperature,
            "classwise": self.classwise,
            "n_classes": self.n_classes, "bootstrap": self.bootstrap, "seed": self.seed,
            "fine_bits": self.fine_bits, "fine_levels": self.fine_levels,
        }

    def _compatible(self, other) -> None:
        if not isinstance(other, CalibrationAccumulator):
            raise TypeError(f"can only merge a CalibrationAccumulator, got {type(other).__name__}")
        mine, theirs = self._config(), other._config()
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
        self._fine = np.zeros((5, R))
        self._boot = np.zeros((B, 3, M))
        self._totals = np.zeros(6)
        self._classwise_bins = None
        if self.classwise and self.n_classes is not None:
            self._classwise_bins = np.zeros((3, self.n_classes, M))
        self._position = self.start
        self._kind = None  # "top-label" or "binary", fixed by the first batch
        self._weighted = False
        if not hasattr(self, "metadata"):
            self.metadata = {}  # JSON-safe user data saved with the state

    @property
    def count(self) -> int:
        """Number of rows added so far."""
        return int(self._totals[_T_COUNT])

    def update(self, scores, labels, sample_weight=None) -> "CalibrationAccumulator":
        """Add a batch: any input :func:`calibkit.ece` accepts. Atomic: a bad batch raises and adds nothing."""
        k = _backend.kernels(self.backend)
        scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, self.from_logits)
        kind = "binary" if scores.ndim == 1 else "top-label"
        if self._kind is not None and kind != self._kind:
            raise ValueError(f"this accumulator holds a {self._kind} stream; got a batch of shape {scores.shape}")
        n = scores.shape[0]
        classwise_add = None
        if kind == "top-label":
            n_classes = scores.shape[1]
            if self.n_classes is not None and n_classes != self.n_classes:
                raise ValueError(f"scores has {n_classes} columns but the accumulator has n_classes={self.n_classes}")
            confidence = np.empty(n)
            target = np.empty(n, np.uint8)
            # One pass: top-label totals and confidences, and the class-wise bins when kept.
            r = k.top_label_stats(scores, labels, sample_weight, from_logits, 0, _nll_eps(scores.dtype),
                                  with_nll=True, conf_out=confidence, correct_out=target,
                                  inverse_temperature=1.0 / self.temperature,
                                  classwise_bins=self.n_bins if self.classwise else 0)
            raise_for_status(r["status"], n_classes=n_classes)
            if self.classwise:
                c = r["classwise"]
                shape = (n_classes, self.n_bins)
                classwise_add = np.stack([np.asarray(c[key], dtype=np.float64).reshape(shape)
                                          for key in ("weight", "sum_score", "sum_target")])
        else:
            if self.classwise:
                raise ValueError("classwise=True needs scores of shape (N, K); got shape (N,)")
            if from_logits and self.temperature != 1.0:
                scores = np.asarray(scores, dtype=np.float64) / self.temperature
            confidence = np.ascontiguousarray(_binary_probabilities(scores, from_logits))
            target = labels
            r = k.binary_stats(confidence, target, sample_weight, 0, None, _nll_eps(confidence.dtype))
            raise_for_status(r["status"], binary=True)
            n_classes = None
        status = k.stream_accumulate(confidence, target, sample_weight, self._position, self.n_bins, self.fine_bits,
                                     self.fine_levels, self.bootstrap, self.seed, self._bins, self._fine, self._boot)
        raise_for_status(status, binary=kind == "binary")
        t = r["totals"]
        self._totals += (t["count"], t["weight"], t["correct"], t["confidence"], t["brier"], t["nll"])
        if classwise_add is not None:
            if self._classwise_bins is None:
                self._classwise_bins = np.zeros_like(classwise_add)
            self._classwise_bins += classwise_add
        if n_classes is not None:
            self.n_classes = n_classes
        self._kind = kind
        self._weighted |= sample_weight is not None
        self._position += n
        return self

    def merge(self, other: "CalibrationAccumulator") -> "CalibrationAccumulator":
        """Add another state of the same configuration into this one (returns self)."""
        self._compatible(other)
        if other._kind is None:
            return self
        self._bins += other._bins
        self._fine += other._fine
        self._boot += other._boot
        self._totals += other._totals
        if other._classwise_bins is not None:
            if self._classwise_bins is None:
                self._classwise_bins = np.zeros_like(other._classwise_bins)
            self._classwise_bins += other._classwise_bins
        self.n_classes = self.n_classes if self.n_classes is not None else other.n_classes
        self._kind = other._kind
        self._weighted |= other._weighted
        self._position = max(self._position, other._position)
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
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.where(filled, sum_conf / bin_weight, np.nan)
            acc = np.where(filled, sum_acc / bin_weight, np.nan)
        edges = np.arange(self.n_bins + 1, dtype=np.float64) / self.n_bins
        table = ReliabilityTable(lower=edges[:-1], upper=edges[1:], count=self._bins[0].astype(np.int64),
                                 weight=bin_weight.copy(), mean_confidence=conf, accuracy=acc, gap=acc - conf,
                                 strategy="uniform")
        return CalibrationResult(
            ece=ece, mce=mce, rmsce=rmsce, ace=ace, ace_bound=ace_bound, classwise_ece=classwise_ece,
            accuracy=float(t[_T_CORRECT] / weight), mean_confidence=float(t[_T_CONFIDENCE] / weight),
            brier=float(t[_T_BRIER] / weight), nll=float(t[_T_NLL] / weight), count=int(t[_T_COUNT]),
            weight=float(weight), ece_se=ece_se, ece_ci=ece_ci, confidence_level=self.confidence_level, table=table)

    def _equal_mass(self):
        count, w, sc, sy, spread = self._fine
        total = w.sum()
        cum = np.cumsum(w)
        before = cum - w
        M = self.n_bins
        targets = np.arange(1, M) * (total / M)
        coarse = np.searchsorted(targets, before + w / 2, side="left")  # #{m: t_m < midpoint}
        cw = np.bincount(coarse, weights=w, minlength=M)
        cc = np.bincount(coarse, weights=sc, minlength=M)
        cy = np.bincount(coarse, weights=sy, minlength=M)
        ace = _errors_from_bins(cw, cc, cy)[0]
        # Fine bins that may hold an exact equal-mass edge (see the module docs).
        holds_edge = np.zeros(self.fine_bins, dtype=bool)
        if self._weighted:
            # Weighted quantiles (inverted CDF): the first value whose cumulative weight reaches t_m.
            f = np.searchsorted(cum, targets, side="left")
            holds_edge[np.minimum(f, self.fine_bins - 1)] = True
        else:
            # numpy.quantile (linear): between the order statistics floor(p) and ceil(p), p = m (n-1) / M.
            n = int(round(count.sum()))
            ccount = np.cumsum(count)
            p = np.arange(1, M) * (n - 1) / M
            lo = np.searchsorted(ccount, np.floor(p), side="right")
            hi = np.searchsorted(ccount, np.ceil(p), side="right")
            for a, b in zip(lo, hi):
                holds_edge[a:min(b, self.fine_bins - 1) + 1] = True
        bound = float(2.0 * spread[holds_edge].sum() / total)
        return ace, bound

    # -- persistence ---------------------------------------------------------------

    def _arrays(self) -> dict:
        arrays = {"bins": self._bins, "fine": self._fine, "boot": self._boot, "totals": self._totals}
        if self._classwise_bins is not None:
            arrays["classwise"] = self._classwise_bins
        return arrays

    def _meta(self) -> dict:
        return {"config": self._config(), "start": self.start, "position": self._position, "kind": self._kind,
                "weighted": self._weighted, "confidence_level": self.confidence_level, "metadata": self.metadata}

    def to_bytes(self) -> bytes:
        """The state in calibkit's versioned, checksummed binary format (see :func:`encode_state`)."""
        return encode_state("CalibrationAccumulator", self._meta(), self._arrays())

    @classmethod
    def from_bytes(cls, data: bytes, *, backend="auto") -> "CalibrationAccumulator":
        """Rebuild a state written by :meth:`to_bytes`; malformed input raises ValueError."""
        kind, meta, arrays = decode_state(data)
        if kind != "CalibrationAccumulator":
            raise ValueError(f"the state holds a {kind}, not a CalibrationAccumulator")
        return cls._from_parts(meta, arrays, backend)

    @classmethod
    def _from_parts(cls, meta, arrays, backend):
        try:
            cfg = meta["config"]
            acc = cls(cfg["n_bins"], from_logits=cfg["from_logits"], temperature=cfg.get("temperature", 1.0),
                      classwise=cfg["classwise"],
                      n_classes=cfg["n_classes"], bootstrap=cfg["bootstrap"], seed=cfg["seed"], start=meta["start"],
                      fine_bits=cfg["fine_bits"], fine_levels=cfg["fine_levels"],
                      confidence_level=meta["confidence_level"], backend=backend)
            position, kind, weighted = meta["position"], meta["kind"], meta["weighted"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupt calibration state: bad configuration ({exc})") from None
        if not isinstance(position, int) or position < acc.start or kind not in (None, "binary", "top-label") or \
                not isinstance(weighted, bool):
            raise ValueError("corrupt calibration state: bad position, kind or flags")
        expected = {"bins": acc._bins.shape, "fine": acc._fine.shape, "boot": acc._boot.shape, "totals": (6,)}
        if acc.classwise and kind == "top-label":
            expected["classwise"] = (3, acc.n_classes, acc.n_bins)
        if set(arrays) != set(expected):
            raise ValueError(f"corrupt calibration state: arrays {sorted(arrays)}, expected {sorted(expected)}")
        for name, shape in expected.items():
            a = arrays[name]
            if a.shape != shape:
                raise ValueError(f"corrupt calibration state: {name} has shape {a.shape}, expected {shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"corrupt calibration state: {name} holds NaN or inf")
        if (arrays["bins"][:2] < 0).any() or (arrays["fine"][:2] < 0).any() or (arrays["fine"][4] < 0).any():
            raise ValueError("corrupt calibration state: negative counts or weights")
        acc._bins, acc._fine, acc._boot, acc._totals = (arrays["bins"], arrays["fine"], arrays["boot"],
                                                        arrays["totals"])
        acc._classwise_bins = arrays.get("classwise")
        acc._position, acc._kind, acc._weighted = position, kind, weighted
        metadata = meta.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError("corrupt calibration state: metadata must be a dictionary")
        acc.metadata = metadata
        return acc

    def to_dict(self) -> dict:
        """JSON-safe state (lists of floats); :meth:`from_dict` reads it back."""
        return {"format": "calibkit.CalibrationAccumulator", "version": FORMAT_VERSION, **self._meta(),
                "arrays": {k: {"shape": list(v.shape), "data": v.ravel().tolist()} for k, v in self._arrays().items()}}

    @classmethod
    def from_dict(cls, d: dict, *, backend="auto") -> "CalibrationAccumulator":
        if not isinstance(d, dict) or d.get("format") != "calibkit.CalibrationAccumulator":
            raise ValueError("not a calibkit.CalibrationAccumulator dictionary")
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported state version {d.get('version')!r} (this calibkit reads {FORMAT_VERSION})")
        try:
            arrays = {k: np.asarray(v["data"], dtype=np.float64).reshape(v["shape"]) for k, v in d["arrays"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"corrupt calibration state: {exc}") from None
        return cls._from_parts(d, arrays, backend)

    def __reduce__(self):
        return (_accumulator_from_bytes, (self.to_bytes(), self.backend))

    def __repr__(self) -> str:
        return (f"CalibrationAccumulator(n_bins={self.n_bins}, from_logits={self.from_logits}, "
                f"classwise={self.classwise}, bootstrap={self.bootstrap}, count={self.count})")


def _accumulator_from_bytes(data, backend):
    return CalibrationAccumulator.from_bytes(data, backend=backend)


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

    The other keywords are those of :class:`CalibrationAccumulator`.
    """

    def __init__(self, window=None, *, decay=None, n_blocks=16, **kwargs):
        if (window is None) == (decay is None):
            raise ValueError("give exactly one of window= or decay=")
        self.window = None if window is None else _check_int(window, "window", 1)
        if decay is not None and (not isinstance(decay, (int, float)) or not 0 < decay < 1):
            raise ValueError(f"decay must be in (0, 1), got {decay!r}")
        self.decay = None if decay is None else float(decay)
        self.n_blocks = _check_int(n_blocks, "n_blocks", 1, 1 << 16)
        self._kwargs = dict(kwargs)
        CalibrationAccumulator(**self._kwargs)  # validate the configuration now
        self.reset()

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

    def update(self, scores, labels, sample_weight=None) -> "WindowedAccumulator":
        if self.decay is not None:
            return self._update_decayed(scores, labels, sample_weight)
        from ._validation import check_scores

        scores = check_scores(scores)
        n = scores.shape[0]
        labels = np.asarray(labels)
        sample_weight = None if sample_weight is None else np.asarray(sample_weight)
        # Validate the whole batch once (atomic), then split it over blocks.
        CalibrationAccumulator(**{**self._kwargs, "bootstrap": 0}).update(scores, labels, sample_weight)
        i = 0
        while i < n:
            room = self.block_size - self._current.count
            j = min(n, i + room)
            self._current.update(scores[i:j], labels[i:j], None if sample_weight is None else sample_weight[i:j])
            i = j
            if self._current.count >= self.block_size:
                self._blocks.append(self._current)
                position = self._current._position
                self._current = CalibrationAccumulator(**{**self._kwargs, "start": position})
            # At most n_blocks blocks hold rows (the current one included).
            while len(self._blocks) + (self._current.count > 0) > self.n_blocks:
                self._blocks.popleft()
        self._seen += n
        return self

    def _update_decayed(self, scores, labels, sample_weight):
        from ._validation import check_sample_weight, check_scores

        scores = check_scores(scores)
        n = scores.shape[0]
        w = check_sample_weight(sample_weight, n)
        factors = self.decay ** np.arange(n - 1, -1, -1, dtype=np.float64)  # newest row: weight 1
        w = factors if w is None else w * factors
        trial = CalibrationAccumulator(**{**self._kwargs, "bootstrap": 0})
        trial.update(scores, labels, w)  # validates the batch before the state is touched
        acc = self._current
        if acc._kind is not None:
            fade = self.decay ** n
            acc._bins[1:] *= fade
            acc._fine[1:] *= fade
            acc._boot *= fade
            acc._totals[1:] *= fade
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
    def from_bytes(cls, data: bytes, *, backend="auto") -> "WindowedAccumulator":
        kind, meta, arrays = decode_state(data)
        if kind != "WindowedAccumulator":
            raise ValueError(f"the state holds a {kind}, not a WindowedAccumulator")
        try:
            kwargs = dict(meta["kwargs"])
            win = cls(meta["window"], decay=meta["decay"], n_blocks=meta["n_blocks"], backend=backend, **kwargs)
            block_meta = meta["blocks"]
            seen = meta["seen"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"corrupt calibration state: bad window configuration ({exc})") from None
        if not isinstance(block_meta, list) or not block_meta or len(block_meta) > win.n_blocks + 1 or \
                not isinstance(seen, int) or seen < 0:
            raise ValueError("corrupt calibration state: bad block list")
        blocks = []
        for i, bm in enumerate(block_meta):
            part = {name.split(".", 1)[1]: a for name, a in arrays.items() if name.split(".", 1)[0] == str(i)}
            blocks.append(CalibrationAccumulator._from_parts(bm, part, backend))
        if sum(len([n for n in arrays if n.split(".", 1)[0] == str(i)]) for i in range(len(blocks))) != len(arrays):
            raise ValueError("corrupt calibration state: arrays that belong to no block")
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

_MAX_HEADER = 1 << 20
_MAX_VALUES = 1 << 28


def encode_state(kind: str, meta: dict, arrays: dict) -> bytes:
    """Serialise a state: see the format above."""
    header = json.dumps({"type": kind, "meta": meta,
                         "arrays": [[name, list(a.shape)] for name, a in arrays.items()]},
                        separators=(",", ":"), sort_keys=True).encode()
    parts = [FORMAT_MAGIC, struct.pack("<II", FORMAT_VERSION, len(header)), header]
    parts += [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays.values()]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_state(data) -> tuple[str, dict, dict]:
    """Parse and check a serialised state; any malformed input raises ValueError."""
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
        raise ValueError("corrupt calibration state: bad header length")
    try:
        header = json.loads(body[16:16 + header_len].decode())
        kind, meta, layout = header["type"], header["meta"], header["arrays"]
        if not isinstance(kind, str) or not isinstance(meta, dict) or not isinstance(layout, list):
            raise TypeError("bad header types")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupt calibration state: bad header ({exc})") from None
    offset = 16 + header_len
    arrays = {}
    for entry in layout:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and all(isinstance(s, int) and 0 <= s <= _MAX_VALUES
                                                       for s in entry[1])):
            raise ValueError("corrupt calibration state: bad array entry")
        name, shape = entry
        size = math.prod(shape)
        if size > _MAX_VALUES or offset + 8 * size > len(body):
            raise ValueError("corrupt calibration state: array data out of bounds")
        arrays[name] = np.frombuffer(body, dtype="<f8", count=size, offset=offset).astype(np.float64).reshape(shape)
        offset += 8 * size
    if offset != len(body):
        raise ValueError("corrupt calibration state: trailing bytes")
    return kind, meta, arrays


def load_state(data, *, backend="auto"):
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
