"""Sizes, counts and shapes a peer sends are checked with exact integers before any use.

Every hostile encoding below is refused with ``InvalidArgumentError`` (or
``ResourceExhaustedError`` for a size over the limit) naming what was wrong, in a message of
bounded length, and nothing the size claims is allocated first.
"""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from varstore.common import codec, dtypes
from varstore.common.errors import (
    QUOTE_LIMIT,
    InvalidArgumentError,
    ResourceExhaustedError,
    clip,
)
from varstore.proto import varstore_pb2 as pb

U64 = 1 << 64
# Longest message any refusal below may have: the inputs are far longer.
MESSAGE_BOUND = 1024


def _strings(lengths: list[int], data: bytes) -> bytes:
    return b"".join(n.to_bytes(8, "little") for n in lengths) + data


# (lengths, bytes): each pair's lengths disagree with its bytes, most of them only modulo 2**64.
HOSTILE_STRINGS = [
    ([U64 - 1, 4], b"xyz"),                  # sums to 3 modulo 2**64
    ([U64 - 3, 3, 3], b"abc"),
    ([1 << 63, 1 << 63, 3], b"abc"),         # two halves of 2**64
    ([U64 - 1, U64 - 1, 5], b"abc"),
    ([U64 - 1], b""),
    ([4, U64 - 1], b"xyz"),                  # the huge length after a valid one
    ([2, 2], b"abc"),                        # short by one
    ([1, 1], b"abc"),                        # one byte too many
    ([0, 0, 0], b"\x00"),
    ([(1 << 63) - 1], b"a" * 16),
]


@pytest.mark.parametrize("lengths, data", HOSTILE_STRINGS)
def test_string_lengths_are_summed_exactly(lengths: list[int], data: bytes) -> None:
    content = _strings(lengths, data)
    with pytest.raises(InvalidArgumentError, match=r"string tensor of shape \[\d+\]: its "
                       r"lengths add up to \d+ bytes, it carries \d+"):
        codec.decode_content(dtypes.string, (len(lengths),), content)


@pytest.mark.parametrize("shape", [(1 << 61,), (1 << 40, 1 << 40), (3,), (1 << 62, 0, 5)])
def test_string_lengths_past_the_content_are_refused(shape: tuple[int, ...]) -> None:
    n = codec.num_elements(shape)
    if n == 0:
        # An empty string tensor carries no lengths: extra bytes are refused as such.
        with pytest.raises(InvalidArgumentError, match="lengths add up to 0 bytes, it "
                           "carries 16"):
            codec.decode_content(dtypes.string, shape, b"\0" * 16)
        return
    with pytest.raises(InvalidArgumentError, match=rf"needs {n * 8} bytes of lengths, got 16"):
        codec.decode_content(dtypes.string, shape, b"\0" * 16)


def test_valid_strings_still_decode() -> None:
    content = _strings([0, 3, 1], b"abcd")
    out = codec.decode_content(dtypes.string, (3,), content)
    assert out.tolist() == [b"", b"abc", b"d"]


@pytest.mark.parametrize("dtype", [dtypes.float32, dtypes.complex128, dtypes.bool_])
@pytest.mark.parametrize("shape", [(1 << 62, 4), (1 << 40, 1 << 40, 1 << 40), (1 << 63,),
                                   (2, 3)])
def test_numeric_content_length_is_checked_against_the_exact_shape_product(
        dtype: dtypes.DType, shape: tuple[int, ...]) -> None:
    expected = codec.num_elements(shape) * dtype.itemsize
    with pytest.raises(InvalidArgumentError, match=f"needs {expected} bytes, got 5"):
        codec.decode_content(dtype, shape, b"\0" * 5)


@pytest.mark.parametrize("dims, message", [
    ([1] * 2000, r"rank 2000 > 32"),
    ([0] * 33, r"rank 33 > 32"),
    ([-1], "negative dimension"),
    ([4, -(1 << 63)], "negative dimension"),
])
def test_hostile_shapes_are_refused_in_bounded_messages(dims: list[int], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as e:
        codec.shape_from_proto(dims)
    assert len(str(e.value)) < MESSAGE_BOUND


def _header(*tensors: pb.Tensor) -> pb.RunChunk:
    return pb.RunChunk(request=pb.RunRequest(tensors=list(tensors)))


LIMIT = 1 << 20
# Headers a stream may start with, and what the reader says about each.
HOSTILE_HEADERS = [
    (_header(pb.Tensor(dtype=1, shape=[4], streamed_bytes=-1)), InvalidArgumentError,
     "malformed streamed tensor"),
    (_header(pb.Tensor(dtype=1, shape=[4], streamed_bytes=16, content=b"x")),
     InvalidArgumentError, "malformed streamed tensor"),
    (_header(pb.Tensor(dtype=1, shape=[4], streamed_bytes=15)), InvalidArgumentError,
     r"dtype float32 and shape \[4\] needs 16 bytes, header declares 15"),
    (_header(pb.Tensor(dtype=1, shape=[1 << 40, 4], streamed_bytes=16)), InvalidArgumentError,
     f"needs {1 << 44} bytes, header declares 16"),
    (_header(pb.Tensor(dtype=1, shape=[1 << 62, 4], streamed_bytes=16)), InvalidArgumentError,
     r"shape \[4611686018427387904, 4\] is too large for any array"),
    (_header(pb.Tensor(dtype=7, shape=[1 << 20], streamed_bytes=64)), InvalidArgumentError,
     rf"dtype string and shape \[1048576\] needs at least {8 << 20} bytes, header declares 64"),
    (_header(pb.Tensor(dtype=7, shape=[3], streamed_bytes=23)), InvalidArgumentError,
     "needs at least 24 bytes"),
    (_header(pb.Tensor(dtype=1, shape=[-3], streamed_bytes=12)), InvalidArgumentError,
     "negative dimension"),
    (_header(pb.Tensor(dtype=1, shape=[1] * 40, streamed_bytes=4)), InvalidArgumentError,
     "rank 40 > 32"),
    (_header(pb.Tensor(dtype=99, shape=[1], streamed_bytes=4)), InvalidArgumentError,
     "unsupported dtype enum 99"),
    (_header(pb.Tensor(dtype=4, shape=[LIMIT + 1], streamed_bytes=LIMIT + 1)),
     ResourceExhaustedError, f"request of {LIMIT + 1} bytes exceeds the limit of {LIMIT}"),
    # Two declarations that each fit int64 but whose sum does not: summed exactly.
    (_header(*[pb.Tensor(dtype=4, shape=[(1 << 63) - 1], streamed_bytes=(1 << 63) - 1)] * 2),
     ResourceExhaustedError, f"request of {(1 << 64) - 2} bytes exceeds"),
    (pb.RunChunk(data=b"\0" * 8), InvalidArgumentError,
     "stream does not start with a header chunk"),
]


@pytest.mark.parametrize("first, error, message", HOSTILE_HEADERS)
def test_hostile_stream_headers_are_refused_before_allocating(
        first: pb.RunChunk, error: type[Exception], message: str) -> None:
    reader = codec.ChunkReader("request", LIMIT)
    chunk = codec.parse_chunk(first.SerializeToString())
    with pytest.raises(error, match=message) as e:
        reader.feed(chunk)
    assert len(str(e.value)) < MESSAGE_BOUND


def test_a_stream_with_more_bytes_than_declared_is_refused() -> None:
    reader = codec.ChunkReader("request", LIMIT)
    reader.feed(_header(pb.Tensor(dtype=4, shape=[3], streamed_bytes=3)))
    with pytest.raises(InvalidArgumentError, match="more bytes than its header declares"):
        reader.feed(codec.parse_chunk(pb.RunChunk(data=b"abcd").SerializeToString()))


def test_a_stream_that_ends_early_is_refused() -> None:
    reader = codec.ChunkReader("request", LIMIT)
    reader.feed(_header(pb.Tensor(dtype=4, shape=[3], streamed_bytes=3)))
    reader.feed(codec.parse_chunk(pb.RunChunk(data=b"ab").SerializeToString()))
    with pytest.raises(InvalidArgumentError, match="ended before all tensor bytes arrived"):
        reader.result()


def test_streamed_strings_with_wrapping_lengths_are_refused() -> None:
    content = _strings([U64 - 1, 4], b"xyz")
    reader = codec.ChunkReader("request", LIMIT)
    reader.feed(_header(pb.Tensor(dtype=7, shape=[2], streamed_bytes=len(content))))
    with pytest.raises(InvalidArgumentError, match="lengths add up to"):
        reader.feed(codec.parse_chunk(pb.RunChunk(data=content).SerializeToString()))


def _field(number: int, kind: int) -> bytes:
    return bytes([(number << 3) | kind])


# Unary Run requests past the split-parse size whose framing lies about its own lengths.
PAD = b"\x12\x00" * codec.SPLIT_PARSE_BYTES  # empty nodes, to pass the split-parse threshold
HOSTILE_RAW = [
    PAD + _field(3, 2) + b"\xff" * 9 + b"\x01",              # a 64-bit tensor length
    PAD + _field(3, 2) + b"\xff" * 10,                       # an unterminated varint
    PAD + _field(3, 2) + b"\x80\x80\x80\x80\x10" + b"x",     # 4 GiB declared, 1 byte sent
    PAD + _field(4, 1) + b"\x00" * 3,                        # a truncated fixed64
    PAD + _field(4, 5) + b"\x00",                            # a truncated fixed32
    PAD + _field(5, 3),                                      # a group (not proto3)
    PAD + _field(6, 0) + b"\xff" * 10,                       # an unterminated varint value
]


@pytest.mark.parametrize("raw", HOSTILE_RAW, ids=range(len(HOSTILE_RAW)))
def test_hostile_request_framing_is_refused(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.parse_run_request(raw)


@pytest.mark.parametrize("value, limit", [("x" * 200_000, QUOTE_LIMIT), (list(range(10**5)), 80),
                                          ("short", QUOTE_LIMIT)])
def test_clip_bounds_quoted_input(value: object, limit: int) -> None:
    text = clip(value, limit)
    full = str(value)
    if len(full) <= limit:
        assert text == full
    else:
        assert text == f"{full[:limit]}... ({len(full)} characters)"
