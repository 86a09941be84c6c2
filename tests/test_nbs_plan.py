"""The Numba small-batch update's plan (issue 13, round 4): the configuration and state arrays of a stream are
checked once and kept for its next updates (calibkit._numba.stream._plan); a state array replaced (from_bytes,
merge, a failed dense batch, a caller's new array) or a new configuration is checked again. Reference: the plain
NumPy update of test_upd_small_batch and the C++ backend (the same bits). Behaviour only, never times."""

import numpy as np
import pytest

import calibkit
from calibkit import _core
from calibkit._numba import stream as ns
from test_upd_small_batch import _batches, _reference

R = 2 * (36 << 7)


def _state(M=15, B=0, R=R):
    return [np.zeros((4, M)), np.zeros((5, R)), np.zeros((B, 3, M)), np.zeros(6)]


def _call(f, p, y, st, *, offset=0, bits=7, levels=36, squares=None, cw=0, classwise=None):
    return f(p, y, None, False, 1e-7, 1.0, offset, st[0].shape[1], bits, levels, st[2].shape[0], 0, *st, cw,
             classwise, squares)


def _states_equal(a, b):
    for name in ("_bins", "_fine", "_squares", "_boot", "_classwise_bins", "_smooth"):
        x, z = getattr(a, name), getattr(b, name)
        assert (x is None) == (z is None), name
        if x is not None:
            np.testing.assert_array_equal(x, z, err_msg=name)
    np.testing.assert_allclose(a._totals, b._totals, rtol=1e-12)


def test_replaced_state_array_is_checked_again():
    """The kept plan of a state never lets a replaced array through unchecked."""
    (p, y), = _batches(1, [8], 10, np.float32)
    st = _state()
    assert _call(ns.stream_top_label, p, y, st)[0] == 0
    bad_fine = [("shape", np.zeros((5, R - 2)), ValueError), ("dtype", np.zeros((5, R), np.float32), TypeError),
                ("layout", np.zeros((R, 5)).T, ValueError)]
    frozen = np.zeros((5, R))
    frozen.flags.writeable = False
    bad_fine.append(("read-only", frozen, ValueError))
    before = [a.copy() for a in st]
    for name, fine, exc in bad_fine:
        with pytest.raises(exc):
            _call(ns.stream_top_label, p, y, [st[0], fine, st[2], st[3]])
    with pytest.raises(ValueError):
        _call(ns.stream_top_label, p, y, st, squares=np.zeros((2, 14)))
    with pytest.raises(TypeError):
        _call(ns.stream_top_label, p, y, st, cw=15)  # class-wise bins without their state
    for a, b in zip(st, before):
        np.testing.assert_array_equal(a, b)
    # the same arrays again: still its plan, still adding
    assert _call(ns.stream_top_label, p, y, st)[0] == 0
    bins, fine, _ = _reference([(p, y), (p, y)], 15)
    np.testing.assert_array_equal(st[0], bins)
    np.testing.assert_array_equal(st[1], fine)


def test_same_arrays_new_configuration_is_its_own_plan():
    """fine_bits=6, fine_levels=72 has the fine state's shape of 7, 36: the same arrays under the other
    configuration add what C++ adds with it (the plan is keyed by the configuration too)."""
    (p, y), = _batches(2, [16], 10, np.float32)
    got, want = _state(), _state()
    for bits, levels in ((7, 36), (6, 72), (7, 36)):
        for f, st in ((ns.stream_top_label, got), (_core.stream_top_label, want)):
            assert _call(f, p, y, st, bits=bits, levels=levels)[0] == 0
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kw", [{}, {"bootstrap": 4}, {"classwise": True}, {"smooth": True},
                                {"classwise": True, "smooth": True, "bootstrap": 2}])
def test_stream_through_replacements_equals_cpp(kw):
    """A Numba and a C++ stream of small updates, through from_bytes, merge (a new squares array), copy and a
    failed dense batch (the state restored: new arrays): the same bits."""
    batches = _batches(3, [8, 1, 17, 64, 8, 300, 8], 10, np.float32)
    accs = {b: calibkit.CalibrationAccumulator(15, backend=b, **kw) for b in ("cpp", "numba")}
    for b in accs:
        acc = accs[b]
        for i, (p, y) in enumerate(batches):
            acc.update(p, y)
            if i == 1:
                acc = calibkit.CalibrationAccumulator.from_bytes(acc.to_bytes(), backend=b)
            elif i == 2:
                acc.merge(calibkit.CalibrationAccumulator(15, backend=b, **kw).update(*batches[0]))
            elif i == 3:
                bad = np.broadcast_to(p[:, :, None], (len(y), 10, 2)).copy()
                bad[-1, 0, 1] = np.nan
                with pytest.raises(ValueError):
                    acc.update(bad, np.broadcast_to(y[:, None], (len(y), 2)).copy())
            elif i == 4:
                acc = acc.copy()
        accs[b] = acc
    _states_equal(accs["cpp"], accs["numba"])


def test_plain_and_full_kernels_add_the_same_bins():
    """A stream without class-wise bins or smooth sums takes _top_label_plain, one with them _top_label_small:
    the same top-label state, equal to the NumPy reference."""
    batches = _batches(4, [8, 33, 8], 10, np.float64)
    plain = calibkit.CalibrationAccumulator(15, backend="numba")
    full = calibkit.CalibrationAccumulator(15, classwise=True, smooth=True, backend="numba")
    for p, y in batches:
        plain.update(p, y)
        full.update(p, y)
    assert ns._plans[id(plain._bins)][11] is ns._top_label_plain
    assert ns._plans[id(full._bins)][11] is ns._top_label_small
    bins, fine, squares = _reference(batches, 15)
    for acc in (plain, full):
        np.testing.assert_array_equal(acc._bins, bins)
        np.testing.assert_array_equal(acc._fine, fine)
        np.testing.assert_array_equal(acc._squares, squares)


def test_interleaved_streams_beyond_the_kept_plans_and_threads(threads):
    """More streams than plans kept (16), updated in turn, at 1 and 2 threads: each equals its C++ twin."""
    batches = _batches(5, [8] * 3, 10, np.float32)
    for n_threads in (1, 2):
        calibkit.set_num_threads(n_threads)
        accs = [[calibkit.CalibrationAccumulator(15, bootstrap=2, seed=s, backend=b) for b in ("cpp", "numba")]
                for s in range(20)]
        for p, y in batches:
            for pair in accs:
                for acc in pair:
                    acc.update(p, y)
        for a, b in accs:
            _states_equal(a, b)
    assert len(ns._plans) <= 16
