"""``varstore.v1`` reproduces what TensorFlow 1.x prints.

Each program below is one TF 1.x behaviour (or a group of related checks): it takes a TF
module and a session factory and returns what it observed. The program runs against
``varstore.v1`` and a real server and must give TensorFlow's output, recorded below; the
interop tests run the same programs under TensorFlow's ``tf.compat.v1`` (graph mode, in a
subprocess so that ``disable_v2_behavior`` stays out of this process) and compare.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore.v1 as vtf
from tests.extras import require_installed

Program = Callable[[Any, Callable[[], Any]], Any]
PROGRAMS: dict[str, Program] = {}
ROOT = Path(__file__).resolve().parents[2]


def program(fn: Program) -> Program:
    PROGRAMS[fn.__name__] = fn
    return fn


def error(fn: Callable[[], Any]) -> list[str]:
    """``["error", class name, message]`` for what ``fn`` raises."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the class is the observation
        return ["error", type(e).__name__, str(e)]
    return ["no error"]


def dtype_name(dtype: Any) -> str:
    """A dtype's name as TF prints it (a reference variable's is ``int32_ref``)."""
    return str(dtype.name)


def jsonable(value: Any) -> Any:
    """A fetched value as plain JSON data."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return jsonable(value.tolist())
    if isinstance(value, bytes):
        return value.decode()
    return value


# --- Names -----------------------------------------------------------------------------------

@program
def variable_names_made_unique(tf: Any, session: Any) -> Any:
    v1 = tf.Variable(10, name="name1")
    v2 = tf.Variable(10, name="name1")
    return [v1.name, v2.name, v1 is not v2]


@program
def variable_dtype_from_python_values(tf: Any, session: Any) -> Any:
    return [dtype_name(tf.Variable(10).dtype), dtype_name(tf.Variable(1.5).dtype)]


@program
def unnamed_variable(tf: Any, session: Any) -> Any:
    return tf.Variable(1.5).name


@program
def affine_in_reentered_variable_scope(tf: Any, session: Any) -> Any:
    def affine(x: Any, shape: list[int]) -> Any:
        w = tf.Variable(tf.truncated_normal(shape))
        b = tf.Variable(tf.zeros([shape[1]]))
        return w, b, tf.nn.relu(tf.matmul(x, w) + b)

    x = tf.placeholder(tf.float32, [None, 784])
    with tf.variable_scope("n1"):
        w1, b1, m1 = affine(x, [784, 500])
    with tf.variable_scope("n1"):
        w2, b2, m2 = affine(x, [784, 500])
    return [w1.name, b1.name, w2.name, b2.name, m1.name, m2.name, str(m2.shape)]


@program
def nested_variable_scopes(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo"):
        with tf.variable_scope("bar"):
            return tf.get_variable("v", [1]).name


@program
def name_scope_is_ignored_by_get_variable(tf: Any, session: Any) -> Any:
    with tf.name_scope("foo1"):
        v1 = tf.get_variable("v", [1])
        v2 = tf.Variable(1, name="v2")
    with tf.variable_scope("foo2"):
        v3 = tf.get_variable("v", [1])
        v4 = tf.Variable(1, name="v2")
    return [v1.name, v2.name, v3.name, v4.name]


@program
def assign_op_name(tf: Any, session: Any) -> Any:
    counter = tf.Variable(0, name="counter")
    increment = tf.assign(counter, counter + 1)
    return [increment.name, increment.op.type, [t.name for t in increment.op.inputs]]


# --- Reuse -----------------------------------------------------------------------------------

@program
def get_existing_without_reuse(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo"):
        tf.get_variable("vv", [1])
        return error(lambda: tf.get_variable("vv"))


@program
def get_missing_with_reuse(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo", reuse=True):
        return error(lambda: tf.get_variable("nothere"))


@program
def share_with_another_shape(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo"):
        tf.get_variable("vv", [1])
    with tf.variable_scope("foo", reuse=True):
        return error(lambda: tf.get_variable("vv", [2]))


@program
def reuse_returns_the_variable(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo"):
        v = tf.get_variable("vv", [1])
    with tf.variable_scope("foo", reuse=True):
        v1 = tf.get_variable("vv")
    return [v1.name, v1 is v]


@program
def reuse_variables_on_scope(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo") as scope:
        v = tf.get_variable("v3", [1])
        scope.reuse_variables()
        v1 = tf.get_variable("v3")
    return v1 is v


@program
def reenter_scope_object(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo") as scope:
        v = tf.get_variable("v3", [1])
    with tf.variable_scope(scope, reuse=True):
        v1 = tf.get_variable("v3")
        inner = tf.constant(0).name
    return [v1.name, v1 is v, inner]


@program
def auto_reuse(tf: Any, session: Any) -> Any:
    with tf.variable_scope("auto", reuse=tf.AUTO_REUSE):
        p1 = tf.get_variable("p", [2])
        p2 = tf.get_variable("p", [2])
    return [p1.name, p1 is p2]


@program
def reuse_is_inherited(tf: Any, session: Any) -> Any:
    with tf.variable_scope("foo"):
        with tf.variable_scope("inner"):
            x = tf.get_variable("x", [1])
    with tf.variable_scope("foo", reuse=True):
        with tf.variable_scope("inner"):
            return [tf.get_variable("x") is x, error(lambda: tf.get_variable("y", [1]))]


@program
def read_before_initialization(tf: Any, session: Any) -> Any:
    counter = tf.Variable(0, name="counter")
    with session() as sess:
        return error(lambda: sess.run(counter))


@program
def counter_after_three_increments(tf: Any, session: Any) -> Any:
    counter = tf.Variable(0, name="counter")
    increment = tf.assign(counter, counter + 1)
    init_op = tf.global_variables_initializer()
    with session() as sess:
        sess.run(init_op)
        for _ in range(3):
            sess.run(increment)
        return jsonable(sess.run(counter))


# --- beyond the table: op names, dtypes, build errors, runs --------------------------------

@program
def op_names(tf: Any, session: Any) -> Any:
    c = tf.Variable(0, name="counter")
    f = tf.constant(2.0)
    x = tf.placeholder(tf.float32, [None, 784])
    tensors = [c + 1, 1 + c, c * 2, c / 2, c // 2, c % 2, c ** 2, -c, c < 1, abs(c), f > 1,
               2 ** f, tf.add(f, f), tf.multiply(f, f), tf.subtract(f, f), tf.square(f),
               tf.maximum(f, f), tf.equal(f, f), tf.reduce_sum(f), tf.cast(f, tf.int32),
               tf.reshape(f, [1]), tf.identity(f), tf.stack([f, f]), tf.zeros([100]),
               tf.ones([3]), tf.random_normal([3]), tf.truncated_normal([2]), tf.constant(1),
               tf.matmul(x, tf.zeros([784, 5])), tf.nn.relu(x), c.assign(5), c.assign_add(1),
               c.assign_sub(1), c.value(), c.read_value(), tf.fill([2], 1.0)]
    ops = [tf.global_variables_initializer(), tf.group(), tf.no_op(), c.initializer,
           tf.variables_initializer([])]
    g = tf.get_variable("g", [3], initializer=tf.zeros_initializer)
    h = tf.get_variable("h", [3, 3])
    k = tf.get_variable("k", [3], initializer=tf.constant_initializer(0.5))
    v1 = tf.Variable(1, name="v")
    v2 = tf.get_variable("v", [1])
    step = tf.train.get_or_create_global_step()
    return [[t.name for t in tensors], [op.name for op in ops],
            [g.initial_value.name, h.initial_value.name, k.initial_value.name, v1.name, v2.name],
            [step.name, dtype_name(step.dtype), str(step.shape),
             step in tf.trainable_variables()]]


@program
def dtype_inference(tf: Any, session: Any) -> Any:
    c = tf.Variable(0)
    x = tf.constant(np.arange(3))
    f = tf.constant(2.0)
    tensors = [tf.constant(1), tf.constant(1.0), tf.constant([1, 2.5]), tf.constant(True),
               tf.constant("ab"), tf.constant([]), tf.constant(np.float64(2)),
               tf.constant(np.arange(3)), tf.constant(2 ** 31), tf.constant(np.arange(3),
                                                                            dtype=tf.float32),
               tf.constant(True, dtype=tf.int32), c + 1, x + 1, f + 1, 1 + f, f + np.float64(1.5),
               f + np.array([1, 2]), c / 2, tf.constant(np.int8(1)) / 2, f / 2, c < 1,
               tf.zeros([2], dtype=tf.int32), tf.random_uniform([2], maxval=5, dtype=tf.int32)]
    return [[dtype_name(t.dtype), str(t.shape)] for t in tensors]


@program
def graph_build_errors(tf: Any, session: Any) -> Any:
    c = tf.Variable(0, name="counter")
    g = tf.get_variable("g", [3], initializer=tf.zeros_initializer)
    return [
        error(lambda: c + 1.5),
        error(lambda: c + tf.constant(1.5)),
        error(lambda: 1.5 + c),
        error(lambda: tf.constant(1.5, dtype=tf.int32)),
        error(lambda: tf.constant(1, dtype=tf.bool)),
        error(lambda: tf.convert_to_tensor(tf.constant(1.5), dtype=tf.int32)),
        error(lambda: tf.assign(g, tf.zeros([5]))),
        error(lambda: tf.matmul(tf.zeros([2, 3]), tf.zeros([4, 5]))),
        error(lambda: tf.zeros([3]) + tf.zeros([4])),
        error(lambda: tf.constant([1.0]) < tf.constant([1])),
        error(lambda: tf.Variable()),
        error(lambda: tf.Variable(tf.placeholder(tf.float32, [None]))),
        error(lambda: tf.get_variable("nos")),
        error(lambda: tf.get_variable("cv", [2], initializer=tf.constant([1.0, 2.0]))),
        error(lambda: c.eval()),
        error(lambda: c.initializer.run()),
    ]


@program
def get_variable_from_values(tf: Any, session: Any) -> Any:
    a = tf.get_variable("a", initializer=tf.constant([1.0, 2.0]))
    b = tf.get_variable("b", initializer=[1, 2])
    with session() as sess:
        sess.run(tf.global_variables_initializer())
        return [a.name, str(a.shape), dtype_name(b.dtype), jsonable(sess.run([a, b]))]


@program
def run_values(tf: Any, session: Any) -> Any:
    counter = tf.Variable(0, name="counter")
    increment = tf.assign(counter, counter + 1)
    w = tf.get_variable("w", [2, 2], initializer=tf.ones_initializer)
    x = tf.placeholder(tf.float32, [None, 2])
    y = tf.matmul(x, w) * 2.0 - 1.0
    with session() as sess:
        before = jsonable(sess.run(tf.report_uninitialized_variables()))
        sess.run(tf.global_variables_initializer())
        after = jsonable(sess.run(tf.report_uninitialized_variables()))
        return [before, after,
                jsonable(sess.run(increment)),
                jsonable(sess.run({"a": [counter, (w,)], "b": tf.no_op()})),
                jsonable(sess.run(y, {x: [[1.0, 2.0]]})),
                jsonable(sess.run(tf.constant(7) / 2)),
                jsonable(sess.run([tf.constant("ab"), tf.constant([True, False])])),
                jsonable(sess.run("counter:0")),
                jsonable(sess.run(w.initialized_value())),
                jsonable(sess.run(tf.reduce_sum(w, axis=1))),
                jsonable(sess.run(tf.gather(w, [1]))),
                jsonable(sess.run(tf.scatter_add(w, [0, 0], [[1.0, 1.0], [1.0, 1.0]]))),
                jsonable(w.eval()),
                jsonable(sess.run(counter.assign_sub(5)))]


@program
def run_errors(tf: Any, session: Any) -> Any:
    x = tf.placeholder(tf.float32, [None, 784], name="x")
    other = tf.Graph()
    with other.as_default():
        elsewhere = tf.constant(1)
    with session() as sess:
        return [error(lambda: sess.run(x)),
                error(lambda: sess.run(x, {x: [[1.0]]})),
                error(lambda: sess.run(None)),
                error(lambda: sess.run(5)),
                error(lambda: sess.run(elsewhere)),
                error(lambda: elsewhere.eval())]


# --- what TensorFlow 1.x prints ------------------------------------------------------------

ALREADY = ("Variable foo/vv already exists, disallowed. Did you mean to set reuse=True or "
           "reuse=tf.AUTO_REUSE in VarScope?")
MISSING = ("Variable foo/nothere does not exist, or was not created with tf.get_variable(). "
           "Did you mean to set reuse=tf.AUTO_REUSE in VarScope?")

EXPECTED: dict[str, Any] = {
    "variable_names_made_unique": ["name1:0", "name1_1:0", True],
    "variable_dtype_from_python_values": ["int32_ref", "float32_ref"],
    "unnamed_variable": "Variable:0",
    "affine_in_reentered_variable_scope": [
        "n1/Variable:0", "n1/Variable_1:0", "n1_1/Variable:0", "n1_1/Variable_1:0",
        "n1/Relu:0", "n1_1/Relu:0", "(?, 500)"],
    "nested_variable_scopes": "foo/bar/v:0",
    "name_scope_is_ignored_by_get_variable": ["v:0", "foo1/v2:0", "foo2/v:0", "foo2/v2:0"],
    "assign_op_name": ["Assign:0", "Assign", ["counter:0", "add:0"]],
    "get_existing_without_reuse": ["error", "ValueError", ALREADY],
    "get_missing_with_reuse": ["error", "ValueError", MISSING],
    "share_with_another_shape": [
        "error", "ValueError",
        "Trying to share variable foo/vv, but specified shape (2,) and found shape (1,)."],
    "reuse_returns_the_variable": ["foo/vv:0", True],
    "reuse_variables_on_scope": True,
    "reenter_scope_object": ["foo/v3:0", True, "foo_1/Const:0"],
    "auto_reuse": ["auto/p:0", True],
    "reuse_is_inherited": [True, [
        "error", "ValueError",
        "Variable foo/inner/y does not exist, or was not created with tf.get_variable(). "
        "Did you mean to set reuse=tf.AUTO_REUSE in VarScope?"]],
    "read_before_initialization": [
        "error", "FailedPreconditionError", "Attempting to use uninitialized value counter"],
    "counter_after_three_increments": 3,
    "op_names": [
        ["add:0", "add_1:0", "mul:0", "truediv:0", "floordiv:0", "mod:0", "pow:0", "Neg:0",
         "Less:0", "Abs:0", "Greater:0", "pow_1:0", "Add_2:0", "Mul_1:0", "Sub:0", "Square:0",
         "Maximum:0", "Equal:0", "Sum:0", "Cast:0", "Reshape:0", "Identity:0", "stack:0",
         "zeros:0", "ones:0", "random_normal:0", "truncated_normal:0", "Const_1:0", "MatMul:0",
         "Relu:0", "Assign:0", "AssignAdd:0", "AssignSub:0", "counter/read:0", "read:0",
         "Fill:0"],
        ["init", "group_deps", "NoOp", "counter/Assign", "init_1"],
        ["g/Initializer/zeros:0", "h/Initializer/random_uniform:0", "k/Initializer/Const:0",
         "v:0", "v_1:0"],
        ["global_step:0", "int64_ref", "()", False]],
    "dtype_inference": [
        ["int32", "()"], ["float32", "()"], ["float32", "(2,)"], ["bool", "()"],
        ["string", "()"], ["float32", "(0,)"], ["float64", "()"], ["int64", "(3,)"],
        ["int64", "()"], ["float32", "(3,)"], ["int32", "()"], ["int32", "()"],
        ["int64", "(3,)"], ["float32", "()"], ["float32", "()"], ["float32", "()"],
        ["float32", "(2,)"], ["float64", "()"], ["float32", "()"], ["float32", "()"],
        ["bool", "()"], ["int32", "(2,)"], ["int32", "(2,)"]],
    "graph_build_errors": [
        ["error", "TypeError", "Input 'y' of 'AddV2' Op has type float32 that does not match "
                               "type int32 of argument 'x'."],
        ["error", "TypeError", "Input 'y' of 'AddV2' Op has type float32 that does not match "
                               "type int32 of argument 'x'."],
        ["error", "TypeError", "Expected int32, but got 1.5 of type 'float'."],
        ["error", "TypeError", "Expected int32, but got 1.5 of type 'float'."],
        ["error", "TypeError", "Expected bool, but got 1 of type 'int'."],
        ["error", "ValueError", "Tensor conversion requested dtype int32 for Tensor with dtype "
                                "float32: <tf.Tensor 'Const_1:0' shape=() dtype=float32>"],
        ["error", "ValueError", "Dimension 0 in both shapes must be equal, but are 3 and 5. "
                                "Shapes are [3] and [5]. for 'Assign' (op: 'Assign') with "
                                "input shapes: [3], [5]."],
        ["error", "ValueError", "Dimensions must be equal, but are 3 and 4 for 'MatMul' (op: "
                                "'MatMul') with input shapes: [2,3], [4,5]."],
        ["error", "ValueError", "Dimensions must be equal, but are 3 and 4 for 'add_3' (op: "
                                "'AddV2') with input shapes: [3], [4]."],
        ["error", "TypeError", "Input 'y' of 'Less' Op has type int32 that does not match "
                               "type float32 of argument 'x'."],
        ["error", "ValueError", "initial_value must be specified."],
        ["error", "ValueError", "initial_value must have a shape specified: "
                                'Tensor("Placeholder:0", shape=(?,), dtype=float32)'],
        ["error", "ValueError", "Variable nos did not get an initializer, so its `shape` "
                                "argument must be specified."],
        ["error", "ValueError", "If initializer is a constant, do not specify shape."],
        ["error", "ValueError", "Cannot evaluate tensor using `eval()`: No default session is "
                                "registered. Use `with sess.as_default()` or pass an explicit "
                                "session to `eval(session=sess)`"],
        ["error", "ValueError", "Cannot execute operation using `run()`: No default session is "
                                "registered. Use `with sess.as_default():` or pass an explicit "
                                "session to `run(session=sess)`"]],
    "get_variable_from_values": ["a:0", "(2,)", "int32_ref", [[1.0, 2.0], [1, 2]]],
    "run_values": [
        ["counter", "w"], [], 1, {"a": [1, [[[1.0, 1.0], [1.0, 1.0]]]], "b": None},
        [[5.0, 5.0]], 3.5, ["ab", [True, False]], 1, [[1.0, 1.0], [1.0, 1.0]], [2.0, 2.0],
        [[1.0, 1.0]], [[3.0, 3.0], [1.0, 1.0]], [[3.0, 3.0], [1.0, 1.0]], -4],
    "run_errors": [
        ["error", "InvalidArgumentError", "You must feed a value for placeholder tensor 'x' "
                                          "with dtype float and shape [?,784]"],
        ["error", "ValueError", "Cannot feed value of shape (1, 1) for Tensor x:0, which has "
                                "shape (?, 784)"],
        ["error", "TypeError", 'Argument `fetch` = None has invalid type "NoneType". Cannot '
                               'be None'],
        ["error", "TypeError", 'Argument `fetch` = 5 has invalid type "int" must be a string '
                               'or Tensor. (Can not convert a int into a Tensor or '
                               'Operation.)'],
        ["error", "ValueError", 'Argument `fetch` = Tensor("Const:0", shape=(), dtype=int32) '
                                'cannot be interpreted as a Tensor. (Tensor Tensor("Const:0", '
                                'shape=(), dtype=int32) is not an element of this graph.)'],
        ["error", "ValueError", "Cannot use the default session to evaluate tensor: the "
                                "tensor's graph is different from the session's graph. Pass "
                                "an explicit session to `eval(session=sess)`."]],
}


def run_varstore(name: str, address: str) -> Any:
    with vtf.Graph().as_default():
        return PROGRAMS[name](vtf, lambda: vtf.Session(address))


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_prints_what_tensorflow_prints(name: str, address: str) -> None:
    assert run_varstore(name, address) == EXPECTED[name]


# --- against TensorFlow itself ---------------------------------------------------------------

_RUNNER = """
import json, sys
import tensorflow.compat.v1 as tf
tf.disable_v2_behavior()
import tests.interop.test_v1_semantics as m
out = {}
for name in m.PROGRAMS:
    with tf.Graph().as_default():
        out[name] = m.PROGRAMS[name](tf, tf.Session)
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def tensorflow_results() -> dict[str, Any]:
    """Every program's output under TensorFlow, computed once in a subprocess."""
    require_installed("tensorflow")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _RUNNER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


# TF 2's shape errors name the node as ``'{{node add}} = AddV2[T=DT_FLOAT](x, y)'``; TF 1.x,
# and varstore, as ``'add' (op: 'AddV2')``.
_NODE_DEF = re.compile(r"'\{\{node (\S+)\}\} = (\w+)\[[^\]]*\]\([^)]*\)'")


def agree(ours: Any, theirs: Any) -> bool:
    """Equal, except that TF's error messages may add context around ours."""
    if isinstance(ours, list) and ours[:1] == ["error"] and isinstance(theirs, list):
        message = _NODE_DEF.sub(r"'\1' (op: '\2')", theirs[2])
        return theirs[:2] == ours[:2] and ours[2] in message
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(agree, ours, theirs))
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(agree(ours[k], theirs[k]) for k in ours)
    return bool(ours == theirs)


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_agrees_with_tensorflow(name: str, address: str,
                                        tensorflow_results: dict[str, Any]) -> None:
    ours = run_varstore(name, address)
    assert agree(ours, tensorflow_results[name]), (ours, tensorflow_results[name])
