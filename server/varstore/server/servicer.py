"""The gRPC servicer: protos in, store and checkpoint calls, protos out.

Errors raised by the store, executor or checkpoint code are varstore's ``OpError`` classes;
:mod:`varstore.server.status` maps them to gRPC statuses in one place.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, closing, nullcontext
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from varstore.common import __version__, codec
from varstore.common.errors import FailedPreconditionError, InvalidArgumentError, clip
from varstore.common.protocol import MAX_MESSAGE_BYTES, ROUTED_METADATA
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.server import wire
from varstore.server.auth import TokenAuthInterceptor, read_only_refusal
from varstore.server.budget import Lease
from varstore.server.capacity import Capacity
from varstore.server.checkpoint_list import list_checkpoints
from varstore.server.checkpoint_progress import Progress, Saved, progress_stream
from varstore.server.executor import Executor, Graph
from varstore.server.handlers import method_handler
from varstore.server.load import LoadMeter
from varstore.server.ops import READER_OPS
from varstore.server.placement_guard import CreateGuard
from varstore.server.retention import client_saver
from varstore.server.slices import Entry
from varstore.server.store import VariableStore
from varstore.server.waits import Waiter, client_duration

log = logging.getLogger(__name__)


# Small requests that repeat byte for byte (a step counter's increment, a poll) reuse the graph
# built and checked for their first call: that is most of the Python a small op costs.
GRAPH_CACHE_MAX_BYTES = 4096
GRAPH_CACHE_ENTRIES = 512
# Memory a parsed node takes in the server (its NodeDef, tuples and attribute dict), charged
# per node of a request besides the request's bytes.
NODE_BYTES = 512


def entry_map(entries: Iterable[pb.CheckpointEntry], save: bool) -> list[Entry] | None:
    """A request's checkpoint entries (see :func:`varstore.server.wire.entries_from_proto`);
    None when there are none. Raises ``InvalidArgumentError``."""
    return wire.entries_from_proto(entries, save) or None


def progress_message(p: Progress, saved: Saved | None = None) -> pb.CheckpointProgress:
    """A ``CheckpointProgress`` message; with ``saved``, the last one (path and the saver's
    checkpoints)."""
    message = pb.CheckpointProgress(bytes_done=p.bytes_done, bytes_total=p.bytes_total,
                                    tensors_done=p.tensors_done, tensors_total=p.tensors_total)
    if saved is not None:
        message.path = saved.path
        message.done = True
        message.last_checkpoints.extend(saved.last_checkpoints)
    return message


class ClientTracker:
    """Counts distinct peers seen recently, for ``varstore status``."""

    WINDOW_SECONDS = 60.0

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def saw(self, context: grpc.ServicerContext) -> None:
        """Records a call from the context's peer."""
        peer = context.peer().rsplit(":", 1)[0]
        with self._lock:
            self._seen[peer] = time.monotonic()

    def count(self) -> int:
        """Peers that called within the window."""
        cutoff = time.monotonic() - self.WINDOW_SECONDS
        with self._lock:
            self._seen = {p: t for p, t in self._seen.items() if t >= cutoff}
            return len(self._seen)


class VariableServicer(pb_grpc.VariableServiceServicer):
    """Implements ``varstore.v1.VariableService`` over a store and a checkpoint manager."""

    def __init__(self, store: VariableStore, executor: Executor, checkpoints: Any,
                 max_request_bytes: int, capacity: Capacity,
                 load: LoadMeter | None = None, shards: int = 1,
                 guard: CreateGuard | None = None,
                 auth: TokenAuthInterceptor | None = None) -> None:
        """``shards``: the size of the cluster this server is a shard of (1: none);
        ``guard``: its check of creates with shard 0's placement table; ``auth``: the
        server's tokens (a read-only token's requests may only read)."""
        self.shards = shards
        self.guard = guard
        self.auth = auth
        self.store = store
        self.load = load
        self.budget = store.budget
        self.capacity = capacity
        self.executor = executor
        self.checkpoints = checkpoints
        self.max_request_bytes = max_request_bytes
        self.started = time.time()
        self.clients = ClientTracker()
        self._graphs: dict[bytes, Graph] = {}

    def _lease(self, context: grpc.ServicerContext) -> Lease:
        """A lease on the memory budget that gives everything back when the call ends
        (after its reply was sent, or when it failed or was cancelled)."""
        lease = self.budget.lease()
        if not context.add_callback(lease.close):
            lease.close()
        return lease

    def Run(self, raw: bytes, context: grpc.ServicerContext) -> pb.RunResponse:
        self.clients.saw(context)
        lease = self._lease(context)
        lease.charge_request(len(raw), "a Run request")
        graph = self._graph(raw, lease)
        self._check_routed(graph, context)
        read_only = self._read_only(graph, context)
        # A unary Run is a short call until it waits (sync_wait, a variable's lock, a
        # variable another request creates) or its nodes took long: then it holds a slot of
        # the waits' pool.
        peer = context.peer()
        waiter = Waiter.for_call(context, self.store.stopping,
                                 lambda: self.capacity.waits.held_while(peer))
        with closing(waiter), self._creating(graph, read_only), \
                waiter.waiting() if graph.blocking else nullcontext():
            result = self.executor.run(graph, waiter, max_reply_bytes=MAX_MESSAGE_BYTES,
                                       lease=lease, reply_streamed=False, read_only=read_only)
        response, _ = wire.result_to_proto(result, stream=False)
        return response

    def _check_routed(self, graph: Graph, context: grpc.ServicerContext) -> None:
        """On a shard of a cluster of several: raises ``FailedPreconditionError`` when a
        request that does not come from a cluster client (``ROUTED_METADATA``) would create a
        variable, which shard 0's placement table may have put on another shard."""
        if self._routed(context):
            return
        for spec in graph.variables:
            if not spec.bind_only and self.store.find(spec.name) is None:
                raise FailedPreconditionError(
                    f"cannot create variable {clip(spec.name)}: this server is one shard of a "
                    f"cluster of {self.shards}, where shard 0 places every variable; connect "
                    "with varstore.connect, which routes across the "
                    "shards")

    def _read_only(self, graph: Graph, context: grpc.ServicerContext) -> bool:
        """Whether the call's token is read-only; then raises ``PermissionDeniedError`` for a
        node of ``graph`` that may change something (not in ``READER_OPS``; the executor
        refuses its creates)."""
        if self.auth is None or not self.auth.read_only(context):
            return False
        writing = next((n.op for n in graph.nodes if n.op not in READER_OPS), None)
        if writing is not None:
            raise read_only_refusal(f"op {clip(writing)!r}")
        return True

    def _routed(self, context: grpc.ServicerContext) -> bool:
        """Whether this server is no shard of several, or the call comes from a cluster
        client (``ROUTED_METADATA``)."""
        return self.shards == 1 or ROUTED_METADATA in (context.invocation_metadata() or ())

    def _creating(self, graph: Graph, read_only: bool) -> AbstractContextManager[None]:
        """On a shard of a cluster of several, the variables ``graph`` creates confirmed with
        shard 0's table and pending meanwhile (:meth:`CreateGuard.creating`, which raises
        ``AbortedError`` for one the table does not place here); nothing for a
        ``read_only`` call, which creates nothing."""
        if self.guard is None or read_only:
            return nullcontext()
        return self.guard.creating(sorted({spec.name for spec in graph.variables
                                           if not spec.bind_only
                                           and self.store.find(spec.name) is None}))

    def _waiter(self, context: grpc.ServicerContext) -> Waiter:
        return Waiter.for_call(context, self.store.stopping)

    def _graph(self, raw: bytes, lease: Lease) -> Graph:
        graph = self._graphs.get(raw)
        if graph is None:
            lease.charge(len(raw), "parsing a Run request")
            try:
                header, tensors = codec.parse_run_request(raw)
            except DecodeError:
                raise InvalidArgumentError(f"malformed Run request ({len(raw)} bytes)") from None
            lease.charge(len(header.nodes) * NODE_BYTES,
                         f"a graph of {len(header.nodes)} nodes")
            graph = wire.graph_from_proto(header, [codec.tensor_from_proto(t, charge=lease.charge)
                                                   for t in tensors])
            self.executor.validate(graph)
            if len(raw) > GRAPH_CACHE_MAX_BYTES:
                graph.owned = True
            else:
                for array in graph.tensors:
                    array.flags.writeable = False  # later calls share it: kernels only read it
                if len(self._graphs) >= GRAPH_CACHE_ENTRIES:
                    self._graphs.clear()
                self._graphs[raw] = graph
        return graph

    def RunStream(self, request_iterator: Iterator[pb.RunChunk],
                  context: grpc.ServicerContext) -> Iterator[pb.RunChunk | bytes]:
        self.clients.saw(context)
        lease = self._lease(context)
        header, streamed = codec.join_chunks(request_iterator, "request",
                                             self.max_request_bytes, lease.charge)
        lease.charge(len(header.nodes) * NODE_BYTES, f"a graph of {len(header.nodes)} nodes")
        arrays = wire.tensors_from_proto(header.tensors, streamed, lease.charge)
        graph = wire.graph_from_proto(header, arrays)
        graph.owned = True
        self._check_routed(graph, context)
        read_only = self._read_only(graph, context)
        with self._creating(graph, read_only):
            result = self.executor.run(graph, self._waiter(context), lease=lease,
                                       reply_streamed=True, read_only=read_only)
        response, payloads = wire.result_to_proto(result, stream=True)
        # The request's tensors are garbage by now: free them before the response streams.
        del graph, streamed
        yield from codec.split_chunks(pb.RunChunk(response=response), payloads)

    def ListVariables(self, request: pb.ListVariablesRequest,
                      context: grpc.ServicerContext) -> pb.ListVariablesResponse:
        return pb.ListVariablesResponse(
            variables=[wire.variable_info(v) for v in self.store.variables(request.scope)])

    def Delete(self, request: pb.DeleteRequest,
               context: grpc.ServicerContext) -> pb.DeleteResponse:
        given = [bool(request.names), bool(request.scope), request.all]
        if sum(given) != 1:
            raise InvalidArgumentError("Delete needs exactly one of names, scope and all")
        if request.all:
            deleted = self.store.delete(scope="")
        elif request.scope:
            deleted = self.store.delete(scope=request.scope)
        else:
            deleted = self.store.delete(list(request.names))
        if deleted:
            log.info("deleted %d variable(s) at the request of %s", len(deleted), context.peer())
        return pb.DeleteResponse(deleted=deleted)

    def WaitInitialized(self, request: pb.WaitInitializedRequest,
                        context: grpc.ServicerContext) -> pb.WaitInitializedResponse:
        timeout = client_duration(request.timeout_seconds, "timeout_seconds")
        pending = self.store.wait_initialized(list(request.names), timeout,
                                              self._waiter(context))
        return pb.WaitInitializedResponse(uninitialized=pending)

    def Save(self, request: pb.SaveRequest,
             context: grpc.ServicerContext) -> Iterator[pb.CheckpointProgress]:
        if self.shards > 1 and ROUTED_METADATA not in (context.invocation_metadata() or ()):
            # Its checkpoint would hold this shard's variables only, and pass for the
            # cluster's; a cluster saves every shard's part (cluster_service), and start-up
            # clean-up counts on no other shard writing whole checkpoints (owns_leftover).
            raise FailedPreconditionError(
                f"cannot save on one shard of a cluster of {self.shards}: the checkpoint would "
                "hold this shard's variables only; connect with varstore.connect, which saves "
                "every shard's part of one checkpoint")
        entries = entry_map(request.entries, save=True)
        step = request.global_step if request.has_global_step else None
        saver = client_saver(request.saver)
        for progress, saved in progress_stream(lambda sink: self.checkpoints.save(
                request.prefix, entries, step, request.max_to_keep, sink, saver=saver,
                latest_filename=request.latest_filename, write_state=not request.skip_state,
                keep_every_hours=request.keep_checkpoint_every_n_hours)):
            yield progress_message(progress, saved)

    def Restore(self, request: pb.RestoreRequest,
                context: grpc.ServicerContext) -> Iterator[pb.CheckpointProgress]:
        if not request.verify_only and not self._routed(context):
            raise FailedPreconditionError(
                f"cannot restore on one shard of a cluster of {self.shards}: a restore creates "
                "variables, which shard 0 places across the shards; restore with "
                "varstore.connect (or `varstore restore`), which routes across the shards")
        entries = entry_map(request.entries, save=False)
        for progress, saved in progress_stream(lambda sink: Saved(
                self.checkpoints.restore(request.prefix, entries, sink, request.verify_only),
                [])):
            yield progress_message(progress, saved)

    def LatestCheckpoint(self, request: pb.LatestCheckpointRequest,
                         context: grpc.ServicerContext) -> pb.LatestCheckpointResponse:
        return pb.LatestCheckpointResponse(path=self.checkpoints.latest(
            request.directory, request.latest_filename) or "")

    def ListCheckpoints(self, request: pb.ListCheckpointsRequest,
                        context: grpc.ServicerContext) -> pb.ListCheckpointsResponse:
        found, truncated = list_checkpoints(self.checkpoints.folder, request.directory)
        return pb.ListCheckpointsResponse(checkpoints=[
            pb.CheckpointInfo(path=c.path, nbytes=c.nbytes, mtime=c.mtime, shards=c.shards,
                              latest=c.latest) for c in found], truncated=truncated)

    def Status(self, request: pb.StatusRequest,
               context: grpc.ServicerContext) -> pb.StatusResponse:
        last = self.checkpoints.last_saved
        response = pb.StatusResponse(
            version=__version__, uptime_seconds=time.time() - self.started,
            variable_count=len(self.store), bytes_stored=self.store.bytes_stored(),
            connected_clients=self.clients.count(),
            last_checkpoint=last[0] if last else "", last_checkpoint_time=last[1] if last else 0,
            checkpoint_dir=self.checkpoints.folder.root,
            max_memory=self.store.max_memory)
        if self.load is not None:
            load = self.load.load()
            response.requests_per_second = load.requests_per_second
            response.cpu_percent = load.cpu_percent
            response.requests_in_flight = load.in_flight
        return response


# RunStream's chunks go through varstore's own codec: the same protobuf bytes on the wire, but
# data chunks are framed from tensor memory and parsed as views, without protobuf's copies.
# Run's handler takes the request's bytes: it charges them to the memory budget before it
# parses them (with their tensors apart, codec.parse_run_request).
_CODECS = {"RunStream": (codec.parse_chunk, codec.serialize_chunk),
           "Run": (None, pb.RunResponse.SerializeToString)}


def add_to_server(servicer: VariableServicer, server: grpc.Server) -> None:
    """Registers ``servicer`` for every method of ``varstore.v1.VariableService`` (as the
    generated ``add_VariableServiceServicer_to_server`` does, with RunStream's fast codec)."""
    service = pb.DESCRIPTOR.services_by_name["VariableService"]
    handlers = {}
    for method in service.methods:
        deserialize, serialize = _CODECS.get(method.name, (
            getattr(pb, method.input_type.name).FromString,
            getattr(pb, method.output_type.name).SerializeToString))
        handlers[method.name] = method_handler(
            method.client_streaming, method.server_streaming, getattr(servicer, method.name),
            request_deserializer=deserialize, response_serializer=serialize)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # Registered methods skip gRPC's per-call lookup through the generic handlers.
    server.add_registered_method_handlers(service.full_name, handlers)
