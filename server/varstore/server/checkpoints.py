"""Saving and restoring the store as TensorFlow V2 checkpoints inside the checkpoint folder.

Saves and restores run one at a time per server. A save copies each variable under that
variable's own lock (so no value is torn and updates of other variables go on), then streams
the copy to disk, so a save needs extra memory of about one variable. Files appear only when
complete (see :mod:`varstore.server.checkpoint_folder`), the ``checkpoint`` state file last.

Besides client requests, a timer can save ``model.ckpt-STEP`` every ``save_every`` seconds,
and stopping the server then writes a final checkpoint. ``STEP`` is the value of the store's
scalar integer variable ``global_step`` when it has one (TensorFlow's convention); otherwise
it is a counter that continues after the newest ``model.ckpt-N`` listed in the folder's
state file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from varstore.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OpError,
    ResourceExhaustedError,
    clip,
)
from varstore.proto import varstore_pb2 as pb
from varstore.server.budget import MemoryBudget, array_bytes
from varstore.server.bundle import (
    TEMP_MARK,
    BundleReader,
    BundleWriter,
    TensorInfo,
    data_path,
    index_path,
    latest_checkpoint,
    merge_shards,
)
from varstore.server.bundle import write_state as write_state_file
from varstore.server.checkpoint_folder import (
    CheckpointFolder,
    check_state_filename,
    os_error,
)
from varstore.server.retention import (
    Retention,
    SaverSettings,
    Written,
    check_retention,
    client_saver,
    file_identity,
)
from varstore.server.store import Variable, VariableStore, validate_name, value_nbytes

__all__ = ["CheckpointManager", "CheckpointMetrics", "Progress", "Saved"]

log = logging.getLogger(__name__)

# Large variables are copied and written in pieces of this size, with progress per piece.
PIECE_BYTES = 64 << 20
# Restores read and verify tensors on this many threads: reads and checksums of different
# tensors overlap (the reads release the GIL), 1.3-1.6x faster on two cores.
RESTORE_THREADS = min(4, os.cpu_count() or 1)
# Progress counted in tensors goes out at most about this many times per checkpoint.
PROGRESS_STEPS = 100
TIMER_PREFIX = "model.ckpt"
GLOBAL_STEP = "global_step"
LATEST = "latest"
# TF2 object-based checkpoints describe their object graph under this key; it is no variable.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# The timer's saver; clients' savers are ("client", name), so no client can take its place.
TIMER_SAVER = ("timer",)


class CheckpointMetrics(Protocol):
    """Where finished saves and restores are reported (the server's metrics)."""

    def observe_checkpoint(self, kind: str, seconds: float, nbytes: int) -> None:
        """Records one finished checkpoint operation ("save" or "restore")."""


@dataclass
class Progress:
    """How far a save or restore is: tensor bytes and tensors, done and in all."""

    bytes_done: int = 0
    bytes_total: int = 0
    tensors_done: int = 0
    tensors_total: int = 0


ProgressSink = Callable[[Progress], None]


@dataclass
class Saved:
    """A finished save: the checkpoint's path as the client named it, and its saver's own
    checkpoints still on disk, oldest first (TensorFlow's ``Saver.last_checkpoints``)."""

    path: str
    last_checkpoints: list[str]


class CheckpointManager:
    """Saves and restores the store's variables inside one checkpoint folder.

    ``save_every`` > 0 enables the save timer (:meth:`start`) and a final checkpoint on
    :meth:`stop`; the timer is a saver of its own that keeps the newest ``keep`` of the
    checkpoints it wrote (0: all) and deletes nothing else. ``metrics``, when given, hears of
    every finished save and restore.
    """

    def __init__(self, store: VariableStore, directory: str | os.PathLike[str], *,
                 metrics: CheckpointMetrics | None = None, save_every: float = 0.0,
                 keep: int = 5) -> None:
        self.store = store
        self.folder = CheckpointFolder(directory)
        self.metrics = metrics
        self.save_every = save_every
        self.keep = keep
        # The last checkpoint written, as its client named it, and when (unix time).
        self.last_saved: tuple[str, float] | None = None
        self.retention = Retention()
        self._lock = threading.Lock()
        self._counter: int | None = None
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None

    @property
    def directory(self) -> Path:
        """The checkpoint folder as configured."""
        return self.folder.directory

    # --- saving ---------------------------------------------------------------------------

    def save(self, prefix: str, entries: Mapping[str, str] | None = None,
             global_step: int | None = None, max_to_keep: int = 0,
             progress: ProgressSink | None = None, *, saver: Hashable | None = None,
             latest_filename: str = "", write_state: bool = True,
             keep_every_hours: float = 0.0) -> Saved:
        """Writes checkpoint ``prefix`` (``prefix-STEP`` with ``global_step``), records it in
        the state file ``latest_filename`` (default ``checkpoint``) of its folder, and deletes
        what TensorFlow's ``Saver`` would: the oldest of the checkpoints ``saver`` itself wrote
        beyond its newest ``max_to_keep`` (see :mod:`varstore.server.retention`; None: a saver
        for this save alone). ``write_state=False`` updates no state file and deletes nothing.

        ``entries`` maps checkpoint keys to variable names; None saves every variable under
        its own name. Nothing is written when it fails before the checkpoint's files are in
        place; when the state file cannot be updated after that, the error says that the
        checkpoint was written and the state file still names the previous one. Raises
        ``PermissionDeniedError`` for a path outside the folder, ``NotFoundError`` for a
        missing variable, ``FailedPreconditionError`` for an uninitialized one or an empty
        store, ``InvalidArgumentError`` for a bad prefix, key, state file name or retention
        setting, and the file errors of :func:`os_error`.
        """
        settings = SaverSettings(saver, max_to_keep, latest_filename, write_state,
                                 keep_every_hours)
        named, path = self._target(prefix, global_step, settings)
        with self._lock:
            started = time.monotonic()
            plan = self._save_plan(entries)
            tally = _Tally(progress, len(plan), sum(var.nbytes for _, var in plan))
            state_file = check_state_filename(latest_filename) if write_state else None
            created: list[str] = []
            try:
                created = self.folder.prepare(path, state_file)
                with BundleWriter(self.folder.temp_prefix(path)) as writer:
                    for key, var in plan:
                        _write_variable(writer, key, var, tally)
                files = self.folder.commit(path)
            except OSError as e:
                self.folder.discard(path, created)
                raise os_error(e, f"cannot write checkpoint {clip(named)}") from None
            except BaseException:
                self.folder.discard(path, created)
                raise
            log.info("saved checkpoint %s (%d tensors, %d bytes)", named, len(plan),
                     tally.progress.bytes_done)
            self._observe("save", started, tally.progress.bytes_done)
            return self._record(named, path, files, settings)

    def _target(self, prefix: str, global_step: int | None,
                settings: SaverSettings) -> tuple[str, str]:
        """The checkpoint's name (``prefix-STEP`` with a step) and real path, after checking
        the name and ``settings``; raises ``InvalidArgumentError``/``PermissionDeniedError``."""
        check_retention(settings.max_to_keep, settings.keep_every_hours)
        check_state_filename(settings.latest_filename)
        named = prefix if global_step is None else f"{prefix}-{global_step}"
        if TEMP_MARK in named:
            raise InvalidArgumentError(
                f"checkpoint prefix {clip(repr(named))} contains {TEMP_MARK!r}, which marks "
                "unfinished files")
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

    def save_part(self, part: str, entries: Mapping[str, str]) -> int:
        """Writes ``entries`` as one uncommitted part of a cluster's sharded save (see
        :mod:`varstore.server.cluster_service`); returns the bytes written. Raises as
        :meth:`save`."""
        path = self.folder.resolve(part)
        with self._lock:
            # A shard without variables writes an empty part: data file I is always shard I's.
            plan = self._save_plan(entries) if entries else []
            tally = _Tally(None, len(plan), sum(var.nbytes for _, var in plan))
            try:
                with BundleWriter(path) as writer:
                    for key, var in plan:
                        _write_variable(writer, key, var, tally)
            except OSError as e:
                raise os_error(e, f"cannot write checkpoint part {clip(part)}") from None
        return tally.progress.bytes_done

    def commit_parts(self, parts: list[str], prefix: str, global_step: int | None,
                     max_to_keep: int, *, saver: Hashable | None = None,
                     latest_filename: str = "", write_state: bool = True,
                     keep_every_hours: float = 0.0) -> Saved:
        """Merges the parts every shard wrote into checkpoint ``prefix`` (``prefix-STEP``)
        as TensorFlow's ``MergeV2Checkpoints`` does, index last, then records it and applies
        its saver's retention as :meth:`save` does; returns its path as the client named it
        and the saver's checkpoints.

        Raises ``InvalidArgumentError`` for a bad prefix or parts that do not merge, and the
        errors of :meth:`save`.
        """
        settings = SaverSettings(saver, max_to_keep, latest_filename, write_state,
                                 keep_every_hours)
        named, path = self._target(prefix, global_step, settings)
        paths = [self.folder.resolve(part) for part in parts]
        with self._lock:
            try:
                merge_shards(paths, path)
            except ValueError as e:
                raise InvalidArgumentError(f"cannot merge checkpoint {clip(named)}: {e}") \
                    from None
            except OSError as e:
                raise os_error(e, f"cannot write checkpoint {clip(named)}") from None
            files = [data_path(path, k, len(paths)) for k in range(len(paths))]
            return self._record(named, path, [*files, index_path(path)], settings)

    def _save_plan(self, entries: Mapping[str, str] | None) -> list[tuple[str, Variable]]:
        if entries is None:
            plan = [(var.name, var) for var in self.store.variables()]
        else:
            for key in entries:
                if not key or key.startswith("\x00"):
                    raise InvalidArgumentError(f"invalid checkpoint key {clip(repr(key))}")
            plan = [(key, self.store.get(name)) for key, name in entries.items()]
        if not plan:
            raise FailedPreconditionError("No variables to save")
        uninitialized = [var.name for _, var in plan if not var.initialized]
        if uninitialized:
            more = f" (and {len(uninitialized) - 1} more)" if len(uninitialized) > 1 else ""
            raise FailedPreconditionError(
                f"Attempting to use uninitialized value {uninitialized[0]}{more}")
        # TensorFlow stores tensors in key order; so do we, for byte-identical files.
        return sorted(plan, key=lambda item: item[0])

    # --- restoring ------------------------------------------------------------------------

    def restore(self, prefix: str, entries: Mapping[str, str] | None = None,
                progress: ProgressSink | None = None) -> str:
        """Restores variables from checkpoint ``prefix`` (or ``"latest"``).

        ``entries`` maps checkpoint keys to variable names; None restores every key into the
        variable of the same name. Missing variables are created with the checkpoint's dtype,
        shape and value. Returns the checkpoint's path as the client named it (for "latest":
        relative to the folder). Changes nothing when it fails. Raises
        ``PermissionDeniedError`` for a path outside the folder, ``NotFoundError`` for a
        missing checkpoint or key, ``DataLossError`` for a corrupt one (naming the tensor and
        file), ``InvalidArgumentError`` for a dtype or shape that differs from an existing
        variable's or a key that is no valid variable name, ``ResourceExhaustedError`` past
        the store's memory limit.
        """
        with self._lock:
            started = time.monotonic()
            named = self._resolve_latest() if prefix == LATEST else prefix
            path = self.folder.resolve(named)
            self.folder.check_files(path, named)
            try:
                with BundleReader(path) as reader:
                    plan = self._restore_plan(reader, entries, named)
                    tally = _Tally(progress, len(plan), sum(info.size for _, _, info in plan))
                    # Every checksum is verified before any variable changes, so a failed
                    # restore changes nothing. A variable that already holds a numeric value
                    # is then read into in place (reading the file twice from the page cache
                    # is cheaper than faulting in fresh memory for a second copy); the others
                    # get new arrays, read and verified in this first pass.
                    # Arrays read here are charged to the memory budget before they are
                    # allocated, until the variable that keeps one takes over its charge.
                    def first_pass(key: str, in_place: bool) -> np.ndarray | None:
                        if in_place:
                            reader.verify(key)
                            return None
                        info = reader.entry(key)
                        buffers.charge(key, array_bytes(info.shape, info.dtype) + (
                            info.size if info.dtype.is_string else 0),
                            f"restoring {clip(key)} from {clip(named)}")
                        return reader.read(key)

                    pool = ThreadPoolExecutor(RESTORE_THREADS, "varstore-restore")
                    buffers = _Buffers(self.store.budget)
                    try:
                        values: list[np.ndarray | None] = []
                        results = pool.map(first_pass, [key for key, _, _ in plan],
                                           [self._in_place(name) for _, name, _ in plan])
                        for (_, _, info), value in zip(plan, results, strict=True):
                            values.append(value)
                            tally.advance(info.size, 1)
                        self._assign(plan, values, reader, named, pool, buffers)
                    finally:
                        pool.shutdown(cancel_futures=True)
                        buffers.close()
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

    def _restore_plan(self, reader: BundleReader, entries: Mapping[str, str] | None,
                      named: str) -> list[tuple[str, str, TensorInfo]]:
        if entries is None:
            pairs = [(key, key) for key in reader.keys() if key != OBJECT_GRAPH_KEY]
        else:
            pairs = sorted(entries.items())
            seen: set[str] = set()
            for _, name in pairs:
                if name in seen:
                    raise InvalidArgumentError(f"variable {clip(name)} is restored from two keys")
                seen.add(name)
        plan = []
        for key, name in pairs:
            info = reader.entry(key)
            validate_name(name)
            var = self.store.find(name)
            if var is not None and (var.dtype != info.dtype or var.shape != info.shape):
                raise InvalidArgumentError(
                    f"cannot restore variable {clip(name)} ({var.dtype.name} {list(var.shape)}) "
                    f"from key {clip(key)} of checkpoint {clip(named)} ({info.dtype.name} "
                    f"{list(info.shape)})")
            plan.append((key, name, info))
        return plan

    def _in_place(self, name: str) -> bool:
        """Whether a restore reads variable ``name``'s value into its existing array (a
        numeric variable with a value; :meth:`_restore_plan` checked dtype and shape)."""
        var = self.store.find(name)
        return var is not None and var.initialized and not var.dtype.is_string

    def _assign(self, plan: list[tuple[str, str, TensorInfo]], values: list[np.ndarray | None],
                reader: BundleReader, named: str, pool: ThreadPoolExecutor,
                buffers: _Buffers) -> None:
        """Creates the missing variables (pending until the restore commits, in name order
        as requests create theirs) and sets the others: from ``values``, or for None
        (checksums verified) by reading into the variable's array on ``pool``'s threads, all
        under the locks."""
        created: list[Variable] = []
        existing: list[tuple[str, Variable, np.ndarray | None]] = []
        try:
            for (key, name, info), value in sorted(zip(plan, values, strict=True),
                                                   key=lambda item: item[0][1]):
                if value is None and self.store.find(name) is None:
                    value = reader.read(key)  # discarded since the first pass
                buffers.release(key)  # the variable charges its value itself
                var, made = self.store.create(Variable(
                    name, info.dtype, info.shape, created_by="restore",
                    initializer_desc=f"checkpoint {clip(named)}", value=value, pending=True))
                if made:
                    created.append(var)
                    if value is None:  # its creator failed between the lookups above
                        self.store.set_initial(var, reader.read(key))
                else:
                    existing.append((key, var, value))
            buffers.close()  # what is left replaces existing values, its growth checked below
            with self.store.locked([*(var for _, var, _ in existing), *created]):
                growth = sum(value_nbytes(var.dtype, var.shape, value) - var.nbytes
                             for _, var, value in existing
                             if var.dtype.is_string and value is not None)
                limit = self.store.max_memory
                if limit and growth > 0 and self.store.bytes_stored() + growth > limit:
                    raise ResourceExhaustedError(
                        f"restoring {clip(named)} would exceed the server's memory limit of "
                        f"{limit} bytes")
                in_place = [(key, var) for key, var, value in existing if value is None]
                list(pool.map(lambda kv: reader.read_into(kv[0], kv[1].read(), verified=True),
                              in_place))
                for _, var, value in existing:
                    if value is None:
                        self.store.touched(var)
                    else:
                        self.store.set_value(var, value)
                self.store.commit(created)
        except BaseException:
            self.store.discard(created)
            raise

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

    def recover(self, restore: str | None = None) -> str | None:
        """Start-up: cleans up after interrupted saves, then restores ``restore`` (a prefix or
        ``"latest"``; "latest" with no checkpoint yet starts empty). Returns what it restored.

        Raises what :meth:`restore` raises, with the failed setting in the message.
        """
        try:
            self.folder.recover()
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
            return self.restore(restore)
        except OpError as e:
            raise type(e)(f"cannot restore {clip(repr(restore))}: {e.message}") from e

    # --- requests -------------------------------------------------------------------------

    def save_request(self, request: pb.SaveRequest) -> Iterator[pb.CheckpointProgress]:
        """Runs a ``SaveRequest``, streaming progress; the last message carries the path and
        the saver's checkpoints. Raises what :func:`client_saver` and :meth:`save` raise."""
        entries = _entry_map(request.entries)
        step = request.global_step if request.has_global_step else None
        saver = client_saver(request.saver)
        yield from _progress_stream(lambda sink: self.save(
            request.prefix, entries, step, request.max_to_keep, sink, saver=saver,
            latest_filename=request.latest_filename, write_state=not request.skip_state,
            keep_every_hours=request.keep_checkpoint_every_n_hours))

    def restore_request(self, request: pb.RestoreRequest) -> Iterator[pb.CheckpointProgress]:
        """Runs a ``RestoreRequest``, streaming progress; the last message carries the path."""
        entries = _entry_map(request.entries)
        yield from _progress_stream(lambda sink: Saved(
            self.restore(request.prefix, entries, sink), []))

    # --- the timer ------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the save timer when ``save_every`` is set."""
        if self.save_every > 0 and self._timer is None:
            self._timer = threading.Thread(target=self._run_timer, name="varstore-save-timer",
                                           daemon=True)
            self._timer.start()

    def stop(self) -> None:
        """Stops the timer and waits for a save or restore in progress; with ``save_every``
        set, then writes a final checkpoint. Failures are logged, not raised."""
        self._stopping.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        if self.save_every > 0:
            self._save_logged("final")
        else:
            with self._lock:  # only waits for the checkpoint operation in progress
                pass

    def save_periodic(self) -> str | None:
        """Writes ``model.ckpt-STEP`` as the timer's saver, which keeps the newest ``keep`` of
        its own checkpoints; returns its path, or None (writing nothing) when the store is
        empty. Raises what :meth:`save` raises."""
        if not len(self.store):
            return None
        return self.save(TIMER_PREFIX, global_step=self._timer_step(), max_to_keep=self.keep,
                         saver=TIMER_SAVER).path

    def _run_timer(self) -> None:
        while not self._stopping.wait(self.save_every):
            self._save_logged("periodic")

    def _save_logged(self, kind: str) -> None:
        try:
            path = self.save_periodic()
        except OpError as e:
            log.warning("%s checkpoint not written: %s: %s", kind, type(e).__name__, e.message)
            return
        except Exception:  # noqa: BLE001 - the timer must survive a bug in one save
            log.exception("%s checkpoint failed", kind)
            return
        if path is None:
            log.info("%s checkpoint skipped: the store is empty", kind)
        elif kind == "final":
            log.info("final checkpoint written: %s", path)

    def _timer_step(self) -> int:
        var = self.store.find(GLOBAL_STEP)
        if var is not None and var.dtype.is_integer and var.shape == ():
            with var.lock:
                if var.value is not None:
                    return int(var.value)
        if self._counter is None:
            self._counter = self._newest_timer_step()
        self._counter += 1
        return self._counter

    def _newest_timer_step(self) -> int:
        """The largest N of the ``model.ckpt-N`` checkpoints in the folder (0: none)."""
        try:
            names = os.listdir(self.folder.root)
        except OSError:
            return 0
        pattern = re.compile(re.escape(TIMER_PREFIX) + r"-(\d{1,18})\.index")
        return max((int(m.group(1)) for n in names if (m := pattern.fullmatch(n))), default=0)

    def _observe(self, kind: str, started: float, nbytes: int) -> None:
        if self.metrics is not None:
            self.metrics.observe_checkpoint(kind, time.monotonic() - started, nbytes)


def _entry_map(entries: Iterable[pb.CheckpointEntry]) -> dict[str, str] | None:
    """``{key: variable}`` of a request's entries; None when there are none."""
    mapping: dict[str, str] = {}
    for entry in entries:
        if entry.key in mapping:
            raise InvalidArgumentError(f"checkpoint key {clip(repr(entry.key))} is listed twice")
        mapping[entry.key] = entry.variable
    return mapping or None


def _write_variable(writer: BundleWriter, key: str, var: Variable, tally: _Tally) -> None:
    """Copies ``var`` under its lock, then writes the copy piece by piece, dropping each
    piece once written."""
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


class _Buffers:
    """What a restore holds of the memory budget for the arrays it has read, by key."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def charge(self, key: str, nbytes: int, what: str) -> None:
        """Charges ``nbytes`` for ``key``'s array; raises ``ResourceExhaustedError``."""
        self._budget.charge(nbytes, what)
        with self._lock:
            self._held[key] = self._held.get(key, 0) + nbytes

    def release(self, key: str) -> None:
        """Gives back ``key``'s charge."""
        with self._lock:
            nbytes = self._held.pop(key, 0)
        self._budget.release(nbytes)

    def close(self) -> None:
        """Gives back every charge."""
        with self._lock:
            nbytes, self._held = sum(self._held.values()), {}
        self._budget.release(nbytes)


class _Tally:
    """Counts a checkpoint operation's progress; reports it after every ``PIECE_BYTES`` and
    every few tensors (about ``PROGRESS_STEPS`` reports in all), and when complete."""

    def __init__(self, sink: ProgressSink | None, tensors: int, nbytes: int) -> None:
        self.sink = sink
        self.progress = Progress(0, nbytes, 0, tensors)
        self._every = max(1, tensors // PROGRESS_STEPS)
        self._bytes = self._tensors = 0
        self._report()

    def advance(self, nbytes: int, tensors: int = 0) -> None:
        """Adds ``nbytes`` written or read and ``tensors`` finished."""
        p = self.progress
        p.bytes_done += nbytes
        p.tensors_done += tensors
        self._bytes += nbytes
        self._tensors += tensors
        if (self._bytes >= PIECE_BYTES or self._tensors >= self._every
                or p.tensors_done == p.tensors_total):
            self._bytes = self._tensors = 0
            self._report()

    def _report(self) -> None:
        if self.sink is not None:
            p = self.progress
            # String tensors may grow while a save runs; never report more done than total.
            self.sink(replace(p, bytes_total=max(p.bytes_total, p.bytes_done)))


def _progress_stream(job: Callable[[ProgressSink], Saved]) -> Iterator[pb.CheckpointProgress]:
    """Runs ``job`` on its own thread and yields its progress reports, then a last message
    with ``done`` and the path ``job`` returned; re-raises what ``job`` raised. A client that
    goes away does not stop the job: a checkpoint operation, once started, completes."""
    relay = _Relay()
    threading.Thread(target=relay.run, args=(job,), name="varstore-checkpoint",
                     daemon=True).start()
    yield from relay.messages()


class _Relay:
    """Hands a job's progress reports from the job's thread to the RPC's thread, every one
    of them (:class:`_Tally` keeps them few), without ever making the job wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: deque[Progress] = deque()
        self._finished = False
        self._result = Saved("", [])
        self._error: BaseException | None = None

    def report(self, progress: Progress) -> None:
        with self._cond:
            self._pending.append(progress)
            self._cond.notify_all()

    def run(self, job: Callable[[ProgressSink], Saved]) -> None:
        result, error = Saved("", []), None
        try:
            result = job(self.report)
        except BaseException as e:  # noqa: BLE001 - handed to the RPC's thread
            error = e
        with self._cond:
            self._result, self._error, self._finished = result, error, True
            self._cond.notify_all()

    def messages(self) -> Iterator[pb.CheckpointProgress]:
        last = Progress()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._finished)
                reports, finished = list(self._pending), self._finished
                self._pending.clear()
            for last in reports:
                yield _progress_message(last)
            if finished:
                break
        if self._error is not None:
            raise self._error
        yield _progress_message(last, self._result)


def _progress_message(p: Progress, result: Saved | None = None) -> pb.CheckpointProgress:
    message = pb.CheckpointProgress(bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                                    tensors_done=p.tensors_done, tensors_total=p.tensors_total)
    if result is not None:
        message.path = result.path
        message.done = True
        message.last_checkpoints.extend(result.last_checkpoints)
    return message
