"""Post-hoc calibrators fitted on held-out data (scikit-learn style: fit returns self, learned values end in _)."""

from ._base import Calibrator, not_fitted_error
from .classifier import CalibratedClassifier
from .nonparametric import HistogramBinning, IsotonicCalibration, IsotonicRegressionResult, isotonic_regression
from .platt import PlattScaling
from .scaling import MatrixScaling, TemperatureScaling, VectorScaling, temperature_nll
from .venn_abers import VennAbers



def __getattr__(name):
    """``NotFittedError`` is made on first use (scikit-learn's subclass when installed; see
    ``_base.not_fitted_error``)."""
    if name == "NotFittedError":
        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CalibratedClassifier",
    "Calibrator",
    "HistogramBinning",
    "IsotonicCalibration",
    "IsotonicRegressionResult",
    "MatrixScaling",
    "NotFittedError",
    "PlattScaling",
    "TemperatureScaling",
    "VectorScaling",
    "VennAbers",
    "isotonic_regression",
    "temperature_nll",
]
