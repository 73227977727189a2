"""Crafted checkpoints: every size, offset, count and varint a checkpoint file declares is
checked with exact integers before anything is allocated or read, and a bad one is a
``DataLossError`` naming the file and what is wrong. Also a seeded fuzz over real files."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import google_crc32c
import numpy as np
import pytest

from varstore.common import dtypes
from varstore.common.codec import put_varint
from varstore.common.errors import DataLossError, OpError
from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle import BundleReader, BundleWriter, data_path, index_path
from varstore.server.bundle.ordered_code import encode_slice_key
from varstore.server.bundle.table import (
    FOOTER_SIZE,
    MAGIC,
    TableBuilder,
    TableError,
    mask_crc,
    read_table,
)


def _header() -> bytes:
    return pb.BundleHeaderProto(num_shards=1, version=pb.VersionDef(producer=1)).SerializeToString()


def _entry(dtype: int, shape: list[int], offset: int, size: int, crc: int = 0,
           slices: list[list[tuple[int, int]]] | None = None) -> pb.BundleEntryProto:
    proto = pb.BundleEntryProto(dtype=dtype, offset=offset, size=size, crc32c=crc)
    for d in shape:
        proto.shape.dim.add(size=d)
    for extents in slices or []:
        spec = proto.slices.add()
        for start, length in extents:
            spec.extent.add(start=start, length=length)
    return proto


def _write(prefix: Path, entries: dict[bytes, pb.BundleEntryProto], data: bytes) -> str:
    builder = TableBuilder()
    builder.add(b"", _header())
    for key in sorted(entries):
        builder.add(key, entries[key].SerializeToString())
    Path(index_path(prefix)).write_bytes(builder.finish())
    Path(data_path(prefix, 0, 1)).write_bytes(data)
    return str(prefix)


def _read_all(prefix: str) -> None:
    with BundleReader(prefix) as reader:
        for key in reader.keys():
            reader.entry(key)
            reader.read(key)


STRING, FLOAT = 7, 1


@pytest.mark.parametrize("entry, data, problem", [
    # A shape whose byte count is far beyond the file (or any array): refused before any
    # allocation.
    (_entry(FLOAT, [2**40, 2**20], 0, 16), bytes(16), "does not match its shape"),
    (_entry(FLOAT, [2**40, 2**40], 0, 16), bytes(16), "too large for any array"),
    (_entry(FLOAT, [2**62, 4], 0, 0), b"", "too large for any array"),
    # Sizes and offsets outside the data file, negative ones included.
    (_entry(STRING, [1], 0, 2**62), bytes(16), "outside its data file"),
    (_entry(FLOAT, [1], -1, 4), bytes(16), "outside its data file"),
    (_entry(FLOAT, [2], 12, 8), bytes(16), "outside its data file"),
    # 2**27 string elements cannot fit in 16 bytes (each takes at least a length byte).
    (_entry(STRING, [2**27], 0, 16), bytes(16), "cannot fit"),
], ids=["huge-shape", "impossible-shape", "impossible-shape-empty", "string-size",
        "negative-offset", "past-end", "string-count"])
def test_sizes_outside_the_file_are_data_loss(tmp_path: Path, entry: pb.BundleEntryProto,
                                              data: bytes, problem: str) -> None:
    prefix = _write(tmp_path / "c", {b"t": entry}, data)
    with pytest.raises(DataLossError, match=problem) as caught:
        _read_all(prefix)
    assert str(tmp_path) in str(caught.value)


def test_string_length_of_2_to_the_65_is_data_loss(tmp_path: Path) -> None:
    raw = bytearray()
    put_varint(raw, 2**65)
    raw += bytes(8)
    prefix = _write(tmp_path / "c", {b"s": _entry(STRING, [1], 0, len(raw))}, bytes(raw))
    with pytest.raises(DataLossError, match="corrupt lengths"):
        _read_all(prefix)


def test_keys_that_expand_quadratically_are_refused(tmp_path: Path) -> None:
    # Each key shares the whole previous key and adds one byte: a small block of entries
    # that would spell keys of quadratic total length.
    block = bytearray()
    n = 20_000
    for i in range(n):
        put_varint(block, i)  # shared
        put_varint(block, 1)  # unshared
        put_varint(block, 0)  # value length
        block += b"k"
    block += struct.pack("<II", 0, 1)
    table = _table_of_blocks([bytes(block)])
    with pytest.raises(TableError, match="expand"):
        list(read_table(table))


def _table_of_blocks(blocks: list[bytes], handles: list[tuple[int, int]] | None = None) -> bytes:
    out = bytearray()
    placed = []
    for block in blocks:
        placed.append((len(out), len(block)))
        out += block + b"\x00" + struct.pack(
            "<I", mask_crc(google_crc32c.extend(google_crc32c.value(block), b"\x00")))
    index = bytearray()
    for i, (offset, size) in enumerate(handles or placed):
        handle = bytearray()
        put_varint(handle, offset)
        put_varint(handle, size)
        key = b"k%06d" % i
        put_varint(index, 0)
        put_varint(index, len(key))
        put_varint(index, len(handle))
        index += key + handle
    index += struct.pack("<II", 0, 1)
    index_offset = len(out)
    out += index + b"\x00" + struct.pack(
        "<I", mask_crc(google_crc32c.extend(google_crc32c.value(bytes(index)), b"\x00")))
    footer = bytearray()
    put_varint(footer, 0)
    put_varint(footer, 0)
    put_varint(footer, index_offset)
    put_varint(footer, len(index))
    footer += bytes(40 - len(footer))
    footer += struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32)
    assert len(footer) == FOOTER_SIZE
    return bytes(out + footer)


def test_an_index_pointing_at_one_block_many_times_is_refused() -> None:
    block = bytearray()
    put_varint(block, 0)
    put_varint(block, 1)
    put_varint(block, 0)
    block += b"a"
    block += struct.pack("<II", 0, 1)
    first = (0, len(block))
    with pytest.raises(TableError, match="overlaps"):
        list(read_table(_table_of_blocks([bytes(block)], [first] * 1000)))


def test_slices_are_checked_in_linear_time_and_overlaps_refused(tmp_path: Path) -> None:
    n = 3000
    values = np.arange(n, dtype=np.float32)
    entries: dict[bytes, pb.BundleEntryProto] = {}
    data = bytearray()
    for i in range(n):
        raw = values[i:i + 1].tobytes()
        crc = mask_crc(google_crc32c.value(raw))
        entries[encode_slice_key("v", [i], [1])] = _entry(FLOAT, [1], len(data), 4, crc)
        data += raw
    full = _entry(FLOAT, [n], 0, 0, slices=[[(i, 1)] for i in range(n)])
    entries[b"v"] = full
    prefix = _write(tmp_path / "ok", entries, bytes(data))
    with BundleReader(prefix) as reader:
        assert reader.read("v").tolist() == values.tolist()

    # The same slice listed twice overlaps; a tiny slice cannot stand for a huge tensor.
    entries[b"v"] = _entry(FLOAT, [n], 0, 0, slices=[[(0, 1)]] * 2 + [[(i, 1)] for i in
                                                                       range(2, n)])
    prefix = _write(tmp_path / "dup", entries, bytes(data))
    with pytest.raises(DataLossError, match="overlapping|cover"):
        _read_all(prefix)
    entries[b"v"] = _entry(FLOAT, [2**40], 0, 0, slices=[[(0, 1)]])
    prefix = _write(tmp_path / "huge", entries, bytes(data))
    with pytest.raises(DataLossError, match="do not cover"):
        _read_all(prefix)


def test_seeded_fuzz_of_real_checkpoints_raises_only_op_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    source = tmp_path / "src"
    with BundleWriter(source) as w:
        w.add("f", rng.standard_normal((7, 5)).astype(np.float32), dtypes.float32)
        w.add("s", np.array([b"ab", b"", b"xyz" * 30], dtype=object), dtypes.string)
        w.add("i", np.arange(40, dtype=np.int64).reshape(4, 10), dtypes.int64)
        w.add_slice("p", [4, 2], [0, 0], np.ones((2, 2), np.float32), dtypes.float32)
        w.add_slice("p", [4, 2], [2, 0], np.zeros((2, 2), np.float32), dtypes.float32)
    index = Path(index_path(source)).read_bytes()
    data = Path(data_path(source, 0, 1)).read_bytes()
    pick = random.Random(5)
    outcomes = {"ok": 0, "refused": 0}
    for trial in range(400):
        idx, dat = bytearray(index), bytearray(data)
        target = idx if trial % 3 else dat
        for _ in range(pick.randint(1, 4)):
            at = pick.randrange(len(target))
            target[at] = pick.randrange(256)
        if trial % 7 == 0:
            del target[pick.randrange(len(target)):]
        prefix = tmp_path / f"t{trial}"
        Path(index_path(prefix)).write_bytes(bytes(idx))
        Path(data_path(prefix, 0, 1)).write_bytes(bytes(dat))
        try:
            _read_all(str(prefix))
            outcomes["ok"] += 1
        except OpError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100
