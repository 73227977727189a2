"""Malformed and hostile requests against a live server.

Whatever arrives (random bytes, graphs with bad dtypes, shapes, indices, ops and attributes,
truncated or oversized streams), the server answers with a status that names the problem,
never INTERNAL or UNKNOWN, keeps serving, and leaves the variables it already held unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import varstore as vs
from varstore import dtypes
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server
from varstore.server.ops import OPS
from varstore.server.store import held_for

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CALL_TIMEOUT = 30.0
# Codes that mean "the server failed", as opposed to "the request was refused".
SERVER_FAILURES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                   grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
SERVICE = "/varstore.v1.VariableService/"
MAX_REQUEST_BYTES = 8 << 20

# Variables the fuzzer must never change: it may read them and bind to them, not update them.
KEPT: dict[str, np.ndarray] = {
    "kept/w": np.arange(12, dtype=np.float32).reshape(4, 3),
    "kept/step": np.array(7, dtype=np.int64),
    "kept/flags": np.array([True, False]),
}
READ_ONLY_OPS = ["read", "gather", "is_initialized", "read_if_initialized"]
SCRATCH = ["scratch/a", "scratch/b", "scratch/c"]
HOSTILE_NAMES = ["", "/", "x" * 65537, "bad name", "trailing\n", "é", "kept/w/"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server holding KEPT; a memory limit keeps hostile shapes from exhausting the host."""
    srv = create_server(ServerConfig(
        host="127.0.0.1", port=0, checkpoint_dir=tmp_path_factory.mktemp("fuzz"),
        max_memory=4 << 20, max_request_bytes=MAX_REQUEST_BYTES))
    srv.start()
    with vs.connect(f"127.0.0.1:{srv.port}") as client:
        for name, value in KEPT.items():
            client.Variable(value, name=name)
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture(scope="module")
def channel(live: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{live.port}") as ch:
        yield ch


def kept_state(live: Server) -> dict[str, tuple[int, list[Any]]]:
    return {name: (live.store.get(name).version, live.store.get(name).read().tolist())
            for name in KEPT}


@pytest.fixture(scope="module")
def original(live: Server) -> dict[str, tuple[int, list[Any]]]:
    return kept_state(live)


def assert_refused_cleanly(call: Callable[[], object], may_wait: bool = False) -> None:
    """Runs ``call()``; an error must be a status the server chose, not a failure. Only a call
    that ``may_wait`` may run into its deadline."""
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() not in SERVER_FAILURES, (e.code(), e.details())
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not may_wait:
            assert e.details() != "Deadline Exceeded", "the server did not answer in time"


def assert_healthy(live: Server, channel: grpc.Channel,
                   original: dict[str, tuple[int, list]]) -> None:
    status: grpc.UnaryUnaryMultiCallable[bytes, pb.StatusResponse] = channel.unary_unary(
        SERVICE + "Status", request_serializer=None,
        response_deserializer=pb.StatusResponse.FromString)
    assert status(pb.StatusRequest().SerializeToString(), timeout=CALL_TIMEOUT).version
    assert kept_state(live) == original
    # Every call gave its memory back: the budget holds the variables and nothing else.
    assert settled_budget(live) == (held_by_variables(live), 0)


def held_by_variables(live: Server) -> int:
    """What the store's variables hold of the memory budget (strings with their overhead)."""
    return sum(held_for(v) for v in live.store.variables())


def settled_budget(live: Server) -> tuple[int, int]:
    """The budget's (used, request bytes) once calls' leases are given back: they are, just
    after a call's status is sent (waits up to CALL_TIMEOUT for that)."""
    budget = live.store.budget
    deadline = time.monotonic() + CALL_TIMEOUT
    while (budget.used != held_by_variables(live) or budget.requests) and \
            time.monotonic() < deadline:
        time.sleep(0.005)
    return budget.used, budget.requests


# --- random bytes ----------------------------------------------------------------------------

UNARY_METHODS = ["Run", "ListVariables", "WaitInitialized", "LatestCheckpoint", "Status"]


@FUZZ
@given(method=st.sampled_from([*UNARY_METHODS, "RunStream", "health"]),
       messages=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_bytes(live: Server, channel: grpc.Channel, original: dict,
                      method: str, messages: list[bytes]) -> None:
    # Identity serializers: the bytes go out exactly as drawn.
    unary: grpc.UnaryUnaryMultiCallable[bytes, bytes]
    if method == "RunStream":
        stream: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            SERVICE + method)
        assert_refused_cleanly(lambda: list(stream(iter(messages), timeout=CALL_TIMEOUT)))
    elif method == "health":
        unary = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert_refused_cleanly(lambda: unary(messages[0], timeout=CALL_TIMEOUT))
    else:
        unary = channel.unary_unary(SERVICE + method)
        # WaitInitialized may wait for what its (random) request names: bounded by the deadline.
        waits = method == "WaitInitialized"
        assert_refused_cleanly(
            lambda: unary(messages[0], timeout=0.5 if waits else CALL_TIMEOUT), may_wait=waits)
    assert_healthy(live, channel, original)


# --- random graphs ---------------------------------------------------------------------------
# Mostly well-formed requests with a hostile detail here and there, so that requests get past
# validation into the executor and the kernels.


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` most of the time, now and then ``bad``."""
    # Not integers(): Hypothesis favours their bounds, which would make ``bad`` common.
    return st.sampled_from([False] * 24 + [True]).flatmap(lambda b: bad if b else good)


VALID_DTYPES = [dtypes.float32, dtypes.float64, dtypes.int32, dtypes.int64, dtypes.bool_,
                dtypes.string, dtypes.float16, dtypes.bfloat16, dtypes.uint8, dtypes.complex64]
DTYPE_ENUMS = mostly(st.sampled_from([d.enum for d in VALID_DTYPES]),
                     st.integers(-5, 200) | st.sampled_from([0, 20, 21, 101, (1 << 31) - 1,
                                                             -(1 << 31)]))
HUGE_DIMS = st.sampled_from([1 << 20, 1 << 31, 1 << 62, (1 << 63) - 1])
SHAPE = mostly(st.lists(st.integers(0, 4), max_size=3),
               st.lists(st.integers(-3, 4) | HUGE_DIMS, max_size=4)
               | st.lists(st.integers(0, 2), min_size=30, max_size=40))
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -1.0, 1e308])
ATTR_VALUES = {
    "shape": st.builds(lambda d: pb.AttrValue(shape=pb.Shape(dim=d)), SHAPE),
    "axis": st.builds(lambda d: pb.AttrValue(shape=pb.Shape(dim=d)),
                      st.lists(st.integers(-4, 4), max_size=2)),
    "dtype": st.builds(lambda i: pb.AttrValue(i=i), DTYPE_ENUMS),
    "seed": st.builds(lambda i: pb.AttrValue(i=i), st.integers(-(1 << 63), (1 << 63) - 1)),
    **dict.fromkeys(["mean", "stddev", "minval", "maxval", "lr", "learning_rate", "momentum"],
                    st.builds(lambda f: pb.AttrValue(f=f), FLOATS)),
    **dict.fromkeys(["keepdims", "transpose_a", "transpose_b"],
                    st.builds(lambda b: pb.AttrValue(b=b), st.booleans())),
}
ANY_ATTR = st.one_of(
    st.builds(lambda i: pb.AttrValue(i=i), st.integers(-(1 << 63), (1 << 63) - 1)
              | st.integers(-3, 30)),
    st.builds(lambda f: pb.AttrValue(f=f), FLOATS),
    st.builds(lambda s: pb.AttrValue(s=s), st.text(max_size=20)),
    st.builds(lambda b: pb.AttrValue(b=b), st.booleans()),
    st.builds(lambda d: pb.AttrValue(shape=pb.Shape(dim=d)), SHAPE),
    st.just(pb.AttrValue()))
ATTR_KEYS = ["shape", "dtype", "seed", "mean", "stddev", "minval", "maxval", "axis", "keepdims",
             "transpose_a", "transpose_b", "lr", "learning_rate", "momentum"]
ANY_OP = mostly(st.sampled_from(sorted(OPS)), st.text(max_size=12))


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    """A consistent (dtype, shape, content) tensor, now and then an inconsistent one."""
    if draw(mostly(st.just(False), st.just(True))):
        return pb.Tensor(dtype=draw(DTYPE_ENUMS), shape=draw(SHAPE),
                         content=draw(st.binary(max_size=64)))
    dt = draw(st.sampled_from(VALID_DTYPES))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    n = int(np.prod(shape, dtype=np.int64))
    if dt.is_string:
        content = np.full(n, 1, "<u8").tobytes() + b"s" * n
    elif dt == dtypes.bool_:
        content = bytes(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    else:
        content = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))
    return pb.Tensor(dtype=dt.enum, shape=shape, content=content)


@st.composite
def node(draw: st.DrawFn, op: str, i: int, tensor_count: int) -> pb.Node:
    """Node ``i`` running ``op``: mostly the right number of earlier inputs and fitting
    attributes; scratch variables for any op, kept ones only for read-only ops."""
    opdef = OPS.get(op)
    earlier = mostly(st.integers(0, max(i - 1, 0)), st.integers(-2, i + 2))
    arity = draw(mostly(st.just(opdef.arity) if opdef is not None and opdef.arity is not None
                        else st.integers(0, 3), st.integers(0, 3)))
    names = [*SCRATCH] + (list(KEPT) if op in READ_ONLY_OPS else [])
    uses_variable = opdef is None or opdef.uses_variable or draw(mostly(st.just(False),
                                                                        st.just(True)))
    keys = draw(st.lists(mostly(st.sampled_from(ATTR_KEYS), st.text(max_size=100)),
                         max_size=2, unique=True))
    if op in INITIALIZERS:
        keys = draw(mostly(st.just(["shape", "dtype"]), st.just([]))) + keys
    return pb.Node(
        op=op,
        inputs=[draw(earlier) for _ in range(arity)],
        control_inputs=draw(st.lists(earlier, max_size=1)) if i else [],
        variable=draw(mostly(st.sampled_from(names), st.sampled_from(["", *HOSTILE_NAMES])))
        if uses_variable else "",
        tensor=draw(mostly(st.integers(0, max(tensor_count - 1, 0)), st.integers(-2, 10))),
        attrs={k: draw(mostly(ATTR_VALUES.get(k, ANY_ATTR), ANY_ATTR)) for k in keys})


INITIALIZERS = ["zeros", "ones", "random_normal", "random_uniform", "truncated_normal",
                "glorot_uniform"]
SOURCES = st.sampled_from(["const"] * 6 + ["read"] * 2 + INITIALIZERS)


@st.composite
def run_requests(draw: st.DrawFn) -> pb.RunRequest:
    """Source nodes (constants, reads, initializers), then ops on them, the last one fetched;
    and maybe variables to create or bind."""
    tensor_list = draw(st.lists(tensors(), min_size=1, max_size=3))
    ops = [draw(SOURCES) for _ in range(draw(st.integers(1, 3)))]
    ops += [draw(ANY_OP) for _ in range(draw(st.integers(1, 3)))]
    nodes = [draw(node(op, i, len(tensor_list))) for i, op in enumerate(ops)]
    n = len(nodes)
    specs = [pb.VariableSpec(
        name=draw(mostly(st.sampled_from([*SCRATCH, *KEPT]), st.sampled_from(HOSTILE_NAMES))),
        dtype=draw(DTYPE_ENUMS), shape=pb.Shape(dim=draw(SHAPE)),
        trainable=draw(st.booleans()),
        mode=draw(mostly(st.sampled_from([pb.CREATE_OR_BIND, pb.BIND]), st.just(7))),
        initializer=draw(mostly(st.integers(0, n), st.integers(-1, n + 2))),
        created_by=draw(st.text(max_size=100)))
        for _ in range(draw(st.integers(0, 2)))]
    outputs = mostly(st.integers(0, n - 1), st.integers(-1, n + 1))
    return pb.RunRequest(
        variables=specs, nodes=nodes, tensors=tensor_list,
        fetches=[n - 1, *draw(st.lists(outputs, max_size=2))],
        targets=draw(st.lists(outputs, max_size=2)))


@FUZZ
@given(request=run_requests())
def test_random_run_requests(live: Server, channel: grpc.Channel, original: dict,
                             request: pb.RunRequest) -> None:
    run = channel.unary_unary(SERVICE + "Run", request_serializer=pb.RunRequest.SerializeToString,
                              response_deserializer=pb.RunResponse.FromString)
    assert_refused_cleanly(lambda: run(request, timeout=CALL_TIMEOUT))
    assert_healthy(live, channel, original)


# --- streams ---------------------------------------------------------------------------------

@st.composite
def streams(draw: st.DrawFn) -> list[pb.RunChunk]:
    """A header whose streamed tensors declare sizes, then data chunks that may be short,
    long, missing, or another header."""
    request = draw(run_requests())
    for tensor in request.tensors:
        if draw(st.booleans()):
            declared = draw(st.integers(-2, 64) | st.sampled_from(
                [MAX_REQUEST_BYTES + 1, 1 << 40, (1 << 63) - 1]))
            tensor.streamed_bytes = declared
            if draw(st.booleans()):
                tensor.ClearField("content")
    first = draw(st.sampled_from(["request", "response", "data", "empty"]))
    header = {"request": pb.RunChunk(request=request),
              "response": pb.RunChunk(response=pb.RunResponse()),
              "data": pb.RunChunk(data=b"\0" * 8), "empty": pb.RunChunk()}[first]
    data = draw(st.lists(st.binary(max_size=80).map(lambda b: pb.RunChunk(data=b)), max_size=4))
    if draw(st.booleans()):
        data.append(pb.RunChunk(request=request))
    return [header, *data]


@FUZZ
@given(chunks=streams())
def test_truncated_and_oversized_streams(live: Server, channel: grpc.Channel, original: dict,
                                         chunks: list[pb.RunChunk]) -> None:
    run_stream = channel.stream_stream(SERVICE + "RunStream",
                                       request_serializer=pb.RunChunk.SerializeToString,
                                       response_deserializer=pb.RunChunk.FromString)
    assert_refused_cleanly(lambda: list(run_stream(iter(chunks), timeout=CALL_TIMEOUT)))
    assert_healthy(live, channel, original)


def test_oversized_stream_is_resource_exhausted(live: Server, channel: grpc.Channel,
                                                original: dict) -> None:
    header = pb.RunChunk(request=pb.RunRequest(
        tensors=[pb.Tensor(dtype=dtypes.uint8.enum, shape=[MAX_REQUEST_BYTES + 1],
                           streamed_bytes=MAX_REQUEST_BYTES + 1)],
        nodes=[pb.Node(op="const")], fetches=[0]))
    run_stream = channel.stream_stream(SERVICE + "RunStream",
                                       request_serializer=pb.RunChunk.SerializeToString,
                                       response_deserializer=pb.RunChunk.FromString)
    with pytest.raises(grpc.RpcError) as e:
        list(run_stream(iter([header]), timeout=CALL_TIMEOUT))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details() == (f"request of {MAX_REQUEST_BYTES + 1} bytes exceeds the limit "
                                 f"of {MAX_REQUEST_BYTES} bytes")
    assert_healthy(live, channel, original)


def test_kept_variables_survived(live: Server,
                                 original: dict[str, tuple[int, list[Any]]]) -> None:
    """After everything above, a client reads KEPT as it was."""
    with vs.connect(f"127.0.0.1:{live.port}") as client:
        b = RequestBuilder()
        for name in KEPT:
            b.fetch(b.node("read", variable=name))
        values = client.run(b)[0]
        versions = {v.name: v.version for v in client.list_variables("kept")}
    assert versions == {name: version for name, (version, _) in original.items()}
    for (name, expected), got in zip(KEPT.items(), values, strict=True):
        assert np.array_equal(got, expected), name


# --- what the fuzzer found -------------------------------------------------------------------

def _node(op: str, inputs: list[int] | None = None, **attrs: pb.AttrValue) -> pb.Node:
    return pb.Node(op=op, inputs=inputs or [], attrs=attrs)


def _dims(*dims: int) -> pb.AttrValue:
    return pb.AttrValue(shape=pb.Shape(dim=dims))


STRING = pb.AttrValue(i=dtypes.string.enum)


@pytest.mark.parametrize("nodes, message", [
    ([_node("random_uniform", shape=_dims(2), dtype=STRING)],
     "random_uniform (node 0): cannot make a string tensor of non-string values"),
    ([_node("ones", shape=_dims(2), dtype=STRING)],
     "ones (node 0): cannot make a string tensor of non-string values"),
    ([_node("zeros", shape=_dims(3), dtype=pb.AttrValue(i=dtypes.int64.enum)),
      _node("cast", [0], dtype=STRING)],
     "cast (node 1): cannot make a string tensor of non-string values"),
    ([_node("zeros", shape=_dims(*[1] * 36))],
     f"zeros (node 0): attribute 'shape' {[1] * 36} has rank 36 > 32"),
    ([_node("zeros", shape=_dims(2)), _node("reshape", [0], shape=_dims(*[1] * 39, 2))],
     f"reshape (node 1): attribute 'shape' {[1] * 39 + [2]} has rank 40 > 32"),
])
def test_values_the_wire_cannot_carry_are_refused(live: Server, channel: grpc.Channel,
                                                  original: dict, nodes: list[pb.Node],
                                                  message: str) -> None:
    run = channel.unary_unary(SERVICE + "Run", request_serializer=pb.RunRequest.SerializeToString,
                              response_deserializer=pb.RunResponse.FromString)
    with pytest.raises(grpc.RpcError) as e:
        run(pb.RunRequest(nodes=nodes, fetches=[len(nodes) - 1]), timeout=CALL_TIMEOUT)
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert_healthy(live, channel, original)
