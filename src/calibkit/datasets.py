"""The example evaluation dump shipped inside calibkit.

One real model's outputs, small enough to ship (554 KB) and large enough to
show what calibration does: the pre-softmax logits of a ResNet-50 trained on
CIFAR-10 with the Brier loss (Mukhoti et al., "Calibrating Deep Neural
Networks using Focal Loss", NeurIPS 2020), 5,000 held-out validation rows and
the 10,000 rows of the official test set. Origin and MIT licence:
``calibkit/data/README.md``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib

import numpy as np

__all__ = ["ExampleDump", "example_path", "load_example"]

EXAMPLE_FILE = "focal_cifar10_resnet50_brier.npz"
EXAMPLE_ORIGIN = "ResNet-50 on CIFAR-10, Mukhoti et al. 2020"
_SPLITS = ("val_logits", "val_labels", "test_logits", "test_labels")


@dataclasses.dataclass(frozen=True, repr=False)
class ExampleDump:
    """The splits of the example dump (see :func:`load_example`).

    Attributes
    ----------
    val_logits : ndarray of shape (5000, 10), float32
        Validation logits: fit calibrators on these.
    val_labels : ndarray of shape (5000,), int64
    test_logits : ndarray of shape (10000, 10), float32
        Test logits: measure on these.
    test_labels : ndarray of shape (10000,), int64
    name : str
        The file's name.
    description : str
        The model and the paper it comes from.
    """

    val_logits: np.ndarray
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    name: str = EXAMPLE_FILE
    description: str = EXAMPLE_ORIGIN

    def __repr__(self) -> str:
        return (f"ExampleDump({self.name}: {self.description}; val {self.val_logits.shape[0]:,} rows, "
                f"test {self.test_logits.shape[0]:,} rows, {self.test_logits.shape[1]} classes, logits)")


def example_path() -> pathlib.Path:
    """Path of the example dump inside the installed package (a ``.npz`` that ``np.load`` reads).

    Raises
    ------
    FileNotFoundError
        When the file is missing: the installation is incomplete (it ships in every wheel and sdist).

    Examples
    --------
    >>> import numpy as np, calibkit
    >>> path = calibkit.datasets.example_path()
    >>> path.name
    'focal_cifar10_resnet50_brier.npz'
    >>> sorted(np.load(path).files)
    ['test_labels', 'test_logits', 'val_labels', 'val_logits']
    """
    path = pathlib.Path(str(importlib.resources.files("calibkit").joinpath("data", EXAMPLE_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"calibkit's example dump is missing from the installation (expected {path}); "
                                f"reinstall calibkit")
    return path


def load_example() -> ExampleDump:
    """The example dump: real logits of a CIFAR-10 ResNet-50, split into validation and test rows.

    Returns
    -------
    ExampleDump
        ``val_logits`` (5000, 10) float32, ``val_labels`` (5000,) int64, ``test_logits``
        (10000, 10) float32 and ``test_labels`` (10000,) int64, in the source's row order.
        Each call returns new arrays (changing them changes no file).

    Examples
    --------
    >>> import calibkit
    >>> d = calibkit.datasets.load_example()
    >>> d.test_logits.shape, d.val_labels.shape
    ((10000, 10), (5000,))
    >>> round(calibkit.ece(d.test_logits, d.test_labels, from_logits=True), 4)
    0.0182
    >>> ts = calibkit.TemperatureScaling().fit(d.val_logits, d.val_labels)
    >>> round(calibkit.ece(ts.transform(d.test_logits), d.test_labels, from_logits=True), 4)
    0.0112
    """
    with np.load(example_path(), allow_pickle=False) as f:
        return ExampleDump(**{k: f[k] for k in _SPLITS})
