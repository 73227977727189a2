"""Saving and restoring the store as TensorFlow V2 checkpoints inside the checkpoint folder.

Saves and restores run one at a time per server. A save copies each variable under that
variable's own lock (so no value is torn and updates of other variables go on), then streams
the copy to disk, so a save needs extra memory of about one variable. Files appear only when
complete (see :mod:`varstore.server.checkpoint_folder`), the ``checkpoint`` state file last.

Which checkpoints a save deletes is :mod:`varstore.server.retention`'s rule; the save timer
is :mod:`varstore.server.checkpoint_timer`; the servicer turns requests into the plain values
taken here and :class:`~varstore.server.checkpoint_progress.Progress` into messages.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OpError,
    clip,
)
from varstore.server.bundle import (
    TEMP_MARK,
    BundleReader,
    BundleWriter,
    index_path,
    latest_checkpoint,
    merge_shards,
)
from varstore.server.bundle import write_state as write_state_file
from varstore.server.bundle.naming import data_path
from varstore.server.checkpoint_folder import (
    CheckpointFolder,
    check_state_filename,
    os_error,
)
from varstore.server.checkpoint_progress import PIECE_BYTES, ProgressSink, Saved, Tally
from varstore.server.checkpoint_restore import (
    OBJECT_GRAPH_KEY,
    PART_NAMES_KEY,
    Restoring,
    part_names_tensor,
)
from varstore.server.cluster import is_snapshot, refuse_snapshot
from varstore.server.durability import (
    CHANGED,
    Durability,
    Versions,
    changed_names,
    versions_of,
)
from varstore.server.retention import (
    Retention,
    SaverSettings,
    Written,
    check_retention,
    file_identity,
)
from varstore.server.slices import Entry, SaveSlice, check_save
from varstore.server.store import Variable, VariableStore, value_nbytes

__all__ = ["LATEST", "OBJECT_GRAPH_KEY", "CheckpointManager", "CheckpointMetrics"]

log = logging.getLogger(__name__)

LATEST = "latest"


class CheckpointMetrics(Protocol):
    """Where finished saves and restores are reported (the server's metrics)."""

    def observe_checkpoint(self, kind: str, seconds: float, nbytes: int) -> None:
        """Records one finished checkpoint operation ("save" or "restore")."""


class CheckpointManager:
    """Saves and restores the store's variables inside one checkpoint folder.

    ``metrics``, when given, hears of every finished save and restore. The save timer is
    :class:`varstore.server.checkpoint_timer.SaveTimer`.
    """

    def __init__(self, store: VariableStore, directory: str | os.PathLike[str], *,
                 metrics: CheckpointMetrics | None = None) -> None:
        self.store = store
        self.folder = CheckpointFolder(directory)
        self.metrics = metrics
        # The last checkpoint written, as its client named it, and when (unix time).
        self.last_saved: tuple[str, float] | None = None
        self.retention = Retention()
        self._lock = threading.Lock()
        # What recent checkpoints held (varstore.server.durability), and the data files
        # holding this server's variables of the checkpoint `--restore latest` would restore
        # now (a shard of a cluster sets its own: varstore.server.cluster_service).
        self.durability = Durability()
        self.recovery_files: Callable[[], list[str]] = self._latest_files

    @property
    def directory(self) -> Path:
        """The checkpoint folder as configured."""
        return self.folder.directory

    # --- saving ---------------------------------------------------------------------------

    def save(self, prefix: str, entries: Sequence[Entry] | None = None,
             global_step: int | None = None, max_to_keep: int = 0,
             progress: ProgressSink | None = None, *, saver: Hashable | None = None,
             latest_filename: str = "", write_state: bool = True,
             keep_every_hours: float = 0.0, internal: bool = False,
             snapshot: bool = False) -> Saved:
        """Writes checkpoint ``prefix`` (``prefix-STEP`` with ``global_step``), records it in
        the state file ``latest_filename`` (default ``checkpoint``) of its folder, and deletes
        what TensorFlow's ``Saver`` would: the oldest of the checkpoints ``saver`` itself wrote
        beyond its newest ``max_to_keep`` (see :mod:`varstore.server.retention`; None: a saver
        for this save alone). ``write_state=False`` updates no state file and deletes nothing.

        ``entries`` name the variables and the keys they are saved under (parts of a
        partitioned variable as slices of one key, see :mod:`varstore.server.slices`); None
        saves every variable under its own name, parts as slices of their full name's tensor.
        ``internal`` (the server's own exit, timer and snapshot saves): an empty store is
        written as an empty checkpoint (a store emptied by deletions must be saved too), and a
        shard's snapshot name is allowed; ``snapshot`` (a shard's own): its parts of
        partitioned variables need not cover them and keep their names (``PART_NAMES_KEY``).

        Nothing is written when it fails before the checkpoint's files are in place; when the
        state file cannot be updated after that, the error says that the checkpoint was
        written and the state file still names the previous one. Raises
        ``PermissionDeniedError`` for a path outside the folder, ``NotFoundError`` for a
        missing variable, ``FailedPreconditionError`` for an uninitialized one or an empty
        store, ``InvalidArgumentError`` for a bad prefix (a shard's snapshot name included),
        key, state file name or retention setting, and the file errors of :func:`os_error`.
        """
        settings = SaverSettings(saver, max_to_keep, latest_filename, write_state,
                                 keep_every_hours)
        named, path = self._target(prefix, global_step, settings, internal)
        with self._lock:
            started = time.monotonic()
            plan = self._save_plan(entries, whole=not snapshot, empty=internal)
            versions = versions_of(plan)  # before the copies: a later update is unsaved
            tally = Tally(progress, len(plan), sum(var.nbytes for _, var, _ in plan))
            state_file = check_state_filename(latest_filename) if write_state else None
            created: list[str] = []
            try:
                created = self.folder.prepare(path, state_file)
                with BundleWriter(self.folder.temp_prefix(path)) as writer:
                    for key, var, part in plan:
                        _write_variable(writer, key, var, part, tally)
                    if snapshot:
                        writer.add(PART_NAMES_KEY, part_names_tensor(plan), dtypes.string)
                files = self.folder.commit(path)
            except OSError as e:
                self.folder.discard(path, created)
                raise os_error(e, f"cannot write checkpoint {clip(named)}") from None
            except BaseException:
                self.folder.discard(path, created)
                raise
            self.durability.record(files[0], versions)
            log.info("saved checkpoint %s (%d tensors, %d bytes)", named, len(plan),
                     tally.progress.bytes_done)
            self._observe("save", started, tally.progress.bytes_done)
            return self._record(named, path, files, settings)

    def _target(self, prefix: str, global_step: int | None, settings: SaverSettings,
                internal: bool = False) -> tuple[str, str]:
        """The checkpoint's name (``prefix-STEP`` with a step) and real path, after checking
        the name (a shard's snapshot name only ``internal``) and ``settings``; raises
        ``InvalidArgumentError``/``PermissionDeniedError``."""
        check_retention(settings.max_to_keep, settings.keep_every_hours)
        check_state_filename(settings.latest_filename)
        named = prefix if global_step is None else f"{prefix}-{global_step}"
        if TEMP_MARK in named:
            raise InvalidArgumentError(
                f"checkpoint prefix {clip(repr(named))} contains {TEMP_MARK!r}, which marks "
                "unfinished files")
        if not internal:
            refuse_snapshot(named)
        return named, self.folder.resolve(named)

    def _record(self, named: str, path: str, files: list[str],
                settings: SaverSettings) -> Saved:
        """After checkpoint ``named`` (real prefix ``path``, ``files``) is in place: updates the
        state file and deletes what its saver no longer keeps (hold ``_lock``)."""
        written = Written(named, path, time.time(), file_identity(files))
        self.last_saved = (named, written.time)
        if not settings.write_state:
            return Saved(named, [])
        last, doomed = self.retention.record(settings.saver, written, settings.max_to_keep,
                                             settings.keep_every_hours)
        listed = last or [written]
        state_name = check_state_filename(settings.latest_filename)
        try:
            write_state_file(os.path.dirname(path), path, [w.prefix for w in listed],
                             state_name, [w.time for w in listed])
        except OSError as e:
            raise os_error(e, f"checkpoint {clip(named)} was written, but the state file "
                              f"{clip(state_name)} could not be updated, so it still names "
                              "the previous checkpoint") from None
        for old in doomed:
            self._delete_written(old, f"the oldest of the {settings.max_to_keep} newest "
                                      f"checkpoints its saver keeps, after {named}")
        return Saved(named, [w.named for w in last])

    def _delete_written(self, old: Written, why: str) -> None:
        """Deletes the files of checkpoint ``old`` that are still the ones this server wrote
        (index first) and lie inside the folder; logs what it deleted and why. Failures are
        logged, as TensorFlow's ``Saver`` ignores them."""
        root = self.folder.root
        deleted, skipped = [], []
        for file, identity in sorted(old.files.items(),
                                     key=lambda item: not item[0].endswith(".index")):
            inside = os.path.commonpath([root, os.path.realpath(file)]) == root
            if not inside or file_identity([file]).get(file) != identity:
                skipped.append(os.path.basename(file))
                continue
            try:
                os.unlink(file)
            except OSError as e:
                log.warning("cannot delete %s of checkpoint %s: %s", file, old.named, e)
                continue
            deleted.append(os.path.basename(file))
        if deleted:
            log.info("deleted checkpoint %s (%s): %s", old.named, why, ", ".join(deleted))
        if skipped:
            log.info("kept %s of checkpoint %s: replaced or moved since this server wrote it",
                     ", ".join(skipped), old.named)

    def save_part(self, part: str, entries: Sequence[Entry]) -> int:
        """Writes ``entries`` as one uncommitted part of a cluster's sharded save (see
        :mod:`varstore.server.cluster_service`); returns the bytes written. What the part
        holds counts as saved only once shard 0's commit made it the data file
        ``--restore latest`` reads (:meth:`unsaved`). Raises as :meth:`save`."""
        path = self.folder.resolve(part)
        with self._lock:
            # A shard without variables writes an empty part: data file I is always shard I's.
            plan = self._save_plan(entries, whole=False, empty=True)
            versions = versions_of(plan)
            tally = Tally(None, len(plan), sum(var.nbytes for _, var, _ in plan))
            try:
                with BundleWriter(path) as writer:
                    for key, var, slice_ in plan:
                        _write_variable(writer, key, var, slice_, tally)
            except OSError as e:
                raise os_error(e, f"cannot write checkpoint part {clip(part)}") from None
            self.durability.record(data_path(path, 0, 1), versions)
        return tally.progress.bytes_done

    def commit_parts(self, parts: list[str], prefix: str, global_step: int | None,
                     max_to_keep: int, *, saver: Hashable | None = None,
                     latest_filename: str = "", write_state: bool = True,
                     keep_every_hours: float = 0.0) -> Saved:
        """Merges the parts every shard wrote into checkpoint ``prefix`` (``prefix-STEP``)
        as TensorFlow's ``MergeV2Checkpoints`` does, under the temporary prefix, then commits
        it as :meth:`save` commits (:meth:`CheckpointFolder.commit`: a crash at any moment
        leaves the previous checkpoint of that name or the whole new one), records it and
        applies its saver's retention as :meth:`save` does; returns its path as the client
        named it and the saver's checkpoints.

        Raises ``InvalidArgumentError`` for a bad prefix or parts that do not merge, and the
        errors of :meth:`save`.
        """
        settings = SaverSettings(saver, max_to_keep, latest_filename, write_state,
                                 keep_every_hours)
        named, path = self._target(prefix, global_step, settings)
        paths = [self.folder.resolve(part) for part in parts]
        state_file = check_state_filename(latest_filename) if write_state else None
        with self._lock:
            created: list[str] = []
            count = len(paths)
            try:
                created = self.folder.prepare(path, state_file, count)
                # Merged under the temporary prefix, then committed as a server's save is.
                count = merge_shards(paths, self.folder.temp_prefix(path))
                files = self.folder.commit(path, count)
            except ValueError as e:
                self.folder.discard(path, created, count)
                raise InvalidArgumentError(f"cannot merge checkpoint {clip(named)}: {e}") \
                    from None
            except OSError as e:
                self.folder.discard(path, created, count)
                raise os_error(e, f"cannot write checkpoint {clip(named)}") from None
            except BaseException:
                self.folder.discard(path, created, count)
                raise
            return self._record(named, path, files, settings)

    def _save_plan(self, entries: Sequence[Entry] | None, whole: bool = True,
                   empty: bool = False) -> list[tuple[str, Variable, SaveSlice | None]]:
        """``(key, variable, slice)`` to write, in TensorFlow's key order; ``whole``: the
        slices of each key must cover it (see :func:`varstore.server.slices.check_save`);
        ``empty``: nothing to write is no error (else TensorFlow's "No variables to save")."""
        plan: list[tuple[str, Variable, SaveSlice | None]]
        if entries is None:
            plan = [(var.save_slice.full_name if var.save_slice else var.name, var,
                     var.save_slice) for var in self.store.variables()]
        else:
            for entry in entries:
                if not entry.key or entry.key.startswith("\x00"):
                    raise InvalidArgumentError(f"invalid checkpoint key {clip(repr(entry.key))}")
            plan = [(e.key, self.store.get(e.variable), e.slice) for e in entries]
        if not plan and not empty:
            raise FailedPreconditionError("No variables to save")
        uninitialized = [var.name for _, var, _ in plan if not var.initialized]
        if uninitialized:
            more = f" (and {len(uninitialized) - 1} more)" if len(uninitialized) > 1 else ""
            raise FailedPreconditionError(
                f"Attempting to use uninitialized value {uninitialized[0]}{more}")
        check_save([(key, var.name, var.shape, part) for key, var, part in plan], whole)
        # TensorFlow stores tensors in key order; so do we, for byte-identical files.
        return sorted(plan, key=lambda item: (item[0], item[2].offset if item[2] else ()))

    # --- restoring ------------------------------------------------------------------------

    def restore(self, prefix: str, entries: Sequence[Entry] | None = None,
                progress: ProgressSink | None = None, verify_only: bool = False, *,
                as_saved: int | None = None) -> str:
        """Restores variables from checkpoint ``prefix`` (or ``"latest"``).

        ``entries`` name keys and variables (with a slice: the variable is that region of the
        stored tensor, whether stored whole or in slices, as TensorFlow's ``Saver.restore``
        reads partitioned variables); None restores every key into the variable of the same
        name or the server's parts of it (see :meth:`Restoring.everything`). Missing variables
        are created with the checkpoint's dtype, shape and value (parts with their slice
        info). Returns the checkpoint's path as the client named it (for "latest":
        relative to the folder). Changes nothing when it fails. Raises
        ``PermissionDeniedError`` for a path outside the folder, ``NotFoundError`` for a
        missing checkpoint or key, ``DataLossError`` for a corrupt one (naming the tensor and
        file), ``InvalidArgumentError`` for a dtype or shape that differs from an existing
        variable's or a key that is no valid variable name, ``ResourceExhaustedError`` past
        the store's memory limit. With ``verify_only`` it checks all of that, every checksum
        included, and changes nothing. ``as_saved`` (a restore at start-up, into an empty
        store) is the index of the data file holding this server's variables: the store as
        restored is what that checkpoint holds (:meth:`unsaved`); only such restores may read
        a shard's snapshot (``InvalidArgumentError``: it is no checkpoint of the cluster).
        """
        with self._lock:
            started = time.monotonic()
            named = self._resolve_latest() if prefix == LATEST else prefix
            if as_saved is None:
                refuse_snapshot(named)
            path = self.folder.resolve(named)
            self.folder.check_files(path, named)
            try:
                with BundleReader(path, partial=is_snapshot(named)) as reader:
                    restoring = Restoring(self.store, reader, named)
                    plan = restoring.plan(entries)
                    tally = Tally(progress, len(plan), sum(item.size for item in plan))
                    if verify_only:
                        for item in plan:
                            reader.verify(item.key)
                            tally.advance(item.size, 1)
                        return named
                    restoring.run(plan, tally)
                    if as_saved is not None:
                        self.durability.record(
                            data_path(path, as_saved, reader.num_shards), self._versions())
            except OSError as e:
                raise os_error(e, f"cannot read checkpoint {clip(named)}") from None
            self._observe("restore", started, tally.progress.bytes_done)
            log.info("restored checkpoint %s (%d tensors)", named, len(plan))
        return named

    def _resolve_latest(self) -> str:
        named = self.latest()
        if named is None:
            raise NotFoundError(f"no checkpoint is recorded in the checkpoint folder "
                                f"{self.directory}")
        return named

    # --- the folder -----------------------------------------------------------------------

    def latest(self, directory: str = "", latest_filename: str = "") -> str | None:
        """The newest checkpoint recorded in ``directory``'s state file ``latest_filename``
        (default ``checkpoint``; ``directory`` is a folder inside the checkpoint folder, empty
        for the folder itself), named as the client names it, or None.

        Raises ``PermissionDeniedError`` for a folder outside the checkpoint folder,
        ``InvalidArgumentError`` for a bad state file name.
        """
        base = self.folder.resolve(directory, folder=True)
        state_name = check_state_filename(latest_filename)
        try:
            found = latest_checkpoint(base, state_name)
        except OSError as e:
            raise os_error(e, f"cannot read the checkpoint state of {directory or '.'}") \
                from None
        return None if found is None else self.folder.client_path(found, base, directory)

    def recover(self, restore: str | None = None,
                owned: Callable[[str], bool] | None = None) -> str | None:
        """Start-up: cleans up after interrupted saves (of those, the temporary files
        ``owned`` accepts when given), then restores ``restore`` (a prefix or ``"latest"``;
        "latest" with no checkpoint yet starts empty). Returns what it restored.

        Raises what :meth:`restore` raises, with the failed setting in the message.
        """
        try:
            self.folder.recover(owned)
        except OSError as e:
            raise os_error(e, f"cannot clean up the checkpoint folder {self.directory}") \
                from None
        try:
            newest = self.latest()
            if newest is not None:  # until this server saves, status shows the folder's newest
                written = os.path.getmtime(index_path(self.folder.resolve(newest)))
                self.last_saved = (newest, written)
        except (OpError, OSError) as e:
            log.warning("cannot tell the newest checkpoint in %s: %s", self.directory, e)
        if not restore:
            return None
        try:
            if restore == LATEST and self.latest() is None:
                log.warning("--restore latest: no checkpoint in %s yet; starting empty",
                            self.directory)
                return None
            return self.restore(restore, as_saved=0)
        except OpError as e:
            raise type(e)(f"cannot restore {clip(repr(restore))}: {e.message}") from e

    def _versions(self) -> Versions:
        return {var.name: (var.serial, var.version) for var in self.store.variables()}

    def _latest_files(self) -> list[str]:
        """The first data file of the checkpoint the root state file names latest (what
        ``--restore latest`` restores on one server), of any data file count."""
        named = self.latest()
        if named is None:
            return []
        path = self.folder.resolve(named)
        return sorted(glob.glob(glob.escape(path) + ".data-00000-of-*"))

    def unsaved(self) -> list[str]:
        """Names of the variables created, changed or gone since the checkpoint that
        ``--restore latest`` would restore now was committed or restored (see
        :mod:`varstore.server.durability`; without a record of it: since the server started
        empty), sorted; waits for the save or restore in progress. A folder that cannot be
        read counts every variable as unsaved."""
        with self._lock:
            now = self._versions()
            try:
                saved = self.durability.held(self.recovery_files())
            except (OpError, OSError) as e:
                log.warning("cannot tell what --restore latest would restore: %s", e)
                saved = {name: CHANGED for name in now}
        return changed_names(now, saved or {})

    def _observe(self, kind: str, started: float, nbytes: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_checkpoint(kind, time.monotonic() - started, nbytes)


def _write_variable(writer: BundleWriter, key: str, var: Variable, part: SaveSlice | None,
                    tally: Tally) -> None:
    """Copies ``var`` under its lock, then writes the copy piece by piece, dropping each
    piece once written; a ``part`` of a partitioned variable is written whole, as that slice
    of tensor ``key``."""
    if part is not None:
        with var.lock:
            snapshot = var.read().copy()
        writer.add_slice(key, part.full_shape, part.offset, snapshot, var.dtype)
        tally.advance(value_nbytes(var.dtype, var.shape, snapshot), 1)
        return
    with var.lock:
        value = var.read()
        if var.dtype.is_string:
            snapshot = value.copy()  # the elements are immutable bytes
        else:
            flat = value.reshape(-1)
            step = max(1, PIECE_BYTES // var.dtype.itemsize)
            pieces = deque(flat[i:i + step].copy() for i in range(0, flat.size, step))
    if var.dtype.is_string:
        writer.add(key, snapshot, var.dtype)
        tally.advance(value_nbytes(var.dtype, var.shape, snapshot), 1)
        return

    def drain() -> Iterator[np.ndarray]:
        while pieces:
            piece = pieces.popleft()
            yield piece
            tally.advance(piece.nbytes)

    writer.add_chunks(key, var.dtype, var.shape, drain())
    tally.advance(0, 1)
