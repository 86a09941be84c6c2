"""`calibkit report` / `fit` / `apply`, calibkit.report and calibkit.plot."""

import json
import pathlib

import numpy as np
import pytest

import calibkit
from calibkit import cli, io, report


def dump_with_splits(tmp_path, n_val=2000, n_test=3000, k=6, seed=0):
    rng = np.random.default_rng(seed)

    def part(n):
        z = rng.normal(size=(n, k)) * 3
        y = np.argmax(z / 2.0 + rng.gumbel(size=(n, k)), axis=1)  # drawn at T = 2: over-confident logits
        return z.astype(np.float32), y

    (zv, yv), (zt, yt) = part(n_val), part(n_test)
    path = tmp_path / "dump.npz"
    np.savez(path, val_logits=zv, val_labels=yv, test_logits=zt, test_labels=yt)
    return path, (zv, yv), (zt, yt)


def test_report_numbers_match_direct_computation(tmp_path, capsys):
    path, (zv, yv), (zt, yt) = dump_with_splits(tmp_path)
    out = tmp_path / "r.json"
    assert cli.main(["report", str(path), "--calibrate", "temperature,isotonic", "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr()
    assert "calibrators fitted on 2,000 validation rows" in text.out and "temperature" in text.out
    assert text.err == ""  # no progress bar when stderr is not a terminal
    r = json.loads(out.read_text())
    raw, ts = r["rows"]["raw"], r["rows"]["temperature"]
    assert raw["n"] == 3000 and r["n_val"] == 2000
    assert raw["ece"] == pytest.approx(calibkit.ece(zt, yt, from_logits=True), abs=1e-12)
    assert raw["nll"] == pytest.approx(calibkit.nll(zt, yt, from_logits=True), rel=1e-9)
    assert raw["classwise_ece"] == pytest.approx(calibkit.classwise_calibration_error(zt, yt, from_logits=True),
                                                 abs=1e-12)
    t = calibkit.TemperatureScaling().fit(zv, yv)
    assert ts["params"]["temperature_"] == pytest.approx(t.temperature_, rel=1e-12)
    # the kernel applies 1/T as it reads the logits: the metrics of t.transform(zt), to rounding
    assert ts["nll"] == pytest.approx(calibkit.nll(t.transform(zt), yt, from_logits=True), rel=1e-12)
    assert ts["ece"] == pytest.approx(calibkit.ece(t.transform(zt), yt, from_logits=True), abs=1e-12)
    assert ts["classwise_ece"] == pytest.approx(
        calibkit.classwise_calibration_error(t.transform(zt), yt, from_logits=True), abs=1e-12)
    assert ts["nll"] < raw["nll"] and ts["ece"] < raw["ece"]
    iso = calibkit.IsotonicCalibration(from_logits=True).fit(zv, yv)
    assert r["rows"]["isotonic"]["brier"] == pytest.approx(calibkit.brier_score(iso.predict_proba(zt), yt), rel=1e-9)
    assert sum(r["reliability_tables"]["raw"]["count"]) == 3000


def test_report_val_fraction_and_val_dump(tmp_path, capsys):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(5000, 4)).astype(np.float32) * 3
    y = np.argmax(z / 2.0 + rng.gumbel(size=z.shape), axis=1)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    args = ["report", str(tmp_path / "logits.npy"), "--labels", str(tmp_path / "labels.npy"), "--quiet"]
    assert cli.main(args + ["--val-fraction", "0.2", "--calibrate", "temperature", "--json",
                            str(tmp_path / "a.json")]) == 0
    r = json.loads((tmp_path / "a.json").read_text())
    mask = io.split_mask(5000, 0.2)
    assert r["n_val"] == mask.sum() and r["rows"]["raw"]["n"] == 5000 - mask.sum()
    assert r["rows"]["raw"]["ece"] == pytest.approx(calibkit.ece(z[~mask], y[~mask], from_logits=True), abs=1e-12)
    np.savez(tmp_path / "val.npz", logits=z[:1000], labels=y[:1000])
    assert cli.main(args + ["--val", str(tmp_path / "val.npz"), "--calibrate", "vector"]) == 0
    assert "vector" in capsys.readouterr().out
    # no calibrators: raw metrics of every row
    assert cli.main(args + ["--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["rows"]["raw"]["n"] == 5000


def test_report_shards_and_probabilities(tmp_path, capsys):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(5), size=3000)
    y = rng.integers(0, 5, 3000)
    for j in range(3):
        np.savez(tmp_path / f"s{j}.npz", probs=p[j * 1000:(j + 1) * 1000], labels=y[j * 1000:(j + 1) * 1000])
    assert cli.main(["report", str(tmp_path), "--val-fraction", "0.3", "--calibrate", "temperature,histogram",
                     "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["from_logits"] is False and r["n_rows"] == 3000
    mask = io.split_mask(3000, 0.3)
    assert r["rows"]["raw"]["brier"] == pytest.approx(calibkit.brier_score(p[~mask], y[~mask]), rel=1e-12)


def test_report_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path, _, _ = dump_with_splits(tmp_path)
    png = tmp_path / "rel.png"
    assert cli.main(["report", str(path), "--calibrate", "temperature", "--plot", str(png), "--quiet"]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (800, 500)  # two diagrams (raw, temperature), 4 x 5 inches each at 100 dpi
    svg = tmp_path / "t.svg"
    d = np.load(path)
    calibkit.reliability_table(d["test_logits"], d["test_labels"], from_logits=True).plot(path=svg)
    assert svg.read_text().lstrip().startswith("<?xml")
    with pytest.raises(TypeError, match="ReliabilityTable"):
        calibkit.plot.reliability_diagram([])
    with pytest.raises(ValueError, match="titles"):
        table = calibkit.reliability_table(d["test_logits"], d["test_labels"], from_logits=True)
        calibkit.plot.reliability_diagram([table, table], titles=["one"])


def test_fit_and_apply(tmp_path, capsys):
    path, (zv, yv), (zt, yt) = dump_with_splits(tmp_path)
    cal = tmp_path / "t.json"
    assert cli.main(["fit", str(path), "--method", "temperature", "--out", str(cal)]) == 0
    payload = json.loads(cal.read_text())
    t = calibkit.TemperatureScaling().fit(zv, yv)  # fitted on the val split by default
    assert payload["fitted"]["temperature_"] == pytest.approx(t.temperature_, rel=1e-12)
    out = tmp_path / "calibrated.npy"
    assert cli.main(["apply", str(cal), str(path), "--out", str(out), "--quiet"]) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == zt.shape
    np.testing.assert_allclose(got, t.predict_proba(zt), rtol=1e-6, atol=1e-7)
    out64 = tmp_path / "c64.npy"
    assert cli.main(["apply", str(cal), str(path), "--out", str(out64), "--dtype", "float64", "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out64), t.predict_proba(zt), rtol=1e-12)
    iso = tmp_path / "iso.json"
    assert cli.main(["fit", str(path), "--method", "isotonic", "--out", str(iso)]) == 0
    assert cli.main(["apply", str(iso), str(path), "--out", str(out), "--quiet"]) == 0
    ref = calibkit.IsotonicCalibration(from_logits=True).fit(zv, yv).predict_proba(zt)
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/missing.npz"], "no such file"),
    (["report", "{dump}", "--calibrate", "bogus"], "unknown calibration method 'bogus'"),
    (["report", "{npy}", "--labels", "{labels}", "--calibrate", "temperature"], "need validation rows"),
    (["report", "{dump}", "--val", "{dump}", "--val-fraction", "0.1"], "not both"),
    (["report", "{npy}", "--labels", "{labels}", "--val-fraction", "1.5"], "fraction must be in"),
    (["report"], "give a DUMP"),
    (["fit", "{dump}", "--method", "temperature", "--out", "{tmp}/no/such/dir/x.json"], "no such file or directory"),
    (["apply", "{dump}", "{dump}", "--out", "{tmp}/o.npy"], "cannot read"),
    (["apply", "{badcal}", "{dump}", "--out", "{tmp}/o.npy"], "not written by `calibkit fit`"),
    (["apply", "{cal5}", "{dump}", "--out", "{tmp}/o.npy"], "fitted on 5 classes"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    dump, _, _ = dump_with_splits(tmp_path, 200, 300)
    rng = np.random.default_rng(3)
    np.save(tmp_path / "z.npy", rng.normal(size=(100, 6)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 6, 100))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "x"}))
    z5 = rng.normal(size=(100, 5))
    np.savez(tmp_path / "five.npz", logits=z5, labels=rng.integers(0, 5, 100))
    assert cli.main(["fit", str(tmp_path / "five.npz"), "--method", "temperature", "--out",
                     str(tmp_path / "cal5.json")]) == 0
    capsys.readouterr()
    subs = {"tmp": str(tmp_path), "dump": str(dump), "npy": str(tmp_path / "z.npy"),
            "labels": str(tmp_path / "y.npy"), "badcal": str(tmp_path / "bad.json"),
            "cal5": str(tmp_path / "cal5.json")}
    code = cli.main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_rows_are_named_by_their_row_in_the_dump(tmp_path, capsys):
    """Errors found in a chunk (or among the gathered validation rows) name the row of the whole dump."""
    rng = np.random.default_rng(4)
    n, k = 20_000, 5
    z = rng.normal(size=(n, k)).astype(np.float32)
    y = np.argmax(z / 2.0 + rng.gumbel(size=(n, k)), axis=1)
    mask = io.split_mask(n, 0.2)
    test_row = int(np.flatnonzero(~mask)[-7])  # in the last chunks, among the evaluated rows
    val_row = int(np.flatnonzero(mask)[1234])
    np.save(tmp_path / "y.npy", y)
    args = ["--labels", str(tmp_path / "y.npy"), "--val-fraction", "0.2", "--calibrate", "temperature", "--quiet"]
    bad = z.copy()
    bad[test_row, 3] = np.nan
    np.save(tmp_path / "a.npy", bad)
    assert cli.main(["report", str(tmp_path / "a.npy"), *args]) == 2  # read as probabilities: not a name of logits
    assert "a.npy: scores[0, 0] = " in capsys.readouterr().err.replace("give --from-logits for logits", "")
    assert cli.main(["report", str(tmp_path / "a.npy"), "--from-logits", *args]) == 2
    assert f"a.npy: scores[{test_row}, 3] = nan is not finite" in capsys.readouterr().err
    bad = z.copy()
    bad[val_row, 1] = np.inf  # seen only by the temperature fit
    np.save(tmp_path / "b_logits.npy", bad)
    assert cli.main(["report", str(tmp_path / "b_logits.npy"), *args]) == 2
    assert f"b_logits.npy: scores[{val_row}, 1] = inf is not finite" in capsys.readouterr().err
    yy = y.copy()
    yy[val_row] = 9
    np.savez(tmp_path / "c.npz", logits=z, labels=yy)
    test = io.open_dump(tmp_path / "c.npz")
    with pytest.raises(io.DumpError, match=rf"c.npz:logits: labels\[{val_row}\] = 9 is out of range"):
        report.report(test, val_mask=mask, methods=["temperature"], chunk_rows=3000, max_val_bytes=1000)
    cal = tmp_path / "t.json"
    np.savez(tmp_path / "good.npz", logits=z, labels=y)
    assert cli.main(["fit", str(tmp_path / "good.npz"), "--method", "temperature", "--out", str(cal)]) == 0
    assert cli.main(["apply", str(cal), str(tmp_path / "a.npy"), "--out", str(tmp_path / "o.npy"), "--quiet"]) == 2
    # (the calibrator's JSON says its input is logits)
    err = capsys.readouterr().err
    assert f"a.npy: scores[{test_row}, 3] = nan is not finite" in err and err.count("\n") == 1


def test_example_runs(capsys, monkeypatch):
    monkeypatch.delenv("CALIBKIT_DATA", raising=False)
    assert cli.main(["report", "--example", "--calibrate", "temperature", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "10,000 rows x 10 classes" in out and "temperature" in out and "Mukhoti et al. 2020" in out


def test_example_ships_inside_the_package(tmp_path, monkeypatch):
    """An installed calibkit finds its example with no data folder anywhere near (a fresh machine)."""
    from calibkit import datasets

    monkeypatch.delenv("CALIBKIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    packaged = cli.example_path()
    assert packaged == datasets.example_path() and packaged.name == datasets.EXAMPLE_FILE
    assert packaged.parent.parent == pathlib.Path(calibkit.__file__).parent
    with np.load(packaged) as d:
        assert d["test_logits"].shape == (10000, 10) and d["val_labels"].shape == (5000,)


def test_report_python_api(tmp_path):
    path, (zv, yv), (zt, yt) = dump_with_splits(tmp_path)
    test, val = io.open_dump(path, split="test"), io.open_dump(path, split="val")
    seen = []
    r = report.report(test, val=val, methods=["temperature", "matrix"], chunk_rows=700, progress=seen.append)
    assert seen == [700, 1400, 2100, 2800, 3000]  # one pass: the raw metrics and the calibrators' (val read first)
    assert set(r["rows"]) == {"raw", "temperature", "matrix"}
    assert "raw" in report.format_table(r)


def test_report_quantile_strategy(tmp_path):
    path, _, (zt, yt) = dump_with_splits(tmp_path)
    out = tmp_path / "q.json"
    assert cli.main(["report", str(path), "--strategy", "quantile", "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    raw = r["rows"]["raw"]
    assert r["strategy"] == "quantile" and raw["ece"] == raw["ace"]
    exact = calibkit.ece(zt, yt, from_logits=True, strategy="quantile")
    assert abs(raw["ece"] - exact) <= raw["ace_bound"] + 1e-12


def test_out_of_core_temperature_fit_equals_in_memory(tmp_path):
    path, (zv, yv), (zt, yt) = dump_with_splits(tmp_path)
    test = io.open_dump(path, split="test")
    mask = io.split_mask(test.n_rows, 0.3)
    small = report.report(test, val_mask=mask, methods=["temperature"], chunk_rows=256, max_val_bytes=1000)
    big = report.report(test, val_mask=mask, methods=["temperature"], chunk_rows=256)
    t_small = small["rows"]["temperature"]["params"]["temperature_"]
    assert t_small == pytest.approx(big["rows"]["temperature"]["params"]["temperature_"], rel=1e-12)
    assert small["rows"]["temperature"]["ece"] == pytest.approx(big["rows"]["temperature"]["ece"], abs=1e-12)
    with pytest.raises(ValueError, match="only temperature scaling is fitted chunk by chunk"):
        report.report(test, val_mask=mask, methods=["temperature", "vector"], max_val_bytes=1000)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_split_report_equals_direct_computation_and_reports_stages(tmp_path, fmt):
    """A dump split by --val-fraction: the validation rows are read first (by themselves), the calibrators
    fitted on them, and the raw metrics and every calibrator's are taken in one pass over the evaluation rows
    (each block read once); the numbers are those of the metrics on z[~mask] with the calibrators fitted on
    z[mask]."""
    rng = np.random.default_rng(7)
    n, k = 4001, 5
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.argmax(z / 2.0 + rng.gumbel(size=z.shape), axis=1)
    if fmt == "npy":
        np.save(tmp_path / "logits.npy", z)
        np.save(tmp_path / "labels.npy", y)
        dump = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy")
    else:
        np.savez(tmp_path / "d.npz", logits=z, labels=y)
        dump = io.open_dump(tmp_path / "d.npz")
    mask = io.split_mask(n, 0.25)
    seen, stages = [], []
    methods = ["temperature", "vector", "isotonic", "histogram"]
    r = report.report(dump, val_mask=mask, methods=methods, chunk_rows=512,
                      progress=seen.append, stage=lambda name, rows: stages.append((name, rows, len(seen))))
    assert [s[0].split(":")[0] for s in stages] == ["pass 1/2", "fit 1/4", "fit 2/4", "fit 3/4", "fit 4/4",
                                                    "pass 2/2"]
    assert [s[1] for s in stages] == [n, None, None, None, None, n]
    assert "validation rows" in stages[0][0] and "raw metrics, " + ", ".join(methods) in stages[-1][0]
    assert [s[2] for s in stages] == [0] + [1] * 5  # the fits between the validation rows and the pass
    assert seen == [n] + [n + min(n, a + 512) for a in range(0, n, 512)]
    zt, yt, zv, yv = z[~mask], y[~mask], z[mask], y[mask]
    assert r["n_val"] == len(yv) and r["rows"]["raw"]["n"] == len(yt)
    raw = r["rows"]["raw"]
    assert raw["ece"] == pytest.approx(calibkit.ece(zt, yt, from_logits=True), abs=1e-12)
    assert raw["brier"] == pytest.approx(calibkit.brier_score(zt, yt, from_logits=True), rel=1e-9)
    assert raw["nll"] == pytest.approx(calibkit.nll(zt, yt, from_logits=True), rel=1e-9)
    for m in methods:
        c = report.fit_calibrator(m, zv, yv, True)
        p = report.calibrated_probabilities(c, m, zt, True)
        assert r["rows"][m]["params"] == c.to_dict()["fitted"]
        assert r["rows"][m]["brier"] == pytest.approx(calibkit.brier_score(p, yt), rel=1e-9), m
        assert r["rows"][m]["ece"] == pytest.approx(calibkit.ece(p, yt), abs=1e-9), m
    # the same report read without the scatter reads (a copy splits each block)
    import calibkit.io as cio
    real = cio._preadv
    try:
        cio._preadv = None
        again = report.report(dump, val_mask=mask, methods=methods, chunk_rows=512)
    finally:
        cio._preadv = real
    assert again["rows"] == r["rows"]


def test_split_report_names_the_bad_row(tmp_path):
    """A bad value in an evaluation row or in a validation row is named by its row in the whole dump."""
    rng = np.random.default_rng(8)
    z = rng.normal(size=(3000, 4)).astype(np.float32)
    y = rng.integers(0, 4, 3000)
    mask = io.split_mask(3000, 0.2)
    bad_eval, bad_val = int(np.flatnonzero(~mask)[1700]), int(np.flatnonzero(mask)[300])
    for row in (bad_eval, bad_val):
        zz = z.copy()
        zz[row, 2] = np.nan
        np.save(tmp_path / "logits.npy", zz)
        np.save(tmp_path / "labels.npy", y)
        dump = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy")
        for max_val_bytes in (io.DEFAULT_CHUNK_BYTES, 100):  # fitted in memory, or out of core
            with pytest.raises(io.DumpError, match=rf"(scores|logits)\[{row}, 2\] = nan"):
                report.report(dump, val_mask=mask, methods=["temperature"], chunk_rows=256,
                              max_val_bytes=max_val_bytes)


def test_val_mask_of_the_wrong_length_is_refused(tmp_path):
    path, _, _ = dump_with_splits(tmp_path)
    test = io.open_dump(path, split="test")
    with pytest.raises(ValueError, match=r"val_mask must be a bool array of shape \(3000,\).*got shape \(2999,\)"):
        report.report(test, val_mask=np.ones(2999, bool), methods=["temperature"])


@pytest.mark.parametrize("from_logits", [True, False])
def test_calibrated_pass_gives_each_calibrators_own_numbers_bit_for_bit(backend, from_logits, monkeypatch):
    """The calibrated pass writes every calibrator's input into buffers reused block after block, vector
    scaling sub-block by sub-block and one softmax shared by isotonic and histogram: the values are exactly
    those of each calibrator's own transform / predict_proba of the block (small sub-blocks, ragged last one)."""
    monkeypatch.setattr(report, "SUB_BLOCK_VALUES", 37)
    rng = np.random.default_rng(3)
    n, k = 3000, 7
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.argmax(z / 2.0 + rng.gumbel(size=z.shape), axis=1)
    scores = z if from_logits else np.asarray(calibkit.calibrators.nonparametric._softmax64(z), np.float32)
    methods = ["temperature", "vector", "isotonic", "histogram", "matrix"] if from_logits else \
        ["vector", "isotonic", "histogram"]
    fitted = {}
    for m in methods:
        c = report.make_calibrator(m, from_logits)
        c.backend = backend
        fitted[m] = c.fit(report.as_logits(scores[:1000], from_logits) if m in report.LOGIT_METHODS
                          else scores[:1000], y[:1000])
    inputs = report._CalibratedInputs(fitted, from_logits, 900, k)
    for a in range(1000, n, 900):
        block = scores[a:a + 900]
        got = inputs(block)
        for m, c in fitted.items():
            want = report._method_input(c, m, block, from_logits)
            np.testing.assert_array_equal(got[m], want, err_msg=m)
            assert got[m].dtype == want.dtype


def test_calibrated_pass_names_an_overflowing_row_as_the_calibrator_does(monkeypatch):
    """A vector-scaling output that overflows float64 raises the calibrator's own error."""
    monkeypatch.setattr(report, "SUB_BLOCK_VALUES", 10)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(50, 3))
    y = rng.integers(0, 3, 50)
    c = calibkit.VectorScaling().fit(z, y)
    c.scale_ = np.array([1.0, 1e308, 1.0])
    inputs = report._CalibratedInputs({"vector": c}, True, 50, 3)
    with pytest.raises(ValueError, match=r"logits\[\d+\]: the calibrated logits overflow float64") as got:
        inputs(z)
    with pytest.raises(ValueError) as want:
        c.transform(z)
    assert str(got.value) == str(want.value)


def test_results_convert_to_data_frames(tmp_path):
    pd = pytest.importorskip("pandas")
    path, _, (zt, yt) = dump_with_splits(tmp_path)
    r = report.report(io.open_dump(path, split="test"), val=io.open_dump(path, split="val"),
                      methods=["temperature", "isotonic"])
    frame = r.to_frame()
    assert list(frame.index) == ["raw", "temperature", "isotonic"] and frame.index.name == "calibration"
    assert frame.loc["raw", "ece"] == r["rows"]["raw"]["ece"] and "params" not in frame.columns
    assert frame.loc["temperature", "n"] == 3000
    assert r.to_dict() == report.json_safe(r) and json.loads(json.dumps(r.to_dict())) == r.to_dict()

    table = calibkit.reliability_table(zt, yt, from_logits=True, n_bins=10)
    tf = table.to_frame()
    assert isinstance(tf, pd.DataFrame) and len(tf) == 10 and tf.index.name == "bin"
    assert list(tf.columns) == ["lower", "upper", "count", "weight", "mean_confidence", "accuracy", "gap"]
    np.testing.assert_array_equal(tf["count"].to_numpy(), table.count)
    assert tf.attrs["strategy"] == "uniform"
    assert table.to_dict()["count"] == tf["count"].tolist()

    acc = calibkit.CalibrationAccumulator(10, from_logits=True, bootstrap=20)
    acc.update(zt, yt)
    res = acc.compute()
    rf = res.to_frame()
    assert len(rf) == 1 and rf.loc[0, "ece"] == res.ece and rf.loc[0, "count"] == 3000
    assert (rf.loc[0, "ece_ci_low"], rf.loc[0, "ece_ci_high"]) == tuple(res.ece_ci)
    assert "table" not in rf.columns and res.to_dict()["ece"] == res.ece


def test_to_frame_without_pandas_says_which_extra(tmp_path, monkeypatch):
    import sys

    path, _, (zt, yt) = dump_with_splits(tmp_path, 100, 200)
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    table = calibkit.reliability_table(zt, yt, from_logits=True)
    acc = calibkit.CalibrationAccumulator(from_logits=True)
    acc.update(zt, yt)
    r = report.report(io.open_dump(path, split="test"))
    for convert in (table.to_frame, acc.compute().to_frame, r.to_frame):
        with pytest.raises(ImportError, match=r"needs pandas.*pip install 'calibkit\[pandas\]'"):
            convert()
    assert r.to_dict()["rows"]["raw"]["n"] == 200  # dicts need nothing


def test_report_temperature_fit_warm_started_reaches_the_same_optimum(backend):
    """On a validation set of 8,192 rows and >= 4M logits (a 10% split of a large dump), the fit starts from a
    strided subsample's fit: fewer full passes than from T = 1, the same certified optimum; a bad value is still
    named by its row in the validation set (not in the subsample)."""
    import warnings

    rng = np.random.default_rng(11)
    n, k = 8192, 512
    z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
    y = np.argmax(z / 2.5 + rng.gumbel(size=z.shape).astype(np.float32), axis=1)
    c = calibkit.TemperatureScaling(backend=backend).fit(z, y)
    plain = calibkit.TemperatureScaling(backend=backend).fit_from_sums(
        lambda b: calibkit.temperature_nll(z, y, b, backend=backend), k)
    assert report.fit_calibrator("temperature", z, y, True).temperature_ == pytest.approx(c.temperature_, rel=2e-7)
    assert c.temperature_ == pytest.approx(plain.temperature_, rel=2e-7)
    assert c.n_passes_ < plain.n_passes_
    # an independent float64 fit: the NLL's derivative in b = 1/T vanishes at the fitted T
    x = z.astype(np.float64) / c.temperature_
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    zz = z.astype(np.float64)
    g = np.mean((p * zz).sum(axis=1) - zz[np.arange(n), y])
    h = np.mean((p * zz * zz).sum(axis=1) - (p * zz).sum(axis=1) ** 2)
    assert abs(g / h) <= 1e-6 / c.temperature_  # the Newton step left is below 1e-6 relative in b
    bad = z.copy()
    bad[4097, 3] = np.nan  # row 4097 is not in the stride-4 subsample's rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"logits\[4097, 3\] = nan"):
            report.fit_calibrator("temperature", bad, y, True)
    bad[4096, 3] = np.nan  # row 4096 is: the subsample's fault is not reported under its own row number
    with pytest.raises(ValueError, match=r"logits\[4096, 3\] = nan"):
        report.fit_calibrator("temperature", bad, y, True)
