"""Numba twins of the C++ kernels in ``calibkit._core``: same names, same algorithms, same results."""

from .binning import binary_stats, classwise_stats, top_label_stats
from .stream import stream_accumulate

__all__ = ["binary_stats", "classwise_stats", "stream_accumulate", "top_label_stats"]
