"""The names of a checkpoint's files (TensorFlow's ``core/util/tensor_bundle/naming.cc``) and
of the temporary files varstore writes before a checkpoint is complete."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

__all__ = [
    "COMMIT_MARK",
    "DATA_FILE",
    "OWN_TEMP",
    "TEMP_MARK",
    "checkpoint_files",
    "committed",
    "data_path",
    "index_path",
    "key_bytes",
    "key_str",
    "part_prefix",
    "pending_commit",
    "temp_name",
]

# Marks every file that is not yet part of a complete checkpoint (TensorFlow's own marker).
TEMP_MARK = ".tempstate"
# A data file's name: its checkpoint's prefix, its shard and the shard count.
DATA_FILE = re.compile(r"(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<count>\d{5})")
# Every name an unfinished save of varstore leaves, and nothing else: a file being written
# (temp_name), a save awaiting its commit (CheckpointFolder.temp_prefix), parts of sharded
# saves (part_prefix, and the cluster client's parts).
OWN_TEMP = re.compile(r".+\.tempstate(-vs\d+|-commit\.(index|data-\d{5}-of-\d{5})|"
                      r"(-part-\d{5}-of-\d{5}|[0-9a-f]{8}_part-\d{5}-of-\d{5})"
                      r"\.(index|data-00000-of-00001))")


def index_path(prefix: str | os.PathLike[str]) -> str:
    """The index file name of checkpoint ``prefix``."""
    return f"{os.fspath(prefix)}.index"


def data_path(prefix: str | os.PathLike[str], shard: int, num_shards: int) -> str:
    """The name of data file ``shard`` of ``num_shards`` of checkpoint ``prefix``."""
    return f"{os.fspath(prefix)}.data-{shard:05d}-of-{num_shards:05d}"


def part_prefix(prefix: str | os.PathLike[str], shard: int, num_shards: int) -> str:
    """A prefix for one part of a sharded save, recognizable as temporary until merged."""
    return f"{os.fspath(prefix)}{TEMP_MARK}-part-{shard:05d}-of-{num_shards:05d}"


def temp_name(path: str) -> str:
    """Where ``path`` is written before it is renamed into place (a name only varstore makes:
    TensorFlow's own temporary files end in ``.tempstate`` and digits, with no ``-vs``)."""
    return f"{path}{TEMP_MARK}-vs{secrets.randbits(64)}"


def checkpoint_files(prefix: str | os.PathLike[str]) -> list[Path]:
    """The existing files of checkpoint ``prefix``: its index and every data shard."""
    directory, name = os.path.split(os.fspath(prefix))
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    found = []
    for entry in names:
        data = DATA_FILE.fullmatch(entry)
        if entry == f"{name}.index" or (data is not None and data["prefix"] == name):
            found.append(Path(directory, entry))
    return sorted(found)


def key_bytes(key: str | bytes) -> bytes:
    """A tensor name as the bytes of its table key."""
    return key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")


def key_str(key: bytes) -> str:
    """A table key as the tensor name it spells."""
    return key.decode("utf-8", "surrogateescape")


# A save awaiting its commit is written under PREFIX + COMMIT_MARK (it contains TEMP_MARK, so
# whatever a crash leaves there counts as unfinished); see CheckpointFolder.commit.
COMMIT_MARK = f"{TEMP_MARK}-commit"


def committed(temp: str | os.PathLike[str], num_shards: int | None = None) -> bool:
    """Whether the save under temporary prefix ``temp`` passed its commit point: its index
    is written and fewer than all of its data files (``num_shards``; None: as their names
    say) are left under ``temp``. Raises ``OSError`` when its folder cannot be listed."""
    if not os.path.lexists(index_path(temp)):
        return False
    counts = [int(m["count"]) for p in checkpoint_files(temp)
              if (m := DATA_FILE.fullmatch(p.name))]
    if num_shards is None:
        num_shards = counts[0] if counts else 0
    return len(counts) < num_shards or not counts


def pending_commit(prefix: str | os.PathLike[str]) -> str | None:
    """The temporary prefix of a save that replaces checkpoint ``prefix`` and passed its
    commit point without moving all its files yet (a crash stopped it, or it is moving them
    now), or None. Its files, wherever each one is now, are the checkpoint ``prefix``."""
    temp = f"{os.fspath(prefix)}{COMMIT_MARK}"
    try:
        return temp if committed(temp) else None
    except OSError:
        return None
