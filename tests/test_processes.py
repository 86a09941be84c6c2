"""Processes and threads: fork / spawn / forkserver children, exceptions in pool
tasks, the default thread count, concurrent calls from Python threads, and
bit-identical results for any thread count, on both backends.

Everything that could hang or abort runs in a subprocess with a timeout.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import calibkit
from calibkit import _core

from conftest import labels_from, random_probs

TIMEOUT = 240

# A job script: `work(backend)` runs several kernels on an input big enough to go
# parallel (200k x 10) and returns their exact results as a string.
JOB = textwrap.dedent(
    """
    import hashlib
    import multiprocessing
    import os
    import sys

    import numpy as np

    import calibkit


    def data():
        rng = np.random.default_rng(7)
        logits = rng.normal(size=(200_000, 10)) * 3.0
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        labels = rng.integers(0, 10, 200_000)
        return logits, probs, labels


    def work(backend):
        logits, probs, labels = data()
        ent = calibkit.entropy(probs, backend=backend)
        acc = calibkit.CalibrationAccumulator(n_bins=15, backend=backend)
        acc.update(probs, labels)
        return repr((
            calibkit.ece(probs, labels, backend=backend),
            calibkit.ece(probs[:100], labels[:100], backend=backend),
            calibkit.brier_score(probs, labels, backend=backend),
            calibkit.temperature_nll(logits, labels, 1.3, backend=backend),
            hashlib.sha256(np.ascontiguousarray(ent).tobytes()).hexdigest(),
            acc.compute().ece,
        ))
    """
)


def run_python(code, env=None, timeout=TIMEOUT, cwd=None):
    full_env = dict(os.environ)
    for name in ("CALIBKIT_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_THREADING_LAYER"):
        full_env.pop(name, None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd)


def run_job(tmp_path, main, env=None):
    """Run JOB + main as a script file (spawn and forkserver children import it by path)."""
    script = tmp_path / "job.py"
    script.write_text(JOB + "\n\nif __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(main), "    "))
    code = f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')"
    return run_python(code, env=env, cwd=str(tmp_path))


def check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "OK" in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# fork / spawn / forkserver children compute the parent's exact results
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_children_after_parallel_call(tmp_path, backend, method):
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"start method {method} not available")
    main = f"""
        calibkit.set_num_threads(2)
        parent = work({backend!r})  # the parallel kernels have run in the parent
        ctx = multiprocessing.get_context({method!r})
        with ctx.Pool({2 if method == "fork" else 1}) as pool:  # a spawned child costs an import
            children = pool.map(work, [{backend!r}] * 2)
        assert children == [parent] * 2, (parent, children)
        # and the parent still works after its children are gone
        assert work({backend!r}) == parent
        print("OK")
    """
    check(run_job(tmp_path, main))


def test_forked_child_of_a_gnu_openmp_numba_process(tmp_path):
    # A user who asks Numba for OpenMP: a forked child must not be killed by libgomp.
    main = """
        try:
            parent = work("numba")
        except ValueError as e:  # the OpenMP layer cannot be loaded on this machine
            print("SKIP", e)
            sys.exit(0)
        import numba
        print("layer", numba.threading_layer())
        with multiprocessing.get_context("fork").Pool(2) as pool:
            children = pool.map(work, ["numba"] * 2)
        assert children == [parent] * 2, (parent, children)
        print("OK")
    """
    proc = run_job(tmp_path, main, env={"NUMBA_THREADING_LAYER": "omp"})
    if "SKIP" in proc.stdout:
        pytest.skip(proc.stdout)
    check(proc)


def test_bare_fork_child_runs_kernels(backend):
    # os.fork directly (no multiprocessing), while another Python thread is inside a kernel.
    code = textwrap.dedent(
        f"""
        import os, threading
        import numpy as np
        import calibkit
        rng = np.random.default_rng(1)
        p = rng.dirichlet(np.full(10, 0.3), size=200_000)
        y = rng.integers(0, 10, 200_000)
        calibkit.set_num_threads(2)
        want = calibkit.ece(p, y, backend={backend!r})
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                calibkit.ece(p, y, backend={backend!r})
        t = threading.Thread(target=busy)
        t.start()
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                ok = calibkit.ece(p, y, backend={backend!r}) == want
                os._exit(0 if ok else 3)
            pids.append(pid)
        stop.set()
        t.join()
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        assert codes == [0, 0, 0], codes
        print("OK")
        """
    )
    check(run_python(code))


def test_numba_layer_is_fork_safe_by_default():
    code = textwrap.dedent(
        """
        import numpy as np, numba, calibkit
        p = np.random.default_rng(0).dirichlet(np.ones(10), size=200_000)
        calibkit.set_num_threads(2)
        calibkit.ece(p, p.argmax(1), backend="numba")
        layer = numba.threading_layer()
        assert layer in ("tbb", "workqueue"), layer
        print("OK", layer)
        """
    )
    check(run_python(code))


def test_small_numba_call_never_starts_the_threading_layer():
    # Below one parallel chunk the serial twin runs: no threads woken, cheap on a busy machine.
    code = textwrap.dedent(
        """
        import numpy as np, numba, calibkit
        rng = np.random.default_rng(0)
        p = rng.dirichlet(np.ones(10), size=100)
        y = rng.integers(0, 10, 100)
        calibkit.set_num_threads(2)
        calibkit.ece(p, y, backend="numba")
        calibkit.temperature_nll(np.log(p), y, 1.0, backend="numba")
        calibkit.entropy(p, backend="numba")
        try:
            numba.threading_layer()
        except ValueError:
            print("OK")
        else:
            print("threading layer started:", numba.threading_layer())
        """
    )
    check(run_python(code))


# ---------------------------------------------------------------------------
# exceptions in pool tasks
# ---------------------------------------------------------------------------

def test_task_exception_becomes_python_exception():
    code = textwrap.dedent(
        """
        import numpy as np, calibkit
        from calibkit import _core
        p = np.random.default_rng(0).dirichlet(np.ones(10), size=200_000)
        before = calibkit.ece(p, p.argmax(1))
        for n_threads in (1, 2, 4):
            for _ in range(20):
                try:
                    _core._pool_selftest("bad_alloc", 64, n_threads)
                except MemoryError:
                    pass
                else:
                    raise AssertionError("no MemoryError")
                try:
                    _core._pool_selftest("runtime_error", 64, n_threads)
                except RuntimeError as e:
                    # the lowest-index task that threw, as a serial run would report
                    assert "task 3" in str(e), str(e)
                else:
                    raise AssertionError("no RuntimeError")
            # the pool still works afterwards, and nested parallel loops run serially without deadlock
            assert _core._pool_selftest("ok", 1000, n_threads) == 1000
            assert _core._pool_selftest("nested", 100, n_threads) == 400
        calibkit.set_num_threads(2)
        assert calibkit.ece(p, p.argmax(1)) == before  # the process survives and computes the same
        print("OK")
        """
    )
    check(run_python(code, timeout=120))


def test_pool_selftest_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind must be"):
        _core._pool_selftest("segfault")
    with pytest.raises(ValueError, match="n_threads"):
        _core._pool_selftest("ok", 4, 0)


# ---------------------------------------------------------------------------
# the default thread count
# ---------------------------------------------------------------------------

NUM_THREADS = "import calibkit; print('N', calibkit.get_num_threads())"


def default_threads(env=None, prefix=""):
    proc = run_python(prefix + NUM_THREADS, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split("N")[-1])


def test_default_is_usable_cpus():
    usable = _core.usable_cpus()
    assert 1 <= usable <= len(os.sched_getaffinity(0))
    assert default_threads() == usable


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity")
def test_default_follows_cpu_affinity():
    cpu = min(os.sched_getaffinity(0))
    prefix = f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
    assert default_threads(prefix=prefix) == 1


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset not installed")
def test_default_follows_taskset():
    cpu = min(os.sched_getaffinity(0))
    proc = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c", NUM_THREADS], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items()
                                                      if k not in ("OMP_NUM_THREADS", "CALIBKIT_NUM_THREADS")})
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split("N")[-1]) == 1


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"OMP_NUM_THREADS": "1"}, 1),
        ({"OMP_NUM_THREADS": "1,4"}, 1),
        ({"CALIBKIT_NUM_THREADS": "1"}, 1),
        ({"CALIBKIT_NUM_THREADS": "1", "OMP_NUM_THREADS": "64"}, 1),
        ({"OMP_NUM_THREADS": "100000"}, "usable"),  # a cap, never above the usable CPUs
        ({"CALIBKIT_NUM_THREADS": "100000", "OMP_NUM_THREADS": "1"}, "usable"),  # CALIBKIT_ first
        ({"OMP_NUM_THREADS": "abc"}, "usable"),  # not a positive integer: ignored
        ({"OMP_NUM_THREADS": "0"}, "usable"),
        ({"CALIBKIT_NUM_THREADS": "-2"}, "usable"),
    ],
)
def test_default_honours_environment(env, expected):
    if expected == "usable":
        expected = _core.usable_cpus()
    assert default_threads(env=env) == expected


def test_numba_honours_thread_count():
    # One thread (here from OMP_NUM_THREADS): even a big Numba call stays on the calling thread.
    code = textwrap.dedent(
        """
        import numpy as np, numba, calibkit
        assert calibkit.get_num_threads() == 1
        p = np.random.default_rng(0).dirichlet(np.ones(10), size=200_000)
        calibkit.ece(p, p.argmax(1), backend="numba")
        try:
            numba.threading_layer()
        except ValueError:
            print("OK")
        """
    )
    check(run_python(code, env={"OMP_NUM_THREADS": "1"}))


# ---------------------------------------------------------------------------
# concurrency and thread-count invariance
# ---------------------------------------------------------------------------

def test_concurrent_calls_from_four_python_threads(backend):
    code = textwrap.dedent(
        f"""
        from concurrent.futures import ThreadPoolExecutor
        import numpy as np, calibkit
        rng = np.random.default_rng(3)
        logits = rng.normal(size=(200_000, 10)).astype(np.float32)
        p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        y = rng.integers(0, 10, 200_000)
        calibkit.set_num_threads(2)
        calls = [
            lambda: calibkit.ece(p, y, backend={backend!r}),
            lambda: calibkit.ece(p[:500], y[:500], backend={backend!r}),
            lambda: calibkit.temperature_nll(logits, y, 0.7, backend={backend!r}),
            lambda: calibkit.entropy(p, backend={backend!r}).tobytes(),
        ]
        want = [c() for c in calls]
        with ThreadPoolExecutor(4) as ex:
            futures = [ex.submit(calls[i % 4]) for i in range(32)]
            got = [f.result() for f in futures]
        assert got == [want[i % 4] for i in range(32)]
        print("OK")
        """
    )
    check(run_python(code))


def test_thread_counts_give_bit_identical_results(backend, threads):
    rng = np.random.default_rng(11)
    probs = random_probs(rng, 150_000, 10)
    y = labels_from(rng, probs)
    logits = np.log(probs + 1e-12).astype(np.float32)

    def results():
        return (
            calibkit.ece(probs, y, backend=backend),
            calibkit.classwise_calibration_error(probs, y, backend=backend),
            calibkit.brier_score(probs, y, backend=backend),
            calibkit.temperature_nll(logits, y, 1.7, backend=backend),
            calibkit.entropy(probs, backend=backend).tobytes(),
        )

    got = []
    for n in (1, 2, 3):
        calibkit.set_num_threads(n)
        got.append(results())
    assert got[0] == got[1] == got[2]
