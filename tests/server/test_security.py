"""TLS, mutual TLS, bearer tokens, limits and hostile names/shapes/dtypes, as clients see them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from tests.h2 import HalfSentCalls
from tests.pki import Pki, make_pki
from varstore import dtypes
from varstore.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _serve(tmp_path: Path, **settings: Any) -> Iterator[Server]:
    srv = create_server(ServerConfig(host="127.0.0.1", port=0,
                                     checkpoint_dir=tmp_path / "ckpt", **settings))
    srv.start()
    yield srv
    srv.stop(grace=1.0)


# --- TLS -----------------------------------------------------------------------------------

@pytest.fixture
def tls_server(tmp_path: Path, pki: Pki) -> Iterator[Server]:
    yield from _serve(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key)


@pytest.fixture
def mtls_server(tmp_path: Path, pki: Pki) -> Iterator[Server]:
    yield from _serve(tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key,
                      tls_client_ca=pki.ca)


def test_tls_connection_works_and_plaintext_is_refused(tls_server: Server, pki: Pki) -> None:
    address = f"127.0.0.1:{tls_server.port}"
    with vs.connect(address, tls=vs.TLSConfig(ca_cert=pki.ca), timeout=10) as client:
        v = client.Variable(np.arange(3, dtype=np.float32), name="secret")
        v.assign_add(np.ones(3, np.float32))
        assert v.numpy().tolist() == [1, 2, 3]
    # The certificate names varstore.internal too: a client may check that name instead.
    tls = vs.TLSConfig(ca_cert=str(pki.ca), server_name="varstore.internal")
    with vs.connect(address, tls=tls, timeout=10) as client:
        assert [v.name for v in client.list_variables()] == ["secret"]
    with pytest.raises(UnavailableError, match=address):
        vs.connect(address, timeout=1)


def test_tls_client_rejects_a_server_its_ca_did_not_sign(tls_server: Server, pki: Pki) -> None:
    with pytest.raises(UnavailableError):
        vs.connect(f"127.0.0.1:{tls_server.port}",
                   tls=vs.TLSConfig(ca_cert=pki.foreign_cert), timeout=1)


def test_mutual_tls_requires_a_client_certificate(mtls_server: Server, pki: Pki) -> None:
    address = f"127.0.0.1:{mtls_server.port}"
    good = vs.TLSConfig(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with vs.connect(address, tls=good, timeout=10) as client:
        assert client.Variable(7, name="w").numpy() == 7
    with pytest.raises(UnavailableError):
        with vs.connect(address, tls=vs.TLSConfig(ca_cert=pki.ca), timeout=1) as client:
            client.status()
    foreign = vs.TLSConfig(ca_cert=pki.ca, client_cert=pki.foreign_cert,
                           client_key=pki.foreign_key)
    with pytest.raises(UnavailableError):
        with vs.connect(address, tls=foreign, timeout=1) as client:
            client.status()


def test_incomplete_tls_settings_are_refused(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        create_server(ServerConfig(host="127.0.0.1", port=0, tls_cert=pki.server_cert))
    with pytest.raises(ValueError, match="--tls-client-ca needs --tls-cert"):
        create_server(ServerConfig(host="127.0.0.1", port=0, tls_client_ca=pki.ca))


# --- bearer tokens -------------------------------------------------------------------------

@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[Server]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# workers\nalpha-123\n\n   beta-456  \n# retired: gamma\n")
    yield from _serve(tmp_path, token_file=tokens)


def test_tokens_are_required_and_compared(token_server: Server,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    address = f"127.0.0.1:{token_server.port}"
    with vs.connect(address, token="alpha-123") as client:
        v = client.Variable(np.zeros(2, np.float32), name="guarded")
    with vs.connect(address, token="beta-456") as client:
        assert client.status().variable_count == 1
    for token in (None, "gamma", "alpha-12", "alpha-1234", "# workers", ""):
        # connect() asks the server whether it is one shard of a cluster: refused at once.
        with pytest.raises(UnauthenticatedError, match="valid bearer token is required"):
            vs.connect(address, token=token)
        with vs.Client(address, token=token) as intruder:
            with pytest.raises(UnauthenticatedError, match="valid bearer token is required"):
                intruder.list_variables()
            with pytest.raises(UnauthenticatedError):
                intruder.push({v: np.ones(2, np.float32)})
            # Large enough to travel as a stream: rejected before the stream is read.
            with pytest.raises(UnauthenticatedError):
                intruder.run(_assign_request("guarded", np.ones(1 << 19, np.float32)))
    monkeypatch.setenv("VARSTORE_TOKEN", "beta-456")
    with vs.connect(address) as client:
        assert client.pull([v])[0].tolist() == [0, 0]
        assert client.list_variables()[0].version == 0


def test_callers_without_a_token_sending_slowly_take_no_thread(token_server: Server) -> None:
    # A unary handler runs once its whole request arrived: refusals took a thread each until
    # then, and 40 half-sent requests held all of them.
    with HalfSentCalls(token_server.port, 40), \
            vs.connect(f"127.0.0.1:{token_server.port}", token="alpha-123",
                       timeout=10) as client:
        for _ in range(5):
            assert client.list_variables() == []


def test_health_is_reachable_without_a_token(token_server: Server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{token_server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "varstore.v1.VariableService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# nobody yet\n\n")
    with pytest.raises(ValueError, match=f"token file {tokens} holds no tokens"):
        create_server(ServerConfig(host="127.0.0.1", port=0, token_file=tokens))


# --- limits --------------------------------------------------------------------------------

def _assign_request(name: str, value: np.ndarray) -> RequestBuilder:
    b = RequestBuilder()
    b.target(b.node("assign", [b.const(value, dtypes.as_dtype(value.dtype))], variable=name))
    return b


def test_memory_limit_through_the_flag(tmp_path: Path) -> None:
    # The limit counts the variables and what requests in flight hold (their bytes, the
    # initializers' results): 56,000 bytes of variables leave room for one more of 20,480
    # bytes and its initializer's result, not for two.
    srv = start_server_process(tmp_path / "ckpt", "--max-memory", "128K")
    try:
        with vs.connect(srv.address) as client:
            first = client.get_variable("first", [14000], initializer=vs.zeros_initializer)
            assert client.status().max_memory == 131072
            b = RequestBuilder()
            for name in ("second", "third"):
                b.variable(name, vs.float32, [5120], initializer=b.node(
                    "zeros", dtype=vs.float32, shape=[5120]))
            with pytest.raises(ResourceExhaustedError,
                               match=r"(zeros \(node 1\): a tensor of shape \[5120\] and "
                                     r"dtype float32 \(20480|creating third \(20997) bytes\) "
                                     r"would exceed the server's memory limit of 131072 bytes "
                                     r"\(\d+ in use\)"):
                client.run(b)
            with pytest.raises(ResourceExhaustedError, match="limit of 131072 bytes"):
                client.get_variable("big", [30000])
            assert [v.name for v in client.list_variables()] == ["first"]
            assert client.status().bytes_stored == 56000
            first.scatter_update([3], np.ones(1, np.float32))
            assert first.gather([2, 3]).tolist() == [0, 1]
    finally:
        stop_server_process(srv)


@pytest.fixture
def small_requests_server(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path, max_request_bytes=64 << 10)


@pytest.mark.parametrize("elements", [32 << 10, 1 << 20], ids=["unary", "stream"])
def test_request_size_limit(small_requests_server: Server, elements: int) -> None:
    with vs.connect(f"127.0.0.1:{small_requests_server.port}") as client:
        v = client.get_variable("v", [elements], initializer=vs.zeros_initializer)
        with pytest.raises(ResourceExhaustedError):
            v.assign(np.ones(elements, np.float32))
        assert client.list_variables()[0].version == 0
        small = client.Variable(np.zeros(100, np.float32), name="small")
        small.assign_add(np.ones(100, np.float32))
        assert small.numpy().sum() == 100


# --- hostile names, shapes, dtypes ---------------------------------------------------------

HOSTILE_NAMES = ["", "/", "a/", "/abs", "_lead", "sp ace", "tab\t", "nul\x00",
                 "new\nline", "trailing\n", "x" * 65537, "é", "a:0", "a;b", "$(rm -rf)", "a\\b"]


def test_hostile_names_are_refused_and_create_nothing(client: vs.Client) -> None:
    for name in HOSTILE_NAMES:
        b = RequestBuilder()
        b.variable(name, vs.float32, [2], initializer=b.node("zeros", dtype=vs.float32,
                                                            shape=[2]))
        with pytest.raises(InvalidArgumentError, match="invalid variable name"):
            client.run(b)
        read = RequestBuilder()
        read.fetch(read.node("read", variable=name))
        with pytest.raises(InvalidArgumentError, match="invalid variable name|needs a variable"):
            client.run(read)
    assert client.list_variables() == []


@pytest.mark.parametrize("dims, error", [
    ([-1], "negative dimension"),
    ([2, -5], "negative dimension"),
    ([1] * 33, "rank 33 > 32"),
    ([1 << 40, 1 << 20], "exceeds"),
    ([1 << 40, 1 << 40], "too large for any array"),
    ([(1 << 63) - 1], "too large for any array"),
    ([0, (1 << 63) - 1, (1 << 63) - 1], "too large for any array"),
    ([0, 1 << 30, 1 << 30], None),
])
def test_hostile_shapes_are_refused(client: vs.Client, dims: list[int],
                                    error: str | None) -> None:
    before = client.status().bytes_stored
    for initialized in (False, True):
        request = pb.RunRequest(variables=[pb.VariableSpec(
            name="h", dtype=1, shape=pb.Shape(dim=dims), initializer=1 if initialized else 0)],
            nodes=[pb.Node(op="zeros", attrs={"shape": pb.AttrValue(shape=pb.Shape(dim=dims))})])
        if error is None:
            # An empty tensor whose other dimensions numpy accepts is valid and holds 0 bytes.
            client.transport.call(client.stub.Run, request)
            continue
        with pytest.raises((InvalidArgumentError, ResourceExhaustedError), match=error):
            client.transport.call(client.stub.Run, request)
        assert client.list_variables() == []
    assert client.status().bytes_stored == before


@pytest.mark.parametrize("enum", [0, -1, 20, 21, 999, (1 << 31) - 1, 101])
def test_hostile_dtypes_are_refused(client: vs.Client, enum: int) -> None:
    request = pb.RunRequest(variables=[pb.VariableSpec(name="d", dtype=enum,
                                                       shape=pb.Shape(dim=[2]))])
    with pytest.raises(InvalidArgumentError):
        client.transport.call(client.stub.Run, request)
    tensor = pb.RunRequest(tensors=[pb.Tensor(dtype=enum, shape=[1], content=b"\0" * 8)],
                           nodes=[pb.Node(op="const")], fetches=[0])
    with pytest.raises(InvalidArgumentError):
        client.transport.call(client.stub.Run, tensor)
    assert client.list_variables() == []


@pytest.fixture
def small_memory_server(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path, max_memory=1 << 20)


def test_results_past_the_memory_limit_are_refused(small_memory_server: Server) -> None:
    limit = "exceeds the server's limit of 1048576 bytes"
    with vs.connect(f"127.0.0.1:{small_memory_server.port}") as client:
        column = np.ones((1024, 1), np.float32)
        b = RequestBuilder()
        b.fetch(b.node("matmul", [b.const(column, vs.float32), b.const(column.T, vs.float32)]))
        with pytest.raises(ResourceExhaustedError, match=r"shape \[1024, 1024\] .*" + limit):
            client.run(b)
        table = client.Variable(np.zeros((4, 1024), np.float32), name="table")
        with pytest.raises(ResourceExhaustedError, match=r"shape \[512, 1024\] .*" + limit):
            table.gather(np.zeros(512, np.int64))
        assert table.gather([3, 0]).shape == (2, 1024)
