"""Smooth ECE (Błasiok & Nakkiran 2023) and the kernel-smoothed reliability curve.

The smooth ECE replaces bins by a Gaussian kernel of bandwidth σ on [0, 1]
(reflected at 0 and 1). With f_i the scores (binary: P(y=1); top-label: the
confidence) and r_i = f_i − y_i the residuals (y_i the label, or the row's
correctness), the smoothed residual and density at t are

    ρ̂(t) = Σ_i w_i K_σ(t, f_i) r_i,    δ̂(t) = Σ_i w_i K_σ(t, f_i) + ε,

and smECE_σ = Σ_t |ρ̂(t) / δ̂(t)| δ̂(t) / Σ_t δ̂(t) over an evaluation mesh of t.
The automatic bandwidth is the fixed point σ* = smECE_σ* (the smallest σ with
σ ≥ smECE_σ), found by bisection; ``smooth_ece`` reports smECE_σ*.

This is exactly what the reference implementation ``relplot`` computes on its
grid path (``relplot.smECE`` = ``relplot.metrics.smECE_fast``): each f_i is
spread onto a uniform grid of G points by linear interpolation, the grid is
convolved with the kernel sampled on the grid (reflected at both ends), the
result is interpolated linearly onto the evaluation mesh. Its constants are
kept: G = max(2000, round(20/σ)) // 2 + 1, a mesh of max(200, round(10/σ))
points, ε = 1e-4, and the bisection starts at σ = 1, stops below σ = 0.001
and refines 10 times (so σ* is 1 or a multiple of 1/1024). Results agree with
relplot to 1e-9 (tests). Every σ the search can try uses one of ten grid
sizes: the native kernel fills all ten in one pass over the input, and a
:class:`~calibkit.CalibrationAccumulator` with ``smooth=True`` keeps them.

Compared with relplot given the same numbers: calibkit reads any float dtype
and computes in float64, while relplot given float32 arrays keeps parts of its
arithmetic (the grid positions, the softmax of
``multiclass_logits_to_confidences``) in float32; pass it float64 arrays to
compare. Scores may lie up to 1e-6 outside [0, 1] (float rounding), as
everywhere in calibkit; relplot's grid formulas are applied to them as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _backend
from ._typing import ArrayLike, Backend
from ._validation import check_choice, raise_for_status
from .metrics import _binary_probabilities, _percentile_interval, _prepare, _ValueWithInterval

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SmoothECEResult", "SmoothReliabilityCurve", "smooth_ece", "smooth_reliability_curve"]

KERNELS = ("reflected_gaussian", "gaussian")
#: Smallest fixed bandwidth accepted (its grid has 100001 points).
MIN_BANDWIDTH = 1e-4
_DENSITY_EPS = 1e-4  # added to the smoothed density (relplot's BaseKernelMixin.smooth)
_SEARCH_EPS = 1e-3  # the bisection accepts any σ below this (relplot.smECE's eps)
_SEARCH_STEPS = 10  # bisection steps (relplot's search_param refine)
_MIN_MESH = 200  # relplot.config.smECE_mesh_pts
CURVE_POINTS = 200  # relplot.config.plot_mesh_pts: the mesh of the reliability curve


def grid_size(sigma: float) -> int:
    """Points of the grid used at bandwidth σ (relplot's GaussianKernel.apply)."""
    return max(2000, round(20 / sigma)) // 2 + 1


def _search_sigmas():
    # The bisection keeps σ in {1} ∪ {k / 2**steps}; the smallest it evaluates is 2 / 2**steps.
    return [1.0] + [k / 2.0 ** _SEARCH_STEPS for k in range(2, 2 ** _SEARCH_STEPS)]


#: Grid sizes of every σ the automatic bandwidth may evaluate (ten sizes, 20761 points).
AUTO_GRID_SIZES = np.array(sorted({grid_size(s) for s in _search_sigmas()}), dtype=np.int64)
AUTO_GRID_SIZES.setflags(write=False)


def _check_bandwidth(bandwidth):
    if isinstance(bandwidth, str):
        if bandwidth == "auto":
            return "auto"
    elif isinstance(bandwidth, numbers.Real) and not isinstance(bandwidth, (bool, np.bool_)):
        b = float(bandwidth)
        if math.isfinite(b) and b >= MIN_BANDWIDTH:
            return b
    raise ValueError(f"bandwidth must be 'auto' or a finite number >= {MIN_BANDWIDTH}, got {bandwidth!r}")


# ----------------------------------------------------------------------------
# From the grids to the numbers (small NumPy work)
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _kernel_plan(G: int, sigma: float, kernel: str):
    """The kernel sampled on the grid (trimmed to its non-zero taps; a zero tap adds exactly nothing)
    and the grid indices the convolution reads, reflected at the ends or -1 outside (plain Gaussian)."""
    t = np.linspace(0.0, 1.0, G)
    taps = np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    nz = np.flatnonzero(taps)
    lo, hi = (int(nz[0]), int(nz[-1])) if nz.size else (G // 2, G // 2)
    # smoothed[j] = Σ_k taps[k] v[j + s - k]: relplot's np.convolve(..., "valid") slice (reflected) or
    # np.convolve(..., "same") (plain)
    s = G // 2 if kernel == "reflected_gaussian" else (G - 1) // 2
    p = np.arange(s - hi, G - 1 + s - lo + 1)
    if kernel == "reflected_gaussian":
        p = np.abs(p)
        p = np.where(p > G - 1, 2 * (G - 1) - p, p)
    else:
        p = np.where((p < 0) | (p > G - 1), -1, p)
    out = (taps[lo:hi + 1].copy(), p)
    for a in out:
        a.setflags(write=False)
    return out


def _convolve(values, sigma, kernel):
    """The (G, 2) grid [weight, residual] smoothed by the kernel, column by column."""
    G = values.shape[0]
    taps, index = _kernel_plan(G, sigma, kernel)
    padded = values[np.maximum(index, 0)]
    if kernel != "reflected_gaussian":
        padded[index < 0] = 0.0
    return np.stack([np.convolve(padded[:, c], taps, "valid") for c in range(values.shape[1])], axis=1)


def _interpolate(grid_values, t):
    """Linear interpolation of values at the points j / (G - 1), evaluated at t (rows of a (G, m) array)."""
    G = grid_values.shape[0]
    x = t * (G - 1)
    j = np.clip(x.astype(np.int64), 0, G - 2)
    frac = (x - j)[:, None]
    return grid_values[j] * (1 - frac) + grid_values[j + 1] * frac


class _Grids:
    """The grid sums of a pass: a (G, 2) array [Σ w·hat, Σ w·r·hat] (or (G, 3), then also Σ w·y·hat) per
    grid size, with the weights scaled to mean 1 (count / total weight: only their ratios matter, and unit
    weights stay exactly 1)."""

    def __init__(self, sizes, grid, count, weight):
        if count < 1:
            raise ValueError("no rows: at least one row is needed")
        if not weight > 0:
            raise ValueError("sample_weight sums to 0: no weighted rows to evaluate")
        scale = count / weight
        if scale != 1.0:
            grid = grid * scale
        self.count = int(count)
        self.by_size = {}
        start = 0
        for G in np.asarray(sizes).tolist():
            self.by_size[G] = grid[start:start + G]
            start += G

    def smoothed(self, sigma, kernel, t, columns=slice(0, 2)):
        """The grid columns (default: density δ̂ without ε, residual ρ̂) smoothed at bandwidth σ and
        evaluated at t, one column each."""
        G = grid_size(sigma)
        values = self.by_size.get(G)
        if values is None:  # pragma: no cover - the callers fill every grid they use
            raise RuntimeError(f"no grid of {G} points for bandwidth {sigma}")
        return _interpolate(_convolve(values[:, columns], sigma, kernel), t).T

    def ece_at(self, sigma, kernel):
        t = np.linspace(0.0, 1.0, max(round(10 / sigma), _MIN_MESH))
        density, residual = self.smoothed(sigma, kernel, t)
        density = density + _DENSITY_EPS
        return float(np.sum(np.abs(residual / density) * density) / np.sum(density))

    def search(self, kernel):
        """(σ*, smECE_σ*): the bisection for the fixed point σ = smECE_σ."""
        cache = {}

        def ece(sigma):
            if sigma not in cache:
                cache[sigma] = self.ece_at(sigma, kernel)
            return cache[sigma]

        def small_enough(sigma):  # σ below the fixed point
            return sigma < _SEARCH_EPS or sigma < ece(sigma)

        sigma = 1.0
        if not small_enough(sigma):
            above, below = 1.0, 0.0
            for _ in range(_SEARCH_STEPS):
                mid = (above + below) / 2
                if small_enough(mid):
                    below = mid
                else:
                    above = mid
            sigma = above
        return sigma, ece(sigma)

    def ece(self, bandwidth, kernel):
        if bandwidth == "auto":
            return self.search(kernel)
        return bandwidth, self.ece_at(bandwidth, kernel)


def _grid_pass(scores, labels, sample_weight, from_logits, sizes, backend, with_labels=False):
    """Validated inputs through the native kernel: the grid sums of every size in ``sizes``."""
    k = _backend.kernels(backend)
    scores, labels, sample_weight, from_logits = _prepare(scores, labels, sample_weight, from_logits,
                                                          scale_weights=True)
    binary = scores.ndim == 1
    if binary:
        scores = _binary_probabilities(scores, from_logits)
        from_logits = False
    r = k.smooth_grid(scores, labels, sample_weight, from_logits, sizes, with_labels)
    raise_for_status(r["status"], binary=binary, n_classes=None if binary else scores.shape[1])
    return _Grids(sizes, r["grid"], r["count"], r["weight"])


def _sizes_for(bandwidth):
    return AUTO_GRID_SIZES if bandwidth == "auto" else np.array([grid_size(bandwidth)], dtype=np.int64)


_SHARED_DOC = """
    Parameters
    ----------
    scores : array-like of shape (N,) or (N, K)
        Binary: P(y=1) per row (or a logit with ``from_logits=True``, through the logistic function).
        Top-label: probabilities or logits of K >= 2 classes; a row's confidence is its largest
        probability, and the row is correct when its argmax (first index on ties) equals the label.
        Any float dtype and strides, read in place.
    labels : array-like of int, shape (N,)
        0/1 (binary) or class indices in [0, K).
    from_logits : bool, default False
        Whether ``scores`` are logits (softmax over K classes, the logistic function for (N,)).
    sample_weight : array-like of shape (N,), optional
        Non-negative row weights, rescaled to mean 1 (N / Σw): only their ratios matter, and equal
        weights give the unweighted value. (relplot has no weights; its ε = 1e-4 is then relative to a
        density of total mass N, as without weights.)
    bandwidth : "auto" or float, default "auto"
        ``"auto"``: the fixed point σ* = smECE_σ* by relplot's bisection (its grid path,
        ``relplot.smECE``). A float σ >= ``MIN_BANDWIDTH`` = 1e-4: the smooth ECE at that fixed
        bandwidth, on the grid of that σ (``relplot.smECE_sigma(f, y, σ)``).
    kernel : {"reflected_gaussian", "gaussian"}, default "reflected_gaussian"
        The Gaussian kernel reflected at 0 and 1 (relplot's default, ``ReflectedGaussianKernel``), or
        the plain one with zero padding (``GaussianKernel``).
    backend : {"auto", "cpp", "numba"}
"""


def smooth_ece(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
               sample_weight: ArrayLike | None = None, bandwidth: str | float = "auto",
               kernel: str = "reflected_gaussian", ci: float | None = None, n_boot: int = 1000, seed: int = 0,
               backend: Backend = "auto",
               axis: int = 1, mask: ArrayLike | None = None, ignore_index: int | None = None) -> float | SmoothECEResult:
    r"""Smooth ECE of Błasiok & Nakkiran (2023), as ``relplot.smECE`` computes it.

    With f_i the scores (binary) or confidences (top-label), r_i = f_i − y_i, and K_σ a Gaussian
    kernel reflected at 0 and 1, on a uniform grid (see :mod:`calibkit.smooth`)::

        ρ̂(t) = Σ_i w_i K_σ(t, f_i) r_i,   δ̂(t) = Σ_i w_i K_σ(t, f_i) + 1e-4,
        smECE_σ = Σ_t |ρ̂(t)| / Σ_t δ̂(t)    (t on a mesh of max(200, round(10/σ)) points)

    and with ``bandwidth="auto"`` σ is the fixed point σ* = smECE_σ*. The default is the grid path of
    relplot (``relplot.smECE`` = ``relplot.metrics.smECE_fast``): each row is spread onto grids of
    max(2000, round(20/σ)) // 2 + 1 points by linear interpolation, the grids are convolved with the
    sampled kernel (reflected at the ends) and σ is found by bisection (from σ = 1, 10 halvings, any
    σ < 0.001 accepted). Results equal relplot's to 1e-9 on the same inputs (float32 / float16 logits:
    to the 3e-7 relative error of the float softmax). One pass over the input fills every grid the
    search may use.
    {shared}    ci : float in (0, 1), optional
        Also give a percentile bootstrap interval at this confidence level: the α/2 and 1 − α/2
        quantiles (``numpy.quantile``, linear) of the smooth ECE over ``n_boot`` Poisson(1) bootstrap
        replicates of the rows (replicates without rows left out). Row i enters replicate b with the
        multiplicity a :class:`~calibkit.CalibrationAccumulator` with ``bootstrap=n_boot`` and
        ``seed=seed`` gives it (:func:`calibkit.cumulative.poisson_multiplicities`: the same resampled
        rows as :func:`~calibkit.calibration_error` with that seed). A replicate's grid sums are the
        kernel's grid spread of the rows' scores (confidences) and outcomes with the multiplicities
        (times ``sample_weight``) as weights, rescaled to mean 1 like any weights. With
        ``bandwidth="auto"`` each replicate searches its own fixed point σ*_b: the statistic is
        smECE_σ* = σ*, the bandwidth is part of it, and holding the full sample's σ fixed would
        bootstrap another quantity (smECE_σ at a fixed σ, whose spread exceeds that of σ* by the factor
        1 + |d smECE_σ / dσ|). A fixed ``bandwidth`` stays fixed. Cost: one grid pass over the N rows
        and one σ search (about 11 convolutions of at most 5121 points, 5 to 20 ms) per replicate;
        memory: the N confidences and outcomes, N generator keys (8 bytes a row), one replicate's N
        weights and grids (20761 x 2 doubles) at a time, and the multiplicities drawn in blocks of
        max(N, ``BOOT_BLOCK_CELLS`` = 2**21) bytes, whatever ``n_boot``. The value is the one without
        ``ci``.
    n_boot : int, default 1000
        Bootstrap replicates, 2 to ``MAX_BOOTSTRAP`` = 100000.
    seed : int, default 0
        Key of the bootstrap generator (0 to 2**64 - 1).

    axis, mask, ignore_index
        Dense predictions, as in :func:`calibkit.calibration_error`: scores
        ``(N, K, *spatial)`` (``axis=1``) or ``(N, *spatial, K)`` (``axis=-1``) with
        labels ``(N, *spatial)``, read in place; ``ignore_index`` / ``mask`` leave
        pixels (rows) out. The kept pixels' top-label confidences and
        correctness (N·H·W values each, not ·K) are gathered piece by piece,
        then the binary problem of those rows is solved: the same result as
        on the flattened (N·H·W, K) copy (bit for bit for probabilities and
        float64 logits; for float16/32 logits to 1e-6 relative, as the
        smooth kernel's own top-label pass computes their confidences in
        single precision, the gathered ones are computed in double).

    Returns
    -------
    float or SmoothECEResult
        The smooth ECE, in [0, 1]; with ``ci`` a :class:`SmoothECEResult` (``value``, ``bandwidth``,
        ``ci``, ``confidence_level``, ``n_boot``; ``float(result)`` is the value).

    Raises
    ------
    ValueError
        Bad labels, NaN / inf or out-of-range scores, negative weights (naming the row), an unknown
        ``kernel`` or a ``bandwidth`` that is not "auto" or a number >= 1e-4.

    References
    ----------
    J. Błasiok and P. Nakkiran, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing",
    2023 (arXiv:2309.12236).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> p = rng.random(2000)
    >>> y = (rng.random(2000) < p ** 1.5).astype(int)
    >>> round(calibkit.smooth_ece(p, y), 4)
    0.0997
    >>> round(calibkit.smooth_ece(p, y, bandwidth=0.05), 4)
    0.1
    >>> r = calibkit.smooth_ece(p, y, ci=0.9, n_boot=50, seed=1)
    >>> round(r.value, 4), r.ci[0] < r.value < r.ci[1], r.n_boot
    (0.0997, True, 50)
    """
    if mask is not None or ignore_index is not None or type(axis) is not int or (axis != 1 and axis != -1) \
            or getattr(scores, "ndim", 0) > 2:
        from .metrics import _dense_rows

        scores, labels, sample_weight, from_logits = _dense_rows(
            scores, labels, axis=axis, mask=mask, ignore_index=ignore_index, sample_weight=sample_weight,
            from_logits=from_logits, backend=backend)
    bandwidth = _check_bandwidth(bandwidth)
    check_choice(kernel, "kernel", KERNELS)
    if ci is not None:
        from ._validation import check_bootstrap

        level, n_boot, seed = check_bootstrap(ci, n_boot, seed)
    grids = _grid_pass(scores, labels, sample_weight, from_logits, _sizes_for(bandwidth), backend)
    sigma, value = grids.ece(bandwidth, kernel)
    if ci is None:
        return value
    reps = _smooth_replicates(scores, labels, sample_weight, from_logits, bandwidth, kernel, n_boot, seed, backend)
    return SmoothECEResult(value, float(sigma), _percentile_interval(reps, level), level, n_boot)


@dataclasses.dataclass(frozen=True)
class SmoothECEResult(_ValueWithInterval):
    """A smooth ECE with its bootstrap interval (:func:`smooth_ece` with ``ci``).

    Attributes
    ----------
    value : float
        The smooth ECE.
    bandwidth : float
        The σ used (σ* with ``bandwidth="auto"``).
    ci : tuple of float or None
        Percentile bootstrap interval (low, high) of ``value`` at ``confidence_level`` (None when fewer
        than 2 replicates had rows).
    confidence_level : float or None
    n_boot : int
        Bootstrap replicates.

    Examples
    --------
    >>> import calibkit
    >>> r = calibkit.smooth_ece([0.1, 0.4, 0.8, 0.9], [0, 1, 1, 1], bandwidth=0.1, ci=0.9, n_boot=20)
    >>> float(r) == r.value, r.n_boot, sorted(r.to_dict())
    (True, 20, ['bandwidth', 'ci', 'confidence_level', 'n_boot', 'value'])
    """

    value: float
    bandwidth: float
    ci: tuple[float, float] | None = None
    confidence_level: float | None = None
    n_boot: int = 0


def _smooth_replicates(scores, labels, sample_weight, from_logits, bandwidth, kernel, n_boot, seed, backend):
    """The smooth ECE of each Poisson replicate (NaN for a replicate without rows): one grid pass of the binary
    (confidence, outcome) rows with the multiplicities as weights, then the σ search, per replicate."""
    from .cumulative import _confidence_outcome, _draw, _replicate_blocks, _row_keys

    k = _backend.kernels(backend)
    p, y, w, _ = _confidence_outcome(scores, labels, sample_weight, from_logits, backend)
    sizes = _sizes_for(bandwidth)
    keys = _row_keys(seed, np.arange(p.shape[0]))
    out = np.full(n_boot, np.nan)
    for first, count in _replicate_blocks(p.shape[0], n_boot):
        multiplicities = _draw(keys, first, count)
        for j in range(count):
            weights = multiplicities[j].astype(np.float64)
            if w is not None:
                weights *= w
            if not weights.sum() > 0:
                continue
            r = k.smooth_grid(p, y, weights, False, sizes, False)
            raise_for_status(r["status"], binary=True)
            out[first + j] = _Grids(sizes, r["grid"], r["count"], r["weight"]).ece(bandwidth, kernel)[1]
    return out


@dataclasses.dataclass(frozen=True)
class SmoothReliabilityCurve:
    """The kernel-smoothed reliability curve (see :func:`smooth_reliability_curve`).

    Attributes
    ----------
    mesh : numpy.ndarray
        The points t in [0, 1] where the curve is evaluated.
    curve : numpy.ndarray
        The smoothed E[y | f = t] (top-label: the accuracy at confidence t).
    density : numpy.ndarray
        The kernel density of the scores at t (weights of mean 1 divided by N: it integrates to about 1).
    bandwidth : float
        The σ used.
    smooth_ece : float
        smECE at that σ.
    count : int
        Rows.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> c = calibkit.smooth_reliability_curve([0.1, 0.4, 0.8, 0.9], [0, 1, 1, 1], bandwidth=0.1, n_points=5)
    >>> c.mesh.tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    >>> round(c.smooth_ece, 4) == round(calibkit.smooth_ece([0.1, 0.4, 0.8, 0.9], [0, 1, 1, 1], bandwidth=0.1), 4)
    True
    """

    mesh: np.ndarray
    curve: np.ndarray
    density: np.ndarray
    bandwidth: float
    smooth_ece: float
    count: int

    def plot(self, **kwargs: Any) -> Figure:
        """:func:`calibkit.plot.smooth_reliability_diagram` of this curve."""
        from .plot import smooth_reliability_diagram

        return smooth_reliability_diagram(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: lists of floats."""
        return {"mesh": self.mesh.tolist(), "curve": self.curve.tolist(), "density": self.density.tolist(),
                "bandwidth": self.bandwidth, "smooth_ece": self.smooth_ece, "count": self.count}


def smooth_reliability_curve(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                             sample_weight: ArrayLike | None = None, bandwidth: str | float = "auto",
                             kernel: str = "reflected_gaussian", n_points: int = CURVE_POINTS,
                             backend: Backend = "auto") -> SmoothReliabilityCurve:
    r"""The kernel-smoothed reliability curve and score density behind relplot's diagram.

    At bandwidth σ (the smooth ECE's σ* with ``bandwidth="auto"``), on a mesh of ``n_points`` points
    t in [0, 1]::

        curve(t)   = Σ_i w_i K_σ(t, f_i) y_i / (δ̂(t) + 1e-4)     (the smoothed E[y | f = t])
        density(t) = δ̂(t) / N

    with δ̂ as in :func:`smooth_ece` (y_i the label, or the row's correctness; the same grids and one
    pass, with the labels spread too). This is the data of
    ``relplot.prepare_rel_diagram(f, y, plot_confidence_band=False)`` (its ``"mu"``, ``"density"``,
    ``"sigma"``, ``"ce"`` on ``"mesh"``), equal to 1e-9.
    {shared}    n_points : int, default 200
        Points of the mesh (relplot's ``plot_mesh_pts``), 2 to 100000.

    Returns
    -------
    SmoothReliabilityCurve
        ``mesh``, ``curve``, ``density``, ``bandwidth``, ``smooth_ece``, ``count``.

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> p = rng.random(2000)
    >>> y = (rng.random(2000) < p ** 1.5).astype(int)
    >>> c = calibkit.smooth_reliability_curve(p, y)
    >>> c.mesh.shape, round(c.bandwidth, 4), round(c.smooth_ece, 4)
    ((200,), 0.1006, 0.0997)
    >>> bool(c.curve[-1] > c.curve[0])
    True
    """
    bandwidth = _check_bandwidth(bandwidth)
    check_choice(kernel, "kernel", KERNELS)
    if isinstance(n_points, (bool, np.bool_)) or not isinstance(n_points, numbers.Integral) \
            or not 2 <= n_points <= 100000:
        raise ValueError(f"n_points must be an integer in [2, 100000], got {n_points!r}")
    grids = _grid_pass(scores, labels, sample_weight, from_logits, _sizes_for(bandwidth), backend, True)
    sigma, ece = grids.ece(bandwidth, kernel)
    t = np.linspace(0.0, 1.0, int(n_points))
    density, target = grids.smoothed(sigma, kernel, t, [0, 2])
    curve = target / (density + _DENSITY_EPS)
    return SmoothReliabilityCurve(mesh=t, curve=curve, density=density / grids.count, bandwidth=float(sigma),
                                  smooth_ece=ece, count=grids.count)


smooth_ece.__doc__ = smooth_ece.__doc__.replace("{shared}", _SHARED_DOC)
smooth_reliability_curve.__doc__ = smooth_reliability_curve.__doc__.replace("{shared}", _SHARED_DOC)
