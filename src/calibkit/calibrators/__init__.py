"""Post-hoc calibrators fitted on held-out data (scikit-learn style: fit returns self, learned values end in _)."""

from ._base import Calibrator, NotFittedError
from .nonparametric import HistogramBinning, IsotonicCalibration, IsotonicRegressionResult, isotonic_regression
from .platt import PlattScaling
from .scaling import MatrixScaling, TemperatureScaling, VectorScaling, temperature_nll

__all__ = [
    "Calibrator",
    "HistogramBinning",
    "IsotonicCalibration",
    "IsotonicRegressionResult",
    "MatrixScaling",
    "NotFittedError",
    "PlattScaling",
    "TemperatureScaling",
    "VectorScaling",
    "isotonic_regression",
    "temperature_nll",
]
