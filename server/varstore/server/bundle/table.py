"""The sorted string table of a checkpoint's ``.index`` file (LevelDB's SSTable layout).

Written without compression or filter blocks, exactly as TensorFlow's ``table::TableBuilder``
writes it: 256 KiB data blocks with a restart point every 16 entries, an empty metaindex
block, an index block with restart interval 1, and a 48-byte footer. Every block carries a
masked CRC-32C, which :func:`read_table` verifies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import google_crc32c

from varstore.common.codec import put_varint, read_varint

BLOCK_SIZE = 256 * 1024
RESTART_INTERVAL = 16
MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
_HANDLES_SIZE = 40  # two BlockHandles padded to their maximum encoded length, 2 x 20
_TRAILER_SIZE = 5  # compression type byte + masked crc
_NO_COMPRESSION = b"\x00"
_MASK_DELTA = 0xA282EAD8
_U32 = struct.Struct("<I")
# A key is at most the bytes of its restart group (16 entries), so all keys together are at
# most about 16 times a table's bytes; a table whose keys expand beyond this is refused.
KEY_EXPANSION = 17


class TableError(Exception):
    """The table bytes are malformed or fail a checksum."""


def mask_crc(crc: int) -> int:
    """LevelDB's masked CRC, stored instead of the raw CRC of data that may embed CRCs."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """The inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def get_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """:func:`varstore.common.codec.read_varint`, raising :class:`TableError` instead."""
    try:
        return read_varint(buf, pos)
    except ValueError as e:
        raise TableError(str(e)) from None


def _shared_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self._interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self._restarts = [0]
        self._counter = 0
        self._last = b""
        self.empty = True

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self._counter < self._interval:
            shared = _shared_prefix(self._last, key)
        else:
            self._restarts.append(len(self.buf))
            self._counter = 0
        put_varint(self.buf, shared)
        put_varint(self.buf, len(key) - shared)
        put_varint(self.buf, len(value))
        self.buf += key[shared:]
        self.buf += value
        self._last = key
        self._counter += 1
        self.empty = False

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self._restarts) + 4

    def finish(self) -> bytes:
        out = self.buf
        for r in self._restarts:
            out += _U32.pack(r)
        out += _U32.pack(len(self._restarts))
        data = bytes(out)
        self.reset()
        return data


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """A short key k with start <= k < limit (TensorFlow's FindShortestSeparator)."""
    n = min(len(start), len(limit))
    i = _shared_prefix(start, limit)
    if i < n:
        byte = start[i]
        if byte < 0xFF and byte + 1 < limit[i]:
            return start[:i] + bytes([byte + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """A short key >= ``key`` (TensorFlow's FindShortSuccessor)."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


def _handle(offset: int, size: int) -> bytearray:
    out = bytearray()
    put_varint(out, offset)
    put_varint(out, size)
    return out


class TableBuilder:
    """Builds a table in memory from keys added in strictly increasing bytewise order.

    The index of a checkpoint is small next to its data (about a hundred bytes per tensor),
    so it is assembled in memory and written in one go by the caller.
    """

    def __init__(self) -> None:
        self._out = bytearray()
        self._data = _BlockBuilder(RESTART_INTERVAL)
        self._index = _BlockBuilder(1)
        self._last_key: bytes | None = None
        self._pending: tuple[int, int] | None = None

    def add(self, key: bytes, value: bytes) -> None:
        """Appends one entry. Raises ``ValueError`` if ``key`` is not above the previous key."""
        if self._last_key is not None:
            if key <= self._last_key:
                raise ValueError(f"table keys out of order: {key!r} after {self._last_key!r}")
            # TensorFlow closes the current block early before an entry of twice the block size.
            if len(key) + len(value) >= 2 * BLOCK_SIZE:
                self._flush()
        if self._pending is not None:
            sep = _shortest_separator(self._last_key or b"", key)
            self._index.add(sep, bytes(_handle(*self._pending)))
            self._pending = None
        self._last_key = key
        self._data.add(key, value)
        if self._data.size_estimate() >= BLOCK_SIZE:
            self._flush()

    def _flush(self) -> None:
        if self._data.empty:
            return
        self._pending = self._write_block(self._data.finish())

    def _write_block(self, block: bytes) -> tuple[int, int]:
        offset = len(self._out)
        crc = google_crc32c.extend(google_crc32c.value(block), _NO_COMPRESSION)
        self._out += block
        self._out += _NO_COMPRESSION
        self._out += _U32.pack(mask_crc(crc))
        return offset, len(block)

    def finish(self) -> bytes:
        """Writes the remaining block, metaindex, index and footer; returns the whole table."""
        self._flush()
        meta = self._write_block(_BlockBuilder(RESTART_INTERVAL).finish())
        if self._pending is not None:
            key = _short_successor(self._last_key or b"")
            self._index.add(key, bytes(_handle(*self._pending)))
            self._pending = None
        index = self._write_block(self._index.finish())
        footer = _handle(*meta) + _handle(*index)
        footer += bytes(_HANDLES_SIZE - len(footer))
        footer += struct.pack("<II", MAGIC & 0xFFFFFFFF, MAGIC >> 32)
        self._out += footer
        return bytes(self._out)


def _read_block(table: bytes, handle: bytes, pos: int = 0, start: int = 0) -> bytes:
    """The block ``handle`` (at ``pos``) points to, which must begin at or after ``start``."""
    offset, pos = get_varint(handle, pos)
    size, pos = get_varint(handle, pos)
    end = offset + size  # exact: Python integers
    if offset < start:
        raise TableError(f"block at offset {offset} overlaps the block before it")
    if end + _TRAILER_SIZE > len(table) - FOOTER_SIZE:
        raise TableError(f"block at offset {offset} ({size} bytes) runs past the end")
    block = table[offset:end]
    trailer = table[end:end + _TRAILER_SIZE]
    if trailer[:1] != _NO_COMPRESSION:
        raise TableError(f"block at offset {offset} has unsupported compression {trailer[0]}")
    stored = unmask_crc(_U32.unpack_from(trailer, 1)[0])
    actual = google_crc32c.extend(google_crc32c.value(block), _NO_COMPRESSION)
    if stored != actual:
        raise TableError(f"block checksum mismatch at offset {offset} ({size} bytes)")
    return block


def _block_entries(block: bytes, budget: list[int]) -> Iterator[tuple[bytes, bytes]]:
    """The entries of one block. ``budget[0]`` is how many key bytes may still be built;
    keys sharing the previous key's prefix could otherwise make a small file expand to a
    quadratic number of key bytes."""
    if len(block) < 4:
        raise TableError("block too short")
    num_restarts = _U32.unpack_from(block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise TableError("bad restart count in block")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = get_varint(block, pos)
        unshared, pos = get_varint(block, pos)
        vlen, pos = get_varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > limit:
            raise TableError("corrupt block entry")
        budget[0] -= shared + unshared
        if budget[0] < 0:
            raise TableError("keys expand to more bytes than a table of this size can hold")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def read_table(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yields every (key, value) of a table, verifying each block's checksum.

    Takes time and memory linear in the table's size: the keys may add up to at most
    :data:`KEY_EXPANSION` times its bytes (TensorFlow's restart point every 16 entries keeps
    real tables below that). Raises :class:`TableError` on a bad footer, a checksum mismatch,
    malformed blocks or keys beyond that bound.
    """
    if len(table) < FOOTER_SIZE:
        raise TableError(f"file is too short ({len(table)} bytes) to be a table")
    footer = table[-FOOTER_SIZE:]
    lo, hi = struct.unpack_from("<II", footer, _HANDLES_SIZE)
    if (hi << 32) | lo != MAGIC:
        raise TableError("bad magic number in footer (truncated or not a table)")
    _, pos = get_varint(footer, 0)
    _, pos = get_varint(footer, pos)  # skip the (empty) metaindex handle
    budget = [KEY_EXPANSION * len(table)]
    index = _read_block(table, footer, pos)
    previous: bytes | None = None
    start = 0  # data blocks follow each other: none is read twice
    for _, handle in _block_entries(index, budget):
        block = _read_block(table, handle, start=start)
        start = get_varint(handle, 0)[0] + len(block) + _TRAILER_SIZE
        for key, value in _block_entries(block, budget):
            if previous is not None and key <= previous:
                raise TableError(f"keys out of order: {key[:100]!r} after {previous[:100]!r}")
            previous = key
            yield key, value
