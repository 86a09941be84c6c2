import json

import numpy as np
import pytest

import calibkit
from calibkit import cli


def test_evaluate_npz(tmp_path, capsys):
    """`calibkit evaluate` is `calibkit report`: a bare --json prints the report's JSON on stdout (no table)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 500)
    path = tmp_path / "dump.npz"
    np.savez(path, test_logits=logits, test_labels=labels)
    assert cli.main(["evaluate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    raw = out["rows"]["raw"]
    assert out["from_logits"] is True and raw["n"] == 500 and out["n_classes"] == 4
    assert raw["ece"] == pytest.approx(calibkit.ece(logits, labels, from_logits=True), abs=1e-12)
    assert raw["rmsce"] == pytest.approx(calibkit.calibration_error(logits, labels, from_logits=True, norm="l2"),
                                         abs=1e-12)
    assert abs(raw["ace"] - calibkit.ece(logits, labels, from_logits=True, strategy="quantile")) <= \
        raw["ace_bound"] + 1e-12
    assert raw["nll"] == pytest.approx(calibkit.nll(logits, labels, from_logits=True))
    assert sum(out["reliability_tables"]["raw"]["count"]) == 500
    assert cli.main(["report", str(path), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == out
    assert cli.main(["evaluate", str(path), "--n-bins", "5"]) == 0
    assert capsys.readouterr().out == (cli.main(["report", str(path), "--n-bins", "5"]), capsys.readouterr().out)[1]


def test_evaluate_memory_mapped_npy(tmp_path, capsys):
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 3, 200)
    np.save(tmp_path / "p.npy", probs)
    np.save(tmp_path / "y.npy", labels)
    assert cli.main(["evaluate", "--scores", str(tmp_path / "p.npy"), "--labels", str(tmp_path / "y.npy"),
                     "--json", "--backend", "numba"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from_logits"] is False
    assert out["rows"]["raw"]["brier"] == pytest.approx(calibkit.brier_score(probs, labels))


def test_evaluate_reports_bad_data(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, probs=np.array([[0.5, 0.5], [2.0, -1.0]]), labels=np.array([0, 1]))
    assert cli.main(["evaluate", str(path)]) == 2
    assert "scores[1, 0] = 2.0 is not a probability" in capsys.readouterr().err
    np.savez(path, stuff=np.ones(3))
    assert cli.main(["evaluate", str(path)]) == 2
    assert "cannot tell which array" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"calibkit {calibkit.__version__}\n"


def test_json_file_and_stdout_are_the_same_numbers(tmp_path, capsys):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", logits=rng.normal(size=(300, 3)), labels=rng.integers(0, 3, 300))
    assert cli.main(["report", str(tmp_path / "d.npz"), "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert "raw" in capsys.readouterr().out  # the table, with the JSON in the file
    assert cli.main(["evaluate", str(tmp_path / "d.npz"), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "r.json").read_text())


def test_report_progress_shows_each_pass_and_fit_as_a_stage(tmp_path, monkeypatch, capsys):
    """On a terminal, `calibkit report` shows one bar per pass counting the dump's rows (not both passes against
    them) and one per fit, named, instead of a bar that stalls while a calibrator fits."""
    import sys
    import types

    rng = np.random.default_rng(5)
    n = 3000
    z = rng.normal(size=(n, 4)).astype(np.float32)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", np.argmax(z + rng.gumbel(size=z.shape), axis=1))
    bars = []

    class Bar:
        def __init__(self, total=None, desc="", **kw):
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, k):
            self.n += k

        def refresh(self):  # a fit's clock, from a ticking thread
            self.refreshed = True

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=Bar))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(["report", str(tmp_path / "logits.npy"), "--labels", str(tmp_path / "labels.npy"),
                     "--val-fraction", "0.2", "--calibrate", "temperature,histogram"]) == 0
    capsys.readouterr()
    names = [b.desc.removeprefix("calibkit report: ") for b in bars]
    assert [x.split(":")[0] for x in names] == ["pass 1/2", "fit 1/2", "fit 2/2", "pass 2/2"]
    assert "temperature" in names[1] and "histogram" in names[2] and "temperature, histogram" in names[3]
    assert [b.total for b in bars] == [n, None, None, n]
    assert bars[0].n == bars[3].n == n and bars[1].n == bars[2].n == 0
    assert all(b.closed for b in bars)
    assert not any(t.name == "calibkit-progress" for t in __import__("threading").enumerate())  # clocks stopped
