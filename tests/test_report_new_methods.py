"""`calibkit report --calibrate` and `calibkit fit --method` with issue 16's calibrators: each row of the report
holds the metrics of the calibrator's own probabilities on the test split."""

import json

import numpy as np
import pytest

import calibkit
from calibkit import cli

NEW = ["ets", "beta", "venn_abers", "top_label", "dirichlet"]


def _dump(tmp_path, n_val=1500, n_test=2000, k=5, seed=3):
    rng = np.random.default_rng(seed)

    def part(n):
        z = rng.normal(size=(n, k)) * 3
        y = np.argmax(z / 2.0 + rng.gumbel(size=(n, k)), axis=1)  # over-confident logits
        return z.astype(np.float32), y

    (zv, yv), (zt, yt) = part(n_val), part(n_test)
    path = tmp_path / "dump.npz"
    np.savez(path, val_logits=zv, val_labels=yv, test_logits=zt, test_labels=yt)
    return path, (zv, yv), (zt, yt)


def test_report_rows_are_the_calibrators_metrics(tmp_path):
    path, (zv, yv), (zt, yt) = _dump(tmp_path)
    out = tmp_path / "r.json"
    assert cli.main(["report", str(path), "--calibrate", ",".join(NEW), "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())["rows"]
    made = {"ets": calibkit.EnsembleTemperatureScaling(), "beta": calibkit.BetaCalibration(from_logits=True),
            "venn_abers": calibkit.VennAbers(from_logits=True),
            "top_label": calibkit.TopLabelHistogramBinning(from_logits=True),
            "dirichlet": calibkit.DirichletCalibration(reg_lambda=1e-2, reg_mu=1e-2, from_logits=True)}
    for name, c in made.items():
        p = c.fit(zv, yv).predict_proba(zt)
        assert rows[name]["n"] == len(yt)
        assert rows[name]["brier"] == pytest.approx(calibkit.brier_score(p, yt), rel=1e-9), name
        assert rows[name]["ece"] == pytest.approx(calibkit.ece(p, yt), abs=1e-9), name
    assert rows["ets"]["nll"] < rows["raw"]["nll"]


@pytest.mark.parametrize("method", NEW)
def test_fit_then_apply(tmp_path, method, capsys):
    path, (zv, yv), (zt, yt) = _dump(tmp_path, n_val=800, n_test=500)
    model, out = tmp_path / "m.json", tmp_path / "p.npy"
    assert cli.main(["fit", str(path), "--method", method, "--out", str(model)]) == 0
    assert cli.main(["apply", str(model), str(path), "--split", "test", "--dtype", "float64", "--out", str(out)]) == 0
    capsys.readouterr()
    fitted = calibkit.Calibrator.from_dict(json.loads(model.read_text()))
    np.testing.assert_allclose(np.load(out), fitted.predict_proba(zt), rtol=0, atol=1e-12)
