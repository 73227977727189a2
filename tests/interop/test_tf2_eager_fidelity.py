"""The eager client compared with TensorFlow 2 eager (partitioned variables, and the arguments
it accepts, ignores or refuses): each program
runs under ``tf.compat.v1`` with eager execution (TF 2's default, in this process) and against
a ``varstore.Client``, and what they show (names, shapes, slices, values, errors) must agree.
``lib`` is the module giving the partitioners: ``tf.compat.v1`` on TF's side, and on
varstore's either ``varstore.v1`` or TF's own (the client accepts both).

TF eager keeps no variable store (every ``get_variable`` creates), so reuse rules are checked
against TF graph mode in ``tests/server/test_eager_fidelity.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
def glorot_fans_of_the_full_variable(api: Any, lib: Any, tf: Any) -> Any:
    """TF draws each part of a glorot-initialized variable with the full shape's limit."""
    limit = (6.0 / (1000 + 10)) ** 0.5
    v = api.get_variable("g", [1000, 10], partitioner=lib.fixed_size_partitioner(2))
    biggest = float(np.abs(whole(v)).max())
    return [biggest <= limit, biggest > 0.95 * limit]


@program
def trainable_parts(api: Any, lib: Any, tf: Any) -> Any:
    v = api.get_variable("p", [4, 3], partitioner=lib.fixed_size_partitioner(2),
                         trainable=False)
    return [p.trainable for p in v]


@program
def arguments_without_effect(api: Any, lib: Any, tf: Any) -> Any:
    with api.variable_scope("u", values=[1.0], use_resource=True) as scope:
        with api.name_scope("n", values=[1.0]) as n:
            v = api.get_variable("v", [2])
    return [scope.name, n, v.name]


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


def test_what_tf_eager_honours_is_refused(tf: Any, client: vs.Client) -> None:
    """TF 2 eager applies a scope's regularizer, custom getter and constraint; the eager
    client cannot, so it raises rather than drop them."""
    v1 = tf.compat.v1
    names = []

    def getter(getter: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        names.append(name)
        return getter(name + "_x", *args, **kwargs)
    with v1.variable_scope("g", custom_getter=getter):
        assert v1.get_variable("v", [2]).name == "g/v_x:0" and names == ["g/v"]
    with v1.variable_scope("r", regularizer=tf.reduce_sum):
        v1.get_variable("v", [2])
    assert len(v1.get_collection(v1.GraphKeys.REGULARIZATION_LOSSES)) == 1
    with v1.variable_scope("c", constraint=tf.abs):
        assert v1.get_variable("v", [2]).constraint is tf.abs
    for key, value in [("regularizer", tf.reduce_sum), ("custom_getter", getter),
                       ("constraint", tf.abs)]:
        with pytest.raises(NotImplementedError, match=rf"^variable_scope\({key}=\.\.\.\) is "
                                                      r"not supported by varstore's eager"):
            client.variable_scope("s", **{key: value})
        if key != "constraint":  # TF's VariableScope has no set_constraint
            with client.variable_scope("t") as scope:
                getattr(scope, f"set_{key}")(value)
                with pytest.raises(NotImplementedError, match=rf"^get_variable\({key}=\.\.\.\)"):
                    client.get_variable("v", [2])
    assert client.list_variables() == []


def _tf_eager_scope_error(**kwargs: Any) -> str:
    """What TF 2 eager raises entering ``variable_scope("u", **kwargs)``, in a subprocess:
    TF's failed ``__enter__`` leaves its scope stack broken (a RuntimeError follows)."""
    script = ("import sys, tensorflow as tf\ntry:\n"
              f"    with tf.compat.v1.variable_scope('u', **{kwargs!r}): pass\n"
              "except Exception as e:\n    e = e.__context__ or e\n"
              "    print('RAISED', type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    raised = [line for line in done.stdout.splitlines() if line.startswith("RAISED ")]
    assert raised, done.stderr[-2000:]
    return raised[-1][len("RAISED "):]


def test_use_resource_false_is_refused_as_tf_eager_does(client: vs.Client) -> None:
    with pytest.raises(ValueError) as ours:
        client.variable_scope("u", use_resource=False)
    assert _tf_eager_scope_error(use_resource=False) == f"ValueError {ours.value}"


def test_caching_device_is_accepted(client: vs.Client) -> None:
    """TF 2 eager refuses a caching device; TF 1 graphs only cache reads with it, which
    the eager client, reading from the server every time, accepts and ignores."""
    assert _tf_eager_scope_error(caching_device="/cpu:0").startswith(
        "NotImplementedError Caching devices")
    with client.variable_scope("d", caching_device="/cpu:0"):
        assert client.get_variable("v", [2]).name == "d/v:0"
