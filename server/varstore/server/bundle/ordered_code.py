"""Slice keys of partitioned tensors in TensorFlow's OrderedCode encoding
(``core/lib/strings/ordered_code.cc``), as ``checkpoint::EncodeTensorNameSlice`` writes them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from varstore.server.bundle.naming import key_bytes

__all__ = ["encode_slice_key"]

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
    parts = [_ordered_unsigned(0), _ordered_string(key_bytes(key)), _ordered_unsigned(len(starts))]
    for start, length in zip(starts, lengths, strict=True):
        parts.append(_ordered_signed(start))
        parts.append(_ordered_signed(length))
    return b"".join(parts)
