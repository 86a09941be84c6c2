"""The dense adapter (calibkit._dense): (N, K, *spatial) scores read in place as row pieces.

The pieces, concatenated, must be exactly the explicit flattened copy with the
ignored pixels removed, for every layout; they are views of the caller's array
when no pixel is ignored; bad elements are named at their place in the
caller's arrays.
"""

import re

import numpy as np
import pytest

from calibkit import _backend
from calibkit._dense import as_dense, check_class_axis, flatten_reference

rng = np.random.default_rng(0)
X = rng.normal(size=(3, 5, 7, 11)).astype(np.float32)
Y = rng.integers(0, 5, (3, 7, 11))


def _pieces(s, lab, **kw):
    piece_rows = kw.pop("piece_rows", None)
    d = as_dense(s, lab, **kw)
    return d, list(d.pieces(piece_rows))


LAYOUTS = {
    "class-second": (X, Y, 1),
    "channel-last": (np.ascontiguousarray(np.moveaxis(X, 1, -1)), Y, -1),
    "fortran": (np.asfortranarray(X), Y, 1),
    "sliced": (X[:, :, ::2, 1:], Y[:, ::2, 1:], 1),
    "reversed": (X[::-1, :, :, ::-1], Y[::-1, :, ::-1], 1),
    "float16-5d": (X.astype(np.float16)[..., None], Y[..., None], 1),
    "float64-labels-uint8": (X.astype(np.float64), Y.astype(np.uint8), 1),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("piece_rows", [None, 10])
@pytest.mark.parametrize("split_images", [False, True])
def test_pieces_are_the_flattened_rows(layout, piece_rows, split_images):
    s, lab, axis = LAYOUTS[layout]
    d, ps = _pieces(s, lab, axis=axis, piece_rows=piece_rows, split_images=split_images)
    fs, fl, _ = flatten_reference(s, lab, axis=axis)
    assert np.array_equal(np.concatenate([p.scores for p in ps]), fs)
    assert np.array_equal(np.concatenate([p.labels for p in ps]), fl)
    assert all(np.shares_memory(p.scores, s) for p in ps)  # views, never copies
    assert [p.offset for p in ps] == list(np.cumsum([0] + [p.n_rows for p in ps[:-1]]))
    assert d.n_kept() == fs.shape[0]
    if split_images:
        assert all(p.image is not None for p in ps)
    for p in ps:
        if p.image is not None:  # the piece's rows are in that image
            lo, hi = d.position(p, 0), d.position(p, p.n_rows - 1)
            assert lo[0] == hi[0] == p.image


def test_channel_last_is_one_view():
    s, lab, axis = LAYOUTS["channel-last"]
    d, ps = _pieces(s, lab, axis=axis)
    assert len(ps) == 1 and ps[0].scores.shape == (3 * 7 * 11, 5)


@pytest.mark.parametrize("layout", ["class-second", "channel-last", "sliced"])
def test_ignore_index_mask_and_weights(layout):
    s, lab, axis = LAYOUTS[layout]
    lab = lab.copy()
    lab[0, :2] = 255
    mask = rng.random(lab.shape) > 0.2
    w = rng.random(lab.shape)
    d, ps = _pieces(s, lab, axis=axis, ignore_index=255, mask=mask, sample_weight=w, piece_rows=16)
    fs, fl, fw = flatten_reference(s, lab, axis=axis, mask=mask, ignore_index=255, sample_weight=w)
    assert np.array_equal(np.concatenate([p.scores for p in ps]), fs)
    assert np.array_equal(np.concatenate([p.labels for p in ps]), fl)
    assert np.array_equal(np.concatenate([p.sample_weight for p in ps]), fw)
    assert d.n_kept() == fs.shape[0] == d.check_some_kept()
    # every row of a piece maps back to a kept pixel holding that row's label
    for p in ps[:3]:
        for i in (0, p.n_rows - 1):
            assert lab[d.position(p, i)] == p.labels[i] != 255


def test_all_ignored_is_a_clear_error():
    d = as_dense(X, np.full(Y.shape, 255), ignore_index=255)
    with pytest.raises(ValueError, match=r"every pixel of scores is ignored \(labels == ignore_index=255"):
        d.check_some_kept()
    d = as_dense(X, Y, mask=np.zeros(Y.shape, bool))
    with pytest.raises(ValueError, match="mask is False everywhere"):
        d.check_some_kept()


def test_out_pieces_write_the_map():
    out = np.zeros((3, 7, 11))
    d = as_dense(X, out=out)
    for p in d.pieces(piece_rows=13):
        p.out[:] = p.scores.max(axis=1)
    assert np.array_equal(out, X.max(axis=1))


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: as_dense(X[0, 0, 0]), ValueError, r"shape \(N, K\) or \(N, K, \*spatial\)"),
    (lambda: as_dense(X, Y[:, :3]), ValueError, r"labels must have shape \(3, 7, 11\)"),
    (lambda: as_dense(X, Y, axis=2), ValueError, "axis must be 1"),
    (lambda: as_dense(X, Y, axis=1.0), TypeError, "axis must be an integer"),
    (lambda: as_dense(X, Y.astype(float)), TypeError, "labels must be integers"),
    (lambda: as_dense(X, Y, mask=np.ones(Y.shape)), TypeError, "mask must be a boolean array"),
    (lambda: as_dense(X, Y, ignore_index=2.5), TypeError, "ignore_index must be an integer"),
    (lambda: as_dense(X, out=np.zeros((3, 7, 11), np.int32)), TypeError, "out must be a float array"),
    (lambda: as_dense(X, out=np.zeros((3, 7, 11)), out_dtype=np.float32), TypeError, "out must have dtype"),
    (lambda: as_dense(X[:, :1]), ValueError, "at least 2 classes"),
    (lambda: as_dense(X[:0]), ValueError, "is empty"),
    (lambda: as_dense(X, out=X[:, 0]), ValueError, "out overlaps scores"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_check_class_axis():
    assert check_class_axis(1, 4) == 1 and check_class_axis(-1, 4) == 3 and check_class_axis(3, 4) == 3


@pytest.mark.parametrize("axis", [1, -1])
def test_errors_name_the_element_in_the_callers_coordinates(backend, axis):
    k = _backend.kernels(backend)
    x = X.copy()
    x[1, 3, 2, 5] = np.nan
    y = Y.copy()
    y[2, 4, 6] = 9
    xs = x if axis == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
    where = "scores[1, 3, 2, 5]" if axis == 1 else "scores[1, 2, 5, 3]"
    for lab, msg in ((Y, re.escape(where) + " = nan is not finite"),
                     (y, r"labels\[2, 4, 6\] = 9 is out of range for n_classes=5")):
        xx = xs if lab is Y else (X if axis == 1 else np.ascontiguousarray(np.moveaxis(X, 1, -1)))
        d = as_dense(xx, lab, axis=axis)
        with pytest.raises(ValueError, match=msg):
            for p in d.pieces(piece_rows=8):
                r = k.top_label_stats(p.scores, p.labels, None, True, 15, 1e-7, False)
                d.raise_for_status(r["status"], p, n_classes=5)


def test_two_dimensional_scores_take_the_same_path():
    s = X[:, :, 0, 0]
    lab = Y[:, 0, 0].copy()
    lab[1] = 255
    d, ps = _pieces(s, lab, ignore_index=255, piece_rows=2)
    fs, fl, _ = flatten_reference(s, lab, ignore_index=255)
    assert np.array_equal(np.concatenate([p.scores for p in ps]), fs) and fs.shape == (2, 5)
    assert np.array_equal(np.concatenate([p.labels for p in ps]), fl)


@pytest.mark.parametrize("axis", [1, -1])
def test_scores_shaped_out_and_in_place(axis):
    s = X.astype(np.float64) if axis == 1 else np.ascontiguousarray(np.moveaxis(X, 1, -1)).astype(np.float64)
    out = np.zeros_like(s)
    d = as_dense(s, out=out, axis=axis, out_like_scores=True)
    for p in d.pieces(piece_rows=13):
        assert p.out.shape == p.scores.shape
        p.out[:] = 2 * p.scores
    assert np.array_equal(out, 2 * s)
    with pytest.raises(ValueError, match="out overlaps scores"):
        as_dense(s, out=s, axis=axis, out_like_scores=True)
    t = s.copy()
    d = as_dense(t, out=t, axis=axis, out_like_scores=True, allow_in_place=True)
    for p in d.pieces(piece_rows=13):
        p.out[:] = 2 * p.scores
    assert np.array_equal(t, 2 * s)
    with pytest.raises(ValueError, match="only out=scores itself"):
        as_dense(t[:, :, 1:], out=t[:, :, :-1], axis=axis, out_like_scores=True, allow_in_place=True)


@pytest.mark.parametrize("layout", ["class-second", "channel-last", "sliced", "reversed"])
def test_values_of_another_map_at_the_pieces_rows(layout):
    s, lab, axis = LAYOUTS[layout]
    lab = lab.copy()
    lab[0, :2] = 255
    other = np.asfortranarray(rng.random(lab.shape))  # another layout than the scores'
    d, ps = _pieces(s, lab, axis=axis, ignore_index=255, piece_rows=16)
    _, _, want = flatten_reference(s, lab, axis=axis, ignore_index=255, sample_weight=other)
    assert np.array_equal(np.concatenate([d.values(other, p) for p in ps]), want)


@pytest.mark.parametrize("layout", ["class-second", "channel-last", "sliced"])
@pytest.mark.parametrize("stride", [2, 3, 7])
@pytest.mark.parametrize("ignore", [False, True])
def test_stride_is_every_stride_th_kept_row(layout, stride, ignore):
    s, lab, axis = LAYOUTS[layout]
    lab = lab.copy()
    if ignore:
        lab[0, :2] = 255
        lab[2, 3:5] = 255
    d = as_dense(s, lab, axis=axis, ignore_index=255 if ignore else None, sample_weight=np.ones(lab.shape))
    ps = list(d.pieces(10, stride=stride))
    fs, fl, _ = flatten_reference(s, lab, axis=axis, ignore_index=255 if ignore else None)
    assert np.array_equal(np.concatenate([p.scores for p in ps]), fs[::stride])
    assert np.array_equal(np.concatenate([p.labels for p in ps]), fl[::stride])
    assert [p.offset for p in ps] == list(np.cumsum([0] + [p.n_rows for p in ps[:-1]]))
    for p in ps:
        for i in range(p.n_rows):
            assert lab[d.position(p, i)] == p.labels[i]
