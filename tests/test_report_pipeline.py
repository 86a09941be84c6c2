"""The passes of ``calibkit report`` with a validation split (issue 13): pass 1 gathers the validation rows (the
selected rows of the file only), the calibrators are fitted on them, pass 2 reads each block of evaluation rows
once for the raw metrics and every calibrator's. The numbers do not depend on how the dump is stored or read (file reads, split by scatter reads or by
a copy; in-memory arrays; compressed members; any block size), and are those of the one-shot functions."""

from __future__ import annotations

import numpy as np
import pytest

import calibkit
from calibkit import io, report

N, K = 2503, 7


def logits(seed=3, dtype=np.float32):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(N, K)) * 3).astype(dtype)
    y = np.argmax(z / 2.0 + rng.gumbel(size=z.shape), axis=1)
    return z, y


def dumps(tmp_path, z, y):
    """The same rows stored four ways: .npy (file reads), stored .npz, compressed .npz, in-memory arrays."""
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "s.npz", logits=z, labels=y)
    np.savez_compressed(tmp_path / "c.npz", logits=z, labels=y)
    return {"npy": io.open_dump(tmp_path / "z.npy", labels=tmp_path / "y.npy", from_logits=True),
            "npz": io.open_dump(tmp_path / "s.npz"),
            "compressed": io.open_dump(tmp_path / "c.npz"),
            "arrays": io.Dump(z, y, True, "arrays")}


def numbers(r):
    return {name: {k: v for k, v in row.items()} for name, row in r["rows"].items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_passes_give_the_same_numbers_however_the_dump_is_read(tmp_path, backend, dtype):
    z, y = logits(dtype=dtype)
    mask = io.split_mask(N, 0.2)
    want = None
    for kind, dump in dumps(tmp_path, z, y).items():
        for chunk_rows in (None, 97):
            r = report.report(dump, val_mask=mask, methods=["temperature", "histogram"], chunk_rows=chunk_rows,
                              backend=backend)
            got = numbers(r)
            # the validation rows gathered by pass 1 are z[mask] in order: the fit is that of z[mask], bit for bit
            t = calibkit.TemperatureScaling(backend=backend).fit(z[mask], y[mask]).temperature_
            assert got["temperature"]["params"]["temperature_"] == t, (kind, chunk_rows)
            assert r["n_val"] == int(mask.sum()) and got["raw"]["n"] == int((~mask).sum())
            if want is None:
                want = got
                zt, yt = z[~mask], y[~mask]
                assert got["raw"]["ece"] == pytest.approx(calibkit.ece(zt, yt, from_logits=True), abs=1e-12)
                assert got["raw"]["nll"] == pytest.approx(calibkit.nll(zt, yt, from_logits=True), rel=1e-9)
                p = report.calibrated_probabilities(
                    report.fit_calibrator("temperature", z[mask], y[mask], True), "temperature", zt, True)
                assert got["temperature"]["ece"] == pytest.approx(calibkit.ece(p, yt), abs=1e-9)
            for name in want:
                for key, v in want[name].items():
                    if isinstance(v, float):
                        assert got[name][key] == pytest.approx(v, rel=1e-9, abs=1e-12), (kind, chunk_rows, name, key)
                    else:
                        assert got[name][key] == v, (kind, chunk_rows, name, key)


def test_the_scatter_reads_and_the_copy_split_agree_bit_for_bit(tmp_path, monkeypatch):
    """Pass 2 splits each block by scatter reads (os.preadv); without them, by a copy: the same numbers."""
    z, y = logits(seed=5)
    mask = io.split_mask(N, 0.1)
    dump = dumps(tmp_path, z, y)["npy"]
    a = report.report(dump, val_mask=mask, methods=["temperature"], chunk_rows=257)
    monkeypatch.setattr(io, "_preadv", None)
    b = report.report(dump, val_mask=mask, methods=["temperature"], chunk_rows=257)
    assert numbers(a) == numbers(b)


def test_each_pass_reports_its_rows_and_the_fits_come_between(tmp_path):
    z, y = logits(seed=6)
    mask = io.split_mask(N, 0.3)
    dump = dumps(tmp_path, z, y)["npy"]
    events = []
    report.report(dump, val_mask=mask, methods=["temperature", "isotonic"], chunk_rows=500,
                  progress=lambda done: events.append(done),
                  stage=lambda name, rows: events.append((name.split(":")[0], rows)))
    assert events == ([("pass 1/2", N), N, ("fit 1/2", None), ("fit 2/2", None), ("pass 2/2", N)]
                      + [N + min(N, a + 500) for a in range(0, N, 500)])


def test_a_dump_without_labels_is_refused_before_any_read(tmp_path):
    z, _ = logits()
    np.save(tmp_path / "z.npy", z)
    dump = io.open_dump(tmp_path / "z.npy", from_logits=True)
    with pytest.raises(io.DumpError, match="no labels"):
        report.report(dump, val_mask=io.split_mask(N, 0.1), methods=["temperature"])


def test_bad_validation_row_is_named_after_the_raw_pass(tmp_path):
    """A NaN in a validation row is named by the fit, one in an evaluation row by pass 2: each by its row in
    the whole dump."""
    z, y = logits(seed=9)
    mask = io.split_mask(N, 0.2)
    for row in (int(np.flatnonzero(mask)[17]), int(np.flatnonzero(~mask)[1234])):
        zz = z.copy()
        zz[row, 4] = np.inf
        np.save(tmp_path / "z.npy", zz)
        np.save(tmp_path / "y.npy", y)
        dump = io.open_dump(tmp_path / "z.npy", labels=tmp_path / "y.npy", from_logits=True)
        with pytest.raises(io.DumpError, match=rf"\[{row}, 4\] = inf"):
            report.report(dump, val_mask=mask, methods=["temperature"], chunk_rows=300)


def test_calibrators_are_fitted_and_applied_with_the_reports_backend(backend, monkeypatch):
    """``report(backend=...)`` fits every calibrator with that backend's kernels (not "auto")."""
    made = []
    make = report.make_calibrator

    def spy(method, from_logits, backend="auto"):
        c = make(method, from_logits, backend)
        made.append((method, c.get_params().get("backend")))
        return c

    monkeypatch.setattr(report, "make_calibrator", spy)
    z, y = logits()
    r = report.report(io.Dump(z, y, True, "arrays"), val_mask=io.split_mask(N, 0.2),
                      methods=["temperature", "vector", "isotonic", "histogram"], backend=backend)
    fitted = [(m, b) for m, b in made if m in r["rows"]]
    assert {m for m, _ in fitted} == {"histogram", "isotonic", "temperature", "vector"}
    assert all(b == backend for _, b in fitted)
