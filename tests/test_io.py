"""calibkit.io: dumps opened without loading, chunked reads, clear errors."""

import zipfile

import numpy as np
import pytest

import calibkit
from calibkit import io


def make(rng, n=1000, k=7, dtype=np.float32):
    return rng.normal(size=(n, k)).astype(dtype), rng.integers(0, k, n)


def test_npy_is_memory_mapped_and_chunked(tmp_path):
    rng = np.random.default_rng(0)
    z, y = make(rng)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    d = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy")
    assert isinstance(d.scores, np.memmap) and d.from_logits and d.n_rows == 1000 and d.n_classes == 7
    rows = [(a, s.shape[0]) for a, s, _ in d.chunks(300)]
    assert rows == [(0, 300), (300, 300), (600, 300), (900, 100)]
    np.testing.assert_array_equal(np.concatenate([s for _, s, _ in d.chunks(300)]), z)
    assert d.chunk_rows(7 * 4 * 10) == 10


def test_prefetched_chunks_equal_plain_chunks(tmp_path):
    rng = np.random.default_rng(10)
    z, y = make(rng, 5000, 9)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    d = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy")
    plain = list(d.chunks(700, prefetch=False))
    fetched = list(d.chunks(700))
    assert [a for a, _, _ in plain] == [a for a, _, _ in fetched] == list(range(0, 5000, 700))
    for (_, s1, y1), (_, s2, y2) in zip(plain, fetched):
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(y1, y2)
    # prepare runs in the reading thread on every block; its result is what comes out
    got = list(d.chunks(700, prepare=lambda a, s, y_: (a, s[:, 0].sum(), len(y_))))
    assert got == [(a, s[:, 0].sum(), len(y_)) for a, s, y_ in plain]
    # a consumer that stops early does not hang, and a failing block raises in the consumer
    for a, _, _ in d.chunks(700):
        if a >= 1400:
            break

    def fail(a, s, y_):
        if a >= 2100:
            raise ValueError(f"block at {a}")
        return a

    with pytest.raises(ValueError, match="block at 2100"):
        list(d.chunks(700, prepare=fail))


def test_stored_npz_members_are_memory_mapped(tmp_path):
    rng = np.random.default_rng(1)
    z, y = make(rng)
    np.savez(tmp_path / "d.npz", probs=np.abs(z), labels=y)
    d = io.open_dump(tmp_path / "d.npz")
    assert isinstance(d.scores, np.memmap) and not d.from_logits
    np.testing.assert_array_equal(np.asarray(d.scores), np.abs(z))
    np.testing.assert_array_equal(np.asarray(d.labels), y)
    zf = np.asfortranarray(z)
    np.savez(tmp_path / "f.npz", logits=zf, labels=y)
    np.testing.assert_array_equal(np.asarray(io.open_dump(tmp_path / "f.npz").scores), z)


def test_compressed_npz_and_splits(tmp_path):
    rng = np.random.default_rng(2)
    (zv, yv), (zt, yt) = make(rng, 300), make(rng, 500)
    np.savez_compressed(tmp_path / "s.npz", val_logits=zv, val_labels=yv, test_logits=zt, test_labels=yt)
    assert io.splits(tmp_path / "s.npz") == ["test", "val"]
    d = io.open_dump(tmp_path / "s.npz")
    assert d.n_rows == 500 and d.name.endswith("test_logits")
    v = io.open_dump(tmp_path / "s.npz", split="val")
    np.testing.assert_array_equal(np.asarray(v.scores), zv)
    with pytest.raises(io.DumpError, match="no split 'train'"):
        io.open_dump(tmp_path / "s.npz", split="train")


def test_directory_of_shards(tmp_path):
    rng = np.random.default_rng(3)
    parts = [make(rng, n) for n in (100, 250, 7)]
    for j, (z, y) in enumerate(parts):
        np.savez(tmp_path / f"shard{j:02d}.npz", logits=z, labels=y)
    d = io.open_dump(tmp_path)
    assert d.n_rows == 357 and len(d.shards) == 3
    whole = np.concatenate([z for z, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    got = np.concatenate([s for _, s, _ in d.chunks(64)])
    np.testing.assert_array_equal(got, whole)
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in d.chunks(64)]), labels)
    # metrics over the chunks equal the one-shot metric
    acc = calibkit.CalibrationAccumulator(from_logits=True)
    for _, s, y in d.chunks(50):
        acc.update(s, y)
    assert acc.compute().ece == pytest.approx(calibkit.ece(whole, labels, from_logits=True), abs=1e-12)
    s, y = d.take(np.arange(357) % 3 == 0)
    np.testing.assert_array_equal(s, whole[::3])


def test_inconsistent_shards(tmp_path):
    rng = np.random.default_rng(4)
    z, y = make(rng, 50, 5)
    np.savez(tmp_path / "a.npz", logits=z, labels=y)
    z2, y2 = make(rng, 50, 6)
    np.savez(tmp_path / "b.npz", logits=z2, labels=y2)
    with pytest.raises(io.DumpError, match="shard .*b.npz.* has scores"):
        io.open_dump(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.DumpError, match="no .npz"):
        io.open_dump(tmp_path / "empty")


def test_split_mask_is_deterministic_and_unbiased():
    m = io.split_mask(100_000, 0.1)
    np.testing.assert_array_equal(m, io.split_mask(100_000, 0.1))
    assert abs(m.mean() - 0.1) < 0.005
    assert abs(m[:50_000].mean() - m[50_000:].mean()) < 0.01  # no dependence on row order
    assert (io.split_mask(1000, 0.3, seed=1) != io.split_mask(1000, 0.3, seed=2)).any()
    with pytest.raises(ValueError, match="fraction"):
        io.split_mask(10, 1.5)


@pytest.mark.parametrize("setup, kwargs, match", [
    (lambda p: np.savez(p / "d.npz", logits=np.zeros((5, 3)), labels=np.zeros(4, int)), {}, "4 labels for 5 rows"),
    (lambda p: np.savez(p / "d.npz", logits=np.zeros((5, 3))), {}, "no labels array"),
    (lambda p: np.savez(p / "d.npz", labels=np.zeros(5, int)), {}, "no scores array"),
    (lambda p: np.savez(p / "d.npz", logits=np.zeros((5, 3)), labels=np.zeros(5)), {}, "labels must be integers"),
    (lambda p: np.savez(p / "d.npz", logits=np.zeros((0, 3)), labels=np.zeros(0, int)), {}, "N >= 1"),
    (lambda p: np.savez(p / "d.npz", logits=np.zeros((5, 3)), labels=np.zeros(5, int)), {"scores_key": "x"},
     "no array 'x'"),
])
def test_bad_dumps(tmp_path, setup, kwargs, match):
    setup(tmp_path)
    with pytest.raises(io.DumpError, match=match):
        io.open_dump(tmp_path / "d.npz", **kwargs)


def test_truncated_and_foreign_files(tmp_path):
    rng = np.random.default_rng(5)
    z, y = make(rng)
    np.save(tmp_path / "z.npy", z)
    data = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(io.DumpError, match="truncated"):
        io.open_dump(tmp_path / "t.npy")
    np.savez(tmp_path / "d.npz", logits=z, labels=y)
    blob = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(io.DumpError, match="t.npz"):
        io.open_dump(tmp_path / "t.npz")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(io.DumpError, match="unknown dump format"):
        io.open_dump(tmp_path / "x.csv")
    with pytest.raises(io.DumpError, match="no such file"):
        io.open_dump(tmp_path / "missing.npz")
    d = io.open_dump(tmp_path / "z.npy")
    with pytest.raises(io.DumpError, match="no labels"):
        next(d.chunks())
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as zf:
        zf.writestr("labels.npy", b"not an npy file")
        zf.writestr("logits.npy", b"nope")
    with pytest.raises(io.DumpError, match="cannot read array"):
        io.open_dump(tmp_path / "obj.npz")


def _arrow_table(z, y, fixed=True):
    pa = pytest.importorskip("pyarrow")
    flat = pa.array(z.reshape(-1))
    if fixed:
        col = pa.FixedSizeListArray.from_arrays(flat, z.shape[1])
    else:
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, z.size + 1, z.shape[1], dtype=np.int32)), flat)
    return pa.table({"logits": col, "labels": pa.array(y)})


@pytest.mark.parametrize("fixed", (True, False))
def test_parquet_by_row_group(tmp_path, fixed):
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(6)
    z, y = make(rng, 1000, 5)
    pq.write_table(_arrow_table(z, y, fixed), tmp_path / "d.parquet", row_group_size=128)
    d = io.open_dump(tmp_path / "d.parquet")
    assert d.n_rows == 1000 and d.n_classes == 5 and d.from_logits and d.scores.dtype == np.float32
    got = np.concatenate([s for _, s, _ in d.chunks(300)])
    np.testing.assert_array_equal(got, z)
    np.testing.assert_array_equal(np.concatenate([y_ for _, _, y_ in d.chunks(300)]), y)
    np.testing.assert_array_equal(d.scores[250:260], z[250:260])


def test_arrow_ipc_and_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc as ipc

    rng = np.random.default_rng(7)
    parts = [make(rng, n, 4) for n in (300, 200)]
    for j, (z, y) in enumerate(parts):
        table = _arrow_table(z, y)
        with pa.OSFile(str(tmp_path / f"s{j}.arrow"), "wb") as sink, ipc.new_file(sink, table.schema) as w:
            w.write_table(table, max_chunksize=64)
    d = io.open_dump(tmp_path)
    np.testing.assert_array_equal(np.concatenate([s for _, s, _ in d.chunks(128)]),
                                  np.concatenate([z for z, _ in parts]))


def test_bad_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    ragged = pa.table({"probs": pa.array([[0.5, 0.5], [1.0]]), "labels": pa.array([0, 0])})
    pq.write_table(ragged, tmp_path / "r.parquet")
    d = io.open_dump(tmp_path / "r.parquet")
    with pytest.raises(io.DumpError, match="row 1 of column 'probs' has 1 values"):
        next(d.chunks())
    nulls = pa.table({"probs": pa.array([[0.5, 0.5], None]), "labels": pa.array([0, 0])})
    pq.write_table(nulls, tmp_path / "n.parquet")
    with pytest.raises(io.DumpError, match="missing values"):
        next(io.open_dump(tmp_path / "n.parquet").chunks())
    pq.write_table(pa.table({"logits": pa.array([[1.0, 2.0]])}), tmp_path / "nolabels.parquet")
    with pytest.raises(io.DumpError, match="no labels array"):
        io.open_dump(tmp_path / "nolabels.parquet")
    pq.write_table(pa.table({"logits": pa.array(["a"]), "labels": pa.array([0])}), tmp_path / "s.parquet")
    with pytest.raises(io.DumpError, match="not numbers"):
        io.open_dump(tmp_path / "s.parquet")
    (tmp_path / "t.parquet").write_bytes((tmp_path / "r.parquet").read_bytes()[:40])
    with pytest.raises(io.DumpError, match="truncated"):
        io.open_dump(tmp_path / "t.parquet")


def _split_dumps(tmp_path, z, y):
    """The same rows as an .npy, a stored .npz (both read by scatter reads), a compressed .npz and shards."""
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    np.savez(tmp_path / "stored.npz", logits=z, labels=y)
    np.savez_compressed(tmp_path / "packed.npz", logits=z, labels=y)
    (tmp_path / "shards").mkdir()
    np.savez(tmp_path / "shards" / "a.npz", logits=z[:1000], labels=y[:1000])
    np.savez(tmp_path / "shards" / "b.npz", logits=z[1000:], labels=y[1000:])
    return [io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy"),
            io.open_dump(tmp_path / "stored.npz"), io.open_dump(tmp_path / "packed.npz"),
            io.open_dump(tmp_path / "shards")]


@pytest.mark.parametrize("which", ["random", "dense", "none", "all", "prefix", "alternate"])
def test_split_chunks_equal_masked_rows(tmp_path, which):
    rng = np.random.default_rng(11)
    z, y = make(rng, 2503, 5)
    mask = {"random": io.split_mask(2503, 0.1), "dense": io.split_mask(2503, 0.9), "none": np.zeros(2503, bool),
            "all": np.ones(2503, bool), "prefix": np.arange(2503) < 1200,
            "alternate": np.arange(2503) % 2 == 1}[which]
    for d in _split_dumps(tmp_path, z, y):
        for held, prefetch in [(True, True), (False, True), (True, False)]:
            blocks = list(d.split_chunks(mask, 300, held=held, prefetch=prefetch))
            assert [b.first_row for b in blocks] == list(range(0, 2503, 300))
            assert sum(b.n_rows for b in blocks) == 2503
            np.testing.assert_array_equal(np.concatenate([b.held_mask for b in blocks]), mask)
            np.testing.assert_array_equal(np.concatenate([b.scores for b in blocks]), z[~mask])
            np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]), y[~mask])
            if held:
                np.testing.assert_array_equal(np.concatenate([b.held_scores for b in blocks]), z[mask])
                np.testing.assert_array_equal(np.concatenate([b.held_labels for b in blocks]), y[mask])
            else:
                assert all(b.held_scores is None and b.held_labels is None for b in blocks)
    np.testing.assert_array_equal(z, np.load(tmp_path / "logits.npy"))  # the input is not modified


def test_split_chunks_short_reads_and_fallback(tmp_path, monkeypatch):
    """The scatter read resumes after short reads (as a signal or a slow device may cause), fails on a file
    that ends early, and without a C preadv splits by a copy."""
    rng = np.random.default_rng(12)
    z, y = make(rng, 1500, 3)
    d = _split_dumps(tmp_path, z, y)[0]
    mask = io.split_mask(1500, 0.3)
    real = io._preadv

    def short(fd, iov, count, pos):  # at most 1 + pos % 37 bytes per call, within the first buffer
        import ctypes

        first = np.ctypeslib.as_array((ctypes.c_uint64 * 2).from_address(iov)).copy()
        first[1] = min(int(first[1]), 1 + pos % 37)
        return real(fd, first.ctypes.data, 1, pos)

    monkeypatch.setattr(io, "_preadv", short)
    blocks = list(d.split_chunks(mask, 400))
    np.testing.assert_array_equal(np.concatenate([b.scores for b in blocks]), z[~mask])
    np.testing.assert_array_equal(np.concatenate([b.held_scores for b in blocks]), z[mask])
    monkeypatch.setattr(io, "_preadv", lambda fd, iov, count, pos: 0)
    with pytest.raises(io.DumpError, match="ended early"):
        list(d.split_chunks(mask, 400))
    monkeypatch.setattr(io, "_preadv", None)
    blocks = list(d.split_chunks(mask, 400, held=False))
    np.testing.assert_array_equal(np.concatenate([b.scores for b in blocks]), z[~mask])
    with pytest.raises(ValueError, match=r"mask must have shape \(1500,\), got \(3,\)"):
        next(d.split_chunks(np.ones(3, bool)))


@pytest.mark.parametrize("merge_bytes", [-1, 0, 24, 100, 1 << 20])
def test_take_reads_the_selected_rows_of_a_file(tmp_path, monkeypatch, merge_bytes):
    """Dump.take of a file reads the selected rows by themselves: runs close together by one scatter read (the
    rows between them into scratch), others by their own read; the same rows as NumPy's mask, for any merge
    distance, after short reads, with a long group (> _IOV_MAX buffers), and without a C preadv."""
    rng = np.random.default_rng(13)
    z, y = make(rng, 5000, 3)
    dumps = _split_dumps(tmp_path, z, y)
    monkeypatch.setattr(io, "_MERGE_BYTES", merge_bytes)
    masks = [io.split_mask(5000, 0.1), io.split_mask(5000, 0.9), np.arange(5000) % 2 == 0,
             np.arange(5000) == 4999, np.arange(5000) < 1, (np.arange(5000) // 700) % 2 == 1]
    for mask in masks:
        for d in dumps:
            s, lab = d.take(mask)
            np.testing.assert_array_equal(s, z[mask])
            np.testing.assert_array_equal(lab, y[mask])
    real = io._preadv

    def short(fd, iov, count, pos):  # at most 1 + pos % 37 bytes per call, within the first buffer
        import ctypes

        first = np.ctypeslib.as_array((ctypes.c_uint64 * 2).from_address(iov)).copy()
        first[1] = min(int(first[1]), 1 + pos % 37)
        return real(fd, first.ctypes.data, 1, pos)

    monkeypatch.setattr(io, "_preadv", short)
    np.testing.assert_array_equal(dumps[0].take(masks[0])[0], z[masks[0]])
    monkeypatch.setattr(io, "_preadv", None)
    np.testing.assert_array_equal(dumps[0].take(masks[2])[0], z[masks[2]])
    with pytest.raises(ValueError, match=r"mask must have shape \(5000,\), got \(3,\)"):
        dumps[0].take(np.ones(3, bool))
    np.testing.assert_array_equal(z, np.load(tmp_path / "logits.npy"))  # the input is not modified


@pytest.mark.parametrize("split", [False, True])
def test_block_buffers_are_reused_only_when_nothing_references_them(tmp_path, split):
    """A file's blocks are read into the buffers of earlier blocks (no fresh mapping to fault in per block), but
    only buffers that nothing references any more: a block kept whole, as a view or as a memoryview keeps its
    values; blocks dropped as they go take a few buffers in turn."""
    rng = np.random.default_rng(12)
    z, y = make(rng, 4000, 6)
    np.save(tmp_path / "logits.npy", z)
    np.save(tmp_path / "labels.npy", y)
    d = io.open_dump(tmp_path / "logits.npy", labels=tmp_path / "labels.npy")
    mask = io.split_mask(4000, 0.2)
    want = z[~mask] if split else z

    def blocks(prefetch=True):
        if split:
            for b in d.split_chunks(mask, 100, held=False, prefetch=prefetch):
                yield b.scores
        else:
            for _, s, _ in d.chunks(100, prefetch=prefetch):
                yield s

    for prefetch in (True, False):
        whole, views, memories = [], [], []
        for j, s in enumerate(blocks(prefetch)):
            if j % 3 == 0:
                whole.append((j, s))
            elif j % 3 == 1:
                views.append((j, s[::2]))
            else:
                memories.append((j, memoryview(s)))
            del s
        got = list(blocks(prefetch))  # all kept: no two share memory
        np.testing.assert_array_equal(np.concatenate(got), want)
        assert len({s.ctypes.data for s in got}) == len(got) == 40
        rows = np.cumsum([0] + [len(s) for s in got])
        for j, s in whole:
            np.testing.assert_array_equal(s, want[rows[j]:rows[j + 1]])
        for j, v in views:
            np.testing.assert_array_equal(v, want[rows[j]:rows[j + 1]][::2])
        for j, m in memories:
            np.testing.assert_array_equal(np.asarray(m), want[rows[j]:rows[j + 1]])
        del whole, views, memories, got
        # dropped as they go: a few buffers serve all 40 blocks
        seen = set()
        for j, s in enumerate(blocks(prefetch)):
            seen.add(s.ctypes.data)
            np.testing.assert_array_equal(s, want[rows[j]:rows[j + 1]])
            del s
        assert len(seen) <= 5
