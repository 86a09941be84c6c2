"""calibkit.dask on a distributed.LocalCluster: equal to the single-machine results, robust to a lost worker."""

import os
import threading
import time

import numpy as np
import pytest

import calibkit

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
ckdask = pytest.importorskip("calibkit.dask")


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def data(n=60_000, k=10, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.argmax(z / 2.0 + rng.gumbel(size=(n, k)), axis=1)
    return z, y


def test_metrics_equal_single_machine(client):
    z, y = data()
    dz, dy = da.from_array(z, chunks=(7_000, 5)), da.from_array(y, chunks=11_000)  # misaligned on purpose
    for norm in ("l1", "l2", "max"):
        want = calibkit.calibration_error(z, y, from_logits=True, norm=norm)
        assert ckdask.calibration_error(dz, dy, from_logits=True, norm=norm) == pytest.approx(want, rel=1e-12)
    t = ckdask.reliability_table(dz, dy, from_logits=True)
    ref = calibkit.reliability_table(z, y, from_logits=True)
    np.testing.assert_array_equal(t.count, ref.count)
    np.testing.assert_allclose(t.accuracy, ref.accuracy, rtol=1e-12)
    np.testing.assert_allclose(t.mean_confidence, ref.mean_confidence, rtol=1e-12)
    acc = ckdask.accumulate(dz, dy, from_logits=True, classwise=True)
    one = calibkit.CalibrationAccumulator(from_logits=True, classwise=True, n_classes=10).update(z, y)
    a, b = acc.compute(), one.compute()
    assert a.count == b.count == len(y)
    for f in ("ece", "mce", "classwise_ece", "brier", "nll", "accuracy", "ace"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-12), f


def test_fit_temperature_equals_single_machine(client):
    z, y = data(seed=1)
    ts = ckdask.fit_temperature(da.from_array(z, chunks=(9_000, 10)), da.from_array(y, chunks=9_000))
    ref = calibkit.TemperatureScaling().fit(z, y)
    assert ts.temperature_ == pytest.approx(ref.temperature_, rel=1e-12)
    assert ts.n_passes_ == ref.n_passes_ and ts.n_classes_ == 10


@pytest.mark.filterwarnings("ignore:Sending large graph")  # the test ships its arrays inside the graph
def test_lost_worker_does_not_change_the_result(client):
    z, y = data(n=600_000, seed=2)
    dz, dy = da.from_array(z, chunks=(1_000, 10)), da.from_array(y, chunks=1_000)  # 600 tasks + the merge tree
    want = calibkit.ece(z, y, from_logits=True)
    victim = list(client.scheduler_info()["workers"])[0]
    killed_at = []

    def kill():
        time.sleep(0.5)
        killed_at.append(time.perf_counter())
        try:
            client.run(lambda: os._exit(1), workers=[victim], nanny=False)
        except Exception:  # noqa: BLE001 - the worker dies while answering
            pass

    killer = threading.Thread(target=kill)
    killer.start()
    got = ckdask.calibration_error(dz, dy, from_logits=True)
    done_at = time.perf_counter()
    killer.join()
    assert got == pytest.approx(want, rel=1e-12)
    assert killed_at and killed_at[0] < done_at  # the worker died while the computation ran
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.scheduler_info()["workers"]  # the nanny started a new worker


def test_errors_name_the_rows(client):
    z, y = data(n=1000)
    z[777, 3] = np.nan
    with pytest.raises(ValueError, match=r"scores\[777, 3\] = nan is not finite"):
        ckdask.calibration_error(da.from_array(z, chunks=(200, 10)), da.from_array(y, chunks=200),
                                 from_logits=True)
    with pytest.raises(ValueError, match="labels must have shape"):
        ckdask.calibration_error(da.from_array(z), da.from_array(y[:10]))
    with pytest.raises(ValueError, match="norm"):
        ckdask.calibration_error(da.from_array(z), da.from_array(y), norm="l3")


def test_zero_length_blocks_are_skipped(client):
    z, y = data(n=3000, seed=3)
    rows = (1000, 0, 1500, 0, 0, 500)  # a valid Dask chunking with empty blocks
    dz, dy = da.from_array(z, chunks=(rows, (10,))), da.from_array(y, chunks=(rows,))
    assert ckdask.calibration_error(dz, dy, from_logits=True) == pytest.approx(
        calibkit.ece(z, y, from_logits=True), rel=1e-12)
    assert ckdask.accumulate(dz, dy, from_logits=True).count == 3000
    ts = ckdask.fit_temperature(dz, dy)
    assert ts.temperature_ == pytest.approx(calibkit.TemperatureScaling().fit(z, y).temperature_, rel=1e-12)
    empty = da.from_array(z[:0], chunks=((0,), (10,)))
    with pytest.raises(ValueError, match="no rows"):
        ckdask.calibration_error(empty, da.from_array(y[:0], chunks=((0,),)), from_logits=True)


def test_unknown_chunk_sizes_say_to_compute_them(client):
    z, y = data(n=2000, seed=4)
    dz, dy = da.from_array(z, chunks=(500, 10)), da.from_array(y, chunks=500)
    keep = dz[:, 0] > 0  # a lazy mask: the selected arrays have unknown chunk sizes
    with pytest.raises(ValueError, match=r"scores has unknown chunk sizes .*scores\.compute_chunk_sizes\(\)"):
        ckdask.calibration_error(dz[keep], dy[keep], from_logits=True)
    with pytest.raises(ValueError, match=r"labels has unknown chunk sizes .*labels\.compute_chunk_sizes\(\)"):
        ckdask.fit_temperature(dz, dy[keep])
    sz, sy = dz[keep].compute_chunk_sizes(), dy[keep].compute_chunk_sizes()
    mask = z[:, 0] > 0
    assert ckdask.calibration_error(sz, sy, from_logits=True) == pytest.approx(
        calibkit.ece(z[mask], y[mask], from_logits=True), rel=1e-12)
