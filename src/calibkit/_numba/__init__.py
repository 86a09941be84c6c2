"""Numba twins of the C++ kernels in ``calibkit._core``: same names, same algorithms, same results."""

from ._cache import register as _register_cache

_register_cache()  # before any kernel is decorated: every submodule import runs this first

from .binning import binary_stats
from .conformal import conformal_label_scores, conformal_sets
from .pav import isotonic_fit
from .ranking import cumulative_differences, two_sample_ranking
from .smooth import smooth_grid
from .softmax import temperature_nll, vector_scaling_nll
from .stream import stream_accumulate, stream_top_label
from .stream import top_label_stats_any as top_label_stats  # binning's, with the one-call path for small inputs
from .stream import classwise_stats_any as classwise_stats  # the same for class-wise bins
from .uncertainty import confidence_loss, ensemble_decompose, ensemble_update, row_scores

__all__ = [
    "binary_stats", "classwise_stats", "confidence_loss", "conformal_label_scores", "conformal_sets", "cumulative_differences", "ensemble_decompose",
    "ensemble_update", "isotonic_fit", "row_scores", "smooth_grid", "stream_accumulate", "stream_top_label",
    "temperature_nll", "top_label_stats", "two_sample_ranking", "vector_scaling_nll",
]
