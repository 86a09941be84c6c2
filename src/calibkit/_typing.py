"""Type aliases shared by calibkit's annotations (cheap at import: NumPy already loads ``numpy._typing``)."""

from __future__ import annotations

import os
from typing import Literal, Union

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

__all__ = ["ArrayLike", "Backend", "BoolArray", "FloatArray", "IntArray", "Norm", "Strategy", "StrPath"]

#: The kernel backend: ``"auto"`` (C++ unless ``CALIBKIT_BACKEND`` says otherwise), ``"cpp"`` or ``"numba"``.
Backend = Literal["auto", "cpp", "numba"]
#: How bins are placed: equal width or equal mass.
Strategy = Literal["uniform", "quantile", "quantile_midpoint"]  # quantile_midpoint: the one-shot metrics only
#: How per-bin gaps are combined into one calibration error.
Norm = Literal["l1", "l2", "max"]
#: A float64 array returned by calibkit.
FloatArray = npt.NDArray[np.float64]
#: An int64 array returned by calibkit (counts, labels, indices).
IntArray = npt.NDArray[np.int64]
#: A bool array returned by calibkit (masks).
BoolArray = npt.NDArray[np.bool_]
#: A file system path: a string or a path-like object.
StrPath = Union[str, "os.PathLike[str]"]
