"""Shutdown always finishes, state is not lost on Ctrl-C, and the default address is safe.

After SIGTERM every call in flight completes or is cancelled, waits end, the final checkpoint
is written when the store changed since the last one (`--no-save-on-exit` opts out and the
log says what is discarded), and the process exits 0. `varstore serve` listens on loopback
by default and refuses another interface without a token file, TLS or an explicit flag.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import varstore as vs
from tests.conftest import ServerProcess, start_server_process
from varstore import dtypes
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.request import RequestBuilder
from varstore.server.bundle import read_state

# A hang detector, not a speed check: far above the grace period plus a small save.
EXIT_WITHIN = 60.0


def _terminate(server: ServerProcess) -> str:
    """SIGTERM; returns the log once the process exited 0."""
    server.process.send_signal(signal.SIGTERM)
    _, log = server.process.communicate(timeout=EXIT_WITHIN)
    assert server.process.returncode == 0, log
    assert "stopped" in log
    return log


def _checkpoints(folder: Path) -> list[str]:
    state = read_state(str(folder))
    return [] if state is None else [os.path.basename(p) for p in state.all_model_checkpoint_paths]


def _restored(folder: Path, name: str) -> np.ndarray:
    server = start_server_process(folder, "--restore", "latest")
    try:
        with vs.connect(server.address) as c:
            return c.get_variable(name, shape=[], dtype=vs.int64).numpy()
    finally:
        _terminate(server)


def _counter(address: str, value: int = 0) -> None:
    with vs.connect(address) as c:
        c.get_variable("counter", shape=[], dtype=vs.int64,
                       initializer=vs.constant_initializer(value))


def _in_background(calls: list[grpc.Future], kind: str, address: str,
                   stop: threading.Event) -> None:
    """Leaves a hostile call of ``kind`` running against ``address``."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.VariableServiceStub(channel)
    if kind == "wait without deadline":
        calls.append(stub.WaitInitialized.future(
            pb.WaitInitializedRequest(names=["never"], timeout_seconds=3600)))
    elif kind == "sync step without deadline":
        b = RequestBuilder()
        b.fetch(b.node("sync_wait", group="counter", generation=0, timeout=3600.0))
        calls.append(stub.Run.future(b.build(stream=False)[0]))
    elif kind == "idle stream":
        def idle() -> Iterator[pb.RunChunk]:
            stop.wait()
            return
            yield
        calls.append(stub.RunStream(idle()))
    elif kind == "slow stream":
        def slow() -> Iterator[pb.RunChunk]:
            yield pb.RunChunk(request=pb.RunRequest(tensors=[pb.Tensor(
                dtype=dtypes.float32.enum, shape=[1 << 18], streamed_bytes=1 << 20)]))
            while not stop.wait(0.2):
                yield pb.RunChunk(data=b"x")
        calls.append(stub.RunStream(slow()))
    elif kind == "health watch":
        calls.append(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()))


WAITS = ["wait without deadline", "sync step without deadline"]
STREAMS = ["idle stream", "slow stream", "health watch"]


@pytest.mark.parametrize("kinds", [WAITS, STREAMS, WAITS + STREAMS],
                         ids=["waits", "streams", "all"])
def test_sigterm_ends_every_call_and_writes_the_final_checkpoint(tmp_path: Path,
                                                                  kinds: list[str]) -> None:
    server = start_server_process(tmp_path / "ckpt", "--save-every", "1000")
    stop = threading.Event()
    calls: list[grpc.Future] = []
    try:
        _counter(server.address, 41)
        for kind in kinds:
            for _ in range(8):
                _in_background(calls, kind, server.address, stop)
        time.sleep(0.5)  # lets the calls reach the server
        log = _terminate(server)
    finally:
        stop.set()
        if server.process.poll() is None:
            server.process.kill()
    assert "final checkpoint written" in log
    assert _checkpoints(tmp_path / "ckpt")
    assert int(_restored(tmp_path / "ckpt", "counter")) == 41
    for call in calls:  # every call ended, none succeeded
        with pytest.raises(grpc.RpcError):
            for _ in call if hasattr(call, "__iter__") else [call.result(timeout=5)]:
                pass


def test_sigterm_while_health_watchers_go_away(tmp_path: Path) -> None:
    """Watchers cancelling while the server reports NOT_SERVING to them (this once hung the
    server in grpc_health's non-blocking Watch)."""
    server = start_server_process(tmp_path / "ckpt")
    try:
        _counter(server.address, 5)
        # As many watchers as the server admits: two connections, each with its share (half)
        # of the 12 slots for waits (gRPC would share one connection between the channels).
        channels = [grpc.insecure_channel(server.address,
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(2)]
        watches = [health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                   for channel in channels for _ in range(6)]
        for watch in watches:
            next(watch)
        for watch in watches:
            watch.cancel()
        log = _terminate(server)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "final checkpoint written" in log


def test_a_request_in_flight_at_sigterm_completes_and_is_saved(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "ckpt")
    try:
        _counter(server.address)
        b = RequestBuilder()
        big = b.const(np.full((900, 900), 1e-3, np.float32), dtypes.float32)
        prev = big
        for _ in range(8):
            prev = b.node("matmul", [prev, big])
        # The update depends on the slow chain, so it runs after it.
        b.target(b.node("assign_add", [b.const(np.int64(1), dtypes.int64)], variable="counter",
                        control_inputs=[prev]))
        result: list[object] = []
        with vs.connect(server.address) as c:
            thread = threading.Thread(target=lambda: result.append(c.run(b)))
            thread.start()
            time.sleep(0.3)
            log = _terminate(server)
            thread.join()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert result, "the request in flight got no answer"
    assert "saved checkpoint" in log
    assert int(_restored(tmp_path / "ckpt", "counter")) == 1


def test_state_is_saved_on_exit_by_default(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    server = start_server_process(folder)
    _counter(server.address, 7)
    log = _terminate(server)
    assert "final checkpoint written: model.ckpt-1" in log
    assert "saved checkpoint model.ckpt-1 (1 tensors" in log
    assert int(_restored(folder, "counter")) == 7
    # Restored and unchanged: nothing new is written.
    assert _checkpoints(folder) == ["model.ckpt-1"]


def test_a_restart_without_restore_says_how_to_load_the_saved_state(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    server = start_server_process(folder)
    _counter(server.address, 7)
    _terminate(server)
    restarted = start_server_process(folder)
    log = _terminate(restarted)
    assert f"starting with no variables; the newest checkpoint in {folder} is model.ckpt-1 " \
           "(--restore latest loads it)" in log


def test_an_empty_store_writes_nothing_on_exit(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "ckpt")
    log = _terminate(server)
    assert "nothing to save on exit" in log
    assert _checkpoints(tmp_path / "ckpt") == []


def test_no_save_on_exit_logs_what_is_discarded(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "ckpt", "--no-save-on-exit")
    _counter(server.address, 3)
    with vs.connect(server.address) as c:
        c.Variable(np.zeros(2, np.float32), name="w")
    log = _terminate(server)
    assert "--no-save-on-exit: discarding the changes of 2 variables since the last " \
        "checkpoint (counter, w)" in log
    assert _checkpoints(tmp_path / "ckpt") == []


def _serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "varstore.cli", "serve", "--port", "0",
                             "--checkpoint-dir", str(tmp_path / "ckpt"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=EXIT_WITHIN)
    return line + log


def test_default_address_is_loopback(tmp_path: Path) -> None:
    out = _first_line(_serve(tmp_path, "--metrics-port", "0"))
    assert "serving on 127.0.0.1:" in out
    assert "metrics at http://127.0.0.1:" in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]"])
def test_other_interfaces_need_a_token_tls_or_the_flag(tmp_path: Path, host: str) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "varstore.cli", "serve", "--host", host, "--port", "0",
         "--checkpoint-dir", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=EXIT_WITHIN)
    assert refused.returncode == 1
    assert f"refusing to listen on {host} without --token-file or TLS" in refused.stderr
    assert "--allow-insecure-remote" in refused.stderr
    out = _first_line(_serve(tmp_path, "--host", host, "--allow-insecure-remote"))
    assert "serving on" in out
    assert "with neither a token nor TLS (--allow-insecure-remote)" in out
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken\n")
    out = _first_line(_serve(tmp_path, "--host", host, "--token-file", str(tokens)))
    assert "serving on" in out and "neither a token nor TLS" not in out
