"""The one place where the server's errors become gRPC statuses.

Everything below the first interceptor (capacity limits, authentication, metrics, the
servicer, the store, the executor, the checkpoint code) raises varstore's ``OpError`` classes,
each carrying its status code and message; :class:`StatusInterceptor` turns them into the
call's status. A call that ended on the client's side (cancelled, past its deadline) ends
quietly. Anything else is a bug: it is logged with its traceback and reported to the client
as INTERNAL without details.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from varstore.common.errors import STATUS_LIMIT, OpError, clip
from varstore.server.handlers import WrapperCache, behavior_of, method_handler, short_name

log = logging.getLogger(__name__)


@contextmanager
def rpc_status(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Ends the call with the status of what the block raises (see the module's docstring)."""
    try:
        yield
    except OpError as e:
        context.abort(e.code, clip(e.message, STATUS_LIMIT))
    except Exception:  # noqa: BLE001 - every error becomes a status
        # Aborted already (gRPC's own services do); the stubs lack code(), grpc has it.
        if context.code() is not None:  # type: ignore[attr-defined]
            raise
        if not context.is_active():  # the request stream of a call that ended
            context.abort(grpc.StatusCode.CANCELLED, "the call ended")
        log.exception("internal error in %s", method)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


class StatusInterceptor(grpc.ServerInterceptor):
    """Wraps every handler in :func:`rpc_status`; it must be the first interceptor."""

    def __init__(self) -> None:
        self._wrapped = WrapperCache(_wrap)

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        return self._wrapped.wrap(details, continuation(details))


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    behavior = behavior_of(handler)
    method = short_name(method)

    def unary_out(request: Any, context: grpc.ServicerContext) -> Any:
        with rpc_status(context, method):
            return behavior(request, context)

    def stream_out(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with rpc_status(context, method):
            yield from behavior(request, context)

    wrapped = stream_out if handler.response_streaming else unary_out
    return method_handler(handler.request_streaming, handler.response_streaming, wrapped,
                          handler.request_deserializer, handler.response_serializer)
