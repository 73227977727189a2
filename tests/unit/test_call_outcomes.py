"""How the client names the statuses gRPC itself gives calls a stopping server ends: a call it
received and never ran (bare CANCELLED) is ``UnavailableError``, nothing was changed, and a
read is repeated; a call cut while it ran (UNAVAILABLE "Cancelling all calls", past the grace
period) is ``CancelledError``, its outcome unknown."""

from __future__ import annotations

import grpc

from varstore.errors import CancelledError, UnavailableError
from varstore.transport import Transport


class _Status(grpc.RpcError):
    """A failed call's status, as gRPC raises it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_call_dropped_before_it_ran_is_unavailable_and_a_read_is_repeated() -> None:
    transport = Transport("127.0.0.1:7011")
    dropped = _Status(grpc.StatusCode.CANCELLED, "CANCELLED")
    error = transport.error(dropped)
    assert type(error) is UnavailableError
    assert str(error) == (
        "the varstore server at 127.0.0.1:7011 ended the call before running it (it is "
        "shutting down or was overloaded); nothing was changed")
    assert transport.retry_delay(dropped, 0, idempotent=True) is not None
    assert transport.retry_delay(dropped, 0, idempotent=False) is None
    transport.close()


def test_a_call_cut_while_it_ran_is_cancelled_with_its_outcome_unknown() -> None:
    transport = Transport("127.0.0.1:7011")
    error = transport.error(_Status(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls"))
    assert type(error) is CancelledError
    assert str(error) == ("the varstore server at 127.0.0.1:7011 stopped while it ran the "
                          "call (past its grace period): it may or may not have been applied")
    # A cancellation the server's code reports keeps its class and message.
    own = transport.error(_Status(grpc.StatusCode.CANCELLED, "the call ended"))
    assert type(own) is CancelledError and str(own) == "the call ended"
    transport.close()
