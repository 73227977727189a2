"""One checkpoint folder, one store: a server locks its checkpoint folder for as long as it runs.

Two servers writing one folder pick the same ``model.ckpt-N`` names and the same temporary
names: stopped together, one reported a checkpoint whose index was the other's, both lost their
changes and ``--restore latest`` refused the folder; and each one's start-up clean-up removes the
other's saves in progress. So a server takes, before it touches the folder:

- a single server: an exclusive lock on ``FOLDER/.varstore.lock``;
- shard I of a cluster (whose shards share the folder, as TensorFlow's ps tasks share theirs):
  a shared lock on ``.varstore.lock`` and an exclusive one on ``.varstore-shard-I.lock``.

So a second single server, a single server beside a cluster, or a second shard I is refused
at start with the holder's pid and host (each lock file holds its holder's, written after the
lock is taken). The locks are ``flock`` locks: the kernel releases them when the process ends,
however it ends, and Linux's NFS client forwards them to the server, so shards on several
hosts sharing a volume see each other's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from varstore.common.errors import FailedPreconditionError

log = logging.getLogger(__name__)

LOCK_NAME = ".varstore.lock"
# The bytes of a lock file read to name its holder.
_HOLDER_BYTES = 256


def shard_lock_name(task_index: int) -> str:
    """The lock file of shard ``task_index`` of a cluster."""
    return f".varstore-shard-{task_index}.lock"


class FolderLock:
    """The locks a server holds on its checkpoint folder; :meth:`release` gives them back."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        """Closes the lock files, which releases the locks (idempotent)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


def lock_folder(directory: Path, task_index: int | None = None) -> FolderLock | None:
    """Locks checkpoint folder ``directory`` (created if missing) for a single server, or for
    shard ``task_index`` of a cluster; None when the folder cannot be created or locked files
    cannot be opened there (logged: the server then runs without the check, and its first
    save reports the folder's problem).

    Raises ``FailedPreconditionError`` naming the holder when another server holds the folder.
    """
    shared = task_index is not None
    names = [LOCK_NAME] + ([shard_lock_name(task_index)] if task_index is not None else [])
    lock = FolderLock(fds := [])
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            fds.append(_open(directory / name))
    except OSError as e:
        lock.release()
        log.warning("cannot lock the checkpoint folder %s (%s): a second server using it "
                    "would not be noticed", directory, e.strerror or e)
        return None
    try:
        fcntl.flock(fds[0], (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        if shared:
            fcntl.flock(fds[1], fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_holder(fds[-1], task_index)
    except BlockingIOError:
        lock.release()  # before looking at who holds it: our own locks are no holder
        raise FailedPreconditionError(
            f"the checkpoint folder {directory} is in use by another varstore server "
            f"({_holders(directory)}); two servers writing one folder overwrite each "
            "other's checkpoints. Give this one its own --checkpoint-dir, or stop the "
            "other") from None
    except BaseException:
        lock.release()
        raise
    return lock


def _open(path: Path) -> int:
    # O_NOFOLLOW: a symbolic link planted as the lock file is not followed elsewhere.
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _write_holder(fd: int, task_index: int | None) -> None:
    what = "server" if task_index is None else f"shard {task_index}"
    text = (f"varstore {what}: pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _holders(directory: Path) -> str:
    """Who holds the folder, as its lock files say (bounded reads of at most 16 files)."""
    names = [LOCK_NAME] + sorted(n for n in os.listdir(directory)
                                 if n.startswith(".varstore-shard-") and n.endswith(".lock"))
    said = []
    for name in names[:16]:
        try:
            fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            text = os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        if text.startswith("varstore ") and _is_locked(directory / name):
            said.append(text.splitlines()[0])
    return "; ".join(said) or "its holder did not say who it is"


def _is_locked(path: Path) -> bool:
    """Whether some process holds a lock on ``path`` (a stale file is no holder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
