"""Reliability diagrams (matplotlib, the optional extra ``plot``).

The layout of Guo et al. (2017), Fig. 1: per bin, the accuracy as a bar and
the gap to the bin's mean confidence as a hatched bar against the diagonal,
and beneath it the fraction of samples in each bin with the overall accuracy
and mean confidence marked.
"""

from __future__ import annotations

import numpy as np


def _pyplot():
    try:
        import matplotlib

        if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "cairo") and not _interactive():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("reliability diagrams need matplotlib: pip install 'calibkit[plot]'") from None
    return plt


def _interactive():
    import sys

    return hasattr(sys, "ps1") or "IPython" in sys.modules


def _draw(table, ax_top, ax_bottom, title):
    width = table.upper - table.lower
    filled = table.weight > 0
    acc = np.where(filled, table.accuracy, 0.0)
    conf = np.where(filled, table.mean_confidence, 0.0)
    ax_top.bar(table.lower, acc, width=width, align="edge", color="#4C72B0", edgecolor="black", linewidth=0.6,
               label="accuracy")
    bottom = np.minimum(acc, conf)
    ax_top.bar(table.lower[filled], np.abs(conf - acc)[filled], bottom=bottom[filled], width=width[filled],
               align="edge", color="#DD8452", alpha=0.45, edgecolor="#C44E52", hatch="//", linewidth=0.6,
               label="gap to confidence")
    ax_top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax_top.set_xlim(0, 1)
    ax_top.set_ylim(0, 1)
    ax_top.set_ylabel("accuracy")
    ax_top.set_title(f"{title}\nECE = {table.ece:.4f}, MCE = {table.mce:.4f}", fontsize=10)
    ax_top.legend(loc="upper left", fontsize=8)
    share = table.weight / max(table.weight.sum(), 1e-300)
    ax_bottom.bar(table.lower, share, width=width, align="edge", color="#55A868", edgecolor="black",
                  linewidth=0.6)
    if table.weight.sum() > 0:  # as in Guo et al.'s Fig. 1: the overall accuracy and mean confidence
        ax_bottom.axvline(table.accuracy_overall, color="black", linestyle="--", linewidth=1, label="accuracy")
        ax_bottom.axvline(table.mean_confidence_overall, color="#C44E52", linestyle=":", linewidth=1.5,
                          label="mean confidence")
        ax_bottom.legend(loc="upper left", fontsize=7)
    ax_bottom.set_xlim(0, 1)
    ax_bottom.set_xlabel("confidence")
    ax_bottom.set_ylabel("fraction")


def reliability_diagram(tables, titles=None, *, path=None, figsize=None, dpi=100):
    """Draw one reliability diagram per table, side by side (e.g. before / after calibration).

    Parameters
    ----------
    tables : ReliabilityTable or sequence of them
        From :func:`calibkit.reliability_table`, ``CalibrationResult.table``, ...
    titles : sequence of str, optional
    path : str or path-like, optional
        Save the figure there (format from the suffix: .png, .svg, .pdf) and close it.
    figsize : (width, height) in inches, optional
        Default 4 x 5 inches per diagram.
    dpi : int

    Returns
    -------
    matplotlib.figure.Figure (closed when ``path`` is given)
    """
    from .metrics import ReliabilityTable

    if isinstance(tables, ReliabilityTable):
        tables = [tables]
    tables = list(tables)
    if not tables or not all(isinstance(t, ReliabilityTable) for t in tables):
        raise TypeError("tables must be a ReliabilityTable or a non-empty sequence of them")
    if titles is None:
        titles = [""] * len(tables) if len(tables) > 1 else ["reliability diagram"]
    titles = list(titles)
    if len(titles) != len(tables):
        raise ValueError(f"{len(titles)} titles for {len(tables)} tables")
    plt = _pyplot()
    n = len(tables)
    fig, axes = plt.subplots(2, n, figsize=figsize or (4.0 * n, 5.0), dpi=dpi, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    for j, (t, title) in enumerate(zip(tables, titles)):
        _draw(t, axes[0, j], axes[1, j], title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return fig


def report_figure(result, path, *, dpi=100):
    """The reliability diagrams of a ``calibkit report`` result (raw, then each calibrator) saved to ``path``."""
    tables = result["tables"]
    return reliability_diagram(list(tables.values()), titles=list(tables.keys()), path=path, dpi=dpi)


__all__ = ["reliability_diagram", "report_figure"]
