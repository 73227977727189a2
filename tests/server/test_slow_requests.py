"""No caller, with a token, without one, or on a server that asks for none, holds the server's
threads by sending its request slowly; a unary request is exactly one message.

gRPC's sync server gives a call a thread when its headers come; a unary handler's thread then
waited, with no timeout, for the whole request. Raw HTTP/2 calls (tests/h2.py) send 3 bytes of
a 1000-byte request and then nothing, more of them than the server has threads, on one
connection: the health check and other clients' calls must still be answered, and the server
must end the stalled calls itself.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import varstore as vs
from tests.h2 import HalfSentCalls
from varstore.proto import varstore_pb2 as pb
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server

WORKERS = 8
STALLED = 3 * WORKERS
TOKEN = "s3cret"
VICTIM_DEADLINE = 20.0  # generous: the victims must be answered, whenever the machine allows
ENDED_WITHIN = 60.0  # as generous, for the server to end the stalled calls


@pytest.fixture(params=[None, TOKEN], ids=["no token file", "token file"])
def token(request: pytest.FixtureRequest) -> str | None:
    """The token the server requires, if any (the callers, hostile ones included, have it)."""
    return request.param


@pytest.fixture
def small_server(token: str | None, tmp_path: Path) -> Iterator[Server]:
    """A server with few threads and the default stream idle timeout (20 s), requiring
    ``token`` if any."""
    tokens = None
    if token is not None:
        tokens = tmp_path / "tokens"
        tokens.write_text(token + "\n")
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ck",
                                     max_workers=WORKERS, token_file=tokens))
    srv.start()
    yield srv
    srv.stop(grace=0.5)


def _victims_are_served(srv: Server, token: str | None) -> None:
    """A fresh client's health check, variable listing and small update are answered."""
    with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=VICTIM_DEADLINE)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with vs.connect(f"127.0.0.1:{srv.port}", token=token, timeout=VICTIM_DEADLINE) as c:
        v = c.get_variable("victim", [3], initializer=vs.zeros_initializer)
        before = v.numpy()
        v.assign_add(np.ones(3, np.float32))
        assert (v.numpy() - before).tolist() == [1, 1, 1]
        assert [x.name for x in c.list_variables()] == ["victim"]


@pytest.mark.parametrize("method", ["/varstore.v1.VariableService/ListVariables",
                                    "/grpc.health.v1.Health/Check",
                                    "/grpc.health.v1.Health/Watch"])
def test_half_sent_requests_hold_no_thread(small_server: Server, token: str | None,
                                           method: str) -> None:
    share = small_server.capacity.transfers.share
    with HalfSentCalls(small_server.port, STALLED, method, token=token) as stalled:
        _victims_are_served(small_server, token)
        # The calls past one connection's share of the transfer slots are ended at once...
        ended = stalled.wait_ended(STALLED - share, ENDED_WITHIN)
        assert len(ended) == STALLED - share
        # ... the others take a slot each, as any transfer does, and are cancelled when their
        # request has come no further for the stream idle timeout (shortened here).
        assert small_server.capacity.transfers.held == share
        small_server.capacity.limits.stream_idle_seconds = 0.5
        assert stalled.wait_ended(STALLED, ENDED_WITHIN) == set(stalled.streams)
    _victims_are_served(small_server, token)
    assert small_server.capacity.transfers.held == 0


def test_half_sent_requests_on_many_connections_hold_no_thread(small_server: Server,
                                                               token: str | None) -> None:
    # Two on each connection, more than the server has threads in all; fewer than it admits
    # at once (four a thread: past that gRPC refuses calls, the victims' too, whatever
    # they send; the half-sent calls are cancelled within seconds but a flood of them keeps
    # the server at that limit).
    connections = [HalfSentCalls(small_server.port, 2, token=token)
                   for _ in range(STALLED // 2)]
    try:
        _victims_are_served(small_server, token)
    finally:
        for c in connections:
            c.close()


@pytest.mark.parametrize("messages", [0, 2, 3])
@pytest.mark.parametrize("method", ["/varstore.v1.VariableService/ListVariables",
                                    "/grpc.health.v1.Health/Check",
                                    "/grpc.health.v1.Health/Watch"])
def test_a_unary_request_is_one_message(server: Server, method: str, messages: int) -> None:
    # gRPC's status for a cardinality violation (its own unary handling says so for zero
    # messages, and ignored the extra ones).
    request = health_pb2.HealthCheckRequest() if "Health" in method \
        else pb.ListVariablesRequest()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw: Any = channel.stream_stream(method)  # bytes in, bytes out
        call = raw(iter([request.SerializeToString()] * messages), timeout=VICTIM_DEADLINE)
        with pytest.raises(grpc.RpcError) as raised:
            list(call)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert raised.value.details() == f'"{method}" requires exactly one request message.'
        one = raw(iter([request.SerializeToString()]), timeout=VICTIM_DEADLINE)
        assert next(one) is not None
        one.cancel()


class _SlowLink:
    """A TCP proxy to ``port`` that passes what the client sends ``chunk`` bytes at a time,
    every ``pause`` seconds: a slow network, not a hostile client."""

    def __init__(self, port: int, chunk: int, pause: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._target, self._chunk, self._pause = port, chunk, pause
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, server, self._chunk, self._pause),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, 1 << 16, 0.0),
                             daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, chunk: int, pause: float
              ) -> None:
        try:
            while not self._stop.is_set():
                data = source.recv(chunk)
                if not data:
                    break
                sink.sendall(data)
                if pause:
                    self._stop.wait(pause)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                s.close()


def test_a_large_request_over_a_slow_link_is_served(server: Server) -> None:
    # 512 KiB in one unary Run, at about 160 KiB/s: it comes over some seconds, past the grace
    # a request has before it needs a transfer slot (a second), and there is one.
    with vs.connect(f"127.0.0.1:{server.port}") as c:
        c.get_variable("big", [1 << 17], initializer=vs.zeros_initializer)
    link = _SlowLink(server.port, 8 << 10, 0.05)
    try:
        with vs.connect(f"127.0.0.1:{link.port}", timeout=VICTIM_DEADLINE) as slow:
            big = slow.get_variable("big", [1 << 17])
            big.assign(np.full(1 << 17, 2, np.float32))
            assert float(big.numpy().sum()) == 2 * (1 << 17)
    finally:
        link.close()
