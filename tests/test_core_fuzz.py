"""Fuzz the private bindings: every ``calibkit._core`` callable, every argument, hostile values.

The Python API validates its input before it reaches ``_core``, but nothing passed
to ``_core`` directly may crash the process, read or write out of bounds, write
into a silently converted temporary, or allocate from an unchecked size: a bad
argument is a ``TypeError``, ``ValueError`` or ``OverflowError`` (the last from
pybind11's integer conversion), and nothing else.

Each function is fuzzed in ONE subprocess (a crash fails the test instead of
killing the run, and the batch stays fast): first its valid call, then that call
with one argument at a time replaced by each hostile value (generic objects, and
variants of the valid value: wrong dtypes, layouts, shapes, byte order,
alignment, read-only outputs, out-of-range labels, huge sizes), then a seeded
random mix of several replacements at once. The subprocess runs under an
address-space limit so that a size that escaped its bound shows up as an error
instead of exhausting the machine.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from calibkit import _core

ALLOWED = {"OK", "TypeError", "ValueError", "OverflowError"}

# The subprocess: python -c PRELUDE <function name> <mode>; prints one JSON line per case.
PRELUDE = textwrap.dedent(
    r'''
    import json, resource, sys
    import numpy as np
    from calibkit import _core

    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    name, mode = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    N, K = 40, 4
    P = rng.dirichlet(np.ones(K), N)
    Z = rng.normal(size=(N, K))
    Y = rng.integers(0, K, N)
    W = rng.random(N) + 0.1
    p1 = P[:, 0].copy()
    y01 = (rng.random(N) < p1).astype(np.int64)
    EDGES = np.linspace(0.0, 1.0, 6)
    CLASS_EDGES = np.tile(EDGES, (K, 1))
    FINE = 2 * (36 << 7)

    # name -> (positional args, keyword args, indices/names of output buffers)
    def valid(name):
        if name == "top_label_stats":
            return [P, Y, W, False, 10, 1e-7], dict(with_nll=True, conf_out=np.empty(N),
                    correct_out=np.empty(N, np.uint8), inverse_temperature=1.0, classwise_bins=5,
                    class_edges=CLASS_EDGES.copy())
        if name == "binary_stats":
            return [p1, y01, W, 5, EDGES.copy(), 1e-7], {}
        if name == "classwise_stats":
            return [P, Y, W, False, 5, CLASS_EDGES.copy()], {}
        if name == "stream_accumulate":
            return [p1, y01.astype(np.uint8), W, 0, 10, 7, 36, 3, 1, np.zeros((4, 10)), np.zeros((5, FINE)),
                    np.zeros((3, 3, 10))], {}
        if name == "stream_top_label":
            return [P, Y, W, False, 1e-7, 1.0, 0, 10, 7, 36, 3, 1, np.zeros((4, 10)), np.zeros((5, FINE)),
                    np.zeros((3, 3, 10)), np.zeros(6), 5, np.zeros((3, K, 5))], {}
        if name == "temperature_nll":
            return [Z, Y, W, 1.0], {}
        if name == "vector_scaling_nll":
            return [Z, Y, W, np.ones(K), np.zeros(K)], {}
        if name == "isotonic_fit":
            return [rng.random(N), rng.random(N), W, True], {}
        if name == "isotonic_fit_columns":
            return [P, Y, W, 0, 2], {}
        if name == "step_apply":
            x = np.tile([0.2, 0.8], K)
            xo = np.arange(0, 2 * K + 1, 2, dtype=np.int64)
            return [P, x, xo, np.tile([0.1, 0.9], K), xo.copy(), 0, 2, True, np.empty((N, K))], {}
        if name == "StepTables":
            x = np.tile([0.2, 0.8], K)
            xo = np.arange(0, 2 * K + 1, 2, dtype=np.int64)
            return [x, xo, np.tile([0.1, 0.9], K), xo.copy(), 0], {}
        if name == "step_apply_tables":
            xo = np.arange(0, 2 * K + 1, 2, dtype=np.int64)
            tables = _core.StepTables(np.tile([0.2, 0.8], K), xo, np.tile([0.1, 0.9], K), xo.copy(), 0)
            return [P, tables, 2, True, np.empty((N, K))], {}
        if name == "step_apply_many":
            xo = np.arange(0, 2 * K + 1, 2, dtype=np.int64)
            tables = _core.StepTables(np.tile([0.2, 0.8], K), xo, np.tile([0.1, 0.9], K), xo.copy(), 0)
            return [Z, [tables, tables], 1, True, np.empty((2, N, K)), True], {}
        if name == "histogram_fit_columns":
            return [P, Y, W, CLASS_EDGES.copy(), 0], {}
        if name == "softmax_into":
            return [Z, np.empty((N, K))], {}
        if name == "vector_scale":
            return [Z, np.ones(K), np.zeros(K), np.empty((N, K))], {}
        if name == "cumulative_differences":
            return [rng.random(N), (rng.random(N) < 0.5).astype(np.uint8), W, True], {}
        if name == "smooth_grid":
            return [P, Y, W, False, np.array([1001, 1025], np.int64)], dict(with_labels=True, inverse_temperature=1.0)
        if name == "two_sample_ranking":
            return [rng.random(N), rng.random(N // 2), 0.95, True], {}
        if name == "row_scores":
            return [Z, True, 1.0, 63], {}
        if name == "ensemble_decompose":
            return [rng.dirichlet(np.ones(K), (3, N)), False], {}
        if name == "ensemble_update":
            return [P, False, 0, np.zeros((N, K)), np.zeros((N, K)), np.zeros(N)], {}
        if name == "confidence_loss":
            return [Z, Y, rng.normal(size=(N // 2, K)), 0.5], {}
        if name == "conformal_label_scores":
            return [P, Y, False, 2, 0.01, 2, 0.2, rng.random(N)], {}
        if name == "conformal_sets":
            return [P, False, 2, 0.01, 2, 0.2, np.full(K, 0.9), rng.random(N), np.empty((N, K), np.uint8),
                    np.empty(N, np.int64)], {}
        if name == "set_num_threads":
            return [2], {}
        if name in ("get_num_threads", "hardware_threads", "usable_cpus", "default_num_threads", "simd_path"):
            return [], {}
        if name == "_pool_selftest":
            return ["ok", 8, 2], {}
        raise KeyError(name)

    class Opaque:
        pass

    GENERIC = [
        ("None", lambda: None), ("1.5", lambda: 1.5), ("-1", lambda: -1), ("2**40", lambda: 2**40),
        ("2**70", lambda: 2**70), ("b'x'", lambda: b"x"), ("'s'", lambda: "s"), ("{}", lambda: {}),
        ("[]", lambda: []), ("[1.0, 2.0]", lambda: [1.0, 2.0]), ("[[1.0]]", lambda: [[1.0]]),
        ("np.float64(1)", lambda: np.float64(1.0)), ("np.int64(3)", lambda: np.int64(3)),
        ("0-d array", lambda: np.array(1.0)), ("empty", lambda: np.array([])),
        ("3-D zeros", lambda: np.zeros((2, 2, 2))), ("object()", lambda: Opaque()), ("nan", lambda: float("nan")),
        ("True", lambda: True), ("memoryview", lambda: memoryview(b"abcdefgh")),
        ("int8 array", lambda: np.zeros(N, np.int8)), ("complex array", lambda: np.zeros(N, complex)),
        ("object array", lambda: np.zeros(N, object)), ("bool array", lambda: np.zeros(N, bool)),
        ("float128 array", lambda: np.zeros(N, np.longdouble)), ("string array", lambda: np.array(["a"] * N)),
    ]

    def misaligned(v):
        buf = np.frombuffer(bytearray(v.nbytes + 1), dtype=np.uint8)[1:]
        out = buf.view(v.dtype).reshape(v.shape) if v.dtype.itemsize == 1 else \
            np.ndarray(v.shape, v.dtype, buffer=buf.data, offset=0)
        out[...] = v
        return out

    def read_only(v):
        v = v.copy()
        v.flags.writeable = False
        return v

    def variants(v):
        """Hostile versions of a valid argument value."""
        out = []
        if isinstance(v, np.ndarray):
            for dt in ("int8", "int32", "int64", "uint8", "bool", "float16", "float32", "float64", "complex128",
                       "object", "longdouble"):
                out.append(("astype " + dt, lambda dt=dt: v.astype(dt)))
            out += [
                ("byte-swapped", lambda: v.astype(v.dtype.newbyteorder())),
                ("non-contiguous", lambda: np.repeat(v, 2, axis=0)[::2]),
                ("reversed", lambda: v[::-1]),
                ("fortran", lambda: np.asfortranarray(v)),
                ("transposed", lambda: v.T),
                ("extra axis", lambda: v[None]),
                ("3-D", lambda: v.reshape(v.shape + (1,) * max(0, 3 - v.ndim))),
                ("flattened", lambda: v.ravel()),
                ("0-d", lambda: np.array(v.ravel()[0]) if v.size else np.array(0, v.dtype)),
                ("numpy scalar", lambda: v.ravel()[0] if v.size else v.dtype.type(0)),
                ("empty", lambda: v[:0]),
                ("one shorter", lambda: v[:-1]),
                ("one longer", lambda: np.concatenate([v, v[:1]])),
                ("read-only", lambda: read_only(v)),
                ("misaligned", lambda: misaligned(v)),
                ("broadcast", lambda: np.broadcast_to(v[:1], v.shape)),
                ("list", lambda: v.tolist()),
                ("memmap-like subclass", lambda: v.view(np.matrix) if v.ndim == 2 else v.view(np.recarray)),
            ]
            if v.dtype.kind in "iu":
                out += [("labels + 100", lambda: v + 100), ("labels - 200", lambda: v.astype(np.int64) - 200),
                        ("int64 max", lambda: np.full(v.shape, np.iinfo(np.int64).max, v.dtype)
                         if v.dtype == np.int64 else v),
                        ("int64 min", lambda: np.full(v.shape, np.iinfo(np.int64).min, np.int64))]
            if v.dtype.kind == "f":
                for bad in ("nan", "inf", "-inf", "-1.0", "2.0", "1e308", "-0.0", "5e-324"):
                    def put(bad=bad):
                        w = v.copy()
                        w.flat[len(w.flat) // 2] = float(bad)
                        return w
                    out.append(("one " + bad, put))
                out.append(("descending", lambda: np.sort(v, axis=-1)[..., ::-1].copy()))
        elif isinstance(v, bool):
            out += [("2", lambda: 2), ("np.bool_", lambda: np.bool_(True)), ("'True'", lambda: "True")]
        elif isinstance(v, int):
            for x in (-1, 0, 1, 2, 63, 64, (1 << 20) + 1, 1 << 26, (1 << 26) + 1, 2**31 - 1, 2**31, 2**40,
                      2**53, 2**63 - 1, 2**63, 2**64, -2**63, -2**70):
                out.append((f"int {x}", lambda x=x: x))
        elif isinstance(v, float):
            for x in ("nan", "inf", "-inf", "0.0", "-1.0", "1e308", "2.0", "0.5", "1e-320"):
                out.append((f"float {x}", lambda x=x: float(x)))
        elif isinstance(v, str):
            out += [("'nested'", lambda: "nested"), ("''", lambda: "")]
        return out

    def call(f, args, kwargs):
        try:
            f(*args, **kwargs)
            return "OK", ""
        except BaseException as exc:  # noqa: BLE001 - the parent decides what is allowed
            return type(exc).__name__, str(exc)[:300]

    def report(case, result, msg):
        print(json.dumps({"case": case, "result": result, "msg": msg}), flush=True)

    f = getattr(_core, name)
    base_args, base_kwargs = valid(name)
    slots = [(i, v) for i, v in enumerate(base_args)] + list(base_kwargs.items())

    def build(replace):
        """Fresh copies of the valid arguments (outputs are written into) with `replace` applied."""
        args, kwargs = valid(name)
        for slot, value in replace.items():
            if isinstance(slot, int):
                args[slot] = value
            else:
                kwargs[slot] = value
        return args, kwargs

    print("START", flush=True)
    args, kwargs = build({})
    report("valid", *call(f, args, kwargs))
    if mode == "grid":
        for slot, v in slots:
            for label, make in GENERIC + variants(v):
                case = f"{name} arg {slot!r} = {label}"
                print(json.dumps({"start": case}), flush=True)
                try:
                    value = make()
                except Exception:
                    continue
                args, kwargs = build({slot: value})
                report(case, *call(f, args, kwargs))
        for label, make in GENERIC[:8]:  # one positional argument too many
            case = f"{name} extra argument {label}"
            print(json.dumps({"start": case}), flush=True)
            args, kwargs = build({})
            report(case, *call(f, args + [make()], kwargs))
    else:
        r = np.random.default_rng(int(sys.argv[3]))
        for trial in range(150):
            replace, labels = {}, []
            for slot, v in slots:
                if r.random() < 0.35:
                    pool = GENERIC + variants(v)
                    label, make = pool[r.integers(len(pool))]
                    try:
                        replace[slot] = make()
                    except Exception:
                        continue
                    labels.append(f"{slot!r}={label}")
            case = f"{name} random {trial}: " + ", ".join(labels)
            print(json.dumps({"start": case}), flush=True)
            args, kwargs = build(replace)
            report(case, *call(f, args, kwargs))
    if name == "set_num_threads":
        _core.set_num_threads(1)
    print("DONE", flush=True)
    '''
)

# Every callable of _core needs a valid call above; these are the ones this build has.
KNOWN = ["top_label_stats", "binary_stats", "classwise_stats", "stream_accumulate", "temperature_nll",
         "vector_scaling_nll", "isotonic_fit", "isotonic_fit_columns", "step_apply", "StepTables",
         "step_apply_tables", "step_apply_many", "histogram_fit_columns", "softmax_into", "vector_scale", "stream_top_label",
         "two_sample_ranking", "row_scores", "cumulative_differences", "smooth_grid", "ensemble_decompose",
         "ensemble_update", "confidence_loss", "conformal_label_scores", "conformal_sets", "set_num_threads",
         "get_num_threads", "hardware_threads", "usable_cpus", "default_num_threads", "_pool_selftest", "simd_path"]
NO_ARGUMENTS = ("get_num_threads", "hardware_threads", "usable_cpus", "default_num_threads", "simd_path")
PRESENT = [n for n in KNOWN if callable(getattr(_core, n, None))]


def public_callables():
    return sorted(n for n in dir(_core) if not n.startswith("__") and callable(getattr(_core, n)))


def test_every_core_callable_is_fuzzed():
    missing = sorted(set(public_callables()) - set(KNOWN))
    assert not missing, f"add a valid call for {missing} to PRELUDE.valid() and KNOWN in tests/test_core_fuzz.py"


def run_batch(*argv):
    proc = subprocess.run([sys.executable, "-c", PRELUDE, *argv], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    last_start = None
    results = []
    for line in lines:
        if not line.startswith("{"):
            continue
        item = json.loads(line)
        if "start" in item:
            last_start = item["start"]
        else:
            results.append(item)
    assert proc.returncode == 0 and lines and lines[-1] == "DONE", (
        f"subprocess died (return code {proc.returncode}) during case {last_start!r}\n"
        f"stderr: {proc.stderr[-2000:]}")
    return results


def check(results):
    assert results[0]["case"] == "valid" and results[0]["result"] == "OK", results[0]
    bad = [r for r in results if r["result"] not in ALLOWED]
    assert not bad, "\n".join(f"{r['case']}: {r['result']}: {r['msg']}" for r in bad[:20])
    # Every error names what is wrong: no empty messages.
    silent = [r for r in results if r["result"] != "OK" and not r["msg"]]
    assert not silent, silent[:5]


@pytest.mark.parametrize("name", PRESENT)
def test_each_argument_replaced_by_hostile_values(name):
    results = run_batch(name, "grid")
    check(results)
    assert len(results) > 1


@pytest.mark.parametrize("name", [n for n in PRESENT if n not in NO_ARGUMENTS])
def test_seeded_random_mix_of_hostile_values(name):
    check(run_batch(name, "random", str(sum(map(ord, name)))))


# ---------------------------------------------------------------------------
# The specific promises, with their messages (also in a subprocess).
# ---------------------------------------------------------------------------

CASES = [
    # optional arrays: only None or a numpy array of the exact dtype
    ("top_label_stats(P, Y, 1.5, False, 10, 1e-7)", "TypeError",
     r"sample_weight must be a numpy array of dtype float64 or None, got float"),
    ("top_label_stats(P, Y, {}, False, 10, 1e-7)", "TypeError", r"sample_weight .* got dict"),
    ("top_label_stats(P, Y, b'x', False, 10, 1e-7)", "TypeError", r"sample_weight .* got bytes"),
    ("top_label_stats(P, Y, W.astype(np.float32), False, 10, 1e-7)", "TypeError",
     r"sample_weight .* got an array of dtype float32"),
    ("binary_stats(p1, y01, [1.0] * N, 5, None, 1e-7)", "TypeError", r"sample_weight .* got list"),
    ("isotonic_fit(W, [1.0, 2.0], None, True)", "TypeError", r"x must be a numpy array of dtype float64 or None"),
    ("isotonic_fit(W, W.tolist(), None, True)", "TypeError", r"x must be a numpy array .* got list"),
    ("isotonic_fit(W, None, np.float64(1.0), True)", "TypeError", r"sample_weight .* got numpy.float64"),
    # required arrays: an ndarray, never a converted list or scalar
    ("top_label_stats(P.tolist(), Y, None, False, 10, 1e-7)", "TypeError", r"scores must be a numpy array, got list"),
    ("isotonic_fit(np.float64(1.0), None, None, True)", "TypeError", r"y must be a numpy array, got numpy.float64"),
    ("top_label_stats(np.array(0.5), Y, None, False, 10, 1e-7)", "ValueError",
     r"scores must be a 2-D array, got a 0-D array \(a scalar\)"),
    ("two_sample_ranking(np.array(0.5), np.array(0.2), 0.95, False)", "ValueError", r"pos must be a 1-D array"),
    ("top_label_stats(P, Y.astype('>i8'), None, False, 10, 1e-7)", "TypeError", r"labels must have dtype int64"),
    ("top_label_stats(P.astype('>f8'), Y, None, False, 10, 1e-7)", "ValueError", r"scores must be in native byte"),
    # output buffers: exact dtype, shape, C order, writeable; never a temporary
    ("top_label_stats(P, Y, None, False, 10, 1e-7, conf_out=np.empty(N, np.float32))", "TypeError",
     r"conf_out must have dtype float64, got float32"),
    ("top_label_stats(P, Y, None, False, 10, 1e-7, conf_out=[0.0] * N)", "TypeError",
     r"conf_out must be a numpy array, got list"),
    ("top_label_stats(P, Y, None, False, 10, 1e-7, correct_out=np.empty(N, np.int64))", "TypeError",
     r"correct_out must have dtype uint8, got int64"),
    ("top_label_stats(P, Y, None, False, 10, 1e-7, conf_out=np.empty(N - 1))", "ValueError",
     r"conf_out must have shape \(40,\), got \(39,\)"),
    ("top_label_stats(P, Y, None, False, 10, 1e-7, conf_out=np.empty(2 * N)[::2])", "ValueError",
     r"conf_out must be C-contiguous"),
    ("top_label_stats(P, Y, None, False, 10, 1e-7, conf_out=ro(np.empty(N)))", "ValueError",
     r"conf_out must be writeable"),
    ("ensemble_update(P, False, 0, np.zeros(N * K), np.zeros((N, K)), np.zeros(N))", "ValueError",
     r"sum must have shape \(40, 4\), got \(160,\)"),
    ("stream_accumulate(p1, y01, None, 0, 10, 7, 36, 0, 0, np.zeros((4, 10), np.float32), np.zeros((5, FINE)),"
     " np.zeros((0, 3, 10)))", "TypeError", r"bins must have dtype float64"),
    # size bounds, before any allocation
    ("top_label_stats(P, Y, None, False, (1 << 20) + 1, 1e-7)", "ValueError",
     r"n_bins must be <= 1048576, got 1048577"),
    ("top_label_stats(P, Y, None, False, -1, 1e-7)", "ValueError", r"n_bins must be >= 0, got -1"),
    ("binary_stats(p1, y01, None, 2**40, None, 1e-7)", "ValueError", r"n_bins must be <= 1048576"),
    ("classwise_stats(P, Y, None, False, (1 << 20) + 1, None)", "ValueError", r"n_bins must be <= 1048576"),
    ("classwise_stats(np.full((2, 100), 0.01), np.zeros(2, np.int64), None, False, 1 << 20, None)", "ValueError",
     r"n_classes \* classwise_bins must be <= 67108864, got 100 \* 1048576"),
    ("top_label_stats(P, Y, None, False, 10, 1e-7, classwise_bins=(1 << 20) + 1)", "ValueError",
     r"classwise_bins must be <= 1048576"),
    ("stream_accumulate(p1, y01, None, 0, 2**40, 7, 36, 0, 0, np.zeros((4, 10)), np.zeros((5, FINE)),"
     " np.zeros((0, 3, 10)))", "ValueError", r"n_bins must be <= 1048576, got 1099511627776"),
    ("stream_accumulate(p1, y01, None, 0, 10, 13, 36, 0, 0, np.zeros((4, 10)), np.zeros((5, FINE)),"
     " np.zeros((0, 3, 10)))", "ValueError", r"fine_bits must be <= 12, got 13"),
    ("stream_accumulate(p1, y01, None, 0, 10, 7, 1001, 0, 0, np.zeros((4, 10)), np.zeros((5, FINE)),"
     " np.zeros((0, 3, 10)))", "ValueError", r"fine_levels must be <= 1000, got 1001"),
    ("stream_accumulate(p1, y01, None, 0, 10, 7, 36, 100001, 0, np.zeros((4, 10)), np.zeros((5, FINE)),"
     " np.zeros((0, 3, 10)))", "ValueError", r"n_boot must be <= 100000, got 100001"),
    ("ensemble_update(P, False, 2**62, np.zeros((N, K)), np.zeros((N, K)), np.zeros(N))", "ValueError",
     r"count must be <= 9007199254740992"),
    # bin edges the kernel binary-searches
    ("binary_stats(p1, y01, None, 5, np.array([0, .5, .2, .7, .9, 1.]), 1e-7)", "ValueError",
     r"edges must be non-decreasing"),
    ("binary_stats(p1, y01, None, 5, np.array([0, .5, np.nan, .7, .9, 1.]), 1e-7)", "ValueError",
     r"edges must not contain NaN"),
    ("binary_stats(p1, y01, None, 5, np.linspace(0, 1, 6).astype(np.float32), 1e-7)", "TypeError",
     r"edges must be a numpy array of dtype float64 or None, got an array of dtype float32"),
    ("classwise_stats(P, Y, None, False, 5, CLASS_EDGES[:, ::-1])", "ValueError",
     r"class_edges must be non-decreasing"),
    # isotonic_fit: finite values and positive weights (PAV would return NaN blocks)
    ("isotonic_fit(np.array([1.0, np.nan, 0.5]), None, None, True)", "ValueError", r"y\[1\] = nan is not finite"),
    ("isotonic_fit(W, None, -W, True)", "ValueError", r"sample_weight\[0\] = .* is not a finite number > 0"),
    # flags are True/False (or numpy.bool_), not any object with a truth value
    ("top_label_stats(P, Y, None, None, 10, 1e-7)", "TypeError", r"incompatible function arguments"),
    ("isotonic_fit(W, None, None, 1)", "TypeError", r"incompatible function arguments"),
    ("two_sample_ranking(W, W, 0.95, 'yes')", "TypeError", r"incompatible function arguments"),
    ("ensemble_decompose(np.ones((2, 3, 4)) / 4, np.bool_(False))['status'][0]", "OK", "0"),
    # labels out of range are reported by the kernels (status), never used as an index
    ("top_label_stats(P, Y + 1000, None, False, 10, 1e-7)['status'][0]", "OK", "3"),
    ("temperature_nll(Z, Y - 1000, None, 1.0)['status'][0]", "OK", "3"),
    ("vector_scaling_nll(Z, np.full(N, 2**62), None, np.ones(K), np.zeros(K))['status'][0]", "OK", "3"),
    ("confidence_loss(Z, Y + K, Z, 0.5)['status_in'][0]", "OK", "3"),
    ("binary_stats(p1, y01 + 2, None, 5, None, 1e-7)['status'][0]", "OK", "3"),
]

CASES_SCRIPT = textwrap.dedent(
    r'''
    import json, re, sys
    import numpy as np
    from calibkit._core import *  # noqa: F401,F403

    rng = np.random.default_rng(0)
    N, K = 40, 4
    P = rng.dirichlet(np.ones(K), N)
    Z = rng.normal(size=(N, K))
    Y = rng.integers(0, K, N)
    W = rng.random(N) + 0.1
    p1 = P[:, 0].copy()
    y01 = (rng.random(N) < p1).astype(np.int64)
    FINE = 2 * (36 << 7)
    CLASS_EDGES = np.tile(np.linspace(0.0, 1.0, 6), (K, 1))

    def ro(a):
        a.flags.writeable = False
        return a

    for code in json.loads(sys.argv[1]):
        print(json.dumps({"start": code}), flush=True)
        try:
            value = eval(code)
            print(json.dumps({"code": code, "result": "OK", "msg": str(value)}), flush=True)
        except BaseException as exc:  # noqa: BLE001
            print(json.dumps({"code": code, "result": type(exc).__name__, "msg": str(exc)}), flush=True)
    print("DONE", flush=True)
    '''
)


def test_specific_bad_arguments_raise_named_errors():
    import re

    proc = subprocess.run([sys.executable, "-c", CASES_SCRIPT, json.dumps([c[0] for c in CASES])],
                          capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    done = [item for item in lines if "code" in item]
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("DONE"), (
        f"subprocess died (return code {proc.returncode}) during {lines[-1] if lines else None}\n{proc.stderr[-2000:]}")
    got = {item["code"]: item for item in done}
    failures = []
    for code, exc, pattern in CASES:
        item = got[code]
        if item["result"] != exc or not re.search(pattern, item["msg"]):
            failures.append(f"{code}\n  expected {exc} matching {pattern!r}\n  got {item['result']}: {item['msg']}")
    assert not failures, "\n".join(failures)


def test_valid_outputs_are_written_in_place():
    """conf_out / correct_out / state buffers receive the results (no temporary copy)."""
    rng = np.random.default_rng(1)
    P = rng.dirichlet(np.ones(3), 30)
    Y = rng.integers(0, 3, 30)
    conf, correct = np.full(30, -1.0), np.full(30, 7, np.uint8)
    _core.top_label_stats(P, Y, None, False, 10, 1e-7, conf_out=conf, correct_out=correct)
    np.testing.assert_array_equal(conf, P.max(axis=1))
    np.testing.assert_array_equal(correct, (P.argmax(axis=1) == Y).astype(np.uint8))
    s, m2, h = np.zeros((30, 3)), np.zeros((30, 3)), np.zeros(30)
    _core.ensemble_update(P, False, 0, s, m2, h)
    np.testing.assert_allclose(s, P)
    assert (h > 0).all()
