"""The one place that turns array-likes into checked arrays.

Arrays are taken as they come whenever the kernels can read them in place
(float16/32/64, any strides, C or Fortran order, read-only, memory-mapped).
A copy is made only when it cannot be avoided (lists, integer scores,
non-native byte order, misaligned memory). Content checks that need a look at
every element (NaN/inf, probabilities outside [0, 1], labels out of range,
negative weights) are done by the kernels during their single pass and
reported through :func:`raise_for_status`.
"""

from __future__ import annotations

import numbers

import numpy as np

from ._typing import ArrayLike

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_FLOAT_TYPES = frozenset(FLOAT_DTYPES)
_INT64 = np.dtype(np.int64)
_DOUBLE_MAX = float(np.finfo(np.float64).max)

# Status codes shared with the C++ (common.hpp) and Numba kernels.
OK = 0
SCORE_NOT_FINITE = 1
PROBABILITY_OUT_OF_RANGE = 2
LABEL_OUT_OF_RANGE = 3
WEIGHT_NOT_FINITE = 4
WEIGHT_NEGATIVE = 5


def _as_array(x, name):
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__") and not hasattr(x, "__array__"):
        try:
            return np.from_dlpack(x)
        except Exception as exc:  # pragma: no cover - depends on the producer
            raise TypeError(f"{name} could not be read through DLPack: {exc}") from None
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # torch tensors (CPU): zero-copy view
        try:
            return x.detach().numpy()
        except Exception as exc:
            raise TypeError(f"{name} must be on the CPU to be read without a copy ({exc})") from None
    try:
        return np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}: {exc}") from None


def _readable_in_place(a):
    """True if a native kernel can read `a` through its strides as it is (native order, aligned)."""
    return a.flags.aligned and a.dtype.isnative


def check_scores(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """Return `scores` as a float16/32/64 array of ndim 1 or 2, without a copy where possible."""
    a = scores if type(scores) is np.ndarray else _as_array(scores, name)
    if a.dtype.type not in _FLOAT_TYPES:  # integers, bools (converted) or a wrong dtype (TypeError)
        a = _float_array(a, name)
    shape = a.shape
    if len(shape) not in (1, 2):
        raise ValueError(f"{name} must have shape (N,) or (N, K), got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one row is needed")
    if len(shape) == 2 and shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 columns (classes), got shape {shape}")
    return _in_place(a)


def _float_array(x, name):
    a = _as_array(x, name)
    if a.dtype == object or a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be an array of floats, got dtype {a.dtype}")
    if a.dtype.kind in "iub":
        a = a.astype(np.float64)
    elif a.dtype.type not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, float32 or float64, got dtype {a.dtype}")
    return a


def _in_place(a):
    if not (a.flags.aligned and a.dtype.isnative):  # _readable_in_place, inlined: called on every input
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
    return a


def check_score_vector(scores: ArrayLike, name: str = "scores") -> np.ndarray:
    """Return `scores` as a non-empty 1-D float16/32/64 array (one score per sample), without a copy where possible."""
    a = _float_array(scores, name)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) (one score per sample), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one score is needed")
    return _in_place(a)


def check_samples(samples: ArrayLike, name: str = "samples") -> np.ndarray:
    """Return `samples` as a float16/32/64 array of shape (S, N, K) with S, N >= 1 and K >= 2."""
    a = _float_array(samples, name)
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (S, N, K) (S stochastic passes of N rows of K classes), "
                         f"got shape {a.shape}")
    S, N, K = a.shape
    if S == 0 or N == 0:
        raise ValueError(f"{name} is empty: got shape {a.shape}")
    if K < 2:
        raise ValueError(f"{name} must have at least 2 classes (last axis), got shape {a.shape}")
    return _in_place(a)


def check_correct(correct: ArrayLike, n_rows: int, name: str = "correct") -> np.ndarray:
    """Return `correct` (True where the prediction is right) as a 1-D bool array of length `n_rows`."""
    c = _as_array(correct, name)
    if c.dtype == object or c.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be booleans (or 0/1), got dtype {c.dtype}")
    if c.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {c.shape}")
    if c.shape[0] != n_rows:
        raise ValueError(f"{name} has {c.shape[0]} entries but confidence has {n_rows}")
    if c.dtype != bool:
        bad = ~((c == 0) | (c == 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{i}] = {c[i].item()!r} is not 0/1 or a boolean")
        c = c.astype(bool)
    return c


def check_labels(labels: ArrayLike, n_rows: int, name: str = "labels") -> np.ndarray:
    """Return `labels` as a 1-D int64 array of length `n_rows` (range is checked by the kernels)."""
    y = labels if type(labels) is np.ndarray else _as_array(labels, name)
    if y.dtype == _INT64 and y.ndim == 1 and y.shape[0] == n_rows and y.flags.aligned:
        return y  # the common case: nothing to convert or check here
    if y.dtype == bool:
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise ValueError(f"{name} has {y.shape[0]} entries but scores has {n_rows} rows")
    if y.dtype.kind == "u" and y.dtype.itemsize == 8 and y.size and y.max() > np.iinfo(np.int64).max:
        bad = int(np.argmax(y > np.iinfo(np.int64).max))
        raise ValueError(f"{name}[{bad}] = {y[bad]} is out of range")
    if y.dtype != np.int64 or not _readable_in_place(y):
        y = y.astype(np.int64)
    return y


def check_sample_weight(sample_weight: ArrayLike | None, n_rows: int, name: str = "sample_weight", *,
                        check_values: bool = False, scale: bool = False) -> np.ndarray | None:
    """Return None or a 1-D float64 array of length `n_rows`.

    Without ``check_values`` the values are checked by the kernels; with it
    they are checked here (finite, >= 0, not all 0), for code that uses them
    before any kernel does. ``scale=True`` (for a metric or a fit, which do not
    depend on the scale of the weights) also checks them and returns a copy
    divided by the largest weight, so that sums of weights neither overflow
    (weights near 1e308) nor lose digits to subnormals (weights near 5e-324).
    Streaming accumulators must not use ``scale``: there the weights of
    different batches are relative to each other.
    """
    if sample_weight is None:
        return None
    w = _as_array(sample_weight, name)
    if w.dtype == object or w.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numbers, got dtype {w.dtype}")
    if w.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {w.shape}")
    if w.shape[0] != n_rows:
        raise ValueError(f"{name} has {w.shape[0]} entries but scores has {n_rows} rows")
    if w.dtype != np.float64 or not _readable_in_place(w):
        w = w.astype(np.float64)
    if check_values or scale:
        # Two reductions and no temporary: every weight is finite and >= 0 exactly when the smallest is >= 0
        # and the largest finite (a NaN makes both NaN); else the first bad one is found and named.
        largest = float(w.max()) if w.size else 0.0
        smallest = float(w.min()) if w.size else 0.0
        if not (smallest >= 0.0 and largest <= _DOUBLE_MAX):
            finite = np.isfinite(w)
            if not finite.all():
                bad = int(np.argmin(finite))
                raise_for_status((WEIGHT_NOT_FINITE, bad, -1, float(w[bad])))
            bad = int(np.argmax(w < 0))
            raise_for_status((WEIGHT_NEGATIVE, bad, -1, float(w[bad])))
        if largest == 0.0:
            raise ValueError(f"{name} sums to 0 (every weight is 0): a weighted mean over no weight is undefined")
        if scale and largest != 1.0:  # w / 1 is w: no copy
            w = w / largest
    return w


# -- size limits -------------------------------------------------------------------------------
# Every size argument of the public API is bounded here, once, and checked before anything
# proportional to it is allocated (the C++ bindings enforce the same bounds as a second line).

#: Largest ``n_bins`` of any metric, accumulator or calibrator (2**20).
MAX_BINS = 1 << 20
#: Largest number of cells of a per-bin table that grows with two sizes: class-wise bins
#: (``n_classes * n_bins``), bootstrap replicates (``bootstrap * n_bins``) (2**26).
MAX_CELLS = 1 << 26
#: Largest number of classes K that a state is built for before any data is seen (2**26).
MAX_CLASSES = 1 << 26
#: Largest number of bootstrap replicates of a :class:`~calibkit.CalibrationAccumulator`.
MAX_BOOTSTRAP = 100_000
#: Largest number of bins ``n_bins="sweep"`` tries (2048): the sweep stops there when the bin
#: accuracies are still monotone (only near-separable or one-label data gets that far).
MAX_SWEEP_BINS = 2048
#: Largest ``fine_bits`` and ``fine_levels`` of the fine histogram behind ``ace``, and the
#: largest number of fine buckets 2 * (fine_levels << fine_bits) (2**20).
MAX_FINE_BITS = 12
MAX_FINE_LEVELS = 1000
MAX_FINE_BINS = 1 << 20
#: Largest ``n_blocks`` of a :class:`~calibkit.WindowedAccumulator`.
MAX_WINDOW_BLOCKS = 1 << 10
#: Largest ``window`` (rows) of a :class:`~calibkit.WindowedAccumulator`, and largest stream position.
MAX_ROWS = (1 << 63) - 1
#: Largest ``precision_bits`` of an :class:`~calibkit.OODAccumulator`.
MAX_PRECISION_BITS = 40


def check_size(value, name, low, high):
    """Return ``value`` as an int in [low, high]; TypeError if it is not an integer, ValueError if out of range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


# |sum of a row - 1| allowed by check_probability_rows, by dtype: the rounding of
# probabilities stored in that dtype (and of a softmax computed in it) stays well inside.
ROW_SUM_TOLERANCE = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-5}
_ROW_SUM_CHUNK = 1 << 20  # elements per chunk of the row-sum check


def check_probability_rows(scores, name="scores"):
    """Raise a ValueError naming the first row of (N, K) probabilities whose sum is not 1.

    The tolerance is ``ROW_SUM_TOLERANCE[scores.dtype]`` (1e-2 for float16, 1e-3
    for float32, 1e-5 for float64). Rows are summed in float64, a chunk of about
    2^20 elements at a time (no N x K temporary). NaN sums are left to the
    kernels, which name the NaN element.
    """
    n, k = scores.shape
    tol = ROW_SUM_TOLERANCE[scores.dtype]
    if n * k <= _ROW_SUM_CHUNK:
        # One chunk, three NumPy calls when every row passes: fl(s - 1) is monotone in s, so every
        # |fl(s - 1)| <= tol exactly when it holds for the smallest and the largest sum (a NaN sum fails
        # here and is handled below).
        sums = np.add.reduce(scores, axis=1, dtype=np.float64)
        if abs(float(sums.min()) - 1.0) <= tol and abs(float(sums.max()) - 1.0) <= tol:
            return
    step = max(1, _ROW_SUM_CHUNK // k)
    for start in range(0, n, step):
        sums = np.add.reduce(scores[start:start + step], axis=1, dtype=np.float64)
        off = np.abs(sums - 1.0) > tol  # NaN sums compare False; infinite ones are left out below
        if not off.any():  # the common case: three NumPy calls per chunk
            continue
        bad = np.isfinite(sums) & off
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}[{start + i}] sums to {float(sums[i])!r}, not 1 (tolerance {tol:g} for "
                             f"{scores.dtype}); pass from_logits=True for logits, or check_sums=False to "
                             "skip this check")


#: The bin-count rules the one-shot metrics accept for ``n_bins`` (resolved from the data by
#: :func:`calibkit.metrics.resolve_n_bins`).
BIN_RULES = ("cube_root", "sqrt", "sweep")


def check_n_bins(n_bins, *, rules=False):
    """Return ``n_bins`` as an int in [1, MAX_BINS] (MAX_BINS = 2**20), or with ``rules=True`` also one of
    :data:`BIN_RULES` (returned as the string). Where the bins are fixed before the data is seen (a streaming
    state, a calibrator), a rule name raises a ValueError saying so."""
    if type(n_bins) is int and 1 <= n_bins <= MAX_BINS:  # the common case, without the ABC checks below
        return n_bins
    if isinstance(n_bins, str):
        if n_bins in BIN_RULES:
            if rules:
                return n_bins
            raise ValueError(f"n_bins={n_bins!r} is a rule that needs all the data at once; here the bins are "
                             "fixed before any data is seen: give an integer number of bins")
        expected = f"an integer or one of {BIN_RULES}" if rules else "an integer"
        raise ValueError(f"n_bins must be {expected}, got {n_bins!r}")
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, numbers.Integral):
        extra = f" or one of {BIN_RULES}" if rules else ""
        raise TypeError(f"n_bins must be an integer{extra}, got {type(n_bins).__name__}")
    n_bins = int(n_bins)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if n_bins > MAX_BINS:
        raise ValueError(f"n_bins must be <= {MAX_BINS} (2**20), got {n_bins}")
    return n_bins


#: Non-zero sample weights a streaming accumulator accepts, and the largest total weight it holds:
#: its state keeps raw weighted sums (batches weigh against each other, so they cannot be rescaled
#: one by one), which must neither underflow nor overflow float64.
MIN_STREAM_WEIGHT = 1e-300
MAX_STREAM_WEIGHT = 1e300


def check_stream_weight(w, total, name="sample_weight"):
    """Refuse weights a streaming state cannot sum exactly: a non-zero weight outside
    [MIN_STREAM_WEIGHT, MAX_STREAM_WEIGHT], or a stream whose total weight would pass MAX_STREAM_WEIGHT."""
    if w is None:
        return
    bad = (w != 0) & ((w < MIN_STREAM_WEIGHT) | (w > MAX_STREAM_WEIGHT))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {float(w[i])!r} is outside [{MIN_STREAM_WEIGHT:g}, {MAX_STREAM_WEIGHT:g}] "
                         "(0 is allowed): a streaming accumulator keeps raw weighted sums; divide every weight "
                         "by one common factor (the metrics do not change)")
    if total + float(np.sum(w)) > MAX_STREAM_WEIGHT:
        raise ValueError(f"{name}: the total weight of the stream would pass {MAX_STREAM_WEIGHT:g}; divide every "
                         "weight by one common factor (the metrics do not change)")


def check_cells(n, name_n, n_bins):
    """Check that a table of ``n`` rows (``name_n``: classes, replicates) of ``n_bins`` bins has at most
    MAX_CELLS = 2**26 cells."""
    if n * n_bins > MAX_CELLS:
        raise ValueError(f"{name_n} * n_bins must be <= {MAX_CELLS} (2**26), got {name_n}={n} and n_bins={n_bins}")


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


class BadElementError(ValueError):
    """A ValueError about one element of an input, with its position.

    Attributes ``status`` = (code, row, col, value) as the kernel reported it;
    :meth:`at_row` gives the same error with the row numbered as the caller
    knows it (e.g. its row in a whole dump rather than in one chunk).
    """

    def __init__(self, status, *, n_classes=None, scores_name="scores", binary=False):
        self.status = tuple(status)
        self._context = dict(n_classes=n_classes, scores_name=scores_name, binary=binary)
        super().__init__(_status_message(self.status, **self._context))

    @property
    def row(self) -> int:
        return int(self.status[1])

    def at_row(self, row) -> "BadElementError":
        code, _, col, value = self.status
        return BadElementError((code, int(row), col, value), **self._context)


def _status_message(status, *, n_classes, scores_name, binary):
    code, row, col, value = status
    where = f"{scores_name}[{row}]" if col < 0 else f"{scores_name}[{row}, {col}]"
    if code == SCORE_NOT_FINITE:
        return f"{where} = {value!r} is not finite (NaN and inf are not accepted)"
    if code == PROBABILITY_OUT_OF_RANGE:
        return f"{where} = {value!r} is not a probability in [0, 1]; pass from_logits=True for logits"
    if code == LABEL_OUT_OF_RANGE:
        label = int(value)
        if binary:
            return f"labels[{row}] = {label} is not 0 or 1 (binary scores of shape (N,))"
        return f"labels[{row}] = {label} is out of range for n_classes={n_classes}"
    if code == WEIGHT_NOT_FINITE:
        return f"sample_weight[{row}] = {value!r} is not finite"
    if code == WEIGHT_NEGATIVE:
        return f"sample_weight[{row}] = {value!r} is negative"
    raise RuntimeError(f"kernel reported unknown status {status!r}")  # pragma: no cover


def raise_for_status(status, *, n_classes=None, scores_name="scores", binary=False):
    """Turn a kernel's (code, row, col, value) report into a :class:`BadElementError` (a ValueError)."""
    if status[0] == OK:
        return
    raise BadElementError(status, n_classes=n_classes, scores_name=scores_name, binary=binary)


def check_bootstrap(ci, n_boot, seed) -> tuple[float, int, int]:
    """(level, n_boot, seed) of a Poisson-bootstrap interval (``ci=``, ``n_boot=``, ``seed=`` of the metrics)."""
    if isinstance(ci, (bool, np.bool_)) or not isinstance(ci, numbers.Real) or not 0 < ci < 1:
        raise ValueError(f"ci must be a confidence level in (0, 1), got {ci!r}")
    return float(ci), check_size(n_boot, "n_boot", 2, MAX_BOOTSTRAP), check_size(seed, "seed", 0, 2**64 - 1)
