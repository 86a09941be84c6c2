"""plot.uncertainty_map / plot.uncertainty_image: one image of dense scores, its uncertainty and error maps.

The maps must equal the row functions of calibkit.uncertainty on that image's explicitly flattened rows (the
same kernels on the same rows: bit for bit), for every layout; the figure renders on a plain Figure (Agg)
and is written through a temporary renamed into place.
"""

import os

import numpy as np
import pytest

import calibkit
from calibkit import plot

rng = np.random.default_rng(0)
X = (2.0 * rng.normal(size=(3, 4, 12, 10))).astype(np.float32)
Y = rng.integers(0, 4, (3, 12, 10))
Y[:, :2] = 255
M = np.ones(Y.shape, bool)
M[:, :, -1] = False


def _ref(s, axis, image, score, from_logits=True, backend="auto"):
    img = np.moveaxis(np.asarray(s), axis, -1)[image]
    rows = np.ascontiguousarray(img.reshape(-1, img.shape[-1]))
    kw = {} if score == "energy" else {"from_logits": from_logits}
    return getattr(calibkit, score)(rows, backend=backend, **kw).reshape(img.shape[:-1]), rows.argmax(axis=1)


def _layouts(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=X.shape)
    mm[...] = X
    mm.flush()
    return {
        "float32": (X, Y, M, 1),
        "float16-memmap": (np.load(tmp_path / "x.npy", mmap_mode="r"), Y, M, 1),
        "float64": (X.astype(np.float64), Y, M, 1),
        "channel-last": (np.ascontiguousarray(np.moveaxis(X, 1, -1)), Y, M, -1),
        "fortran": (np.asfortranarray(X), np.asfortranarray(Y), M, 1),
        "sliced": (X[:, :, ::2, 1:], Y[:, ::2, 1:], M[:, ::2, 1:], 1),
    }


@pytest.mark.parametrize("score", sorted(plot.MAP_SCORES))
@pytest.mark.parametrize("layout", ["float32", "float16-memmap", "float64", "channel-last", "fortran", "sliced"])
def test_maps_equal_the_flattened_rows(tmp_path, layout, score, backend):
    s, y, m, axis = _layouts(tmp_path)[layout]
    before = (np.array(s, copy=True), y.copy())
    maps = plot.uncertainty_image(s, y, image=2, axis=axis, from_logits=True, score=score, ignore_index=255,
                                  mask=m, backend=backend)
    want, pred = _ref(s, axis, 2, score, backend=backend)
    np.testing.assert_array_equal(maps["uncertainty"], want)
    lab, keep = y[2].reshape(-1), m[2].reshape(-1)
    ignored = (lab == 255) | ~keep
    err = np.where(ignored, 2, pred != lab).reshape(y.shape[1:])
    np.testing.assert_array_equal(maps["error"], err)
    assert maps["error_rate"] == pytest.approx(np.mean(pred[~ignored] != lab[~ignored]), rel=1e-15)
    np.testing.assert_array_equal(np.asarray(s), before[0])  # the input is never modified
    np.testing.assert_array_equal(y, before[1])


def test_volumes_and_probabilities():
    s = rng.dirichlet(np.ones(3), size=(2, 5, 6, 7)).transpose(0, 4, 1, 2, 3)  # (2, 3, 5, 6, 7) probabilities
    y = rng.integers(0, 3, (2, 5, 6, 7))
    maps = plot.uncertainty_image(s, y, image=1, score="max_probability")
    assert maps["section"] == (2,)
    want = calibkit.max_probability(np.ascontiguousarray(np.moveaxis(s[1, :, 2], 0, -1).reshape(-1, 3)))
    np.testing.assert_array_equal(maps["uncertainty"].reshape(-1), want)
    maps = plot.uncertainty_image(s, y, image=0, score="margin", section=[4])
    want = calibkit.margin(np.ascontiguousarray(np.moveaxis(s[0, :, 4], 0, -1).reshape(-1, 3)))
    np.testing.assert_array_equal(maps["uncertainty"].reshape(-1), want)
    no_labels = plot.uncertainty_image(s, image=0)
    assert no_labels["error"] is None and no_labels["error_rate"] is None


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(score="variance"), ValueError, r"score must be one of 'entropy'"),
    (dict(score="energy", from_logits=False), ValueError, r"score='energy' needs logits"),
    (dict(image=3), ValueError, r"image must be in \[0, 3\)"),
    (dict(image=1.0), TypeError, r"image must be an integer"),
    (dict(axis=2), ValueError, r"axis must be 1"),
    (dict(labels=Y[:, :-1]), ValueError, r"labels must have shape \(3, 12, 10\)"),
    (dict(labels=Y.astype(float)), TypeError, r"labels must be integers"),
    (dict(mask=M.astype(int)), TypeError, r"mask must be a boolean array"),
    (dict(scores=X[:, :, 0]), ValueError, r"scores must have shape \(N, K, H, W\)"),
    (dict(section=[1]), ValueError, r"section must give one index"),
    (dict(labels=None, mask=M), ValueError, r"mask marks the pixels of the error map .* give the labels too"),
])
def test_bad_input(kwargs, exc, pattern):
    kw = dict(scores=X, labels=Y, from_logits=True, ignore_index=255)
    kw.update(kwargs)
    with pytest.raises(exc, match=pattern):
        plot.uncertainty_image(kw.pop("scores"), kw.pop("labels"), **kw)


def test_bad_elements_are_named_at_their_pixel():
    y = Y.copy()
    y[1, 7, 5] = 40
    with pytest.raises(ValueError, match=r"^labels\[1, 7, 5\] = 40 is out of range for n_classes=4$"):
        plot.uncertainty_image(X, y, image=1, from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match=r"labels\[1, 0, 0\] = 255 is out of range .* give ignore_index=255"):
        plot.uncertainty_image(X, Y, image=1, from_logits=True)
    x = X.copy()
    x[2, 1, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"^scores\[2, 1, 3, 4\] = nan is not finite"):
        plot.uncertainty_image(x, Y, image=2, from_logits=True, ignore_index=255)
    with pytest.raises(ValueError, match=r"^scores\[2, 3, 4, 1\] = nan is not finite"):
        plot.uncertainty_image(np.moveaxis(x, 1, -1), Y, image=2, axis=-1, from_logits=True, ignore_index=255)


def test_figure_renders_and_is_written_through_a_temporary(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "map.png"
    out.write_bytes(b"old")
    fig = plot.uncertainty_map(X, Y, image=1, from_logits=True, ignore_index=255, mask=M, path=out)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["map.png"]  # no temporary left
    assert len(fig.axes) == 4  # two maps, two colour bars
    assert "error rate" in fig._suptitle.get_text()
    # without labels: one map and its colour bar; an SVG by its suffix
    fig = plot.uncertainty_map(X, image=0, from_logits=True, score="energy", path=tmp_path / "m.svg")
    assert len(fig.axes) == 2 and (tmp_path / "m.svg").read_text().lstrip().startswith("<?xml")
    # a folder that does not exist: nothing written
    with pytest.raises(FileNotFoundError):
        plot.uncertainty_map(X, Y, from_logits=True, ignore_index=255, path=tmp_path / "no" / "m.png")
    assert sorted(os.listdir(tmp_path)) == ["m.svg", "map.png"]


def test_into_given_axes():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    fig = Figure()
    axes = fig.subplots(1, 2)
    assert plot.uncertainty_map(X, Y, ax=axes, from_logits=True, ignore_index=255) is fig
    with pytest.raises(ValueError, match=r"ax must be a pair of Axes"):
        plot.uncertainty_map(X, Y, ax=axes[0], from_logits=True, ignore_index=255)
    fig = Figure()
    one = fig.subplots()
    assert plot.uncertainty_map(X, ax=one, from_logits=True) is fig
