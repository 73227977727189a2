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


def from_rpc_error(error: grpc.RpcError) -> OpError:
    """The exception for a failed call, carrying the server's message."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return from_status(code, details or str(code))
