"""Figures of calibration (matplotlib, the optional extra ``plot``).

- :func:`reliability_diagram`: the layout of Guo et al. (2017), Fig. 1: per
  bin, the accuracy as a bar and the gap to the bin's mean confidence as a
  hatched bar against the diagonal (over-confident and under-confident bins in
  two colours, both in the legend), and beneath it the fraction of samples in
  each bin (one y scale for every panel) with the overall accuracy and mean
  confidence marked.
- :func:`risk_coverage_plot`: selective prediction (Geifman & El-Yaniv 2017),
  risk against coverage, from :func:`calibkit.risk_coverage_curve`.
- :func:`ood_roc_plot`: the ROC curve of in- vs out-of-distribution scores
  (in-distribution samples are the positives, as in :func:`calibkit.ood_metrics`).
- :class:`ReliabilityDisplay`, :class:`RiskCoverageDisplay` and
  :class:`OODRocDisplay`: the same in the style of scikit-learn's
  ``CalibrationDisplay``: ``from_predictions(...)`` computes and plots, the
  object keeps the data (``table_``, ``curve_``, ...) and the ``figure_`` and
  ``ax_`` it drew on.

Every function takes ``ax=`` (draw into the user's axes) and never changes
matplotlib's backend: without ``ax`` a new figure comes from
``matplotlib.pyplot`` (the user's backend, shown in notebooks), except when
``path=`` is given: then the figure is a plain :class:`matplotlib.figure.Figure`
(no window, nothing left registered in pyplot), saved there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._typing import ArrayLike, Backend, Strategy, StrPath

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .decomposition import CorpReliabilityTable
    from .metrics import ReliabilityTable
    from .ood import RiskCoverageCurve
    from .smooth import SmoothReliabilityCurve

ACCURACY = "#4C72B0"          #: accuracy bars
OVER = "#DD8452"              #: gap bars of over-confident bins (confidence above accuracy)
UNDER = "#8172B3"             #: gap bars of under-confident bins (accuracy above confidence)
SAMPLES = "#55A868"           #: histogram bars (fraction of samples per bin)
CONFIDENCE = "#C44E52"        #: mean confidence marker
DIAGONAL = "gray"             #: perfect calibration
CURVE = "#4C72B0"             #: risk-coverage and ROC curves


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'calibkit[plot]'") from None


def _pyplot():
    """matplotlib.pyplot, whatever backend the user has chosen (never switched here)."""
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt


def _new_figure(figsize, dpi, plain, nrows=1, ncols=1, **kw):
    """``(figure, axes)``: from pyplot (the user's backend), or a plain Figure with ``plain`` (for files)."""
    _matplotlib()
    if plain:
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize, dpi=dpi)
        return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)
    return _pyplot().subplots(nrows, ncols, figsize=figsize, dpi=dpi, squeeze=False, **kw)


def _suptitle(fig, text, fontsize=11):
    """The figure's title, wrapped to the figure's width (a long dump name must not run off the edge)."""
    import textwrap

    width = max(20, int(fig.get_figwidth() * 120 / fontsize))
    fig.suptitle(textwrap.fill(text, width), fontsize=fontsize)


def _save(fig, path, dpi):
    """Save ``fig`` to ``path`` (if given) through a temporary in its folder, renamed into place when the figure
    is written (a failure leaves an old file as it was); the format is the path's suffix."""
    if path is None:
        return
    import os

    fmt = os.path.splitext(os.fspath(path))[1][1:].lower()
    if not fmt:  # matplotlib's own naming (it appends the default format's suffix)
        fig.savefig(path, dpi=dpi)
        return
    from ._files import atomic_output

    with atomic_output(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format=fmt)


def _draw(table, ax_top, ax_bottom, title):
    """One reliability diagram on ``ax_top`` and its histogram on ``ax_bottom`` (may be None)."""
    width = table.upper - table.lower
    filled = table.weight > 0
    acc = np.where(filled, table.accuracy, 0.0)
    conf = np.where(filled, table.mean_confidence, 0.0)
    over = filled & (conf > acc)
    under = filled & (acc > conf)
    ax_top.bar(table.lower[filled], acc[filled], width=width[filled], align="edge", color=ACCURACY,
               edgecolor="black", linewidth=0.6, label="accuracy")
    # Opaque gap bars, over-confident ones above the accuracy bar, under-confident ones over its top part: every
    # colour drawn is one of the legend's (no blend of two colours).
    if over.any():
        ax_top.bar(table.lower[over], (conf - acc)[over], bottom=acc[over], width=width[over], align="edge",
                   color=OVER, edgecolor="black", hatch="//", linewidth=0.6,
                   label="gap: over-confident")
    if under.any():
        ax_top.bar(table.lower[under], (acc - conf)[under], bottom=conf[under], width=width[under], align="edge",
                   color=UNDER, edgecolor="black", hatch="\\\\", linewidth=0.6,
                   label="gap: under-confident")
    ax_top.plot([0, 1], [0, 1], linestyle="--", color=DIAGONAL, linewidth=1, label="perfect calibration")
    ax_top.set_xlim(0, 1)
    ax_top.set_ylim(0, 1)
    ax_top.set_ylabel("accuracy")
    head = f"{title}\n" if title else ""
    ax_top.set_title(f"{head}ECE = {table.ece:.4f}, MCE = {table.mce:.4f}", fontsize=10)
    ax_top.legend(loc="upper left", fontsize=7)
    if ax_bottom is None:
        ax_top.set_xlabel("confidence")
        return 0.0
    share = table.weight / max(table.weight.sum(), 1e-300)
    ax_bottom.bar(table.lower, share, width=width, align="edge", color=SAMPLES, edgecolor="black", linewidth=0.6,
                  label="samples")
    if table.weight.sum() > 0:  # as in Guo et al.'s Fig. 1: the overall accuracy and mean confidence
        ax_bottom.axvline(table.accuracy_overall, color="black", linestyle="--", linewidth=1, label="accuracy")
        ax_bottom.axvline(table.mean_confidence_overall, color=CONFIDENCE, linestyle=":", linewidth=1.5,
                          label="mean confidence")
    ax_bottom.legend(loc="best", fontsize=6)
    ax_bottom.set_xlim(0, 1)
    ax_bottom.set_xlabel("confidence")
    ax_bottom.set_ylabel("fraction")
    return float(share.max()) if len(share) else 0.0


def _axes_pairs(ax, n):
    """The user's axes as n (top, bottom-or-None) pairs."""
    from matplotlib.axes import Axes

    if isinstance(ax, Axes):
        if n != 1:
            raise ValueError(f"ax: one Axes for {n} tables; give a (2, {n}) array of Axes (top: diagrams, "
                             "bottom: histograms)")
        return [(ax, None)]
    arr = np.asarray(ax, dtype=object)
    if arr.shape == (2,) and n == 1:
        arr = arr.reshape(2, 1)
    if arr.shape != (2, n) or not all(isinstance(a, Axes) for a in arr.ravel()):
        raise ValueError(f"ax must be an Axes (one table, no histogram) or a (2, {n}) array of Axes, "
                         f"got {type(ax).__name__} of shape {arr.shape}")
    return [(arr[0, j], arr[1, j]) for j in range(n)]


def reliability_diagram(tables: ReliabilityTable | Sequence[ReliabilityTable], titles: Sequence[str] | None = None,
                        *, ax: Axes | np.ndarray | None = None, name: str | None = None, title: str | None = None,
                        path: StrPath | None = None, figsize: tuple[float, float] | None = None,
                        dpi: float = 100) -> Figure:
    """Draw one reliability diagram per table, side by side (e.g. before / after calibration).

    Parameters
    ----------
    tables : ReliabilityTable or sequence of them
        From :func:`calibkit.reliability_table`, ``CalibrationResult.table``, ...
    titles : sequence of str, optional
        One per table (e.g. ``["raw", "temperature"]``).
    ax : matplotlib Axes or (2, n) array of Axes, optional
        Draw there instead of on a new figure: one Axes (one table, the
        diagram without its histogram), or the diagrams in the first row and
        their histograms in the second (``plt.subplots(2, n)``).
    name : str, optional
        What the tables are of (a dump's name): the figure's title is
        ``"{name}: reliability, N = {n}"`` (N counted in the first table).
    title : str, optional
        The figure's title instead (only on a figure made here; ``ax=`` leaves
        the user's figure title alone).
    path : str or path-like, optional
        Save the figure there (format from the suffix: .png, .svg, .pdf).
        The figure is then a plain Figure, not registered in pyplot.
    figsize : (width, height) in inches, optional
        Default 4 x 5 inches per diagram.
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.

    Notes
    -----
    The histograms (fraction of samples per bin) of all panels share one y
    scale, so panels compare at a glance.
    """
    from .metrics import ReliabilityTable

    if isinstance(tables, ReliabilityTable):
        tables = [tables]
    tables = list(tables)
    if not tables or not all(isinstance(t, ReliabilityTable) for t in tables):
        raise TypeError("tables must be a ReliabilityTable or a non-empty sequence of them")
    titles = [""] * len(tables) if titles is None else list(titles)
    if len(titles) != len(tables):
        raise ValueError(f"{len(titles)} titles for {len(tables)} tables")
    n = len(tables)
    if ax is None:
        fig, axes = _new_figure(figsize or (4.0 * n, 5.0), dpi, path is not None, 2, n,
                                gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
        pairs = [(axes[0, j], axes[1, j]) for j in range(n)]
        own = True
    else:
        _matplotlib()
        pairs = _axes_pairs(ax, n)
        fig, own = pairs[0][0].figure, False
    top = max(_draw(t, a, b, tt) for t, (a, b), tt in zip(tables, pairs, titles))
    for _, b in pairs:
        if b is not None:
            b.set_ylim(0, max(top, 1e-3) * 1.1)
    if own:
        count = int(tables[0].count.sum())
        _suptitle(fig, title if title is not None else
                  (f"{name}: reliability, N = {count:,}" if name else f"reliability, N = {count:,}"))
        fig.tight_layout()
    _save(fig, path, dpi)
    return fig


def report_figure(result: Mapping[str, Any], path: StrPath | None = None, *, dpi: float = 100) -> Figure:
    """The reliability diagrams of a ``calibkit report`` result (raw, then each calibrator): a plain Figure
    (not registered in pyplot), saved to ``path`` when given."""
    tables = result["tables"]
    fig, axes = _new_figure((4.0 * len(tables), 5.0), dpi, True, 2, len(tables),
                            gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    reliability_diagram(list(tables.values()), titles=list(tables.keys()), ax=axes)
    n = int(next(iter(tables.values())).count.sum())
    _suptitle(fig, f"{result['dump']}: reliability, N = {n:,}")
    fig.tight_layout()
    _save(fig, path, dpi)
    return fig


def _thin(x, y, points=2000):
    """At most about `points` points of a long curve (evenly spaced along it, both ends kept), for drawing."""
    if len(x) <= points:
        return x, y
    idx = np.unique(np.linspace(0, len(x) - 1, points).round().astype(np.int64))
    return x[idx], y[idx]


def _one_axes(ax, figsize, dpi, path):
    if ax is not None:
        _matplotlib()
        return ax.figure, ax, False
    fig, axes = _new_figure(figsize, dpi, path is not None)
    return fig, axes[0, 0], True


def _finish(fig, ax, own, path, dpi, *, title, xlabel, ylabel, ylim=(0, 1), legend="upper left", fontsize=8):
    """The common end of a one-axes plot: unit x range, labels, legend, the title when the figure is ours, save."""
    ax.set_xlim(0, 1)
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc=legend, fontsize=fontsize)
    if own:
        _suptitle(fig, title, 10)
        fig.tight_layout()
    _save(fig, path, dpi)
    return fig


def risk_coverage_plot(curve: RiskCoverageCurve, *, aurc: float | None = None, n: int | None = None,
                       ax: Axes | None = None, name: str | None = None, path: StrPath | None = None,
                       figsize: tuple[float, float] = (5.0, 4.0), dpi: float = 100) -> Figure:
    """Risk (error rate among the accepted predictions) against coverage (fraction accepted).

    Parameters
    ----------
    curve : RiskCoverageCurve
        From :func:`calibkit.risk_coverage_curve`.
    aurc : float, optional
        Shown in the legend (the area under the curve, :func:`calibkit.aurc`).
    n : int, optional
        The number of predictions, shown in the title.
    ax : matplotlib Axes, optional
    name : str, optional
        The curve's label and the title.
    path, figsize, dpi
        As in :func:`reliability_diagram`.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Curves of more than 2000 points are drawn through 2000 of them, evenly
    spaced along the curve (the first and last kept).
    """
    from .ood import RiskCoverageCurve

    if not isinstance(curve, RiskCoverageCurve):
        raise TypeError(f"curve must be a RiskCoverageCurve (from calibkit.risk_coverage_curve), "
                        f"got {type(curve).__name__}")
    fig, ax, own = _one_axes(ax, figsize, dpi, path)
    x, y = _thin(np.concatenate([[0.0], curve.coverage]), np.concatenate([[curve.risk[0]], curve.risk]))
    label = name or "model"
    if aurc is not None:
        label += f" (AURC = {aurc:.4f})"
    ax.step(x, y, where="pre", color=CURVE, linewidth=1.5, label=label)
    ax.axhline(curve.risk[-1], color=DIAGONAL, linestyle="--", linewidth=1, label="risk at full coverage")
    return _finish(fig, ax, own, path, dpi, title=f"risk-coverage{': ' + name if name else ''}"
                   + (f", N = {n:,}" if n else ""), xlabel="coverage (fraction of predictions accepted)",
                   ylabel="risk (error rate among accepted)", ylim=(0, max(float(np.max(curve.risk)) * 1.05, 1e-3)))


def ood_roc_plot(fpr: ArrayLike, tpr: ArrayLike, *, auroc: float | None = None, ax: Axes | None = None,
                 name: str | None = None, path: StrPath | None = None, figsize: tuple[float, float] = (4.5, 4.5),
                 dpi: float = 100) -> Figure:
    """The ROC curve of an OOD detector: TPR (in-distribution accepted) against FPR (out-of-distribution accepted).

    Parameters
    ----------
    fpr, tpr : (M,) arrays
        The curve from (0, 0) to (1, 1) (see :meth:`OODRocDisplay.from_scores`).
    auroc : float, optional
        Shown in the legend.
    ax, name, path, figsize, dpi
        As in :func:`risk_coverage_plot`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax, own = _one_axes(ax, figsize, dpi, path)
    x, y = _thin(np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64))
    label = name or "detector"
    if auroc is not None:
        label += f" (AUROC = {auroc:.4f})"
    ax.plot(x, y, color=CURVE, linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color=DIAGONAL, linewidth=1, label="chance")
    return _finish(fig, ax, own, path, dpi, title=f"ROC, in vs out of distribution{': ' + name if name else ''}",
                   xlabel="false-positive rate (out-of-distribution accepted)",
                   ylabel="true-positive rate (in-distribution accepted)", ylim=(0, 1.01), legend="lower right")


def corp_reliability_diagram(table: CorpReliabilityTable, *, ax: Axes | None = None, name: str | None = None,
                             path: StrPath | None = None, figsize: tuple[float, float] = (5.0, 5.0),
                             dpi: float = 100) -> Figure:
    """The CORP reliability diagram (Dimitriadis, Gneiting & Jordan 2021) of a :class:`calibkit.CorpReliabilityTable`.

    The isotonic recalibration curve through its knots (a step function: flat within each PAV block), the
    consistency band around it when the table has one (``n_bootstrap > 0``), the diagonal, and the Brier
    decomposition (score, MCB, DSC, UNC) in the legend, as in the paper's figures.

    Parameters
    ----------
    table : CorpReliabilityTable
        From :func:`calibkit.corp_reliability_table`.
    ax : matplotlib Axes, optional
    name : str, optional
        The curve's label and the title.
    path, figsize, dpi
        As in :func:`reliability_diagram`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> rng = np.random.default_rng(0)
    >>> p = rng.random(500); y = (rng.random(500) < p).astype(int)
    >>> table = calibkit.corp_reliability_table(p, y, n_bootstrap=50)
    >>> fig = calibkit.plot.corp_reliability_diagram(table, name="demo")
    >>> len(fig.axes)
    1
    """
    from .decomposition import CorpReliabilityTable

    if not isinstance(table, CorpReliabilityTable):
        raise TypeError(f"table must be a CorpReliabilityTable (from calibkit.corp_reliability_table), "
                        f"got {type(table).__name__}")
    fig, ax, own = _one_axes(ax, figsize, dpi, path)
    if table.lower is not None:
        ax.fill_between(table.x, table.lower, table.upper, color=CURVE, alpha=0.15, linewidth=0,
                        label=f"{table.level:.0%} consistency band")
    d = table.decomposition
    label = f"{name or 'CORP'}: BS = {d.score:.4f}\nMCB = {d.miscalibration:.4f}, DSC = {d.discrimination:.4f}, " \
            f"UNC = {d.uncertainty:.4f}"
    ax.plot(table.x, table.y, color=CURVE, linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color=DIAGONAL, linewidth=1, label="perfect calibration")
    return _finish(fig, ax, own, path, dpi, title=f"CORP reliability diagram{': ' + name if name else ''}",
                   xlabel="forecast probability", ylabel="conditional event probability (isotonic)", fontsize=7)


def smooth_reliability_diagram(curve: SmoothReliabilityCurve, *, ax: Axes | None = None, name: str | None = None,
                               path: StrPath | None = None, figsize: tuple[float, float] = (4.5, 4.5),
                               dpi: float = 100) -> Figure:
    """The smooth reliability diagram of Błasiok & Nakkiran (2023): the kernel-smoothed E[y | f] against
    f, the diagonal, and the density of the scores beneath (scaled to a third of the height).

    Parameters
    ----------
    curve : SmoothReliabilityCurve
        From :func:`calibkit.smooth_reliability_curve`.
    ax, name, path, figsize, dpi
        As in :func:`risk_coverage_plot`.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> from matplotlib.figure import Figure
    >>> rng = np.random.default_rng(0)
    >>> p = rng.random(1000)
    >>> curve = calibkit.smooth_reliability_curve(p, (rng.random(1000) < p).astype(int))
    >>> ax = Figure().subplots()
    >>> calibkit.plot.smooth_reliability_diagram(curve, ax=ax) is ax.figure
    True
    """
    from .smooth import SmoothReliabilityCurve

    if not isinstance(curve, SmoothReliabilityCurve):
        raise TypeError(f"curve must be a SmoothReliabilityCurve (from calibkit.smooth_reliability_curve), "
                        f"got {type(curve).__name__}")
    fig, ax, own = _one_axes(ax, figsize, dpi, path)
    t = curve.mesh
    peak = float(np.max(curve.density))
    height = curve.density / peak * 0.3 if peak > 0 else np.zeros_like(t)
    ax.fill_between(t, 0.0, height, color=SAMPLES, alpha=0.3, linewidth=0, label="density of scores")
    ax.plot([0, 1], [0, 1], linestyle="--", color=DIAGONAL, linewidth=1, label="perfect calibration")
    ax.plot(t, curve.curve, color=CONFIDENCE, linewidth=2,
            label=f"smoothed (smECE = {curve.smooth_ece:.4f}, σ = {curve.bandwidth:.3g})")
    ax.set_aspect("equal")
    return _finish(fig, ax, own, path, dpi,
                   title=f"smooth reliability diagram{': ' + name if name else ''}, N = {curve.count:,}",
                   xlabel="score f (confidence)", ylabel="E[y | f] (smoothed)")


def cumulative_calibration(scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                           sample_weight: ArrayLike | None = None, ax: Axes | None = None, name: str | None = None,
                           path: StrPath | None = None, figsize: tuple[float, float] = (5.5, 4.0), dpi: float = 100,
                           backend: Backend = "auto") -> Figure:
    """The cumulative plot of Arrieta-Ibarra et al. 2022: cumulative differences against cumulative weight.

    The rows sorted by score, the curve is C_k = (1/W) sum_{j<=k} w_j (y_j - p_j) (see
    :func:`calibkit.cumulative_calibration_error`) against the cumulative weight fraction; a perfectly
    calibrated model gives a path that wanders like a Brownian motion around 0, and the slope of a
    segment is the miscalibration (mean outcome minus mean score) over the scores it spans. The shaded
    band is +-1 standard deviation of C_k under perfect calibration (it widens to +-sigma at the right
    end), and the triangle at the origin has the height 2 sigma, for scale, as in the paper. Ticks on the
    top axis show the scores at those fractions; the title gives ECCE-R, ECCE-R / sigma and its p-value.

    Parameters
    ----------
    scores, labels, from_logits, sample_weight, backend
        As in :func:`calibkit.cumulative_calibration_error`.
    ax : matplotlib Axes, optional
    name : str, optional
        The curve's label.
    path, figsize, dpi
        As in :func:`reliability_diagram`.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Paths of more than 2000 points are drawn through 2000 of them, evenly spaced along the path.
    """
    from .cumulative import cumulative_curve

    c = cumulative_curve(scores, labels, from_logits=from_logits, sample_weight=sample_weight, backend=backend)
    r = c["result"]
    fig, ax, own = _one_axes(ax, figsize, dpi, path)
    x, cum = c["x"], c["cumulative"]
    # Standard deviation of C_k under perfect calibration: sqrt(sum_{j<=k} w_j^2 p_j (1 - p_j)) / W.
    p = c["scores"]
    w = np.diff(x) * r.weight
    sd = np.concatenate(([0.0], np.sqrt(np.cumsum(w * w * (p * (1.0 - p)))) / r.weight))
    tx, tsd = _thin(x, sd)
    ax.fill_between(tx, -tsd, tsd, color=DIAGONAL, alpha=0.2, linewidth=0, label="±1 sd under calibration")
    ax.plot([0, 0], [-r.sigma, r.sigma], color=DIAGONAL, linewidth=2)
    ax.plot([0, 0.05, 0], [-r.sigma, 0, r.sigma], color=DIAGONAL, linewidth=1)
    ax.axhline(0.0, color=DIAGONAL, linestyle="--", linewidth=1)
    px, py = _thin(x, cum)
    ax.plot(px, py, color=CURVE, linewidth=1.5, label=name or "model")
    ax.set_xlim(0, 1)
    ax.set_xlabel("cumulative weight fraction (rows sorted by score)")
    ax.set_ylabel("cumulative difference (outcome - score)")
    top = ax.secondary_xaxis("top")
    ticks = np.linspace(0.0, 1.0, 6)
    at = np.minimum(np.searchsorted(x[1:], ticks, side="left"), p.shape[0] - 1)
    top.set_xticks(ticks)
    top.set_xticklabels([f"{v:.2f}" for v in p[at]], fontsize=7)
    top.set_xlabel("score", fontsize=8)
    ax.legend(loc="best", fontsize=8)
    title = f"ECCE-R = {r.range:.4g}, /σ = {r.range_sigma:.3g}, p = {r.range_pvalue:.3g}"
    if own:
        _suptitle(fig, title, 10)
        fig.tight_layout()
    else:
        ax.set_title(title, fontsize=9)
    _save(fig, path, dpi)
    return fig


#: Per-pixel scores :func:`uncertainty_map` draws: (function name in calibkit.uncertainty, colour-bar label,
#: True for an uncertainty (high = unsure), False for a confidence (high = sure)).
MAP_SCORES = {
    "entropy": ("predictive entropy H(p) (nats)", True),
    "max_probability": ("max probability (confidence)", False),
    "margin": ("top-1 minus top-2 probability (confidence)", False),
    "energy": ("free energy -log sum exp(z)", True),
}
CORRECT = "#e8e8e8"   #: error map: pixels predicted right
WRONG = "#C44E52"     #: error map: pixels whose argmax differs from the label
IGNORED = "#7f7f7f"   #: error map: pixels without ground truth (ignore_index or masked out)


def _pixel_name(name, pos, axis=None, col=None):
    at = [str(i) for i in pos]
    if axis is not None:
        at.insert(axis, ":" if col is None or col < 0 else str(col))
    return f"{name}[{', '.join(at)}]"


def uncertainty_image(scores: ArrayLike, labels: ArrayLike | None = None, *, image: int = 0, axis: int = 1,
                      from_logits: bool = False, score: str = "entropy", ignore_index: int | None = None,
                      mask: ArrayLike | None = None, section: Sequence[int] | None = None,
                      backend: Backend = "auto") -> dict:
    """The maps :func:`uncertainty_map` draws, for one image of dense scores (no matplotlib needed).

    Returns
    -------
    dict
        ``"uncertainty"``: float64 (H, W), the per-pixel ``score``; ``"error"``: int8 (H, W), 0 where the
        argmax is the label, 1 where it differs, 2 where the pixel has no ground truth (``ignore_index`` or
        ``mask`` False), or None without labels; ``"error_rate"`` among the counted pixels (None without
        labels or when every pixel is ignored); ``"score"``, ``"image"``, ``"section"`` (the indices along the
        leading spatial axes of a volume, ``()`` for an image), ``"n_classes"``.

    Only that image is read: the scores of image ``image`` (and ``section``) are taken as rows by
    :func:`calibkit._dense.as_dense` (a strided view of the caller's array, the class axis read with its
    stride; no transposed copy) and scored by the row functions of :mod:`calibkit.uncertainty` piece by piece.
    Memory: the two (H, W) maps.
    """
    from . import uncertainty
    from ._dense import as_dense, check_class_axis
    from ._validation import BadElementError, _as_array

    if score not in MAP_SCORES:
        raise ValueError(f"score must be one of {', '.join(map(repr, MAP_SCORES))}, got {score!r}")
    if score == "energy" and not from_logits:
        raise ValueError("score='energy' needs logits: pass from_logits=True (the energy of probabilities is "
                         "not defined)")
    s = scores if isinstance(scores, np.ndarray) else _as_array(scores, "scores")
    if s.ndim < 4:
        raise ValueError(f"scores must have shape (N, K, H, W) (or (N, K, D, H, W), or channel-last with axis=-1) "
                         f"to draw a map, got shape {s.shape}")
    ax = check_class_axis(axis, s.ndim)
    K = s.shape[ax]
    row_shape = s.shape[:ax] + s.shape[ax + 1:]
    if isinstance(image, (bool, np.bool_)) or not isinstance(image, (int, np.integer)):
        raise TypeError(f"image must be an integer index along axis 0, got {type(image).__name__}")
    image = int(image)
    if not 0 <= image < row_shape[0]:
        raise ValueError(f"image must be in [0, {row_shape[0]}) (scores hold {row_shape[0]} images), got {image}")
    spatial = row_shape[1:]
    lead = spatial[:-2]
    if section is None:
        section = tuple(n // 2 for n in lead)
    else:
        section = tuple(int(i) for i in np.atleast_1d(np.asarray(section)).tolist())
        if len(section) != len(lead) or any(not 0 <= i < n for i, n in zip(section, lead)):
            raise ValueError(f"section must give one index in range for each leading spatial axis {lead} of the "
                             f"volume, got {section}")
    pix = (slice(image, image + 1),) + section  # into (N, *spatial)
    img = s[pix[:1] + (slice(None),) + pix[1:]] if ax == 1 else s[pix]

    def sub(a, name, kind):
        if a is None:
            return None
        arr = a if isinstance(a, np.ndarray) else _as_array(a, name)
        if arr.shape != row_shape:
            raise ValueError(f"{name} must have shape {row_shape} (N, *spatial) to match scores of shape {s.shape} "
                             f"with classes on axis {axis}, got shape {arr.shape}")
        if kind == "int" and arr.dtype.kind not in "iub":
            raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
        if kind == "bool" and arr.dtype != bool:
            raise TypeError(f"{name} must be a boolean array (True where a pixel is counted), got dtype {arr.dtype}")
        return np.asarray(arr[pix]).reshape(-1)

    if mask is not None and labels is None:
        raise ValueError("mask marks the pixels of the error map that have no ground truth: give the labels too "
                         "(without labels only the uncertainty map is drawn)")
    lab = sub(labels, "labels", "int")
    keep = sub(mask, "mask", "bool")
    H, W = spatial[-2:]
    unc = np.empty(H * W)
    pred = np.empty(H * W, dtype=np.int64)
    fn = getattr(uncertainty, score)
    kw = {} if score == "energy" else {"from_logits": from_logits}
    dense = as_dense(img, axis=axis, name="scores")
    for p in dense.pieces():
        a, b = p.offset, p.offset + p.n_rows
        try:
            unc[a:b] = fn(p.scores, backend=backend, **kw)
        except BadElementError as exc:
            code, row, col, value = exc.status
            where = (image,) + section + tuple(int(i) for i in np.unravel_index(a + int(row), (H, W)))
            prefix = f"scores[{row}, {col}]" if col >= 0 else f"scores[{row}]"
            msg = str(exc)
            msg = msg[len(prefix):] if msg.startswith(prefix) else ": " + msg
            raise ValueError(_pixel_name("scores", where, ax, col) + msg) from None
        pred[a:b] = np.argmax(p.scores, axis=1)
    out = {"uncertainty": unc.reshape(H, W), "error": None, "error_rate": None, "score": score, "image": image,
           "section": section, "n_classes": int(K)}
    if lab is not None:
        ignored = np.zeros(H * W, dtype=bool) if keep is None else ~keep
        if ignore_index is not None:
            ignored |= lab == ignore_index
        bad = ~ignored & ((lab < 0) | (lab >= K))
        if bad.any():
            j = int(np.argmax(bad))
            where = (image,) + section + tuple(int(i) for i in np.unravel_index(j, (H, W)))
            hint = "" if ignore_index is not None else \
                f"; if {int(lab[j])} marks pixels without ground truth, give ignore_index={int(lab[j])}"
            raise ValueError(f"{_pixel_name('labels', where)} = {int(lab[j])} is out of range for "
                             f"n_classes={K}{hint}")
        err = np.where(ignored, 2, (pred != lab).astype(np.int8)).astype(np.int8)
        out["error"] = err.reshape(H, W)
        n = int(np.count_nonzero(~ignored))
        out["error_rate"] = float(np.count_nonzero(err == 1)) / n if n else None
    return out


def _draw_uncertainty(fig, axes, maps, cmap, title_each=True):
    """The uncertainty map on ``axes[0]`` and (with labels) the error map on ``axes[1]``, each with a colour bar."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    label, _ = MAP_SCORES[maps["score"]]
    where = f"image {maps['image']}" + (f", section {maps['section']}" if maps["section"] else "")
    im = axes[0].imshow(maps["uncertainty"], cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04).set_label(label, fontsize=8)
    if title_each:
        axes[0].set_title(f"{maps['score']} ({where})", fontsize=9)
    if maps["error"] is not None and len(axes) > 1:
        cm = ListedColormap([CORRECT, WRONG, IGNORED])
        im2 = axes[1].imshow(maps["error"], cmap=cm, norm=BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3),
                             interpolation="nearest")
        bar = fig.colorbar(im2, ax=axes[1], fraction=0.046, pad=0.04, ticks=[0, 1, 2])
        bar.ax.set_yticklabels(["correct", "wrong", "ignored"], fontsize=8)
        rate = maps["error_rate"]
        if title_each:
            axes[1].set_title("errors: argmax ≠ label"
                              + (f" ({rate:.1%} of counted pixels)" if rate is not None else ""), fontsize=9)
    for a in axes:
        a.set_xticks([])
        a.set_yticks([])


def uncertainty_map(scores: ArrayLike, labels: ArrayLike | None = None, *, image: int = 0, axis: int = 1,
                    from_logits: bool = False, score: str = "entropy", ignore_index: int | None = None,
                    mask: ArrayLike | None = None, section: Sequence[int] | None = None, ax: Any = None,
                    path: StrPath | None = None, figsize: tuple[float, float] = (10.0, 4.2), dpi: float = 100,
                    cmap: str = "viridis", title: str | None = None, backend: Backend = "auto") -> Figure:
    """One image's uncertainty map next to its error map, each with a colour bar (dense predictions).

    Left: the per-pixel ``score`` of image ``image``; right (with ``labels``): the pixels whose argmax differs
    from the label (``WRONG``), those where it is the label (``CORRECT``) and those without ground truth
    (``IGNORED``: ``labels == ignore_index`` or ``mask`` False).

    Parameters
    ----------
    scores : array-like, (N, K, H, W) or (N, K, D, H, W) (``axis=1``), or channel-last (``axis=-1``)
        Logits (``from_logits=True``) or probabilities of a segmentation model. Only image ``image`` is read:
        its rows are a strided view of the array (the class axis read with its stride, no transposed or
        flattened copy), scored piece by piece by :mod:`calibkit.uncertainty`'s row functions; a memory map
        stays on disk but for that image.
    labels : array-like of int, ``(N, *spatial)``, optional
        Without labels only the uncertainty map is drawn.
    image : int
        The index along axis 0.
    axis : {1, -1}
        The class axis.
    from_logits : bool
        Whether the scores are logits (``score="energy"`` needs them).
    score : {"entropy", "max_probability", "margin", "energy"}
        The map: :func:`calibkit.entropy` (an uncertainty), :func:`calibkit.max_probability` and
        :func:`calibkit.margin` (confidences), :func:`calibkit.energy`.
    ignore_index : int, optional
        A label shown as ``ignored`` (e.g. 255).
    mask : bool array-like, ``(N, *spatial)``, optional
        False where a pixel has no ground truth (shown as ``ignored``).
    section : sequence of int, optional
        For volumes (N, K, D, H, W): the index along each spatial axis before the last two (default: the
        middle one); the map is of that (H, W) section.
    ax : matplotlib Axes, or a pair of them, optional
        Where to draw: two Axes (uncertainty, errors) with labels, one without.
    path : str or path-like, optional
        Save the figure there (through a temporary file renamed into place); the figure is then a plain
        matplotlib Figure, not registered with pyplot.
    figsize, dpi, cmap, title
        The figure's size, resolution, the uncertainty map's colour map and its title (default: the image).
    backend : {"auto", "cpp", "numba"}

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from calibkit import plot
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    >>> labels = rng.integers(0, 3, (2, 8, 8)); labels[:, :2] = 255
    >>> maps = plot.uncertainty_image(logits, labels, image=1, from_logits=True, ignore_index=255)
    >>> maps["uncertainty"].shape, int((maps["error"] == 2).sum())
    ((8, 8), 16)
    """
    maps = uncertainty_image(scores, labels, image=image, axis=axis, from_logits=from_logits, score=score,
                             ignore_index=ignore_index, mask=mask, section=section, backend=backend)
    n = 1 if maps["error"] is None else 2
    if ax is None:
        w = figsize[0] if n == 2 else figsize[0] / 2 + 0.6
        fig, axes = _new_figure((w, figsize[1]), dpi, path is not None, 1, n)
        axes, own = list(axes[0]), True
    else:
        _matplotlib()
        axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
        if len(axes) != n:
            raise ValueError(f"ax must be {'a pair of Axes (uncertainty, errors)' if n == 2 else 'one Axes'} "
                             f"{'with labels' if n == 2 else 'without labels'}, got {len(axes)}")
        fig, own = axes[0].figure, False
    _draw_uncertainty(fig, axes, maps, cmap)
    if own:
        _suptitle(fig, title or f"image {maps['image']}: {maps['score']}"
                  + ("" if maps["error_rate"] is None else f", error rate {maps['error_rate']:.2%}"), 10)
        fig.tight_layout()
    _save(fig, path, dpi)
    return fig


class ReliabilityDisplay:
    """A reliability diagram, like scikit-learn's ``CalibrationDisplay``.

    Parameters
    ----------
    table : ReliabilityTable
    name : str, optional

    Attributes
    ----------
    table_ : ReliabilityTable
    figure_ : matplotlib Figure
        Set by :meth:`plot`.
    ax_ : tuple of two Axes
        (top, bottom), set by :meth:`plot` (bottom is None when drawn into one given Axes).

    Examples
    --------
    >>> import numpy as np
    >>> from calibkit.plot import ReliabilityDisplay
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(1000, 5)); labels = rng.integers(0, 5, 1000)
    >>> disp = ReliabilityDisplay.from_predictions(logits, labels, from_logits=True, name="demo")
    >>> disp.table_.n_bins
    15
    """

    def __init__(self, table: ReliabilityTable, *, name: str | None = None):
        self.table_, self.name = table, name

    def plot(self, *, ax: Axes | np.ndarray | None = None, title: str | None = None) -> "ReliabilityDisplay":
        """Draw (see :func:`reliability_diagram`); returns self."""
        self.figure_ = reliability_diagram(self.table_, ax=ax, name=self.name, title=title)
        self.ax_ = _axes_pairs(ax, 1)[0] if ax is not None else tuple(self.figure_.axes[:2])
        return self

    @classmethod
    def from_predictions(cls, scores: ArrayLike, labels: ArrayLike, *, n_bins: int = 15,
                         strategy: Strategy = "uniform", from_logits: bool = False,
                         sample_weight: ArrayLike | None = None, name: str | None = None,
                         ax: Axes | np.ndarray | None = None, backend: Backend = "auto") -> "ReliabilityDisplay":
        """Compute the reliability table of ``scores`` (probabilities, or logits with ``from_logits=True``) and
        ``labels`` (as :func:`calibkit.reliability_table`) and draw it."""
        from .metrics import reliability_table

        table = reliability_table(scores, labels, n_bins=n_bins, strategy=strategy, from_logits=from_logits,
                                  sample_weight=sample_weight, backend=backend)
        return cls(table, name=name).plot(ax=ax)


class RiskCoverageDisplay:
    """A risk-coverage curve of selective prediction.

    Attributes
    ----------
    curve_ : RiskCoverageCurve
    aurc_ : float
    figure_ : matplotlib Figure
        Set by :meth:`plot`.
    ax_ : matplotlib Axes
        Set by :meth:`plot`.
    """

    def __init__(self, curve: RiskCoverageCurve, *, aurc: float | None = None, n: int | None = None,
                 name: str | None = None):
        self.curve_, self.aurc_, self.n, self.name = curve, aurc, n, name

    def plot(self, *, ax: Axes | None = None) -> "RiskCoverageDisplay":
        """Draw (see :func:`risk_coverage_plot`); returns self."""
        self.figure_ = risk_coverage_plot(self.curve_, aurc=self.aurc_, n=self.n, ax=ax, name=self.name)
        self.ax_ = ax if ax is not None else self.figure_.axes[0]
        return self

    @classmethod
    def from_confidence(cls, confidence: ArrayLike, correct: ArrayLike, *, name: str | None = None,
                        ax: Axes | None = None, backend: Backend = "auto") -> "RiskCoverageDisplay":
        """From per-sample confidence (higher = accepted first) and correctness (bool)."""
        from .ood import aurc, risk_coverage_curve

        curve = risk_coverage_curve(confidence, correct, backend=backend)
        return cls(curve, aurc=aurc(confidence, correct, backend=backend), n=int(np.shape(confidence)[0]),
                   name=name).plot(ax=ax)

    @classmethod
    def from_predictions(cls, scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False,
                         name: str | None = None, ax: Axes | None = None,
                         backend: Backend = "auto") -> "RiskCoverageDisplay":
        """From (N, K) scores (probabilities, or logits with ``from_logits=True``) and labels: the confidence is
        the top probability (maximum softmax probability), correct when its class is the label."""
        from ._validation import check_scores

        s = np.asarray(check_scores(scores), dtype=np.float64)
        if s.ndim != 2:
            raise ValueError(f"scores must have shape (N, K), got {s.shape}")
        y = np.asarray(labels)
        if y.shape != (s.shape[0],):
            raise ValueError(f"labels must have shape ({s.shape[0]},) (one per row of scores), got {y.shape}")
        pred = np.argmax(s, axis=1)
        top = np.take_along_axis(s, pred[:, None], axis=1)
        conf = 1.0 / np.exp(s - top).sum(axis=1) if from_logits else top[:, 0]
        return cls.from_confidence(conf, pred == y, name=name, ax=ax, backend=backend)


class OODRocDisplay:
    """The ROC curve of in- vs out-of-distribution scores (in-distribution samples are the positives).

    Attributes
    ----------
    fpr_, tpr_ : ndarray
        The curve, from (0, 0) (accept nothing) to (1, 1), one point per distinct score.
    auroc_ : float
    figure_ : matplotlib Figure
        Set by :meth:`plot`.
    ax_ : matplotlib Axes
        Set by :meth:`plot`.
    """

    def __init__(self, fpr: ArrayLike, tpr: ArrayLike, *, auroc: float | None = None, name: str | None = None):
        self.fpr_, self.tpr_, self.auroc_, self.name = fpr, tpr, auroc, name

    def plot(self, *, ax: Axes | None = None) -> "OODRocDisplay":
        """Draw (see :func:`ood_roc_plot`); returns self."""
        self.figure_ = ood_roc_plot(self.fpr_, self.tpr_, auroc=self.auroc_, ax=ax, name=self.name)
        self.ax_ = ax if ax is not None else self.figure_.axes[0]
        return self

    @classmethod
    def from_scores(cls, scores_in: ArrayLike, scores_out: ArrayLike, *, name: str | None = None,
                    ax: Axes | None = None, backend: Backend = "auto") -> "OODRocDisplay":
        """From the scores (higher = more in-distribution, e.g. maximum softmax probability or negative energy)
        of in- and out-of-distribution samples, as :func:`calibkit.ood_metrics` takes them."""
        from .ood import _in_out, _ranking, ood_metrics

        si, so = _in_out(scores_in, scores_out)
        r = _ranking(si, so, "scores_in", "scores_out", curve=True, backend=backend)
        tpr = np.concatenate([[0.0], np.asarray(r["tp"], dtype=np.float64) / len(si)])
        fpr = np.concatenate([[0.0], np.asarray(r["fp"], dtype=np.float64) / len(so)])
        auroc = ood_metrics(si, so, backend=backend).auroc
        return cls(fpr, tpr, auroc=auroc, name=name).plot(ax=ax)


__all__ = ["OODRocDisplay", "ReliabilityDisplay", "RiskCoverageDisplay", "corp_reliability_diagram",
           "cumulative_calibration", "ood_roc_plot", "reliability_diagram", "report_figure", "risk_coverage_plot",
           "smooth_reliability_diagram", "uncertainty_image", "uncertainty_map"]
