"""Joining the parts of a sharded save into one checkpoint, as TensorFlow's
``MergeBundles`` does: data files renamed, one merged index written last."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.entries import build_index, bundle_header, extent_bounds
from varstore.server.bundle.fsio import atomic_write, fsync_dir, unlink_quietly
from varstore.server.bundle.naming import data_path, index_path, key_str
from varstore.server.bundle.reader import BundleReader

__all__ = ["merge_shards"]


def merge_shards(part_prefixes: Sequence[str | os.PathLike[str]],
                 prefix: str | os.PathLike[str]) -> int:
    """Merges separately written parts into one sharded checkpoint ``prefix``; returns its
    number of data files, N.

    The parts' data files are renamed to ``prefix.data-0000k-of-0000N`` (in part order),
    then one index with ``num_shards = N`` appears atomically, and the parts' index files
    are deleted. Slices of one partitioned tensor may come from different parts. The
    server merges under a temporary prefix and commits that as it commits any save
    (``CheckpointFolder.commit``), so no finished checkpoint is touched here.

    Raises ``ValueError`` (before changing anything) for no parts, a key in two parts, slices
    of one tensor that overlap or leave part of it uncovered, or parts of different format
    versions; what :class:`BundleReader` raises for a bad part;
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
            for name, entry in reader.raw_entries():
                existing = entries.get(name)
                if existing is not None:
                    if not (existing.slices and entry.slices):
                        raise ValueError(f"duplicate tensor key {key_str(name)!r} in part {part}")
                    if existing.dtype != entry.dtype or existing.shape != entry.shape:
                        raise ValueError(f"slices of {key_str(name)!r} disagree on dtype/shape")
                    existing.slices.extend(entry.slices)
                    continue
                if not entry.slices:
                    entry.shard_id = base + entry.shard_id
                entries[name] = entry
    for name, entry in entries.items():
        if entry.slices:
            _check_slices(key_str(name), entry)
    num_shards = len(renames)
    directory = os.path.dirname(prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    for old, shard in renames:
        os.replace(old, data_path(prefix, shard, num_shards))
    fsync_dir(directory)
    atomic_write(index_path(prefix), build_index(bundle_header(num_shards, version), entries))
    for part in parts:
        unlink_quietly(index_path(part))
    return num_shards


def _check_slices(key: str, entry: pb.BundleEntryProto) -> None:
    """Raises ``ValueError`` unless the slices of tensor ``key`` are disjoint and cover it
    (exact integers), so that every reader can assemble it."""
    full = [d.size for d in entry.shape.dim]
    bounds = [extent_bounds(spec, full) for spec in entry.slices]
    for i, a in enumerate(bounds):
        for b in bounds[i + 1:]:
            if all(s1 < s2 + n2 and s2 < s1 + n1 for (s1, n1), (s2, n2) in zip(a, b,
                                                                               strict=True)):
                raise ValueError(f"slices {a} and {b} of {key!r} overlap")
    if sum(math.prod(n for _, n in b) for b in bounds) != math.prod(full):
        raise ValueError(f"the slices of {key!r} do not cover its shape {full[:8]}: save "
                         "every part of the partitioned variable")
