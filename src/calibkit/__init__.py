"""calibkit: fast, exact calibration metrics, calibrators and uncertainty scores.

The hot paths run in native kernels (C++ by default, Numba as a twin) that read
each input once, in place, and release the GIL. See the README for examples.
"""

from __future__ import annotations

from typing import Any as _Any

from ._backend import get_num_threads, set_num_threads
from .metrics import (
    CalibrationErrorResult,
    ReliabilityTable,
    brier_score,
    calibration_error,
    classwise_calibration_error,
    debiased_calibration_error,
    ece,
    mce,
    nll,
    reliability_table,
)

from .calibrators import (
    BetaCalibration,
    CalibratedClassifier,
    Calibrator,
    DirichletCalibration,
    EnsembleTemperatureScaling,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    PlattScaling,
    TemperatureScaling,
    TopLabelHistogramBinning,
    VectorScaling,
    VennAbers,
    isotonic_regression,
    temperature_nll,
)
from .streaming import CalibrationAccumulator, CalibrationResult, WindowedAccumulator
from .decomposition import CorpReliabilityTable, ScoreDecomposition, corp_reliability_table, score_decomposition
from .smooth import SmoothECEResult, SmoothReliabilityCurve, smooth_ece, smooth_reliability_curve
from .cumulative import CumulativeCalibrationResult, cumulative_calibration_error
from . import io, ood, plot, report, uncertainty
from . import conformal
from .conformal import *  # noqa: F401,F403 - re-exported; names in conformal.__all__
from . import datasets
from .ood import *  # noqa: F401,F403 - re-exported; names in ood.__all__
from .uncertainty import *  # noqa: F401,F403 - re-exported; names in uncertainty.__all__
from . import ood_features
from .ood_features import *  # noqa: F401,F403 - re-exported; names in ood_features.__all__


def __getattr__(name: str) -> _Any:
    """``__version__``, looked up in the installed metadata on first use (importing importlib.metadata and
    scanning the installed distributions would otherwise cost every ``import calibkit``, e.g. each
    ``calibkit`` command, tens of milliseconds)."""
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("calibkit")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            value = "0+unknown"
        globals()["__version__"] = value
        return value
    if name == "NotFittedError":  # made on first use: scikit-learn's subclass when it is installed
        from .calibrators._base import not_fitted_error

        return not_fitted_error()
    raise AttributeError(f"module 'calibkit' has no attribute {name!r}")


__all__ = [
    "CalibrationAccumulator",
    "CalibrationResult",
    "CumulativeCalibrationResult",
    "CalibratedClassifier",
    "Calibrator",
    "DirichletCalibration",
    "HistogramBinning",
    "IsotonicCalibration",
    "MatrixScaling",
    "NotFittedError",  # noqa: F405,F822 - provided by the module __getattr__
    "PlattScaling",
    "TemperatureScaling",
    "VectorScaling",
    "BetaCalibration",
    "EnsembleTemperatureScaling",
    "TopLabelHistogramBinning",
    "VennAbers",
    "isotonic_regression",
    "temperature_nll",
    "ReliabilityTable",
    "WindowedAccumulator",
    "__version__",  # noqa: F405 - provided by the module __getattr__
    "brier_score",
    "calibration_error",
    "CorpReliabilityTable",
    "ScoreDecomposition",
    "corp_reliability_table",
    "score_decomposition",
    "CalibrationErrorResult",
    "debiased_calibration_error",
    "classwise_calibration_error",
    "cumulative_calibration_error",
    "ece",
    "get_num_threads",
    "mce",
    "nll",
    "reliability_table",
    "set_num_threads",
    "SmoothECEResult",
    "SmoothReliabilityCurve",
    "smooth_ece",
    "smooth_reliability_curve",
    "datasets",
    "io",
    "ood",
    "plot",
    "report",
    "uncertainty",
    "conformal",
] + ood.__all__ + uncertainty.__all__ + ["ood_features"] + ood_features.__all__ + conformal.__all__
