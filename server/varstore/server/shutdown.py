"""How a stopping server refuses the calls it will not run.

gRPC's own stop stops taking calls at once and cancels, with a bare ``CANCELLED``, the calls it
holds (received but not yet handed to a thread) and those that arrive before their client saw
the connection close: clients took them for calls that failed while they ran, and the workers
of ``examples/train_digits.py`` died at a Ctrl-C of the server (newcomer report F19).

So a server stops in two steps: first (:meth:`ShutdownGate.close`) it keeps taking calls but
refuses each one that has not started with ``UNAVAILABLE`` and :data:`SHUTTING_DOWN`, until no
call came for a moment; then gRPC's stop gives the calls that run their grace period. The few
calls gRPC's stop may still cancel (clients that call without pause keep coming) reach their
clients as the same ``UnavailableError``: ``varstore.transport`` reads gRPC's bare
``CANCELLED``, which ends only calls that did not run, as such.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from varstore.common.errors import UnavailableError
from varstore.server.handlers import WrapperCache, behavior_of, method_handler

# What the client of a call a stopping server refused reads: it ran no part of it.
SHUTTING_DOWN = "the server is shutting down; nothing was changed"
# The calls a stopping server refuses before gRPC's stop: until none came for QUIET_SECONDS,
# and for at most DRAIN_SECONDS (clients retrying without pause would keep it open).
QUIET_SECONDS = 0.3
DRAIN_SECONDS = 3.0
# Methods answered while stopping: the health service says NOT_SERVING itself.
_ALWAYS_ANSWERED = "/grpc.health."


class ShutdownGate(grpc.ServerInterceptor):
    """Refuses every call that starts once the server is stopping (``stopping`` is set) with
    ``UnavailableError(SHUTTING_DOWN)``; the interceptor right after
    :class:`varstore.server.status.StatusInterceptor`, so that no other one (capacity,
    metrics, authentication) runs for a refused call."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self._arrived = time.monotonic()
        self._wrapped = WrapperCache(self._wrap)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if details.method.startswith(_ALWAYS_ANSWERED):
            return handler
        self._arrived = time.monotonic()
        return self._wrapped.wrap(details, handler)

    def close(self, quiet: float = QUIET_SECONDS, most: float = DRAIN_SECONDS) -> None:
        """Sets ``stopping`` (from then on calls that start are refused, and waits end with
        UNAVAILABLE), then returns once no call arrived for ``quiet`` seconds, or after
        ``most`` seconds: gRPC holds no call then that its stop would cancel. Raises
        nothing."""
        self.stopping.set()
        end = time.monotonic() + most
        while True:
            now = time.monotonic()
            left = min(self._arrived + quiet, end) - now
            if left <= 0:
                return
            time.sleep(left)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        behavior = behavior_of(handler)
        stopping = self.stopping

        def unary_out(request: Any, context: grpc.ServicerContext) -> Any:
            if stopping.is_set():
                raise UnavailableError(SHUTTING_DOWN)
            return behavior(request, context)

        def stream_out(request: Any, context: grpc.ServicerContext) -> Any:
            if stopping.is_set():
                raise UnavailableError(SHUTTING_DOWN)
            yield from behavior(request, context)

        wrapped = stream_out if handler.response_streaming else unary_out
        return method_handler(handler.request_streaming, handler.response_streaming, wrapped,
                              handler.request_deserializer, handler.response_serializer)
