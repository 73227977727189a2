"""Reading and writing TensorFlow V2 checkpoints ("tensor bundles") with numpy.

A checkpoint ``PREFIX`` is ``PREFIX.index`` (a sorted table of ``BundleEntryProto``) plus data
files ``PREFIX.data-NNNNN-of-MMMMM`` holding the raw tensor bytes. Files written here are
byte-identical to TensorFlow's when tensors are added in sorted key order (TensorFlow's
``SaveV2`` stores data in that order; the index is sorted either way).

Little-endian hosts only: numeric bytes are written and read as they are in memory.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import secrets
import struct
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
from google.protobuf.message import DecodeError

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import (
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
    clip,
)
from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.table import (
    TableBuilder,
    TableError,
    get_varint,
    mask_crc,
    put_varint,
    read_table,
    unmask_crc,
)

__all__ = [
    "TEMP_MARK",
    "BundleReader",
    "BundleWriter",
    "TensorInfo",
    "data_path",
    "encode_slice_key",
    "index_path",
    "merge_shards",
    "part_prefix",
]

# Marks every file that is not yet part of a complete checkpoint (TensorFlow's own marker).
TEMP_MARK = ".tempstate"
# Streaming granularity: each chunk is checksummed while it is still in the CPU cache.
_CHUNK = 4 << 20
_WRITE_BUFFER = 1 << 20
# The data file's written bytes are handed to the disk in steps of this size, while the rest
# is still being copied and checksummed, so the fsync at the end waits for the last step only.
_WRITEBACK_STEP = 32 << 20
_BUNDLE_VERSION = 1
_U32 = struct.Struct("<I")


def index_path(prefix: str | os.PathLike[str]) -> str:
    """The index file name of checkpoint ``prefix``."""
    return f"{os.fspath(prefix)}.index"


def data_path(prefix: str | os.PathLike[str], shard: int, num_shards: int) -> str:
    """The name of data file ``shard`` of ``num_shards`` of checkpoint ``prefix``."""
    return f"{os.fspath(prefix)}.data-{shard:05d}-of-{num_shards:05d}"


def part_prefix(prefix: str | os.PathLike[str], shard: int, num_shards: int) -> str:
    """A prefix for one part of a sharded save, recognizable as temporary until merged."""
    return f"{os.fspath(prefix)}{TEMP_MARK}-part-{shard:05d}-of-{num_shards:05d}"


def temp_name(path: str) -> str:
    """Where ``path`` is written before it is renamed into place (a name only varstore makes:
    TensorFlow's own temporary files end in ``.tempstate`` and digits, with no ``-vs``)."""
    return f"{path}{TEMP_MARK}-vs{secrets.randbits(64)}"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return  # platforms that cannot open directories have nothing to sync
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file_synced(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _writeback_starter() -> Any:
    """Linux's ``sync_file_range`` (which the os module lacks), set to start writing back a
    range without waiting; None elsewhere, where the final fsync writes everything."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2
_start_writeback = _writeback_starter()


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _key_bytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")


def _key_str(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


# --- slice keys: TensorFlow's OrderedCode encoding (core/lib/strings/ordered_code.cc) ---

_BITS_TO_LENGTH = [1] * 7 + [n for n in range(2, 10) for _ in range(7)] + [10]
_HEADER_BITS = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0),
                (0xFE, 0), (0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]


def _ordered_unsigned(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(raw)]) + raw


def _ordered_signed(value: int) -> bytes:
    magnitude = ~value if value < 0 else value
    if magnitude < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    length = _BITS_TO_LENGTH[magnitude.bit_length()]
    raw = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big")[10 - length:])
    raw[0] ^= _HEADER_BITS[length][0]
    raw[1] ^= _HEADER_BITS[length][1]
    return bytes(raw)


def _ordered_string(value: bytes) -> bytes:
    escaped = re.sub(rb"[\x00\xff]", lambda m: b"\x00\xff" if m[0] == b"\x00" else b"\xff\x00",
                     value)
    return escaped + b"\x00\x01"


def encode_slice_key(key: str | bytes, starts: Sequence[int], lengths: Sequence[int]) -> bytes:
    """The table key of one slice of partitioned tensor ``key`` (length -1: whole dimension).

    Slice keys start with a zero byte, so they sort before every tensor name.
    """
    parts = [_ordered_unsigned(0), _ordered_string(_key_bytes(key)), _ordered_unsigned(len(starts))]
    for start, length in zip(starts, lengths, strict=True):
        parts.append(_ordered_signed(start))
        parts.append(_ordered_signed(length))
    return b"".join(parts)


def _set_shape(proto: pb.TensorShapeProto, shape: Sequence[int]) -> None:
    proto.SetInParent()  # TensorFlow always writes the shape, even a scalar's empty one
    for size in shape:
        proto.dim.add(size=int(size))


def _header(num_shards: int, version: pb.VersionDef | None = None) -> bytes:
    header = pb.BundleHeaderProto(num_shards=num_shards)
    if version is None:
        header.version.producer = _BUNDLE_VERSION
    else:
        header.version.CopyFrom(version)
    return header.SerializeToString()


def _build_index(header: bytes, entries: dict[bytes, pb.BundleEntryProto]) -> bytes:
    table = TableBuilder()
    table.add(b"", header)
    for key in sorted(entries):
        table.add(key, entries[key].SerializeToString())
    return table.finish()


def _write_index(path: str, table: bytes) -> None:
    temp = temp_name(path)
    try:
        _write_file_synced(temp, table)
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    _fsync_dir(os.path.dirname(path))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _numeric_array(array: Any, dtype: DType) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        array = dtypes.to_numpy(array, dtype)
    if array.dtype != dtype.np_dtype:
        same_type = (array.dtype.kind == dtype.np_dtype.kind
                     and array.dtype.itemsize == dtype.np_dtype.itemsize
                     and array.dtype.newbyteorder("=") == dtype.np_dtype)
        if not same_type:
            raise ValueError(f"array of dtype {array.dtype} given for a {dtype.name} tensor")
        array = array.astype(dtype.np_dtype)  # byte-swapped input
    # Not np.ascontiguousarray: it turns scalars into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


def _string_elements(array: Any) -> list[bytes]:
    flat = np.asarray(array, dtype=object).reshape(-1)
    out = []
    for item in flat:
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise ValueError(f"string tensor element of type {type(item).__name__}")
    return out


def _lengths_crc(lengths: Sequence[int]) -> int:
    # TensorFlow checksums each length as a uint32, or as a uint64 if it does not fit.
    if not lengths or max(lengths) <= 0xFFFFFFFF:
        return google_crc32c.value(np.asarray(lengths, dtype="<u4").tobytes())
    crc = 0
    for n in lengths:
        crc = google_crc32c.extend(crc, n.to_bytes(4 if n <= 0xFFFFFFFF else 8, "little"))
    return crc


class BundleWriter:
    """Writes one single-shard checkpoint ``prefix``, streaming tensor bytes to disk.

    Nothing is visible under the final names until :meth:`finish`: the data file and index
    are written under temporary names (marked with :data:`TEMP_MARK`), fsync'd and renamed,
    data first and index last, so an existing ``prefix.index`` always means a complete
    checkpoint. As a context manager it finishes on success and aborts on an exception.

    Memory: :meth:`add` writes from the caller's array without copying it (except
    non-contiguous or byte-swapped arrays), so a caller snapshotting a live variable passes
    a copy it owns; :meth:`add_chunks` lets it copy and write one piece at a time instead.
    Whatever array is given must not change until the call returns.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        """Creates the temporary data file; raises ``OSError`` if it cannot."""
        self.prefix = os.fspath(prefix)
        self._dir = os.path.dirname(self.prefix)
        if self._dir:
            os.makedirs(self._dir, exist_ok=True)
        self._data_final = data_path(self.prefix, 0, 1)
        self._data_temp = temp_name(self._data_final)
        self._renamed_data = False
        self._fd: int | None = os.open(
            self._data_temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
            0o644)
        self._buffer = bytearray()
        self._offset = 0
        self._written = self._handed_over = 0
        self._entries: dict[bytes, pb.BundleEntryProto] = {}
        self._closed = False

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            if not self._closed:
                self.finish()
        else:
            self.abort()

    @property
    def bytes_written(self) -> int:
        """Tensor bytes added so far."""
        return self._offset

    def add(self, key: str, array: Any, dtype: DType) -> None:
        """Appends tensor ``key`` with ``array``'s values as ``dtype``.

        Raises ``ValueError`` for a duplicate, empty or reserved key or an array of another
        dtype, ``RuntimeError`` once the writer is finished or aborted, ``OSError`` on write
        failure (the writer is then unusable: call :meth:`abort`).
        """
        name = self._new_key(key)
        if dtype.is_string:
            elements = _string_elements(array)
            shape = np.shape(array)
            self._entries[name] = self._write_strings(elements, shape, dtype)
        else:
            arr = _numeric_array(array, dtype)
            self._entries[name] = self._write_numeric(
                (arr.reshape(-1).view(np.uint8),), arr.shape, dtype, arr.nbytes)

    def add_chunks(self, key: str, dtype: DType, shape: Sequence[int],
                   chunks: Iterable[Any]) -> None:
        """Appends numeric tensor ``key`` from consecutive row-major pieces of its values.

        ``chunks`` yields arrays (any shape, of ``dtype``) or bytes-like objects; each is
        written and may be dropped before the next is drawn, so a large variable can be
        copied out piece by piece. Raises ``ValueError`` if the pieces do not add up to
        ``shape`` or for a string dtype, plus what :meth:`add` raises.
        """
        if dtype.is_string:
            raise ValueError("add_chunks takes numeric tensors; use add for strings")
        name = self._new_key(key)
        shape = tuple(int(d) for d in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        pieces = (self._chunk_bytes(c, dtype) for c in chunks)
        self._entries[name] = self._write_numeric(pieces, shape, dtype, nbytes, key)

    def add_slice(self, key: str, full_shape: Sequence[int], offsets: Sequence[int],
                  array: Any, dtype: DType) -> None:
        """Appends one slice of partitioned tensor ``key``: ``array`` at ``offsets`` in it.

        The slices of one tensor may come in any order and, via :func:`merge_shards`, from
        different parts. A slice covering the whole tensor is stored as a plain tensor.
        Raises ``ValueError`` if the slice does not fit ``full_shape``, overlaps an existing
        slice, or disagrees with earlier slices' dtype or full shape, plus what :meth:`add`
        raises.
        """
        self._check_open()
        name = _key_bytes(key)
        full = tuple(int(d) for d in full_shape)
        arr = np.asarray(array, dtype=object) if dtype.is_string else _numeric_array(array, dtype)
        starts = tuple(int(o) for o in offsets)
        if not full or len(starts) != len(full) or arr.ndim != len(full):
            raise ValueError(f"slice of {key!r}: offsets {starts} and array shape {arr.shape} "
                             f"do not match full shape {full}")
        if any(s < 0 or s + n > d for s, n, d in zip(starts, arr.shape, full, strict=True)):
            raise ValueError(f"slice of {key!r} at {starts} with shape {arr.shape} "
                             f"lies outside {full}")
        if all(s == 0 for s in starts) and arr.shape == full:
            self.add(key, arr, dtype)
            return
        entry = self._entries.get(name)
        if entry is not None:
            if not entry.slices:
                raise ValueError(f"duplicate tensor key {key!r}")
            if entry.dtype != dtype.enum or tuple(d.size for d in entry.shape.dim) != full:
                raise ValueError(f"slice of {key!r} disagrees with earlier slices' dtype/shape")
            for other in entry.slices:
                if _overlap(_extent_bounds(other, full), list(zip(starts, arr.shape,
                                                                   strict=True))):
                    raise ValueError(f"slice of {key!r} at {starts} overlaps another slice")
        slice_proto = pb.TensorSliceProto()
        for start, length in zip(starts, arr.shape, strict=True):
            slice_proto.extent.add(start=start, length=length)
        slice_key = encode_slice_key(name, starts, arr.shape)
        if dtype.is_string:
            self._entries[slice_key] = self._write_strings(_string_elements(arr), arr.shape, dtype)
        else:
            self._entries[slice_key] = self._write_numeric(
                (arr.reshape(-1).view(np.uint8),), arr.shape, dtype, arr.nbytes)
        if entry is None:
            entry = pb.BundleEntryProto(dtype=dtype.enum)
            _set_shape(entry.shape, full)
            self._entries[name] = entry
        entry.slices.append(slice_proto)

    def finish(self) -> None:
        """Makes the checkpoint appear: data file, then index, each durable before renaming.

        Raises ``OSError`` on failure, after removing what it wrote; ``RuntimeError`` if
        already finished or aborted.
        """
        self._check_open()
        try:
            self._flush()
            fd, self._fd = self._fd, None
            assert fd is not None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._data_temp, self._data_final)
            self._renamed_data = True
            _fsync_dir(self._dir)
            _write_index(index_path(self.prefix), _build_index(_header(1), self._entries))
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Closes and deletes whatever this writer created; safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._closed:
            _unlink_quietly(self._data_temp)
            if self._renamed_data:
                _unlink_quietly(self._data_final)
        self._closed = True
        self._buffer = bytearray()

    # --- internals ---

    def _check_open(self) -> None:
        if self._closed or self._fd is None:
            raise RuntimeError(f"checkpoint writer for {self.prefix} is already closed")

    def _new_key(self, key: str) -> bytes:
        self._check_open()
        name = _key_bytes(key)
        if not name or name.startswith(b"\x00"):
            raise ValueError(f"invalid tensor key {key!r} (empty, or reserved for slices)")
        if name in self._entries:
            raise ValueError(f"duplicate tensor key {key!r}")
        return name

    def _write(self, data: Any, nbytes: int) -> None:
        if nbytes < _WRITE_BUFFER:
            self._buffer += memoryview(data).cast("B")
            if len(self._buffer) >= _WRITE_BUFFER:
                self._flush()
        else:
            self._flush()
            self._write_through(data, nbytes)
        self._offset += nbytes

    def _flush(self) -> None:
        if self._buffer:
            self._write_through(self._buffer, len(self._buffer))
            self._buffer = bytearray()

    def _write_through(self, data: Any, nbytes: int) -> None:
        assert self._fd is not None
        _write_all(self._fd, data)
        self._written += nbytes
        if self._written - self._handed_over >= _WRITEBACK_STEP and _start_writeback:
            # A failure here only means the final fsync has more to do.
            _start_writeback(self._fd, self._handed_over, self._written - self._handed_over,
                             _SYNC_FILE_RANGE_WRITE)
            self._handed_over = self._written

    @staticmethod
    def _chunk_bytes(chunk: Any, dtype: DType) -> np.ndarray:
        if isinstance(chunk, np.ndarray):
            return _numeric_array(chunk, dtype).reshape(-1).view(np.uint8)
        return np.frombuffer(chunk, dtype=np.uint8)

    def _write_numeric(self, pieces: Iterable[np.ndarray], shape: Sequence[int], dtype: DType,
                       nbytes: int, key: str = "") -> pb.BundleEntryProto:
        start = self._offset
        crc = 0
        for piece in pieces:
            for begin in range(0, piece.size, _CHUNK):
                chunk = piece[begin:begin + _CHUNK]
                crc = google_crc32c.extend(crc, chunk)
                self._write(chunk, chunk.size)
        size = self._offset - start
        if size != nbytes:
            raise ValueError(f"tensor {key!r}: pieces hold {size} bytes, shape {tuple(shape)} "
                             f"of {dtype.name} needs {nbytes}")
        entry = pb.BundleEntryProto(dtype=dtype.enum, offset=start, size=size,
                                    crc32c=mask_crc(crc))
        _set_shape(entry.shape, shape)
        return entry

    def _write_strings(self, elements: list[bytes], shape: Sequence[int],
                       dtype: DType) -> pb.BundleEntryProto:
        start = self._offset
        lengths = [len(e) for e in elements]
        varints = bytearray()
        for n in lengths:
            put_varint(varints, n)
        crc = _lengths_crc(lengths)
        checksum = _U32.pack(mask_crc(crc))
        crc = google_crc32c.extend(crc, checksum)
        self._write(varints, len(varints))
        self._write(checksum, 4)
        for element in elements:
            crc = google_crc32c.extend(crc, element)
            self._write(element, len(element))
        entry = pb.BundleEntryProto(dtype=dtype.enum, offset=start, size=self._offset - start,
                                    crc32c=mask_crc(crc))
        _set_shape(entry.shape, shape)
        return entry


@dataclass(frozen=True)
class TensorInfo:
    """A stored tensor's metadata. ``size`` is its stored bytes (all slices' for a sliced one)."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    size: int
    sliced: bool


def _extent_bounds(proto: pb.TensorSliceProto, full: Sequence[int]) -> list[tuple[int, int]]:
    return [(e.start, e.length) if e.HasField("length") else (0, d)
            for e, d in zip(proto.extent, full, strict=False)]


def _overlap(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> bool:
    return all(s1 < s2 + n2 and s2 < s1 + n1 for (s1, n1), (s2, n2) in zip(a, b, strict=True))


class BundleReader:
    """Reads a checkpoint written by TensorFlow or :class:`BundleWriter`.

    Opening reads the whole index and verifies every block's checksum. Reads use
    positional I/O, so one reader may serve several threads.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        """Raises ``NotFoundError`` without an index file, ``DataLossError`` if it is corrupt,
        ``InvalidArgumentError``/``UnimplementedError`` for an unsupported format version or
        a big-endian checkpoint."""
        self.prefix = os.fspath(prefix)
        self.index_path = index_path(self.prefix)
        try:
            with open(self.index_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise NotFoundError(f"checkpoint {clip(self.prefix)} not found: no file "
                                f"{clip(self.index_path)}") from None
        try:
            self._table = dict(read_table(raw))
        except TableError as e:
            raise DataLossError(f"corrupt checkpoint index {self.index_path}: {e}") from None
        header = pb.BundleHeaderProto()
        try:
            header.ParseFromString(self._table.pop(b""))
        except (KeyError, DecodeError):
            raise DataLossError(f"checkpoint index {self.index_path} has no valid header "
                                "entry") from None
        if header.endianness != pb.BundleHeaderProto.LITTLE:
            raise UnimplementedError(f"checkpoint {self.prefix} is big-endian")
        version = header.version
        if version.min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in version.bad_consumers:
            raise InvalidArgumentError(f"checkpoint {self.prefix} needs a newer reader "
                                       f"(format version {version.producer})")
        if header.num_shards < 1:
            raise DataLossError(f"checkpoint index {self.index_path} declares "
                                f"{header.num_shards} shards")
        self.num_shards = header.num_shards
        self.version = version
        self._fds: dict[int, int] = {}
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the data files."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def keys(self) -> list[str]:
        """Tensor names in sorted order; slices of partitioned tensors are not listed."""
        return [_key_str(k) for k in self._table if not k.startswith(b"\x00")]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        name = _key_bytes(key)
        return bool(name) and not name.startswith(b"\x00") and name in self._table

    def entry(self, key: str) -> TensorInfo:
        """Metadata of tensor ``key``.

        Raises ``NotFoundError`` for a missing key, ``DataLossError`` for a corrupt entry,
        ``InvalidArgumentError`` for a dtype varstore does not support.
        """
        proto = self._proto(key)
        dtype, shape = self._dtype_shape(key, proto)
        size = self._stored_size(key, proto, dtype, shape)
        return TensorInfo(key, dtype, shape, size, bool(proto.slices))

    def read(self, key: str) -> np.ndarray:
        """Tensor ``key`` as a new array (strings: an object array of ``bytes``).

        Raises ``NotFoundError`` for a missing key or data file, ``DataLossError`` if the
        bytes fail their checksum (naming the key and file) or the entry is inconsistent.
        """
        proto = self._proto(key)
        dtype, shape = self._dtype_shape(key, proto)
        self._stored_size(key, proto, dtype, shape)  # checked before allocating
        out = np.empty(shape, dtype=dtype.np_dtype)
        self._read(key, proto, dtype, shape, out)
        return out

    def read_into(self, key: str, out: np.ndarray, verified: bool = False) -> None:
        """Reads tensor ``key`` into ``out``, a C-contiguous array of its dtype and shape.

        ``verified``: :meth:`verify` already checked the tensor through this reader (whose
        open files still hold the bytes it checked), so its checksum is not computed again.
        Raises ``ValueError`` if ``out`` does not fit, else what :meth:`read` raises.
        """
        proto = self._proto(key)
        dtype, shape = self._dtype_shape(key, proto)
        if out.shape != shape or out.dtype != dtype.np_dtype or not out.flags.c_contiguous:
            raise ValueError(f"tensor {key!r} is {dtype.name}{list(shape)}; cannot read into a "
                             f"{'' if out.flags.c_contiguous else 'non-contiguous '}"
                             f"{out.dtype}{list(out.shape)} array")
        self._read(key, proto, dtype, shape, out, check=not verified)

    def verify(self, key: str) -> None:
        """Checks tensor ``key``'s checksums without keeping its values: numeric tensors
        stream through a small buffer, so verifying takes no memory of the tensor's size.

        Raises what :meth:`read` raises.
        """
        proto = self._proto(key)
        dtype, shape = self._dtype_shape(key, proto)
        if proto.slices or dtype.is_string:
            self.read(key)
            return
        fd, path = self._data_fd(proto.shard_id, key)
        self._stored_size(key, proto, dtype, shape)
        scratch = np.empty(min(_CHUNK, proto.size), dtype=np.uint8)
        crc = 0
        for begin in range(0, proto.size, _CHUNK):
            chunk = scratch[:min(_CHUNK, proto.size - begin)]
            self._pread(fd, chunk, proto.offset + begin, key, path)
            crc = google_crc32c.extend(crc, chunk)
        self._check_crc(key, proto, path, crc)

    # --- internals ---

    def _proto(self, key: str | bytes, display: str | None = None) -> pb.BundleEntryProto:
        name = _key_bytes(key)
        display = display or (key if isinstance(key, str) else _key_str(key))
        raw = self._table.get(name) if name else None
        if raw is None:
            raise NotFoundError(
                f"Key {clip(display)} not found in checkpoint {clip(self.prefix)}")
        proto = pb.BundleEntryProto()
        try:
            proto.ParseFromString(raw)
        except DecodeError:
            raise DataLossError(f"entry for tensor {display} in {self.index_path} "
                                "is not parseable") from None
        return proto

    def _dtype_shape(self, key: str, proto: pb.BundleEntryProto) -> tuple[DType, tuple[int, ...]]:
        try:
            dtype = dtypes.from_enum(proto.dtype)
        except ValueError:
            raise InvalidArgumentError(f"tensor {key} in checkpoint {self.prefix} has dtype "
                                       f"{proto.dtype}, which varstore does not support") from None
        shape = tuple(d.size for d in proto.shape.dim)
        if proto.shape.unknown_rank or any(d < 0 for d in shape):
            raise DataLossError(f"tensor {key} in {self.index_path} has invalid shape {shape}")
        return dtype, shape

    def _stored_size(self, key: str, proto: pb.BundleEntryProto, dtype: DType,
                     shape: tuple[int, ...]) -> int:
        """The bytes tensor ``key`` occupies in its data files, after checking with exact
        integers that every piece lies inside its data file and that the sizes agree with
        the shape (numbers: elements x item size; strings: at least a byte per element).
        Raises ``DataLossError`` otherwise, ``NotFoundError`` for a missing data file."""
        if not proto.slices:
            self._check_extent(key, proto, dtype, math.prod(shape))
            return int(proto.size)
        total = 0
        for spec in proto.slices:
            bounds, slice_proto = self._slice_entry(key, spec, shape)
            self._check_extent(key, slice_proto, dtype, math.prod(n for _, n in bounds))
            total += slice_proto.size
        elements = math.prod(shape)
        if elements > total if dtype.is_string else elements * dtype.itemsize != total:
            raise DataLossError(f"the slices of tensor {key} in {self.index_path} do not cover "
                                f"its shape {list(shape)[:8]}")
        return total

    def _check_extent(self, key: str, proto: pb.BundleEntryProto, dtype: DType,
                      elements: int) -> None:
        _, path = self._data_fd(proto.shard_id, key)
        file_size = self._sizes[proto.shard_id]
        if proto.offset < 0 or proto.size < 0 or proto.offset + proto.size > file_size:
            raise DataLossError(
                f"tensor {key} in {self.index_path}: bytes {proto.offset} to "
                f"{proto.offset + proto.size} lie outside its data file {path} "
                f"({file_size} bytes)")
        if dtype.is_string:
            if elements and elements + 4 > proto.size:
                raise DataLossError(f"string tensor {key} in {self.index_path}: {elements} "
                                    f"elements cannot fit in {proto.size} stored bytes")
        elif elements * dtype.itemsize != proto.size:
            self._check_size(key, proto, elements * dtype.itemsize)

    def _slice_entry(self, key: str, spec: pb.TensorSliceProto, full: tuple[int, ...]
                     ) -> tuple[list[tuple[int, int]], pb.BundleEntryProto]:
        bounds = _extent_bounds(spec, full)
        if len(spec.extent) != len(full) or any(s < 0 or n < 0 or s + n > d for (s, n), d
                                                in zip(bounds, full, strict=True)):
            raise DataLossError(f"tensor {key} in {self.index_path}: slice {bounds} does not "
                                f"fit its shape {full}")
        starts = [e.start for e in spec.extent]
        lengths = [e.length if e.HasField("length") else -1 for e in spec.extent]
        label = f"{key} (slice {':'.join(f'{s},{n}' for s, n in bounds)})"
        slice_key = encode_slice_key(key, starts, lengths)
        if slice_key not in self._table:
            raise DataLossError(f"slice {bounds} of tensor {key} is missing from "
                                f"{self.index_path}")
        return bounds, self._proto(slice_key, label)

    def _read(self, key: str, proto: pb.BundleEntryProto, dtype: DType, shape: tuple[int, ...],
              out: np.ndarray, check: bool = True) -> None:
        if not proto.slices:
            self._read_entry(key, proto, dtype, out, check)
            return
        regions = [self._slice_entry(key, s, shape) for s in proto.slices]
        # One flag per element: time and memory linear in the tensor, which _stored_size
        # bounded by the data files' bytes.
        taken = np.zeros(shape, dtype=bool)
        covered = 0
        for bounds, _ in regions:
            part = taken[tuple(slice(s, s + n) for s, n in bounds)]
            if part.any():
                raise DataLossError(f"tensor {key} in {self.index_path} has overlapping slices")
            part[...] = True
            covered += part.size
        if covered != out.size:
            raise DataLossError(f"the slices of tensor {key} in {self.index_path} do not cover "
                                f"its shape {shape}")
        for bounds, slice_proto in regions:
            label = f"{key} (slice {':'.join(f'{s},{n}' for s, n in bounds)})"
            if slice_proto.dtype != proto.dtype or tuple(
                    d.size for d in slice_proto.shape.dim) != tuple(n for _, n in bounds):
                raise DataLossError(f"tensor {label} in {self.index_path}: dtype or shape "
                                    "disagrees with the full tensor")
            target = out[tuple(slice(s, s + n) for s, n in bounds)]
            if target.flags.c_contiguous:
                self._read_entry(label, slice_proto, dtype, target, check)
            else:
                piece = np.empty(target.shape, dtype=out.dtype)
                self._read_entry(label, slice_proto, dtype, piece, check)
                target[...] = piece

    def _data_fd(self, shard: int, key: str) -> tuple[int, str]:
        if not 0 <= shard < self.num_shards:
            raise DataLossError(f"tensor {key} in {self.index_path} points at shard {shard} of "
                                f"{self.num_shards}")
        path = data_path(self.prefix, shard, self.num_shards)
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                except FileNotFoundError:
                    raise NotFoundError(f"data file {path} of checkpoint {self.prefix} not "
                                        "found") from None
                self._fds[shard] = fd
                self._sizes[shard] = os.fstat(fd).st_size
        return fd, path

    def _read_entry(self, key: str, proto: pb.BundleEntryProto, dtype: DType,
                    out: np.ndarray, check: bool = True) -> None:
        fd, path = self._data_fd(proto.shard_id, key)
        self._check_extent(key, proto, dtype, out.size)
        if dtype.is_string:
            raw = np.empty(proto.size, dtype=np.uint8)
            self._pread(fd, raw, proto.offset, key, path)
            crc = self._parse_strings(key, path, raw.tobytes(), out)
        else:
            self._check_size(key, proto, out.nbytes)
            flat = out.reshape(-1).view(np.uint8)
            if not check:
                # One read: the kernel copies from the page cache straight into ``out``.
                self._pread(fd, flat, proto.offset, key, path)
                return
            crc = 0
            for begin in range(0, flat.size, _CHUNK):
                chunk = flat[begin:begin + _CHUNK]
                self._pread(fd, chunk, proto.offset + begin, key, path)
                crc = google_crc32c.extend(crc, chunk)
        self._check_crc(key, proto, path, crc)

    def _check_size(self, key: str, proto: pb.BundleEntryProto, nbytes: int) -> None:
        if proto.size != nbytes:
            raise DataLossError(f"tensor {key}: stored size {proto.size} in {self.index_path} "
                                f"does not match its shape ({nbytes} bytes)")

    @staticmethod
    def _check_crc(key: str, proto: pb.BundleEntryProto, path: str, crc: int) -> None:
        stored = unmask_crc(proto.crc32c)
        if crc != stored:
            raise DataLossError(f"checksum mismatch for tensor {key} in {path} (offset "
                                f"{proto.offset}, {proto.size} bytes): stored {stored:08x}, "
                                f"computed {crc:08x}")

    @staticmethod
    def _pread(fd: int, buf: np.ndarray, offset: int, key: str, path: str) -> None:
        view = buf.data.cast("B")
        while view:
            n = os.preadv(fd, [view], offset)
            if n == 0:
                raise DataLossError(f"data file {path} ends before the bytes of tensor {key}")
            view = view[n:]
            offset += n

    def _parse_strings(self, key: str, path: str, raw: bytes, out: np.ndarray) -> int:
        count = out.size
        lengths = []
        pos = 0
        try:
            for _ in range(count):
                n, pos = get_varint(raw, pos)
                lengths.append(n)
        except TableError:
            raise DataLossError(f"string tensor {key} in {path} has corrupt lengths") from None
        crc = _lengths_crc(lengths)
        if pos + 4 > len(raw) or unmask_crc(_U32.unpack_from(raw, pos)[0]) != crc:
            raise DataLossError(f"length checksum mismatch for string tensor {key} in {path}")
        crc = google_crc32c.extend(google_crc32c.extend(crc, raw[pos:pos + 4]), raw[pos + 4:])
        pos += 4
        if pos + sum(lengths) != len(raw):
            raise DataLossError(f"string tensor {key} in {path}: lengths do not add up to its "
                                "stored size")
        flat = out.reshape(-1)
        for i, n in enumerate(lengths):
            flat[i] = raw[pos:pos + n]
            pos += n
        return crc


def merge_shards(part_prefixes: Sequence[str | os.PathLike[str]],
                 prefix: str | os.PathLike[str]) -> None:
    """Merges separately written parts into one sharded checkpoint ``prefix``.

    The parts' data files are renamed to ``prefix.data-0000k-of-0000N`` (in part order),
    then one index with ``num_shards = N`` appears atomically, and the parts' index files
    are deleted. Slices of one partitioned tensor may come from different parts.

    Raises ``ValueError`` (before changing anything) for no parts, a key in two parts or
    parts of different format versions; what :class:`BundleReader` raises for a bad part;
    ``OSError`` if renaming or writing fails.
    """
    prefix = os.fspath(prefix)
    parts = [os.fspath(p) for p in part_prefixes]
    if not parts:
        raise ValueError("merge_shards needs at least one part")
    entries: dict[bytes, pb.BundleEntryProto] = {}
    renames: list[tuple[str, int]] = []
    version: pb.VersionDef | None = None
    for part in parts:
        with BundleReader(part) as reader:
            if version is None:
                version = reader.version
            elif reader.version != version:
                raise ValueError(f"part {part} has another format version than {parts[0]}")
            base = len(renames)
            renames += [(data_path(part, i, reader.num_shards), base + i)
                        for i in range(reader.num_shards)]
            for name in reader._table:
                entry = reader._proto(name, _key_str(name))
                existing = entries.get(name)
                if existing is not None:
                    if not (existing.slices and entry.slices):
                        raise ValueError(f"duplicate tensor key {_key_str(name)!r} in part {part}")
                    if existing.dtype != entry.dtype or existing.shape != entry.shape:
                        raise ValueError(f"slices of {_key_str(name)!r} disagree on dtype/shape")
                    existing.slices.extend(entry.slices)
                    continue
                if not entry.slices:
                    entry.shard_id = base + entry.shard_id
                entries[name] = entry
    num_shards = len(renames)
    directory = os.path.dirname(prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    for old, shard in renames:
        os.replace(old, data_path(prefix, shard, num_shards))
    _fsync_dir(directory)
    _write_index(index_path(prefix), _build_index(_header(num_shards, version), entries))
    for part in parts:
        _unlink_quietly(index_path(part))
