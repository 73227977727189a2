"""The checkpoints in the server's checkpoint folder, for clients that cannot look at it (it is
on the server's machine): each complete checkpoint, its size, time and shard count, and
whether its folder's ``checkpoint`` state file names it as the latest.

A checkpoint is complete when its ``.index`` file and every data file the data files' own names
announce (``PREFIX.data-0000I-of-0000N``) are there; temporary files of saves in progress
(``.tempstate``) and a cluster shard's own snapshot (``.shard-0000I-of-0000N.snapshot``, its
variables only) are not checkpoints. The walk follows no symbolic link out of the folder and
stops after ``MAX_ENTRIES`` directory entries or ``MAX_CHECKPOINTS`` checkpoints (the answer
then says it is incomplete), so a huge folder costs the server a bounded amount of work.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from varstore.server.bundle import TEMP_MARK
from varstore.server.bundle.naming import DATA_FILE
from varstore.server.bundle.state import latest_checkpoint
from varstore.server.checkpoint_folder import CheckpointFolder
from varstore.server.cluster import is_snapshot

# Directory entries one listing reads at most, and checkpoints it reports at most.
MAX_ENTRIES = 100_000
MAX_CHECKPOINTS = 10_000
STATE_FILE = "checkpoint"


@dataclass(frozen=True)
class ListedCheckpoint:
    """One complete checkpoint: ``path`` relative to the checkpoint folder (what restore
    takes), ``nbytes`` of its index and data files, ``mtime`` of its index (seconds since the
    epoch), ``shards`` (data files), and ``latest``: its folder's state file names it."""

    path: str
    nbytes: int
    mtime: float
    shards: int
    latest: bool


def list_checkpoints(folder: CheckpointFolder, directory: str = ""
                     ) -> tuple[list[ListedCheckpoint], bool]:
    """The complete checkpoints under ``directory`` (a folder inside the checkpoint folder;
    empty: all of it), newest first, and whether the walk stopped at its limits.

    Raises ``PermissionDeniedError`` for a folder outside the checkpoint folder; a folder that
    does not exist (nothing saved yet) has no checkpoints.
    """
    root = folder.root
    top = folder.resolve(directory, folder=True)
    found: list[ListedCheckpoint] = []
    entries = 0
    truncated = False
    for here, dirs, files in os.walk(top, followlinks=False):
        entries += len(dirs) + len(files)
        if entries > MAX_ENTRIES:
            truncated = True
            break
        dirs.sort()
        found.extend(_in_folder(root, here, files))
        if len(found) > MAX_CHECKPOINTS:
            truncated = True
            break
    found.sort(key=lambda c: (-c.mtime, c.path))
    return found[:MAX_CHECKPOINTS], truncated


def _in_folder(root: str, here: str, files: list[str]) -> list[ListedCheckpoint]:
    """The complete checkpoints whose files are in folder ``here``."""
    data: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for name in files:
        m = DATA_FILE.fullmatch(name)
        if m is not None and TEMP_MARK not in name:
            data[m["prefix"]][int(m["count"])].add(int(m["shard"]))
    try:
        latest = latest_checkpoint(here, STATE_FILE)
    except (OSError, ValueError):
        latest = None
    latest_real = os.path.realpath(latest) if latest is not None else None
    out = []
    for name in files:
        if not name.endswith(".index") or TEMP_MARK in name:
            continue
        prefix = name[:-len(".index")]
        if is_snapshot(prefix):
            continue  # a shard's own snapshot: no checkpoint of the cluster
        counts = [n for n, shards in data.get(prefix, {}).items()
                  if 0 < n and shards == set(range(n))]
        if len(counts) != 1:
            continue  # no data file, or an incomplete or mixed set: no checkpoint to restore
        shards = counts[0]
        paths = [os.path.join(here, name)] + [
            os.path.join(here, f"{prefix}.data-{i:05d}-of-{shards:05d}") for i in range(shards)]
        try:
            stats = [os.stat(p, follow_symlinks=False) for p in paths]
        except OSError:
            continue  # removed while we looked
        full = os.path.join(here, prefix)
        out.append(ListedCheckpoint(
            path=os.path.relpath(full, root), nbytes=sum(s.st_size for s in stats),
            mtime=stats[0].st_mtime, shards=shards,
            latest=latest_real == os.path.realpath(full)))
    return out
