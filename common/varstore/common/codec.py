"""Conversions between numpy arrays and varstore's wire messages, used by both sides.

Tensors travel as a dtype number, a shape and raw little-endian bytes (numpy's native order
on every platform varstore supports); strings as their
lengths (little-endian uint64) followed by their bytes. Messages too large for one gRPC
message are split into a header and data chunks (:func:`split_chunks`/:func:`join_chunks`).
Every decoder validates what it is given and raises ``InvalidArgumentError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import (
    InvalidArgumentError,
    OpError,
    ResourceExhaustedError,
    clip,
)
from varstore.proto import varstore_pb2 as pb

MAX_RANK = 32
# numpy refuses an array whose non-zero dimensions times its item size reach this, even an
# empty one (its sizes are signed 64-bit integers).
MAX_ARRAY_BYTES = 1 << 63
# Payloads up to this size go in one unary message; larger ones are streamed in chunks.
STREAM_THRESHOLD = 1 << 20
# Stream chunks: large enough to amortize gRPC's per-message cost, small enough that the
# sender's and receiver's copies overlap and that one chunk never holds the GIL for long.
CHUNK_BYTES = 1 << 20
MIN_CHUNK_BYTES = 64 << 10
# The server copies fetched variables this large straight into a streamed reply's frames
# (:class:`Framed`); smaller ones share frames, as one frame each would cost more messages.
FRAMED_BYTES = CHUNK_BYTES // 2
_LEN = np.dtype("<u8")
# RunChunk.data is field 3, length-delimited: its tag byte is (3 << 3) | 2.
_DATA_TAG = b"\x1a"
# RunRequest.tensors is field 3 too; unary requests past this size have their tensors parsed
# one by one (see parse_run_request).
_RUN_TENSORS_FIELD = 3
SPLIT_PARSE_BYTES = 64 << 10
# Memory a decoded string element takes besides its bytes: the array's pointer (8) and the
# bytes object's header (33 in CPython), allocated in 16-byte steps.
STRING_ELEMENT_BYTES = 56
# Charge(nbytes, what, request=False): called with the bytes a decoder is about to allocate
# (``request``: request buffers), before it allocates them; it raises to refuse them (the
# server's memory budget, varstore.server.budget.Lease.charge).
Charge = Callable[..., None]


def shape_to_proto(shape: Sequence[int]) -> pb.Shape:
    """A ``Shape`` message for a tuple of dimensions."""
    return pb.Shape(dim=[int(d) for d in shape])


def shape_from_proto(dims: Iterable[int], dtype: DType | None = None) -> tuple[int, ...]:
    """A validated shape tuple (:func:`check_shape`); raises ``InvalidArgumentError``."""
    return check_shape(dims, dtype)


def check_shape(dims: Iterable[int], dtype: DType | None = None,
                error: type[OpError] = InvalidArgumentError, what: str = "shape"
                ) -> tuple[int, ...]:
    """``dims`` as a shape tuple, if an array of that shape and ``dtype`` (None: of 1-byte
    items, checked again once the dtype is known) can exist: rank at most
    :data:`MAX_RANK`, no negative dimension, and, as numpy requires even of an empty array,
    the product of the non-zero dimensions times the item size (a string element: numpy's
    8-byte pointer) under 2**63, computed with exact integers. The one shape check of
    requests, results and checkpoint files.

    Raises ``error`` (``DataLossError`` for a file) whose message starts with ``what``.
    """
    shape = tuple(map(int, dims))
    if len(shape) > MAX_RANK:
        raise error(f"{what} {clip(list(shape))} has rank {len(shape)} > {MAX_RANK}")
    if shape and min(shape) < 0:
        raise error(f"{what} {clip(list(shape))} has a negative dimension")
    itemsize = 1 if dtype is None else dtype.itemsize or 8
    size = itemsize
    for d in shape:
        size *= d or 1
    if size >= MAX_ARRAY_BYTES:
        raise error(f"{what} {clip(list(shape))} is too large for any array "
                    f"({itemsize}-byte items)")
    return shape


def dtype_from_proto(enum: int) -> DType:
    """The dtype for a wire number; raises ``InvalidArgumentError`` for unknown numbers."""
    try:
        return dtypes.from_enum(enum)
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None


def num_elements(shape: Sequence[int]) -> int:
    """The number of elements of ``shape`` (1 for a scalar)."""
    n = 1
    for d in shape:
        n *= d
    return n


def encode_content(array: np.ndarray, dtype: DType) -> bytes | memoryview:
    """The wire bytes of ``array`` (a C-contiguous view when possible, no copy)."""
    if dtype.is_string:
        items = [bytes(x) for x in array.reshape(-1)]
        lengths = np.fromiter((len(x) for x in items), dtype=_LEN, count=len(items))
        return lengths.tobytes() + b"".join(items)
    arr = np.asarray(array, dtype=dtype.np_dtype, order="C")
    return arr.reshape(-1).view(np.uint8).data if arr.size else b""


def decode_content(dtype: DType, shape: tuple[int, ...], content: Any,
                   writable: bool = True, charge: Charge | None = None) -> np.ndarray:
    """The array encoded in ``content``; raises ``InvalidArgumentError`` on a size mismatch.

    With ``writable`` and an immutable buffer, the result is a copy; otherwise a view.
    ``charge`` is called with the bytes of a copy or of decoded strings before they are made.
    """
    n = num_elements(shape)
    if dtype.is_string:
        return _decode_strings(shape, n, memoryview(content), charge)
    expected = n * dtype.itemsize
    if len(content) != expected:
        raise InvalidArgumentError(
            f"tensor of dtype {dtype.name} and shape {list(shape)} needs {expected} bytes, "
            f"got {len(content)}")
    array = np.frombuffer(content, dtype=dtype.np_dtype, count=n)
    if writable and not array.flags.writeable:
        if charge is not None:
            charge(expected, f"a tensor of dtype {dtype.name} and shape {list(shape)}")
        array = array.copy()
    return array.astype(dtype.np_dtype, copy=False).reshape(shape)


def _decode_strings(shape: tuple[int, ...], n: int, content: memoryview,
                    charge: Charge | None) -> np.ndarray:
    header = n * _LEN.itemsize
    if len(content) < header:
        raise InvalidArgumentError(
            f"string tensor of shape {list(shape)} needs {header} bytes of lengths, got "
            f"{len(content)} bytes")
    if charge is not None:
        charge(n * STRING_ELEMENT_BYTES + len(content) - header,
               f"a string tensor of shape {list(shape)}")
    # Python integers: a uint64 sum wraps, and lengths near 2**64 would then pass.
    lengths = np.frombuffer(content[:header], dtype=_LEN).tolist()
    total = sum(lengths)
    if total != len(content) - header:
        raise InvalidArgumentError(
            f"string tensor of shape {list(shape)}: its lengths add up to {clip(total)} bytes, "
            f"it carries {len(content) - header}")
    out = np.empty(n, dtype=object)
    pos = header
    for i, length in enumerate(lengths):
        out[i] = bytes(content[pos:pos + length])
        pos += length
    return out.reshape(shape)


def tensor_from_proto(message: pb.Tensor, content: Any = None,
                      charge: Charge | None = None) -> np.ndarray:
    """The validated array of a ``Tensor`` message (``content`` overrides streamed bytes);
    ``charge`` as :func:`decode_content` calls it."""
    dtype = dtype_from_proto(message.dtype)
    shape = shape_from_proto(message.shape, dtype)
    return decode_content(dtype, shape, message.content if content is None else content,
                          charge=charge)


class Framed:
    """A numeric tensor's content copied straight into :func:`data_frame` chunks: one copy
    where an array copy and framing it would make two (the server takes it of variables it
    reads for a streamed reply, under their locks). :func:`split_chunks` sends the frames as
    they are; ``len()`` is the content's length in bytes."""

    __slots__ = ("dtype", "shape", "frames", "nbytes")

    def __init__(self, array: np.ndarray, dtype: DType, chunk_bytes: int = CHUNK_BYTES) -> None:
        view = np.asarray(array, dtype=dtype.np_dtype, order="C").reshape(-1).view(np.uint8).data
        self.dtype = dtype
        self.shape = array.shape
        self.nbytes = len(view)
        # Pieces of equal size: a 2.5 MB tensor goes as three of ~0.85 MB, not 1 + 1 + 0.5.
        pieces = -(-self.nbytes // chunk_bytes)
        step = -(-self.nbytes // pieces) if pieces else 1
        self.frames = [data_frame([view[i:i + step]]) for i in range(0, self.nbytes, step)]

    def __len__(self) -> int:
        return self.nbytes


Payload = bytes | memoryview | Framed


def pack_tensors(arrays: Sequence[tuple[np.ndarray | Framed, DType]], stream: bool,
                 into: Any) -> list[Payload]:
    """Appends a Tensor message for each of ``arrays`` to ``into`` (a message's repeated
    ``Tensor`` field: filled in place, as copying a finished message would copy its bytes);
    with ``stream``, their bytes are returned separately (to send with :func:`split_chunks`)
    instead of inline. A :class:`Framed` tensor is sent only streamed."""
    payloads: list[Payload] = []
    for array, dtype in arrays:
        content = array if isinstance(array, Framed) else encode_content(array, dtype)
        if stream and len(content):
            into.add(dtype=dtype.enum, shape=array.shape, streamed_bytes=len(content))
            payloads.append(content)
        else:
            assert not isinstance(content, Framed), "a Framed tensor is sent streamed"
            into.add(dtype=dtype.enum, shape=array.shape, content=bytes(content))
    return payloads


def data_frame(parts: Sequence[bytes | memoryview]) -> bytes:
    """The wire bytes of ``RunChunk(data=<parts joined>)``, built with a single copy.

    It is the protobuf encoding of that message (the ``data`` field's tag and length, then
    the bytes), so any protobuf peer reads it as a ``RunChunk``.
    """
    size = bytearray()
    put_varint(size, sum(len(p) for p in parts))
    return b"".join([_DATA_TAG, size, *parts])


def serialize_chunk(message: pb.RunChunk | bytes) -> bytes:
    """RunStream's serializer: a ``RunChunk``'s encoding, or a :func:`data_frame` as is."""
    return message if isinstance(message, bytes) else message.SerializeToString()


class DataChunk:
    """A ``RunChunk`` that carries only ``data``: a view of the received bytes, not a copy."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data


def parse_chunk(raw: bytes) -> pb.RunChunk | DataChunk:
    """RunStream's deserializer: a data-only chunk as a :class:`DataChunk` viewing ``raw``,
    any other chunk as a parsed ``RunChunk`` (protobuf's ``DecodeError`` when malformed)."""
    if raw[:1] == _DATA_TAG:
        try:
            size, pos = read_varint(raw, 1)
        except ValueError:
            size, pos = -1, 0
        if pos + size == len(raw):
            return DataChunk(memoryview(raw)[pos:])
    return pb.RunChunk.FromString(raw)


def parse_run_request(raw: bytes) -> tuple[pb.RunRequest, list[pb.Tensor]]:
    """Run's deserializer: the ``RunRequest`` in ``raw`` and its tensors.

    protobuf (upb) parses a large bytes field inside a repeated message about ten times slower
    than at the top of a message (85 against 9 us for 256 KB), so a large request's tensors are
    cut out of the wire bytes and parsed as ``Tensor`` messages of their own; the returned
    request then lists no tensors. Raises protobuf's ``DecodeError`` when ``raw`` is malformed.
    """
    if len(raw) < SPLIT_PARSE_BYTES:
        request = pb.RunRequest.FromString(raw)
        return request, list(request.tensors)
    tensors: list[pb.Tensor] = []
    rest: list[bytes] = []
    pos = 0
    while pos < len(raw):
        start = pos
        try:
            tag, pos = read_varint(raw, pos)
            kind = tag & 7
            if kind == 0:
                _, pos = read_varint(raw, pos)
            elif kind == 2:
                size, begin = read_varint(raw, pos)
        except ValueError:
            raise DecodeError("malformed RunRequest") from None
        if kind not in (0, 1, 2, 5):
            raise DecodeError("malformed RunRequest")
        if kind == 2:
            if begin + size > len(raw):
                raise DecodeError("malformed RunRequest")
            pos = begin + size
            if tag >> 3 == _RUN_TENSORS_FIELD:
                tensors.append(pb.Tensor.FromString(raw[begin:pos]))
                continue
        else:
            pos += 8 if kind == 1 else 4
        rest.append(raw[start:pos])
    if pos != len(raw):
        raise DecodeError("truncated RunRequest")
    return pb.RunRequest.FromString(b"".join(rest)), tensors


def put_varint(out: bytearray, value: int) -> None:
    """Appends ``value`` (0 <= value < 2**64) as a little-endian base-128 varint, as protobuf
    and LevelDB's tables write them."""
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def read_varint(raw: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint64 at ``pos`` and the position after it. Raises ``ValueError`` for one that
    is truncated, longer than 10 bytes or 2**64 or more."""
    value = shift = 0
    end = len(raw)
    while pos < end:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value >> 64:
                raise ValueError("varint value of 2**64 or more")
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")
    raise ValueError("truncated varint")


def chunk_size(total: int) -> int:
    """Data bytes per chunk for a stream carrying ``total`` bytes: about an eighth of the
    payload (so the two ends overlap their work), within [MIN_CHUNK_BYTES, CHUNK_BYTES]."""
    return max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, total // 8))


def split_chunks(header: pb.RunChunk, payloads: Sequence[Payload],
                 chunk_bytes: int | None = None) -> Iterator[pb.RunChunk | bytes]:
    """The header message, then the payloads' bytes as :func:`data_frame` chunks of
    ``chunk_bytes`` (by default :func:`chunk_size` of the total) and the frames of
    :class:`Framed` payloads as they are; send with :func:`serialize_chunk`. Frames are built
    lazily, one per message sent."""
    if chunk_bytes is None:
        chunk_bytes = chunk_size(sum(len(p) for p in payloads))
    yield header
    parts: list[memoryview] = []
    size = 0
    for payload in payloads:
        if isinstance(payload, Framed):
            if parts:
                yield data_frame(parts)
                parts, size = [], 0
            yield from payload.frames
            continue
        view = memoryview(payload).cast("B")
        while len(view):
            part = view[:chunk_bytes - size]
            view = view[len(part):]
            parts.append(part)
            size += len(part)
            if size == chunk_bytes:
                yield data_frame(parts)
                parts, size = [], 0
    if parts:
        yield data_frame(parts)


class ChunkReader:
    """Reassembles a chunked message fed one chunk at a time (by a blocking or an async loop).

    The first chunk is the header (``request`` or ``response``); the tensors it marks as
    streamed are filled from the data chunks that follow, in order. ``charge`` (see
    :data:`Charge`) is told the header's size and the declared bytes (as request bytes) before
    the buffers are allocated, and the decoded strings' memory.
    """

    def __init__(self, field: str, limit: int, charge: Charge | None = None) -> None:
        self.field = field
        self.limit = limit
        self._charge = charge
        self.header: Any = None
        self._tensors: Any = None
        self._arrays: list[np.ndarray | None] = []
        self._pending: Iterator[tuple[int, np.ndarray]] = iter(())
        self._current: tuple[int, np.ndarray] | None = None
        self._filled = 0

    def feed(self, chunk: pb.RunChunk | DataChunk) -> None:
        """Takes the next chunk. Raises ``InvalidArgumentError`` when the stream is malformed
        or its sizes disagree with the tensors' shapes, and ``ResourceExhaustedError`` when the
        header declares more than ``limit`` bytes (checked before anything is allocated)."""
        if self.header is None:
            self._start(chunk)
            return
        data = memoryview(chunk.data)
        while len(data):
            if self._current is None:
                raise InvalidArgumentError("stream carries more bytes than its header declares")
            index, buf = self._current
            take = min(len(data), len(buf) - self._filled)
            # A memoryview copy keeps the GIL (numpy's would drop and retake it per chunk,
            # waiting on gRPC's threads each time).
            buf.data[self._filled:self._filled + take] = data[:take]
            data = data[take:]
            self._filled += take
            if self._filled == len(buf):
                self._arrays[index] = tensor_from_proto(self._tensors[index], buf,
                                                        self._charge)
                self._current, self._filled = next(self._pending, None), 0

    def _start(self, first: pb.RunChunk | DataChunk) -> None:
        if isinstance(first, DataChunk):
            raise InvalidArgumentError("stream does not start with a header chunk")
        header = getattr(first, self.field)
        tensors = header.tensors if self.field == "request" else header.values
        declared = 0
        for t in tensors:
            if t.streamed_bytes < 0 or (t.streamed_bytes and t.content):
                raise InvalidArgumentError("malformed streamed tensor")
            dtype = dtype_from_proto(t.dtype)
            shape = shape_from_proto(t.shape, dtype)
            if t.streamed_bytes:
                # Strings: at least their lengths; other dtypes: exactly their elements.
                expected = num_elements(shape) * (dtype.itemsize or _LEN.itemsize)
                if t.streamed_bytes < expected or (
                        t.streamed_bytes != expected and not dtype.is_string):
                    raise InvalidArgumentError(
                        f"tensor of dtype {dtype.name} and shape {list(shape)} needs "
                        f"{'at least ' if dtype.is_string else ''}{expected} bytes, header "
                        f"declares {t.streamed_bytes}")
            declared += t.streamed_bytes
        if declared > self.limit:
            raise ResourceExhaustedError(
                f"request of {declared} bytes exceeds the limit of {self.limit} bytes")
        if self._charge is not None:
            self._charge(first.ByteSize() + declared, f"a streamed {self.field}", True)
        self.header, self._tensors = header, tensors
        self._arrays = [None] * len(tensors)
        # numpy buffers rather than bytearrays: numpy asks the kernel for huge pages on large
        # allocations, which makes filling fresh memory cheaper.
        self._pending = iter([(i, np.empty(t.streamed_bytes, np.uint8))
                              for i, t in enumerate(tensors) if t.streamed_bytes])
        self._current = next(self._pending, None)

    def result(self) -> tuple[Any, list[np.ndarray | None]]:
        """The header and, per tensor, the decoded array of streamed ones (None for inline
        ones); raises ``InvalidArgumentError`` when the stream ended early."""
        if self.header is None:
            raise InvalidArgumentError("empty stream")
        if self._current is not None:
            raise InvalidArgumentError("stream ended before all tensor bytes arrived")
        return self.header, self._arrays


def join_chunks(chunks: Iterable[pb.RunChunk | DataChunk], field: str, limit: int,
                charge: Charge | None = None) -> tuple[Any, list[np.ndarray | None]]:
    """Reads a whole chunked message with a :class:`ChunkReader` (``charge`` as it takes it);
    returns its header and the streamed tensors' arrays (None for inline ones)."""
    reader = ChunkReader(field, limit, charge)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.result()
