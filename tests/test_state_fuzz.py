"""Hostile serialized states and calibrator dicts: only ValueError comes out, and memory stays small.

``from_bytes`` of every state kind is fed every single-bit flip of a small real state (with the stored
CRC, and with the CRC recomputed so the flip reaches the decoder), every truncation, random bytes,
forged headers with absurd sizes, nesting and types (CRC recomputed), and states whose numbers no real
stream can produce. These run in a child process under RLIMIT_AS = 2 GiB: an allocation of what a
forged header declares would fail there. ``from_dict`` of every calibrator and of the accumulator is
fed wrong types, huge integers, NaN/inf, subnormal and huge values, unsorted or out-of-range
thresholds, wrong shapes, missing and extra keys: each either raises a ValueError naming the key or
gives a calibrator whose ``predict_proba`` is finite, in [0, 1], with rows summing to 1.
"""

import copy
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import calibkit
from calibkit.calibrators import (
    Calibrator, HistogramBinning, IsotonicCalibration, MatrixScaling, PlattScaling, TemperatureScaling,
    VectorScaling,
)
from calibkit.streaming import CalibrationAccumulator, load_state

DATA = pathlib.Path(__file__).parent / "data"
LIMIT_AS = 2 << 30

# -- the child process: builds small real states, runs one fuzz family, reports every non-ValueError ----------

CHILD = r'''
import json, math, random, resource, struct, sys, zlib
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import numpy as np
from calibkit.streaming import (CalibrationAccumulator, WindowedAccumulator, encode_state, decode_state,
                                load_state, FORMAT_MAGIC, FORMAT_VERSION)
from calibkit.ood import OODAccumulator

rng = np.random.default_rng(0)
p = rng.dirichlet(np.ones(3), size=40)
y = rng.integers(0, 3, 40)
w = rng.random(40)
small = dict(n_bins=3, fine_bits=0, fine_levels=2)
STATES = {{
    "top-label": CalibrationAccumulator(**small, classwise=True, bootstrap=1).update(p, y, w),
    "binary": CalibrationAccumulator(**small).update(p[:, 0], y == 0),
    "empty": CalibrationAccumulator(**small, classwise=True, n_classes=3),
    "window": WindowedAccumulator(20, n_blocks=2, **small).update(p, y),
    "decay": WindowedAccumulator(decay=0.9, **small).update(p, y, w),
    "ood": OODAccumulator(precision_bits=2).update(p[:, 0], p[:, 1]),
}}
LOADERS = {{"top-label": CalibrationAccumulator.from_bytes, "binary": CalibrationAccumulator.from_bytes,
            "empty": CalibrationAccumulator.from_bytes, "window": WindowedAccumulator.from_bytes,
            "decay": WindowedAccumulator.from_bytes, "ood": OODAccumulator.from_bytes}}
BLOBS = {{k: s.to_bytes() for k, s in STATES.items()}}
bad = []


def with_crc(body):
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def forge(header, payload=b"", header_text=None):
    text = header_text if header_text is not None else json.dumps(header).encode()
    return with_crc(FORMAT_MAGIC + struct.pack("<II", FORMAT_VERSION, len(text)) + text + payload)


def attempt(label, loader, blob):
    try:
        state = loader(blob)
    except ValueError:
        return "rejected"
    except BaseException as exc:
        bad.append([label, type(exc).__name__, str(exc)[:300]])
        return "error"
    # Accepted: it must behave as a state (compute raises ValueError at worst, e.g. an empty stream).
    try:
        state.compute()
        state.to_bytes()
    except ValueError:
        pass
    except BaseException as exc:
        bad.append([label + " (accepted, then)", type(exc).__name__, str(exc)[:300]])
    return "accepted"


def every_loader(label, blob):
    for name, loader in [("load_state", load_state), *LOADERS.items()]:
        attempt(f"{{label}} via {{name}}", loader, blob)


FAMILY = sys.argv[1]
counts = {{"rejected": 0, "accepted": 0, "error": 0}}
if FAMILY == "bitflips":
    for kind, blob in BLOBS.items():
        body = blob[:-4]
        header_end = 16 + struct.unpack("<I", blob[12:16])[0]
        for i in range(len(blob)):
            for bit in range(8):
                flipped = bytearray(blob)
                flipped[i] ^= 1 << bit
                counts[attempt(f"{{kind}} flip {{i}}.{{bit}}", LOADERS[kind], bytes(flipped))] += 1
                # The same flip with a valid CRC reaches the decoder: every bit of the framing and
                # header, one bit per byte of the arrays (each accepted state is computed: slow).
                if i < header_end or (i < len(body) and bit == i % 8):
                    counts[attempt(f"{{kind}} flip {{i}}.{{bit}} + crc", LOADERS[kind],
                                   with_crc(flipped[:-4]))] += 1
elif FAMILY == "truncations":
    for kind, blob in BLOBS.items():
        for n in range(len(blob)):
            counts[attempt(f"{{kind}} truncated to {{n}}", LOADERS[kind], blob[:n])] += 1
            counts[attempt(f"{{kind}} truncated to {{n}} + crc", LOADERS[kind], with_crc(blob[:n]))] += 1
        counts[attempt(f"{{kind}} + trailing", LOADERS[kind], with_crc(blob[:-4] + b"\0" * 8))] += 1
elif FAMILY == "random":
    r = random.Random(1)
    for t in range(3000):
        n = r.randrange(0, 600)
        raw = bytes(r.randrange(256) for _ in range(n))
        counts[attempt(f"random {{t}}", load_state, raw)] += 1
        framed = FORMAT_MAGIC + struct.pack("<II", FORMAT_VERSION, r.randrange(0, n + 2)) + raw
        counts[attempt(f"random framed {{t}}", load_state, with_crc(framed))] += 1
elif FAMILY == "forged":
    kind, meta, arrays = decode_state(BLOBS["top-label"])
    payload = b"".join(np.ascontiguousarray(a, "<f8").tobytes() for a in arrays.values())
    layout = [[k, list(a.shape)] for k, a in arrays.items()]

    def header(meta_patch=None, config_patch=None, layout_=None, kind_="CalibrationAccumulator"):
        m = json.loads(json.dumps(meta))
        m.update(meta_patch or {{}})
        m["config"].update(config_patch or {{}})
        return {{"type": kind_, "meta": m, "arrays": layout if layout_ is None else layout_}}

    HUGE = [10 ** 12, 2 ** 40, 2 ** 63, 2 ** 64 + 3, -1, 1 << 20 | 1, 1e308, 1.5, True, None, "7", [3], {{}}]
    for key in ("n_bins", "n_classes", "bootstrap", "fine_bits", "fine_levels", "seed", "temperature",
                "classwise", "from_logits"):
        for value in HUGE:
            every_loader(f"config {{key}}={{value!r}}", forge(header(config_patch={{key: value}}), payload))
    for key in ("start", "position", "kind", "weighted", "confidence_level", "metadata"):
        for value in HUGE + [float("nan")]:
            every_loader(f"meta {{key}}={{value!r}}", forge(header(meta_patch={{key: value}}), payload))
    # Sizes that agree with each other but not with the payload; and a configuration that agrees with
    # a huge declared layout (the payload is small: nothing may be allocated from the declaration).
    for n_bins in (1 << 20, 10 ** 9):
        cfg = {{"n_bins": n_bins, "bootstrap": 64, "classwise": True, "n_classes": 1 << 16}}
        lay = [["bins", [4, n_bins]], ["fine", [5, 4]], ["boot", [64, 3, n_bins]], ["totals", [6]],
               ["classwise", [3, 1 << 16, n_bins]]]
        every_loader(f"forged sizes n_bins={{n_bins}}", forge(header(config_patch=cfg, layout_=lay), payload))
        every_loader(f"forged sizes n_bins={{n_bins}}, no layout", forge(header(config_patch=cfg), payload))
    for shape in ([1 << 28, 1 << 28], [10 ** 30], [-1], [1.5], [True], [1] * 50, "12", [[3]], [2 ** 64]):
        lay = [["bins", shape], *layout[1:]]
        every_loader(f"shape {{shape!r}}", forge(header(layout_=lay), payload))
    for lay in ([["bins"]], [["bins", [4, 3], 1]], [[1, [4, 3]]], "x", {{"bins": [4, 3]}}, layout + layout[:1]):
        every_loader(f"layout {{str(lay)[:40]}}", forge(header(layout_=lay), payload))
    # Nesting: deep brackets in metadata, in the header itself, and inside a string (harmless).
    for depth in (33, 1000, 100000, 400000):
        deep = "[" * depth + "]" * depth
        text = ('{{"type":"CalibrationAccumulator","arrays":[],"meta":{{"metadata":' + deep + '}}}}').encode()
        every_loader(f"nested {{depth}}", forge(None, b"", header_text=text))
        every_loader(f"nested dicts {{depth}}", forge(None, b"", header_text=('{{"a":' * depth + "1" +
                                                                            "}}" * depth).encode()))
    every_loader("brackets in a string", forge(header(meta_patch={{"metadata": {{"note": "[[[[" * 1000}}}}),
                                               payload))
    # Header types and framing.
    for text in (b"", b"nul", b"[]", b"{{}}", b'"x"', b"\xff\xfe", b'{{"type": 1, "meta": {{}}, "arrays": []}}',
                 b'{{"type": "OODAccumulator", "meta": [], "arrays": []}}', b"1" * 5000,
                 b'{{"a": ' + b"9" * 100000 + b"}}",
                 b'{{"type": "X", "meta": {{}}, "arrays": [["a", [1e400]]]}}', b"[" * 10 ** 6):
        every_loader(f"header {{text[:30]!r}}", forge(None, b"", header_text=text))
    for header_len in (0, 1, 2 ** 20, 2 ** 20 + 1, 2 ** 32 - 1):
        every_loader(f"header_len {{header_len}}", with_crc(FORMAT_MAGIC + struct.pack("<II", 1, header_len) +
                                                            b"{{}}" + payload))
    # Windows: huge n_blocks, a block list longer than allowed, blocks of another configuration.
    wkind, wmeta, warrays = decode_state(BLOBS["window"])
    wpayload = b"".join(np.ascontiguousarray(a, "<f8").tobytes() for a in warrays.values())
    wlayout = [[k, list(a.shape)] for k, a in warrays.items()]

    def window(patch):
        m = json.loads(json.dumps(wmeta))
        m.update(patch)
        return {{"type": "WindowedAccumulator", "meta": m, "arrays": wlayout}}

    for patch in ({{"n_blocks": 10 ** 12}}, {{"window": 10 ** 30}}, {{"window": None}}, {{"decay": 0.5}},
                  {{"seen": -1}}, {{"seen": 0}}, {{"kwargs": {{"n_bins": 10 ** 12}}}},
                  {{"kwargs": {{"bootstrap": 10 ** 9}}}},
                  {{"kwargs": {{"backend": "cpp"}}}}, {{"kwargs": [1, 2]}}, {{"kwargs": {{"bogus": 1}}}},
                  {{"blocks": []}}, {{"blocks": wmeta["blocks"] * 5000}}, {{"blocks": [{{}}] * 3}},
                  {{"blocks": [dict(b, config=dict(b["config"], n_bins=5)) for b in wmeta["blocks"]]}}):
        every_loader(f"window {{str(patch)[:60]}}", forge(window(patch), wpayload))
    # OOD: sizes and keys.
    okind, ometa, oarrays = decode_state(BLOBS["ood"])
    for bits in (0, 41, 10 ** 12, -3, 1.0, None):
        every_loader(f"ood bits {{bits!r}}", encode_state("OODAccumulator", {{"precision_bits": bits}}, oarrays))
    for name, values in (("keys_in", [-1.0, 2.0]), ("keys_in", [3.0, 2.0]), ("keys_in", [0.5, 2.0]),
                         ("keys_in", [2.0 ** 60, 2.0 ** 61]), ("counts_in", [0.0, 1.0]), ("counts_in", [-1.0, 1.0]),
                         ("counts_in", [2.0 ** 53, 2.0 ** 53]), ("counts_in", [1.5, 1.0]), ("keys_out", [np.nan])):
        o = dict(oarrays)
        o[name] = np.array(values)
        other = ("counts_" if name.startswith("keys") else "keys_") + name.split("_")[1]
        if o[other].shape != o[name].shape:
            o[other] = np.arange(1.0, 1.0 + len(values)) * (1 if other.startswith("counts") else 2 ** 40)
        every_loader(f"ood {{name}}={{values}}", encode_state("OODAccumulator", ometa, o))
elif FAMILY == "content":
    # Well-framed states whose numbers no real stream can produce.
    for base in ("top-label", "binary", "decay"):
        kind, meta, arrays = decode_state(BLOBS[base])
        prefix = "" if base != "decay" else "0."
        for name in [n for n in arrays if n.endswith(("bins", "fine", "boot", "totals", "classwise"))]:
            a = arrays[name]
            for how in ("negate", "nan", "inf", "huge", "wrap", "fraction", "scale_sums", "zero_weight_only"):
                b = a.copy()
                flat = b.reshape(-1)
                if flat.size == 0:
                    continue
                if how == "negate":
                    b = -np.abs(b) - 1
                elif how == "nan":
                    flat[0] = np.nan
                elif how == "inf":
                    flat[-1] = np.inf
                elif how == "huge":
                    b = b * 0 + 2.0 ** 70
                elif how == "wrap":
                    flat[0] = 2.0 ** 64 - 1
                elif how == "fraction":
                    flat[0] += 0.5
                elif how == "scale_sums":  # sums of probabilities or 0/1 above their weight
                    field = name.rsplit(".", 1)[-1]
                    if field in ("bins", "fine"):
                        b[2:] = 3 * b[1] + 1
                    elif field == "boot":
                        b[:, 1:] = 3 * b[:, :1] + 1
                    elif field == "classwise":
                        b[1:] = 3 * b[:1] + 1
                    else:
                        b[2:4] = 3 * b[1] + 1
                elif how == "zero_weight_only":
                    b = b * 0
                mutated = dict(arrays, **{{name: b}})
                blob = encode_state(kind, meta, mutated)
                label = f"{{base}} {{name}} {{how}}"
                outcome = attempt(label, LOADERS[base], blob)
                # Bootstrap replicates hold Poisson-weighted sums (no counts): only their signs, finiteness
                # and sums can be checked.
                must = ("negate", "nan", "inf", "scale_sums") if name.endswith("boot") else \
                    ("negate", "nan", "inf", "huge", "wrap", "scale_sums")
                if outcome == "accepted" and how in must:
                    bad.append([label, "accepted", "a state no stream can produce was accepted"])
print(json.dumps({{"bad": bad, "counts": counts}}))
'''


def run_family(family, timeout=600):
    r = subprocess.run([sys.executable, "-c", CHILD.format(limit=LIMIT_AS), family], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["bitflips", "truncations", "random", "forged", "content"])
def test_hostile_states_raise_value_error_only(family):
    out = run_family(family)
    assert out["bad"] == [], out["bad"][:20]
    if family in ("bitflips", "truncations"):
        assert out["counts"]["rejected"] > 0


def test_bit_flips_under_the_stored_crc_are_all_rejected():
    """Without recomputing the CRC, no single-bit change of any state kind gets through."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(3), size=30)
    y = rng.integers(0, 3, 30)
    states = [CalibrationAccumulator(n_bins=3, fine_bits=0, fine_levels=2).update(p, y),
              calibkit.WindowedAccumulator(10, n_blocks=2, n_bins=3, fine_bits=0, fine_levels=2).update(p, y),
              calibkit.OODAccumulator(precision_bits=2).update(p[:, 0], p[:, 1])]
    for state in states:
        blob = state.to_bytes()
        for i in range(0, len(blob), 7):
            flipped = bytearray(blob)
            flipped[i] ^= 1 << (i % 8)
            with pytest.raises(ValueError):
                type(state).from_bytes(bytes(flipped))


def test_non_bytes_are_a_type_error():
    for value in ("text", 3, None, [1, 2]):
        with pytest.raises(TypeError, match="state must be bytes"):
            CalibrationAccumulator.from_bytes(value)


def test_stored_states_still_load():
    blob = (DATA / "accumulator_v1.bin").read_bytes()
    state = load_state(blob)
    assert isinstance(state, CalibrationAccumulator)
    expected = json.loads((DATA / "accumulator_v1.json").read_text())
    assert state.compute().count == expected["count"]
    assert CalibrationAccumulator.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()


def test_real_states_round_trip_through_the_checks():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(400, 5)) * 3
    y = rng.integers(0, 5, 400)
    w = rng.random(400)
    states = [
        CalibrationAccumulator(from_logits=True, classwise=True, bootstrap=4, temperature=1.7).update(z, y, w),
        CalibrationAccumulator(classwise=True, n_classes=5),
        calibkit.WindowedAccumulator(150, n_blocks=4, from_logits=True).update(z, y).update(z[:77], y[:77]),
        calibkit.WindowedAccumulator(decay=0.995, from_logits=True, bootstrap=2).update(z, y, w).update(z, y),
        calibkit.OODAccumulator().update(z[:, 0], z[:, 1] * 1e200),
    ]
    for state in states:
        blob = state.to_bytes()
        assert load_state(blob).to_bytes() == blob
    acc = states[0]
    assert CalibrationAccumulator.from_dict(json.loads(json.dumps(acc.to_dict()))).to_bytes() == acc.to_bytes()


# -- from_dict: calibrators and the accumulator --------------------------------------------------------------

RNG = np.random.default_rng(11)
LOGITS = RNG.normal(size=(300, 3)) * 3
LABELS = np.where(RNG.random(300) < 0.7, LOGITS.argmax(axis=1), RNG.integers(0, 3, 300))
PROBS = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
BIN_SCORES = PROBS[:, 1]
BIN_LABELS = (LABELS == 1).astype(int)


def fitted_calibrators():
    return [
        (TemperatureScaling().fit(LOGITS, LABELS), LOGITS),
        (VectorScaling().fit(LOGITS, LABELS), LOGITS),
        (MatrixScaling(reg=1e-3).fit(LOGITS, LABELS), LOGITS),
        (PlattScaling().fit(BIN_SCORES, BIN_LABELS), BIN_SCORES),
        (IsotonicCalibration().fit(PROBS, LABELS), PROBS),
        (IsotonicCalibration().fit(BIN_SCORES, BIN_LABELS), BIN_SCORES),
        (HistogramBinning(n_bins=5).fit(PROBS, LABELS), PROBS),
        (HistogramBinning(n_bins=5, strategy="quantile").fit(BIN_SCORES, BIN_LABELS), BIN_SCORES),
    ]


HOSTILE = ["abc", "1.5", None, True, False, 10 ** 400, -10 ** 400, 2 ** 64, float("nan"), float("inf"),
           -float("inf"), 1e-310, -1e-310, 1e308, -1e308, 0, -1, 0.5, 1.5, [], [[]], [1.0], [[1.0, 2.0]], {},
           {"a": 1}, [None], ["x"], [10 ** 400], [float("nan")], [True, False]]


def _mutations(d):
    """(key named in the error, mutated dict) for every hostile value at every place of d."""
    for section in ("params", "fitted"):
        for key in d[section]:
            for value in HOSTILE:
                m = copy.deepcopy(d)
                m[section][key] = value
                yield key, m
            # Element-wise: inside the arrays (and inside the lists of arrays).
            v = d[section][key]
            if isinstance(v, list) and v:
                for value in HOSTILE[:16] + [-5.0, 5.0]:
                    for where in (0, -1):
                        m = copy.deepcopy(d)
                        target = m[section][key]
                        if isinstance(target[0], list):
                            if not target[0]:
                                continue
                            target = target[0]
                            if isinstance(target[0], list):
                                target = target[0]
                        target[where] = value
                        yield key, m
                m = copy.deepcopy(d)  # reversed order (unsorted thresholds)
                target = m[section][key]
                m[section][key] = [t[::-1] if isinstance(t, list) else t for t in target] \
                    if isinstance(target[0], list) else target[::-1]
                yield key, m
                m = copy.deepcopy(d)  # one element too many
                target = m[section][key]
                (target[0] if isinstance(target[0], list) else target).append(0.5)
                yield key, m
        m = copy.deepcopy(d)
        m[section]["extra_key_"] = 1.0
        yield "extra_key_", m
        for key in list(d[section]):
            m = copy.deepcopy(d)
            del m[section][key]
            if section == "fitted":
                yield key, m
            else:
                yield None, m  # a missing parameter takes its default: may load
    for key in ("format", "version", "class", "params", "fitted"):
        m = copy.deepcopy(d)
        del m[key]
        yield None, m
    m = copy.deepcopy(d)
    m["surplus"] = 1  # top-level keys other than the five are the caller's (calibkit fit stores "input")
    yield None, m


# Learned values that must agree with each other: a mutation of one may be reported under another.
RELATED = [{"n_classes_", "scale_", "bias_", "weights_", "binary_", "x_thresholds_", "y_thresholds_",
            "bin_edges_", "bin_values_", "n_bins"}]


def _named(key, message):
    return key in message or any(key in group and any(k in message for k in group) for group in RELATED)


def _check_predictions(cal, x):
    p = cal.predict_proba(x)
    assert np.isfinite(p).all()
    assert ((p >= 0) & (p <= 1)).all()
    if p.ndim == 2:
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)


@pytest.mark.parametrize("index", range(8))
def test_calibrator_from_dict_fuzz(index):
    cal, x = fitted_calibrators()[index]
    d = json.loads(json.dumps(cal.to_dict()))
    _check_predictions(Calibrator.from_dict(d), x)
    rejected = accepted = 0
    for key, m in _mutations(d):
        try:
            loaded = Calibrator.from_dict(m)
        except ValueError as exc:
            rejected += 1
            if key is not None:
                assert _named(key, str(exc)), (key, str(exc))
            continue
        except Exception as exc:  # pragma: no cover - the failure this test is about
            pytest.fail(f"{type(exc).__name__} (not ValueError) from from_dict with {key!r} mutated: {exc}")
        accepted += 1
        _check_predictions(loaded, x)
        # Extreme logits: still finite probabilities for the logit calibrators.
        if x is LOGITS:
            _check_predictions(loaded, LOGITS * 1e3)
    assert rejected > 0


@pytest.mark.parametrize("name, value", [
    ("temperature_", 1e-310), ("temperature_", 1e-200), ("temperature_", 1e200), ("temperature_", 0.0),
    ("temperature_", 10 ** 400), ("temperature_", "nan"), ("temperature_", True),
])
def test_temperature_extremes_are_rejected_by_name(name, value):
    d = TemperatureScaling().fit(LOGITS, LABELS).to_dict()
    d["fitted"][name] = value
    with pytest.raises(ValueError, match=name):
        Calibrator.from_dict(d)


@pytest.mark.parametrize("name, value", [("scale_", [1e308, 1.0, 1.0]), ("bias_", [1.0, 1e200, 0.0]),
                                         ("scale_", [1.0, 1.0]), ("scale_", [[1.0, 1.0, 1.0]])])
def test_vector_scaling_extremes_are_rejected_by_name(name, value):
    d = VectorScaling().fit(LOGITS, LABELS).to_dict()
    d["fitted"][name] = value
    with pytest.raises(ValueError, match=name):
        Calibrator.from_dict(d)


@pytest.mark.parametrize("xs, ys", [([0.1, 0.5], [0.2, 1.5]), ([0.1, 0.5], [-0.1, 0.5]), ([0.5, 0.1], [0.2, 0.3]),
                                    ([0.1, 0.5], [0.6, 0.3]), ([0.1, 0.5, 0.7], [0.2, 0.3])])
def test_isotonic_thresholds_out_of_range_or_unsorted_are_rejected(xs, ys):
    d = IsotonicCalibration().fit(BIN_SCORES, BIN_LABELS).to_dict()
    d["fitted"]["x_thresholds_"], d["fitted"]["y_thresholds_"] = [xs], [ys]
    with pytest.raises(ValueError, match="thresholds_"):
        Calibrator.from_dict(d)


def _accumulator_mutations(d):
    for key in d["config"]:
        for value in HOSTILE:
            m = copy.deepcopy(d)
            m["config"][key] = value
            yield key, m
    for key in ("start", "position", "kind", "weighted", "confidence_level", "metadata"):
        for value in HOSTILE:
            m = copy.deepcopy(d)
            m[key] = value
            yield key, m
    for name in d["arrays"]:
        for value in HOSTILE:
            for field in ("shape", "data"):
                m = copy.deepcopy(d)
                m["arrays"][name][field] = value
                yield name, m
            m = copy.deepcopy(d)
            if m["arrays"][name]["data"]:
                m["arrays"][name]["data"][0] = value
                yield name, m
        m = copy.deepcopy(d)
        m["arrays"][name]["extra"] = 1
        yield name, m
        m = copy.deepcopy(d)
        del m["arrays"][name]
        yield None, m
    m = copy.deepcopy(d)
    m["arrays"]["surplus"] = {"shape": [1], "data": [0.0]}
    yield None, m
    for key in list(d):
        m = copy.deepcopy(d)
        del m[key]
        yield None, m


def test_accumulator_from_dict_fuzz():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, 50)
    acc = CalibrationAccumulator(n_bins=4, fine_bits=1, fine_levels=3, classwise=True, bootstrap=2).update(p, y)
    d = json.loads(json.dumps(acc.to_dict()))
    assert CalibrationAccumulator.from_dict(d).to_bytes() == acc.to_bytes()
    rejected = 0
    for key, m in _accumulator_mutations(d):
        try:
            loaded = CalibrationAccumulator.from_dict(m)
        except ValueError as exc:
            rejected += 1
            if key is not None:
                assert key in str(exc), (key, str(exc))
            continue
        except Exception as exc:  # pragma: no cover - the failure this test is about
            pytest.fail(f"{type(exc).__name__} (not ValueError) from from_dict with {key!r} mutated: {exc}")
        r = loaded.compute()
        assert np.isfinite([r.ece, r.mce, r.ace, r.accuracy, r.brier, r.nll]).all()
    assert rejected > 0


def test_a_state_that_could_not_be_read_back_is_not_written():
    acc = CalibrationAccumulator()
    deep = 1
    for _ in range(40):
        deep = [deep]
    acc.metadata = {"deep": deep}
    with pytest.raises(ValueError, match="nested"):
        acc.to_bytes()
    acc.metadata = {"big": "x" * (1 << 20)}
    with pytest.raises(ValueError, match="bytes"):
        acc.to_bytes()
    acc.metadata = {"note": "[[[{{" * 100}  # brackets inside strings do not count
    assert CalibrationAccumulator.from_bytes(acc.to_bytes()).metadata == acc.metadata


@pytest.mark.parametrize("name", ["windowed_v1", "decayed_v1", "ood_v1"])
def test_stored_window_and_ood_states_still_load(name):
    """Format-1 states of every kind, kept so that later releases are checked against them."""
    expected = json.loads((DATA / "states_v1.json").read_text())[name]
    blob = (DATA / f"{name}.bin").read_bytes()
    state = load_state(blob)
    assert state.to_bytes() == blob
    if name == "ood_v1":
        m = state.compute()
        assert (state.count_in, state.count_out) == (expected["count_in"], expected["count_out"])
        assert (m.auroc, m.aupr_in) == pytest.approx((expected["auroc"], expected["aupr_in"]), rel=1e-12)
    else:
        r = state.compute()
        assert r.count == expected["count"]
        for key in ("ece", "ace", "nll", "classwise_ece"):
            if expected[key] is None:  # JSON null: the metric is undefined for this state
                assert getattr(r, key) is None, key
            else:
                assert getattr(r, key) == pytest.approx(expected[key], rel=1e-12, nan_ok=True), key
