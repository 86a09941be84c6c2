"""Every size argument of the public API is bounded, and checked before anything proportional to it is allocated.

The calls with absurd sizes run in a child process under an address-space limit (RLIMIT_AS, 2 GiB), so
an allocation proportional to the size would fail the test (MemoryError or a crash) instead of taking the
machine's memory.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit import _validation as v
from calibkit.streaming import CalibrationAccumulator, WindowedAccumulator

LIMIT_AS = 2 << 30

# Run `calls` (a list of (label, python expression)) in one child under RLIMIT_AS; each result is
# "ok", or the exception's type name and message.
CHILD = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import numpy as np
import calibkit
from calibkit import metrics
from calibkit.streaming import CalibrationAccumulator, WindowedAccumulator
from calibkit.ood import OODAccumulator
from calibkit.calibrators import HistogramBinning
p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
y = np.array([0, 1, 2])
out = {{}}
for label, expr in json.loads(sys.argv[1]):
    try:
        eval(expr)
        out[label] = ["ok", ""]
    except BaseException as exc:
        out[label] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def run_limited(calls, timeout=120):
    r = subprocess.run([sys.executable, "-c", CHILD.format(limit=LIMIT_AS), json.dumps(calls)],
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


HUGE = 10 ** 12

# (label, expression, word the ValueError must contain)
TOO_BIG = [
    ("ece", f"metrics.ece(p, y, n_bins={HUGE})", "n_bins"),
    ("ece_max+1", f"metrics.ece(p, y, n_bins={v.MAX_BINS + 1})", "n_bins"),
    ("ece_quantile", f"metrics.ece(p, y, n_bins={HUGE}, strategy='quantile')", "n_bins"),
    ("mce", f"metrics.mce(p, y, n_bins={HUGE})", "n_bins"),
    ("calibration_error", f"metrics.calibration_error(p, y, n_bins={HUGE}, norm='l2')", "n_bins"),
    ("reliability_table", f"metrics.reliability_table(p, y, n_bins={HUGE})", "n_bins"),
    ("classwise", f"metrics.classwise_calibration_error(p, y, n_bins={HUGE})", "n_bins"),
    ("binary", f"metrics.ece(p[:, 0], y == 0, n_bins={HUGE})", "n_bins"),
    ("accumulator", f"CalibrationAccumulator(n_bins={HUGE})", "n_bins"),
    ("accumulator_classes", f"CalibrationAccumulator(n_classes={HUGE})", "n_classes"),
    ("accumulator_classwise", f"CalibrationAccumulator(classwise=True, n_classes={2 ** 20}, n_bins=128)",
     "n_classes * n_bins"),
    ("accumulator_bootstrap", f"CalibrationAccumulator(bootstrap={HUGE})", "bootstrap"),
    ("accumulator_bootstrap_cells", f"CalibrationAccumulator(bootstrap=100000, n_bins={2 ** 20})",
     "bootstrap * n_bins"),
    ("fine_bits", f"CalibrationAccumulator(fine_bits={HUGE})", "fine_bits"),
    ("fine_levels", f"CalibrationAccumulator(fine_levels={HUGE})", "fine_levels"),
    ("fine_bins", "CalibrationAccumulator(fine_bits=12, fine_levels=1000)", "fine_levels << fine_bits"),
    ("start", f"CalibrationAccumulator(start={2 ** 64})", "start"),
    ("window_n_bins", f"WindowedAccumulator(100, n_bins={HUGE})", "n_bins"),
    ("window_blocks", f"WindowedAccumulator(100, n_blocks={HUGE})", "n_blocks"),
    ("window_rows", f"WindowedAccumulator({2 ** 64})", "window"),
    ("window_bootstrap", f"WindowedAccumulator(100, bootstrap={HUGE})", "bootstrap"),
    ("precision_bits", f"OODAccumulator(precision_bits={HUGE})", "precision_bits"),
    ("histogram_binning", f"HistogramBinning(n_bins={HUGE}).fit(p, y)", "n_bins"),
    ("histogram_binning_binary", f"HistogramBinning(n_bins={HUGE}).fit(p[:, 0], y == 0)", "n_bins"),
]


def test_absurd_sizes_raise_value_error_without_allocating():
    got = run_limited([(label, expr) for label, expr, _ in TOO_BIG])
    for label, _, word in TOO_BIG:
        kind, message = got[label]
        assert kind == "ValueError", (label, kind, message)
        assert word in message, (label, message)


def test_classwise_cells_are_bounded_from_the_data_too():
    """K read from the first batch: K * n_bins above 2**26 raises before the class-wise bins exist."""
    got = run_limited([("update", "CalibrationAccumulator(classwise=True, n_bins=2 ** 20).update("
                                  "np.full((2, 128), 1 / 128), [0, 1])")])
    assert got["update"][0] == "ValueError" and "n_classes * n_bins" in got["update"][1], got


def test_classwise_metric_cells_are_bounded():
    got = run_limited([("metric", "metrics.classwise_calibration_error(np.full((2, 128), 1 / 128), [0, 1], "
                                  "n_bins=2 ** 20)")])
    assert got["metric"][0] == "ValueError" and "n_bins" in got["metric"][1], got


def test_the_largest_allowed_sizes_work(backend):
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    t = calibkit.reliability_table(p, y, n_bins=v.MAX_BINS, backend=backend)
    assert t.n_bins == v.MAX_BINS and t.count.sum() == 50
    acc = CalibrationAccumulator(n_bins=v.MAX_BINS, backend=backend).update(p, y)
    assert acc.compute().ece == pytest.approx(calibkit.ece(p, y, n_bins=v.MAX_BINS, backend=backend))
    CalibrationAccumulator(fine_bits=v.MAX_FINE_BITS, fine_levels=v.MAX_FINE_BINS // 2 >> v.MAX_FINE_BITS)
    CalibrationAccumulator(classwise=True, n_classes=2 ** 6, n_bins=v.MAX_CELLS // 2 ** 6)
    WindowedAccumulator(10, n_blocks=v.MAX_WINDOW_BLOCKS)
    calibkit.OODAccumulator(precision_bits=v.MAX_PRECISION_BITS)


@pytest.mark.parametrize("call", [
    lambda: v.check_n_bins(v.MAX_BINS + 1),
    lambda: v.check_n_bins(0),
    lambda: CalibrationAccumulator(n_classes=v.MAX_CLASSES + 1),
    lambda: CalibrationAccumulator(bootstrap=v.MAX_BOOTSTRAP + 1),
    lambda: CalibrationAccumulator(fine_bits=v.MAX_FINE_BITS + 1),
    lambda: CalibrationAccumulator(fine_levels=v.MAX_FINE_LEVELS + 1),
    lambda: WindowedAccumulator(10, n_blocks=v.MAX_WINDOW_BLOCKS + 1),
    lambda: WindowedAccumulator(v.MAX_ROWS + 1),
    lambda: calibkit.OODAccumulator(precision_bits=v.MAX_PRECISION_BITS + 1),
])
def test_one_past_each_limit_is_a_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("call, exc", [
    (lambda: v.check_n_bins(15.0), TypeError),
    (lambda: v.check_n_bins(True), TypeError),
    (lambda: v.check_n_bins(np.bool_(True)), TypeError),
    (lambda: CalibrationAccumulator(bootstrap="3"), TypeError),
    (lambda: CalibrationAccumulator(n_classes=2.0), TypeError),
    (lambda: WindowedAccumulator(10, n_blocks=1.5), TypeError),
])
def test_sizes_of_the_wrong_type_are_type_errors(call, exc):
    with pytest.raises(exc):
        call()


def test_limits_are_documented():
    assert "2**20" in CalibrationAccumulator.__doc__ and "2**26" in CalibrationAccumulator.__doc__
    assert "1024" in WindowedAccumulator.__doc__
    assert "40" in calibkit.OODAccumulator.__doc__
    assert "MAX_BINS" in v.check_n_bins.__doc__


# -- the command line: the same checks, one line, exit status 2 ------------------------------------------

@pytest.fixture
def tiny_dump(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "tiny.npz"
    np.savez(path, probs=rng.dirichlet(np.ones(4), size=100), labels=rng.integers(0, 4, 100))
    assert path.stat().st_size < 9 * 1024
    return path


CLI = r"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from calibkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["evaluate", "report"])
@pytest.mark.parametrize("n_bins", ["100000000", str(v.MAX_BINS + 1), "0"])
def test_cli_n_bins_out_of_range_is_one_line_exit_2(tiny_dump, command, n_bins):
    args = [command, str(tiny_dump), "--n-bins", n_bins]
    if command == "report":
        args.append("--quiet")
    r = subprocess.run([sys.executable, "-c", CLI.format(limit=LIMIT_AS), *args], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "n_bins" in lines[0] or "--n-bins" in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flag, value, word", [("--n-bins", "100000000", "--n-bins"),
                                               ("--bootstrap", "1000000000", "bootstrap"),
                                               ("--window", str(2 ** 64), "window")])
def test_cli_monitor_sizes_out_of_range_are_one_line_exit_2(flag, value, word):
    r = subprocess.run([sys.executable, "-c", CLI.format(limit=LIMIT_AS), "monitor", flag, value],
                       input='{"probs": [0.2, 0.8], "label": 1}\n', capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], r.stderr
