"""The text ``checkpoint`` file that lists a folder's checkpoints, as TensorFlow keeps it.

Semantics follow ``tf.train.CheckpointManager`` / ``checkpoint_management.py``: newest last,
paths inside the folder stored relative to it, one timestamp per checkpoint, the file
replaced atomically. Relative paths read from the file resolve against the folder.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from pathlib import Path

from google.protobuf import text_format

from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.bundle import TEMP_MARK, _fsync_dir, _write_file_synced, index_path

__all__ = [
    "STATE_FILENAME",
    "CheckpointState",
    "checkpoint_files",
    "clean_leftovers",
    "latest_checkpoint",
    "read_state",
    "update_state",
]

STATE_FILENAME = "checkpoint"
CheckpointState = pb.CheckpointState

_log = logging.getLogger(__name__)
# TensorFlow's own atomic_write_string_to_file temp name for the state file.
_TF_STATE_TEMP = re.compile(re.escape(STATE_FILENAME) + r"\.tmp[0-9a-f]{32}")
_DATA_FILE = re.compile(r"(.+)\.data-\d{5}-of-\d{5}")


def _resolve(directory: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(directory, path)


def _relative(directory: str, path: str) -> str:
    base = os.path.abspath(directory)
    full = os.path.abspath(path)
    if os.path.commonpath([base, full]) == base:
        return os.path.relpath(full, base)
    return full


def read_state(directory: str | os.PathLike[str]) -> CheckpointState | None:
    """The folder's checkpoint state with every path resolved against ``directory``.

    Returns None if there is no state file, or (logging a warning, where TensorFlow would
    raise for the second case) if it does not parse or names no checkpoint.
    Raises ``OSError`` if the file exists but cannot be read.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, STATE_FILENAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    state = CheckpointState()
    try:
        text_format.Merge(text, state)
    except text_format.ParseError as e:
        _log.warning("ignoring unparseable checkpoint state %s: %s", path, e)
        return None
    if not state.model_checkpoint_path:
        _log.warning("ignoring checkpoint state %s: it names no checkpoint", path)
        return None
    state.model_checkpoint_path = _resolve(directory, state.model_checkpoint_path)
    paths = [_resolve(directory, p) for p in state.all_model_checkpoint_paths]
    del state.all_model_checkpoint_paths[:]
    state.all_model_checkpoint_paths.extend(paths)
    return state


def latest_checkpoint(directory: str | os.PathLike[str]) -> str | None:
    """The newest checkpoint prefix recorded in ``directory``, or None if there is none or
    its index file is missing. Raises ``OSError`` if the state file cannot be read."""
    state = read_state(directory)
    if state is None:
        return None
    if not os.path.exists(index_path(state.model_checkpoint_path)):
        _log.warning("checkpoint %s named in %s has no index file", state.model_checkpoint_path,
                     os.path.join(os.fspath(directory), STATE_FILENAME))
        return None
    return state.model_checkpoint_path


def update_state(directory: str | os.PathLike[str], new_prefix: str | os.PathLike[str],
                 max_to_keep: int | None) -> list[str]:
    """Records ``new_prefix`` as the newest checkpoint of ``directory`` and prunes old ones.

    A relative ``new_prefix`` is taken relative to ``directory``. Saving a prefix already
    listed moves it to the end. Keeps the newest ``max_to_keep`` (0 or None: all), replaces
    the state file atomically, and only then deletes the dropped checkpoints' files.
    Returns the dropped prefixes. Raises ``ValueError`` for a negative ``max_to_keep``,
    ``OSError`` if the state file cannot be written (nothing is deleted then).
    """
    if max_to_keep is not None and max_to_keep < 0:
        raise ValueError(f"max_to_keep must be >= 0, got {max_to_keep}")
    directory = os.fspath(directory)
    new = _resolve(directory, os.fspath(new_prefix))
    now = time.time()
    old = read_state(directory)
    paths: list[str] = []
    stamps: list[float] = []
    last_preserved = now
    if old is not None:
        paths = list(old.all_model_checkpoint_paths)
        stamps = list(old.all_model_checkpoint_timestamps)
        last_preserved = old.last_preserved_timestamp or now
        if len(stamps) != len(paths):
            # As CheckpointManager does for state files written without timestamps.
            stamps = [last_preserved] * len(paths)
    same = os.path.abspath(new)
    kept = [(p, t) for p, t in zip(paths, stamps, strict=True) if os.path.abspath(p) != same]
    kept.append((new, now))
    dropped: list[str] = []
    if max_to_keep and len(kept) > max_to_keep:
        dropped = [p for p, _ in kept[:-max_to_keep]]
        kept = kept[-max_to_keep:]
    state = CheckpointState(
        model_checkpoint_path=_relative(directory, new),
        all_model_checkpoint_paths=[_relative(directory, p) for p, _ in kept],
        all_model_checkpoint_timestamps=[t for _, t in kept],
        last_preserved_timestamp=last_preserved,
    )
    _write_state(directory, text_format.MessageToString(state))
    for prefix in dropped:
        # Index first: a checkpoint without its index is simply absent (and its data files
        # are leftovers clean_leftovers removes), never an index pointing at missing data.
        files = sorted(checkpoint_files(prefix), key=lambda p: not p.name.endswith(".index"))
        for path in files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    return dropped


def _write_state(directory: str, text: str) -> None:
    os.makedirs(directory or ".", exist_ok=True)
    final = os.path.join(directory, STATE_FILENAME)
    temp = f"{final}{TEMP_MARK}{secrets.randbits(64)}"
    try:
        _write_file_synced(temp, text.encode("utf-8"))
        os.replace(temp, final)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def checkpoint_files(prefix: str | os.PathLike[str]) -> list[Path]:
    """The existing files of checkpoint ``prefix``: its index and every data shard."""
    prefix = os.fspath(prefix)
    directory, name = os.path.split(prefix)
    pattern = re.compile(re.escape(name) + r"\.(index|data-\d{5}-of-\d{5})")
    try:
        names = os.listdir(directory or ".")
    except FileNotFoundError:
        return []
    return sorted(Path(directory, n) for n in names if pattern.fullmatch(n))


def clean_leftovers(directory: str | os.PathLike[str]) -> list[Path]:
    """Deletes what interrupted saves left in ``directory``; returns the removed files.

    That is: files marked temporary (``*.tempstate*``, including unmerged parts of sharded
    saves, and TensorFlow's ``checkpoint.tmp<hex>``), and data files whose index never
    appeared. Call it only while no save into ``directory`` is running.
    Raises ``OSError`` if a file cannot be removed.
    """
    directory = os.fspath(directory)
    try:
        entries = [e for e in os.scandir(directory or ".") if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    names = {e.name for e in entries}
    removed = []
    for entry in entries:
        data = _DATA_FILE.fullmatch(entry.name)
        orphan = data is not None and f"{data.group(1)}.index" not in names
        if TEMP_MARK in entry.name or _TF_STATE_TEMP.fullmatch(entry.name) or orphan:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return sorted(removed)
