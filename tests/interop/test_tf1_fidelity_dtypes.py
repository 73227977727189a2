"""Value types as TensorFlow 1.x infers and checks them: initializer values against explicit
dtypes (``variable_scope.py``), ``constant_initializer`` with fewer or more elements than the
shape (``init_ops.Constant``), Python values' dtypes, numpy integers wherever TF takes an
integer; compared with ``tf.compat.v1``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.fidelity import Programs, check, describe, error

PROGRAMS = Programs()


def get_variable_with(label: str, make_kwargs: Any) -> None:
    """Registers a program describing ``get_variable("b", **make_kwargs(tf))``."""
    def program(tf: Any, env: Any) -> Any:
        return describe(tf.get_variable("b", **make_kwargs(tf)))
    program.__name__ = f"get_variable_{label}"
    PROGRAMS.graph(program)


for _label, _kwargs in {
    "int64_array_as_float32": lambda tf: {"initializer": np.array([1, 2, 3]),
                                          "dtype": tf.float32},
    "int_list_as_float32": lambda tf: {"initializer": [1, 2, 3], "dtype": tf.float32},
    "float_as_int32": lambda tf: {"initializer": 1.5, "dtype": tf.int32},
    "float64_array": lambda tf: {"initializer": np.array([1.0, 2.0])},
    "int_list": lambda tf: {"initializer": [1, 2, 3]},
    "int32_tensor_as_float32": lambda tf: {"initializer": tf.constant([1, 2]),
                                           "dtype": tf.float32},
    "float_tensor": lambda tf: {"initializer": tf.constant([1.0, 2.0])},
    "int64_array_as_int64": lambda tf: {"initializer": np.array([1, 2], np.int64),
                                        "dtype": tf.int64},
    "float_as_float64": lambda tf: {"initializer": 1.0, "dtype": tf.float64},
    "float_as_float32": lambda tf: {"initializer": 1.0, "dtype": tf.float32},
    "float32_array_as_float64": lambda tf: {"initializer": np.ones(2, np.float32),
                                            "dtype": tf.float64},
    "int_as_int64": lambda tf: {"initializer": 3, "dtype": tf.int64},
    "big_int_as_int64": lambda tf: {"initializer": 2 ** 40, "dtype": tf.int64},
    "bool_as_bool": lambda tf: {"initializer": [True, False], "dtype": tf.bool},
    "shape_numpy_array": lambda tf: {"shape": np.array([2, 3])},
    "shape_numpy_ints": lambda tf: {"shape": [np.int64(2), np.int32(1)], "dtype": tf.int32},
    "shape_numpy_scalar": lambda tf: {"shape": np.int64(3)},
    "initializer_with_dtype_name": lambda tf: {"initializer": [1.0], "dtype": "float32"},
}.items():
    get_variable_with(_label, _kwargs)


@PROGRAMS.graph
def scope_dtype_and_value_dtype(tf: Any, env: Any) -> Any:
    with tf.variable_scope("s", dtype=tf.float64):
        return [describe(tf.get_variable("b", initializer=[1.0, 2.0])),
                describe(tf.get_variable("c", shape=[2])),
                error(lambda: describe(tf.get_variable("d", initializer=[1.0],
                                                       dtype=tf.float64)))]


def constant_initializer_fills(label: str, value: Any, shape: list[int], dtype: str) -> None:
    """Registers a program reading ``get_variable`` with ``constant_initializer(value)``."""
    def program(tf: Any, env: Any) -> Any:
        v = tf.get_variable("c", shape=shape, initializer=tf.constant_initializer(value),
                            dtype=getattr(tf, dtype))
        with env.session() as sess:
            sess.run(v.initializer)
            return sess.run(v)
    program.__name__ = f"constant_initializer_{label}"
    PROGRAMS.graph(program)


for _args in [("fewer", [1, 2], [3], "float32"), ("more", [1, 2, 3, 4, 5], [3], "float32"),
              ("same_count_other_shape", [[1, 2], [3, 4]], [4], "float32"),
              ("pad_with_last", [1, 2, 3], [2, 3], "float32"),
              ("scalar", 7, [2, 2], "int32"), ("one_element_list", [5], [3], "int64"),
              ("numpy_fewer", np.array([1.5, 2.5]), [2, 2], "float64"),
              ("scalar_shape_one_value", [4.0], [], "float32"),
              ("more_for_scalar", [1.0, 2.0], [], "float32")]:
    constant_initializer_fills(*_args)


@PROGRAMS.graph
def constant_initializer_called_directly(tf: Any, env: Any) -> Any:
    t = tf.constant_initializer([1, 2])([2, 2])
    with env.session() as sess:
        return [t.dtype.name, sess.run(t)]


def variable_of(label: str, make_value: Any, dtype: str | None = None) -> None:
    """Registers a program describing ``tf.Variable(make_value())``."""
    def program(tf: Any, env: Any) -> Any:
        return describe(tf.Variable(make_value(),
                                    dtype=None if dtype is None else getattr(tf, dtype)))
    program.__name__ = f"variable_of_{label}"
    PROGRAMS.graph(program)


variable_of("mixed_list", lambda: [1, 2.5])
variable_of("big_int", lambda: 2 ** 40)
variable_of("list_with_big_int", lambda: [1, 2 ** 40])
variable_of("float_as_int32", lambda: 1.5, "int32")
variable_of("int_as_float32", lambda: 3, "float32")
variable_of("numpy_int64", lambda: np.int64(3))
variable_of("bool_list", lambda: [True, False])
variable_of("nested", lambda: [[1.0], [2]])


@PROGRAMS.graph
def numpy_ints_as_shapes(tf: Any, env: Any) -> Any:
    return [tf.zeros(np.int64(3)).shape.as_list(), tf.ones([np.int32(2)]).shape.as_list(),
            tf.zeros(np.array([2, 1])).shape.as_list(),
            tf.random_normal((np.int64(2), 2)).shape.as_list(),
            tf.placeholder(tf.float32, [None, np.int64(3)]).shape.as_list()]


@PROGRAMS.graph
def numpy_ints_as_indices(tf: Any, env: Any) -> Any:
    v = tf.Variable([[1.0], [2.0], [3.0]], name="g")
    g = tf.gather(v, [np.int64(2), np.int64(0)])
    u = tf.scatter_update(v, np.array([1], np.int64), [[9.0]])
    w = tf.scatter_add(v, [np.int32(0)], [[1.0]])
    with env.session() as sess:
        sess.run(v.initializer)
        return [sess.run(g), sess.run(u), sess.run(w),
                error(lambda: tf.scatter_update(v, np.array([1], np.uint8), [[9.0]]))]


@PROGRAMS.graph
def reference_dtypes_as_printed(tf: Any, env: Any) -> Any:
    v = tf.Variable(1.0, name="v")
    g = tf.get_variable("g", [2], dtype=tf.int32)
    r = tf.get_variable("r", [2], use_resource=True)
    rv = tf.Variable(1.0, name="rv", use_resource=True)
    with tf.variable_scope("res", use_resource=True):
        scoped = tf.get_variable("s", [1])
    p = tf.get_variable("p", [4, 2], partitioner=tf.fixed_size_partitioner(2))
    return [[str(x.dtype) for x in (v, g, r, rv, scoped, p, list(p)[0])],
            [repr(v), repr(g), repr(list(p)[1]), repr(v.dtype)],
            [str(x.dtype) for x in (v.value(), v.read_value(), v + 1, tf.convert_to_tensor(v),
                                    v.initialized_value(), tf.zeros([2], dtype=v.dtype))],
            [str(v.dtype.base_dtype), v.dtype == tf.float32, v.dtype.is_floating,
             g.dtype.is_integer, v.dtype.is_compatible_with(tf.float32),
             tf.float32.is_compatible_with(v.dtype), v.dtype.as_numpy_dtype.__name__,
             v.dtype.name, str(tf.as_dtype("float32_ref")), str(tf.as_dtype(v.dtype))]]


@PROGRAMS.graph
def reference_dtype_in_a_sharing_error(tf: Any, env: Any) -> Any:
    tf.get_variable("g", [2], dtype=tf.int32)
    with tf.variable_scope("", reuse=True):
        return [error(lambda: tf.get_variable("g", [2], dtype=tf.float32)),
                describe(tf.get_variable("g", [2], dtype=tf.int32))]


@PROGRAMS.graph
def reference_variable_trains_and_saves(tf: Any, env: Any) -> Any:
    v = tf.get_variable("w", initializer=[1.0, 2.0])
    step = tf.train.GradientDescentOptimizer(0.5).apply_gradients([(v * 2.0, v)])
    Path(env.tmp, "ckpt").mkdir(exist_ok=True)  # the test server's checkpoint folder
    path = f"{env.tmp}/ckpt/ref-model"
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(step)
        saved = tf.train.Saver().save(sess, path)
        sess.run(v.assign([5.0, 6.0]))
        tf.train.Saver().restore(sess, saved)
        return [str(v.dtype), sess.run(v), saved == path]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
