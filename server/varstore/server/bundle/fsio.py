"""File-system steps of an atomic commit: fsync'd writes, durable renames, write-behind, and
removing what an interrupted save of varstore left."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from varstore.server.bundle.naming import OWN_TEMP, temp_name

__all__ = [
    "SYNC_FILE_RANGE_WRITE",
    "atomic_write",
    "clean_leftovers",
    "fsync_dir",
    "start_writeback",
    "unlink_quietly",
    "write_all",
    "write_file_synced",
]

_log = logging.getLogger(__name__)


def fsync_dir(directory: str) -> None:
    """Makes renames in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return  # platforms that cannot open directories have nothing to sync
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_synced(path: str, data: bytes) -> None:
    """Creates ``path`` (which must not exist) with ``data`` and fsyncs it; raises ``OSError``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _writeback_starter() -> Any:
    """Linux's ``sync_file_range`` (which the os module lacks), set to start writing back a
    range without waiting; None elsewhere, where the final fsync writes everything."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


SYNC_FILE_RANGE_WRITE = 2
start_writeback = _writeback_starter()


def write_all(fd: int, data: Any) -> None:
    """Writes all of ``data`` to ``fd``."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]



def unlink_quietly(path: str) -> None:
    """Deletes ``path`` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str, data: bytes) -> None:
    """Replaces ``path`` with ``data`` atomically and durably: written and fsync'd under a
    temporary name, renamed, the rename fsync'd. Raises ``OSError`` (``path`` unchanged)."""
    temp = temp_name(path)
    try:
        write_file_synced(temp, data)
        os.replace(temp, path)
    except BaseException:
        unlink_quietly(temp)
        raise
    fsync_dir(os.path.dirname(path))


def clean_leftovers(directory: str | os.PathLike[str],
                    owned: Callable[[str], bool] | None = None) -> list[Path]:
    """Deletes the files interrupted saves of varstore left in ``directory`` (names matching
    :data:`OWN_TEMP`, nothing else: no file TensorFlow or anyone else wrote), of those only
    the names ``owned`` accepts when given; returns them.

    Call it only while no save of this process (or of the owner ``owned`` names) into
    ``directory`` is running. A file that cannot be removed is logged and left.
    """
    directory = os.fspath(directory)
    try:
        entries = [e for e in os.scandir(directory or ".") if e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not OWN_TEMP.fullmatch(entry.name) or (owned is not None and not owned(entry.name)):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as e:
            _log.warning("cannot remove the leftover %s: %s", entry.path, e)
            continue
        removed.append(Path(entry.path))
    return sorted(removed)
