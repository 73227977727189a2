"""A reader opens one checkpoint whole while a save replaces it (attack4 10): a commit
passing between the reader's index read and its data files' opens gives the new checkpoint
whole, one after its open changes nothing it reads; never the old index with new data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from varstore import dtypes
from varstore.errors import AbortedError
from varstore.server.bundle import BundleReader, BundleWriter, merge_shards, part_prefix
from varstore.server.bundle.naming import data_path, index_path
from varstore.server.checkpoint_folder import CheckpointFolder

SIZE = 1 << 16


def _write(prefix: str, value: float) -> None:
    """A 2-shard checkpoint at ``prefix``: w0 in data file 0, w1 in data file 1."""
    parts = [part_prefix(prefix, k, 2) for k in range(2)]
    for k, part in enumerate(parts):
        with BundleWriter(part) as writer:
            writer.add(f"w{k}", np.full(SIZE, value, np.float32), dtypes.float32)
    merge_shards(parts, prefix)


def _values(reader: BundleReader) -> list[float]:
    return [float(v) for key in ("w0", "w1") for v in np.unique(reader.read(key))]


def _replace(prefix: str, value: float, steps: int) -> None:
    """A save of ``prefix`` as the server commits it (CheckpointFolder.commit), the first
    ``steps`` renames only (1: the commit point; 3: all of them)."""
    temp = CheckpointFolder.temp_prefix(prefix)
    _write(temp, value)
    renames = [(data_path(temp, k, 2), data_path(prefix, k, 2)) for k in range(2)]
    renames.append((index_path(temp), index_path(prefix)))
    for source, target in renames[:steps]:
        os.replace(source, target)


def _during_open(monkeypatch: pytest.MonkeyPatch, prefix: str, action: Callable[[], None],
                 times: int = 1) -> None:
    """Runs ``action`` in the next ``times`` opens of a reader of ``prefix``, after the index
    was read and before the data files are opened."""
    load = BundleReader._load
    calls = [0]

    def racing(self: BundleReader, raw: bytes) -> tuple[int, list[int]]:
        calls[0] += self.prefix == prefix
        if self.prefix == prefix and calls[0] <= times:
            action()
        return load(self, raw)
    monkeypatch.setattr(BundleReader, "_load", racing)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_a_commit_between_index_and_data_opens_gives_the_new_checkpoint_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    prefix = str(tmp_path / "m")
    _write(prefix, 1.0)
    _during_open(monkeypatch, prefix, lambda: _replace(prefix, 2.0, steps))
    with BundleReader(prefix) as reader:  # was: DataLossError, checksum mismatch
        assert _values(reader) == [2.0, 2.0]


def test_a_commit_after_the_open_changes_nothing_the_reader_reads(tmp_path: Path) -> None:
    prefix = str(tmp_path / "m")
    _write(prefix, 1.0)
    with BundleReader(prefix) as reader:
        _replace(prefix, 2.0, 3)
        assert _values(reader) == [1.0, 1.0]
    with BundleReader(prefix) as reader:
        assert _values(reader) == [2.0, 2.0]


def test_a_checkpoint_replaced_at_every_open_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = str(tmp_path / "m")
    _write(prefix, 1.0)
    _during_open(monkeypatch, prefix, lambda: _replace(prefix, 2.0, 3), times=1000)
    with pytest.raises(AbortedError, match=r"checkpoint .*m was replaced 20 times while it "
                                           r"was being opened; open it again"):
        BundleReader(prefix)
    assert sorted(os.listdir(tmp_path)) == [
        "m.data-00000-of-00002", "m.data-00001-of-00002", "m.index"]
