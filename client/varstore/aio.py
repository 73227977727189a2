"""The asyncio client: the eager API with awaitable calls, many in flight on one channel.

    import varstore as vs
    import varstore.aio

    client = await varstore.aio.connect("localhost:7011")
    with client.variable_scope("layer1"):
        w = await client.get_variable("w", [10], initializer=vs.zeros_initializer)
    step = await client.get_variable("step", [], dtype=vs.int64)
    await asyncio.gather(*(step.assign_add(1) for _ in range(100)))   # pipelined
    print(await w.numpy(), await step.numpy())
    await client.close()

Names, scopes and reuse are those of the blocking client (the same code): scopes are plain
``with`` blocks, and a call resolves its names when it is made, not when it is awaited.
Connected to one shard of a cluster, ``connect`` returns a :class:`ClusterClient`, which
routes every request as the blocking cluster client does (:mod:`varstore.placement`): one
request per shard, concurrently, in stages when a value crosses shards.
Variable handles are :class:`RemoteVariable` objects: the methods of
:class:`varstore.RemoteVariable`, returning awaitables. Arrays handed to a call must not change
until it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from varstore.client import RUN_STREAM_METHOD, ClientBase, VariableInfo
from varstore.cluster import reachable_shards
from varstore.common import codec
from varstore.common.errors import OpError, UnimplementedError
from varstore.common.protocol import ROUTED_METADATA
from varstore.handles import Reply, Steps, VariableHandle, pull_steps, push_steps, text
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
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.request import RequestBuilder
from varstore.transport import Transport, is_read_only, resolve_address

__all__ = ["Client", "ClusterClient", "RemoteVariable", "connect"]

T = TypeVar("T")


class RemoteVariable(VariableHandle):
    """A handle to a variable on the server: the methods of :class:`varstore.RemoteVariable`,
    each returning an awaitable of one atomic round trip (started when called)."""

    _shown_as = "varstore.aio.RemoteVariable"

    def numpy(self) -> Awaitable[np.ndarray]:
        """The current value; raises ``FailedPreconditionError`` if uninitialized."""
        return self._client._drive(self._read_steps())

    read_value = numpy
    value = numpy

    def assign(self, value: Any) -> Awaitable[RemoteVariable]:
        """Replaces the value (same shape and dtype); returns this handle."""
        return self._client._drive(self._assign_steps("assign", value))

    def assign_add(self, delta: Any) -> Awaitable[RemoteVariable]:
        """Adds ``delta`` atomically; returns this handle."""
        return self._client._drive(self._assign_steps("assign_add", delta))

    def assign_sub(self, delta: Any) -> Awaitable[RemoteVariable]:
        """Subtracts ``delta`` atomically; returns this handle."""
        return self._client._drive(self._assign_steps("assign_sub", delta))

    def scatter_add(self, indices: Any, updates: Any) -> Awaitable[RemoteVariable]:
        """Adds ``updates`` to rows ``indices`` (duplicates accumulate); returns this handle."""
        return self._client._drive(self._scatter_steps("scatter_add", indices, updates))

    def scatter_sub(self, indices: Any, updates: Any) -> Awaitable[RemoteVariable]:
        """Subtracts ``updates`` from rows ``indices``; returns this handle."""
        return self._client._drive(self._scatter_steps("scatter_sub", indices, updates))

    def scatter_update(self, indices: Any, updates: Any) -> Awaitable[RemoteVariable]:
        """Replaces rows ``indices`` with ``updates``; returns this handle."""
        return self._client._drive(self._scatter_steps("scatter_update", indices, updates))

    def gather(self, indices: Any) -> Awaitable[np.ndarray]:
        """Rows ``indices`` of the value, read atomically."""
        return self._client._drive(self._gather_steps(indices))

    def is_initialized(self) -> Awaitable[bool]:
        """Whether the variable holds a value on the server."""
        return self._client._drive(self._is_initialized_steps())


class Client(ClientBase):
    """An asyncio connection to a varstore server, with its own TF-style naming state.

    ``get_variable``, ``Variable``, ``pull``, ``push`` and every variable method return
    awaitables; use as ``async with`` or ``await client.close()``.
    """

    handle_type = RemoteVariable

    def __init__(self, address: str | None = None, *, token: str | None = None,
                 tls: Any = None, timeout: float | None = None) -> None:
        super().__init__()
        self.address, source = resolve_address(address)
        self.transport = Transport(self.address, token=token, tls=tls, timeout=timeout,
                                   aio=True, source=source)
        self.stub = pb_grpc.VariableServiceStub(self.transport.channel)
        self.run_stream = self.transport.channel.stream_stream(
            RUN_STREAM_METHOD, request_serializer=codec.serialize_chunk,
            response_deserializer=codec.parse_chunk)

    async def close(self) -> None:
        """Closes the channel (calls in flight are cancelled)."""
        await self.transport.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def Variable(self, initial_value: Any, name: str | None = None,  # noqa: N802
                 dtype: Any = None, trainable: bool = True) -> Awaitable[RemoteVariable]:
        """:meth:`varstore.Client.Variable`, awaitable; the name is chosen when called."""
        return self._drive(self._variable_steps(initial_value, name, dtype, trainable))

    def get_variable(self, name: str, shape: Sequence[int] | None = None, dtype: Any = None,
                     initializer: Any = None, trainable: bool = True, *,
                     partitioner: Any = None) -> Awaitable[Any]:
        """:meth:`varstore.Client.get_variable`, awaitable (partitioned variables included);
        the name resolves in the scopes open when called. Raises ``ValueError`` for the
        reuse and partitioning mistakes TF rejects."""
        return self._drive(self._get_variable_steps(name, shape, dtype, initializer, trainable,
                                                    partitioner))

    def pull(self, variables: Iterable[RemoteVariable]) -> Awaitable[list[np.ndarray]]:
        """The values of ``variables``, read in one round trip."""
        return self._drive(pull_steps(variables))

    def push(self, values: Mapping[RemoteVariable, Any]) -> Awaitable[None]:
        """Assigns every ``{variable: value}`` in one round trip, atomically per variable."""
        return self._drive(push_steps(values))

    async def run(self, builder: RequestBuilder, expect_bytes: int = 0) -> Reply:
        """Sends one request; returns the fetched arrays and the variables' infos.

        Requests or expected responses past one message go through the chunked stream.
        Raises ``varstore.errors`` classes for failed calls.
        """
        stream = max(builder.payload_bytes(), expect_bytes) > codec.STREAM_THRESHOLD
        request, payloads = builder.build(stream)
        if not stream:
            response = await self.transport.invoke_async(
                lambda **options: self.stub.Run(request, **options),
                idempotent=is_read_only(request))
            return [codec.tensor_from_proto(t) for t in response.values], \
                list(response.variables)

        async def pull(**options: Any) -> tuple[Any, list[Any]]:
            chunks = codec.split_chunks(pb.RunChunk(request=request), payloads)
            reader = codec.ChunkReader("response", 1 << 62)
            async for chunk in self.run_stream(chunks, **options):
                reader.feed(chunk)
            return reader.result()
        header, arrays = await self.transport.invoke_async(pull,
                                                           idempotent=is_read_only(request))
        values = [a if a is not None else codec.tensor_from_proto(t)
                  for t, a in zip(header.values, arrays, strict=True)]
        return values, list(header.variables)

    def _drive(self, steps: Steps) -> Awaitable[Any]:
        """Starts ``steps`` now, so that names resolve in the scopes open at the call; the
        awaitable returned sends its requests."""
        try:
            first = next(steps)
        except StopIteration as done:
            return _completed(done.value)
        return self._finish(steps, first)

    async def _finish(self, steps: Steps, request: tuple[RequestBuilder, int]) -> Any:
        try:
            while True:
                try:
                    reply = await self.run(*request)
                except OpError as e:
                    request = steps.throw(e)
                else:
                    request = steps.send(reply)
        except StopIteration as done:
            return done.value

    async def list_variables(self, scope: str | None = None) -> list[VariableInfo]:
        """Variables on the server (all, or those under ``scope``), sorted by name."""
        request = pb.ListVariablesRequest(scope=text(scope, "scope"))
        response = await self.transport.invoke_async(
            lambda **options: self.stub.ListVariables(request, **options), idempotent=True)
        return [VariableInfo.from_proto(v) for v in response.variables]


class ClusterClient(Client):
    """An asyncio :class:`Client` over every shard of a cluster (``shards[k]`` is task k's
    address), routing as ``varstore.cluster.ClusterClient`` does. Requests touching a shard
    that is down raise ``UnavailableError`` naming the shard; the others keep serving."""

    def __init__(self, shards: Sequence[str], *, token: str | None = None, tls: Any = None,
                 timeout: float | None = None) -> None:
        super().__init__(shards[0], token=token, tls=tls, timeout=timeout)
        self.shard_addresses = list(shards)
        self.shards: list[Client] = [self] + [
            Client(a, token=token, tls=tls, timeout=timeout) for a in shards[1:]]
        for shard in self.shards:
            shard.transport.metadata += (ROUTED_METADATA,)
        self.placement = Placement(len(shards))
        self.placement_stub = cpb_grpc.ClusterServiceStub(self.transport.channel)

    async def __aenter__(self) -> ClusterClient:
        return self

    async def close(self) -> None:
        """Closes every shard's channel."""
        for shard in self.shards[1:]:
            await Client.close(shard)
        await super().close()

    def device(self, device: str) -> contextlib.AbstractContextManager[None]:
        """Pins the variables that calls awaited inside create to one shard, as
        ``tf.device("/job:ps/task:K")`` does (:meth:`Placement.device`). Raises
        ``ValueError`` for a task outside the cluster."""
        return self.placement.device(device)

    async def shard_of(self, name: str) -> int:
        """The shard holding variable ``name`` (shard 0 for a name no shard holds)."""
        await self._route(self.placement.locate([], [name]))
        return self.placement.shard_of(name)

    async def run(self, builder: RequestBuilder, expect_bytes: int = 0) -> Reply:
        """Sends the request as one request per shard it touches, concurrently, in as many
        stages as values crossing shards need; returns what one server would return."""
        return await self._route(self.placement.run(builder, expect_bytes))

    async def _route(self, steps: ClusterSteps[T]) -> T:
        answer: Any = None
        error: OpError | None = None
        while True:
            try:
                call = steps.send(answer) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            try:
                answer, error = await self._perform(call), None
            except OpError as e:
                answer, error = None, e

    async def _perform(self, call: Place | Find | RunParts) -> Any:
        if isinstance(call, Place):
            try:
                return await self.transport.invoke_async(
                    lambda **options: self.placement_stub.Place(call.request, **options),
                    idempotent=True)
            except OpError as e:
                named = shard_0_error(e, "Place", len(self.shards))
                raise named from (e if named is not e else None)
        if isinstance(call, Find):
            request = cpb.HeldRequest(names=call.names)

            async def find(k: int) -> dict[str, int]:
                transport = self.shards[k].transport
                stub = cpb_grpc.ClusterServiceStub(transport.channel)
                held = await transport.invoke_async(
                    lambda **options: stub.Held(request, **options), idempotent=True)
                return {v.name: v.nbytes for v in held.variables}
            return await self._each(list(range(len(self.shards))), find)
        return await self._each(call.parts, lambda p: Client.run(self.shards[p[0]], p[1], p[2]),
                                shard=lambda p: p[0])

    async def _each(self, items: Sequence[Any], call: Callable[[Any], Awaitable[Any]],
                    shard: Callable[[Any], int] = int) -> list[Any]:
        """``await call(item)`` for every item, concurrently; raises the first failure
        (after all finished), an unavailable shard (``shard(item)``) named as such."""
        results = await asyncio.gather(*(call(item) for item in items), return_exceptions=True)
        for item, result in zip(items, results, strict=True):
            if isinstance(result, OpError):
                named = shard_error(result, shard(item), len(self.shards))
                raise named from (result if named is not result else None)
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def list_variables(self, scope: str | None = None) -> list[VariableInfo]:
        """Variables on every shard (all, or those under ``scope``), sorted by name."""
        lists = await self._each(list(range(len(self.shards))),
                                 lambda k: Client.list_variables(self.shards[k], scope))
        return sorted((v for vs in lists for v in vs), key=lambda v: v.name)


async def _completed(value: Any) -> Any:
    return value


async def connect(address: str | None = None, *, token: str | None = None, tls: Any = None,
                  timeout: float | None = None) -> Client:
    """Connects to a server (``address``, else ``VARSTORE_ADDRESS``, else TF_CONFIG's first ps
    task, else localhost:7011);
    to every shard when that server is one of a cluster (a :class:`ClusterClient`).

    Raises ``UnavailableError`` naming the address and the likely cause (see
    :meth:`varstore.transport.Transport.wait_ready`), ``InvalidArgumentError`` for a malformed
    address, and the error of a failed ``ClusterInfo`` call (``UnauthenticatedError``...): a
    server that would not say whether it is a shard is not taken for a single server.
    """
    client = Client(address, token=token, tls=tls, timeout=timeout)
    try:
        await client.transport.wait_ready_async()
        stub = cpb_grpc.ClusterServiceStub(client.transport.channel)
        try:
            info = await client.transport.invoke_async(
                lambda **options: stub.ClusterInfo(cpb.ClusterInfoRequest(), **options),
                idempotent=True)
        except UnimplementedError:  # a server without ClusterService is one server
            return client
        shards = reachable_shards(client.address, info)
    except BaseException:
        await client.close()
        raise
    if len(shards) <= 1:
        return client
    await client.close()
    return ClusterClient(shards, token=token, tls=tls, timeout=timeout)
