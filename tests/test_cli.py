import json

import numpy as np
import pytest

import calibkit
from calibkit import cli


def test_evaluate_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 500)
    path = tmp_path / "dump.npz"
    np.savez(path, test_logits=logits, test_labels=labels)
    assert cli.main(["evaluate", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from_logits"] is True and out["n"] == 500 and out["n_classes"] == 4
    assert out["ece"] == pytest.approx(calibkit.ece(logits, labels, from_logits=True))
    assert out["ace"] == pytest.approx(calibkit.ece(logits, labels, from_logits=True, strategy="quantile"))
    assert out["nll"] == pytest.approx(calibkit.nll(logits, labels, from_logits=True))
    assert sum(out["reliability_table"]["count"]) == 500
    assert cli.main(["evaluate", str(path), "--n-bins", "5"]) == 0
    text = capsys.readouterr().out
    assert "read as logits" in text and "ReliabilityTable(5 bins" in text


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
    assert out["brier"] == pytest.approx(calibkit.brier_score(probs, labels))


def test_evaluate_reports_bad_data(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, probs=np.array([[0.5, 0.5], [2.0, -1.0]]), labels=np.array([0, 1]))
    assert cli.main(["evaluate", str(path)]) == 2
    assert "scores[1, 0] = 2.0 is not a probability" in capsys.readouterr().err
    np.savez(path, stuff=np.ones(3))
    assert cli.main(["evaluate", str(path)]) == 2
    assert "cannot tell which array" in capsys.readouterr().err
