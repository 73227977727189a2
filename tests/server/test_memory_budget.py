"""``--max-memory`` bounds what the server holds, and ``--max-request-bytes`` what all calls in
flight carry together.

A request of a few hundred bytes that would make the server allocate past the limit (stacks,
chains of results that all stay alive, casts to wider dtypes, strings that take more memory
than their wire bytes) is refused with RESOURCE_EXHAUSTED naming the node and what it would
have allocated, before allocating it; it changes nothing, and once any call ends, whichever
way, the budget holds exactly the variables again.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.conftest import start_server_process, stop_server_process
from varstore.common import codec
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server
from varstore.server.store import held_for

MEMORY = 4 << 20
REQUESTS = 2 << 20
MB = 1 << 20
F32, F64, I8, I64, BOOL, STRING, C128 = 1, 2, 6, 9, 10, 7, 18
# The bounded wait for a call's termination callbacks, which run just after its status is sent.
SETTLE_SECONDS = 10.0


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Server]:
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path,
                                     max_memory=MEMORY, max_request_bytes=REQUESTS))
    srv.start()
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture
def stub(small: Server) -> Iterator[pb_grpc.VariableServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{small.port}") as channel:
        yield pb_grpc.VariableServiceStub(channel)


def settled(small: Server, expected: int) -> int:
    """The budget's use once every call's lease is given back (waits for it to be
    ``expected``, at most SETTLE_SECONDS)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while small.store.budget.used != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return small.store.budget.used


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details() or ""


def node(op: str, inputs: list[int] | None = None, **attrs: object) -> pb.Node:
    values = {}
    for key, value in attrs.items():
        if isinstance(value, list):
            values[key] = pb.AttrValue(shape=pb.Shape(dim=value))
        elif isinstance(value, bool):
            values[key] = pb.AttrValue(b=value)
        else:
            assert isinstance(value, int)
            values[key] = pb.AttrValue(i=value)
    return pb.Node(op=op, inputs=inputs or [], attrs=values)


def ones(n: int, dtype: int = F32) -> pb.Node:
    return node("ones", shape=[n], dtype=dtype)


def chain(first: pb.Node, op: str, count: int) -> list[pb.Node]:
    """``first``, then ``count`` nodes of ``op`` each taking the previous one (and the first,
    for binary ops)."""
    nodes = [first]
    for _ in range(count):
        inputs = [len(nodes) - 1] + ([0] if op in ("add", "mul") else [])
        nodes.append(node(op, inputs))
    return nodes


def strings(values: list[bytes]) -> pb.Tensor:
    lengths = np.array([len(v) for v in values], "<u8").tobytes()
    return pb.Tensor(dtype=STRING, shape=[len(values)], content=lengths + b"".join(values))


QUARTER = MB // 4  # float32 elements in 1 MiB
# Hostile graphs of a few hundred bytes, the node each is refused at, and what it would make.
FLOODS: list[tuple[str, pb.RunRequest, str]] = [
    ("stack of one ones 150 times",
     pb.RunRequest(nodes=[ones(QUARTER), node("stack", [0] * 150)], fetches=[1]),
     rf"stack \(node 1\): a tensor of shape \[150, {QUARTER}\] and dtype float32"),
    ("100 chained adds, every result alive",
     pb.RunRequest(nodes=chain(ones(QUARTER), "add", 100), fetches=[100]),
     r"add \(node [1-4]\): a tensor of shape"),
    ("chained negations",
     pb.RunRequest(nodes=chain(ones(QUARTER), "neg", 50), fetches=[50]),
     r"neg \(node [1-4]\): a tensor of shape"),
    ("sigmoid of integers, computed in float64",
     pb.RunRequest(nodes=chain(ones(MB // 8, I64), "sigmoid", 1), fetches=[1]),
     r"sigmoid \(node 1\): a tensor of shape \[131072\] and dtype float64"),
    ("int8 cast to complex128",
     pb.RunRequest(nodes=[ones(MB, I8), node("cast", [0], dtype=C128)], fetches=[1]),
     rf"cast \(node 1\): a tensor of shape \[{MB}\] and dtype complex128"),
    ("a reduction of int8 kept in 64 bits",
     pb.RunRequest(nodes=[node("ones", shape=[MB, 1], dtype=I8),
                          node("reduce_mean", [0], axis=[1])], fetches=[1]),
     rf"reduce_mean \(node 1\): a tensor of shape \[{MB}\] and dtype float64"),
    ("boolean masks of everything, chained",
     pb.RunRequest(nodes=[node("ones", shape=[QUARTER], dtype=F32),
                          node("ones", shape=[QUARTER], dtype=BOOL),
                          *[node("boolean_mask", [0 if i == 0 else i + 1, 1]) for i in range(6)]],
                   fetches=[7]),
     r"boolean_mask \(node [2-7]\): a tensor of shape"),
    ("an outer product",
     pb.RunRequest(nodes=[node("ones", shape=[2048, 1], dtype=F64),
                          node("ones", shape=[1, 2048], dtype=F64), node("matmul", [0, 1])],
                   fetches=[2]),
     r"matmul \(node 2\): a tensor of shape \[2048, 2048\] and dtype float64"),
    ("random values drawn in float64",
     pb.RunRequest(nodes=[node("random_uniform", shape=[3 * QUARTER // 2], dtype=F32)],
                   fetches=[0]),
     r"random_uniform \(node 0\): a tensor of shape \[393216\] and dtype float64"),
    ("a gather that repeats a row",
     pb.RunRequest(nodes=[node("ones", shape=[1, 4096], dtype=F32),
                          node("zeros", shape=[4096], dtype=I64), node("gather", [0, 1])],
                   fetches=[2]),
     r"gather \(node 2\): a tensor of shape \[4096, 4096\] and dtype float32"),
    ("strings concatenated by broadcasting",
     pb.RunRequest(tensors=[strings([b"x" * (256 << 10)])],
                   nodes=[node("zeros", shape=[64], dtype=STRING), pb.Node(op="const"),
                          node("add", [0, 1])], fetches=[2]),
     r"add \(node 2\): a tensor of shape \[16777216\] and dtype uint8"),
    ("a string tensor that takes far more memory than its wire bytes",
     pb.RunRequest(tensors=[strings([b""] * 100_000)], nodes=[pb.Node(op="const")],
                   fetches=[0]),
     r"a string tensor of shape \[100000\] \(5600000 bytes\)"),
    ("a string variable of 100,000 elements",
     pb.RunRequest(variables=[pb.VariableSpec(name="s", dtype=STRING,
                                              shape=pb.Shape(dim=[100_000]))]),
     r"creating s \(5600513 bytes\)"),
]


@pytest.mark.parametrize("what, request_, message", FLOODS, ids=[f[0] for f in FLOODS])
def test_floods_are_refused_before_allocating(small: Server, stub: pb_grpc.VariableServiceStub,
                                              what: str, request_: pb.RunRequest,
                                              message: str) -> None:
    code, details = refusal(lambda: stub.Run(request_, timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert re.search(message, details), details
    assert re.search(rf"memory limit of {MEMORY} bytes \(\d+ in use\)|server's limit of "
                     rf"{MEMORY} bytes", details), details
    assert len(small.store) == 0
    assert settled(small, 0) == 0


def test_a_refused_request_changes_nothing_and_memory_comes_back(
        small: Server, stub: pb_grpc.VariableServiceStub) -> None:
    # assign_add, then a result too large to hold: the update is undone.
    stub.Run(pb.RunRequest(
        variables=[pb.VariableSpec(name="v", dtype=F32, shape=pb.Shape(dim=[QUARTER]),
                                   initializer=1)],
        nodes=[ones(QUARTER)]), timeout=30)
    held = held_for(small.store.get("v"))
    assert settled(small, held) == held
    request = pb.RunRequest(nodes=[
        ones(QUARTER), pb.Node(op="assign_add", inputs=[0], variable="v"),
        node("stack", [1] * 8)], fetches=[2])
    code, details = refusal(lambda: stub.Run(request, timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("stack (node 2)")
    assert np.all(small.store.get("v").read() == 1)
    # A fetched update that fits runs; one whose reply would not fit is undone too.
    reply = stub.Run(pb.RunRequest(nodes=[ones(QUARTER), pb.Node(
        op="assign_add", inputs=[0], variable="v")], targets=[1]), timeout=30)
    assert not reply.values and np.all(small.store.get("v").read() == 2)
    code, details = refusal(lambda: stub.Run(pb.RunRequest(nodes=[ones(QUARTER), pb.Node(
        op="assign_add", inputs=[0], variable="v")], fetches=[1]), timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert np.all(small.store.get("v").read() == 2)
    assert settled(small, held) == held


def _stream(header: pb.RunRequest, data: bytes, hold: threading.Event | None = None
            ) -> Iterator[pb.RunChunk]:
    yield pb.RunChunk(request=header)
    half = len(data) // 2
    yield pb.RunChunk(data=data[:half])
    if hold is not None:
        hold.wait(30)
    yield pb.RunChunk(data=data[half:])


def _sum_request(n: int) -> pb.RunRequest:
    return pb.RunRequest(tensors=[pb.Tensor(dtype=I8, shape=[n], streamed_bytes=n)],
                         nodes=[pb.Node(op="const"), node("reduce_sum", [0])], fetches=[1])


def test_request_bytes_in_flight_are_bounded_across_calls(
        small: Server, stub: pb_grpc.VariableServiceStub) -> None:
    size = 3 * REQUESTS // 4  # one such request fits the limit, two at once do not
    hold = threading.Event()
    first: dict[str, object] = {}

    def held_stream() -> None:
        try:
            first["reply"] = list(stub.RunStream(_stream(_sum_request(size), b"\1" * size, hold),
                                                 timeout=60))
        except grpc.RpcError as e:
            first["error"] = e
    thread = threading.Thread(target=held_stream)
    thread.start()
    deadline = time.monotonic() + SETTLE_SECONDS
    while small.store.budget.requests < size and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        code, details = refusal(lambda: list(stub.RunStream(
            _stream(_sum_request(size), b"\1" * size), timeout=30)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "would take the requests in flight past the server's limit of " \
               f"{REQUESTS} bytes" in details
        unary = pb.RunRequest(tensors=[pb.Tensor(dtype=I8, shape=[size // 2],
                                                 content=b"\1" * (size // 2))],
                              nodes=[pb.Node(op="const"), node("reduce_sum", [0])],
                              fetches=[1])
        code, details = refusal(lambda: stub.Run(unary, timeout=30))
        assert (code, details.startswith("a Run request")) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, True), details
    finally:
        hold.set()
        thread.join()
    assert "error" not in first
    assert settled(small, 0) == 0
    # With the first call over, the same requests go through.
    reply = list(stub.RunStream(_stream(_sum_request(size), b"\1" * size), timeout=30))
    _, (total,) = codec.join_chunks(iter(reply), "response", REQUESTS)
    assert total is not None and total.tolist() == np.int8(size % 256)
    assert stub.Run(unary, timeout=30).values
    assert settled(small, 0) == 0


@pytest.mark.parametrize("ending", ["cancelled", "deadline", "malformed", "kernel error",
                                    "success"])
def test_memory_is_given_back_however_a_call_ends(small: Server,
                                                  stub: pb_grpc.VariableServiceStub,
                                                  ending: str) -> None:
    size = REQUESTS // 2
    hold = threading.Event()
    if ending in ("cancelled", "deadline"):
        future = stub.RunStream(_stream(_sum_request(size), b"\1" * size, hold),
                                timeout=None if ending == "cancelled" else 1.0)
        deadline = time.monotonic() + SETTLE_SECONDS
        while small.store.budget.requests < size and time.monotonic() < deadline:
            time.sleep(0.01)
        assert small.store.budget.used >= size
        if ending == "cancelled":
            future.cancel()
        with pytest.raises(grpc.RpcError):
            list(future)
        hold.set()
    elif ending == "malformed":
        bad = _sum_request(size)
        bad.nodes[1].inputs[:] = [5]
        refusal(lambda: list(stub.RunStream(_stream(bad, b"\1" * size), timeout=30)))
    elif ending == "kernel error":
        bad = _sum_request(size)
        bad.nodes.append(node("matmul", [0, 0]))
        bad.fetches[:] = [2]
        refusal(lambda: list(stub.RunStream(_stream(bad, b"\1" * size), timeout=30)))
    else:
        list(stub.RunStream(_stream(_sum_request(size), b"\1" * size), timeout=30))
    assert settled(small, 0) == 0
    assert small.store.budget.requests == 0


def test_the_flags_bound_a_served_process(tmp_path: Path) -> None:
    srv = start_server_process(tmp_path / "ckpt", "--max-memory", "8M",
                               "--max-request-bytes", "4M")
    try:
        with grpc.insecure_channel(srv.address) as channel:
            served = pb_grpc.VariableServiceStub(channel)
            assert served.Status(pb.StatusRequest(), timeout=30).max_memory == 8 << 20
            code, details = refusal(lambda: served.Run(pb.RunRequest(
                nodes=[ones(QUARTER), node("stack", [0] * 150)], fetches=[1]), timeout=30))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details.startswith(f"stack (node 1): a tensor of shape [150, {QUARTER}]")
            code, details = refusal(lambda: list(served.RunStream(
                _stream(_sum_request(5 << 20), b"\1" * (5 << 20)), timeout=30)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert details == f"request of {5 << 20} bytes exceeds the limit of {4 << 20} bytes"
            reply = served.Run(pb.RunRequest(nodes=[ones(4), node("reduce_sum", [0])],
                                             fetches=[1]), timeout=30)
            assert np.frombuffer(reply.values[0].content, np.float32).tolist() == [4.0]
    finally:
        stop_server_process(srv)


def test_variable_names_count_against_the_limit(small: Server,
                                                stub: pb_grpc.VariableServiceStub) -> None:
    # Scalars of 4 bytes whose 60,000-character names are what takes the memory.
    created = 0
    with pytest.raises(grpc.RpcError) as e:
        for created in range(MEMORY // 60_000 + 1):  # noqa: B007 - counted after the loop
            stub.Run(pb.RunRequest(variables=[pb.VariableSpec(
                name=f"{created:05d}" + "n" * 60_000, dtype=F32, shape=pb.Shape())]),
                timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.match(rf"creating {created:05d}n+\.\.\. \(60005 characters\) \(60521 bytes\) "
                    rf"would exceed the server's memory limit of {MEMORY} bytes",
                    e.value.details() or "")
    assert len(small.store) == created
    assert settled(small, created * 60_521) == created * 60_521


def test_optimizer_scratch_is_charged(small: Server, stub: pb_grpc.VariableServiceStub) -> None:
    n = MB // 8  # three variables of half a MiB: FTRL's eight scratch arrays do not fit
    stub.Run(pb.RunRequest(
        variables=[pb.VariableSpec(name=name, dtype=F32, shape=pb.Shape(dim=[n]),
                                   initializer=1) for name in ("w", "w/accum", "w/linear")],
        nodes=[node("zeros", shape=[n], dtype=F32)]), timeout=30)
    scalar = pb.Tensor(dtype=F32, content=np.float32(0.5).tobytes())
    request = pb.RunRequest(
        tensors=[scalar],
        nodes=[pb.Node(op="ref", variable="w/accum"), pb.Node(op="ref", variable="w/linear"),
               ones(n), pb.Node(op="const"),
               pb.Node(op="apply_ftrl", inputs=[0, 1, 2, 3, 3, 3, 3, 3], variable="w")],
        targets=[4])
    code, details = refusal(lambda: stub.Run(request, timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith(f"apply_ftrl (node 4): a tensor of shape [8, {n}] and dtype "
                              "float32"), details
    assert all(not small.store.get(name).read().any() for name in ("w", "w/accum", "w/linear"))
