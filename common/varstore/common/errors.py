"""Exceptions raised by varstore, mirroring TensorFlow's ``tf.errors`` module.

Each class carries the server's message and the gRPC status code it travels as. The server
raises these from its store and checkpoint code; one interceptor turns them into statuses,
and the client turns statuses back into the same classes (:func:`from_status`).
"""

from __future__ import annotations

import grpc

# The most characters of client input (a name, path, key or shape) an error message quotes:
# messages travel in gRPC's status metadata, which peers cap at 8 KiB, and end up in logs.
QUOTE_LIMIT = 200
# The longest status message the server sends, whatever it quotes: a bound of last resort.
STATUS_LIMIT = 4096


def clip(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``str(value)`` cut to ``limit`` characters, the cut marked with the full length; every
    error message that quotes client input quotes it through this."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class OpError(Exception):
    """A failed varstore operation; ``message`` is the server's explanation, and
    ``grpc_error`` the failed call's ``grpc.RpcError`` when there was one (kept for debugging;
    the client raises ours without chaining it)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str = "", node_def: object = None, op: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.node_def = node_def
        self.op = op
        self.grpc_error: grpc.RpcError | None = None

    @property
    def error_code(self) -> int:
        """The numeric status code, as TensorFlow's ``OpError.error_code``."""
        return self.code.value[0]

    def __str__(self) -> str:
        return self.message


class CancelledError(OpError):
    """The operation was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnknownError(OpError):
    """An error the server could not classify."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgumentError(OpError):
    """A bad name, shape, dtype, size, path or request; nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceededError(OpError):
    """The call did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFoundError(OpError):
    """A variable, checkpoint or checkpoint key does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(OpError):
    """Something that must be new already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(OpError):
    """The request is not allowed, e.g. a checkpoint path outside the checkpoint folder."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(OpError):
    """The request carried no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(OpError):
    """A limit was reached: the store's memory limit or the request size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPreconditionError(OpError):
    """The system is not in a state for the operation, e.g. an uninitialized variable."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AbortedError(OpError):
    """The operation was aborted."""

    code = grpc.StatusCode.ABORTED


class OutOfRangeError(OpError):
    """An index or value was out of range."""

    code = grpc.StatusCode.OUT_OF_RANGE


class UnimplementedError(OpError):
    """The operation is not supported."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(OpError):
    """The server failed unexpectedly; details are in its log."""

    code = grpc.StatusCode.INTERNAL


class UnavailableError(OpError):
    """The server cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLossError(OpError):
    """Data is corrupt, e.g. a checkpoint whose checksum does not match."""

    code = grpc.StatusCode.DATA_LOSS


_BY_CODE: dict[grpc.StatusCode, type[OpError]] = {
    cls.code: cls
    for cls in (CancelledError, UnknownError, InvalidArgumentError, DeadlineExceededError,
                NotFoundError, AlreadyExistsError, PermissionDeniedError,
                UnauthenticatedError, ResourceExhaustedError, FailedPreconditionError,
                AbortedError, OutOfRangeError, UnimplementedError, InternalError,
                UnavailableError, DataLossError)
}


def from_status(code: grpc.StatusCode, message: str) -> OpError:
    """The exception for a gRPC status, carrying the server's message."""
    return _BY_CODE.get(code, UnknownError)(message)


# gRPC's own statuses for calls a server ends without its code deciding: CANCELLED with this
# bare message for a call the server received and never ran (gRPC's stop cancels the calls it
# holds and those that arrive meanwhile, varstore.server.shutdown; the server's request
# watchdog cancels a request that does not come), and UNAVAILABLE with the second for a call
# that still ran when the stop's grace period ended: it may or may not have changed something.
_DROPPED = "CANCELLED"
_CUT_WHILE_RUNNING = "Cancelling all calls"


def is_dropped(error: grpc.RpcError) -> bool:
    """Whether the server ended the call with gRPC's bare CANCELLED, before running it (see
    :data:`_DROPPED`): nothing was changed, and the call may be repeated."""
    return (hasattr(error, "code") and error.code() == grpc.StatusCode.CANCELLED
            and hasattr(error, "details") and error.details() == _DROPPED)


def from_rpc_error(error: grpc.RpcError, address: str | None = None) -> OpError:
    """The exception for a failed call, carrying the server's message; with the ``address``
    called, UNAVAILABLE says in the user's terms what happened there (:func:`unavailable`).
    A call the server dropped before running it (:func:`is_dropped`) is an
    ``UnavailableError`` saying that nothing was changed; one it cut while it ran, at the end
    of its stop's grace period, a ``CancelledError`` saying that it may have been applied."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else None
    server = "the server" if address is None else f"the varstore server at {address}"
    if is_dropped(error):
        return UnavailableError(f"{server} ended the call before running it (it is shutting "
                                "down or was overloaded); nothing was changed")
    if code == grpc.StatusCode.UNAVAILABLE and details == _CUT_WHILE_RUNNING:
        return CancelledError(f"{server} stopped while it ran the call (past its grace "
                              "period): it may or may not have been applied")
    if not details:  # no status (a bare RpcError): never its repr, "<_InactiveRpcError ...>"
        details = code.name if isinstance(code, grpc.StatusCode) else str(code)
    if address is not None and code == grpc.StatusCode.UNAVAILABLE:
        return unavailable(address, details)
    return from_status(code, details)


# What gRPC's own UNAVAILABLE details mean, as (words in lower case, what happened and what to
# check); the first whose words occur applies. A connection lost mid-call comes first: its
# details may also mention a timeout ("keepalive watchdog timeout").
_UNREACHABLE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("socket closed", "connection reset", "broken pipe", "goaway", "stream removed",
      "keepalive", "connection closed", "end of stream", "unexpected eof"),
     "went away during the call: the connection closed (the server stopped, crashed or "
     "restarted, or the network dropped it), so whether a change the call sent took effect "
     "is unknown; check that `varstore serve` still runs there and its log"),
    (("connection refused",),
     "is not reachable: connection refused, so nothing listens there now (the server "
     "stopped or crashed, or the address is wrong); check that `varstore serve` runs there "
     "and its log"),
    (("dns", "resolv", "lookup", "name or service not known", "unknown host"),
     "is not reachable: its host name does not resolve (check the name)"),
    (("no route to host", "network is unreachable", "host is unreachable"),
     "is not reachable: the network cannot reach the host (check the host and firewalls)"),
    (("timed out", "timeout", "deadline"),
     "is not reachable: connections time out (is the host up? does a firewall drop them?)"),
    (("handshake", "ssl", "tls", "certificate"),
     "is not reachable: the TLS handshake failed (the server may not use TLS, or another CA "
     "signed its certificate)"),
)
# How gRPC's own UNAVAILABLE details begin (lower case); a varstore server's message (which
# may quote gRPC's words about another shard) begins otherwise and is kept whole.
_GRPC_OPENINGS = ("failed to connect", "connections to all backends", "socket closed",
                  "connection reset", "connection refused", "recvmsg", "sendmsg", "broken pipe",
                  "goaway", "stream removed", "dns resolution", "errors resolving", "keepalive",
                  "empty address", "transport closed", "endpoint", "unavailable",
                  "connection closed", "ssl", "handshake", "timeout", "deadline", "no route",
                  "network")
# The most characters of gRPC's own details an UNAVAILABLE message ends with.
_GRPC_DETAIL = 100


def unavailable(address: str, details: str) -> UnavailableError:
    """The ``UnavailableError`` for a call to the varstore server at ``address`` that ended
    with UNAVAILABLE and ``details``: when gRPC made the details up (the server stopped,
    crashed or cannot be reached), what happened in the user's terms and what to check, with
    the last clause of gRPC's words at the end ("Connection refused"); when the server sent
    them ("the server is shutting down"), the server's message, naming the address."""
    lower = details.lower()
    if not lower.startswith(_GRPC_OPENINGS):
        return UnavailableError(f"the varstore server at {address} is unavailable: "
                                f"{clip(details, STATUS_LIMIT)}")
    happened = next((said for words, said in _UNREACHABLE if any(w in lower for w in words)),
                    "is not reachable (check that `varstore serve` runs there, the address "
                    "and its log)")
    short = details.rstrip(". ").rpartition(": ")[2]
    return UnavailableError(f"the varstore server at {address} {happened} "
                            f"[gRPC: {clip(short, _GRPC_DETAIL)}]")
