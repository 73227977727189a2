"""What an UNAVAILABLE call says (varstore.common.errors.unavailable): gRPC's own words about a
server that went away or cannot be reached become what happened, naming the address and what
to check, with gRPC's last clause kept short at the end; a server's own message stays whole."""

from __future__ import annotations

import grpc
import pytest

from varstore.common.errors import (
    NotFoundError,
    UnavailableError,
    clip,
    from_rpc_error,
    unavailable,
)

ADDRESS = "10.0.0.7:7011"
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:7011: "
           "Failed to connect to remote host: Connection refused")


@pytest.mark.parametrize("details, said, grpc_words", [
    (REFUSED, "is not reachable: connection refused, so nothing listens there now",
     "Connection refused"),
    ("Socket closed", "went away during the call: the connection closed", "Socket closed"),
    ("Stream removed (recvmsg:Connection reset by peer (104))", "went away during the call",
     "Stream removed (recvmsg:Connection reset by peer (104))"),
    ("GOAWAY received", "went away during the call", "GOAWAY received"),
    ("keepalive watchdog timeout", "went away during the call", "keepalive watchdog timeout"),
    ("DNS resolution failed for nohost:7011: C-ares status is not ARES_SUCCESS",
     "is not reachable: its host name does not resolve",
     "C-ares status is not ARES_SUCCESS"),
    ("errors resolving ps1:7011: [field:hostname lookup error:address lookup failed for "
     "ps1:7011: Domain name not found]", "is not reachable: its host name does not resolve",
     "Domain name not found]"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:7011: "
     "Connection timed out", "is not reachable: connections time out", "Connection timed out"),
    ("failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.7:7011: "
     "No route to host", "is not reachable: the network cannot reach the host",
     "No route to host"),
    ("connections to all backends failing; last error: UNKNOWN: something new",
     "is not reachable (check that `varstore serve` runs there", "something new"),
])
def test_grpc_words_become_what_happened(details: str, said: str, grpc_words: str) -> None:
    error = unavailable(ADDRESS, details)
    assert isinstance(error, UnavailableError)
    assert error.message.startswith(f"the varstore server at {ADDRESS} {said}")
    assert error.message.endswith(f" [gRPC: {grpc_words}]")
    assert "last error" not in error.message and "ipv4:" not in error.message


def test_the_grpc_words_at_the_end_are_short() -> None:
    error = unavailable(ADDRESS, "Socket closed: " + "x" * 5000)
    assert error.message.endswith(f"[gRPC: {clip('x' * 5000, 100)}]")


def test_a_servers_own_message_stays_whole() -> None:
    # A shard's refusal that quotes gRPC's words about shard 0 is that shard's message.
    told = ("cannot create variable w: shard 0, which keeps the placement table, did not "
            f"confirm where it goes: {REFUSED}")
    for message in ("the server is shutting down", told):
        assert unavailable(ADDRESS, message).message == \
            f"the varstore server at {ADDRESS} is unavailable: {message}"


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def test_from_rpc_error_maps_unavailable_of_an_address_only() -> None:
    assert from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, REFUSED)).message == REFUSED
    assert from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, REFUSED), ADDRESS).message \
        .startswith(f"the varstore server at {ADDRESS} is not reachable: connection refused")
    other = from_rpc_error(_Failed(grpc.StatusCode.NOT_FOUND, "no w"), ADDRESS)
    assert isinstance(other, NotFoundError) and other.message == "no w"
    # A failure without details names its status, never the error's repr.
    bare = from_rpc_error(_Failed(grpc.StatusCode.UNAVAILABLE, None), ADDRESS)
    assert bare.message.startswith(f"the varstore server at {ADDRESS} is not reachable")
    assert "<" not in bare.message
