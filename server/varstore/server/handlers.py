"""gRPC method handlers by kind: unary or streaming requests, unary or streaming responses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_BEHAVIORS = {(False, False): "unary_unary", (False, True): "unary_stream",
              (True, False): "stream_unary", (True, True): "stream_stream"}


def method_handler(request_streaming: bool, response_streaming: bool,
                   behavior: Callable[..., Any],
                   request_deserializer: Callable[[bytes], Any] | None = None,
                   response_serializer: Callable[[Any], bytes] | None = None
                   ) -> grpc.RpcMethodHandler:
    """A handler of the given kind running ``behavior``; without a deserializer the behavior
    receives the request bytes, without a serializer it returns bytes."""
    return _FACTORIES[request_streaming, response_streaming](
        behavior, request_deserializer=request_deserializer,
        response_serializer=response_serializer)


class WrapperCache:
    """Per method, the handler last wrapped and its wrapper: calls of a method get the same
    registered handler each time, so an interceptor builds its wrapper once, not per call."""

    def __init__(self, build: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]
                 ) -> None:
        """``build(handler, method)`` wraps ``handler`` of method ``method`` (its full name,
        e.g. ``/varstore.v1.VariableService/Run``)."""
        self._build = build
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler | None
             ) -> grpc.RpcMethodHandler | None:
        """The wrapper of ``handler`` for the call ``details`` (None for no handler)."""
        if handler is None:
            return None
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._build(handler, details.method)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped


def short_name(method: str) -> str:
    """A method's name without its service: ``Run`` for ``/varstore.v1.VariableService/Run``."""
    return method.rsplit("/", 1)[-1]


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    """The function ``handler`` runs (its ``unary_unary``, ``stream_stream``... attribute)."""
    return getattr(handler, _BEHAVIORS[handler.request_streaming, handler.response_streaming])
