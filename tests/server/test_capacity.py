"""No client, signed in or not, can take the server's capacity.

Each test opens more hostile calls than the server has threads (idle or slow streams, long
waits with any timeout, cancelled waits, synchronous steps that never complete, health
watches without a token, waiters on all variables), then checks that the health check, a
status call and a small update from a fresh client are answered, and that the hostile calls
end (refused, cancelled or timed out) instead of holding threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import varstore as vs
from varstore import dtypes
from varstore.errors import DeadlineExceededError, InvalidArgumentError
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server, ops
from varstore.server.app import Server
from varstore.server.kernels.base import OpDef

WORKERS = 8
HOSTILE = 3 * WORKERS  # hostile calls per flood: three times the server's threads
IDLE_SECONDS = 0.5
TOKEN = "s3cret"
VICTIM_DEADLINE = 20.0  # generous: the victims must be answered, whenever the machine allows


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    """A server with few threads and a short stream idle timeout, requiring a token."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ck",
                                     max_workers=WORKERS, stream_idle_seconds=IDLE_SECONDS,
                                     token_file=tokens))
    srv.start()
    yield srv
    srv.stop(grace=0.5)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _channel(srv: Server) -> grpc.Channel:
    return grpc.insecure_channel(f"127.0.0.1:{srv.port}")


def _victims_are_served(srv: Server) -> None:
    """A fresh client's health check, status and small update are all answered."""
    with _channel(srv) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=VICTIM_DEADLINE)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        status = pb_grpc.VariableServiceStub(channel).Status(
            pb.StatusRequest(), timeout=VICTIM_DEADLINE, metadata=AUTH)
        assert status.version
    with vs.connect(f"127.0.0.1:{srv.port}", token=TOKEN, timeout=VICTIM_DEADLINE) as c:
        counter = c.get_variable("victim/counter", shape=[], dtype=vs.int64,
                                 initializer=vs.zeros_initializer())
        before = int(counter.numpy())
        counter.assign_add(1)
        assert int(counter.numpy()) == before + 1


def _idle_requests(stop: threading.Event) -> Iterator[pb.RunChunk]:
    stop.wait()
    return
    yield


def _slow_requests(stop: threading.Event) -> Iterator[pb.RunChunk]:
    yield pb.RunChunk(request=pb.RunRequest(tensors=[pb.Tensor(
        dtype=dtypes.float32.enum, shape=[1 << 18], streamed_bytes=1 << 20)]))
    while not stop.wait(0.05):
        yield pb.RunChunk(data=b"x")


def _sync_wait(timeout: float) -> pb.RunRequest:
    b = RequestBuilder()
    b.fetch(b.node("sync_wait", group="gs", generation=0, timeout=timeout))
    return b.build(stream=False)[0]


def _open(srv: Server, kind: str, stop: threading.Event) -> list[Any]:
    """HOSTILE calls of ``kind`` (futures or response iterators), left running."""
    channel = _channel(srv)
    stub = pb_grpc.VariableServiceStub(channel)
    calls: list[Any] = []
    for _ in range(HOSTILE):
        if kind == "idle stream":
            calls.append(stub.RunStream(_idle_requests(stop), metadata=AUTH))
        elif kind == "slow stream":
            calls.append(stub.RunStream(_slow_requests(stop), metadata=AUTH))
        elif kind in ("long wait", "cancelled wait"):
            calls.append(stub.WaitInitialized.future(
                pb.WaitInitializedRequest(names=["never"], timeout_seconds=3600), metadata=AUTH))
        elif kind == "wait on all variables":
            calls.append(stub.WaitInitialized.future(
                pb.WaitInitializedRequest(timeout_seconds=math.inf), metadata=AUTH))
        elif kind == "sync step":
            calls.append(stub.Run.future(_sync_wait(3600.0), metadata=AUTH))
        elif kind == "health watch without token":
            calls.append(health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest()))
        elif kind == "reflection stream":
            reflect: Any = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
            calls.append(reflect(_idle_requests(stop), metadata=AUTH))
    if kind == "cancelled wait":
        for call in calls:
            call.cancel()
    return calls


FLOODS = ["idle stream", "slow stream", "long wait", "cancelled wait", "wait on all variables",
          "sync step", "health watch without token", "reflection stream"]


@pytest.mark.parametrize("kind", FLOODS)
def test_a_flood_of_long_calls_leaves_the_server_serving(small_server: Server,
                                                          kind: str) -> None:
    with vs.connect(f"127.0.0.1:{small_server.port}", token=TOKEN) as c:
        c.Variable(np.int64(0), name="gs")
        b = RequestBuilder()
        b.variable("uninitialized", dtypes.float32, [2])  # "all variables" never get ready
        c.run(b)
    stop = threading.Event()
    calls = _open(small_server, kind, stop)
    try:
        _victims_are_served(small_server)
        if kind in ("idle stream", "slow stream", "reflection stream"):
            # Stalled streams are cancelled; those past the limit were refused at once.
            codes = {_code(call) for call in calls}
            assert codes <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}
        elif kind == "health watch without token":
            # Refused for the token, or (while a peer's share is held) for the slots.
            codes = {_code(call) for call in calls}
            assert grpc.StatusCode.UNAUTHENTICATED in codes
            assert codes <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        stop.set()
        for call in calls:
            call.cancel()
    # Every slot is given back once the calls are gone.
    _eventually(lambda: _held(small_server) == 0, "slots to be given back")


def _held(srv: Server) -> int:
    return srv.capacity.waits.held + srv.capacity.transfers.held


def _code(call: Any) -> grpc.StatusCode:
    try:
        for _ in call:
            pass
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _eventually(condition: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    for _ in range(200):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_long_calls_past_the_limit_are_refused_with_a_reason(small_server: Server) -> None:
    stop = threading.Event()
    calls = _open(small_server, "long wait", stop)
    try:
        refused = []
        for call in calls:
            try:
                call.result(timeout=0.5)
            except grpc.FutureTimeoutError:
                continue
            except grpc.RpcError as e:
                refused.append((e.code(), e.details() or ""))
        share = small_server.capacity.waits.share  # one channel: one peer's share
        assert len(refused) == HOSTILE - share
        assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("long calls" in details and details.endswith("try again later")
                   for _, details in refused)
    finally:
        for call in calls:
            call.cancel()


def test_health_watches_past_the_limit_are_refused(small_server: Server) -> None:
    channel = _channel(small_server)
    watches = [health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                         metadata=AUTH)
               for _ in range(HOSTILE)]
    try:
        served, refused = 0, 0
        for watch in watches:
            try:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                served += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused += 1
        assert served == small_server.capacity.waits.share
        assert refused == HOSTILE - served
        _victims_are_served(small_server)
    finally:
        for watch in watches:
            watch.cancel()
    _eventually(lambda: _held(small_server) == 0, "slots to be given back")


@pytest.mark.parametrize("timeout", [-1.0, math.nan, -math.inf])
def test_bad_wait_durations_are_refused(small_server: Server, timeout: float) -> None:
    with _channel(small_server) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.VariableServiceStub(channel).WaitInitialized(
                pb.WaitInitializedRequest(names=["x"], timeout_seconds=timeout),
                timeout=VICTIM_DEADLINE, metadata=AUTH)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "timeout_seconds" in (raised.value.details() or "")
    with vs.connect(f"127.0.0.1:{small_server.port}", token=TOKEN) as c:
        c.Variable(np.int64(0), name="gs")
        b = RequestBuilder()
        b.fetch(b.node("sync_wait", group="gs", generation=0, timeout=timeout))
        with pytest.raises(InvalidArgumentError, match="sync_wait's timeout"):
            c.run(b)


def test_huge_wait_durations_end_at_the_call_deadline(small_server: Server) -> None:
    with _channel(small_server) as channel:
        for timeout in (1e300, math.inf):
            reply = pb_grpc.VariableServiceStub(channel).WaitInitialized(
                pb.WaitInitializedRequest(names=["x"], timeout_seconds=timeout),
                timeout=0.5, metadata=AUTH)
            assert list(reply.uninitialized) == ["x"]
    with vs.connect(f"127.0.0.1:{small_server.port}", token=TOKEN, timeout=0.5) as c:
        c.Variable(np.int64(0), name="gs")
        b = RequestBuilder()
        b.fetch(b.node("sync_wait", group="gs", generation=0, timeout=math.inf))
        with pytest.raises(DeadlineExceededError):
            c.run(b)


@pytest.fixture
def slow_neg(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Makes the server's ``neg`` op wait (up to a minute) until released: (started, release).
    Released at the end of the test whatever happens."""
    started, release = threading.Event(), threading.Event()

    def kernel(ctx: Any, node: Any, inputs: list[Any]) -> Any:
        started.set()
        release.wait(60)
        return np.negative(inputs[0])

    monkeypatch.setitem(ops.OPS, "neg", OpDef(kernel, 1))
    yield started, release
    release.set()


def _add_neg(client: vs.Client, of_variable: bool) -> tuple[threading.Thread, list[str]]:
    """Starts ``assign_add(hot, neg(x))`` in a thread: x = 5 (a constant) or ``read(seven)``
    (then ``neg`` runs under the locks of both variables); returns the thread and where it
    puts its outcome ("done" or the error's class)."""
    if of_variable:
        client.get_variable("seven", [], initializer=vs.constant_initializer(7.0))
    b = RequestBuilder()
    x = b.node("read", variable="seven") if of_variable else b.const(np.float32(5), vs.float32)
    b.target(b.node("assign_add", [b.node("neg", [x])], variable="hot"))
    outcome: list[str] = []

    def run() -> None:
        try:
            client.run(b)
            outcome.append("done")
        except vs.errors.OpError as e:
            outcome.append(type(e).__name__)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _connect(srv: Server, timeout: float = VICTIM_DEADLINE) -> vs.Client:
    return vs.connect(f"127.0.0.1:{srv.port}", token=TOKEN, timeout=timeout)


def test_a_long_computation_of_no_variable_holds_no_lock(
        small_server: Server, slow_neg: tuple[threading.Event, threading.Event]) -> None:
    started, release = slow_neg
    with _connect(small_server) as a, _connect(small_server) as b:
        hot = a.get_variable("hot", [], initializer=vs.zeros_initializer())
        long_run, outcome = _add_neg(a, of_variable=False)
        assert started.wait(VICTIM_DEADLINE)
        b.get_variable("hot", []).assign_add(1.0)  # while the long Run computes
        assert float(hot.numpy()) == 1.0
        release.set()
        long_run.join()
        assert (outcome, float(hot.numpy())) == (["done"], -4.0)


def test_waiting_for_a_lock_ends_at_the_deadline_and_changes_nothing(
        small_server: Server, slow_neg: tuple[threading.Event, threading.Event]) -> None:
    started, release = slow_neg
    with _connect(small_server) as a, _connect(small_server, timeout=0.5) as b:
        hot = a.get_variable("hot", [], initializer=vs.constant_initializer(2.0))
        long_run, outcome = _add_neg(a, of_variable=True)  # computed under hot's lock
        assert started.wait(VICTIM_DEADLINE)
        hot_b = b.get_variable("hot", [])
        # Refused at the deadline (or, on a loaded machine, when the long Run already holds
        # this process's share of the waits' pool).
        with pytest.raises((DeadlineExceededError, vs.errors.ResourceExhaustedError)):
            hot_b.assign_add(1.0)
        release.set()
        long_run.join()
        assert (outcome, float(hot.numpy())) == (["done"], -5.0)  # the refused update: none


def test_calls_waiting_for_a_held_lock_leave_the_server_serving(
        small_server: Server, slow_neg: tuple[threading.Event, threading.Event]) -> None:
    """More callers than threads wait for a lock held for long: they hold slots of the
    waits' pool at most, are refused past it (and past the deadline) having changed nothing,
    and the health check, status and other variables are answered meanwhile."""
    started, release = slow_neg
    outcomes: list[str] = []

    def caller() -> None:
        with _connect(small_server, timeout=5.0) as c:
            try:
                c.get_variable("hot", []).assign_add(1.0)
                outcomes.append("done")
            except vs.errors.OpError as e:
                outcomes.append(type(e).__name__)

    with _connect(small_server) as a:
        hot = a.get_variable("hot", [], initializer=vs.zeros_initializer())
        long_run, outcome = _add_neg(a, of_variable=True)
        assert started.wait(VICTIM_DEADLINE)
        callers = [threading.Thread(target=caller) for _ in range(HOSTILE)]
        for thread in callers:
            thread.start()
        try:
            _victims_are_served(small_server)
        finally:
            release.set()
        long_run.join()
        for thread in callers:
            thread.join()
        assert set(outcomes) <= {"done", "ResourceExhaustedError", "DeadlineExceededError"}
        # The long Run (refused past its grace when the waits are taken, and retried) adds
        # -7 once if it succeeded; every refused update changed nothing.
        assert float(hot.numpy()) == outcomes.count("done") - 7 * outcome.count("done")
    _eventually(lambda: _held(small_server) == 0, "slots to be given back")


def _waits_from(srv: Server, channels: int) -> tuple[list[grpc.Channel], list[Any]]:
    """HOSTILE hour-long waits from each of ``channels`` connections (gRPC would share one
    connection between channels of one process), left running."""
    opened = [grpc.insecure_channel(f"127.0.0.1:{srv.port}",
                                    options=[("grpc.use_local_subchannel_pool", 1)])
              for _ in range(channels)]
    calls = [pb_grpc.VariableServiceStub(channel).WaitInitialized.future(
        pb.WaitInitializedRequest(names=["never"], timeout_seconds=3600), metadata=AUTH)
        for channel in opened for _ in range(HOSTILE)]
    return opened, calls


def test_one_client_holding_waits_leaves_other_clients_long_calls_served(
        small_server: Server) -> None:
    with _connect(small_server) as c:
        big = c.get_variable("big", [1 << 19], initializer=vs.ones_initializer())  # 2 MiB
        _, calls = _waits_from(small_server, 1)
        try:
            assert c.save("m") == "m"
            assert float(big.numpy().sum()) == 1 << 19  # a streamed pull
            assert c.wait_initialized(["big"], timeout=VICTIM_DEADLINE) == []
            assert small_server.capacity.waits.held == small_server.capacity.waits.share
        finally:
            for call in calls:
                call.cancel()
    _eventually(lambda: _held(small_server) == 0, "slots to be given back")


def test_waits_from_many_clients_leave_saves_and_transfers_served(
        small_server: Server) -> None:
    with _connect(small_server) as c:
        big = c.get_variable("big", [1 << 19], initializer=vs.ones_initializer())
        _, calls = _waits_from(small_server, 4)
        try:
            _eventually(lambda: small_server.capacity.waits.held
                        == small_server.capacity.waits.limit, "the waits to fill their pool")
            assert c.save("m") == "m"
            big.assign(np.zeros(1 << 19, np.float32))
            assert float(big.numpy().sum()) == 0.0
            c.restore("m")
            assert float(big.numpy().sum()) == 1 << 19
        finally:
            for call in calls:
                call.cancel()
    _eventually(lambda: _held(small_server) == 0, "slots to be given back")


def test_long_computations_leave_the_server_serving(
        small_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """More Runs than threads, each a long chain of nodes: past a short grace each must hold
    a slot of the waits' pool, the others are refused (RESOURCE_EXHAUSTED, retryable,
    nothing changed) and the health check, status and small updates are answered."""
    release = threading.Event()

    def kernel(ctx: Any, node: Any, inputs: list[Any]) -> Any:
        release.wait(0.1)
        return np.negative(inputs[0])

    monkeypatch.setitem(ops.OPS, "neg", OpDef(kernel, 1))
    b = RequestBuilder()
    x = b.const(np.float32(1), vs.float32)
    for _ in range(400):
        x = b.node("neg", [x])
    b.fetch(x)
    request = b.build(stream=False)[0]
    with _channel(small_server) as channel:
        stub = pb_grpc.VariableServiceStub(channel)
        calls = [stub.Run.future(request, metadata=AUTH) for _ in range(HOSTILE)]
        try:
            _victims_are_served(small_server)
        finally:
            release.set()
        codes = {_code_of(call) for call in calls}
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    _eventually(lambda: _held(small_server) == 0, "slots to be given back")


def _code_of(future: Any) -> grpc.StatusCode:
    try:
        future.result()
    except grpc.RpcError as e:
        assert e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED \
            or (e.details() or "").endswith("try again later")
        return e.code()
    return grpc.StatusCode.OK
