"""Conversions between numpy arrays and varstore's wire messages, used by both sides.

Tensors travel as a dtype number, a shape and raw little-endian bytes (numpy's native order
on every platform varstore supports); strings as their
lengths (little-endian uint64) followed by their bytes. Messages too large for one gRPC
message are split into a header and data chunks (:func:`split_chunks`/:func:`join_chunks`).
Every decoder validates what it is given and raises ``InvalidArgumentError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from varstore import dtypes
from varstore.dtypes import DType
from varstore.errors import InvalidArgumentError, ResourceExhaustedError
from varstore.proto import varstore_pb2 as pb

MAX_RANK = 32
# Payloads up to this size go in one unary message; larger ones are streamed in chunks.
# 1 MiB chunks keep each protobuf parse cheap while amortizing per-message overhead.
CHUNK_BYTES = 1 << 20
STREAM_THRESHOLD = 1 << 20
_LEN = np.dtype("<u8")


def shape_to_proto(shape: Sequence[int]) -> pb.Shape:
    """A ``Shape`` message for a tuple of dimensions."""
    return pb.Shape(dim=[int(d) for d in shape])


def shape_from_proto(dims: Iterable[int]) -> tuple[int, ...]:
    """A validated shape tuple; raises ``InvalidArgumentError`` for negative or huge ranks."""
    shape = tuple(int(d) for d in dims)
    if len(shape) > MAX_RANK:
        raise InvalidArgumentError(f"shape {shape} has rank {len(shape)} > {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"shape {shape} has a negative dimension")
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
    return memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b""


def decode_content(dtype: DType, shape: tuple[int, ...], content: Any,
                   writable: bool = True) -> np.ndarray:
    """The array encoded in ``content``; raises ``InvalidArgumentError`` on a size mismatch.

    With ``writable`` and an immutable buffer, the result is a copy; otherwise a view.
    """
    n = num_elements(shape)
    if dtype.is_string:
        return _decode_strings(shape, n, memoryview(content))
    expected = n * dtype.itemsize
    if len(content) != expected:
        raise InvalidArgumentError(
            f"tensor of dtype {dtype.name} and shape {list(shape)} needs {expected} bytes, "
            f"got {len(content)}")
    array = np.frombuffer(content, dtype=dtype.np_dtype, count=n)
    if writable and not array.flags.writeable:
        array = array.copy()
    return array.astype(dtype.np_dtype, copy=False).reshape(shape)


def _decode_strings(shape: tuple[int, ...], n: int, content: memoryview) -> np.ndarray:
    header = n * _LEN.itemsize
    if len(content) < header:
        raise InvalidArgumentError(f"string tensor of shape {list(shape)} is truncated")
    lengths = np.frombuffer(content[:header], dtype=_LEN)
    if int(lengths.sum(dtype=np.uint64)) != len(content) - header:
        raise InvalidArgumentError("string tensor lengths do not match its bytes")
    out = np.empty(n, dtype=object)
    pos = header
    for i, length in enumerate(lengths.tolist()):
        out[i] = bytes(content[pos:pos + length])
        pos += length
    return out.reshape(shape)


def tensor_to_proto(array: np.ndarray, dtype: DType | None = None) -> pb.Tensor:
    """A ``Tensor`` message holding ``array`` (converted to ``dtype`` when given)."""
    dtype = dtypes.as_dtype(array.dtype) if dtype is None else dtype
    array = dtypes.to_numpy(array, dtype)
    return pb.Tensor(dtype=dtype.enum, shape=array.shape,
                     content=bytes(encode_content(array, dtype)))


def tensor_from_proto(message: pb.Tensor, content: Any = None) -> np.ndarray:
    """The validated array of a ``Tensor`` message (``content`` overrides streamed bytes)."""
    dtype = dtype_from_proto(message.dtype)
    shape = shape_from_proto(message.shape)
    return decode_content(dtype, shape, message.content if content is None else content)


def pack_tensors(arrays: Sequence[tuple[np.ndarray, DType]], stream: bool
                 ) -> tuple[list[pb.Tensor], list[bytes | memoryview]]:
    """Tensor messages for ``arrays``; with ``stream``, their bytes are returned separately
    (to send with :func:`split_chunks`) instead of inline."""
    messages: list[pb.Tensor] = []
    payloads: list[bytes | memoryview] = []
    for array, dtype in arrays:
        content = encode_content(array, dtype)
        if stream and len(content):
            messages.append(pb.Tensor(dtype=dtype.enum, shape=array.shape,
                                      streamed_bytes=len(content)))
            payloads.append(content)
        else:
            messages.append(pb.Tensor(dtype=dtype.enum, shape=array.shape,
                                      content=bytes(content)))
    return messages, payloads


def split_chunks(header: pb.RunChunk, payloads: Sequence[bytes | memoryview],
                 chunk_bytes: int = CHUNK_BYTES) -> Iterator[pb.RunChunk]:
    """The header message, then the payloads' bytes in chunks of ``chunk_bytes``."""
    yield header
    parts: list[memoryview] = []
    size = 0
    for payload in payloads:
        view = memoryview(payload).cast("B") if not isinstance(payload, bytes) else \
            memoryview(payload)
        while len(view):
            part = view[:chunk_bytes - size]
            view = view[len(part):]
            parts.append(part)
            size += len(part)
            if size == chunk_bytes:
                yield pb.RunChunk(data=_join(parts))
                parts, size = [], 0
    if parts:
        yield pb.RunChunk(data=_join(parts))


def _join(parts: list[memoryview]) -> bytes:
    return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


def join_chunks(chunks: Iterator[pb.RunChunk], field: str, limit: int
                ) -> tuple[Any, list[np.ndarray | None]]:
    """Reads a chunked message: returns its header (``request`` or ``response``) and, for each
    of its tensors, the decoded array of streamed ones (None for inline ones).

    Raises ``InvalidArgumentError`` when the stream is malformed or its sizes disagree with
    the tensors' shapes, and ``ResourceExhaustedError`` when it declares more than ``limit``
    bytes (checked before anything is allocated).
    """
    try:
        first = next(chunks)
    except StopIteration:
        raise InvalidArgumentError("empty stream") from None
    header = getattr(first, field)
    tensors = header.tensors if field == "request" else header.values
    declared = 0
    for t in tensors:
        if t.streamed_bytes < 0 or (t.streamed_bytes and t.content):
            raise InvalidArgumentError("malformed streamed tensor")
        dtype = dtype_from_proto(t.dtype)
        if t.streamed_bytes and not dtype.is_string:
            expected = num_elements(shape_from_proto(t.shape)) * dtype.itemsize
            if t.streamed_bytes != expected:
                raise InvalidArgumentError(
                    f"tensor of dtype {dtype.name} and shape {list(t.shape)} needs {expected} "
                    f"bytes, header declares {t.streamed_bytes}")
        declared += t.streamed_bytes
    if declared > limit:
        raise ResourceExhaustedError(
            f"request of {declared} bytes exceeds the limit of {limit} bytes")
    pending = [(i, bytearray(t.streamed_bytes)) for i, t in enumerate(tensors)
               if t.streamed_bytes]
    arrays: list[np.ndarray | None] = [None] * len(tensors)
    bufs = iter(pending)
    current = next(bufs, None)
    filled = 0
    for chunk in chunks:
        data = memoryview(chunk.data)
        while len(data):
            if current is None:
                raise InvalidArgumentError("stream carries more bytes than its header declares")
            index, buf = current
            take = min(len(data), len(buf) - filled)
            buf[filled:filled + take] = data[:take]
            data = data[take:]
            filled += take
            if filled == len(buf):
                arrays[index] = tensor_from_proto(tensors[index], buf)
                current, filled = next(bufs, None), 0
    if current is not None:
        raise InvalidArgumentError("stream ended before all tensor bytes arrived")
    return header, arrays
