"""A failed call and the names after it, and updates of the wrong shape or type, compared with
``tf.compat.v1``: a ``Variable`` whose value fails to convert (or whose initial-value callable
raises) leaves its name used, as TF's ``Variable`` opens its name scope first; None or an
invalid name leaves it free; a failed ``get_variable`` records nothing in the scope's store.
``tf.assign*``/``tf.scatter_*`` refuse mismatched shapes and Python values that do not fit the
variable's dtype, when the graph is built (statically known shapes) or when it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.fidelity import Programs, check, error

PROGRAMS = Programs()


def _boom() -> Any:
    raise RuntimeError("boom")


def _variable_failures(tf: Any, lib: Any) -> Any:
    out = []
    for label, bad in [("float_to_int", lambda: tf.Variable(0.5, dtype=lib.int32, name="zz")),
                       ("none", lambda: tf.Variable(None, name="zz")),
                       ("callable_raises", lambda: tf.Variable(_boom, name="zz")),
                       ("bad_name", lambda: tf.Variable(1.0, name="zz!")),
                       ("ragged", lambda: tf.Variable([[1.0], [1.0, 2.0]], name="zz")),
                       ("bad_dtype", lambda: tf.Variable(1.0, dtype="nosuch", name="zz"))]:
        with tf.variable_scope(label):
            failed = error(bad)
            out.append([label, failed[1] if isinstance(failed, list) else failed,
                        tf.Variable(1.0, name="zz").name])
    return out


def _get_variable_failures(tf: Any, lib: Any) -> Any:
    out = [error(lambda: tf.get_variable("g", shape=[2], initializer=[1.0, 2.0])),
           tf.get_variable("g", initializer=[1.0, 2.0]).name,
           error(lambda: tf.get_variable("h", initializer=[1, 2], dtype=lib.float32)),
           tf.get_variable("h", initializer=[1.0, 2.0]).name,
           error(lambda: tf.get_variable("k")), tf.get_variable("k", [1]).name]
    with tf.variable_scope("s", reuse=True):
        out.append(error(lambda: tf.get_variable("m", [1]))[:2])
    out.append(tf.get_variable("s/m", [1]).name)
    with tf.variable_scope("t"):
        tf.get_variable("w", [2])
        out.append(error(lambda: tf.get_variable("w", [2]))[:2])
    with tf.variable_scope("t", reuse=True):
        out.append(error(lambda: tf.get_variable("w", [3]))[:2])
        out.append(tf.get_variable("w", [2]).name)
    return out


@PROGRAMS.eager
def eager_variable_names_after_failures(tf: Any, env: Any) -> Any:
    return _variable_failures(tf, env.lib)


@PROGRAMS.graph
def graph_variable_names_after_failures(tf: Any, env: Any) -> Any:
    return _variable_failures(tf, tf)


@PROGRAMS.eager
def eager_get_variable_after_failures(tf: Any, env: Any) -> Any:
    return _get_variable_failures(tf, env.lib)


@PROGRAMS.graph
def graph_get_variable_after_failures(tf: Any, env: Any) -> Any:
    return _get_variable_failures(tf, tf)


# --- updates in graph mode ---------------------------------------------------------------------

def _static_update(label: str, build: Any) -> None:
    """Registers a program building ``build(tf, v)`` on a [2, 3] float32 and a [2] int32
    variable and running it: the class of what TF refuses (the messages name TF's nodes)."""
    def program(tf: Any, env: Any) -> Any:
        v = tf.Variable(np.zeros((2, 3), np.float32), name="v")
        n = tf.Variable(np.zeros(2, np.int32), name="n")
        op = build(tf, v, n)
        with env.session() as sess:
            sess.run([v.initializer, n.initializer])
            sess.run(op)
            return sess.run([v, n])
    program.__name__ = f"graph_{label}"
    PROGRAMS.graph(program, compare="type")


for _label, _build in {
    "assign_add_row": lambda tf, v, n: tf.assign_add(v, np.arange(3, dtype=np.float32)),
    "assign_sub_scalar": lambda tf, v, n: tf.assign_sub(v, 1.0),
    "assign_row": lambda tf, v, n: tf.assign(v, [1.0, 2.0, 3.0]),
    "assign_add_float_to_int": lambda tf, v, n: tf.assign_add(n, [0.5, 1.0]),
    "assign_float_to_int": lambda tf, v, n: tf.assign(n, [1.5, 2.0]),
    "assign_add_float64_array_to_int": lambda tf, v, n: tf.assign_add(n, np.array([1.7, 2.2])),
    "assign_add_int_list_to_float": lambda tf, v, n: tf.assign_add(v, [[1, 2, 3], [4, 5, 6]]),
    "scatter_add_float_to_int": lambda tf, v, n: tf.scatter_add(n, [0], [0.5]),
    "scatter_update_rows": lambda tf, v, n: tf.scatter_update(v, [1], [[7.0, 8.0, 9.0]]),
    "scatter_add_scalar_update": lambda tf, v, n: tf.scatter_add(v, [0, 1], 2.0),
    "scatter_update_short_row": lambda tf, v, n: tf.scatter_update(v, [1], [[7.0, 8.0]]),
    "scatter_update_row_for_index_list": lambda tf, v, n: tf.scatter_update(v, [1],
                                                                           [7.0, 8.0, 9.0]),
    "scatter_update_row_for_one_index": lambda tf, v, n: tf.scatter_update(v, 1,
                                                                          [7.0, 8.0, 9.0]),
    "scatter_add_two_rows_for_one_index": lambda tf, v, n: tf.scatter_add(
        v, [0], np.ones((2, 3), np.float32)),
}.items():
    _static_update(_label, _build)


def _fed_update(label: str, op: str, value: Any) -> None:
    """Registers a program feeding ``value`` through a placeholder of unknown shape into
    ``tf.<op>`` on a [2, 3] float32 variable: refused when the session runs (by the server),
    the variable unchanged."""
    def program(tf: Any, env: Any) -> Any:
        v = tf.Variable(np.zeros((2, 3), np.float32), name="v")
        p = tf.placeholder(tf.float32, shape=None)
        update = getattr(tf, op)(v, p) if not op.startswith("scatter") else \
            getattr(tf, op)(v, [0], p)
        with env.session() as sess:
            sess.run(v.initializer)
            failed = error(lambda: sess.run(update, {p: value}))
            return [failed[:2] if isinstance(failed, list) else "ran", sess.run(v)]
    program.__name__ = f"graph_fed_{label}"
    PROGRAMS.graph(program)


for _label, _op, _value in [
        ("assign_add_row", "assign_add", np.arange(3, dtype=np.float32)),
        ("assign_sub_scalar", "assign_sub", 1.0),
        ("assign_add_column", "assign_add", np.ones((2, 1), np.float32)),
        ("assign_add_same_shape", "assign_add", np.ones((2, 3), np.float32)),
        ("scatter_add_two_rows_for_one_index", "scatter_add", np.ones((2, 3), np.float32)),
        ("scatter_update_short_row", "scatter_update", np.ones((1, 2), np.float32))]:
    _fed_update(_label, _op, _value)


@PROGRAMS.graph
def graph_feeds_of_other_types(tf: Any, env: Any) -> Any:
    # TF casts fed floats and numpy values (np.asarray(value, dtype)) but refuses a Python
    # int that does not survive the conversion; shapes must be compatible.
    i = tf.placeholder(tf.int32, shape=[])
    f = tf.placeholder(tf.float32, shape=[2])
    b = tf.placeholder(tf.bool, shape=[])
    with env.session() as sess:
        return [error(lambda: sess.run(i, {i: 0.5}).tolist()),
                error(lambda: sess.run(i, {i: np.float64(2.7)}).tolist()),
                error(lambda: sess.run(f, {f: [1, 2]}).tolist()),
                error(lambda: sess.run(i, {i: 2 ** 40})), error(lambda: sess.run(b, {b: 2})),
                error(lambda: sess.run(b, {b: 1}).tolist()),
                error(lambda: sess.run(f, {f: 1.0}))]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
