"""Numba twins of the C++ kernels in ``calibkit._core``: same names, same algorithms, same results."""

from .binning import binary_stats, classwise_stats, top_label_stats
from .pav import isotonic_fit
from .softmax import temperature_nll, vector_scaling_nll
from .stream import stream_accumulate

__all__ = [
    "binary_stats", "classwise_stats", "isotonic_fit", "stream_accumulate", "temperature_nll",
    "top_label_stats", "vector_scaling_nll",
]
