"""Partitioned variables of the eager client, compared with TensorFlow 2 eager: each program
runs under ``tf.compat.v1`` with eager execution (TF 2's default, in this process) and against
a ``varstore.Client``, and what they show (names, shapes, slices, values, errors) must agree.
``lib`` is the module giving the partitioners: ``tf.compat.v1`` on TF's side, and on
varstore's either ``varstore.v1`` or TF's own (the client accepts both).

TF eager keeps no variable store (every ``get_variable`` creates), so reuse rules are checked
against TF graph mode in ``tests/server/test_eager_fidelity.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.aio
import varstore.v1 as vtf
from tests.interop.fidelity import error, observe

pytestmark = pytest.mark.tensorflow

Program = Callable[[Any, Any, Any], Any]
PROGRAMS: dict[str, Program] = {}
FULL = np.arange(40, dtype=np.float32).reshape(10, 4)


def program(fn: Program) -> Program:
    """Registers ``fn(api, lib, tf)``: ``api`` is ``tf.compat.v1`` or a client."""
    PROGRAMS[fn.__name__] = fn
    return fn


def parts(v: Any) -> list[Any]:
    """A partitioned variable's parts as ``[name, shape, slice spec]``."""
    return [[p.name, [int(d) for d in p.shape], p._get_save_slice_info().spec] for p in v]


def lib_of(api: Any, tf: Any) -> Any:
    """The module with ``api``'s initializers and dtypes."""
    return tf.compat.v1 if api is tf.compat.v1 else vs


def whole(v: Any) -> Any:
    """The full value of a partitioned variable (TF: an EagerTensor; varstore: an array)."""
    return np.asarray(v.as_tensor())


@program
def scope_partitioner(api: Any, lib: Any, tf: Any) -> Any:
    with api.variable_scope("s", partitioner=lib.fixed_size_partitioner(2)):
        v = api.get_variable("w", shape=[10, 4])
    return [type(v).__name__, v.name, v.dtype.name, list(v.get_shape()), list(v.shape),
            len(v), v._get_partitions(), parts(v), [p.name for p in v._get_variable_list()],
            list(whole(v).shape)]


@program
def the_three_partitioners(api: Any, lib: Any, tf: Any) -> Any:
    a = api.get_variable("a", [3, 7], partitioner=lib.variable_axis_size_partitioner(40, 1))
    b = api.get_variable("b", [1000, 100],
                         partitioner=lib.min_max_variable_partitioner(4, min_slice_size=100000))
    c = api.get_variable("c", [2, 5], partitioner=lib.fixed_size_partitioner(8))
    d = api.get_variable("d", [6], partitioner=lib.fixed_size_partitioner(4))
    e = api.get_variable("e", [4, 3], partitioner=lambda shape, dtype: [1, 1])
    return [[parts(x), x._get_partitions()] for x in (a, b, c, d, e)]


@program
def scalars_are_not_partitioned(api: Any, lib: Any, tf: Any) -> Any:
    with api.variable_scope("t", partitioner=lib.fixed_size_partitioner(2)):
        x = api.get_variable("x", shape=[])
    y = api.get_variable("y", shape=[], partitioner=lib.fixed_size_partitioner(2))
    return [type(x).__name__.endswith("PartitionedVariable"), x.name, y.name]


@program
def partitioner_misuse(api: Any, lib: Any, tf: Any) -> Any:
    def get(name: str, shape: Any, partitioner: Any, **kwargs: Any) -> Any:
        return error(lambda: api.get_variable(name, shape, partitioner=partitioner,
                                               **kwargs).name)
    return [get("a", None, lib.fixed_size_partitioner(2)),
            get("b", [None, 3], lib.fixed_size_partitioner(2)),
            get("c", [4, 3], 5),
            get("d", [4, 3], lambda shape, dtype: [2, 3]),
            get("e", [4, 3], lambda shape, dtype: [2]),
            get("f", [4, 3], lambda shape, dtype: [0, 1]),
            get("g", [4, 3], lambda shape, dtype: 2),
            get("h", None, lib.fixed_size_partitioner(2), initializer=FULL)]


@program
def value_initializers_are_sliced(api: Any, lib: Any, tf: Any) -> Any:
    v = api.get_variable("v", [10, 4], initializer=FULL, partitioner=lib.fixed_size_partitioner(3))
    ones = api.get_variable("o", [5, 2], initializer=lib_of(api, tf).ones_initializer(),
                            partitioner=lib.fixed_size_partitioner(2))
    ints = api.get_variable("i", [4, 3], dtype=lib_of(api, tf).int32,
                            partitioner=lib.fixed_size_partitioner(2))
    return [parts(v), whole(v), [np.asarray(p.numpy()) for p in v], whole(ones),
            ints.dtype.name, [p.dtype.name for p in ints], whole(ints)]


@program
def assign_whole_values(api: Any, lib: Any, tf: Any) -> Any:
    v = api.get_variable("m", [2, 5], initializer=lib_of(api, tf).ones_initializer(),
                         partitioner=lib.fixed_size_partitioner(8))
    out = []
    for op, value in [("assign_add", np.ones([2, 5], np.float32)),
                      ("assign", [np.zeros([1, 5], np.float32), np.full([1, 5], 3, np.float32)]),
                      ("assign_sub", np.ones([2, 5], np.float32)),
                      ("assign", FULL[:2, :].repeat(2, axis=1)[:, :5])]:
        result = getattr(v, op)(value)
        out.append([type(result).__name__, len(result), whole(v)])
    w = api.get_variable("w", [2, 6], initializer=lib_of(api, tf).zeros_initializer(),
                         partitioner=lambda shape, dtype: [1, 3])
    w.assign(np.arange(12, dtype=np.float32).reshape(2, 6))
    bad = error(lambda: v.assign(np.ones([3, 5], np.float32)))
    return [out, [list(p.shape) for p in w], [np.asarray(p.numpy()) for p in w], whole(w),
            bad[:2], error(lambda: v[0])[:2], hasattr(v, "numpy")]


@program
def trainable_parts(api: Any, lib: Any, tf: Any) -> Any:
    v = api.get_variable("p", [4, 3], partitioner=lib.fixed_size_partitioner(2),
                         trainable=False)
    return [p.trainable for p in v]


def _tensorflow_side(tf: Any, fn: Program) -> Any:
    v1 = tf.compat.v1
    assert tf.executing_eagerly()
    return observe(lambda: fn(v1, v1, tf))


@pytest.mark.parametrize("name", list(PROGRAMS))
@pytest.mark.parametrize("partitioners", ["varstore", "tensorflow"])
def test_agrees_with_tensorflow_eager(name: str, partitioners: str, tf: Any,
                                      address: str) -> None:
    fn = PROGRAMS[name]
    theirs = _tensorflow_side(tf, fn)
    lib = vtf if partitioners == "varstore" else tf.compat.v1
    with vs.connect(address) as client:
        ours = observe(lambda: fn(client, lib, tf))
    assert ours == theirs


def test_checkpoints_hold_tensorflows_slices(tf: Any, client: vs.Client, server: Any) -> None:
    with client.variable_scope("s", partitioner=tf.compat.v1.fixed_size_partitioner(3)):
        v = client.get_variable("w", [10, 4], initializer=vs.zeros_initializer)
    v.assign(FULL)
    b = client.get_variable("b", [2], initializer=vs.ones_initializer)
    path = client.save("model.ckpt", global_step=1)
    reader = tf.train.load_checkpoint(str(Path(server.checkpoints.directory) / path))
    assert reader.get_variable_to_shape_map() == {"s/w": [10, 4], "b": [2]}
    np.testing.assert_array_equal(reader.get_tensor("s/w"), FULL)
    # Only the parts listed, still as slices of s/w; a dict names the full tensor's key.
    only = client.save("parts.ckpt", var_list=list(v))
    reader = tf.train.load_checkpoint(str(Path(server.checkpoints.directory) / only))
    assert reader.get_variable_to_shape_map() == {"s/w": [10, 4]}
    keyed = client.save("keyed.ckpt", var_list={"emb": v, "bias": b})
    reader = tf.train.load_checkpoint(str(Path(server.checkpoints.directory) / keyed))
    assert reader.get_variable_to_shape_map() == {"emb": [10, 4], "bias": [2]}
    np.testing.assert_array_equal(reader.get_tensor("emb"), FULL)
    # Restored into two parts by another client, after the three are deleted.
    client.delete(scope="s")
    with vs.connect(client.address) as other:
        with other.variable_scope("s", partitioner=vtf.fixed_size_partitioner(2)):
            t = other.get_variable("w", [10, 4])
        assert [p.shape for p in t] == [(5, 4), (5, 4)]
        other.restore(path, var_list=list(t))
        np.testing.assert_array_equal(t.as_tensor(), FULL)
        t.assign(np.zeros([10, 4], np.float32))
        other.restore(path, var_list=[t])
        np.testing.assert_array_equal(t.as_tensor(), FULL)


async def test_the_asyncio_client_partitions(tf: Any, address: str) -> None:
    async with await varstore.aio.connect(address) as client:
        with client.variable_scope("s", partitioner=tf.compat.v1.fixed_size_partitioner(2)):
            v = await client.get_variable("w", [10, 4], initializer=vs.zeros_initializer)
        assert [p.name for p in v] == ["s/w/part_0:0", "s/w/part_1:0"]
        assert all(isinstance(p, varstore.aio.RemoteVariable) for p in v)
        parts_back = await v.assign(FULL)
        assert [p.name for p in parts_back] == ["s/w/part_0:0", "s/w/part_1:0"]
        await v.assign_add(np.ones([10, 4], np.float32))
        np.testing.assert_array_equal(await v.as_tensor(), FULL + 1)
        with client.variable_scope("s", reuse=True,
                                   partitioner=vtf.fixed_size_partitioner(2)):
            assert await client.get_variable("w", [10, 4]) is v


def test_another_client_binds_to_the_parts(client: vs.Client) -> None:
    with client.variable_scope("s", partitioner=vtf.fixed_size_partitioner(2)):
        v = client.get_variable("w", [10, 4], initializer=vs.zeros_initializer)
    v.assign(FULL)
    with vs.connect(client.address) as other:
        with other.variable_scope("s", reuse=True, partitioner=vtf.fixed_size_partitioner(2)):
            w = other.get_variable("w", [10, 4], initializer=vs.ones_initializer)
        assert [p.name for p in w] == ["s/w/part_0:0", "s/w/part_1:0"]
        np.testing.assert_array_equal(w.as_tensor(), FULL)  # bound, not re-initialized
        with other.variable_scope("s", reuse=True, partitioner=vtf.fixed_size_partitioner(3)):
            with pytest.raises(ValueError, match=r"specified partitions \[3, 1\] and found "
                                                 r"partitions \[2, 1\]\.$"):
                other.get_variable("w", [10, 4])
    with vs.connect(client.address) as third:  # knows nothing: looks on the server
        with third.variable_scope("s", reuse=True, partitioner=vtf.fixed_size_partitioner(3)):
            with pytest.raises(ValueError, match=r"^PartitionedVariable s/w does not exist"):
                third.get_variable("w", [10, 4])
        with third.variable_scope("s", reuse=vs.AUTO_REUSE,
                                  partitioner=vtf.fixed_size_partitioner(3)):
            with pytest.raises(vs.errors.InvalidArgumentError, match="s/w/part_0"):
                third.get_variable("w", [10, 4])
        with third.variable_scope("s", partitioner=vtf.fixed_size_partitioner(2)):
            again = third.get_variable("w", [10, 4])  # binds, as get_variable does
        np.testing.assert_array_equal(again.as_tensor(), FULL)


def test_graph_mode_takes_tensorflows_partitioners(tf: Any) -> None:
    v1 = tf.compat.v1
    with vtf.Graph().as_default():
        made: list[Any] = [vtf.get_variable(name, [10, 4], partitioner=partitioner)
                           for name, partitioner in [
                               ("a", v1.fixed_size_partitioner(3)),
                               ("b", v1.variable_axis_size_partitioner(40)),
                               ("c", v1.min_max_variable_partitioner(4, min_slice_size=16))]]
        shapes = [[p.shape.as_list() for p in v] for v in made]
    assert shapes == [[[4, 4], [3, 4], [3, 4]], [[2, 4]] * 5, [[3, 4], [3, 4], [2, 4], [2, 4]]]
