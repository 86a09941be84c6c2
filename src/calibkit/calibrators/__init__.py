"""Post-hoc calibrators fitted on held-out data (scikit-learn style: fit returns self, learned values end in _)."""

from ._base import Calibrator, not_fitted_error
from .beta import BetaCalibration
from .classifier import CalibratedClassifier
from .dirichlet import DirichletCalibration
from .nonparametric import (
    HistogramBinning, IsotonicCalibration, IsotonicRegressionResult, TopLabelHistogramBinning, isotonic_regression,
)
from .platt import PlattScaling
from .scaling import EnsembleTemperatureScaling, MatrixScaling, TemperatureScaling, VectorScaling, temperature_nll
from .venn_abers import VennAbers



def __getattr__(name):
    """``NotFittedError`` is made on first use (scikit-learn's subclass when installed; see
    ``_base.not_fitted_error``)."""
    if name == "NotFittedError":
        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BetaCalibration",
    "CalibratedClassifier",
    "Calibrator",
    "DirichletCalibration",
    "EnsembleTemperatureScaling",
    "HistogramBinning",
    "IsotonicCalibration",
    "IsotonicRegressionResult",
    "MatrixScaling",
    "NotFittedError",
    "PlattScaling",
    "TemperatureScaling",
    "TopLabelHistogramBinning",
    "VectorScaling",
    "VennAbers",
    "isotonic_regression",
    "temperature_nll",
]
