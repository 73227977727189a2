"""The TensorFlow checkpoint format: reading TF's files, writing files TF reads, state file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from varstore import dtypes
from varstore.errors import DataLossError, NotFoundError
from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle import (
    BundleReader,
    BundleWriter,
    checkpoint_files,
    clean_leftovers,
    latest_checkpoint,
    merge_shards,
    part_prefix,
    read_state,
    write_state,
)
from varstore.server.bundle.ordered_code import encode_slice_key
from varstore.server.bundle.table import BLOCK_SIZE, TableBuilder, read_table

TF_DATA = Path(__file__).parents[1] / "data" / "tf_checkpoints"
EXPECTED = json.loads((TF_DATA / "expected.json").read_text())
NAMES = ["golden", "sharded", "tf2obj"]


@pytest.fixture(scope="module")
def expected_npz() -> Any:
    with np.load(TF_DATA / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Exact equality: same dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == object:
        assert a.tolist() == b.tolist()
    else:
        assert a.tobytes() == b.tobytes()


def _copy_golden(tmp_path: Path, name: str) -> str:
    for f in TF_DATA.glob(f"{name}.*"):
        shutil.copy(f, tmp_path / f.name)
    return str(tmp_path / name)


def _flip(path: str | Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def _rewrite(source: str, target: str, order: list[str] | None = None) -> None:
    """Writes every tensor of ``source`` to ``target``; partitioned ones slice by slice."""
    with BundleReader(source) as r, BundleWriter(target) as w:
        for key in order or r.keys():
            info, value = r.entry(key), r.read(key)
            if not info.sliced:
                w.add(key, value, info.dtype)
                continue
            for spec in r._proto(key).slices:
                starts = [e.start for e in spec.extent]
                index = tuple(slice(e.start, e.start + e.length) for e in spec.extent)
                w.add_slice(key, info.shape, starts, value[index], info.dtype)


# --- reading TensorFlow's files ---

@pytest.mark.parametrize("name", NAMES)
def test_reads_every_tensor_tf_wrote(name: str, expected_npz: dict[str, np.ndarray]) -> None:
    expected = EXPECTED[name]
    with BundleReader(TF_DATA / name) as r:
        assert r.keys() == sorted(expected)
        for key, want in expected.items():
            info = r.entry(key)
            value = r.read(key)
            assert info.dtype.name == want["dtype"] and info.key == key
            assert info.shape == tuple(want["shape"]) == value.shape
            assert value.dtype == info.dtype.np_dtype
            if "npz_key" in want:
                _same(value, expected_npz[want["npz_key"]])
            elif "value_as_float32" in want:
                _same(value.astype(np.float32), np.array(want["value_as_float32"], np.float32))
            elif "value_utf8" in want:
                assert value.tolist() == [s.encode() for s in want["value_utf8"]]
            else:
                assert key == "_CHECKPOINTABLE_OBJECT_GRAPH" and info.dtype == dtypes.string
                graph = value.item()
                assert isinstance(graph, bytes)
                assert b"model/w/.ATTRIBUTES/VARIABLE_VALUE" in graph


def test_partitioned_tensor_is_assembled_and_its_slices_hidden() -> None:
    with BundleReader(TF_DATA / "golden") as r:
        info = r.entry("part/P")
        assert info.sliced and info.shape == (10, 4) and info.size == 160
        assert not any(k.startswith("\x00") for k in r.keys())
        assert all(not r.entry(k).sliced for k in r.keys() if k != "part/P")
        assert "part/P" in r and "nope" not in r
        out = np.empty((10, 4), np.float32)
        r.read_into("part/P", out)
        _same(out, r.read("part/P"))


def test_sharded_checkpoint_reads_both_data_files() -> None:
    with BundleReader(TF_DATA / "sharded") as r:
        assert r.num_shards == 2
        assert r._proto("ps1/b").shard_id == 1


def test_read_into_rejects_a_mismatched_array() -> None:
    with BundleReader(TF_DATA / "golden") as r:
        with pytest.raises(ValueError):
            r.read_into("f32", np.empty((3, 4), np.float32))
        with pytest.raises(ValueError):
            r.read_into("f32", np.empty((4, 3), np.float64))
        with pytest.raises(ValueError):
            r.read_into("f32", np.empty((3, 4), np.float32).T)


# --- byte identity with TensorFlow ---

def test_slice_keys_encode_as_tensorflow_does() -> None:
    with BundleReader(TF_DATA / "golden") as r:
        slice_keys = [k for k in r._table if k.startswith(b"\x00")]
    assert slice_keys == [encode_slice_key("part/P", [s, 0], [n, 4])
                          for s, n in [(0, 4), (4, 3), (7, 3)]]
    # Multi-byte and negative (whole-dimension) numbers, and escaped name bytes.
    assert encode_slice_key(b"a\x00\xff", [64, 0], [-1, 10000]) == (
        b"\x00a\x00\xff\xff\x00\x00\x01\x01\x02\xc0\x40\x7f\x80\xe0\x27\x10")


@pytest.mark.parametrize("name,order", [
    ("golden", None),
    # A TF2 checkpoint stores data in object-graph order, not key order.
    ("tf2obj", ["model/w/.ATTRIBUTES/VARIABLE_VALUE", "model/step/.ATTRIBUTES/VARIABLE_VALUE",
                "_CHECKPOINTABLE_OBJECT_GRAPH"]),
])
def test_rewriting_a_tf_checkpoint_gives_identical_bytes(
        tmp_path: Path, name: str, order: list[str] | None) -> None:
    _rewrite(str(TF_DATA / name), str(tmp_path / name), order)
    for suffix in (".index", ".data-00000-of-00001"):
        assert (tmp_path / f"{name}{suffix}").read_bytes() == (
            TF_DATA / f"{name}{suffix}").read_bytes(), suffix


def test_table_builder_reproduces_tf_indexes() -> None:
    for name in NAMES:
        raw = (TF_DATA / f"{name}.index").read_bytes()
        builder = TableBuilder()
        for key, value in read_table(raw):
            builder.add(key, value)
        assert builder.finish() == raw


# --- round trips ---

def _sample(dtype: dtypes.DType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    n = int(np.prod(shape))
    if dtype.is_string:
        pool = [b"", b"a", "wörld ✓".encode(), b"\x00\xff\x80", b"x" * 200]
        flat = np.empty(n, dtype=object)
        flat[:] = [pool[i % len(pool)] for i in range(n)]
        return flat.reshape(shape)
    if dtype == dtypes.bool_:
        return rng.integers(0, 2, n).astype(bool).reshape(shape)
    if dtype.is_integer:
        info = np.iinfo(dtype.np_dtype)
        values = rng.integers(info.min, info.max, n, dtype=dtype.np_dtype, endpoint=True)
        if n >= 2:
            values[:2] = [info.min, info.max]
        return values.reshape(shape)
    if dtype.name.startswith("complex"):
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(
            dtype.np_dtype).reshape(shape)
    values = rng.standard_normal(n).astype(np.float32).astype(dtype.np_dtype)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0], np.float32).astype(dtype.np_dtype)
    values[:min(n, 4)] = specials[:min(n, 4)]
    return values.reshape(shape)


SHAPES = [(), (0,), (2, 0, 3), (7,), (3, 5), (2, 3, 4)]


def test_round_trip_of_every_dtype_and_shape(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    written = {}
    prefix = tmp_path / "all"
    with BundleWriter(prefix) as w:
        for dtype in dtypes.ALL:
            for shape in SHAPES:
                key = f"{dtype.name}/{'x'.join(map(str, shape)) or 'scalar'}"
                written[key] = (dtype, _sample(dtype, shape, rng))
                w.add(key, written[key][1], dtype)
    with BundleReader(prefix) as r:
        assert r.keys() == sorted(written)
        for key, (dtype, value) in written.items():
            info = r.entry(key)
            assert (info.dtype, info.shape, info.sliced) == (dtype, value.shape, False)
            _same(r.read(key), value)


def test_strings_accept_str_and_numpy_string_arrays(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "s") as w:
        w.add("str", np.array(["ä", "", "z"], dtype=object), dtypes.string)
        w.add("unicode", np.array(["héllo", "x"]), dtypes.string)
        w.add("bytes", np.array([b"ab", b"c"]), dtypes.string)
        w.add("scalar", np.array(b"only", dtype=object), dtypes.string)
        w.add("none", np.empty((0, 2), dtype=object), dtypes.string)
    with BundleReader(tmp_path / "s") as r:
        assert r.read("str").tolist() == ["ä".encode(), b"", b"z"]
        assert r.read("unicode").tolist() == ["héllo".encode(), b"x"]
        assert r.read("bytes").tolist() == [b"ab", b"c"]
        assert r.read("scalar").shape == () and r.read("scalar").item() == b"only"
        assert r.read("none").shape == (0, 2)


def test_twenty_thousand_keys_span_several_index_blocks(tmp_path: Path) -> None:
    keys = [f"scope_{i % 7}/layer_{i:05d}/kernel" for i in range(20_000)]
    prefix = tmp_path / "many"
    with BundleWriter(prefix) as w:
        for i, key in enumerate(reversed(keys)):
            w.add(key, np.full((2,), i, np.int32), dtypes.int32)
    assert os.path.getsize(f"{prefix}.index") > 2 * BLOCK_SIZE
    with BundleReader(prefix) as r:
        assert r.keys() == sorted(keys)
        for i, key in enumerate(reversed(keys)):
            if i % 997 == 0:
                _same(r.read(key), np.full((2,), i, np.int32))


def test_multi_megabyte_tensor_streams_in_chunks(tmp_path: Path) -> None:
    value = np.random.default_rng(1).standard_normal((3000, 1500)).astype(np.float32)  # 18 MB
    with BundleWriter(tmp_path / "big") as w:
        w.add("small", np.arange(3, dtype=np.int64), dtypes.int64)
        w.add("big", value, dtypes.float32)
        w.add("big_t", value[:100].T, dtypes.float32)  # non-contiguous input
        w.add_chunks("chunked", dtypes.float32, value.shape,
                     (value[i:i + 512].copy() for i in range(0, 3000, 512)))
    with BundleReader(tmp_path / "big") as r:
        _same(r.read("big"), value)
        _same(r.read("chunked"), value)
        _same(r.read("big_t"), np.ascontiguousarray(value[:100].T))
        out = np.empty_like(value)
        r.read_into("big", out)
        _same(out, value)
        assert r.entry("big").size == value.nbytes


def test_add_chunks_matches_add_and_checks_the_size(tmp_path: Path) -> None:
    value = np.arange(24, dtype=np.float64).reshape(4, 6)
    with BundleWriter(tmp_path / "a") as w:
        w.add("v", value, dtypes.float64)
    with BundleWriter(tmp_path / "b") as w:
        w.add_chunks("v", dtypes.float64, (4, 6), [value[:1], value[1:3].tobytes(), value[3:]])
        with pytest.raises(ValueError):
            w.add_chunks("short", dtypes.float64, (4, 6), [value[:3]])
    with BundleReader(tmp_path / "b") as r:
        assert r.keys() == ["v"]
        _same(r.read("v"), value)
    assert (tmp_path / "a.index").read_bytes() == (tmp_path / "b.index").read_bytes()


def test_keys_in_any_order_and_bad_adds(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "o") as w:
        w.add("b", np.ones(2, np.float32), dtypes.float32)
        w.add("a", np.zeros(3, np.float32), dtypes.float32)
        w.add("é", np.zeros(1, np.float32), dtypes.float32)
        w.add("B", np.zeros(1, np.float32), dtypes.float32)
        with pytest.raises(ValueError, match="duplicate"):
            w.add("a", np.zeros(3, np.float32), dtypes.float32)
        for bad in ("", "\x00x"):
            with pytest.raises(ValueError):
                w.add(bad, np.zeros(1, np.float32), dtypes.float32)
        with pytest.raises(ValueError, match="dtype"):
            w.add("c", np.zeros(3, np.float64), dtypes.float32)
        w.add("be", np.arange(3, dtype=">i4"), dtypes.int32)
    with BundleReader(tmp_path / "o") as r:
        assert r.keys() == ["B", "a", "b", "be", "é"]  # bytewise UTF-8 order
        assert r._proto("a").offset == 8  # data stays in the order it was added
        _same(r.read("be"), np.arange(3, dtype=np.int32))
    with pytest.raises(RuntimeError):
        w.add("late", np.zeros(1, np.float32), dtypes.float32)


def test_partitioned_writes_and_reads(tmp_path: Path) -> None:
    full = np.arange(60, dtype=np.float32).reshape(6, 10)
    words = np.array([[f"{i},{j}".encode() for j in range(4)] for i in range(3)], dtype=object)
    with BundleWriter(tmp_path / "p") as w:
        w.add_slice("cols", (6, 10), (0, 6), full[:, 6:], dtypes.float32)  # any order
        w.add_slice("cols", (6, 10), (0, 0), full[:, :6], dtypes.float32)
        w.add_slice("rows", (6, 10), (0, 0), full[:2], dtypes.float32)
        w.add_slice("rows", (6, 10), (2, 0), full[2:], dtypes.float32)
        w.add_slice("whole", (6, 10), (0, 0), full, dtypes.float32)
        w.add_slice("words", (3, 4), (0, 2), words[:, 2:], dtypes.string)
        w.add_slice("words", (3, 4), (0, 0), words[:, :2], dtypes.string)
        with pytest.raises(ValueError, match="overlaps"):
            w.add_slice("rows", (6, 10), (1, 0), full[1:2], dtypes.float32)
        with pytest.raises(ValueError, match="outside"):
            w.add_slice("rows", (6, 10), (5, 0), full[:2], dtypes.float32)
    with BundleReader(tmp_path / "p") as r:
        assert r.keys() == ["cols", "rows", "whole", "words"]
        assert [r.entry(k).sliced for k in r.keys()] == [True, True, False, True]
        for key in ("cols", "rows", "whole"):
            _same(r.read(key), full)
        assert r.read("words").tolist() == words.tolist()


# --- atomicity and leftovers ---

def test_nothing_is_visible_before_finish(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "ck")
    w.add("v", np.ones(4, np.float32), dtypes.float32)
    names = os.listdir(tmp_path)
    assert len(names) == 1 and ".tempstate" in names[0]
    assert latest_checkpoint(tmp_path) is None
    w.finish()
    assert sorted(os.listdir(tmp_path)) == ["ck.data-00000-of-00001", "ck.index"]
    with pytest.raises(RuntimeError):
        w.finish()


def test_abort_and_exceptions_leave_nothing(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "a")
    w.add("v", np.ones(4, np.float32), dtypes.float32)
    w.abort()
    w.abort()
    with pytest.raises(KeyError):
        with BundleWriter(tmp_path / "b") as w2:
            w2.add("v", np.ones(4, np.float32), dtypes.float32)
            raise KeyError("boom")
    assert os.listdir(tmp_path) == []


def test_clean_leftovers_removes_only_varstores_own_temp_files(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "good") as w:
        w.add("v", np.ones(1, np.float32), dtypes.float32)
    crashed = BundleWriter(tmp_path / "crashed")
    crashed.add("v", np.ones(1, np.float32), dtypes.float32)
    crashed._flush()
    with BundleWriter(part_prefix(tmp_path / "sh", 0, 2)) as w:
        w.add("v", np.ones(1, np.float32), dtypes.float32)
    (tmp_path / "c.tempstate0123abcd_part-00001-of-00002.index").write_text("x")
    # Files varstore never writes stay, whatever they look like: TensorFlow's temp files,
    # data files whose index is elsewhere, names that merely contain ".tempstate".
    foreign = ["checkpoint.tmp0123456789abcdef0123456789abcdef", "half.data-00000-of-00002",
               "notes.tempstate.txt", "m.data-00000-of-00001.tempstate123", "notes.txt"]
    for name in foreign:
        (tmp_path / name).write_text("keep")
    removed = clean_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([
        os.path.basename(crashed._data_temp),
        "c.tempstate0123abcd_part-00001-of-00002.index",
        "sh.tempstate-part-00000-of-00002.data-00000-of-00001",
        "sh.tempstate-part-00000-of-00002.index",
    ])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["good.data-00000-of-00001", "good.index", *foreign])
    assert clean_leftovers(tmp_path / "missing") == []
    crashed.abort()


# --- sharded saves ---

def test_merge_shards(tmp_path: Path) -> None:
    parts = [part_prefix(tmp_path / "model.ckpt-1", i, 2) for i in range(2)]
    full = np.arange(12, dtype=np.int64).reshape(4, 3)
    with BundleWriter(parts[0]) as w:
        w.add("ps0/a", np.ones((2, 3), np.float32), dtypes.float32)
        w.add_slice("shared/P", (4, 3), (0, 0), full[:2], dtypes.int64)
    with BundleWriter(parts[1]) as w:
        w.add("ps1/b", np.array([b"x", b"yz"], dtype=object), dtypes.string)
        w.add_slice("shared/P", (4, 3), (2, 0), full[2:], dtypes.int64)
    prefix = tmp_path / "model.ckpt-1"
    merge_shards(parts, prefix)
    assert sorted(os.listdir(tmp_path)) == [
        "model.ckpt-1.data-00000-of-00002", "model.ckpt-1.data-00001-of-00002",
        "model.ckpt-1.index"]
    assert [p.name for p in checkpoint_files(prefix)] == sorted(os.listdir(tmp_path))
    with BundleReader(prefix) as r:
        assert r.num_shards == 2
        assert r.keys() == ["ps0/a", "ps1/b", "shared/P"]
        _same(r.read("ps0/a"), np.ones((2, 3), np.float32))
        assert r.read("ps1/b").tolist() == [b"x", b"yz"]
        assert r._proto("ps1/b").shard_id == 1
        _same(r.read("shared/P"), full)


def test_merge_shards_rejects_duplicates_without_changing_anything(tmp_path: Path) -> None:
    parts = [str(tmp_path / f"p{i}") for i in range(2)]
    for part in parts:
        with BundleWriter(part) as w:
            w.add("same", np.ones(1, np.float32), dtypes.float32)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ValueError, match="same"):
        merge_shards(parts, tmp_path / "merged")
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(ValueError):
        merge_shards([], tmp_path / "merged")


def test_merged_golden_sharded_layout_matches_tf(tmp_path: Path) -> None:
    with BundleReader(TF_DATA / "sharded") as r:
        values = {k: (r.entry(k).dtype, r.read(k)) for k in r.keys()}
    parts = [str(tmp_path / "part0"), str(tmp_path / "part1")]
    for part, key in zip(parts, sorted(values), strict=True):
        with BundleWriter(part) as w:
            w.add(key, values[key][1], values[key][0])
    merge_shards(parts, tmp_path / "sharded")
    for name in ("index", "data-00000-of-00002", "data-00001-of-00002"):
        assert (tmp_path / f"sharded.{name}").read_bytes() == (
            TF_DATA / f"sharded.{name}").read_bytes(), name


# --- corruption ---

def _small_checkpoint(tmp_path: Path) -> str:
    prefix = str(tmp_path / "c")
    with BundleWriter(prefix) as w:
        w.add("first", np.arange(100, dtype=np.float32), dtypes.float32)
        w.add("second", np.arange(10, dtype=np.int64), dtypes.int64)
        w.add("words", np.array([b"abc", b"de"], dtype=object), dtypes.string)
    return prefix


def test_flipped_data_byte_names_the_tensor_and_file(tmp_path: Path) -> None:
    prefix = _small_checkpoint(tmp_path)
    _flip(f"{prefix}.data-00000-of-00001", 401)  # inside "second"
    with BundleReader(prefix) as r:
        _same(r.read("first"), np.arange(100, dtype=np.float32))
        with pytest.raises(DataLossError) as err:
            r.read("second")
    assert "second" in str(err.value) and f"{prefix}.data-00000-of-00001" in str(err.value)


def test_verify_checks_every_chunk_and_verified_read_into_fills_the_array(tmp_path: Path
                                                                           ) -> None:
    prefix = str(tmp_path / "big")
    values = np.arange(3 << 20, dtype=np.float32)  # 12 MB: several of the reader's chunks
    with BundleWriter(prefix) as w:
        w.add("big", values, dtypes.float32)
        w.add("words", np.array([b"abc", b"de"], dtype=object), dtypes.string)
    with BundleReader(prefix) as r:
        r.verify("big")
        r.verify("words")
        out = np.zeros_like(values)
        r.read_into("big", out, verified=True)
    _same(out, values)
    _flip(f"{prefix}.data-00000-of-00001", values.nbytes - 3)  # in the last chunk
    with BundleReader(prefix) as r, pytest.raises(DataLossError) as err:
        r.verify("big")
    assert "tensor big" in str(err.value) and "checksum mismatch" in str(err.value)


def test_flipped_string_bytes_are_data_loss(tmp_path: Path) -> None:
    prefix = _small_checkpoint(tmp_path)
    with BundleReader(prefix) as r:
        offset = r._proto("words").offset
    for where in (0, 3, 7):  # a length, the length checksum, a string byte
        shutil.copy(f"{prefix}.data-00000-of-00001", tmp_path / "backup")
        _flip(f"{prefix}.data-00000-of-00001", offset + where)
        with BundleReader(prefix) as r, pytest.raises(DataLossError, match="words"):
            r.read("words")
        shutil.copy(tmp_path / "backup", f"{prefix}.data-00000-of-00001")


def test_truncated_data_file_is_data_loss(tmp_path: Path) -> None:
    prefix = _small_checkpoint(tmp_path)
    os.truncate(f"{prefix}.data-00000-of-00001", 300)
    with BundleReader(prefix) as r, pytest.raises(DataLossError, match="second"):
        r.read("second")


@pytest.mark.parametrize("where", [10, -60, -45, -1])  # data block, its trailer, index, magic
def test_flipped_index_byte_is_data_loss(tmp_path: Path, where: int) -> None:
    prefix = _small_checkpoint(tmp_path)
    size = os.path.getsize(f"{prefix}.index")
    _flip(f"{prefix}.index", where % size)
    with pytest.raises(DataLossError, match=r"c\.index"):
        BundleReader(prefix)


@pytest.mark.parametrize("keep", [0, 10, 47, -1])
def test_truncated_index_is_data_loss(tmp_path: Path, keep: int) -> None:
    prefix = _small_checkpoint(tmp_path)
    size = os.path.getsize(f"{prefix}.index")
    os.truncate(f"{prefix}.index", keep % size)
    with pytest.raises(DataLossError):
        BundleReader(prefix)


def test_missing_key_checkpoint_and_data_file(tmp_path: Path) -> None:
    prefix = _small_checkpoint(tmp_path)
    with BundleReader(prefix) as r:
        for call in (r.read, r.entry):
            with pytest.raises(NotFoundError) as err:
                call("nothing/here")
            assert "nothing/here" in str(err.value) and prefix in str(err.value)
        with pytest.raises(NotFoundError):
            r.read("")
    with pytest.raises(NotFoundError, match="other"):
        BundleReader(tmp_path / "other")
    os.unlink(f"{prefix}.data-00000-of-00001")
    with BundleReader(prefix) as r, pytest.raises(NotFoundError, match="data-00000"):
        r.read("first")


# --- the checkpoint state file ---

def _save(directory: Path, name: str) -> str:
    with BundleWriter(directory / name) as w:
        w.add("step", np.array(int(name.rsplit("-", 1)[1]), np.int64), dtypes.int64)
    return str(directory / name)


def test_golden_state_file_parses() -> None:
    state = read_state(TF_DATA)
    assert state is not None
    assert state.model_checkpoint_path == str(TF_DATA / "golden")
    assert list(state.all_model_checkpoint_paths) == [str(TF_DATA / "golden")]
    assert latest_checkpoint(TF_DATA) == str(TF_DATA / "golden")


def test_state_file_lists_what_it_is_given_and_deletes_nothing(tmp_path: Path) -> None:
    assert read_state(tmp_path) is None and latest_checkpoint(tmp_path) is None
    for step in range(1, 5):
        _save(tmp_path, f"model.ckpt-{step}")
    write_state(tmp_path, tmp_path / "model.ckpt-4",
                [str(tmp_path / "model.ckpt-3"), str(tmp_path / "model.ckpt-4")])
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".index")]) == 4
    text = (tmp_path / "checkpoint").read_text()
    assert text == ('model_checkpoint_path: "model.ckpt-4"\n'
                    'all_model_checkpoint_paths: "model.ckpt-3"\n'
                    'all_model_checkpoint_paths: "model.ckpt-4"\n')
    assert latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-4")
    write_state(tmp_path, tmp_path / "model.ckpt-4", [], timestamps=[5.0])
    parsed = text_format.Parse((tmp_path / "checkpoint").read_text(), pb.CheckpointState())
    assert list(parsed.all_model_checkpoint_timestamps) == [5.0]
    assert parsed.last_preserved_timestamp == 4.0
    with pytest.raises(ValueError):
        write_state(tmp_path, tmp_path / "model.ckpt-4", [], timestamps=[1.0, 2.0])

    # The newest is appended when missing; another state file leaves this one alone.
    write_state(tmp_path, str(tmp_path / "model.ckpt-2"), [], "other")
    state = read_state(tmp_path, "other")
    assert state is not None
    assert list(state.all_model_checkpoint_paths) == [str(tmp_path / "model.ckpt-2")]
    assert latest_checkpoint(tmp_path, "other") == str(tmp_path / "model.ckpt-2")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "model.ckpt-4")

    # The index vanishing hides the checkpoint; no temp file stays behind.
    os.unlink(tmp_path / "model.ckpt-4.index")
    assert latest_checkpoint(tmp_path) is None
    assert not [n for n in os.listdir(tmp_path) if "tempstate" in n]


def test_state_outside_paths_stay_absolute(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    other = tmp_path / "elsewhere"
    ckpt_dir.mkdir()
    other.mkdir()
    write_state(ckpt_dir, _save(other, "x-1"), [])
    parsed = text_format.Parse((ckpt_dir / "checkpoint").read_text(), pb.CheckpointState())
    assert parsed.model_checkpoint_path == str(other / "x-1")
    assert latest_checkpoint(ckpt_dir) == str(other / "x-1")


def test_unparseable_state_file_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").write_text("this is { not text format")
    assert read_state(tmp_path) is None
    assert latest_checkpoint(tmp_path) is None
