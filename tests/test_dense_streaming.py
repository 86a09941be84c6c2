"""Streaming accumulators on dense batches (issue 17): (B, K, *spatial) maps, ignore_index, mask.

A dense update must add what one update with the explicitly flattened kept rows
(``calibkit._dense.flatten_reference``) adds: counts exactly, the equal-width
bins, fine histogram and bootstrap replicates bit-for-bit (each piece here is at
most one kernel chunk, so its rows go into the state in the flattened order),
the totals to rounding (they are summed per piece, i.e. per image of
class-second maps, then added to the state).
"""

import re

import numpy as np
import pytest

import calibkit
from calibkit._dense import flatten_reference

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

rng = np.random.default_rng(17)
N, K, H, W = 3, 5, 6, 8
Z = rng.normal(size=(N, K, H, W)) * 2
Y = rng.integers(0, K, (N, H, W))
Y[0, :2] = 255
Y[2, 3, 4:] = 255
MASK = rng.random((N, H, W)) > 0.2
WEIGHT = rng.random((N, H, W)) + 0.1

RESULT_FIELDS = ("ece", "mce", "rmsce", "ace", "ace_bound", "accuracy", "mean_confidence", "brier", "nll",
                 "weight", "classwise_ece", "ece_se")


def layout(name, dtype, tmp_path):
    """(scores, labels, mask, weight, axis) of one memory layout, the same pixels in every one."""
    z = Z.astype(dtype)
    if name == "class-second":
        return z, Y, MASK, WEIGHT, 1
    if name == "channel-last":
        return np.ascontiguousarray(np.moveaxis(z, 1, -1)), Y, MASK, WEIGHT, -1
    if name == "sliced":
        return z[:, :, ::2, 1:], Y[:, ::2, 1:], MASK[:, ::2, 1:], WEIGHT[:, ::2, 1:], 1
    if name == "fortran":
        return np.asfortranarray(z), np.asfortranarray(Y), MASK, np.asfortranarray(WEIGHT), 1
    if name == "memmap":
        m = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=dtype, shape=z.shape)
        m[...] = z
        m.flush()
        return np.load(tmp_path / "z.npy", mmap_mode="r"), Y, MASK, WEIGHT, 1
    raise AssertionError(name)


def assert_same_state(a, b, exact_totals=False):
    assert a.count == b.count
    np.testing.assert_array_equal(a._bins, b._bins)
    np.testing.assert_array_equal(a._fine, b._fine)
    np.testing.assert_array_equal(a._boot, b._boot)
    if a._classwise_bins is not None or b._classwise_bins is not None:
        np.testing.assert_allclose(a._classwise_bins, b._classwise_bins, rtol=1e-12, atol=1e-300)
    if exact_totals:
        np.testing.assert_array_equal(a._totals, b._totals)
    else:
        np.testing.assert_allclose(a._totals, b._totals, rtol=1e-12, atol=0)
    assert a._position == b._position and a._kind == b._kind and a._weighted == b._weighted


def assert_same_result(ra, rb, rtol=1e-12):
    assert ra.count == rb.count
    for f in RESULT_FIELDS:
        va, vb = getattr(ra, f), getattr(rb, f)
        if va is None or vb is None:
            assert va is vb, f
        else:
            np.testing.assert_allclose(va, vb, rtol=rtol, atol=1e-15, err_msg=f)
    np.testing.assert_array_equal(ra.table.count, rb.table.count)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", ["class-second", "channel-last", "sliced", "fortran", "memmap"])
def test_dense_update_equals_flattened_update(name, dtype, backend, tmp_path):
    s, y, m, w, axis = layout(name, dtype, tmp_path)
    before = [np.array(a, copy=True) for a in (s, y, m, w)]
    cfg = dict(from_logits=True, bootstrap=4, classwise=True, seed=3, backend=backend)
    dense = calibkit.CalibrationAccumulator(**cfg).update(s, y, w, axis=axis, ignore_index=255, mask=m)
    fs, fy, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
    flat = calibkit.CalibrationAccumulator(**cfg).update(fs, fy, fw)
    assert dense.count == int((m & (y != 255)).sum())
    assert_same_state(dense, flat)
    assert_same_result(dense.compute(), flat.compute())
    for a, b in zip((s, y, m, w), before):  # the inputs are never modified
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_probabilities_and_smooth(dtype, backend):
    p = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    p = p.astype(dtype)
    cfg = dict(smooth=True, backend=backend)
    dense = calibkit.CalibrationAccumulator(**cfg).update(p, Y, ignore_index=255)
    fs, fy, _ = flatten_reference(p, Y, ignore_index=255)
    flat = calibkit.CalibrationAccumulator(**cfg).update(fs, fy)
    assert_same_state(dense, flat)
    np.testing.assert_allclose(dense._smooth, flat._smooth, rtol=1e-12, atol=1e-300)
    assert_same_result(dense.compute(), flat.compute())
    np.testing.assert_allclose(dense.compute().smooth_ece, flat.compute().smooth_ece, rtol=1e-9)


def test_one_image_per_batch_equals_one_batch_to_the_bit(backend):
    """Class-second maps are read image by image: any split into whole images gives the same bits."""
    one = calibkit.CalibrationAccumulator(from_logits=True, bootstrap=3, backend=backend)
    one.update(Z, Y, WEIGHT, ignore_index=255, mask=MASK)
    many = calibkit.CalibrationAccumulator(from_logits=True, bootstrap=3, backend=backend)
    for i in range(N):
        many.update(Z[i:i + 1], Y[i:i + 1], WEIGHT[i:i + 1], ignore_index=255, mask=MASK[i:i + 1])
    assert_same_state(one, many, exact_totals=True)
    assert one.to_bytes() == many.to_bytes()


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(0, N), max_size=4), merge_at=st.integers(0, N), drop=st.floats(0, 1))
def test_any_split_and_merge_equals_one_update(cuts, merge_at, drop):
    mask = MASK | (np.random.default_rng(int(drop * 1000)).random(MASK.shape) > drop)
    kw = dict(from_logits=True, bootstrap=2)
    one = calibkit.CalibrationAccumulator(**kw).update(Z, Y, ignore_index=255, mask=mask)
    split = calibkit.CalibrationAccumulator(**kw)
    edges = [0, *sorted(cuts), N]
    for a, b in zip(edges[:-1], edges[1:]):
        if b > a:
            split.update(Z[a:b], Y[a:b], ignore_index=255, mask=mask[a:b])
    assert_same_state(one, split, exact_totals=True)
    # two workers, each told where its rows start in the stream: their merge is the one pass (to rounding)
    first = calibkit.CalibrationAccumulator(**kw)
    if merge_at:
        first.update(Z[:merge_at], Y[:merge_at], ignore_index=255, mask=mask[:merge_at])
    second = calibkit.CalibrationAccumulator(start=first.count, **kw)
    if merge_at < N:
        second.update(Z[merge_at:], Y[merge_at:], ignore_index=255, mask=mask[merge_at:])
    merged = first.merge(second)
    np.testing.assert_array_equal(merged._bins[0], one._bins[0])
    np.testing.assert_array_equal(merged._fine[0], one._fine[0])
    np.testing.assert_allclose(merged._bins, one._bins, rtol=1e-12)
    np.testing.assert_allclose(merged._boot, one._boot, rtol=1e-12)
    assert_same_result(merged.compute(), one.compute())


def test_serialise_and_merge_dense_states(backend):
    acc = calibkit.CalibrationAccumulator(from_logits=True, bootstrap=2, backend=backend)
    acc.update(Z, Y, WEIGHT, ignore_index=255)
    back = calibkit.CalibrationAccumulator.from_bytes(acc.to_bytes(), backend=backend)
    assert back.to_bytes() == acc.to_bytes()
    assert_same_result(back.compute(), acc.compute())
    two = calibkit.CalibrationAccumulator(from_logits=True, bootstrap=2, backend=backend)
    two.update(Z[:1], Y[:1], WEIGHT[:1], ignore_index=255)
    n_two = two.count
    assert two.merge(calibkit.streaming.load_state(back.to_bytes())).count == acc.count + n_two


def test_two_d_input_with_mask_and_ignore_index(backend):
    fs, fy, _ = flatten_reference(Z, Y)
    keep = MASK.reshape(-1) & (fy != 255)
    for axis in (1, -1):
        acc = calibkit.CalibrationAccumulator(from_logits=True, backend=backend)
        acc.update(fs, fy, ignore_index=255, mask=MASK.reshape(-1), axis=axis)
        ref = calibkit.CalibrationAccumulator(from_logits=True, backend=backend).update(fs[keep], fy[keep])
        assert acc.to_bytes() == ref.to_bytes()  # one piece: the same kernel call, the same bits
    # axis=-1 alone on (N, K) is the plain update
    good = fy != 255
    a = calibkit.CalibrationAccumulator(from_logits=True, backend=backend).update(fs[good], fy[good], axis=-1)
    b = calibkit.CalibrationAccumulator(from_logits=True, backend=backend).update(fs[good], fy[good])
    assert a.to_bytes() == b.to_bytes()


def test_binary_stream_with_mask_and_ignore_index(backend):
    p = rng.random(40)
    y = rng.integers(0, 2, 40)
    y[[3, 7]] = -1
    m = rng.random(40) > 0.3
    keep = m & (y != -1)
    acc = calibkit.CalibrationAccumulator(backend=backend).update(p, y, ignore_index=-1, mask=m)
    ref = calibkit.CalibrationAccumulator(backend=backend).update(p[keep], y[keep])
    assert acc.to_bytes() == ref.to_bytes()
    bad = y.copy()
    bad[11] = 2 if keep[11] else bad[11]
    i = int(np.flatnonzero(keep & (np.arange(40) >= 11))[0])
    bad[i] = 2
    with pytest.raises(ValueError, match=rf"labels\[{i}\] = 2 is not 0 or 1"):
        calibkit.CalibrationAccumulator(backend=backend).update(p, bad, ignore_index=-1, mask=m)
    with pytest.raises(ValueError, match="axis must be 1 or -1"):
        calibkit.CalibrationAccumulator().update(p, y, ignore_index=-1, axis=0)
    with pytest.raises(ValueError, match=r"mask must have shape \(40,\)"):
        calibkit.CalibrationAccumulator().update(p, y, mask=m[:5])


def test_all_ignored_batch_adds_nothing(backend):
    acc = calibkit.CalibrationAccumulator(from_logits=True, backend=backend)
    acc.update(Z, np.full_like(Y, 255), ignore_index=255)
    acc.update(Z, Y, mask=np.zeros_like(MASK))
    assert acc.count == 0 and acc._kind is None
    with pytest.raises(ValueError, match="the accumulator is empty"):
        acc.compute()
    acc.update(Z, Y, ignore_index=255)
    state = acc.to_bytes()
    acc.update(Z, Y, mask=np.zeros_like(MASK))
    assert acc.to_bytes() == state
    win = calibkit.WindowedAccumulator(window=100, from_logits=True)
    win.update(Z, np.full_like(Y, 255), ignore_index=255)
    assert win.count == 0
    dec = calibkit.WindowedAccumulator(decay=0.9, from_logits=True).update(Z, Y, ignore_index=255)
    state = dec.to_bytes()
    dec.update(Z, Y, mask=np.zeros_like(MASK))
    assert dec.to_bytes() == state
    # a binary batch with every row left out, too
    calibkit.CalibrationAccumulator().update(np.full(4, 0.5), np.zeros(4, int), mask=np.zeros(4, bool))


@pytest.mark.parametrize("where, value, pattern", [
    ("label", 9, r"labels\[2, 3, 1\] = 9 is out of range for n_classes=5"),
    ("score", np.nan, r"scores\[2, \d, 3, 1\] = nan is not finite"),
    ("weight", -1.0, r"sample_weight\[2, 3, 1\] = -1.0 is outside"),
    ("weight", np.inf, r"sample_weight\[2, 3, 1\] = inf is outside"),
    ("weight", 1e301, r"sample_weight\[2, 3, 1\] = 1e\+301 is outside"),
])
@pytest.mark.parametrize("axis", [1, -1])
def test_bad_element_named_in_the_callers_coordinates_and_nothing_added(where, value, pattern, axis, backend):
    z, y, w = Z.copy(), Y.copy(), WEIGHT.copy()
    if where == "label":
        y[2, 3, 1] = value
    elif where == "score":
        z[2, 2, 3, 1] = value
    else:
        w[2, 3, 1] = value
    if axis == -1:
        z = np.moveaxis(z, 1, -1)
        pattern = pattern.replace(r"scores\[2, \d, 3, 1\]", r"scores\[2, 3, 1, 2\]")
    acc = calibkit.CalibrationAccumulator(from_logits=True, bootstrap=2, backend=backend)
    acc.update(Z[:1], Y[:1], WEIGHT[:1], ignore_index=255)
    state = acc.to_bytes()
    with pytest.raises(ValueError, match=pattern):
        acc.update(z, y, w, ignore_index=255, axis=axis)
    assert acc.to_bytes() == state  # atomic: the first images' rows were taken out again
    for win in (calibkit.WindowedAccumulator(window=40, n_blocks=4, from_logits=True, backend=backend),
                calibkit.WindowedAccumulator(decay=0.99, from_logits=True, backend=backend)):
        win.update(Z[:1], Y[:1], WEIGHT[:1], ignore_index=255)
        state = win.to_bytes()
        with pytest.raises(ValueError, match=pattern):
            win.update(z, y, w, ignore_index=255, axis=axis)
        assert win.to_bytes() == state


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(labels=Y[:, :, 1:]), ValueError, r"labels must have shape \(3, 6, 8\)"),
    (dict(mask=MASK[:2]), ValueError, r"mask must have shape \(3, 6, 8\)"),
    (dict(mask=MASK.astype(int)), TypeError, "mask must be a boolean array"),
    (dict(sample_weight=WEIGHT.reshape(-1)), ValueError, r"sample_weight must have shape \(3, 6, 8\)"),
    (dict(labels=Y.astype(float)), TypeError, "labels must be integers"),
    (dict(axis=2), ValueError, "axis must be 1"),
    (dict(axis="1"), TypeError, "axis must be an integer"),
    (dict(ignore_index=2.5), TypeError, "ignore_index must be an integer"),
])
def test_bad_shapes_and_types_name_the_argument(kwargs, exc, pattern):
    args = dict(labels=Y, sample_weight=None, ignore_index=255)
    args.update(kwargs)
    labels = args.pop("labels")
    for acc in (calibkit.CalibrationAccumulator(from_logits=True),
                calibkit.WindowedAccumulator(window=10, from_logits=True),
                calibkit.WindowedAccumulator(decay=0.5, from_logits=True)):
        with pytest.raises(exc, match=pattern):
            acc.update(Z, labels, **args)
        assert acc.count == 0


def test_class_count_mismatch_is_named():
    acc = calibkit.CalibrationAccumulator(from_logits=True).update(Z, Y, ignore_index=255)
    with pytest.raises(ValueError, match=r"scores has 4 classes on axis 1 but the accumulator has n_classes=5"):
        acc.update(Z[:, :4], Y, mask=Y < 4)
    with pytest.raises(ValueError, match="holds a binary stream"):
        calibkit.CalibrationAccumulator().update(np.full(3, 0.5), np.zeros(3, int)).update(Z, Y, ignore_index=255)


def test_groups_of_the_labels_shape(backend):
    groups = rng.integers(0, 3, (N, H, W))
    acc = calibkit.CalibrationAccumulator(from_logits=True, n_groups=3, group_fine_bits=3, group_fine_levels=12,
                                          backend=backend)
    acc.update(Z[:, :, ::2], Y[:, ::2], groups=groups[:, ::2], ignore_index=255, mask=MASK[:, ::2])
    fs, fy, _ = flatten_reference(Z[:, :, ::2], Y[:, ::2], ignore_index=255, mask=MASK[:, ::2])
    keep = (MASK[:, ::2] & (Y[:, ::2] != 255)).reshape(-1)
    ref = calibkit.CalibrationAccumulator(from_logits=True, n_groups=3, group_fine_bits=3, group_fine_levels=12,
                                          backend=backend)
    ref.update(fs, fy, groups=groups[:, ::2].reshape(-1)[keep])
    for g in range(3):
        assert acc._groups[g].count == ref._groups[g].count
        np.testing.assert_array_equal(acc._groups[g]._bins, ref._groups[g]._bins)
    assert_same_result(acc.compute(), ref.compute())
    bad = groups.copy()
    bad[1, 2, 3] = 7
    y = Y.copy()
    y[1, 2, 3] = 0
    state = acc.to_bytes()
    with pytest.raises(ValueError, match=r"groups\[1, 2, 3\] = 7 is out of range for n_groups=3"):
        acc.update(Z, y, groups=bad, ignore_index=255)
    assert acc.to_bytes() == state  # the groups of the first image were restored too
    with pytest.raises(ValueError, match=r"groups must have shape \(3, 6, 8\)"):
        acc.update(Z, Y, groups=groups[0], ignore_index=255)


@pytest.mark.parametrize("kw", [dict(window=50, n_blocks=4), dict(window=7, n_blocks=2), dict(decay=0.98)])
@pytest.mark.parametrize("name", ["class-second", "channel-last", "sliced"])
def test_windows_equal_flattened_updates(kw, name, backend, tmp_path):
    s, y, m, w, axis = layout(name, np.float32, tmp_path)
    a = calibkit.WindowedAccumulator(from_logits=True, backend=backend, **kw)
    b = calibkit.WindowedAccumulator(from_logits=True, backend=backend, **kw)
    for i in range(2):  # two batches: the window moves over the second one
        a.update(s, y, w, axis=axis, ignore_index=255, mask=m)
        fs, fy, fw = flatten_reference(s, y, axis=axis, ignore_index=255, mask=m, sample_weight=w)
        b.update(fs, fy, fw)
    assert a.count == b.count and a._seen == b._seen
    assert len(a._blocks) == len(b._blocks)
    for x, z in zip([*a._blocks, a._current], [*b._blocks, b._current]):
        assert x.count == z.count and x._position == z._position
        np.testing.assert_allclose(x._bins, z._bins, rtol=1e-12)
    assert_same_result(a.compute(), b.compute(), rtol=1e-11)
    back = calibkit.WindowedAccumulator.from_bytes(a.to_bytes(), backend=backend)
    assert back.to_bytes() == a.to_bytes()


def test_memory_is_not_proportional_to_the_map(tmp_path):
    """A dense update of a memory-mapped map allocates per piece (an image here): the peak does not grow with
    the number of images and stays far below the map."""
    import tracemalloc

    n, k, h, w = 8, 19, 128, 128
    path = tmp_path / "map.npy"
    m = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, k, h, w))
    for i in range(n):
        m[i] = np.random.default_rng(i).normal(size=(k, h, w))
    m.flush()
    z = np.load(path, mmap_mode="r")
    y = np.random.default_rng(0).integers(0, k, (n, h, w)).astype(np.uint8)
    y[:, :10] = 255
    acc = calibkit.CalibrationAccumulator(from_logits=True)
    acc.update(z[:1], y[:1], ignore_index=255)  # warm-up (kernels, thread pool)
    peaks = []
    for images in (2, n):
        tracemalloc.start()
        acc.update(z[:images], y[:images], ignore_index=255)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0] + (1 << 16), peaks
    assert peaks[1] < z.nbytes / 3, (peaks, z.nbytes)
    assert acc.count == int((y[:1] != 255).sum() + (y[:2] != 255).sum() + (y != 255).sum())


def test_two_d_update_path_is_unchanged():
    """(N, K) batches without mask / ignore_index take the plain path: the same bytes as before the dense path."""
    fs, fy, _ = flatten_reference(Z, Y, ignore_index=255)
    a = calibkit.CalibrationAccumulator(from_logits=True).update(fs, fy)
    b = calibkit.CalibrationAccumulator(from_logits=True)
    b.update(np.ascontiguousarray(fs), fy, None)
    assert a.to_bytes() == b.to_bytes()
    with pytest.raises(ValueError, match=re.escape("scores must have shape (N,) or (N, K), got shape (2, 2, 2, 2)")):
        calibkit.CalibrationAccumulator().update(np.zeros((2, 2, 2, 2)).tolist(), np.zeros((2, 2, 2), int))


def test_images_larger_than_a_kernel_chunk(backend):
    """Images of more rows than one kernel chunk (2**15 elements): sums to rounding, counts exact, and the
    bootstrap replicates keyed by the flattened positions (the same multiplicities)."""
    r = np.random.default_rng(1)
    z = r.normal(size=(2, 5, 96, 96)).astype(np.float32)
    y = r.integers(0, 5, (2, 96, 96))
    y[1, 40:60] = 255
    cfg = dict(from_logits=True, bootstrap=3, classwise=True, backend=backend)
    dense = calibkit.CalibrationAccumulator(**cfg).update(z, y, ignore_index=255)
    fs, fy, _ = flatten_reference(z, y, ignore_index=255)
    flat = calibkit.CalibrationAccumulator(**cfg).update(fs, fy)
    for name in ("_bins", "_fine", "_boot", "_totals", "_classwise_bins"):
        np.testing.assert_allclose(getattr(dense, name), getattr(flat, name), rtol=1e-12, atol=1e-300, err_msg=name)
    np.testing.assert_array_equal(dense._bins[0], flat._bins[0])
    np.testing.assert_array_equal(dense._boot[:, 0] > 0, flat._boot[:, 0] > 0)
    assert_same_result(dense.compute(), flat.compute())
