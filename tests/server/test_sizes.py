"""A live server checks every size, count and shape a request carries, exactly, before use.

Each hostile request is refused with the status that names its problem (never INTERNAL),
stores nothing, and quotes the client's input only up to a bounded length, so that even a
200 KB name comes back as the real status rather than a metadata overflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.server.app import Server

U64 = 1 << 64
STRING, FLOAT, INT64 = 7, 1, 9
MESSAGE_BOUND = 1024
HUGE = "a" * 200_000


@pytest.fixture
def stub(address: str) -> Iterator[pb_grpc.VariableServiceStub]:
    with grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", -1)]) as channel:
        yield pb_grpc.VariableServiceStub(channel)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status ``call`` fails with; it must fail."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details() or ""


def _strings(lengths: list[int], data: bytes) -> bytes:
    return b"".join(n.to_bytes(8, "little") for n in lengths) + data


WRAPPING_STRINGS = [([U64 - 1, 4], b"xyz"), ([1 << 63, 1 << 63, 3], b"abc"),
                    ([U64 - 2, 2, 3], b"abc"), ([4, U64 - 1], b"xyz")]


@pytest.mark.parametrize("stream", [False, True], ids=["Run", "RunStream"])
@pytest.mark.parametrize("lengths, data", WRAPPING_STRINGS)
def test_wrapping_string_lengths_are_refused_and_store_nothing(
        server: Server, stub: pb_grpc.VariableServiceStub, stream: bool,
        lengths: list[int], data: bytes) -> None:
    content = _strings(lengths, data)
    n = len(lengths)
    tensor = (pb.Tensor(dtype=STRING, shape=[n], streamed_bytes=len(content)) if stream
              else pb.Tensor(dtype=STRING, shape=[n], content=content))
    request = pb.RunRequest(
        variables=[pb.VariableSpec(name="s", dtype=STRING, shape=pb.Shape(dim=[n]),
                                   initializer=1)],
        nodes=[pb.Node(op="const", tensor=0)], tensors=[tensor])
    if stream:
        chunks = [pb.RunChunk(request=request), pb.RunChunk(data=content)]
        code, details = refusal(lambda: list(stub.RunStream(iter(chunks), timeout=30)))
    else:
        code, details = refusal(lambda: stub.Run(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"string tensor of shape [{n}]: its lengths add up to "
                              f"{sum(lengths)} bytes, it carries {len(data)}")
    assert len(server.store) == 0 and server.store.bytes_stored() == 0


# (request, code, start of the message) for shapes, ranks and counts no tensor can have.
def _zeros(dims: list[int], **extra: pb.AttrValue) -> pb.RunRequest:
    return pb.RunRequest(nodes=[pb.Node(op="zeros", attrs={
        "shape": pb.AttrValue(shape=pb.Shape(dim=dims)), **extra})], fetches=[0])


HOSTILE_SHAPES = [
    (pb.RunRequest(tensors=[pb.Tensor(dtype=FLOAT, shape=[1 << 62, 4], content=b"")],
                   nodes=[pb.Node(op="const")], fetches=[0]),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"shape [{1 << 62}, 4] is too large for any array (4-byte items)"),
    (pb.RunRequest(tensors=[pb.Tensor(dtype=FLOAT, shape=[1 << 40, 4], content=b"")],
                   nodes=[pb.Node(op="const")], fetches=[0]),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"tensor of dtype float32 and shape [{1 << 40}, 4] needs {1 << 44} bytes, got 0"),
    (pb.RunRequest(tensors=[pb.Tensor(dtype=STRING, shape=[1 << 61], content=b"\0" * 8)],
                   nodes=[pb.Node(op="const")], fetches=[0]),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"shape [{1 << 61}] is too large for any array (8-byte items)"),
    (pb.RunRequest(tensors=[pb.Tensor(dtype=STRING, shape=[1 << 58], content=b"\0" * 8)],
                   nodes=[pb.Node(op="const")], fetches=[0]),
     grpc.StatusCode.INVALID_ARGUMENT,
     f"string tensor of shape [{1 << 58}] needs {1 << 61} bytes of lengths, got 8"),
    (pb.RunRequest(tensors=[pb.Tensor(dtype=FLOAT, shape=[1] * 5000, content=b"")],
                   nodes=[pb.Node(op="const")], fetches=[0]),
     grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 1, 1"),
    (pb.RunRequest(variables=[pb.VariableSpec(name="v", dtype=FLOAT,
                                              shape=pb.Shape(dim=[1] * 5000))]),
     grpc.StatusCode.INVALID_ARGUMENT, "shape [1, 1, 1"),
    (pb.RunRequest(variables=[pb.VariableSpec(name="v", dtype=FLOAT,
                                              shape=pb.Shape(dim=[-(1 << 63)]))]),
     grpc.StatusCode.INVALID_ARGUMENT, f"shape [{-(1 << 63)}] has a negative dimension"),
    (pb.RunRequest(variables=[pb.VariableSpec(name="v", dtype=FLOAT,
                                              shape=pb.Shape(dim=[1 << 40, 1 << 20]))]),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "a tensor of shape [1099511627776, 1048576]"),
    (pb.RunRequest(variables=[pb.VariableSpec(name="v", dtype=FLOAT,
                                              shape=pb.Shape(dim=[1 << 40, 1 << 40]))]),
     grpc.StatusCode.INVALID_ARGUMENT,
     "shape [1099511627776, 1099511627776] is too large for any array"),
    (_zeros([1] * 5000), grpc.StatusCode.INVALID_ARGUMENT,
     "zeros (node 0): attribute 'shape' [1, 1"),
    (_zeros([2, -1]), grpc.StatusCode.INVALID_ARGUMENT,
     "zeros (node 0): attribute 'shape' [2, -1] has a negative dimension"),
    (_zeros([(1 << 63) - 1, (1 << 63) - 1]), grpc.StatusCode.INVALID_ARGUMENT,
     f"zeros (node 0): attribute 'shape' [{(1 << 63) - 1}, {(1 << 63) - 1}] is too large"),
    (_zeros([1 << 40, 1 << 20]), grpc.StatusCode.RESOURCE_EXHAUSTED,
     f"zeros (node 0): a tensor of shape [{1 << 40}, {1 << 20}]"),
    (pb.RunRequest(nodes=[pb.Node(op="zeros", attrs={
        "shape": pb.AttrValue(shape=pb.Shape(dim=[4]))}),
        pb.Node(op="reshape", inputs=[0], attrs={
            "shape": pb.AttrValue(shape=pb.Shape(dim=[1 << 62, 1 << 62]))})], fetches=[1]),
     grpc.StatusCode.INVALID_ARGUMENT, "reshape (node 1): "),
]


@pytest.mark.parametrize("request_, code, message", HOSTILE_SHAPES)
def test_hostile_shapes_name_what_is_wrong(server: Server, stub: pb_grpc.VariableServiceStub,
                                           request_: pb.RunRequest, code: grpc.StatusCode,
                                           message: str) -> None:
    got, details = refusal(lambda: stub.Run(request_, timeout=30))
    assert (got, details[:len(message)]) == (code, message)
    assert len(details) < MESSAGE_BOUND
    assert len(server.store) == 0


@pytest.mark.parametrize("index, dtype", [
    (U64 - 1, np.uint64), (-(1 << 63), np.int64), (-1, np.int32), (4, np.int64),
    ((1 << 63) - 1, np.int64)])
@pytest.mark.parametrize("op", ["gather", "scatter_add", "scatter_update"])
def test_hostile_indices_are_refused(server: Server, stub: pb_grpc.VariableServiceStub,
                                     op: str, index: int, dtype: type[np.integer]) -> None:
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    stub.Run(pb.RunRequest(
        variables=[pb.VariableSpec(name="t", dtype=FLOAT, shape=pb.Shape(dim=[4, 2]),
                                   initializer=1)],
        nodes=[pb.Node(op="const", tensor=0)],
        tensors=[pb.Tensor(dtype=FLOAT, shape=[4, 2], content=table.tobytes())]), timeout=30)
    indices = np.array([0, index], dtype=dtype)
    enum = {np.uint64: 23, np.int64: INT64, np.int32: 3}[dtype]
    tensors = [pb.Tensor(dtype=enum, shape=[2], content=indices.tobytes()),
               pb.Tensor(dtype=FLOAT, shape=[2, 2], content=b"\0" * 16)]
    inputs = [0] if op == "gather" else [0, 1]
    request = pb.RunRequest(
        nodes=[pb.Node(op="const", tensor=0), pb.Node(op="const", tensor=1),
               pb.Node(op=op, inputs=inputs, variable="t")], tensors=tensors, fetches=[2])
    code, details = refusal(lambda: stub.Run(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.endswith(f"index {index} is not in [0, 4)")
    assert np.array_equal(server.store.get("t").read(), table)


# --- bounded messages ----------------------------------------------------------------------

def _scalar(stub: pb_grpc.VariableServiceStub) -> None:
    stub.Run(pb.RunRequest(
        variables=[pb.VariableSpec(name="v", dtype=INT64, shape=pb.Shape(), initializer=1)],
        nodes=[pb.Node(op="const", tensor=0)],
        tensors=[pb.Tensor(dtype=INT64, content=np.int64(1).tobytes())]), timeout=30)


def _entries(*pairs: tuple[str, str]) -> list[pb.CheckpointEntry]:
    return [pb.CheckpointEntry(key=k, variable=v) for k, v in pairs]


# Each call quotes a 200 KB client string in its refusal; (name, call, expected code).
QUOTING_CALLS: list[tuple[str, Callable[[pb_grpc.VariableServiceStub], object],
                          grpc.StatusCode]] = [
    ("save prefix with the temporary mark",
     lambda s: list(s.Save(pb.SaveRequest(prefix=HUGE + ".tempstate"), timeout=30)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("save prefix outside the folder",
     lambda s: list(s.Save(pb.SaveRequest(prefix="../" + HUGE), timeout=30)),
     grpc.StatusCode.PERMISSION_DENIED),
    ("save with a key listed twice",
     lambda s: list(s.Save(pb.SaveRequest(prefix="x", entries=_entries((HUGE, "v"))
                                          * 2), timeout=30)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("save with a NUL key",
     lambda s: list(s.Save(pb.SaveRequest(prefix="x", entries=_entries(("\0" + HUGE, "v"))),
                           timeout=30)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("save of a missing variable",
     lambda s: list(s.Save(pb.SaveRequest(prefix="x", entries=_entries(("k", HUGE))),
                           timeout=30)),
     grpc.StatusCode.NOT_FOUND),
    ("save prefix with a NUL byte",
     lambda s: list(s.Save(pb.SaveRequest(prefix=HUGE + "\0"), timeout=30)),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("restore of a missing key",
     lambda s: list(s.Restore(pb.RestoreRequest(prefix="ok", entries=_entries((HUGE, "v"))),
                              timeout=30)),
     grpc.StatusCode.NOT_FOUND),
    ("restore of a missing checkpoint",
     lambda s: list(s.Restore(pb.RestoreRequest(prefix="a/" * 2000), timeout=30)),
     grpc.StatusCode.NOT_FOUND),
    ("latest checkpoint of a folder outside",
     lambda s: s.LatestCheckpoint(pb.LatestCheckpointRequest(directory="/" + HUGE),
                                  timeout=30),
     grpc.StatusCode.PERMISSION_DENIED),
    ("a shape of rank 200,000",
     lambda s: s.Run(pb.RunRequest(variables=[pb.VariableSpec(
         name="q", dtype=FLOAT, shape=pb.Shape(dim=[1] * 200_000))]), timeout=30),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("an invalid variable name",
     lambda s: s.Run(pb.RunRequest(variables=[pb.VariableSpec(
         name=HUGE + " x", dtype=FLOAT, shape=pb.Shape())]), timeout=30),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("an unknown op",
     lambda s: s.Run(pb.RunRequest(nodes=[pb.Node(op=HUGE)], fetches=[0]), timeout=30),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("an attribute of no value",
     lambda s: s.Run(pb.RunRequest(nodes=[pb.Node(op="no_op", attrs={HUGE: pb.AttrValue()})],
                                   fetches=[0]), timeout=30),
     grpc.StatusCode.INVALID_ARGUMENT),
    ("a sync_wait group that is no variable",
     lambda s: s.Run(pb.RunRequest(nodes=[pb.Node(
         op="sync_wait", attrs={"group": pb.AttrValue(s=HUGE)})], fetches=[0]), timeout=30),
     grpc.StatusCode.NOT_FOUND),
    ("sync_accumulate over variables that do not exist",
     lambda s: s.Run(pb.RunRequest(
         nodes=[pb.Node(op="const", tensor=0), pb.Node(
             op="sync_accumulate", inputs=[0], variable="v", attrs={
                 "step": pb.AttrValue(i=1), "replicas": pb.AttrValue(i=1),
                 "variables": pb.AttrValue(s=HUGE), "sparse": pb.AttrValue(s="0")})],
         tensors=[pb.Tensor(dtype=FLOAT, shape=[1], content=b"\0" * 4)], fetches=[1]),
         timeout=30),
     grpc.StatusCode.NOT_FOUND),
]


@pytest.mark.parametrize("what, call, code", QUOTING_CALLS, ids=[c[0] for c in QUOTING_CALLS])
def test_refusals_quote_client_input_up_to_a_bound(
        server: Server, stub: pb_grpc.VariableServiceStub, what: str,
        call: Callable[[pb_grpc.VariableServiceStub], object], code: grpc.StatusCode) -> None:
    _scalar(stub)
    list(stub.Save(pb.SaveRequest(prefix="ok"), timeout=30))
    got, details = refusal(lambda: call(stub))
    assert got == code, details[:300]
    assert 0 < len(details) < MESSAGE_BOUND
    if "aaaa" in details:
        assert "characters)" in details, "a cut quote says how long the input was"


LONG = "a" * 60_000  # a valid variable name: names may be up to 64 KiB


def _long_calls() -> list[tuple[str, pb.RunRequest, grpc.StatusCode]]:
    def var(dtype: int, shape: list[int], initializer: int = 0) -> pb.VariableSpec:
        return pb.VariableSpec(name=LONG, dtype=dtype, shape=pb.Shape(dim=shape),
                               initializer=initializer)
    f32 = pb.Tensor(dtype=FLOAT, shape=[2], content=b"\0" * 8)
    return [
        ("binding with another shape", pb.RunRequest(variables=[var(FLOAT, [3])]),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("reading it uninitialized", pb.RunRequest(
            nodes=[pb.Node(op="read", variable=LONG)], fetches=[0]),
         grpc.StatusCode.FAILED_PRECONDITION),
        ("assigning another dtype", pb.RunRequest(
            tensors=[pb.Tensor(dtype=INT64, shape=[2], content=b"\0" * 16)],
            nodes=[pb.Node(op="const"), pb.Node(op="assign", inputs=[0], variable=LONG)],
            targets=[1]), grpc.StatusCode.INVALID_ARGUMENT),
        ("an optimizer on an uninitialized slot", pb.RunRequest(
            tensors=[f32], nodes=[pb.Node(op="ref", variable=LONG), pb.Node(op="const"),
                                  pb.Node(op="const"), pb.Node(op="const"),
                                  pb.Node(op="apply_momentum", inputs=[0, 1, 2, 3],
                                          variable=LONG)], targets=[4]),
         grpc.StatusCode.FAILED_PRECONDITION),
        ("binding to one that does not exist", pb.RunRequest(variables=[pb.VariableSpec(
            name=LONG + "b", dtype=FLOAT, shape=pb.Shape(dim=[2]), mode=pb.BIND)]),
         grpc.StatusCode.NOT_FOUND),
    ]


@pytest.mark.parametrize("what, request_, code", _long_calls(),
                         ids=[c[0] for c in _long_calls()])
def test_refusals_about_long_names_stay_bounded(stub: pb_grpc.VariableServiceStub, what: str,
                                                request_: pb.RunRequest,
                                                code: grpc.StatusCode) -> None:
    stub.Run(pb.RunRequest(variables=[pb.VariableSpec(name=LONG, dtype=FLOAT,
                                                      shape=pb.Shape(dim=[2]))]), timeout=30)
    got, details = refusal(lambda: stub.Run(request_, timeout=30))
    assert got == code, details[:300]
    assert 0 < len(details) < MESSAGE_BOUND and "(6000" in details and " characters)" in details
