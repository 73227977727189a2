"""Reading a checkpoint, TensorFlow's or ours (TensorFlow's ``BundleReader``): every size,
offset and count a file declares is checked with exact integers before anything is allocated
or read, so a crafted file costs time and memory linear in its size."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import google_crc32c
import numpy as np
from google.protobuf.message import DecodeError

from varstore.common import dtypes
from varstore.common.codec import check_shape
from varstore.common.dtypes import DType
from varstore.common.errors import (
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    UnimplementedError,
    clip,
)
from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.entries import BUNDLE_VERSION, CHUNK_BYTES, extent_bounds, lengths_crc
from varstore.server.bundle.naming import (
    data_path,
    index_path,
    key_bytes,
    key_str,
)
from varstore.server.bundle.opening import open_checkpoint
from varstore.server.bundle.ordered_code import encode_slice_key
from varstore.server.bundle.table import TableError, get_varint, read_table, unmask_crc

__all__ = ["BundleReader", "TensorInfo"]

_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class TensorInfo:
    """A stored tensor's metadata. ``size`` is its stored bytes (all slices' for a sliced one);
    ``slices`` the (offset, shape) of each stored slice, ordered by offset; ``shards`` the
    data file of the tensor (of each slice, in that order)."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    size: int
    sliced: bool
    slices: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    shards: tuple[int, ...] = ()


class BundleReader:
    """Reads a checkpoint written by TensorFlow or :class:`BundleWriter`.

    Opening reads the whole index, verifies every block's checksum and opens every data
    file the index names: what the reader reads is one checkpoint, whatever a save renames
    over its files later (``os.replace`` leaves open files as they were). Reads use
    positional I/O, so one reader may serve several threads.
    """

    def __init__(self, prefix: str | os.PathLike[str], partial: bool = False) -> None:
        """``partial``: the slices of a tensor may leave part of it uncovered (a cluster
        shard's own snapshot holds its parts only), whose regions it still reads; reading
        such a tensor whole fails.

        Raises ``NotFoundError`` without an index file, ``DataLossError`` if it is corrupt,
        ``InvalidArgumentError``/``UnimplementedError`` for an unsupported format version or
        a big-endian checkpoint, ``AbortedError`` if saves kept replacing it while it was
        being opened. A missing data file is ``NotFoundError`` when a tensor in it is read."""
        self.prefix = os.fspath(prefix)
        self.partial = partial
        self.index_path = index_path(self.prefix)
        self._fds, self._sizes = open_checkpoint(self.prefix, self._load)
        self._lock = threading.Lock()

    def _load(self, raw: bytes) -> tuple[int, list[int]]:
        """Parses index ``raw``, its table and header (for :func:`open_checkpoint`); returns
        its shard count and the data files its entries point at (an entry that does not
        parse or points outside them is reported when read). Raises ``DataLossError`` if it
        is corrupt, ``InvalidArgumentError``/``UnimplementedError`` for an unsupported format
        version or a big-endian checkpoint."""
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
        if version.min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in version.bad_consumers:
            raise InvalidArgumentError(f"checkpoint {self.prefix} needs a newer reader "
                                       f"(format version {version.producer})")
        if header.num_shards < 1:
            raise DataLossError(f"checkpoint index {self.index_path} declares "
                                f"{header.num_shards} shards")
        self.num_shards = header.num_shards
        self.version = version
        shards: set[int] = set()
        proto = pb.BundleEntryProto()
        for value in self._table.values():
            with contextlib.suppress(DecodeError):
                proto.ParseFromString(value)
                if 0 <= proto.shard_id < self.num_shards:
                    shards.add(proto.shard_id)
        return self.num_shards, sorted(shards)

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
        return [key_str(k) for k in self._table if not k.startswith(b"\x00")]

    def raw_entries(self) -> Iterator[tuple[bytes, pb.BundleEntryProto]]:
        """Every entry of the index but the header, slices included, as stored (for merging
        checkpoints). Raises ``DataLossError`` for an entry that does not parse."""
        for name in self._table:
            yield name, self._proto(name, key_str(name))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        name = key_bytes(key)
        return bool(name) and not name.startswith(b"\x00") and name in self._table

    def entry(self, key: str) -> TensorInfo:
        """Metadata of tensor ``key``.

        Raises ``NotFoundError`` for a missing key, ``DataLossError`` for a corrupt entry,
        ``InvalidArgumentError`` for a dtype varstore does not support.
        """
        proto = self._proto(key)
        dtype, shape = self._dtype_shape(key, proto)
        size = self._stored_size(key, proto, dtype, shape)
        pieces = sorted((tuple(s for s, _ in bounds), tuple(n for _, n in bounds),
                         stored.shard_id) for bounds, stored, _ in self._pieces(key, proto, shape))
        return TensorInfo(key, dtype, shape, size, bool(proto.slices),
                          tuple((offset, part) for offset, part, _ in pieces),
                          tuple(shard for _, _, shard in pieces) or (proto.shard_id,))

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

    def read_region(self, key: str, offset: Sequence[int], shape: Sequence[int]) -> np.ndarray:
        """The region ``offset``..``offset + shape`` of tensor ``key`` as a new array (a part
        of a partitioned variable, as TensorFlow's ``BundleReader::LookupSlice``): a sliced
        tensor's stored slices that intersect it are read and verified, one at a time; a
        tensor stored whole is read whole and cut. :meth:`region_reads` says what it reads.

        Raises ``InvalidArgumentError`` for a region outside the tensor, ``DataLossError``
        for stored slices that overlap in it or leave part of it uncovered, and what
        :meth:`read` raises.
        """
        proto = self._proto(key)
        dtype, full = self._dtype_shape(key, proto)
        region = self._region(key, full, offset, shape)
        if all(s == 0 and n == d for (s, n), d in zip(region, full, strict=True)):
            return self.read(key)
        cut = tuple(slice(s, s + n) for s, n in region)
        if not proto.slices:
            return self.read(key)[cut].copy()
        self._stored_size(key, proto, dtype, full)
        out = np.empty(tuple(n for _, n in region), dtype=dtype.np_dtype)
        taken = np.zeros(out.shape, dtype=bool)
        for bounds, slice_proto, label in self._pieces(key, proto, full, region):
            piece = np.empty(tuple(n for _, n in bounds), dtype=dtype.np_dtype)
            self._read_entry(label, slice_proto, dtype, piece)
            common = [(max(s, r), min(s + n, r + m) - max(s, r))
                      for (s, n), (r, m) in zip(bounds, region, strict=True)]
            source = tuple(slice(a - s, a - s + n) for (a, n), (s, _) in zip(common, bounds,
                                                                               strict=True))
            target = tuple(slice(a - r, a - r + n) for (a, n), (r, _) in zip(common, region,
                                                                               strict=True))
            if taken[target].any():
                raise DataLossError(f"tensor {key} in {self.index_path} has overlapping slices")
            taken[target] = True
            out[target] = piece[source]
        if not taken.all():
            raise DataLossError(f"the slices of tensor {key} in {self.index_path} do not cover "
                                f"the region {region[:8]}")
        return out

    def region_reads(self, key: str, offset: Sequence[int], shape: Sequence[int]
                     ) -> list[tuple[int, ...]]:
        """The shapes of the stored arrays :meth:`read_region` reads besides its result (the
        whole tensor, or the slices that intersect the region), for charging memory.
        Raises what :meth:`read_region` raises for a bad region or entry."""
        proto = self._proto(key)
        dtype, full = self._dtype_shape(key, proto)
        region = self._region(key, full, offset, shape)
        whole = all(s == 0 and n == d for (s, n), d in zip(region, full, strict=True))
        if whole and not proto.slices:
            return []
        if not proto.slices or whole:
            return [full]
        return [tuple(n for _, n in bounds)
                for bounds, _, _ in self._pieces(key, proto, full, region)]

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
        scratch = np.empty(min(CHUNK_BYTES, proto.size), dtype=np.uint8)
        crc = 0
        for begin in range(0, proto.size, CHUNK_BYTES):
            chunk = scratch[:min(CHUNK_BYTES, proto.size - begin)]
            self._pread(fd, chunk, proto.offset + begin, key, path)
            crc = google_crc32c.extend(crc, chunk)
        self._check_crc(key, proto, path, crc)

    # --- internals ---

    def _proto(self, key: str | bytes, display: str | None = None) -> pb.BundleEntryProto:
        name = key_bytes(key)
        display = display or (key if isinstance(key, str) else key_str(key))
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
        what = f"tensor {clip(key)} in {self.index_path}: shape"
        if proto.shape.unknown_rank:
            raise DataLossError(f"{what} has an unknown rank")
        return dtype, check_shape((d.size for d in proto.shape.dim), dtype, DataLossError, what)

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
        if self.partial:  # no more bytes than the whole tensor takes
            wrong = not dtype.is_string and elements * dtype.itemsize < total
        else:
            wrong = elements > total if dtype.is_string else elements * dtype.itemsize != total
        if wrong:
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
        bounds = extent_bounds(spec, full)
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
        regions = list(self._pieces(key, proto, shape))
        # One flag per element: time and memory linear in the tensor, which _stored_size
        # bounded by the data files' bytes.
        taken = np.zeros(shape, dtype=bool)
        covered = 0
        for bounds, _, _ in regions:
            part = taken[tuple(slice(s, s + n) for s, n in bounds)]
            if part.any():
                raise DataLossError(f"tensor {key} in {self.index_path} has overlapping slices")
            part[...] = True
            covered += part.size
        if covered != out.size:
            raise DataLossError(f"the slices of tensor {key} in {self.index_path} do not cover "
                                f"its shape {shape}")
        for bounds, slice_proto, label in regions:
            target = out[tuple(slice(s, s + n) for s, n in bounds)]
            if target.flags.c_contiguous:
                self._read_entry(label, slice_proto, dtype, target, check)
            else:
                piece = np.empty(target.shape, dtype=out.dtype)
                self._read_entry(label, slice_proto, dtype, piece, check)
                target[...] = piece

    def _region(self, key: str, full: tuple[int, ...], offset: Sequence[int],
                shape: Sequence[int]) -> list[tuple[int, int]]:
        region = [(int(s), int(n)) for s, n in zip(offset, shape, strict=False)]
        if len(region) != len(full) or len(offset) != len(shape) or any(
                s < 0 or n < 0 or s + n > d for (s, n), d in zip(region, full, strict=True)):
            raise InvalidArgumentError(
                f"region at {list(offset)[:8]} of shape {list(shape)[:8]} lies outside tensor "
                f"{clip(key)} of shape {list(full)[:8]} in checkpoint {clip(self.prefix)}")
        return region

    def _pieces(self, key: str, proto: pb.BundleEntryProto, full: tuple[int, ...],
                region: list[tuple[int, int]] | None = None
                ) -> Iterator[tuple[list[tuple[int, int]], pb.BundleEntryProto, str]]:
        """The stored slices of tensor ``key`` (those intersecting ``region``, when given):
        bounds, entry and a label naming them, after checking that each agrees with the full
        tensor's dtype and lies inside its shape. Raises ``DataLossError``."""
        for spec in proto.slices:
            bounds, slice_proto = self._slice_entry(key, spec, full)
            if region is not None and not all(
                    s < r + m and r < s + n for (s, n), (r, m) in zip(bounds, region,
                                                                     strict=True)):
                continue
            label = f"{key} (slice {':'.join(f'{s},{n}' for s, n in bounds)})"
            if slice_proto.dtype != proto.dtype or tuple(
                    d.size for d in slice_proto.shape.dim) != tuple(n for _, n in bounds):
                raise DataLossError(f"tensor {label} in {self.index_path}: dtype or shape "
                                    "disagrees with the full tensor")
            yield bounds, slice_proto, label

    def _data_fd(self, shard: int, key: str) -> tuple[int, str]:
        if not 0 <= shard < self.num_shards:
            raise DataLossError(f"tensor {key} in {self.index_path} points at shard {shard} of "
                                f"{self.num_shards}")
        path = data_path(self.prefix, shard, self.num_shards)
        with self._lock:
            fd = self._fds.get(shard)
        if fd is None:
            raise NotFoundError(f"data file {path} of checkpoint {self.prefix} not found")
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
            for begin in range(0, flat.size, CHUNK_BYTES):
                chunk = flat[begin:begin + CHUNK_BYTES]
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
        crc = lengths_crc(lengths)
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
