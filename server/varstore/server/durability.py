"""What counts as saved: the store against the checkpoint ``--restore latest`` would restore.

The exit save, the ``--save-every`` timer, a cluster shard's snapshot and shard 0's exit save
of the whole cluster (through the ``Unsaved`` RPC) all skip their save when nothing changed.
"Nothing changed" has one meaning: every variable's name and version equals what the
checkpoint that ``--restore latest`` would restore NOW held when it was committed or
restored. That checkpoint is the root folder's ``checkpoint`` state file's latest (for a shard
of a cluster: its own data file of it, or its own snapshot when that is newer, as
:func:`varstore.server.cluster_service.recover_shard` chooses). A save into another folder,
one with ``write_state=False``, a save whose commit failed, or a checkpoint some other program
wrote there counts for nothing; deleting variables counts as a change, so an emptied store is
saved as an empty checkpoint.

What a checkpoint held is recorded by the identity (device, inode, size, mtime) of the data
file holding this server's variables: the data file a save committed, or a cluster part's
data file, which shard 0's commit renames into place unchanged (so the record of a part only
ever matches once its commit put it where ``--restore latest`` reads, and a failed commit
leaves it matching nothing).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from varstore.server.retention import FileId, file_identity
from varstore.server.slices import SaveSlice
from varstore.server.store import Variable

__all__ = ["CHANGED", "Durability", "Versions", "changed_names", "versions_of"]

# {variable name: (serial, version)} of a store, or as a checkpoint holds the variables.
Versions = dict[str, tuple[int, int]]
# A name a checkpoint would restore as something else than the variable saved under it.
CHANGED = (-1, -1)
# How many recent checkpoints' records a server keeps (older ones: all unsaved).
RECORDS = 32


def versions_of(saved: Iterable[tuple[str, Variable, SaveSlice | None]]) -> Versions:
    """What a checkpoint of ``(key, variable, slice)`` entries holds, as a restore would name
    it: each variable saved under its own name (a part: as its slice of its full name's key)
    by serial and version; a variable saved under another key or slice as ``CHANGED`` under
    that key (a restore would create or set something else)."""
    versions: Versions = {}
    for key, var, part in saved:
        own = var.save_slice.full_name if var.save_slice is not None else var.name
        if key == own and part == var.save_slice:
            versions[var.name] = (var.serial, var.version)
        else:
            versions[key] = CHANGED
    return versions


def changed_names(now: Versions, saved: Versions) -> list[str]:
    """The names whose entry differs between ``now`` and ``saved`` (created, changed or
    gone), sorted."""
    return sorted(n for n in now.keys() | saved.keys() if now.get(n) != saved.get(n))


class Durability:
    """The variables each recent checkpoint held, by the identity of this server's data file
    of it (see the module's docstring). Thread-safe."""

    def __init__(self) -> None:
        self._records: OrderedDict[FileId, Versions] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, data_file: str, versions: Versions) -> None:
        """Records that ``data_file`` (as it is on disk now) holds ``versions``; a file that
        is gone records nothing."""
        found = file_identity([data_file]).get(data_file)
        if found is None:
            return
        with self._lock:
            self._records[found] = versions
            self._records.move_to_end(found)
            while len(self._records) > RECORDS:
                self._records.popitem(last=False)

    def held(self, data_files: Sequence[str]) -> Versions | None:
        """What the first of ``data_files`` with a record held (None: none has one)."""
        for found in file_identity(data_files).values():
            with self._lock:
                versions = self._records.get(found)
            if versions is not None:
                return versions
        return None
