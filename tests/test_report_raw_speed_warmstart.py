"""The temperature fit's warm start on a few thousand to ~200k rows (a report's validation split): the subsample's
optimum moved by one Taylor step on a larger subsample, the same certified optimum as a cold fit."""

import numpy as np
import pytest

from calibkit import TemperatureScaling
from calibkit.calibrators import scaling

from conftest import BACKENDS, overconfident_logits


def _cold(z, y, backend):
    """Newton from b = 1 on every row (no warm start)."""
    k = scaling._backend.kernels(backend)
    return TemperatureScaling(backend=backend).fit_from_sums(
        lambda b: scaling._temperature_sums(k, z, y, None, b, None), z.shape[1]).temperature_


@pytest.mark.parametrize("n, k", [(8192, 520), (20_000, 220), (50_000, 90)])
def test_refined_warm_start_reaches_the_cold_optimum(n, k):
    z, y = overconfident_logits(n, k, seed=n)
    assert n * k >= scaling._WARM_START_ELEMENTS and n >= scaling._WARM_START_ROWS
    cold = _cold(z, y, "cpp")
    for backend in BACKENDS:
        ts = TemperatureScaling(backend=backend).fit(z, y)
        assert ts.temperature_ == pytest.approx(cold, rel=1e-9)  # both certified to tol = 1e-7; in fact ~1e-10
        assert 1 <= ts.n_passes_ <= 2


def test_both_backends_fit_the_same_temperature():
    z, y = overconfident_logits(12_000, 400, seed=3)
    got = {b: TemperatureScaling(backend=b).fit(z, y).temperature_ for b in BACKENDS}
    assert len(set(got.values())) == 1, got


@pytest.mark.parametrize("n", [8192, 20_000, 100_000, 196_607, 196_608, 400_000])
def test_the_refining_subsample_is_larger_but_never_every_row(n):
    strides = []

    def sums_of(stride):
        strides.append(stride)
        z, y = overconfident_logits(max(64, n // stride // 64), 8, seed=stride)  # any data: only the strides are checked
        return lambda b: scaling._temperature_sums(scaling._backend.kernels("cpp"), z, y, None, b, None)

    start = TemperatureScaling(backend="cpp")._warm_start(sums_of, n)
    assert start is not None and np.isfinite(start) and start > 0
    first = n // scaling._WARM_START_SUB_ROWS  # the coarse subsample: at least 2,048 rows, however many in all
    assert strides[0] == first
    # always refined, on at most every 16th row (issue 13: the coarse Newton passes cost 1/first each)
    assert len(strides) == 2 and 2 <= strides[1] < first and strides[1] <= scaling._WARM_START_STRIDE
    assert n // strides[1] >= scaling._WARM_START_REFINE_ROWS or strides[1] == 2


def test_a_refining_subsample_without_weight_keeps_the_first_start():
    calls = []

    def sums_of(stride):
        calls.append(stride)
        if len(calls) == 2:
            return None  # e.g. every weight of that subsample is 0
        z, y = overconfident_logits(2048, 8, seed=1)
        return lambda b: scaling._temperature_sums(scaling._backend.kernels("cpp"), z, y, None, b, None)

    ts = TemperatureScaling(backend="cpp")
    start = ts._warm_start(sums_of, 20_000)
    z, y = overconfident_logits(2048, 8, seed=1)
    alone, _, _, _ = ts._newton(lambda b: scaling._temperature_sums(scaling._backend.kernels("cpp"), z, y, None, b,
                                                                     None), taylor_stop=True)
    assert len(calls) == 2 and start == alone
