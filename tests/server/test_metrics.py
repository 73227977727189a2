"""Prometheus metrics, scraped over HTTP as Prometheus does."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import varstore as vs
from varstore.errors import NotFoundError, UnauthenticatedError
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    """Every sample the server's /metrics endpoint serves, by name and labels."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _serve(tmp_path: Path, **settings: Any) -> Iterator[Server]:
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path,
                                     metrics_port=0, **settings))
    srv.start()
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Server]:
    yield from _serve(tmp_path)


def test_calls_bytes_and_store_size_are_exported(metered: Server) -> None:
    before = scrape(metered)
    assert sample(before, "varstore_variables") == 0
    assert sample(before, "varstore_requests_total", method="Run", code="OK") == 0
    with vs.connect(f"127.0.0.1:{metered.port}") as client:
        w = client.Variable(np.zeros(1000, np.float32), name="w")
        assert w.numpy().sum() == 0
        missing = RequestBuilder()
        missing.variable("missing", vs.float32, [1], bind_only=True)
        with pytest.raises(NotFoundError):
            client.run(missing)
        client.list_variables()
        big = client.get_variable("big", [1 << 20], initializer=vs.zeros_initializer)
        big.assign(np.ones(1 << 20, np.float32))
    after = scrape(metered)
    assert sample(after, "varstore_requests_total", method="Run", code="OK") == 3
    assert sample(after, "varstore_requests_total", method="Run", code="NOT_FOUND") == 1
    assert sample(after, "varstore_requests_total", method="ListVariables", code="OK") == 1
    assert sample(after, "varstore_requests_total", method="RunStream", code="OK") == 1
    assert sample(after, "varstore_request_duration_seconds_count", method="Run") == 4
    assert sample(after, "varstore_request_duration_seconds_bucket", method="Run",
                  le="+Inf") == 4
    assert sample(after, "varstore_request_duration_seconds_sum", method="Run") > 0
    assert sample(after, "varstore_requests_in_flight", method="Run") == 0
    # The streamed assign carried 4 MiB; the unary Variable() call 4000 bytes, the read
    # returned them.
    assert sample(after, "varstore_received_bytes_total", method="RunStream") > 4 << 20
    assert 4000 < sample(after, "varstore_received_bytes_total", method="Run") < 4 << 20
    assert sample(after, "varstore_sent_bytes_total", method="Run") > 4000
    assert sample(after, "varstore_variables") == 2
    assert sample(after, "varstore_stored_bytes") == 4000 + (4 << 20)


def test_checkpoint_hook_is_exported(metered: Server) -> None:
    start = time.time()
    metered.metrics.observe_checkpoint("save", 0.25, 4096)
    metered.metrics.observe_checkpoint("save", 1.5, 8192)
    metered.metrics.observe_checkpoint("restore", 0.5, 8192)
    samples = scrape(metered)
    assert sample(samples, "varstore_checkpoints_total", kind="save") == 2
    assert sample(samples, "varstore_checkpoints_total", kind="restore") == 1
    assert sample(samples, "varstore_checkpoint_duration_seconds_sum", kind="save") == 1.75
    assert sample(samples, "varstore_checkpoint_duration_seconds_count", kind="save") == 2
    assert sample(samples, "varstore_checkpoint_last_bytes", kind="save") == 8192
    assert start <= sample(samples, "varstore_checkpoint_last_timestamp_seconds",
                           kind="save") <= time.time()


def test_each_server_has_its_own_metrics(metered: Server, tmp_path: Path) -> None:
    for other in _serve(tmp_path / "other"):
        with vs.connect(f"127.0.0.1:{other.port}") as client:
            client.Variable(1, name="only_here")
        assert sample(scrape(other), "varstore_variables") == 1
        assert sample(scrape(metered), "varstore_variables") == 0
        assert sample(scrape(metered), "varstore_requests_total", method="Run", code="OK") == 0


def test_malformed_and_unauthenticated_calls_are_counted(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t0k3n\n")
    for srv in _serve(tmp_path, token_file=tokens):
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/varstore.v1.VariableService/Run")
            with pytest.raises(grpc.RpcError) as e:
                raw(b"\xff\xff\xff", metadata=(("authorization", "Bearer t0k3n"),), timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == "malformed Run request (3 bytes)"
        with vs.Client(f"127.0.0.1:{srv.port}") as client:
            with pytest.raises(UnauthenticatedError):
                client.status()
        samples = scrape(srv)
        assert sample(samples, "varstore_requests_total", method="Run",
                      code="INVALID_ARGUMENT") == 1
        assert sample(samples, "varstore_received_bytes_total", method="Run") == 3
        assert sample(samples, "varstore_requests_total", method="Status",
                      code="UNAUTHENTICATED") == 1


def test_busy_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path,
                                       metrics_port=port))
