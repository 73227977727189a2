"""The text ``checkpoint`` file that lists a folder's checkpoints, as TensorFlow keeps it.

Semantics follow TensorFlow's ``checkpoint_management.py`` as its 1.x ``Saver`` uses it: the
newest checkpoint, then the saver's own checkpoints, oldest first; paths inside the folder
stored relative to it; the file replaced atomically. Relative paths read from the file resolve
against the folder. Which checkpoints are deleted is :mod:`varstore.server.retention`'s job:
nothing here deletes a checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from google.protobuf import text_format

from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.bundle.fsio import atomic_write
from varstore.server.bundle.naming import index_path

__all__ = [
    "STATE_FILENAME",
    "CheckpointState",
    "is_state_file",
    "latest_checkpoint",
    "read_state",
    "write_state",
]

STATE_FILENAME = "checkpoint"
CheckpointState = pb.CheckpointState

_log = logging.getLogger(__name__)
# A state file lists a few paths; TensorFlow's are far below this. Bigger ones are ignored.
_MAX_STATE_BYTES = 1 << 20


def _resolve(directory: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(directory, path)


def _relative(directory: str, path: str) -> str:
    base = os.path.abspath(directory)
    full = os.path.abspath(path)
    if os.path.commonpath([base, full]) == base:
        return os.path.relpath(full, base)
    return full


def read_state(directory: str | os.PathLike[str],
               filename: str = STATE_FILENAME) -> CheckpointState | None:
    """The checkpoint state in ``directory``'s state file ``filename`` (TensorFlow's
    ``latest_filename``), every path resolved against ``directory``.

    Returns None if there is no state file, or (logging a warning, where TensorFlow would
    raise for the second case) if it does not parse or names no checkpoint.
    Raises ``OSError`` if the file exists but cannot be read.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, filename)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(_MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except UnicodeDecodeError as e:
        _log.warning("ignoring checkpoint state %s: %s", path, e)
        return None
    if len(text) > _MAX_STATE_BYTES:
        _log.warning("ignoring checkpoint state %s: larger than %d bytes", path,
                     _MAX_STATE_BYTES)
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


def is_state_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a checkpoint state file (text a ``CheckpointState`` parses
    from, at most :data:`_MAX_STATE_BYTES`), so that replacing it destroys nothing else.
    Raises ``OSError`` if it exists but cannot be read; a missing file is no state file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return False
    if len(raw) > _MAX_STATE_BYTES:
        return False
    try:
        text_format.Merge(raw.decode("utf-8"), CheckpointState())
    except (UnicodeDecodeError, text_format.ParseError):
        return False
    return True


def latest_checkpoint(directory: str | os.PathLike[str],
                      filename: str = STATE_FILENAME) -> str | None:
    """The newest checkpoint prefix recorded in ``directory``'s state file ``filename``, or
    None if there is none or its index file is missing (as TensorFlow's
    ``latest_checkpoint``). Raises ``OSError`` if the state file cannot be read."""
    state = read_state(directory, filename)
    if state is None:
        return None
    if not os.path.exists(index_path(state.model_checkpoint_path)):
        _log.warning("checkpoint %s named in %s has no index file", state.model_checkpoint_path,
                     os.path.join(os.fspath(directory), filename))
        return None
    return state.model_checkpoint_path


def write_state(directory: str | os.PathLike[str], latest: str | os.PathLike[str],
                all_paths: Sequence[str | os.PathLike[str]],
                filename: str = STATE_FILENAME,
                timestamps: Sequence[float] | None = None) -> None:
    """Replaces ``directory``'s state file ``filename`` atomically: ``latest`` is the newest
    checkpoint, ``all_paths`` (oldest first; ``latest`` is appended when it is not last)
    the ones listed with it, as TensorFlow's ``update_checkpoint_state_internal`` does for a
    ``Saver``; ``timestamps`` (unix times, one per listed path) let TensorFlow 2's
    ``CheckpointManager`` adopt the list (it adopts those newer than
    ``last_preserved_timestamp``, written as the oldest minus one second, as it
    writes its own). Paths inside ``directory`` are written relative
    to it. Deletes nothing.

    Raises ``ValueError`` when ``timestamps`` does not match the paths listed, ``OSError`` if
    the file cannot be written (the old one is then unchanged).
    """
    directory = os.fspath(directory)
    latest = os.fspath(latest)
    paths = [os.fspath(p) for p in all_paths]
    if not paths or paths[-1] != latest:
        paths.append(latest)
    if timestamps is not None and len(timestamps) != len(paths):
        raise ValueError(f"{len(timestamps)} timestamps for {len(paths)} checkpoints")
    state = CheckpointState(
        model_checkpoint_path=_relative(directory, latest),
        all_model_checkpoint_paths=[_relative(directory, p) for p in paths],
        all_model_checkpoint_timestamps=timestamps or [],
        last_preserved_timestamp=min(timestamps) - 1.0 if timestamps else 0.0,
    )
    atomic_write(os.path.join(directory, filename),
                 text_format.MessageToString(state).encode("utf-8"))
