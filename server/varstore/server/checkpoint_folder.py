"""The server's checkpoint folder: confining client paths to it, and committing saves into it.

Clients name checkpoints by paths inside ``--checkpoint-dir``; :meth:`CheckpointFolder.resolve`
turns such a path into a real path and refuses anything that escapes the folder (absolute
paths elsewhere, ``..``, symlinks pointing out).

A save is written completely under a temporary prefix (``PREFIX.tempstate-commit``: its
index and its N data files, N = 1 for a server, one per shard for a cluster's merged save),
then moved into place by :meth:`CheckpointFolder.commit`: data files first, index last.
Renaming the first data file is the commit point: while all N data files are still under the
temporary prefix nothing is decided, and :meth:`CheckpointFolder.recover` deletes them; once
fewer remain, ``recover`` moves the rest and then the index into place. Either way every
checkpoint is whole after the next start, including when a save replaced an existing
checkpoint of the same name.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from varstore.common.errors import (
    AlreadyExistsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OpError,
    PermissionDeniedError,
    ResourceExhaustedError,
    clip,
)
from varstore.server.bundle import (
    COMMIT_MARK,
    DATA_FILE,
    STATE_FILENAME,
    TEMP_MARK,
    checkpoint_files,
    clean_leftovers,
    committed,
    data_path,
    index_path,
    is_state_file,
)
from varstore.server.bundle.fsio import fsync_dir
from varstore.server.bundle.table import FOOTER_SIZE, MAGIC

__all__ = ["CheckpointFolder", "check_state_filename", "os_error"]

log = logging.getLogger(__name__)


# TensorFlow's `checkpoint.tmp<hex>` and varstore's temp names, and checkpoint files, are no
# state file names: writing one would replace a file the saver does not own.
_NOT_STATE_FILE = re.compile(
    r"(.*\.index|checkpoint\.tmp[0-9a-f]*|\.|\.\.)")

_ERRNO_ERRORS: dict[int, type[OpError]] = {
    errno.ENOSPC: ResourceExhaustedError,
    errno.EDQUOT: ResourceExhaustedError,
    errno.EACCES: PermissionDeniedError,
    errno.EPERM: PermissionDeniedError,
    errno.EROFS: PermissionDeniedError,
    errno.ENOENT: NotFoundError,
    errno.ENAMETOOLONG: InvalidArgumentError,
    errno.EISDIR: InvalidArgumentError,
    errno.ENOTDIR: InvalidArgumentError,
    errno.EEXIST: AlreadyExistsError,
}


def os_error(error: OSError, action: str) -> OpError:
    """The varstore error for a failed file operation, as TensorFlow classifies them
    (a full disk is ``ResourceExhaustedError``, a denied write ``PermissionDeniedError``...)."""
    where = f" ({clip(error.filename)})" if error.filename else ""
    cls = _ERRNO_ERRORS.get(error.errno or 0, InternalError)
    return cls(f"{action}: {error.strerror or error}{where}")


def check_state_filename(name: str) -> str:
    """The state file name a client asked for (TensorFlow's ``latest_filename``; empty:
    ``checkpoint``). Raises ``InvalidArgumentError`` for a name with a path component, a NUL
    byte, the name of a checkpoint or temporary file, or over 255 bytes."""
    if not name:
        return STATE_FILENAME
    problem = ""
    if "/" in name or "\x00" in name:
        problem = "must not contain path components"
    elif len(name.encode("utf-8", "surrogatepass")) > 255:
        problem = "is longer than 255 bytes"
    elif TEMP_MARK in name or _NOT_STATE_FILE.fullmatch(name) or DATA_FILE.fullmatch(name):
        problem = "names a checkpoint or temporary file"
    if problem:
        raise InvalidArgumentError(f"latest_filename {clip(repr(name))} {problem}")
    return name


class CheckpointFolder:
    """One checkpoint folder (created when the server starts, or on first save) and the paths
    clients may use in it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def root(self) -> str:
        """The folder's real absolute path."""
        return os.path.realpath(self.directory)

    def resolve(self, path: str, *, folder: bool = False) -> str:
        """The real absolute path of ``path`` (relative to the folder, or absolute inside it).

        With ``folder``, the checkpoint folder itself is allowed (for folder arguments);
        otherwise ``path`` must name something strictly inside it (a checkpoint prefix).
        Raises ``PermissionDeniedError`` for a path that escapes the folder,
        ``InvalidArgumentError`` for an empty prefix or a NUL byte.
        """
        if "\x00" in path:
            raise InvalidArgumentError(f"checkpoint path {clip(repr(path))} contains a NUL byte")
        if not folder and not path:
            raise InvalidArgumentError("a checkpoint prefix must not be empty")
        root = self.root
        full = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root or (full == root and not folder):
            raise PermissionDeniedError(
                f"checkpoint path {clip(repr(path))} is outside the server's checkpoint folder "
                f"{self.directory}")
        return full

    def check_files(self, prefix: str, named: str) -> None:
        """Raises ``PermissionDeniedError`` if a file of checkpoint ``prefix`` is a symlink
        to somewhere outside the folder (``named`` is the prefix as the client gave it)."""
        root = self.root
        for path in checkpoint_files(prefix):
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) != root:
                raise PermissionDeniedError(
                    f"checkpoint {clip(repr(named))}: {clip(path.name)} points outside the "
                    f"server's checkpoint folder {self.directory}")

    def client_path(self, path: str, base: str, base_name: str) -> str:
        """``path`` as a client names it: relative to ``base``, which it called ``base_name``.

        Raises ``PermissionDeniedError`` if ``path`` lies outside the folder."""
        real = os.path.realpath(path)
        root = self.root
        if os.path.commonpath([root, real]) != root:
            raise PermissionDeniedError(
                f"checkpoint {clip(path)} recorded in {clip(base_name or '.')}/checkpoint is "
                f"outside the server's checkpoint folder {self.directory}")
        return os.path.join(base_name, os.path.relpath(path, base))

    @staticmethod
    def temp_prefix(prefix: str) -> str:
        """Where a save into ``prefix`` is written before :meth:`commit` moves it."""
        return prefix + COMMIT_MARK

    def prepare(self, prefix: str, state_file: str | None, num_shards: int = 1) -> list[str]:
        """Checks, before a save into ``prefix`` (of ``num_shards`` data files) writes
        anything, that nothing but files stand where its files and its folder's state file
        ``state_file`` (None: not written) go, then creates the missing folders; returns
        those it created, outermost first.

        Raises ``InvalidArgumentError`` naming what is in the way, ``OSError`` if a folder
        cannot be made.
        """
        directory = os.path.dirname(prefix)
        targets = [index_path(prefix),
                   *(data_path(prefix, k, num_shards) for k in range(num_shards))]
        if state_file is not None:
            targets.append(os.path.join(directory, state_file))
        for target in targets:
            if os.path.lexists(target) and not os.path.isfile(target):
                raise InvalidArgumentError(
                    f"cannot write checkpoint {clip(self.client_name(prefix))}: "
                    f"{clip(os.path.basename(target))} is a directory or no regular file")
        self._check_replaceable(prefix, state_file)
        created: list[str] = []
        missing = directory
        while missing and not os.path.lexists(missing):
            created.insert(0, missing)
            missing = os.path.dirname(missing)
        for folder in created:
            os.mkdir(folder)
        return created

    def _check_replaceable(self, prefix: str, state_file: str | None) -> None:
        """Raises ``AlreadyExistsError`` when a save into ``prefix`` would replace a file that
        is no checkpoint's or state file's (a TensorBoard log, a ``.meta`` graph named as a
        state file or a checkpoint's file): the server replaces only files of its kind."""
        if not os.path.isdir(os.path.dirname(prefix)):
            return  # nothing to replace (a file in the folder's place: refused later)
        index = index_path(prefix)
        checkpoint = _is_table(index)
        foreign = [p.name for p in checkpoint_files(prefix) if not checkpoint]
        if state_file is not None:
            path = os.path.join(os.path.dirname(prefix), state_file)
            if os.path.lexists(path) and not is_state_file(path):
                foreign.append(state_file)
        if foreign:
            raise AlreadyExistsError(
                f"cannot write checkpoint {clip(self.client_name(prefix))}: "
                f"{clip(foreign[0])} exists and is no checkpoint file or checkpoint state "
                "file, which the server never replaces (choose another name, or move it)")

    def discard(self, prefix: str, created: list[str], num_shards: int = 1) -> None:
        """Undoes a failed save into ``prefix`` (of ``num_shards`` data files): before its
        commit point, deletes its temporary files; then the folders :meth:`prepare` made, if
        empty. Never raises."""
        temp = self.temp_prefix(prefix)
        try:  # once committed, recover() finishes it
            leftovers = [] if committed(temp, num_shards) else checkpoint_files(temp)
        except OSError:  # no folder to list (a file stands where it would be)
            leftovers = []
        for path in leftovers:
            try:
                os.unlink(path)
            except OSError:
                pass
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                break

    def client_name(self, path: str) -> str:
        """``path`` relative to the folder, as clients name it."""
        return os.path.relpath(path, self.root)

    @staticmethod
    def commit(prefix: str, num_shards: int = 1) -> list[str]:
        """Moves the complete checkpoint of ``num_shards`` data files at
        ``temp_prefix(prefix)`` to ``prefix``, replacing any checkpoint of that name (its
        data files of other shard counts included); returns its files (data files, index).

        Raises ``OSError``: before the commit point (the first data file's rename) the old
        checkpoint is untouched; after it, ``InternalError`` says the rest is left under its
        temporary name, which :meth:`recover` moves into place at the next start.
        """
        temp = CheckpointFolder.temp_prefix(prefix)
        files = [*(data_path(prefix, k, num_shards) for k in range(num_shards)),
                 index_path(prefix)]
        test_pause("commit")
        os.replace(data_path(temp, 0, num_shards), files[0])  # the commit point
        try:
            _finish(temp, prefix)
        except OSError as e:
            raise InternalError(
                f"checkpoint {clip(os.path.basename(prefix))}: committed, but its files could "
                f"not all be moved into place ({e.strerror or e}); the rest stays under "
                f"{clip(os.path.basename(temp))}, which the server moves into place when it "
                "next starts") from None
        _remove_stale_shards(prefix, num_shards)
        return files

    def recover(self, owned: Callable[[str], bool] | None = None) -> list[str]:
        """Finishes committed saves a crash interrupted and deletes the temporary files of
        varstore's unfinished saves (nothing else), in the folder and its subfolders; of
        those only the file names ``owned`` accepts when given (a shard of a cluster leaves
        the other shards' saves alone); returns the affected paths.

        Call it only while no save of this server is running (at start-up). Never raises:
        what cannot be finished or removed is logged and left, so the server always starts.
        """
        touched: list[str] = []
        for directory, _, names in os.walk(self.directory):
            for name in names:
                if not name.endswith(f"{COMMIT_MARK}.index") or (
                        owned is not None and not owned(name)):
                    continue
                temp = os.path.join(directory, name[:-len(".index")])
                if not committed(temp):
                    continue  # no data file was moved: not committed, a leftover
                prefix = temp[:-len(COMMIT_MARK)]
                try:
                    _finish(temp, prefix)
                except OSError as e:
                    log.warning("cannot finish the interrupted save of checkpoint %s: %s",
                                prefix, e)
                    continue
                log.warning("finished the interrupted save of checkpoint %s", prefix)
                touched.append(prefix)
            touched += [str(p) for p in clean_leftovers(directory, owned)]
        for path in touched:
            log.info("recovered checkpoint folder: %s", path)
        return touched


def _is_table(path: str) -> bool:
    """Whether ``path`` is a file ending as a checkpoint index (a table's footer magic)."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) < FOOTER_SIZE:
                return False
            f.seek(-8, os.SEEK_END)
            return f.read(8) == MAGIC.to_bytes(8, "little")
    except OSError:
        return False


def _finish(temp: str, prefix: str) -> None:
    """Moves the data files left under ``temp`` to ``prefix``, then its index (after a
    commit point). Raises ``OSError``."""
    directory = os.path.dirname(prefix)
    for path in checkpoint_files(temp):
        match = DATA_FILE.fullmatch(path.name)
        if match:
            test_pause("data")
            os.replace(path, data_path(prefix, int(match["shard"]), int(match["count"])))
    fsync_dir(directory)
    test_pause("index")
    os.replace(index_path(temp), index_path(prefix))
    fsync_dir(directory)


def test_pause(step: str) -> None:
    """For crash tests only: with ``VARSTORE_TEST_PAUSE_DIR`` set, creates ``STEP-N`` (N
    counting this process's calls for ``step``) in that folder and waits until the file is
    removed (or the test kills the server there). Without it, as always outside tests, does
    nothing."""
    folder = os.environ.get("VARSTORE_TEST_PAUSE_DIR")
    if not folder:
        return
    _PAUSES[step] = _PAUSES.get(step, 0) + 1
    marker = os.path.join(folder, f"{step}-{_PAUSES[step]}")
    with open(marker, "w"):
        pass
    while os.path.exists(marker):
        time.sleep(0.01)


_PAUSES: dict[str, int] = {}


def _remove_stale_shards(prefix: str, num_shards: int) -> list[str]:
    """Deletes data files of ``prefix`` that belong to another shard count than its index's
    (left when a save replaced a sharded checkpoint); returns them."""
    removed = []
    for path in checkpoint_files(prefix):
        match = DATA_FILE.fullmatch(path.name)
        if match and int(match["count"]) != num_shards:
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return removed
