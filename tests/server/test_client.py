"""The eager client against a real server on localhost:0."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import varstore as vs
from varstore import dtypes
from varstore.common import codec
from varstore.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc


def test_variable_names_are_made_unique(client: vs.Client) -> None:
    v1 = client.Variable(10, name="name1")
    v2 = client.Variable(10, name="name1")
    assert v1 is not v2
    assert (v1.name, v2.name) == ("name1:0", "name1_1:0")
    assert v1.dtype == vs.int32 and v1.numpy() == 10
    assert client.Variable(1.5).name == "Variable:0"
    assert client.Variable(1.5).dtype == vs.float32


def test_scopes_name_variables_as_tf(client: vs.Client) -> None:
    with client.variable_scope("foo"):
        with client.variable_scope("bar"):
            assert client.get_variable("v", [1]).name == "foo/bar/v:0"
    with client.name_scope("foo1"):
        v1 = client.get_variable("v", [1])
        v2 = client.Variable(1, name="v2")
    with client.variable_scope("foo2"):
        v3 = client.get_variable("v", [1])
        v4 = client.Variable(1, name="v2")
    assert [v.name for v in (v1, v2, v3, v4)] == ["v:0", "foo1/v2:0", "foo2/v:0", "foo2/v2:0"]
    names = []
    for _ in range(2):
        with client.variable_scope("n1"):
            names += [client.Variable(np.zeros(2)).name, client.Variable(np.zeros(2)).name]
    assert names == ["n1/Variable:0", "n1/Variable_1:0", "n1_1/Variable:0", "n1_1/Variable_1:0"]


def test_reuse_rules_and_messages(client: vs.Client) -> None:
    with client.variable_scope("foo"):
        v = client.get_variable("vv", [1])
        with pytest.raises(ValueError, match=r"^Variable foo/vv already exists, disallowed\. "
                           r"Did you mean to set reuse=True or reuse=tf\.AUTO_REUSE "
                           r"in VarScope\?$"):
            client.get_variable("vv")
    with client.variable_scope("foo", reuse=True):
        assert client.get_variable("vv") is v
        with pytest.raises(ValueError, match=r"^Variable foo/nothere does not exist, or was not "
                           r"created with tf\.get_variable\(\)\. Did you mean to set "
                           r"reuse=tf\.AUTO_REUSE in VarScope\?$"):
            client.get_variable("nothere")
        with pytest.raises(ValueError, match=r"Trying to share variable foo/vv, but specified "
                           r"shape \(2,\) and found shape \(1,\)\."):
            client.get_variable("vv", [2])
        with client.variable_scope("inner"):
            with pytest.raises(ValueError, match="foo/inner/x does not exist"):
                client.get_variable("x", [1])
    with client.variable_scope("foo") as scope:
        v3 = client.get_variable("v3", [1])
        scope.reuse_variables()
        assert client.get_variable("v3") is v3
    with client.variable_scope(scope, reuse=True):
        assert client.get_variable("v3").name == "foo/v3:0"
    with client.variable_scope("auto", reuse=vs.AUTO_REUSE):
        assert client.get_variable("p", [2]) is client.get_variable("p", [2])


def test_initializers_run_on_the_server(client: vs.Client) -> None:
    z = client.get_variable("z", [2, 2], initializer=vs.zeros_initializer)
    o = client.get_variable("o", [3], dtype=vs.int64, initializer=vs.ones_initializer())
    c = client.get_variable("c", [2], initializer=vs.constant_initializer(0.5))
    n = client.get_variable("n", [1000], initializer=vs.random_normal_initializer(1.0, 0.1, seed=3))
    u = client.get_variable("u", [1000], initializer=vs.random_uniform_initializer(-1, 1))
    t = client.get_variable("t", [1000], initializer=vs.truncated_normal_initializer(stddev=0.5))
    g = client.get_variable("g", [40, 60])
    i = client.get_variable("i", [3], dtype=vs.int32)
    assert z.numpy().tolist() == [[0, 0], [0, 0]]
    assert o.numpy().tolist() == [1, 1, 1] and o.numpy().dtype == np.int64
    assert c.numpy().tolist() == [0.5, 0.5]
    assert abs(n.numpy().mean() - 1.0) < 0.05
    assert u.numpy().min() >= -1 and u.numpy().max() < 1
    assert np.abs(t.numpy()).max() <= 1.0
    assert np.abs(g.numpy()).max() <= np.sqrt(6 / 100) and g.numpy().std() > 0
    assert i.numpy().tolist() == [0, 0, 0]
    infos = {v.name: v for v in client.list_variables()}
    assert infos["n"].initializer.startswith("random_normal_initializer")
    assert infos["g"].created_by == "get_variable"


def test_atomic_ops(client: vs.Client) -> None:
    v = client.Variable(np.zeros((4, 2), np.float32), name="v")
    v.assign(np.ones((4, 2)))
    v.assign_add(np.full((4, 2), 2.0))
    v.assign_sub(np.ones((4, 2)))
    assert v.numpy().tolist() == [[2, 2]] * 4
    v.scatter_add([0, 0, 3], np.ones((3, 2)))
    v.scatter_sub([1], np.ones((1, 2)))
    v.scatter_update([2], [[7, 8]])
    assert v.numpy().tolist() == [[4, 4], [1, 1], [7, 8], [3, 3]]
    assert v.gather([2, 0]).tolist() == [[7, 8], [4, 4]]


def test_pull_and_push_many_in_one_round_trip(client: vs.Client) -> None:
    vs_ = [client.Variable(np.full(3, i, np.float32), name=f"p{i}") for i in range(5)]
    client.push({v: np.full(3, 10 + i) for i, v in enumerate(vs_)})
    assert [a.tolist() for a in client.pull(vs_)] == [[10 + i] * 3 for i in range(5)]


def test_second_client_binds_without_reinitializing(client: vs.Client, address: str) -> None:
    w = client.get_variable("shared/w", [3], initializer=vs.ones_initializer)
    w.assign_add(np.ones(3))
    with vs.connect(address) as other:
        w2 = other.get_variable("shared/w", [3], initializer=vs.zeros_initializer)
        assert w2.numpy().tolist() == [2, 2, 2]
        assert other.Variable(np.zeros(3, np.float32), name="shared/w").numpy().tolist() == [2] * 3
        with other.variable_scope("shared", reuse=True):
            assert other.get_variable("w").numpy().tolist() == [2, 2, 2]
        with pytest.raises(ValueError, match="shared/w already exists"):
            other.get_variable("shared/w", [3])
    with vs.connect(address) as third:
        with pytest.raises(InvalidArgumentError, match="Trying to share variable shared/w"):
            third.get_variable("shared/w", [4])


@pytest.mark.parametrize("dtype", [d for d in dtypes.ALL])
def test_every_dtype_round_trips(client: vs.Client, dtype: dtypes.DType) -> None:
    if dtype.is_string:
        value = np.array([[b"", "wörld".encode()], [b"\x00\xff", b"x" * 1000]], dtype=object)
    elif dtype == vs.bool_:
        value = np.array([[True, False], [False, True]])
    else:
        value = (np.arange(4).reshape(2, 2) + 1).astype(dtype.np_dtype)
    v = client.Variable(value, name=f"d_{dtype.name}", dtype=dtype)
    got = v.numpy()
    assert got.dtype == dtype.np_dtype and got.shape == (2, 2)
    assert got.tolist() == value.tolist()
    scalar = client.Variable(value.reshape(-1)[1], name=f"s_{dtype.name}", dtype=dtype)
    assert scalar.shape == ()
    assert scalar.numpy().tolist() == np.asarray(value.reshape(-1)[1]).tolist()
    empty = client.Variable(np.zeros((0, 3), dtype.np_dtype), name=f"e_{dtype.name}")
    assert empty.numpy().shape == (0, 3)


@pytest.mark.parametrize("nbytes", [codec.STREAM_THRESHOLD - 4, codec.STREAM_THRESHOLD + 4,
                                    codec.CHUNK_BYTES * 3 + 4, 6 * 1024 * 1024 + 4])
def test_sizes_around_chunk_boundaries(client: vs.Client, nbytes: int) -> None:
    value = np.random.default_rng(0).standard_normal(nbytes // 4).astype(np.float32)
    v = client.Variable(value, name="big")
    assert np.array_equal(v.numpy(), value)
    client.push({v: value[::-1]})
    assert np.array_equal(client.pull([v])[0], value[::-1])


def test_tensors_larger_than_grpc_default_limit(client: vs.Client) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 1_000_000)).astype(np.float32)
    b = rng.integers(0, 100, 700_000).astype(np.int64)
    va, vb = client.Variable(a, name="a"), client.Variable(b, name="b")
    s = client.Variable(np.array([b"y" * 3_000_000, b"z"], dtype=object), name="s")
    got_a, got_b, got_s = client.pull([va, vb, s])
    assert np.array_equal(got_a, a) and np.array_equal(got_b, b)
    assert got_s.tolist() == [b"y" * 3_000_000, b"z"]


def test_errors_change_nothing(client: vs.Client) -> None:
    v = client.Variable(np.arange(3, dtype=np.float32), name="v")
    with pytest.raises(ValueError, match=r"variable shape \(3,\), and the assigned value "
                                         r"shape \(4,\) are incompatible"):
        v.assign(np.zeros(4))
    with pytest.raises(InvalidArgumentError, match="index 3 is not in"):
        v.scatter_add([0, 3], np.ones(2))
    with pytest.raises(ValueError, match="'bad name!' is not a valid root scope name"):
        client.Variable(1, name="bad name!")
    with pytest.raises(ValueError, match="did not get an initializer, so its `shape`"):
        client.get_variable("noshape")
    assert v.numpy().tolist() == [0, 1, 2]
    with pytest.raises(FailedPreconditionError, match="uninitialized"):
        b = client.transport.call(client.stub.Run, pb.RunRequest(
            variables=[pb.VariableSpec(name="u", dtype=1, shape=pb.Shape(dim=[2]))],
            nodes=[pb.Node(op="read", variable="u")], fetches=[0]))
        del b
    with vs.connect(client.address) as other:
        with other.variable_scope("", reuse=True):
            with pytest.raises(ValueError, match="does not exist"):
                other.get_variable("missing")
    assert client.list_variables(scope="v")[0].version == 0


def test_malformed_requests_are_rejected_and_server_survives(client: vs.Client,
                                                             address: str) -> None:
    stub = pb_grpc.VariableServiceStub(grpc.insecure_channel(address))
    bad = [
        pb.RunRequest(tensors=[pb.Tensor(dtype=999)], nodes=[pb.Node(op="const")], fetches=[0]),
        pb.RunRequest(tensors=[pb.Tensor(dtype=1, shape=[3], content=b"abc")],
                      nodes=[pb.Node(op="const")], fetches=[0]),
        pb.RunRequest(tensors=[pb.Tensor(dtype=1, shape=[-1])], nodes=[pb.Node(op="const")]),
        pb.RunRequest(nodes=[pb.Node(op="const", tensor=5)], fetches=[0]),
        pb.RunRequest(fetches=[3]),
        pb.RunRequest(nodes=[pb.Node(op="zeros", attrs={"shape": pb.AttrValue(s="x")})],
                      fetches=[0]),
        pb.RunRequest(tensors=[pb.Tensor(dtype=7, shape=[2], content=b"\x05" + b"\x00" * 15)],
                      nodes=[pb.Node(op="const")], fetches=[0]),
    ]
    for request in bad:
        with pytest.raises(grpc.RpcError) as e:
            stub.Run(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    header = pb.RunChunk(request=pb.RunRequest(
        tensors=[pb.Tensor(dtype=1, shape=[4], streamed_bytes=16)],
        nodes=[pb.Node(op="const")], fetches=[0]))
    with pytest.raises(grpc.RpcError) as e:
        list(stub.RunStream(iter([header, pb.RunChunk(data=b"x" * 8)])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.Variable(1, name="alive").numpy() == 1


def test_unreachable_server_names_the_address() -> None:
    with pytest.raises(UnavailableError, match="127.0.0.1:1"):
        vs.connect("127.0.0.1:1", timeout=0.5)


def test_list_variables_by_scope(client: vs.Client) -> None:
    with client.variable_scope("n2"):
        client.get_variable("W", [2, 3])
        client.get_variable("b", [3], initializer=vs.constant_initializer(0.0))
    client.get_variable("n20", [1])
    listed = client.list_variables(scope="n2")
    assert [(v.name, v.shape, v.dtype) for v in listed] == [
        ("n2/W", (2, 3), vs.float32), ("n2/b", (3,), vs.float32)]
    with pytest.raises(NotFoundError):
        client.transport.call(client.stub.Run, pb.RunRequest(
            variables=[pb.VariableSpec(name="zzz", dtype=1, mode=pb.BIND)]))


def test_push_with_one_bad_value_changes_nothing(client: vs.Client) -> None:
    a = client.Variable(np.zeros(3, np.float32), name="a")
    b = client.Variable(np.zeros((2, 2), np.float32), name="b")
    with pytest.raises(ValueError, match=r"Cannot assign value to variable 'b:0': Shape "
                                         r"mismatch"):
        client.push({a: np.ones(3), b: np.ones(4)})
    assert [v.tolist() for v in client.pull([a, b])] == [[0, 0, 0], [[0, 0], [0, 0]]]
    assert [v.version for v in client.list_variables()] == [0, 0]


@pytest.mark.parametrize("value, dtype, expected", [
    ([1, 2.5], dtypes.float32, [1.0, 2.5]),
    (2**40, dtypes.int64, 2**40),
    (3, dtypes.int32, 3),
    (np.array([1, 2], np.int16), dtypes.int16, [1, 2]),
])
def test_variable_infers_tensorflows_dtype(client: vs.Client, value: object,
                                           dtype: dtypes.DType, expected: object) -> None:
    v = client.Variable(value, name="inferred")
    assert v.dtype == dtype
    np.testing.assert_array_equal(v.numpy(), np.asarray(expected, dtype.np_dtype))


def test_variable_refuses_a_value_its_dtype_cannot_hold(client: vs.Client) -> None:
    with pytest.raises(TypeError, match="Expected int32"):
        client.Variable([1, 2.5], name="bad", dtype=vs.int32)
    assert client.list_variables() == []
