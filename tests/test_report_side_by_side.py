"""The report's pass over the evaluation rows runs its accumulators side by side (report._SideBySide), each
task's kernels capped by a thread-local limit (_backend.thread_limit): the results are those of the tasks run
one after another, bit for bit, on both backends and any thread count; errors are those of that order."""

import json
import threading

import numpy as np
import pytest

import calibkit
from calibkit import _backend, io, report

BACKENDS = ["cpp", "numba"]


@pytest.fixture
def threads():
    previous = calibkit.get_num_threads()
    yield calibkit.set_num_threads
    calibkit.set_num_threads(previous)


def test_thread_limit_caps_this_thread_only(threads):
    threads(4)
    seen = {}

    def other():
        seen["other"] = calibkit.get_num_threads()

    with _backend.thread_limit(1):
        assert calibkit.get_num_threads() == 1
        t = threading.Thread(target=other)
        t.start()
        t.join()
        with _backend.thread_limit(3):  # nested: the inner cap, then the outer again
            assert calibkit.get_num_threads() == 3
        assert calibkit.get_num_threads() == 1
    assert seen["other"] == 4 and calibkit.get_num_threads() == 4
    with _backend.thread_limit(8):  # a cap above the setting leaves the setting
        assert calibkit.get_num_threads() == 4
    with pytest.raises(RuntimeError), _backend.thread_limit(2):
        raise RuntimeError("restored on the way out")
    assert calibkit.get_num_threads() == 4
    threads(1)
    assert calibkit.get_num_threads() == 1


def _dump(tmp_path, n=9000, k=7, seed=3):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.argmax(z / 2.0 + rng.gumbel(size=z.shape), axis=1)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    return io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy"), io.split_mask(n, 0.2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("methods", [["temperature"], ["temperature", "vector", "isotonic", "histogram", "matrix"]])
def test_side_by_side_equals_one_after_another(tmp_path, threads, backend, methods):
    dump, mask = _dump(tmp_path)
    kw = dict(val_mask=mask, methods=methods, chunk_rows=700, details=True, backend=backend)
    threads(1)  # one worker: the tasks one after another
    serial = report.report(dump, **kw)
    for n in (2, 3, 8):
        threads(n)
        seen = []
        side = report.report(dump, progress=seen.append, **kw)
        assert json.dumps(report.json_safe(side), sort_keys=True) == json.dumps(report.json_safe(serial),
                                                                                sort_keys=True), n
        assert seen[-1] == 2 * dump.n_rows


def test_tasks_run_side_by_side_and_in_block_order(threads):
    """Each task sees the blocks in order; the tasks of one block overlap (a task waits for the other to start);
    each runs under the thread cap."""
    threads(2)
    order, caps, started = {0: [], 1: []}, [], [threading.Event(), threading.Event()]

    def task(j):
        def run(block):
            started[j].set()
            assert started[1 - j].wait(10), "the other task of the block never started"
            caps.append(calibkit.get_num_threads())
            order[j].append(block)
        return run

    with report._SideBySide([task(0), task(1)]) as run:
        for block in range(5):
            run(block)
            for e in started:
                e.clear()
    assert order == {0: list(range(5)), 1: list(range(5))}
    assert caps == [1] * 10 and calibkit.get_num_threads() == 2


def test_errors_in_task_order_after_every_task_stopped(threads):
    threads(2)
    finished = []

    def bad(name, delay):
        def run(block):
            threading.Event().wait(delay)
            finished.append(name)
            raise ValueError(name)
        return run

    with report._SideBySide([bad("first", 0.2), bad("second", 0.0)]) as run:
        with pytest.raises(ValueError, match="first"):
            run(0)
        assert sorted(finished) == ["first", "second"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_evaluation_row_named_with_side_by_side_tasks(tmp_path, threads, backend):
    rng = np.random.default_rng(8)
    z = (rng.normal(size=(3000, 4)) * 3).astype(np.float32)
    y = np.argmax(z / 2.0 + rng.gumbel(size=z.shape), axis=1)
    mask = io.split_mask(3000, 0.2)
    row = int(np.flatnonzero(~mask)[1700])
    z[row, 2] = np.inf
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    dump = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy")
    threads(2)
    with pytest.raises(io.DumpError, match=rf"(scores|logits)\[{row}, 2\] = inf"):
        report.report(dump, val_mask=mask, methods=["temperature", "isotonic", "vector"], chunk_rows=256,
                      backend=backend)
