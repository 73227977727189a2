"""Writing one single-shard checkpoint (TensorFlow's ``BundleWriter``), streaming tensor bytes
to disk: files appear under their final names only when complete, data file first."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import google_crc32c
import numpy as np

from varstore.common import dtypes
from varstore.common.codec import put_varint
from varstore.common.dtypes import DType
from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.entries import (
    CHUNK_BYTES,
    build_index,
    bundle_header,
    extent_bounds,
    lengths_crc,
    set_shape,
)
from varstore.server.bundle.fsio import (
    SYNC_FILE_RANGE_WRITE,
    atomic_write,
    fsync_dir,
    start_writeback,
    unlink_quietly,
    write_all,
)
from varstore.server.bundle.naming import data_path, index_path, key_bytes, temp_name
from varstore.server.bundle.ordered_code import encode_slice_key
from varstore.server.bundle.table import mask_crc

__all__ = ["BundleWriter"]

_U32 = struct.Struct("<I")
_WRITE_BUFFER = 1 << 20
# The data file's written bytes are handed to the disk in steps of this size, while the rest
# is still being copied and checksummed, so the fsync at the end waits for the last step only.
_WRITEBACK_STEP = 32 << 20


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


def _overlap(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> bool:
    return all(s1 < s2 + n2 and s2 < s1 + n1 for (s1, n1), (s2, n2) in zip(a, b, strict=True))


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
        name = key_bytes(key)
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
                if _overlap(extent_bounds(other, full), list(zip(starts, arr.shape,
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
            set_shape(entry.shape, full)
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
            fsync_dir(self._dir)
            atomic_write(index_path(self.prefix), build_index(bundle_header(1), self._entries))
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
            unlink_quietly(self._data_temp)
            if self._renamed_data:
                unlink_quietly(self._data_final)
        self._closed = True
        self._buffer = bytearray()

    # --- internals ---

    def _check_open(self) -> None:
        if self._closed or self._fd is None:
            raise RuntimeError(f"checkpoint writer for {self.prefix} is already closed")

    def _new_key(self, key: str) -> bytes:
        self._check_open()
        name = key_bytes(key)
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
        write_all(self._fd, data)
        self._written += nbytes
        if self._written - self._handed_over >= _WRITEBACK_STEP and start_writeback:
            # A failure here only means the final fsync has more to do.
            start_writeback(self._fd, self._handed_over, self._written - self._handed_over,
                             SYNC_FILE_RANGE_WRITE)
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
            for begin in range(0, piece.size, CHUNK_BYTES):
                chunk = piece[begin:begin + CHUNK_BYTES]
                crc = google_crc32c.extend(crc, chunk)
                self._write(chunk, chunk.size)
        size = self._offset - start
        if size != nbytes:
            raise ValueError(f"tensor {key!r}: pieces hold {size} bytes, shape {tuple(shape)} "
                             f"of {dtype.name} needs {nbytes}")
        entry = pb.BundleEntryProto(dtype=dtype.enum, offset=start, size=size,
                                    crc32c=mask_crc(crc))
        set_shape(entry.shape, shape)
        return entry

    def _write_strings(self, elements: list[bytes], shape: Sequence[int],
                       dtype: DType) -> pb.BundleEntryProto:
        start = self._offset
        lengths = [len(e) for e in elements]
        varints = bytearray()
        for n in lengths:
            put_varint(varints, n)
        crc = lengths_crc(lengths)
        checksum = _U32.pack(mask_crc(crc))
        crc = google_crc32c.extend(crc, checksum)
        self._write(varints, len(varints))
        self._write(checksum, 4)
        for element in elements:
            crc = google_crc32c.extend(crc, element)
            self._write(element, len(element))
        entry = pb.BundleEntryProto(dtype=dtype.enum, offset=start, size=self._offset - start,
                                    crc32c=mask_crc(crc))
        set_shape(entry.shape, shape)
        return entry
