"""`calibkit report --html`: one self-contained page, its sections and numbers, written atomically."""

import base64
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit import cli, io

pytest.importorskip("matplotlib")


class Page(html.parser.HTMLParser):
    """The parts of the page the tests look at: section ids, headings, tables (cell texts), every attribute."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.headings, self.tables, self.attrs, self.tags = [], [], {}, [], []
        self._section = self._heading = self._cell = None
        self._row = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, k, v) for k, v in attrs)
        a = dict(attrs)
        if tag == "section":
            self._section = a.get("id")
            self.sections.append(self._section)
            self.tables.setdefault(self._section, [])
        elif tag == "h2":
            self._heading = ""
        elif tag == "table":
            self.tables.setdefault(self._section, []).append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self.headings.append(self._heading)
            self._heading = None
        elif tag in ("td", "th"):
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr":
            self.tables[self._section][-1].append(self._row)

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data
        if self._cell is not None:
            self._cell += data


def _dump(tmp_path, n_val=1500, n_test=2500, k=5, seed=0):
    rng = np.random.default_rng(seed)

    def part(n):
        z = (rng.normal(size=(n, k)) * 3).astype(np.float32)
        return z, np.argmax(z / 2.0 + rng.gumbel(size=(n, k)), axis=1)

    (zv, yv), (zt, yt) = part(n_val), part(n_test)
    path = tmp_path / "model_dump.npz"
    np.savez(path, val_logits=zv, val_labels=yv, test_logits=zt, test_labels=yt)
    return path, (zv, yv), (zt, yt)


def _no_external_reference(text):
    """No URL, script, stylesheet link or CSS url(): the page must open offline (data: URIs taken out first)."""
    page = Page(text)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    for tag, key, value in page.attrs:
        if key in ("src", "href", "srcset", "action", "data", "poster"):
            assert value.startswith("data:image/png;base64,"), (tag, key, value[:80])
    bare = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert "://" not in bare and "url(" not in bare and "@import" not in bare
    return page


def test_html_report_sections_numbers_and_no_network(tmp_path, capsys):
    path, _, (zt, yt) = _dump(tmp_path)
    out, js = tmp_path / "report.html", tmp_path / "r.json"
    assert cli.main(["report", str(path), "--calibrate", "temperature,isotonic", "--html", str(out), "--json",
                     str(js), "--quiet"]) == 0
    capsys.readouterr()
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    page = _no_external_reference(text)
    assert page.sections == ["provenance", "metrics", "reliability", "per-class", "selective"]
    assert page.headings == ["Dump", "Metrics before and after calibration", "Reliability diagrams", "Per class",
                             "Selective prediction"]
    r = json.loads(js.read_text())

    prov = {row[0]: row[1] for row in page.tables["provenance"][0][1:]}
    assert prov["path"] == str(path) and prov["split"] == "test" and prov["rows in the dump"] == "2,500"
    assert prov["classes"] == "5" and prov["scores read as"] == "logits" and prov["validation rows"] == "1,500"
    assert "model_dump.npz:test_logits" in prov["dump"] and "val split" in prov["validation"]

    head, *rows = page.tables["metrics"][0]
    assert [row[0] for row in rows] == ["raw", "temperature", "isotonic"]
    for row in rows:
        for col in ("ece", "nll", "brier"):
            assert row[head.index(col)] == f"{r['rows'][row[0]][col]:.5f}"
    assert "temperature_ = " in rows[1][-1]

    # the images are real PNGs
    pngs = [base64.b64decode(v.split(",", 1)[1]) for t, k, v in page.attrs if t == "img" and k == "src"]
    assert len(pngs) == 2 and all(p[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    # per class: worst first, the numbers of the rows evaluated
    head, *rows = page.tables["per-class"][0]
    assert head[:4] == ["class", "rows labelled", "accuracy on them (raw)", "class-wise ECE (raw)"]
    raw_ece = [float(row[3]) for row in rows]
    assert raw_ece == sorted(raw_ece, reverse=True)
    pred = np.argmax(zt, axis=1)
    for row in rows:
        c = int(row[0])
        assert int(row[1].replace(",", "")) == np.sum(yt == c)
        assert float(row[2]) == pytest.approx(np.mean(pred[yt == c] == c), abs=5e-6)
    assert np.mean(r["per_class"]["classwise_ece"]["raw"]) == pytest.approx(r["rows"]["raw"]["classwise_ece"],
                                                                             rel=1e-9)

    # selective prediction: the AURC of the evaluated rows
    conf = np.max(np.exp(zt - zt.max(1, keepdims=True)) / np.exp(zt - zt.max(1, keepdims=True)).sum(1,
                                                                                                  keepdims=True), 1)
    aurc = calibkit.aurc(conf.astype(np.float64), pred == yt)
    assert r["selective"]["aurc"] == pytest.approx(aurc, rel=1e-6)
    assert page.tables["selective"][0][1][0] == f"{r['selective']['aurc']:.5f}"


def test_html_of_a_binary_dump_and_a_val_fraction(tmp_path, capsys):
    rng = np.random.default_rng(1)
    p = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < p ** 1.5).astype(np.int64)
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "b.html"
    assert cli.main(["report", str(tmp_path / "p.npy"), "--labels", str(tmp_path / "y.npy"), "--html", str(out),
                     "--quiet"]) == 0
    capsys.readouterr()
    page = _no_external_reference(out.read_text())
    head, *rows = page.tables["per-class"][0]
    assert head == ["class", "rows labelled", "accuracy on them (raw)"]
    acc = [float(r[2]) for r in rows]
    assert acc == sorted(acc) and sum(int(r[1].replace(",", "")) for r in rows) == 2000
    z = rng.normal(size=(3000, 3)).astype(np.float32)
    np.save(tmp_path / "z_logits.npy", z)
    np.save(tmp_path / "zy.npy", rng.integers(0, 3, 3000))
    assert cli.main(["report", str(tmp_path / "z_logits.npy"), "--labels", str(tmp_path / "zy.npy"),
                     "--val-fraction", "0.3", "--calibrate", "temperature", "--html", str(out), "--quiet"]) == 0
    capsys.readouterr()
    page = _no_external_reference(out.read_text())
    prov = {row[0]: row[1] for row in page.tables["provenance"][0][1:]}
    mask = io.split_mask(3000, 0.3)
    assert prov["rows evaluated"] == f"{np.sum(~mask):,}" and "--val-fraction" in prov["validation"]


def test_html_never_partial_never_over_an_input(tmp_path, capsys):
    path, _, (zt, _) = _dump(tmp_path, 200, 300)
    out = tmp_path / "report.html"
    out.write_text("the previous report")
    bad = tmp_path / "bad_logits.npy"
    z = zt.copy()
    z[250, 1] = np.nan
    np.save(bad, z)
    np.save(tmp_path / "y.npy", np.zeros(300, dtype=np.int64))
    code = cli.main(["report", str(bad), "--labels", str(tmp_path / "y.npy"), "--html", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "scores[250, 1] = nan" in err
    assert out.read_text() == "the previous report"
    assert not [n for n in os.listdir(tmp_path) if ".calibkit-tmp-" in n]
    before = path.read_bytes()
    assert cli.main(["report", str(path), "--html", str(path), "--quiet"]) == 2
    assert "is the same file as the input" in capsys.readouterr().err and path.read_bytes() == before


def test_html_screenshot_in_headless_chromium(tmp_path, capsys):
    """Render the page in headless Chromium when it is installed (skipped otherwise: no browser here)."""
    playwright = pytest.importorskip("playwright.sync_api")
    path, _, _ = _dump(tmp_path, 300, 500)
    out = tmp_path / "report.html"
    assert cli.main(["report", str(path), "--calibrate", "temperature", "--html", str(out), "--quiet"]) == 0
    capsys.readouterr()
    shot = tmp_path / "report.png"
    code = f"""
import sys
from playwright.sync_api import sync_playwright
with sync_playwright() as p:
    try:
        browser = p.chromium.launch()
    except Exception as exc:
        print("no chromium:", str(exc).splitlines()[0]); sys.exit(3)
    page = browser.new_page(viewport={{"width": 1200, "height": 900}})
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
               else route.continue_())
    page.goto({out.as_uri()!r})
    sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.complete])")
    print(sizes)
    page.screenshot(path={str(shot)!r}, full_page=True)
    browser.close()
"""
    del playwright
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[0," not in r.stdout  # every image decoded
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("CALIBKIT_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_html_per_class_table_is_capped_at_the_worst_classes(tmp_path, capsys, monkeypatch):
    from calibkit import html

    monkeypatch.setattr(html, "MAX_CLASS_ROWS", 2)
    path, _, _ = _dump(tmp_path, 200, 400)
    out = tmp_path / "r.html"
    assert cli.main(["report", str(path), "--html", str(out), "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    capsys.readouterr()
    text = out.read_text()
    page = Page(text)
    _, *rows = page.tables["per-class"][0]
    ece = json.loads((tmp_path / "r.json").read_text())["per_class"]["classwise_ece"]["raw"]
    assert [int(r[0]) for r in rows] == list(np.argsort(ece)[::-1][:2])
    assert "The 2 worst of 5 classes are shown." in text
