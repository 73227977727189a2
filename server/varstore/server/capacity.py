"""What calls may hold, so that no client, signed in or not, can take the server's capacity.

The server answers calls on a fixed pool of threads. A short call (a unary ``Run``,
``Status``, a health check) gives its thread back within its own work. A long one holds a
thread for as long as its client makes it last: streams (``RunStream``, ``Save``,
``Restore``, reflection), waits (``WaitInitialized``, a ``Run`` of ``sync_wait``). So:

- long calls share :attr:`CapacityLimits.long_calls` slots, fewer than the pool's threads,
  and a long call beyond them is refused at once (RESOURCE_EXHAUSTED, "try again later",
  having changed nothing): the other threads always remain for short calls, the health check
  among them;
- the slots are split in two pools, so that no kind of call starves the other: *waits*
  (``WaitInitialized``, a ``Run`` of ``sync_wait``, health ``Watch`` streams, and a unary
  ``Run`` while it waits for a variable's lock or for a variable another request creates) and
  *transfers* (``RunStream``, ``Save``, ``Restore``, reflection); saves, restores and large
  pulls and pushes always find slots however many calls wait;
- one peer (a connection, as gRPC names it) holds at most half of each pool, so that a second
  client always finds slots of both kinds;
- a stream whose peer sends nothing (or reads nothing) for ``stream_idle_seconds``, or sends
  its request slower than ``stream_min_rate`` bytes per second on average, is cancelled;
- every request is read under that watchdog, unary ones included: gRPC's sync server hands a
  call to a thread as soon as its headers came, and a unary handler's thread then waits, with
  no timeout, for the whole request message, so a client sending it slowly (any client, with
  a token or on a server without any) would hold a thread per call until it held them all.
  Unary methods are therefore served as request streams read to their end before the method
  runs: a request the watchdog finds not all come at more than ``REQUEST_GRACE_ROUNDS`` of its
  rounds (a second, longer when the server is too busy to look) is a transfer, which
  takes a transfer slot (then the stream rules above apply) or, without a free one, is
  cancelled; a unary request of zero messages or of more than one is UNIMPLEMENTED, gRPC's
  status for a cardinality violation (gRPC's own unary handling answers zero messages so and
  ignores extra ones);
- health ``Watch`` streams are long calls like the others (they need a token when the server
  has a token file: only the health check is open); gRPC's non-blocking ``Watch`` would hold
  no thread, but grpc_health's ``set`` then waits for each watcher's send while holding the
  lock a cancelled watcher's callback needs, which can hang the server's shutdown;
- waits end when the call is cancelled or its deadline passes (:mod:`varstore.server.waits`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from varstore.common.errors import ResourceExhaustedError, UnimplementedError
from varstore.server.handlers import WrapperCache, behavior_of, method_handler, short_name

log = logging.getLogger(__name__)

# Unary methods that may last as long as their client asks.
LONG_UNARY_METHODS = frozenset({"/varstore.v1.VariableService/WaitInitialized"})
# Streaming methods that wait rather than transfer (their slots come from the waits' pool).
WAITING_STREAMS = frozenset({"/grpc.health.v1.Health/Watch"})
# How often stalled streams are looked for.
WATCHDOG_SECONDS = 0.1
# How many watchdog rounds may find a unary request still coming before it needs a transfer
# slot (a small one comes with its call's headers; a large one of an old client, up to
# 64 MiB, takes longer). Rounds, not seconds: a server too busy to hand a request over that
# is there is too busy to run its watchdog too.
REQUEST_GRACE_ROUNDS = 10
_NOTHING = object()


@dataclass
class CapacityLimits:
    """The limits of one server (see the module's docstring)."""

    long_calls: int
    stream_idle_seconds: float = 20.0
    stream_min_rate: int = 16 << 10

    @classmethod
    def for_workers(cls, workers: int, **overrides: Any) -> CapacityLimits:
        """Limits for a pool of ``workers`` threads: a quarter of them (at least two) are
        kept for short calls."""
        kept = max(2, workers // 4)
        if workers <= kept:
            raise ValueError(f"the server needs more than {kept} threads, got {workers}")
        return cls(long_calls=workers - kept, **overrides)


class Slots:
    """A count of things held at once, refused past ``limit``, and past ``share`` for one
    peer (None: ``limit``)."""

    def __init__(self, limit: int, what: str, share: int | None = None) -> None:
        self.limit = limit
        self.what = what
        self.share = limit if share is None else share
        self._held = 0
        self._by_peer: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """How many are held now."""
        return self._held

    def take(self, peer: str = "") -> None:
        """Takes a slot for ``peer``; raises ``ResourceExhaustedError`` ("try again later")
        when all are held, or ``peer``'s share."""
        with self._lock:
            if self._held >= self.limit:
                raise ResourceExhaustedError(
                    f"the server is serving {self.limit} {self.what} already; try again later")
            mine = self._by_peer.get(peer, 0)
            if mine >= self.share:
                raise ResourceExhaustedError(
                    f"this client holds {mine} {self.what} already, its share of the "
                    f"server's {self.limit}; try again later")
            self._held += 1
            self._by_peer[peer] = mine + 1

    def give_back(self, peer: str = "") -> None:
        """Returns a slot taken with :meth:`take`."""
        with self._lock:
            self._held -= 1
            mine = self._by_peer.pop(peer) - 1
            if mine:
                self._by_peer[peer] = mine

    @contextmanager
    def held_while(self, peer: str = "") -> Iterator[None]:
        """Holds a slot for the block; raises what :meth:`take` raises."""
        self.take(peer)
        try:
            yield
        finally:
            self.give_back(peer)


class Capacity:
    """The slots (:attr:`waits`, :attr:`transfers`) and the stream watchdog of one server."""

    def __init__(self, limits: CapacityLimits) -> None:
        self.limits = limits
        waits = max(1, limits.long_calls // 2)
        transfers = max(1, limits.long_calls - waits)
        self.waits = Slots(waits, "long calls that wait (waits, lock waits, watches)",
                           max(1, waits // 2))
        self.transfers = Slots(transfers, "long calls that stream (transfers, saves)",
                               max(1, transfers // 2))
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def close(self) -> None:
        """Stops the watchdog."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _watch(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.add(stream)
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run_watchdog, daemon=True,
                                                name="varstore-stream-watchdog")
                self._thread.start()

    def _unwatch(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)
            slots, stream.slots = stream.slots, None
        if slots is not None:
            slots.give_back(stream.peer)

    def _late(self, stream: _Stream) -> str | None:
        """Counts a watchdog round that finds a unary request still coming, and gives one that
        has been so past ``REQUEST_GRACE_ROUNDS`` a transfer slot; returns why its call is
        cancelled when none is free, else None."""
        if not stream.unary or stream.slots is not None or stream.waiting_since is None:
            return None
        stream.late_rounds += 1
        if stream.late_rounds <= REQUEST_GRACE_ROUNDS:
            return None
        with self._lock:
            if stream not in self._streams:  # its request came meanwhile
                return None
            try:
                self.transfers.take(stream.peer)
            except ResourceExhaustedError as e:
                return (f"its request had not all come after "
                        f"{stream.late_rounds * WATCHDOG_SECONDS:.1f}s, and {e.message}")
            stream.slots = self.transfers
        return None

    def _run_watchdog(self) -> None:
        while not self._closed.wait(WATCHDOG_SECONDS):
            now = time.monotonic()
            with self._lock:
                streams = list(self._streams)
            for stream in streams:
                reason = self._late(stream) or stream.stalled(now, self.limits)
                if reason is not None:
                    log.warning("cancelled %s from %s: %s", stream.method, stream.peer, reason)
                    self._unwatch(stream)
                    stream.context.cancel()


class _Stream:
    """One call's stream traffic: when it last waited for its peer, and how much came; for the
    request of a unary call (``unary``), the transfer slot it took for coming late, if any."""

    def __init__(self, method: str, context: grpc.ServicerContext, unary: bool = False) -> None:
        self.method = short_name(method)
        self.context = context
        self.unary = unary
        self.slots: Slots | None = None
        self.late_rounds = 0  # watchdog rounds that found the unary request still coming
        self.waiting_since: float | None = None
        self.waited = 0.0  # seconds spent waiting for request messages, before this wait
        self.received = 0
        self.reading = False

    @property
    def peer(self) -> str:
        """The call's peer (a connection), asked of gRPC when needed: most unary requests
        come at once and never need it."""
        return self.context.peer()

    def stalled(self, now: float, limits: CapacityLimits) -> str | None:
        """Why the stream should be cancelled, or None."""
        since = self.waiting_since
        if since is None:
            return None
        idle = now - since
        if idle > limits.stream_idle_seconds:
            side = "sent no message" if self.reading else "read no message"
            return f"its peer {side} for {idle:.1f}s"
        waited = self.waited + idle
        if self.reading and waited > limits.stream_idle_seconds \
                and self.received < limits.stream_min_rate * waited:
            return (f"its request came at {self.received / waited:.0f} bytes/s, under "
                    f"{limits.stream_min_rate}")
        return None

    def requests(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """``iterator``'s messages, timing each wait for the next one."""
        while True:
            self.reading = True
            self.waiting_since = time.monotonic()
            try:
                message = next(iterator)
            except StopIteration:
                return
            finally:
                self.waited += time.monotonic() - self.waiting_since
                self.waiting_since = None
            self.received += len(message) if isinstance(message, bytes | bytearray) else 0
            yield message

    def responses(self, iterator: Iterator[Any]) -> Iterator[Any]:
        """``iterator``'s messages, timing how long the peer takes to accept each one."""
        for message in iterator:
            self.reading = False
            self.waiting_since = time.monotonic()
            try:
                yield message
            finally:
                self.waiting_since = None


class CapacityInterceptor(grpc.ServerInterceptor):
    """Applies a :class:`Capacity` to every call (see the module's docstring); every method
    it returns takes its request as a stream, the wire being the same.

    It must be the first interceptor, so that it sees requests as the bytes that came.
    """

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._wrapped = WrapperCache(self._wrap)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        return self._wrapped.wrap(details, continuation(details))

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with its limits, taking its request as a stream (see the module's
        docstring)."""
        behavior = behavior_of(handler)
        if handler.request_streaming or handler.response_streaming \
                or method in LONG_UNARY_METHODS:
            behavior = self._long(method, handler, behavior)
        if not handler.request_streaming:
            behavior = self._one_request(method, handler.response_streaming, behavior)
        return method_handler(True, handler.response_streaming, behavior,
                              handler.request_deserializer, handler.response_serializer)

    def _one_request(self, method: str, response_streaming: bool,
                     behavior: Callable[..., Any]) -> Callable[..., Any]:
        """``behavior`` of a unary-request method, run on the one message of a request
        stream."""
        receive = self._receive_one

        def unary_out(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(receive(method, requests, context), context)

        def stream_out(requests: Iterator[Any], context: grpc.ServicerContext
                       ) -> Iterator[Any]:
            yield from behavior(receive(method, requests, context), context)

        return stream_out if response_streaming else unary_out

    def _receive_one(self, method: str, requests: Iterator[Any],
                     context: grpc.ServicerContext) -> Any:
        """The one message of ``requests``, read to its end under the watchdog.

        Raises ``UnimplementedError`` when there are none or more than one (gRPC's status for
        a cardinality violation), and what ``requests`` raises when the call ends meanwhile
        (the watchdog cancelled it, its client did, its deadline passed).
        """
        stream = _Stream(method, context, unary=True)
        self.capacity._watch(stream)
        try:
            messages = stream.requests(requests)
            request = next(messages, _NOTHING)
            if request is not _NOTHING and next(messages, _NOTHING) is _NOTHING:
                return request
        finally:
            self.capacity._unwatch(stream)
        raise UnimplementedError(f'"{method}" requires exactly one request message.')

    def _long(self, method: str, handler: grpc.RpcMethodHandler,
              behavior: Callable[..., Any]) -> Callable[..., Any]:
        capacity = self.capacity
        slots = capacity.waits if method in LONG_UNARY_METHODS | WAITING_STREAMS \
            else capacity.transfers

        def unary_out(request: Any, context: grpc.ServicerContext) -> Any:
            with slots.held_while(context.peer()):
                stream = _Stream(method, context)
                if handler.request_streaming:
                    request = stream.requests(request)
                    capacity._watch(stream)
                try:
                    return behavior(request, context)
                finally:
                    capacity._unwatch(stream)

        def stream_out(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with slots.held_while(context.peer()):
                stream = _Stream(method, context)
                if handler.request_streaming:
                    request = stream.requests(request)
                capacity._watch(stream)
                try:
                    yield from stream.responses(behavior(request, context))
                finally:
                    capacity._unwatch(stream)

        return stream_out if handler.response_streaming else unary_out
