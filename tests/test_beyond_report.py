"""Issue 15, section 8: the measures beyond binned ECE in the streaming result, the report and the monitor."""

import io
import json

import numpy as np
import pytest

import calibkit
from calibkit import monitor, report
from calibkit.io import open_dump


def _data(n=3000, k=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    labels = np.argmax(logits / 2 + rng.gumbel(size=(n, k)), axis=1)  # informative, over-confident logits
    return logits, labels


def test_streamed_debiased_rmsce_is_the_one_shot_value(backend):
    x, y = _data()
    acc = calibkit.CalibrationAccumulator(n_bins=10, from_logits=True, backend=backend)
    for s in (slice(0, 700), slice(700, 3000)):
        acc.update(x[s], y[s])
    r = acc.compute()
    one = calibkit.debiased_calibration_error(x, y, from_logits=True, n_bins=10, backend=backend)
    assert r.debiased_squared == pytest.approx(one.squared, rel=1e-12, abs=1e-15)
    assert r.debiased_rmsce == pytest.approx(one.value, rel=1e-12, abs=1e-15)


def test_weighted_stream_debiased_value_uses_kish_counts():
    x, y = _data()
    w = np.random.default_rng(5).random(len(y)) + 0.1
    r = calibkit.CalibrationAccumulator(from_logits=True).update(x, y, sample_weight=w).compute()
    one = calibkit.debiased_calibration_error(x, y, from_logits=True, sample_weight=w)
    assert r.debiased_rmsce == pytest.approx(one.value, rel=1e-12)


@pytest.fixture
def dump(tmp_path):
    x, y = _data(4000, 6, seed=3)
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "labels.npy", y)
    return open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy", from_logits=True), x, y


def test_report_rows_hold_the_new_measures(dump, backend):
    d, x, y = dump
    mask = np.zeros(len(y), dtype=bool)
    mask[::5] = True
    r = report.report(d, val_mask=mask, methods=["temperature"], backend=backend)
    raw, xs, ys = r["rows"]["raw"], x[~mask], y[~mask]
    assert raw["smooth_ece"] == pytest.approx(calibkit.smooth_ece(xs, ys, from_logits=True, backend=backend),
                                              rel=1e-9, abs=1e-12)
    assert raw["debiased_rmsce"] == pytest.approx(
        calibkit.debiased_calibration_error(xs, ys, from_logits=True, backend=backend).value, rel=1e-12)
    exact = calibkit.cumulative_calibration_error(xs, ys, from_logits=True, backend=backend)
    assert raw["ecce_r"] - 1e-12 <= exact.range <= raw["ecce_r"] + raw["ecce_r_bound"] + 1e-12
    assert raw["ecce_sigma"] == pytest.approx(exact.sigma, rel=1e-6)
    assert 0.0 <= raw["ecce_pvalue"] <= 1.0
    t = r["rows"]["temperature"]
    assert t["smooth_ece"] is not None and t["debiased_rmsce"] is not None
    head = report.format_table(r).splitlines()[1].split()
    assert head == ["n", "accuracy", "ece", "classwise_ece", "smooth_ece", "rmsce_debias", "ecce_r/sigma", "ecce_p",
                    "brier", "nll"]
    assert json.loads(json.dumps(report.json_safe(r)))["rows"]["raw"]["ecce_r_bound"] == raw["ecce_r_bound"]


def test_report_without_smooth(dump):
    r = report.report(dump[0], smooth=False)
    assert r["rows"]["raw"]["smooth_ece"] is None
    assert "-" in report.format_table(r).splitlines()[2].split()


def test_monitor_reports_smooth_and_cumulative_when_asked():
    rng = np.random.default_rng(1)
    c = rng.random(500)
    ok = (rng.random(500) < c).astype(int)
    lines = b"".join(json.dumps({"confidence": float(a), "correct": int(b)}).encode() + b"\n" for a, b in zip(c, ok))
    out = io.StringIO()
    assert monitor.run(io.BytesIO(lines), every=10_000, out=out, smooth=True, cumulative=True) == 0
    rep = json.loads(out.getvalue().splitlines()[-1])
    assert rep["smooth_ece"] == pytest.approx(calibkit.smooth_ece(c, ok), rel=1e-9)
    exact = calibkit.cumulative_calibration_error(c, ok)
    assert rep["ecce_r"] - 1e-12 <= exact.range <= rep["ecce_r"] + rep["ecce_r_bound"] + 1e-12
    assert {"ecce_r_sigma", "ecce_pvalue"} <= rep.keys()
    text = monitor.prometheus_text(rep)
    assert "calibkit_smooth_ece " in text and "calibkit_ecce_pvalue " in text
    out = io.StringIO()
    monitor.run(io.BytesIO(lines), every=10_000, out=out)
    assert "smooth_ece" not in json.loads(out.getvalue().splitlines()[-1])
