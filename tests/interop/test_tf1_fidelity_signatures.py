"""The TF 1.x signatures programs call: ``Variable``, ``get_variable`` and ``variable_scope``
with all of TF's arguments (custom getters, regularizers, partitioners, constraints...),
partitioned variables, the global step helpers, ``DType`` attributes and the monitored
session's stop rule; compared with ``tf.compat.v1``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.fidelity import Programs, check, error

PROGRAMS = Programs()
graph = PROGRAMS.graph


def each(cases: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Every case's result or error."""
    return {key: error(fn) for key, fn in cases.items()}


@graph
def synchronization_and_aggregation(tf: Any, env: Any) -> Any:
    sync, agg = tf.VariableSynchronization, tf.VariableAggregation
    return each({
        "on_read": lambda: tf.Variable(1.0, synchronization=sync.ON_READ, name="a").trainable,
        "on_read_trainable": lambda: tf.Variable(1.0, synchronization=sync.ON_READ,
                                                 trainable=True, name="b").trainable,
        "on_read_get_variable": lambda: tf.get_variable(
            "c", [1], synchronization=sync.ON_READ).trainable,
        "trainable_variables": lambda: [v.name for v in tf.trainable_variables()],
        "bad_aggregation": lambda: tf.Variable(1.0, aggregation="bogus", name="d").name,
        "bad_aggregation_get_variable": lambda: tf.get_variable(
            "e", [1], aggregation="bogus").name,
        "bad_synchronization": lambda: tf.Variable(1.0, synchronization=7, name="f").name,
        "sum_and_mean": lambda: [
            tf.Variable(1.0, aggregation=agg.SUM, name="g").trainable,
            tf.get_variable("h", [1], aggregation=agg.MEAN,
                            synchronization=sync.ON_WRITE).trainable],
        "numbers": lambda: tf.Variable(1.0, synchronization=3, aggregation=1,
                                       name="i").trainable,
    })


@graph
def variable_shape_argument(tf: Any, env: Any) -> Any:
    return each({
        "incompatible": lambda: tf.Variable([1.0, 2.0], shape=[3]).name,
        "other_rank": lambda: tf.Variable([1.0, 2.0], shape=[2, 1]).name,
        "same": lambda: tf.Variable([1.0, 2.0], shape=[2], name="s").shape.as_list(),
        "not_validated": lambda: tf.Variable([1.0, 2.0], shape=[3], validate_shape=False,
                                             name="n").name,
    })


@graph
def variable_arguments(tf: Any, env: Any) -> Any:
    def in_collection() -> Any:
        tf.Variable(1.0, collections=["mine"], name="b")
        return [v.name for v in tf.get_collection("mine")] + [len(tf.global_variables())]
    return each({
        "validate_shape": lambda: tf.Variable(1.0, validate_shape=False, name="a").name,
        "collections": in_collection,
        "caching_device": lambda: tf.Variable(1.0, caching_device=None, name="c").name,
        "constraint": lambda: tf.Variable(1.0, constraint=lambda x: x, name="d").name,
        "bad_constraint": lambda: tf.Variable(1.0, constraint=3, name="d2").name,
        "expected_shape": lambda: tf.Variable(1.0, expected_shape=None, name="e").name,
        "trainable": lambda: [tf.Variable(1.0, trainable=False, name="g").name,
                              [v.name for v in tf.trainable_variables()]],
        "use_resource": lambda: tf.Variable(1.0, use_resource=False, name="h").name,
    })


@graph
def get_variable_arguments(tf: Any, env: Any) -> Any:
    def regularized() -> Any:
        v = tf.get_variable("r", [2], regularizer=lambda x: tf.reduce_sum(x))
        losses = tf.get_collection("regularization_losses")
        return [v.name, [t.op.name for t in losses]]

    def getter_renames() -> Any:
        def rename(getter: Any, name: str, *args: Any, **kwargs: Any) -> Any:
            return getter(name + "_x", *args, **kwargs)
        return tf.get_variable("g", [2], custom_getter=rename).name

    def getter_sees() -> Any:
        seen = {}

        def record(getter: Any, **kwargs: Any) -> Any:
            seen.update({k: kwargs[k] for k in ("name", "shape", "trainable", "reuse")})
            return getter(**kwargs)
        with tf.variable_scope("s"):
            tf.get_variable("seen", [3], trainable=False, custom_getter=record)
        return [seen["name"], list(seen["shape"]), seen["trainable"], seen["reuse"]]

    return each({
        "regularizer": regularized,
        "collections": lambda: [tf.get_variable("c", [2], collections=["mine"]).name,
                                [v.name for v in tf.get_collection("mine")]],
        "caching_device": lambda: tf.get_variable("cd", [2], caching_device=None).name,
        "partitioner_none": lambda: tf.get_variable("p", [2], partitioner=None).name,
        "custom_getter": getter_renames,
        "custom_getter_kwargs": getter_sees,
        "bad_custom_getter": lambda: tf.get_variable("bg", [2], custom_getter=3).name,
        "constraint": lambda: tf.get_variable("k", [2], constraint=lambda x: x).name,
        "use_resource": lambda: tf.get_variable("u", [2], use_resource=False).name,
        "validate_shape": lambda: tf.get_variable("vs", [2], validate_shape=True).name,
    })


@graph
def variable_scope_defaults(tf: Any, env: Any) -> Any:
    def scoped(label: str, **kwargs: Any) -> Callable[[], Any]:
        def fn() -> Any:
            with tf.variable_scope(label, **kwargs):
                v = tf.get_variable("v", [4])
                return [getattr(v, "name", None), v.dtype.base_dtype.name,
                        len(tf.get_collection("regularization_losses"))]
        return fn

    def nested_getters() -> Any:
        def suffix(text: str) -> Any:
            def rename(getter: Any, name: str, *args: Any, **kwargs: Any) -> Any:
                return getter(name + text, *args, **kwargs)
            return rename
        with tf.variable_scope("outer", custom_getter=suffix("_o")):
            with tf.variable_scope("inner", custom_getter=suffix("_i")):
                return tf.get_variable("v", [1]).name

    def initializer_value() -> Any:
        with tf.variable_scope("init", initializer=tf.constant_initializer(3.0)):
            v = tf.get_variable("v", [2])
        with env.session() as sess:
            sess.run(v.initializer)
            return sess.run(v)

    return each({
        "custom_getter": scoped("cg", custom_getter=lambda getter, name, *a, **k: getter(
            name + "_cg", *a, **k)),
        "nested_custom_getters": nested_getters,
        "initializer": initializer_value,
        "regularizer": scoped("reg", regularizer=lambda x: tf.reduce_sum(x)),
        "dtype": scoped("dt", dtype=tf.float64),
        "caching_device": scoped("cd", caching_device=None),
        "use_resource": scoped("ur", use_resource=False),
        "constraint": scoped("ct", constraint=lambda x: x),
        "positional_values": scoped("pv", default_name=None, values=[]),
    })


@graph
def partitioned_variable_names(tf: Any, env: Any) -> Any:
    emb = tf.get_variable("emb", [5, 2], partitioner=tf.fixed_size_partitioner(2))
    parts = list(emb)
    with tf.variable_scope("s", partitioner=tf.fixed_size_partitioner(3, axis=1)):
        w = tf.get_variable("w", [2, 3])
    with tf.variable_scope("s", reuse=True, partitioner=tf.fixed_size_partitioner(3, axis=1)):
        same = tf.get_variable("w", [2, 3]) is w
    return [[p.name for p in parts], [p.shape.as_list() for p in parts], emb.get_shape().as_list(),
            [p.name for p in w], [p.shape.as_list() for p in w], same, len(tf.global_variables()),
            [p._get_save_slice_info().full_name for p in parts],
            [p._get_save_slice_info().var_offset for p in parts],
            [p._get_save_slice_info().spec for p in [*parts, *w]]]


@graph
def partitioned_variable_values(tf: Any, env: Any) -> Any:
    emb = tf.get_variable("emb", [5, 2], initializer=np.arange(10.0).reshape(5, 2),
                          partitioner=tf.fixed_size_partitioner(2))
    from_tensor = tf.get_variable("t", initializer=tf.constant([[1, 2], [3, 4], [5, 6]]),
                                  partitioner=tf.fixed_size_partitioner(2))
    no_shape = error(lambda: tf.get_variable("n", initializer=[1.0, 2.0],
                                             partitioner=tf.fixed_size_partitioner(2)))
    ones = tf.get_variable("ones", [3, 2], initializer=tf.ones_initializer(),
                           partitioner=tf.fixed_size_partitioner(4))
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        return [sess.run(list(emb)), [p.name for p in ones], sess.run(list(ones)),
                [p.dtype.base_dtype.name for p in from_tensor], sess.run(list(from_tensor)),
                no_shape]


@graph
def partitioners(tf: Any, env: Any) -> Any:
    shape = tf.TensorShape([1000, 20])
    return [tf.fixed_size_partitioner(3)(shape=shape, dtype=tf.float32),
            tf.fixed_size_partitioner(3, axis=1)(shape=shape, dtype=tf.float32),
            tf.min_max_variable_partitioner(max_partitions=8, min_slice_size=4096)(
                shape=shape, dtype=tf.float32),
            tf.min_max_variable_partitioner(max_partitions=2)(shape=shape, dtype=tf.float32),
            tf.variable_axis_size_partitioner(8000)(shape=shape, dtype=tf.float32),
            tf.variable_axis_size_partitioner(8000, max_shards=3)(shape=shape,
                                                                  dtype=tf.float64),
            tf.variable_axis_size_partitioner(100, axis=1)(shape=shape, dtype=tf.string),
            error(lambda: tf.variable_axis_size_partitioner(0)),
            error(lambda: tf.variable_axis_size_partitioner(10, max_shards=-1)),
            error(lambda: tf.min_max_variable_partitioner(axis=3)(shape=shape,
                                                                  dtype=tf.float32))]


@graph
def partitioned_variable_errors(tf: Any, env: Any) -> Any:
    def two_axes(shape: Any, dtype: Any) -> list[int]:
        return [2, 2]
    tf.get_variable("p", [4, 2], partitioner=tf.fixed_size_partitioner(2))
    out = [error(lambda: tf.get_variable("q", [4, 2], partitioner=two_axes).name),
           error(lambda: tf.get_variable("r", [4, 2], partitioner=lambda shape, dtype: [0, 1])
                 .name),
           error(lambda: tf.get_variable("p", [4, 2],
                                         partitioner=tf.fixed_size_partitioner(2)).name),
           error(lambda: tf.get_variable("t", [4, 2], partitioner=3).name)]
    with tf.variable_scope("", reuse=True):
        out.append(error(lambda: tf.get_variable(
            "missing", [4, 2], partitioner=tf.fixed_size_partitioner(2)).name))
        out.append(error(lambda: len(tf.get_variable(
            "p", [4, 3], partitioner=tf.fixed_size_partitioner(2)))))
    return out


@graph
def global_step_helpers(tf: Any, env: Any) -> Any:
    gs = tf.train.create_global_step()
    again = error(lambda: tf.train.create_global_step().name)
    same = tf.train.get_or_create_global_step() is gs
    with env.session() as sess:
        sess.run(gs.initializer)
        sess.run(tf.assign_add(gs, 3))
        value = tf.train.global_step(sess, gs)
    return [gs.name, gs.dtype.base_dtype.name, again, same, value, type(value).__name__,
            tf.train.get_global_step() is gs]


@graph
def dtype_attributes(tf: Any, env: Any) -> Any:
    f = tf.float32
    return [f.base_dtype.name, f.is_compatible_with(tf.float32), str(f), repr(f),
            tf.int64.as_numpy_dtype.__name__, tf.complex64.real_dtype.name, f.is_floating,
            tf.int32.is_integer, tf.as_dtype(np.float64).name, tf.as_dtype("int8").name]


@graph
def assign_without_shape_validation(tf: Any, env: Any) -> Any:
    v = tf.Variable([1.0, 2.0], name="av")
    longer = tf.assign(v, [1.0, 2.0, 3.0], validate_shape=False)
    matrix = tf.assign(v, [[1.0], [2.0]], validate_shape=False)
    refused = error(lambda: tf.assign(v, [1.0, 2.0, 3.0]).name)
    with env.session() as sess:
        sess.run(v.initializer)
        out = [longer.shape.as_list(), sess.run(longer), sess.run(v), v.shape.as_list(),
               sess.run(matrix), sess.run(v), refused,
               error(lambda: sess.run(tf.assign(v, [1, 2], validate_shape=False)))[:2]]
        sess.run(v.initializer)
        return [*out, sess.run(v)]


@graph
def monitored_session_stops(tf: Any, env: Any) -> Any:
    gs = tf.train.get_or_create_global_step()
    step = tf.assign_add(gs, 1)
    kwargs = {} if not hasattr(env, "address") else {"master": env.address}
    hooks = [tf.train.StopAtStepHook(last_step=2)]
    with tf.train.MonitoredTrainingSession(hooks=hooks, **kwargs) as sess:
        out = []
        while not sess.should_stop():
            out.append(int(sess.run(step)))
        out.append(error(lambda: sess.run(step)))
    return out


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
