"""The server's life as operators and clients see it: daemon mode, `varstore stop`, pidfiles,
graceful shutdown, the health and reflection services, and clients riding out a restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import varstore as vs
from varstore import dtypes
from varstore.errors import UnavailableError
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.transport import is_read_only

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+: ")


def varstore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "varstore.cli", *args],
                          capture_output=True, text=True, timeout=120)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def gone_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class DaemonFiles:
    """A daemon's pidfile, log file and checkpoint folder in a test folder."""

    def __init__(self, folder: Path) -> None:
        self.pidfile = folder / "varstore.pid"
        self.log = folder / "varstore.log"
        self.checkpoints = folder / "ckpt"

    def serve(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return varstore("serve", "--daemon", "--pidfile", str(self.pidfile), "--log-file",
                        str(self.log), "--host", "127.0.0.1", "--checkpoint-dir",
                        str(self.checkpoints), *extra)

    def pid(self) -> int:
        return int(self.pidfile.read_text())


@pytest.fixture
def files(tmp_path: Path) -> Iterator[DaemonFiles]:
    files = DaemonFiles(tmp_path)
    yield files
    # A failed test must not leave a daemon behind.
    if files.pidfile.exists() and files.pidfile.read_text().strip().isdigit() \
            and running(files.pid()):
        os.kill(files.pid(), signal.SIGKILL)


def test_daemon_start_status_stop(files: DaemonFiles) -> None:
    started = files.serve("--port", "0")
    assert started.returncode == 0, started.stderr
    served = re.search(r"serving on 127\.0\.0\.1:(\d+)", started.stdout)
    assert served, started.stdout
    port = int(served.group(1))
    pid = files.pid()
    assert f"varstore daemon pid {pid}, log {files.log}" in started.stdout
    assert running(pid) and pid != os.getpid()

    with vs.connect(f"127.0.0.1:{port}") as client:
        client.Variable(np.arange(4, dtype=np.float32), name="w")
    status = varstore("status", "--address", f"127.0.0.1:{port}")
    assert status.returncode == 0, status.stderr
    assert "variables:        1" in status.stdout and "bytes stored:     16" in status.stdout

    second = files.serve("--port", "0")
    assert second.returncode == 1
    assert f"a varstore server (pid {pid}) is already running with pidfile {files.pidfile}" \
        in second.stderr
    assert files.pid() == pid

    stopped = varstore("stop", "--pidfile", str(files.pidfile))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"stopped the varstore server (pid {pid})"
    assert not running(pid)
    assert not files.pidfile.exists()
    log = files.log.read_text().splitlines()
    logged = [line for line in log if LOG_LINE.match(line)]
    assert any(f"varstore listening on 127.0.0.1:{port} (pid {pid})" in line for line in logged)
    messages = [line.split(" ", 2)[2] for line in logged]
    assert messages.index("INFO varstore.server: shutting down") \
        < messages.index("INFO varstore.server: stopped")


def test_stop_with_a_stale_pidfile(files: DaemonFiles) -> None:
    pid = gone_pid()
    files.pidfile.write_text(f"{pid}\n")
    result = varstore("stop", "--pidfile", str(files.pidfile))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"varstore stop: no varstore server is running: pid {pid} from {files.pidfile} is gone; "
        f"removed the stale pidfile")
    assert not files.pidfile.exists()
    again = varstore("stop", "--pidfile", str(files.pidfile))
    assert again.returncode == 1
    assert f"no pidfile {files.pidfile}; is the server running?" in again.stderr


def test_start_over_a_stale_pidfile(files: DaemonFiles) -> None:
    stale = gone_pid()
    files.pidfile.write_text(f"{stale}\n")
    started = files.serve("--port", "0")
    assert started.returncode == 0, started.stderr
    note = f"pidfile {files.pidfile} named pid {stale}, which is not running; overwriting it"
    assert f"varstore serve: {note}" in started.stderr
    pid = files.pid()
    assert pid != stale and running(pid)
    assert any(line.endswith(f"WARNING varstore.server.daemon: {note}")
               for line in files.log.read_text().splitlines())
    assert varstore("stop", "--pidfile", str(files.pidfile)).returncode == 0
    assert not running(pid)


def test_daemon_on_a_busy_port_fails_clearly(files: DaemonFiles) -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = files.serve("--port", str(port))
    assert result.returncode == 1
    assert f"varstore serve: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert result.stdout == ""
    assert not files.pidfile.exists()
    assert f"cannot listen on 127.0.0.1:{port}" in files.log.read_text()


def test_daemon_needs_its_files(tmp_path: Path) -> None:
    result = varstore("serve", "--daemon", "--port", "0", "--pidfile", str(tmp_path / "p"))
    assert result.returncode == 1
    assert "varstore serve: --daemon needs --pidfile and --log-file" in result.stderr


# --- graceful shutdown ---------------------------------------------------------------------

def _start_foreground(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int, int]:
    """`varstore serve` with a metrics port; returns the process, its port and metrics port."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "0", "--checkpoint-dir", str(tmp_path / "ckpt"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"serving on 127\.0\.0\.1:(\d+) .*metrics on port (\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"server did not start: {line}{proc.communicate()[1]}")
    return proc, int(m.group(1)), int(m.group(2))


def _in_flight(metrics_port: int, method: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=10).read().decode()
    m = re.search(rf'^varstore_requests_in_flight{{method="{method}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _refuses_new_calls(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return True
    return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_sigterm_finishes_an_in_flight_stream_then_exits_0(tmp_path: Path) -> None:
    proc, port, metrics_port = _start_foreground(tmp_path)
    try:
        n = 4 << 20
        with vs.connect(f"127.0.0.1:{port}") as client:
            client.get_variable("big", [n], dtype=vs.float64, initializer=vs.zeros_initializer)
        value = np.arange(n, dtype=np.float64)
        data = value.tobytes()
        header = pb.RunChunk(request=pb.RunRequest(
            tensors=[pb.Tensor(dtype=dtypes.float64.enum, shape=[n], streamed_bytes=len(data))],
            nodes=[pb.Node(op="const"), pb.Node(op="assign", inputs=[0], variable="big"),
                   pb.Node(op="reduce_sum", inputs=[1])],
            fetches=[2]))
        chunks = [pb.RunChunk(data=data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
        release = threading.Event()

        def request() -> Iterator[pb.RunChunk]:
            yield header
            for i, chunk in enumerate(chunks):
                if i == len(chunks) // 2:
                    release.wait(60)
                yield chunk

        replies: list[pb.RunChunk] = []
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.VariableServiceStub(channel)
        call = threading.Thread(target=lambda: replies.extend(stub.RunStream(request(),
                                                                             timeout=120)))
        call.start()
        wait_until(lambda: _in_flight(metrics_port, "RunStream") == 1, "the stream to start")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refuses_new_calls(port), "the server to refuse new calls")
        release.set()
        call.join(60)
        channel.close()
        total = replies[0].response.values[0]
        content = total.content or b"".join(r.data for r in replies[1:])
        assert np.frombuffer(content, np.float64).item() == value.sum()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigint_stops_with_exit_0(tmp_path: Path) -> None:
    proc, port, _ = _start_foreground(tmp_path)
    with vs.connect(f"127.0.0.1:{port}") as client:
        assert client.status().variable_count == 0
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    _, err = proc.communicate()
    assert "INFO varstore.server: stopped" in err


# --- health, reflection ----------------------------------------------------------------------

def test_health_reports_serving_then_not_serving_during_shutdown(tmp_path: Path) -> None:
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path))
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "varstore.v1.VariableService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopping = threading.Thread(target=srv.stop, args=(10.0,))
    stopping.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    channel.close()
    stopping.join(30)


def test_reflection_lists_the_service(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert "varstore.v1.VariableService" in db.get_services()
        assert "grpc.health.v1.Health" in db.get_services()
        from google.protobuf.descriptor_pool import DescriptorPool
        service = DescriptorPool(db).FindServiceByName("varstore.v1.VariableService")
        assert {"Run", "RunStream", "Status", "Save", "Restore"} <= {
            m.name for m in service.methods}


# --- clients across a restart ----------------------------------------------------------------

def test_reads_are_retried_across_a_restart_and_writes_are_not(tmp_path: Path) -> None:
    first = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path))
    first.start()
    port = first.port
    address = f"127.0.0.1:{port}"
    restarted: list = []
    with vs.connect(address) as client:
        v = client.Variable(np.ones(3, np.float32), name="v")
        first.stop(grace=0)
        with pytest.raises(UnavailableError,
                           match=f"the varstore server at {address} is not reachable"):
            v.assign(np.zeros(3, np.float32))

        def restart() -> None:
            time.sleep(0.3)
            second = create_server(ServerConfig(host="127.0.0.1", port=port,
                                                checkpoint_dir=tmp_path))
            second.start()
            restarted.append(second)

        threading.Thread(target=restart).start()
        try:
            assert client.status().variable_count == 0
            assert client.list_variables() == []
        finally:
            wait_until(lambda: bool(restarted), "the restart")
            restarted[0].stop(grace=0)


def _request(build: Callable[[RequestBuilder], object]) -> pb.RunRequest:
    b = RequestBuilder()
    build(b)
    return b.build(stream=False)[0]


@pytest.mark.parametrize("request_, safe", [
    (pb.StatusRequest(), True),
    (pb.ListVariablesRequest(scope="a"), True),
    (pb.LatestCheckpointRequest(), True),
    (pb.WaitInitializedRequest(names=["a"]), True),
    (_request(lambda b: b.fetch(b.node("read", variable="a"))), True),
    (_request(lambda b: b.fetch(b.node("gather", [b.const(np.arange(2), dtypes.int64)],
                                       variable="a"))), True),
    (_request(lambda b: b.fetch(b.node("is_initialized", variable="a"))), True),
    (_request(lambda b: b.target(b.node("assign_add", [b.const(np.ones(1), dtypes.float64)],
                                        variable="a"))), False),
    (_request(lambda b: b.variable("a", dtypes.float32, [1])), False),
    (_request(lambda b: b.fetch(b.node("random_normal", shape=[2]))), False),
    (pb.SaveRequest(prefix="x"), False),
    (pb.RestoreRequest(prefix="x"), False),
])
def test_which_calls_are_retried(request_: object, safe: bool) -> None:
    assert is_read_only(request_) is safe
