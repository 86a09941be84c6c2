"""calibkit.plot: the user's backend stays, ax=, every colour in the legend, one histogram scale, titles,
from_predictions-style displays, risk-coverage and OOD ROC plots."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit import plot

matplotlib = pytest.importorskip("matplotlib")
from matplotlib.colors import to_rgba


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _data(n=4000, k=4, seed=0, temperature=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 3
    y = np.argmax(z / temperature + rng.gumbel(size=(n, k)), axis=1)
    return z, y


def _mixed_table():
    """A table with over-confident bins (high confidence) and under-confident ones (low confidence)."""
    z, y = _data()
    return calibkit.reliability_table(z, y, from_logits=True, n_bins=10)


def test_the_users_backend_is_never_switched():
    assert "matplotlib.use(" not in pathlib.Path(plot.__file__).read_text()
    code = """
import matplotlib, numpy as np, calibkit
from calibkit import plot
rng = np.random.default_rng(0)
z = rng.normal(size=(500, 3)); y = rng.integers(0, 3, 500)
t = calibkit.reliability_table(z, y, from_logits=True)
plot.reliability_diagram(t)
plot.ReliabilityDisplay.from_predictions(z, y, from_logits=True)
plot.RiskCoverageDisplay.from_predictions(z, y, from_logits=True)
plot.OODRocDisplay.from_scores(rng.normal(1, 1, 200), rng.normal(0, 1, 300))
print(matplotlib.get_backend())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, MPLBACKEND="svg"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().lower() == "svg"


def test_report_figure_and_path_do_not_touch_pyplot(tmp_path):
    """Figures saved to a file (and the CLI's) are plain Figures: nothing left open in pyplot."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    t = _mixed_table()
    fig = plot.reliability_diagram([t, t], titles=["a", "b"], path=tmp_path / "r.png")
    assert plt.get_fignums() == before and fig.canvas.manager is None
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def _facecolors(ax):
    return {to_rgba(p.get_facecolor())[:3] for p in ax.patches}


def _legend_colours(ax):
    leg = ax.get_legend()
    out = set()
    for h in leg.legend_handles:
        if hasattr(h, "get_facecolor") and not hasattr(h, "get_xdata"):
            out.add(to_rgba(h.get_facecolor())[:3])
        else:
            out.add(to_rgba(h.get_color())[:3])
    return out


def _line_colours(ax):
    return {to_rgba(line.get_color())[:3] for line in ax.lines}


def test_every_drawn_colour_is_a_legend_entry():
    t = _mixed_table()
    filled = t.weight > 0
    assert np.any(t.gap[filled] > 0) and np.any(t.gap[filled] < 0)  # both kinds of bins are drawn
    fig = plot.reliability_diagram(t, name="dump.npz")
    top, bottom = fig.axes[:2]
    for ax in (top, bottom):
        drawn = _facecolors(ax) | _line_colours(ax)
        assert drawn <= _legend_colours(ax), (drawn, _legend_colours(ax))
        # opaque patches only: no blend of two colours where bars overlap
        assert all(to_rgba(p.get_facecolor())[3] == 1.0 for p in ax.patches)
    labels = [x.get_text() for x in top.get_legend().get_texts()]
    assert any("over-confident" in x for x in labels) and any("under-confident" in x for x in labels)
    assert to_rgba(plot.UNDER)[:3] in _facecolors(top) and to_rgba(plot.OVER)[:3] in _facecolors(top)


def test_histograms_share_one_scale_and_the_figure_names_the_dump_and_n():
    z, y = _data()
    sharp = calibkit.reliability_table(z * 5, y, from_logits=True)  # almost all rows in the last bin
    soft = calibkit.reliability_table(z / 5, y, from_logits=True)
    fig = plot.reliability_diagram([soft, sharp], titles=["soft", "sharp"], name="val.npz")
    bottoms = fig.axes[2:]
    assert len(bottoms) == 2 and bottoms[0].get_ylim() == bottoms[1].get_ylim()
    top = max(p.get_height() for ax in bottoms for p in ax.patches)
    assert bottoms[0].get_ylim()[1] >= top
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "val.npz" in title and "N = 4,000" in title


def test_ax_is_used_and_checked():
    import matplotlib.pyplot as plt

    t = _mixed_table()
    fig, axes = plt.subplots(2, 2)
    assert plot.reliability_diagram([t, t], ax=axes) is fig
    assert all(ax.patches for ax in axes.ravel())
    assert fig._suptitle is None  # the user's figure: its title is theirs
    fig1, ax = plt.subplots()
    assert plot.reliability_diagram(t, ax=ax) is fig1 and ax.patches
    with pytest.raises(ValueError, match=r"ax must be an Axes .* or a \(2, 2\) array of Axes"):
        plot.reliability_diagram([t, t], ax=axes[0])
    with pytest.raises(ValueError, match="one Axes for 2 tables"):
        plot.reliability_diagram([t, t], ax=ax)
    with pytest.raises(TypeError, match="ReliabilityTable"):
        plot.reliability_diagram([])
    with pytest.raises(ValueError, match="titles"):
        plot.reliability_diagram([t, t], titles=["one"])


def test_reliability_display_from_predictions():
    import matplotlib.pyplot as plt

    z, y = _data()
    fig, axes = plt.subplots(2, 1)
    disp = plot.ReliabilityDisplay.from_predictions(z, y, from_logits=True, n_bins=12, name="m", ax=axes)
    want = calibkit.reliability_table(z, y, from_logits=True, n_bins=12)
    np.testing.assert_array_equal(disp.table_.count, want.count)
    np.testing.assert_array_equal(disp.table_.accuracy, want.accuracy)
    assert disp.figure_ is fig and disp.ax_ == (axes[0], axes[1])
    own = plot.ReliabilityDisplay.from_predictions(z, y, from_logits=True)
    assert len(own.ax_) == 2 and own.figure_ is own.ax_[0].figure


def test_risk_coverage_display_and_plot():
    import matplotlib.pyplot as plt

    z, y = _data()
    disp = plot.RiskCoverageDisplay.from_predictions(z, y, from_logits=True, name="m")
    p = np.exp(z - z.max(1, keepdims=True))
    conf = p.max(1) / p.sum(1)
    correct = z.argmax(1) == y
    want = calibkit.risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(disp.curve_.coverage, want.coverage)
    np.testing.assert_allclose(disp.curve_.risk, want.risk)
    assert disp.aurc_ == pytest.approx(calibkit.aurc(conf, correct), rel=1e-12)
    assert "N = 4,000" in disp.figure_._suptitle.get_text()
    label = disp.ax_.get_legend().get_texts()[0].get_text()
    assert f"AURC = {disp.aurc_:.4f}" in label
    fig, ax = plt.subplots()
    assert plot.risk_coverage_plot(want, ax=ax) is fig
    with pytest.raises(TypeError, match="RiskCoverageCurve"):
        plot.risk_coverage_plot(np.zeros(3))
    with pytest.raises(ValueError, match=r"labels must have shape \(4000,\)"):
        plot.RiskCoverageDisplay.from_predictions(z, y[:10])


def test_ood_roc_display_matches_scikit_learn(backend):
    rng = np.random.default_rng(3)
    s_in = np.round(rng.normal(1.0, 1.0, 700), 2)  # ties, as real scores have
    s_out = np.round(rng.normal(0.0, 1.0, 500), 2)
    disp = plot.OODRocDisplay.from_scores(s_in, s_out, name="msp", backend=backend)
    assert disp.fpr_[0] == 0 and disp.tpr_[0] == 0 and disp.fpr_[-1] == 1 and disp.tpr_[-1] == 1
    assert disp.auroc_ == pytest.approx(calibkit.auroc(s_in, s_out), rel=1e-12)
    metrics = pytest.importorskip("sklearn.metrics")
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    fpr, tpr, _ = metrics.roc_curve(y, np.r_[s_in, s_out], drop_intermediate=False)
    np.testing.assert_allclose(disp.fpr_, fpr, rtol=1e-12)
    np.testing.assert_allclose(disp.tpr_, tpr, rtol=1e-12)
    assert np.trapezoid(disp.tpr_, disp.fpr_) == pytest.approx(disp.auroc_, rel=1e-12)


def test_long_curves_are_drawn_thinned():
    rng = np.random.default_rng(4)
    conf = rng.uniform(size=50_000)
    curve = calibkit.risk_coverage_curve(conf, rng.uniform(size=50_000) < conf)
    fig = plot.risk_coverage_plot(curve)
    xs = fig.axes[0].lines[0].get_xdata()
    assert len(xs) <= 2001 and xs[-1] == 1.0
