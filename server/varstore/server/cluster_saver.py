"""Shard 0's checkpoints of the whole cluster: its ``--save-every`` timer and final save.

On a cluster of several shards, shard 0 (which already keeps the placement table and commits
every cluster save) is the one shard that saves on its own: each timer period, and when it
stops, it writes ``model.ckpt-STEP`` of every shard as the cluster client does
(:mod:`varstore.server.cluster_service`): each shard writes its variables as part I of the
checkpoint (``SavePart``, in parallel; shard 0's own part directly), then shard 0 merges the
parts into TensorFlow's sharded layout and records the checkpoint with the timer's retention
(:mod:`varstore.server.checkpoint_timer`). A shard that cannot be reached fails that save
(logged), removes its parts and leaves the previous checkpoint whole; the other shards never
save alone. STEP is the cluster's ``global_step`` (whichever shard holds it) or a counter.

Shard 0 calls the others with its own credentials: the first token of ``--token-file``, and
with TLS its ``--tls-client-ca`` (else its own certificate) as the root it trusts, presenting
its certificate when the shards require client certificates.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from varstore.common import codec
from varstore.common.errors import OpError, UnavailableError, from_rpc_error
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.server import wire
from varstore.server.checkpoints import CheckpointManager
from varstore.server.cluster import WILDCARD_HOSTS, ClusterSpec
from varstore.server.cluster_service import commit_parts, remove_parts
from varstore.server.store import VariableStore

__all__ = ["ClusterSaver", "shard_channel", "shard_credentials"]

log = logging.getLogger(__name__)

# Seconds one call to another shard may take (a part of a large store takes long to write).
CALL_TIMEOUT = 3600.0
GLOBAL_STEP = "global_step"
# What each shard held at a save: {name: (version, slice info of a part)} by task index.
Holdings = list[dict[str, tuple[int, pb.SaveSlice | None]]]


def shard_credentials(cert: Path | None, key: Path | None, client_ca: Path | None
                      ) -> grpc.ChannelCredentials | None:
    """The credentials shard 0 calls the other shards with (None: plaintext): it trusts
    ``client_ca`` (else its own ``cert``) and presents ``cert``/``key`` when ``client_ca``
    says shards require client certificates. Raises ``OSError`` for unreadable files."""
    if cert is None or key is None:
        return None
    root = Path(client_ca or cert).read_bytes()
    if client_ca is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.ssl_channel_credentials(root_certificates=root,
                                        private_key=Path(key).read_bytes(),
                                        certificate_chain=Path(cert).read_bytes())


class ClusterSaver:
    """Writes checkpoints of every shard of ``spec`` from shard 0 (``checkpoints`` is its own)."""

    def __init__(self, spec: ClusterSpec, checkpoints: CheckpointManager,
                 credentials: grpc.ChannelCredentials | None = None,
                 token: str | None = None) -> None:
        self.spec = spec
        self.checkpoints = checkpoints
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels = {k: shard_channel(spec, k, credentials)
                          for k in range(len(spec.shards)) if k != 0}
        self._pool = ThreadPoolExecutor(len(spec.shards), thread_name_prefix="varstore-saver")

    @property
    def store(self) -> VariableStore:
        """Shard 0's own store."""
        return self.checkpoints.store

    def close(self) -> None:
        """Closes the channels to the other shards."""
        for channel in self._channels.values():
            channel.close()
        self._pool.shutdown(wait=False)

    def save(self, prefix: str, next_step: Callable[[], int], max_to_keep: int,
             saver: Hashable) -> str | None:
        """Writes ``PREFIX-STEP`` of the whole cluster as ``saver`` (keeping its newest
        ``max_to_keep``); STEP is the cluster's integer scalar ``global_step``, else
        ``next_step()``. Returns the path, or None (writing nothing) when every shard holds what
        ``--restore latest`` would restore on it now (:meth:`unsaved`; variables deleted since
        count, so an emptied cluster writes an empty checkpoint). Raises ``UnavailableError`` naming
        a shard that cannot be reached, and what :meth:`CheckpointManager.commit_parts` raises (the
        parts are removed then)."""
        if not self.unsaved():
            return None
        held = self._holdings()
        found = self._global_step(held)
        step = found if found is not None else next_step()
        named = f"{prefix}-{step}"
        count = len(self.spec.shards)
        token = secrets.token_hex(4)
        parts = [f"{named}.tempstate{token}_part-{k:05d}-of-{count:05d}" for k in range(count)]

        def save_part(k: int) -> None:
            # Parts of partitioned variables as slices of their full name's tensor.
            entries = [pb.CheckpointEntry(key=part.full_name if part else name, variable=name,
                                          slice=part) for name, (_, part) in held[k].items()]
            if k == 0:
                self.checkpoints.save_part(parts[0], wire.entries_from_proto(entries, True))
                return
            self._call(k, lambda ch: cpb_grpc.ClusterServiceStub(ch).SavePart, cpb.SavePartRequest(
                part_prefix=parts[k], entries=entries))
        try:
            self._each(save_part)
            saved = commit_parts(self.checkpoints, parts, prefix, step, max_to_keep,
                                 saver=saver)
        except OpError:
            remove_parts(self.checkpoints, parts)
            raise
        return saved.path

    def unsaved(self) -> list[str]:
        """Names of the variables created, changed or gone on any shard since the checkpoint
        that ``--restore latest`` would restore on that shard now (each shard's
        :meth:`CheckpointManager.unsaved`, through the ``Unsaved`` RPC), sorted. Raises
        ``UnavailableError`` naming a shard that cannot be reached."""
        return sorted({n for names in self._each(self._unsaved_on) for n in names})

    def _unsaved_on(self, k: int) -> list[str]:
        """Shard ``k``'s :meth:`CheckpointManager.unsaved`."""
        if k == 0:
            return self.checkpoints.unsaved()
        return list(self._call(k, lambda ch: cpb_grpc.ClusterServiceStub(ch).Unsaved,
                               cpb.UnsavedRequest()).names)

    def _holdings(self) -> Holdings:
        def listed(k: int) -> dict[str, tuple[int, pb.SaveSlice | None]]:
            if k == 0:
                return {v.name: (v.version, None if v.save_slice is None
                                 else wire.slice_to_proto(v.save_slice))
                        for v in self.store.variables()}
            reply = self._call(k, lambda ch: pb_grpc.VariableServiceStub(ch).ListVariables,
                               pb.ListVariablesRequest())
            return {v.name: (v.version, v.save_slice if v.HasField("save_slice") else None)
                    for v in reply.variables}
        return self._each(listed)

    def _global_step(self, held: Holdings) -> int | None:
        """The value of ``global_step`` when a shard holds it as an initialized integer
        scalar (TensorFlow's convention), else None."""
        for k, names in enumerate(held):
            if GLOBAL_STEP not in names:
                continue
            if k == 0:
                var = self.store.find(GLOBAL_STEP)
                if var is None or not var.dtype.is_integer or var.shape != ():
                    return None
                with var.lock:
                    return None if var.value is None else int(var.value)
            request = pb.RunRequest(nodes=[pb.Node(op="read", variable=GLOBAL_STEP)],
                                    fetches=[0])
            try:
                reply = self._call(k, lambda ch: pb_grpc.VariableServiceStub(ch).Run, request)
            except UnavailableError:
                raise
            except OpError:  # not initialized, say: the timer counts instead
                return None
            value = np.asarray(codec.tensor_from_proto(reply.values[0]))
            return int(value) if value.shape == () and value.dtype.kind in "iu" else None
        return None

    def _each(self, call: Callable[[int], Any]) -> list[Any]:
        futures = [self._pool.submit(call, k) for k in range(len(self.spec.shards))]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _call(self, k: int, method: Callable[[grpc.Channel], Any], request: Any) -> Any:
        """``method(channel to shard k)(request)``; a failure as the varstore error, a shard
        that cannot be reached as ``UnavailableError`` naming it."""
        try:
            return method(self._channels[k])(request, timeout=CALL_TIMEOUT,
                                            metadata=self._metadata)
        except grpc.RpcError as e:
            error = from_rpc_error(e, self.spec.shards[k])
            where = "" if isinstance(error, UnavailableError) else f" ({self.spec.shards[k]})"
            raise type(error)(f"shard {k}{where} of the cluster: {error.message}") from None


def shard_channel(spec: ClusterSpec, k: int, credentials: grpc.ChannelCredentials | None,
                  local: bool = True) -> grpc.Channel:
    """A channel to shard ``k`` of ``spec``: its private Unix socket when the shards have
    them (``varstore serve --shards``) and ``local``, else its address (a wildcard host:
    this machine's loopback) with ``credentials``."""
    if spec.local_shards and local:
        return grpc.insecure_channel(spec.local_shards[k])
    address = spec.shards[k]
    host, _, port = address.rpartition(":")
    if host in WILDCARD_HOSTS:
        address = f"127.0.0.1:{port}"
    if credentials is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, credentials)
