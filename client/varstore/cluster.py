"""A client for a cluster of shards: the same API as :class:`varstore.Client`, one store.

``vs.connect(address)`` asks the server it reaches for the cluster (``ClusterInfo``); when it
names more than one shard, the connection is a :class:`ClusterClient`, which routes every
request by variable name. Shard 0 keeps the placement table (new variables balanced by bytes,
slots next to their variable; see ``varstore.server.cluster``); the client caches it. A request
touching several shards becomes one request per shard, sent in parallel, in stages when a
value crosses shards (:mod:`varstore.routing`). Updates are atomic per shard; a request that
spans shards can succeed on some and fail on others. Saving writes TensorFlow's sharded layout
(every shard a data file, one merged index); restoring places each variable afresh, so a
checkpoint restores onto any number of shards.
"""

from __future__ import annotations

import contextlib
import operator
import secrets
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from grpc_health.v1 import health_pb2, health_pb2_grpc

from varstore.client import Client, Reply, VariableInfo
from varstore.common.errors import (
    NotFoundError,
    OpError,
    UnavailableError,
    UnimplementedError,
    clip,
)
from varstore.common.parts import check_whole_parts
from varstore.common.protocol import ROUTED_METADATA
from varstore.placement import (
    ClusterSteps,
    Find,
    Place,
    Placement,
    RunParts,
    shard_0_error,
    shard_error,
)
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder, checkpoint_entries

T = TypeVar("T")
# Where the parts of a save are written until shard 0 merges them; the server treats files
# carrying this mark as unfinished (TensorFlow's own marker).
TEMP_MARK = ".tempstate"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
# Seconds between lookups of variables not created yet, while waiting for them.
PLACEMENT_POLL = 0.5


def cluster_addresses(client: Client) -> list[str]:
    """The shard addresses the server behind ``client`` reports (empty: no cluster, or a
    server without ClusterService), with a wildcard host replaced by the host ``client``
    reached. Raises the error of any other failure (``UnauthenticatedError``...): a server
    that would not say is not taken for a single server."""
    stub = cpb_grpc.ClusterServiceStub(client.transport.channel)
    try:
        info = client.transport.call(stub.ClusterInfo, cpb.ClusterInfoRequest(),
                                     idempotent=True)
    except UnimplementedError:  # a server without ClusterService is one server
        return []
    return reachable_shards(client.address, info)


def reachable_shards(address: str, info: cpb.ClusterInfoResponse) -> list[str]:
    """The shard addresses of ``info`` (as the server at ``address`` told them), a wildcard
    host replaced by the host of ``address``."""
    host = address.rpartition(":")[0]
    return [f"{host}:{a.rpartition(':')[2]}" if a.rpartition(":")[0] in _WILDCARD_HOSTS
            else a for a in info.shards]


@dataclass(frozen=True)
class ShardStatus:
    """One shard as ``varstore status`` shows it: task index, address, health (the gRPC health
    service's SERVING / NOT_SERVING, or UNAVAILABLE) and its status, or why none came."""

    task: int
    address: str
    health: str
    status: pb.StatusResponse | OpError


class ClusterClient(Client):
    """A :class:`Client` over every shard of a cluster (``shards[k]`` is task k's address).

    Requests touching a shard that is down raise ``UnavailableError`` naming the shard; the
    other shards keep serving.
    """

    def __init__(self, shards: Sequence[str], *, token: str | None = None, tls: Any = None,
                 timeout: float | None = None) -> None:
        super().__init__(shards[0], token=token, tls=tls, timeout=timeout)
        self.shard_addresses = list(shards)
        self.shards: list[Client] = [self] + [
            Client(a, token=token, tls=tls, timeout=timeout) for a in shards[1:]]
        for shard in self.shards:
            shard.transport.metadata += (ROUTED_METADATA,)
        self.placement_stub = cpb_grpc.ClusterServiceStub(self.transport.channel)
        self.placement = Placement(len(shards))
        self._pool = ThreadPoolExecutor(len(shards), thread_name_prefix="varstore-shard")

    def close(self) -> None:
        """Closes every shard's channel."""
        for shard in self.shards[1:]:
            shard.close()
        super().close()
        self._pool.shutdown(wait=False)

    # --- placement ------------------------------------------------------------------------

    def device(self, device: str) -> contextlib.AbstractContextManager[None]:
        """Pins variables created inside to one shard, as ``tf.device("/job:ps/task:K")``
        does (:meth:`Placement.device`). Raises ``ValueError`` for a task outside the
        cluster."""
        return self.placement.device(device)

    def shard_of(self, name: str) -> int:
        """The shard holding variable ``name`` (shard 0 for a name no shard holds)."""
        self._route(self.placement.locate([], [name]))
        return self.placement.shard_of(name)

    def _locate(self, specs: Sequence[pb.VariableSpec], names: Sequence[str]) -> None:
        """:meth:`Placement.locate`, sent."""
        self._route(self.placement.locate(specs, names))

    # --- requests -------------------------------------------------------------------------

    def run(self, builder: RequestBuilder, expect_bytes: int = 0) -> Reply:
        """Sends the request as one request per shard it touches, in parallel, in as many
        stages as values crossing shards need (:meth:`Placement.run`); returns what one
        server would return."""
        return self._route(self.placement.run(builder, expect_bytes))

    def _route(self, steps: ClusterSteps[T]) -> T:
        """Runs ``steps``, sending each call they yield and sending back its answer (or
        raising its error inside them)."""
        answer: Any = None
        error: OpError | None = None
        while True:
            try:
                call = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            try:
                answer, error = self._perform(call), None
            except OpError as e:
                answer, error = None, e

    def _perform(self, call: Place | Find | RunParts) -> Any:
        if isinstance(call, Place):
            return self._on_shard_0("Place", call.request, idempotent=True)
        if isinstance(call, Find):
            request = cpb.HeldRequest(names=call.names)

            def find(k: int) -> dict[str, int]:
                transport = self.shards[k].transport
                held = transport.call(cpb_grpc.ClusterServiceStub(transport.channel).Held,
                                      request, idempotent=True)
                return {v.name: v.nbytes for v in held.variables}
            return self._each(list(range(len(self.shards))), find)
        return self._each(call.parts, lambda p: Client.run(self.shards[p[0]], p[1], p[2]),
                          shard=lambda p: p[0])

    def _on_shard_0(self, method: str, request: Any, idempotent: bool = False) -> Any:
        """Calls ``ClusterService.method`` on shard 0; an unavailable shard 0 is named with
        what it does (:func:`shard_0_error`)."""
        try:
            return self.transport.call(getattr(self.placement_stub, method), request,
                                       idempotent=idempotent)
        except OpError as e:
            named = shard_0_error(e, method, len(self.shards))
            if named is e:
                raise
            raise named from e

    def _each(self, items: Sequence[T], call: Callable[[T], Any],
              shard: Callable[[Any], int] = int) -> list[Any]:
        """``call(item)`` for every item, in parallel; raises the first failure (after all
        finished), an unavailable shard (``shard(item)``) named as such."""
        if len(items) == 1:
            return [self._named(call, items[0], shard)]
        futures = [self._pool.submit(self._named, call, item, shard) for item in items]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    def _named(self, call: Callable[[T], Any], item: T, shard: Callable[[Any], int]) -> Any:
        try:
            return call(item)
        except OpError as e:
            named = shard_error(e, shard(item), len(self.shards))
            if named is e:
                raise
            raise named from e

    def _delete(self, request: pb.DeleteRequest) -> list[str]:
        """Deletes as one server does, all or nothing: first checks on every shard concerned
        that each named variable exists there (for a scope or a reset, that every shard
        answers), then sends the deletion to those shards in parallel.

        Raises ``NotFoundError`` (nothing removed) for a named variable no shard holds,
        ``UnavailableError`` naming a shard that is down (nothing removed when it was down
        before the deletion); a shard failing while the others delete raises its error
        saying what the others removed; ``InvalidArgumentError`` (nothing removed) when some
        parts of a partitioned variable would go and others stay, on any shards (a full name
        of parts deletes them all, as on one server)."""
        listed = self.list_variables()  # every shard answers, or none deletes
        parts = {v.name: v.save_slice.full_name if v.save_slice else None for v in listed}
        if request.names:
            names = list(dict.fromkeys(p for n in request.names for p in (
                [n] if n in parts else [m for m, f in parts.items() if f == n] or [n])))
            check_whole_parts(names, parts.items())
            self._locate([], names)
            groups: dict[int, list[str]] = {}
            for name in names:
                groups.setdefault(self.placement.shard_of(name), []).append(name)
            shards = sorted(groups)
            held = self._each(shards, lambda k: self._held(k, groups[k]))
            for k, held_k in zip(shards, held, strict=True):
                absent = [n for n in groups[k] if n not in held_k]
                if absent:
                    raise NotFoundError(f"Variable {clip(absent[0])} does not exist on the "
                                        "cluster (nothing removed)")
            calls = [(k, pb.DeleteRequest(names=groups[k])) for k in shards]
        else:
            scope = request.scope.rstrip("/")
            check_whole_parts([n for n in parts if not scope or n == scope or
                               n.startswith(scope + "/")], parts.items())
            calls = [(k, request) for k in range(len(self.shards))]
        lists = self._apply(calls, lambda c: Client._delete(self.shards[c[0]], c[1]),
                            lambda c: c[0], lambda _, names: names, "removed")
        removed = sorted(n for names in lists for n in names)
        self._unplace(removed)
        return removed

    def _unplace(self, names: list[str]) -> None:
        """Has shard 0's table forget deleted variables, giving back what it charged for them
        (and this client forgets where they were). A shard 0 that is down forgets them anyway:
        its table starts empty when it restarts."""
        for name in names:
            self.placement.known.pop(name, None)
        if not names:
            return
        try:
            self._on_shard_0("Place", cpb.PlaceRequest(
                forget=True, variables=[cpb.Placement(name=n) for n in names]))
        except UnavailableError:
            pass

    def _apply(self, items: Sequence[T], call: Callable[[T], Any], shard: Callable[[T], int],
               changed: Callable[[T, Any], list[str]], verb: str) -> list[Any]:
        """:meth:`_each` for the second phase of an all-or-nothing request (checked on every
        shard first): a shard failing now (it crashed) raises its error saying which
        variables the other shards ``verb`` (``changed(item, result)``)."""
        futures = [self._pool.submit(self._named, call, item, shard) for item in items]
        errors = [f.exception() for f in futures]
        failed = next((e for e in errors if e is not None), None)
        if failed is None:
            return [f.result() for f in futures]
        done = sorted(n for item, f, e in zip(items, futures, errors, strict=True)
                      if e is None for n in changed(item, f.result()))
        if not done or not isinstance(failed, OpError):
            raise failed
        raise type(failed)(f"{failed.message} (the other shards {verb} {len(done)} "
                           f"variables: {clip(', '.join(done))})") from failed

    def _held(self, k: int, names: list[str]) -> set[str]:
        """Which of ``names`` shard ``k`` holds."""
        transport = self.shards[k].transport
        held = transport.call(cpb_grpc.ClusterServiceStub(transport.channel).Held,
                              cpb.HeldRequest(names=names), idempotent=True)
        return {v.name for v in held.variables}

    def list_variables(self, scope: str | None = None) -> list[VariableInfo]:
        """Variables on every shard (all, or those under ``scope``), sorted by name."""
        lists = self._each(list(range(len(self.shards))),
                           lambda k: Client.list_variables(self.shards[k], scope))
        return sorted((v for vs in lists for v in vs), key=lambda v: v.name)

    def wait_initialized(self, names: Sequence[str] = (), timeout: float = 60.0) -> list[str]:
        """Blocks until the named variables (all when empty) are initialized on their shards
        or ``timeout`` seconds pass; returns the names still uninitialized."""
        if not names:
            pending = self._each(list(range(len(self.shards))), lambda k: Client.wait_initialized(
                self.shards[k], [], timeout))
            return [name for names_k in pending for name in names_k]
        deadline = time.monotonic() + timeout
        while True:
            # A name no shard holds yet (the chief has not created it) is looked up again
            # every PLACEMENT_POLL seconds: it appears on whichever shard it is placed on.
            self._locate([], list(names))
            unplaced = [n for n in names if n not in self.placement.known]
            remaining = max(0.0, deadline - time.monotonic())
            wait = min(remaining, PLACEMENT_POLL) if unplaced else remaining
            groups: dict[int, list[str]] = {}
            for name in names:
                if name in self.placement.known:
                    groups.setdefault(self.placement.known[name], []).append(name)
            jobs = [(k, groups[k], wait) for k in sorted(groups)]
            pending = self._each(jobs, lambda job: Client.wait_initialized(
                self.shards[job[0]], job[1], job[2]), shard=lambda job: job[0])
            if not groups:
                time.sleep(wait)
            left = [name for names_k in pending for name in names_k] + unplaced
            if not left or time.monotonic() >= deadline:
                return left

    def cluster_status(self) -> list[ShardStatus]:
        """Every shard's address, health and status (or the error asking for it); a shard
        that is down does not keep the others from answering."""
        def status(k: int) -> ShardStatus:
            shard = self.shards[k]
            try:
                health = shard.transport.call(
                    health_pb2_grpc.HealthStub(shard.transport.channel).Check,
                    health_pb2.HealthCheckRequest(), idempotent=True)
                return ShardStatus(k, self.shard_addresses[k],
                                   health_pb2.HealthCheckResponse.ServingStatus.Name(
                                       health.status), Client.status(shard))
            except OpError as e:
                return ShardStatus(k, self.shard_addresses[k], "UNAVAILABLE", e)
        return self._each(list(range(len(self.shards))), status)

    # --- checkpoints ----------------------------------------------------------------------

    def save_checkpoint(self, prefix: str, var_list: Any = None, global_step: Any = None,
                        max_to_keep: int | None = 5,
                        progress: Callable[[pb.CheckpointProgress], None] | None = None, *,
                        latest_filename: str | None = None, write_state: bool = True,
                        saver: str = "", keep_checkpoint_every_n_hours: float = 0.0
                        ) -> pb.CheckpointProgress:
        """Writes one checkpoint of the whole cluster in TensorFlow's sharded layout: every
        shard writes its variables in parallel, then shard 0 merges the parts into one index
        and records the checkpoint with the saver's retention (see ``Client.save``); returns
        the last progress message. A shard failing fails the save and leaves the previous
        checkpoint as it was."""
        entries = checkpoint_entries(var_list)
        if entries:
            self._locate([], [e.variable for e in entries])
            by_shard: dict[int, list[pb.CheckpointEntry]] = {}
            for e in entries:
                by_shard.setdefault(self.placement.shard_of(e.variable), []).append(e)
        else:
            lists = self._each(list(range(len(self.shards))),
                               lambda k: Client.list_variables(self.shards[k]))
            by_shard = {k: [_own_entry(v) for v in vs] for k, vs in enumerate(lists) if vs}
            if not by_shard:  # shard 0 says so, as a single server does
                return super().save_checkpoint(
                    prefix, var_list, global_step, max_to_keep, progress,
                    latest_filename=latest_filename, write_state=write_state, saver=saver,
                    keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours)
        step = None if global_step is None else operator.index(global_step)
        named = prefix if step is None else f"{prefix}-{step}"
        token = secrets.token_hex(4)
        # Every shard writes a part, empty or not: data file I holds shard I's variables, which
        # a shard restarted with --restore finds again.
        shards = list(range(len(self.shards)))
        by_shard = {k: by_shard.get(k, []) for k in shards}
        parts = [f"{named}{TEMP_MARK}{token}_part-{i:05d}-of-{len(shards):05d}"
                 for i in range(len(shards))]
        part_of = dict(zip(shards, parts, strict=True))

        def save_part(k: int) -> cpb.SavePartResponse:
            transport = self.shards[k].transport
            return transport.call(cpb_grpc.ClusterServiceStub(transport.channel).SavePart,
                                  cpb.SavePartRequest(part_prefix=part_of[k],
                                                      entries=by_shard[k]))
        try:
            written = self._each(shards, save_part)
            reply = self._on_shard_0("CommitParts", cpb.CommitPartsRequest(
                part_prefixes=parts, prefix=prefix, has_global_step=step is not None,
                global_step=step or 0, max_to_keep=operator.index(max_to_keep or 0),
                saver=saver, latest_filename=latest_filename or "",
                skip_state=not write_state,
                keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours))
        except OpError:
            with contextlib.suppress(OpError):
                self.transport.call(self.placement_stub.CommitParts, cpb.CommitPartsRequest(
                    part_prefixes=parts, abort=True))
            raise
        total = sum(w.bytes_written for w in written)
        count = sum(len(e) for e in by_shard.values())
        done = pb.CheckpointProgress(bytes_done=total, bytes_total=total, tensors_done=count,
                                     tensors_total=count, path=reply.path, done=True,
                                     last_checkpoints=reply.last_checkpoints)
        if progress is not None:
            progress(done)
        return done

    def restore(self, prefix: str, var_list: Any = None,
                progress: Callable[[pb.CheckpointProgress], None] | None = None) -> str:
        """Restores a checkpoint (any layout, any number of shards that wrote it) onto this
        cluster: each variable goes to the shard the placement gives it; returns the path."""
        keys = self._on_shard_0("CheckpointKeys", cpb.CheckpointKeysRequest(prefix=prefix),
                                idempotent=True)
        entries = checkpoint_entries(var_list) or self._everything(keys.keys)
        found = {k.key: k for k in keys.keys}
        self._locate([pb.VariableSpec(name=e.variable, dtype=found[e.key].dtype,
                                      shape=pb.Shape(dim=e.slice.shape if e.HasField("slice")
                                                     else found[e.key].shape))
                      for e in entries if e.key in found], [e.variable for e in entries])
        by_shard: dict[int, list[pb.CheckpointEntry]] = {}
        for e in entries:
            by_shard.setdefault(self.placement.shard_of(e.variable), []).append(e)
        shards = sorted(by_shard)

        def restore(k: int, verify_only: bool = False) -> pb.CheckpointProgress:
            shard = self.shards[k]
            return Client._checkpoint_call(shard, shard.stub.Restore, pb.RestoreRequest(
                prefix=keys.path, entries=by_shard[k], verify_only=verify_only),
                None if verify_only else progress)
        if len(shards) > 1:  # every shard checks its part (checksums too) before any changes
            self._each(shards, lambda k: restore(k, True))
        self._apply(shards, restore, lambda k: k,
                    lambda k, _: [e.variable for e in by_shard[k]], "restored")
        return keys.path if prefix == "latest" else prefix

    def _everything(self, keys: Sequence[cpb.CheckpointKey]) -> list[pb.CheckpointEntry]:
        """Every key of a checkpoint as entries, as a single server's restore of everything
        takes them: into the cluster's parts of a partitioned variable of that name
        (re-sliced), else the variable of that name, else, for a tensor stored in slices,
        new parts ``KEY/part_I`` (TensorFlow's names, in offset order)."""
        held = {v.name: v for v in self.list_variables()}
        parts: dict[str, list[pb.CheckpointEntry]] = {}
        for info in held.values():
            if info.save_slice is not None:
                parts.setdefault(info.save_slice.full_name, []).append(_own_entry(info))
        entries: list[pb.CheckpointEntry] = []
        for k in keys:
            if k.key not in held and k.key in parts:
                entries += parts[k.key]
            elif k.key in held or not k.slices:
                entries.append(pb.CheckpointEntry(key=k.key, variable=k.key))
            else:
                entries += [pb.CheckpointEntry(key=k.key, variable=f"{k.key}/part_{i}", slice=s)
                            for i, s in enumerate(k.slices)]
        return entries


def _own_entry(info: VariableInfo) -> pb.CheckpointEntry:
    """A variable saved under its own name, a part of a partitioned variable as its slice
    of the full name's tensor."""
    part = info.save_slice
    return pb.CheckpointEntry(key=part.full_name if part else info.name, variable=info.name,
                              slice=part)


def connect_cluster(client: Client, *, token: str | None = None, tls: Any = None,
                    timeout: float | None = None) -> Client:
    """``client`` itself for a single server; a :class:`ClusterClient` over every shard
    (with the same credentials) when the server it reached is one shard of several
    (``client`` is closed then)."""
    shards = cluster_addresses(client)
    if len(shards) <= 1:
        return client
    cluster = ClusterClient(shards, token=token, tls=tls, timeout=timeout)
    client.close()
    return cluster


def connect(address: str | None = None, *, token: str | None = None, tls: Any = None,
            timeout: float | None = None) -> Client:
    """Connects to a server (``address``, else ``VARSTORE_ADDRESS``, else TF_CONFIG's first ps
    task, else localhost:7011); to every shard when that server is one of a cluster
    (a :class:`ClusterClient`).

    Raises ``UnavailableError`` naming the address and the likely cause: a refused connection
    or an unknown host at once, a server that accepts connections but does not answer after
    ``timeout`` seconds (default 10); ``InvalidArgumentError`` for a malformed address.
    """
    client = Client(address, token=token, tls=tls, timeout=timeout)
    try:
        client.transport.wait_ready()
        return connect_cluster(client, token=token, tls=tls, timeout=timeout)
    except BaseException:
        client.close()
        raise
