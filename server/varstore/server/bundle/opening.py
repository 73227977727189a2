"""Opening one checkpoint whole while saves may replace it: the index and every data file
it names are opened together, and opened again when a save's commit point passed meanwhile.

A save replacing checkpoint ``PREFIX`` (``CheckpointFolder.commit``) writes its files under a
temporary prefix, renames its first data file into place (the commit point), then the other
data files, then its index. A reader that read the old index and opened a data file after the
commit point would read the new data with the old index's checksums (attack4 10). Opened
here, the index read and the data files belong to one checkpoint: the old one when no commit
passed its commit point between the index's open and the check that follows the data files'
opens, else it is opened again (the new one, its files wherever they are now). The
descriptors then keep what was opened: ``os.replace`` over a name leaves an open file as it
was, so later commits change nothing a reader reads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from varstore.common.errors import AbortedError, NotFoundError, clip
from varstore.server.bundle.naming import data_path, index_path, pending_commit

__all__ = ["open_checkpoint"]

# Opens of a checkpoint that saves keep replacing meanwhile before the reader gives up.
OPEN_ATTEMPTS = 20


def open_checkpoint(prefix: str, load: Callable[[bytes], tuple[int, list[int]]]
                    ) -> tuple[dict[int, int], dict[int, int]]:
    """Reads checkpoint ``prefix``'s index, hands it to ``load`` (which parses it and returns
    its shard count and the data files its entries name) and opens those data files; returns
    their descriptors and sizes by shard (a missing data file is left out). ``load`` is
    called again for each new try.

    Raises ``NotFoundError`` without an index file, ``AbortedError`` when saves replaced the
    checkpoint during :data:`OPEN_ATTEMPTS` opens in a row, and what ``load`` raises.
    """
    for _ in range(OPEN_ATTEMPTS):
        opened = _open_once(prefix, load)
        if opened is not None:
            return opened
    raise AbortedError(f"checkpoint {clip(prefix)} was replaced {OPEN_ATTEMPTS} times while "
                       "it was being opened; open it again")


def _open_once(prefix: str, load: Callable[[bytes], tuple[int, list[int]]]
               ) -> tuple[dict[int, int], dict[int, int]] | None:
    """One try of :func:`open_checkpoint`: None (nothing left open) when a commit passed its
    commit point meanwhile."""
    # A save replacing prefix past its commit point: read the new one, its files wherever
    # they are now.
    pending = pending_commit(prefix)
    index_fd = -1
    try:
        if pending is not None:
            with contextlib.suppress(FileNotFoundError):  # moved into place meanwhile
                index_fd = _open_fd(index_path(pending))
        if index_fd < 0:
            index_fd = _open_fd(index_path(prefix))
    except FileNotFoundError:
        raise NotFoundError(f"checkpoint {clip(prefix)} not found: no file "
                            f"{clip(index_path(prefix))}") from None
    fds: dict[int, int] = {}
    sizes: dict[int, int] = {}
    try:
        with os.fdopen(os.dup(index_fd), "rb") as f:
            num_shards, shards = load(f.read())
        for shard in shards:
            places = [data_path(p, shard, num_shards) for p in (pending, prefix) if p]
            for path in places:
                with contextlib.suppress(FileNotFoundError):  # moved into place meanwhile
                    fds[shard] = _open_fd(path)
                    sizes[shard] = os.fstat(fds[shard]).st_size
                    break
        if _unchanged(prefix, pending, index_fd):
            return fds, sizes
    except BaseException:
        _close(fds)
        raise
    finally:
        os.close(index_fd)
    _close(fds)
    return None


def _unchanged(prefix: str, pending: str | None, index_fd: int) -> bool:
    """Whether checkpoint ``prefix`` is still the one read through ``index_fd`` after
    ``pending_commit`` said ``pending``: no commit passed its commit point since (the pending
    state is the same) and the index read is still the one in place (or, during a commit,
    the one moving into place). Held open, its inode is no other file's."""
    if pending_commit(prefix) != pending:
        return False
    read = os.fstat(index_fd)
    for path in (index_path(prefix), index_path(pending) if pending else None):
        if path is None:
            continue
        try:
            now = os.stat(path)
        except FileNotFoundError:
            continue
        if (now.st_dev, now.st_ino) == (read.st_dev, read.st_ino):
            return True
    return False


def _open_fd(path: str) -> int:
    """A read-only descriptor of ``path``. Raises ``OSError``."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))


def _close(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
