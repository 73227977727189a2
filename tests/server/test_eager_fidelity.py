"""The eager client (``varstore.connect()``) follows TensorFlow 1.x's naming, scope and dtype
rules as ``varstore.v1`` does: each program runs under ``tf.compat.v1`` (graph mode, values
read in a session) and against a client, and the two must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.fidelity import Programs, check, describe, error, reuse_name

PROGRAMS = Programs()
eager = PROGRAMS.eager


# --- scopes ----------------------------------------------------------------------------------

@eager
def default_name_scopes_get_variables(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(3):
        with tf.variable_scope(None, default_name="fc"):
            out.append(tf.get_variable("kernel", [2, 2]).name)
    with tf.variable_scope("outer"):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    with tf.variable_scope("outer"):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    return out


@eager
def reuse_values(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a") as a:
        with tf.variable_scope("b", reuse=False) as b:
            out = [reuse_name(tf.get_variable_scope().reuse), reuse_name(a.reuse),
                   reuse_name(b.reuse)]
    with tf.variable_scope("c", reuse=env.lib.AUTO_REUSE):
        with tf.variable_scope("d") as d:
            out.append(reuse_name(d.reuse))
    return out


@eager
def scope_misuse(tf: Any, env: Any) -> Any:
    def enter(*args: Any, **kwargs: Any) -> Any:
        with tf.variable_scope(*args, **kwargs):
            return "entered"
    return [error(lambda: enter(None)), error(lambda: enter(123)),
            error(lambda: enter(None, default_name="fc", reuse=True)),
            error(lambda: enter("a", reuse="yes")),
            error(lambda: enter("a", auxiliary_name_scope=1))]


@eager
def name_scope_with_default_name(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(2):
        with tf.name_scope(None, "dflt") as n:
            out.append(n)
    with tf.variable_scope("v"):
        with tf.name_scope("n"):
            out.append(tf.Variable(1.0, name="x").name)
            out.append(tf.get_variable("y", [1]).name)
    return out


@eager
def reuse_and_sharing_errors(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a"):
        tf.get_variable("v", [1])
    out = []
    with tf.variable_scope("a"):
        exists = error(lambda: tf.get_variable("v", [1]).name)
        out.append([*exists[:2], exists[2].split(" Originally defined at")[0]])
    with tf.variable_scope("a", reuse=True):
        out.append(error(lambda: tf.get_variable("missing", [1]).name))
        out.append(error(lambda: tf.get_variable("v", [2]).name))
        out.append(tf.get_variable("v", [1]).name)
    return out


@eager
def partitioned_reuse_errors(tf: Any, env: Any) -> Any:
    def parts(n: int) -> Any:
        return lambda shape, dtype: [n] + [1] * (len(shape) - 1)

    def get(name: str, shape: Any, n: int | None, **kwargs: Any) -> Any:
        partitioner = None if n is None else parts(n)
        return error(lambda: [p.name for p in tf.get_variable(
            name, shape, partitioner=partitioner, **kwargs)] if n is not None
            else tf.get_variable(name, shape, **kwargs).name)
    with tf.variable_scope("s", partitioner=parts(2)):
        made = [p.name for p in tf.get_variable("w", [10, 4])]
    tf.get_variable("plain", [4, 2])
    tf.get_variable("odd/part_0", [2, 2])
    out: list[Any] = [made]
    with tf.variable_scope("s"):
        out.append(get("w", [10, 4], 2))
    with tf.variable_scope("s", reuse=True):
        out += [get("w", [10, 4], 3), get("w", [8, 4], 2), get("w", [10, 4], 2),
                get("w", [10, 4], 2, dtype=env.lib.int32),
                get("nothere", [10, 4], 2)]
    with tf.variable_scope("s", reuse=env.lib.AUTO_REUSE):
        out.append(get("w", [10, 4], 2))
    out += [get("plain", [4, 2], 2), get("odd", [4, 2], 2), get("odd", [4, 2], 1)[:2]]
    return out


# --- names -----------------------------------------------------------------------------------

@eager
def names_checked_at_call_time(tf: Any, env: Any) -> Any:
    def in_scope(name: str) -> Any:
        with tf.variable_scope(name):
            return tf.get_variable("v", [1]).name
    out = [error(lambda: tf.Variable(1.0, name="a:b").name),
           error(lambda: tf.get_variable("a b", [1]).name), error(lambda: in_scope("a b")),
           error(lambda: in_scope("_a"))]
    with tf.name_scope("s"):
        out.append(tf.Variable(1.0, name="_x").name)
    out += [tf.Variable(1.0, name="q").name, tf.Variable(1.0, name="q").name]
    return out


@eager
def names_tf_accepts(tf: Any, env: Any) -> Any:
    made = [tf.Variable(float(i), name=n)
            for i, n in enumerate(["a>b", "a//b", ".a", "x" * 2000, "0a"])]
    return [[len(v.name), float(env.read(v))] for v in made]


# --- dtypes ----------------------------------------------------------------------------------

@eager
def variable_dtypes(tf: Any, env: Any) -> Any:
    lib = env.lib
    return [describe(tf.Variable([1, 2.5])), describe(tf.Variable(2 ** 40)),
            describe(tf.Variable([1, 2 ** 40])), describe(tf.Variable(np.int64(3))),
            describe(tf.Variable(3, dtype=lib.float32)),
            error(lambda: describe(tf.Variable(1.5, dtype=lib.int32))),
            error(lambda: describe(tf.Variable([True, 2], dtype="bool")))]


@eager
def get_variable_value_dtypes(tf: Any, env: Any) -> Any:
    lib = env.lib
    cases = [{"initializer": np.array([1, 2, 3]), "dtype": lib.float32},
             {"initializer": np.array([1, 2, 3])}, {"initializer": [1.5, 2.5]},
             {"initializer": 1.5, "dtype": lib.int32}, {"initializer": [1, 2]},
             {"initializer": 2.0, "dtype": lib.float32},
             {"initializer": np.ones(2, np.float32), "dtype": lib.float64},
             {"initializer": [1.0], "shape": [1]}]
    def make(i: int, kwargs: dict[str, Any]) -> Any:
        return error(lambda: describe(tf.get_variable(f"b{i}", **kwargs)))
    return [make(i, kw) for i, kw in enumerate(cases)]


@eager
def get_variable_values_not_cast(tf: Any, env: Any) -> Any:
    a = tf.get_variable("a", initializer=np.array([1, 2, 3]))
    b = tf.get_variable("b", initializer=[0.5, 1.5])
    return [describe(a), env.read(a).tolist(), describe(b), env.read(b).tolist()]


@eager
def constant_initializer_fills(tf: Any, env: Any) -> Any:
    lib = env.lib
    out = []
    for i, (value, shape) in enumerate([([1, 2], np.array([2, 3])), ([1, 2, 3], [2, 3]),
                                        ([[1, 2], [3, 4]], [4]), (7, [np.int64(2)]),
                                        ([1, 2, 3, 4, 5], [3])]):
        def read(i: int = i, value: Any = value, shape: Any = shape) -> Any:
            return env.read(tf.get_variable(
                f"c{i}", shape=shape, initializer=lib.constant_initializer(value))).tolist()
        out.append(error(read))
    return out


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
