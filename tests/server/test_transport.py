"""The client transport: one retry policy and one error mapping for unary, streamed and
asyncio calls, and what connecting to a server that is not there says."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import varstore as vs
import varstore.aio
from varstore import transport
from varstore.common import codec
from varstore.errors import InvalidArgumentError, NotFoundError, UnavailableError
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server

# Over codec.STREAM_THRESHOLD, so that it travels as a chunked RunStream, and large enough that
# the server is still sending when the first chunk arrives.
BIG = (16 << 20) // 4


class Restarts:
    """An in-process server that a test restarts on the same port, from its last checkpoint,
    while a call is in flight (when the client has received the first chunk of a stream)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.server = self._start(0, None)
        self.address = f"127.0.0.1:{self.server.port}"
        self.restarts = 0
        self.streams = 0

    def _start(self, port: int, restore: str | None) -> Server:
        server = create_server(ServerConfig(host="127.0.0.1", port=port,
                                            checkpoint_dir=self.folder, restore=restore))
        server.start()
        return server

    def restart(self) -> None:
        """Stops the server, cancelling its calls, and starts it again from its checkpoint."""
        self.server.stop(grace=0)
        self.server = self._start(self.server.port, "latest")
        self.restarts += 1

    def restart_on_first_chunk(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Makes the first streamed response restart the server once it has begun."""
        feed = codec.ChunkReader.feed

        def feed_and_restart(reader: codec.ChunkReader, chunk: Any) -> None:
            # The in-process server reads requests with the same class; only the client's
            # reading of responses counts.
            if reader.field == "response" and reader.header is None:
                self.streams += 1
                if self.restarts == 0:
                    self.restart()
            feed(reader, chunk)
        monkeypatch.setattr(codec.ChunkReader, "feed", feed_and_restart)


@pytest.fixture
def restarts(tmp_path: Path) -> Iterator[Restarts]:
    r = Restarts(tmp_path / "ckpt")
    yield r
    r.server.stop(grace=0)


def _big_variable(client: vs.Client) -> vs.RemoteVariable:
    big = client.Variable(np.arange(BIG, dtype=np.float32), name="big")
    client.save("model.ckpt")
    return big


def test_a_streamed_pull_is_retried_when_the_server_restarts_mid_call(
        restarts: Restarts, monkeypatch: pytest.MonkeyPatch) -> None:
    with vs.connect(restarts.address) as client:
        big = _big_variable(client)
        restarts.restart_on_first_chunk(monkeypatch)
        (value,) = client.pull([big])
    assert restarts.restarts == 1 and restarts.streams == 2
    assert np.array_equal(value, np.arange(BIG, dtype=np.float32))


async def test_an_asyncio_streamed_pull_is_retried_when_the_server_restarts_mid_call(
        restarts: Restarts, monkeypatch: pytest.MonkeyPatch) -> None:
    with vs.connect(restarts.address) as client:
        _big_variable(client)
    async with await varstore.aio.connect(restarts.address) as aclient:
        with aclient.variable_scope("", reuse=True):
            big = await aclient.get_variable("big", [BIG])
        restarts.restart_on_first_chunk(monkeypatch)
        (value,) = await aclient.pull([big])
    assert restarts.restarts == 1 and restarts.streams == 2
    assert np.array_equal(value, np.arange(BIG, dtype=np.float32))


async def test_asyncio_reads_are_retried_across_a_restart_and_writes_are_not(
        restarts: Restarts) -> None:
    async with await varstore.aio.connect(restarts.address) as aclient:
        v = await aclient.Variable(np.ones(3, np.float32), name="v")
        with vs.connect(restarts.address) as client:
            client.save("model.ckpt")
        restarts.server.stop(grace=0)
        with pytest.raises(UnavailableError,
                           match=f"the varstore server at {restarts.address} is not reachable"):
            await v.assign(np.zeros(3, np.float32))
        threading.Timer(0.3, restarts.restart).start()
        assert (await v.numpy()).tolist() == [1, 1, 1]
        assert [i.name for i in await aclient.list_variables()] == ["v"]


def test_errors_arrive_without_the_grpc_traceback_which_stays_reachable(
        client: vs.Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.restore("no-such-checkpoint")
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__
    assert isinstance(error.grpc_error, grpc.RpcError)
    assert error.grpc_error.code() == grpc.StatusCode.NOT_FOUND
    shown = "".join(traceback.format_exception(error))
    assert "RpcError" not in shown and "During handling" not in shown


async def test_asyncio_errors_arrive_without_the_grpc_traceback(address: str) -> None:
    async with await varstore.aio.connect(address) as aclient:
        with aclient.variable_scope("", reuse=True):
            with pytest.raises(ValueError):
                await aclient.get_variable("nowhere", [1])
        v = await aclient.get_variable("v", [3], initializer=vs.zeros_initializer)
        with pytest.raises(InvalidArgumentError) as caught:
            await v.scatter_add([7], np.ones(1))
    error = caught.value
    assert error.__cause__ is None and error.__suppress_context__
    assert isinstance(error.grpc_error, grpc.aio.AioRpcError)
    assert error.grpc_error.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- connecting to a server that is not there ---------------------------------------------------

@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails a test whose connect waits for its timeout instead of saying the cause at once."""
    def waited(self: Any) -> None:
        raise AssertionError("connect waited for its timeout")
    monkeypatch.setattr(transport._Readiness, "timed_out", waited)


def _connectors() -> list[Callable[..., Any]]:
    async def aio_connect(address: str, **kwargs: Any) -> None:
        await varstore.aio.connect(address, **kwargs)
    return [vs.connect, aio_connect]


async def _connect(connector: Callable[..., Any], address: str, **kwargs: Any) -> None:
    result = connector(address, **kwargs)
    if hasattr(result, "__await__"):
        await result


@pytest.fixture
def closed_port() -> int:
    """A local port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("connector", _connectors(), ids=["blocking", "aio"])
async def test_a_refused_connection_is_said_at_once_with_the_fix(
        connector: Callable[..., Any], closed_port: int, no_waiting: None) -> None:
    address = f"127.0.0.1:{closed_port}"
    with pytest.raises(UnavailableError) as caught:
        await _connect(connector, address, timeout=60)
    assert str(caught.value) == (
        f"no varstore server at {address}: connection refused (start one with "
        f"`varstore serve --port {closed_port}`, or check the host and port)")


@pytest.mark.parametrize("connector", _connectors(), ids=["blocking", "aio"])
async def test_an_unknown_host_is_said_at_once(connector: Callable[..., Any],
                                               no_waiting: None) -> None:
    with pytest.raises(UnavailableError) as caught:
        await _connect(connector, "no-such-host.invalid:7011", timeout=60)
    assert str(caught.value) == ("cannot reach no-such-host.invalid:7011: unknown host "
                                 "'no-such-host.invalid' (check the name; localhost is this "
                                 "machine)")


@pytest.mark.parametrize("connector", _connectors(), ids=["blocking", "aio"])
@pytest.mark.parametrize("address, meant", [("7011", "localhost:7011"),
                                            (":7011", "localhost:7011"),
                                            ("localhost", "localhost:7011"),
                                            ("localhost:70110", "localhost:7011"),
                                            ("localhost:40927x", "localhost:40927"),
                                            ("127.0.0.1:", "127.0.0.1:7011"),
                                            ("[::1]:x", "[::1]:7011")])
async def test_a_malformed_address_says_what_was_meant(connector: Callable[..., Any],
                                                       address: str, meant: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await _connect(connector, address)
    assert str(caught.value) == (f"malformed server address {address!r}: expected HOST:PORT "
                                 f"(did you mean {meant}?)")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts TCP connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("connector", _connectors(), ids=["blocking", "aio"])
async def test_a_server_that_does_not_answer_is_told_apart(connector: Callable[..., Any],
                                                           silent_port: int) -> None:
    address = f"127.0.0.1:{silent_port}"
    with pytest.raises(UnavailableError) as caught:
        await _connect(connector, address, timeout=0.5)
    assert str(caught.value) == (
        f"the server at {address} accepts connections but did not answer within 0.5s: it is "
        f"busy or hung, or not a varstore server (wait longer with connect(timeout=...) or "
        f"--timeout)")


@pytest.fixture
def http1_port() -> Iterator[int]:
    """A local port where something that is not a gRPC server answers and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    threading.Thread(target=answer, daemon=True).start()
    yield int(listener.getsockname()[1])
    listener.close()


@pytest.mark.parametrize("connector", _connectors(), ids=["blocking", "aio"])
async def test_a_failed_handshake_is_said_without_waiting(
        connector: Callable[..., Any], http1_port: int, no_waiting: None) -> None:
    address = f"127.0.0.1:{http1_port}"
    with pytest.raises(UnavailableError) as caught:
        await _connect(connector, address, timeout=60)
    assert str(caught.value) == (
        f"the server at {address} accepts connections but the gRPC handshake failed: the "
        f"server may require TLS: pass tls=varstore.TLSConfig(...), or it is not a varstore "
        f"server")


def test_a_script_that_never_closes_its_client_exits(address: str) -> None:
    script = ("import varstore as vs\n"
              f"client = vs.connect({address!r})\n"
              "print(client.status().variable_count)\n")
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, timeout=60)
        assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
