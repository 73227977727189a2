"""``varstore.v1.ClusterService``: the cluster's shards, the placement table, sharded saves.

A cluster's save follows TensorFlow's ``Saver(sharded=True)``: every shard writes the
variables it holds as one part (``SavePart``, in parallel), then shard 0 merges the parts into
``PREFIX.index`` + ``PREFIX.data-0000i-of-0000N`` and records the checkpoint (``CommitParts``,
``MergeV2Checkpoints``'s job). Until the merged index appears, every file is temporary, so a
shard failing mid-save leaves the previous checkpoint whole. The shards must share the
checkpoint folder; shard 0 refuses parts it cannot see, naming the folder.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import grpc

from varstore.common.errors import (
    AbortedError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    OpError,
    clip,
)
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.proto import varstore_pb2 as pb
from varstore.server.auth import TokenAuthInterceptor, read_only_refusal
from varstore.server.bundle import TEMP_MARK, BundleReader, index_path
from varstore.server.bundle.fsio import unlink_quietly
from varstore.server.bundle.naming import data_path
from varstore.server.checkpoint_folder import os_error
from varstore.server.checkpoint_progress import Saved
from varstore.server.checkpoint_restore import NOT_VARIABLES, shard_entries
from varstore.server.checkpoints import LATEST, CheckpointManager
from varstore.server.cluster import (
    ClusterSpec,
    PlacementTable,
    refuse_snapshot,
    require_shared_folder,
)
from varstore.server.placement_guard import CreateGuard
from varstore.server.retention import client_saver
from varstore.server.shard_restart import RestartOwners
from varstore.server.wire import entries_from_proto

log = logging.getLogger(__name__)

# How the cluster client names the parts of a save (8 hex digits of token); the folder's
# start-up clean-up (bundle.state.OWN_TEMP) removes what an interrupted save left so named.
PART_NAME = re.compile(rf".+{re.escape(TEMP_MARK)}[0-9a-f]{{8}}_part-\d{{5}}-of-\d{{5}}")
SERVICE_NAME = cpb.DESCRIPTOR.services_by_name["ClusterService"].full_name


class ClusterServicer(cpb_grpc.ClusterServiceServicer):
    """Answers for one shard of ``spec`` (None: a server that is no cluster)."""

    def __init__(self, spec: ClusterSpec | None, checkpoints: CheckpointManager,
                 guard: CreateGuard | None = None,
                 auth: TokenAuthInterceptor | None = None) -> None:
        """``guard``: this shard's creates in progress, which ``Held`` reports as held;
        ``auth``: the server's tokens (a read-only token may only look placements up)."""
        self.spec = spec
        self.checkpoints = checkpoints
        self.guard = guard
        self.auth = auth
        self.table = (PlacementTable(len(spec.shards), checkpoints.store.budget)
                      if spec is not None else None)

    def ClusterInfo(self, request: cpb.ClusterInfoRequest,
                    context: grpc.ServicerContext) -> cpb.ClusterInfoResponse:
        if self.spec is None:
            return cpb.ClusterInfoResponse()
        return cpb.ClusterInfoResponse(shards=self.spec.shards, task_index=self.spec.task_index)

    def Place(self, request: cpb.PlaceRequest,
              context: grpc.ServicerContext) -> cpb.PlaceResponse:
        if self.table is None or self.spec is None or self.spec.task_index != 0:
            raise FailedPreconditionError("the placement table is kept by shard 0 of a cluster")
        table = self.table
        if self.auth is not None and self.auth.read_only(context) and (
                request.forget or not all(p.lookup_only for p in request.variables)):
            raise read_only_refusal("placing or forgetting variables")
        if request.forget:
            table.forget([p.name for p in request.variables])
            return cpb.PlaceResponse(epoch=table.epoch)
        if request.epoch != table.epoch:
            unknown = [p.name for p in request.variables
                       if not p.lookup_only and table.place(p.name, lookup_only=True) < 0]
            if unknown:
                raise AbortedError(
                    f"shard 0's placement table does not know variable {clip(unknown[0])} "
                    f"and the request is not of its epoch ({request.epoch}, the table's is "
                    f"{table.epoch}; shard 0 restarted since the client looked it up): look "
                    "the names up again and ask every shard whether it holds them before "
                    "placing them")
        return cpb.PlaceResponse(shards=[
            table.place(p.name, p.nbytes, p.shard, p.colocate_with, p.lookup_only)
            for p in request.variables], epoch=table.epoch)

    def Held(self, request: cpb.HeldRequest, context: grpc.ServicerContext) -> cpb.HeldResponse:
        store = self.checkpoints.store
        index = self.spec.task_index if self.spec is not None else 0
        names = list(dict.fromkeys(request.names))
        # Then the variables being created here (varstore.server.placement_guard): a
        # variable created meanwhile is found either way.
        pending = self.guard.pending(names) if self.guard is not None else set()
        return cpb.HeldResponse(variables=[
            cpb.Placement(name=name, nbytes=var.nbytes if var is not None else 0, shard=index)
            for name in names
            if (var := store.find(name)) is not None or name in pending])

    def Unsaved(self, request: cpb.UnsavedRequest,
                context: grpc.ServicerContext) -> cpb.UnsavedResponse:
        return cpb.UnsavedResponse(names=self.checkpoints.unsaved())

    def SavePart(self, request: cpb.SavePartRequest,
                 context: grpc.ServicerContext) -> cpb.SavePartResponse:
        _check_parts([request.part_prefix])
        entries = entries_from_proto(request.entries, save=True)
        return cpb.SavePartResponse(
            bytes_written=self.checkpoints.save_part(request.part_prefix, entries))

    def CommitParts(self, request: cpb.CommitPartsRequest,
                    context: grpc.ServicerContext) -> cpb.CommitPartsResponse:
        parts = list(request.part_prefixes)
        _check_parts(parts)
        if request.abort:
            remove_parts(self.checkpoints, parts)
            return cpb.CommitPartsResponse()
        step = request.global_step if request.has_global_step else None
        saved = commit_parts(
            self.checkpoints, parts, request.prefix, step, request.max_to_keep,
            saver=client_saver(request.saver), latest_filename=request.latest_filename,
            write_state=not request.skip_state,
            keep_every_hours=request.keep_checkpoint_every_n_hours)
        return cpb.CommitPartsResponse(path=saved.path, last_checkpoints=saved.last_checkpoints)

    def CheckpointKeys(self, request: cpb.CheckpointKeysRequest,
                       context: grpc.ServicerContext) -> cpb.CheckpointKeysResponse:
        named = request.prefix
        if named == LATEST:
            named = self.checkpoints.latest() or ""
            if not named:
                raise NotFoundError(
                    f"no checkpoint is recorded in the checkpoint folder "
                    f"{self.checkpoints.directory}")
        refuse_snapshot(named)
        path = self.checkpoints.folder.resolve(named)
        self.checkpoints.folder.check_files(path, named)
        try:
            with BundleReader(path) as reader:
                keys = [cpb.CheckpointKey(key=key, dtype=info.dtype.enum, shape=info.shape,
                                          slices=[pb.SaveSlice(full_name=key,
                                                               full_shape=info.shape,
                                                               offset=offset, shape=shape)
                                                  for offset, shape in info.slices])
                        for key in reader.keys() if key not in NOT_VARIABLES
                        for info in [reader.entry(key)]]
        except OSError as e:
            raise os_error(e, f"cannot read checkpoint {clip(named)}") from None
        return cpb.CheckpointKeysResponse(path=named, keys=keys)


def _check_parts(parts: list[str]) -> None:
    """Raises ``InvalidArgumentError`` unless every part prefix is named as the cluster
    client names parts (``PREFIX.tempstateTOKEN_part-0000i-of-0000N``), a temporary name that
    start-up cleans up, so that writing, merging or removing parts never touches a finished
    checkpoint."""
    for part in parts:
        if not PART_NAME.fullmatch(part.rpartition("/")[2]):
            raise InvalidArgumentError(
                f"checkpoint part {clip(repr(part))} is not named PREFIX{TEMP_MARK}"
                "TOKEN_part-0000I-of-0000N")


def commit_parts(checkpoints: CheckpointManager, parts: list[str], prefix: str,
                 global_step: int | None, max_to_keep: int, **settings: Any) -> Saved:
    """Merges the parts of a cluster save into checkpoint ``prefix`` and records it
    (:meth:`CheckpointManager.commit_parts`, which takes ``settings``).

    Raises ``FailedPreconditionError`` when a part another shard wrote is not in this shard's
    folder (the folder must be shared), and what ``commit_parts`` raises."""
    folder = checkpoints.folder
    for part in parts:
        require_shared_folder(str(folder.directory), index_path(folder.resolve(part)))
    return checkpoints.commit_parts(parts, prefix, global_step, max_to_keep, **settings)


def remove_parts(checkpoints: CheckpointManager, parts: list[str]) -> None:
    """Removes the files of the parts of a cluster save that failed (their names checked by
    the caller). Raises ``PermissionDeniedError`` for a part outside the folder."""
    for part in parts:
        path = checkpoints.folder.resolve(part)
        unlink_quietly(index_path(path))
        unlink_quietly(data_path(path, 0, 1))


def add_to_server(servicer: ClusterServicer, server: grpc.Server) -> None:
    """Registers ``servicer`` as ``varstore.v1.ClusterService``."""
    cpb_grpc.add_ClusterServiceServicer_to_server(servicer, server)


def recover_shard(checkpoints: CheckpointManager, spec: ClusterSpec | None,
                  restore: str | None, owners: RestartOwners | None = None) -> str | None:
    """Start-up: cleans up after interrupted saves (on a shard of a cluster, only the files
    it owns, :meth:`ClusterSpec.owns_leftover`) and restores ``restore`` (a prefix or
    ``"latest"``: this shard's own snapshot when it is newer than the latest checkpoint). A
    single server restores the whole checkpoint (:meth:`CheckpointManager.recover`); a shard
    of a cluster the variables that are its own as ``owners`` asks the cluster now
    (:mod:`varstore.server.shard_restart`; None: those of its own data file), while the
    other shards keep theirs. Returns what it restored.

    Raises ``FailedPreconditionError`` for a checkpoint ``restore`` names explicitly that
    another number of shards wrote (a client restores that one, placing every variable
    afresh; with ``"latest"`` the shard logs a warning saying so and starts empty, so that
    the shards serve for that restore), and what :meth:`CheckpointManager.restore` raises.
    """
    if spec is None or len(spec.shards) == 1:
        return checkpoints.recover(restore)
    checkpoints.recovery_files = lambda: _recovery_files(checkpoints, spec)
    checkpoints.recover(None, spec.owns_leftover)
    if not restore:
        return None
    snapshot = _newer_snapshot(checkpoints, spec) if restore == LATEST else None
    named = snapshot or (checkpoints.latest() if restore == LATEST else restore)
    if named is None:
        log.warning("--restore latest: no checkpoint in %s yet; starting empty",
                    checkpoints.directory)
        return None
    path = checkpoints.folder.resolve(named)
    checkpoints.folder.check_files(path, named)
    try:
        # Checks the index's checksums; a snapshot holds some slices of a tensor only.
        with BundleReader(path, partial=snapshot is not None) as reader:
            num_shards = reader.num_shards
            entries = shard_entries(reader)
            own = entries if snapshot else shard_entries(reader, spec.task_index)
    except OSError as e:
        raise os_error(e, f"cannot read checkpoint {clip(named)}") from None
    if not snapshot and num_shards != len(spec.shards) and restore == LATEST:
        # The documented way to change the shard count restores from a client, which needs
        # the shards serving: a supervisor restarting them with --restore latest must not
        # loop on this checkpoint.
        log.warning(
            "--restore latest: the latest checkpoint %s has %d data files, the cluster %d "
            "shards: this shard starts empty; restore it from a client (`varstore restore "
            "%s`), which places every variable on the shards there are", named, num_shards,
            len(spec.shards), named)
        return None
    if not snapshot and num_shards != len(spec.shards):
        raise FailedPreconditionError(
            f"cannot restore {clip(repr(named))} on shard {spec.task_index}: it has "
            f"{num_shards} data files, the cluster {len(spec.shards)} shards; restore it "
            f"from a client (`varstore restore {clip(named)}`), which places every variable "
            "on the shards there are")
    names = {entry.variable for entry in own}
    chosen = owners.select(entries, names, named) if owners is not None else own
    if chosen:
        checkpoints.restore(named, chosen, as_saved=0 if snapshot else spec.task_index)
    log.info("restored this shard's %d variables of %s%s", len(chosen), named,
             " (its own snapshot, newer than the cluster's latest checkpoint)"
             if snapshot else "")
    return named


def save_shard_snapshot(checkpoints: CheckpointManager, spec: ClusterSpec) -> bool:
    """The exit save of a shard that stops on its own (shard 0 saves the whole cluster):
    writes every variable it holds (its parts of partitioned variables as they are; none
    at all when they were deleted) as its own snapshot (:attr:`ClusterSpec.snapshot`, a
    checkpoint no state file lists and no client may restore) when they differ from what
    ``--restore latest`` would restore on this shard now
    (:meth:`CheckpointManager.unsaved`), so that ``--restore latest`` brings back every
    acknowledged update and no deleted variable (see :func:`recover_shard`). Returns False,
    logging an error, when it could not be written."""
    try:
        if not checkpoints.unsaved():
            log.info("no changes since what --restore latest restores: no snapshot to write")
            return True
        checkpoints.save(spec.snapshot, write_state=False, internal=True, snapshot=True)
    except OpError as e:
        log.error("this shard's snapshot on exit was not written: %s: %s", type(e).__name__,
                  e.message)
        return False
    log.info("wrote this shard's own snapshot %s on exit (--restore latest prefers it to "
             "the cluster's older checkpoints)", spec.snapshot)
    return True


def _recovery_files(checkpoints: CheckpointManager, spec: ClusterSpec) -> list[str]:
    """The data file ``--restore latest`` would restore this shard from now: its own
    snapshot when newer than the cluster's latest checkpoint, else its own data file of that
    one (see :func:`recover_shard`)."""
    snapshot = _newer_snapshot(checkpoints, spec)
    if snapshot is not None:
        return [data_path(checkpoints.folder.resolve(snapshot), 0, 1)]
    named = checkpoints.latest()
    if named is None:
        return []
    return [data_path(checkpoints.folder.resolve(named), spec.task_index, len(spec.shards))]


def _newer_snapshot(checkpoints: CheckpointManager, spec: ClusterSpec) -> str | None:
    """This shard's snapshot when it is newer than the cluster's latest checkpoint (or
    there is none), else None."""
    snapshot = index_path(checkpoints.folder.resolve(spec.snapshot))
    latest = checkpoints.latest()
    try:
        written = os.stat(snapshot).st_mtime_ns
        if latest is not None:
            cluster = index_path(checkpoints.folder.resolve(latest))
            if os.path.exists(cluster) and os.stat(cluster).st_mtime_ns >= written:
                return None
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(e, "cannot read this shard's snapshot") from None
    return spec.snapshot
