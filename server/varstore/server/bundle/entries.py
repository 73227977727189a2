"""The protos inside a checkpoint's index (``BundleHeaderProto``, ``BundleEntryProto``) and the
format details that the writer, the reader and the merge share. Little-endian hosts only:
numeric bytes are written and read as they are in memory."""

from __future__ import annotations

from collections.abc import Sequence

import google_crc32c
import numpy as np

from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.table import TableBuilder

__all__ = ["BUNDLE_VERSION", "CHUNK_BYTES", "build_index", "bundle_header", "extent_bounds",
           "lengths_crc", "set_shape"]

# The bundle format version TensorFlow writes and this reader understands.
BUNDLE_VERSION = 1
# Streaming granularity: each chunk is checksummed while it is still in the CPU cache.
CHUNK_BYTES = 4 << 20


def set_shape(proto: pb.TensorShapeProto, shape: Sequence[int]) -> None:
    """Sets ``proto`` to ``shape``."""
    proto.SetInParent()  # TensorFlow always writes the shape, even a scalar's empty one
    for size in shape:
        proto.dim.add(size=int(size))


def bundle_header(num_shards: int, version: pb.VersionDef | None = None) -> bytes:
    """The serialized ``BundleHeaderProto`` of a checkpoint of ``num_shards`` data files."""
    header = pb.BundleHeaderProto(num_shards=num_shards)
    if version is None:
        header.version.producer = BUNDLE_VERSION
    else:
        header.version.CopyFrom(version)
    return header.SerializeToString()


def build_index(header: bytes, entries: dict[bytes, pb.BundleEntryProto]) -> bytes:
    """The bytes of an ``.index`` table holding ``header`` and ``entries`` in key order."""
    table = TableBuilder()
    table.add(b"", header)
    for key in sorted(entries):
        table.add(key, entries[key].SerializeToString())
    return table.finish()


def extent_bounds(proto: pb.TensorSliceProto, full: Sequence[int]) -> list[tuple[int, int]]:
    """(start, length) per dimension of a slice of a tensor of shape ``full``."""
    return [(e.start, e.length) if e.HasField("length") else (0, d)
            for e, d in zip(proto.extent, full, strict=False)]


def lengths_crc(lengths: Sequence[int]) -> int:
    """The CRC-32C TensorFlow stores after a string tensor's lengths."""
    # TensorFlow checksums each length as a uint32, or as a uint64 if it does not fit.
    if not lengths or max(lengths) <= 0xFFFFFFFF:
        return google_crc32c.value(np.asarray(lengths, dtype="<u4").tobytes())
    crc = 0
    for n in lengths:
        crc = google_crc32c.extend(crc, n.to_bytes(4 if n <= 0xFFFFFFFF else 8, "little"))
    return crc
