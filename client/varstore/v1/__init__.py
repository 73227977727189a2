"""TF 1.x graph mode over a varstore server: ``import varstore.v1 as tf``.

Programs written for TensorFlow 1.x build a graph (``tf.Variable``, ``tf.get_variable``,
scopes, ``tf.assign``, arithmetic...) without contacting any server, then run it with
``tf.Session(address)``: every ``Session.run`` is one round trip, evaluated atomically on the
server, and variables are shared with every other worker by their full names.
"""

from __future__ import annotations

from typing import Any

from varstore.common import dtypes as _dtypes
from varstore.common import errors
from varstore.common.dtypes import (
    DType,
    bfloat16,
    complex64,
    complex128,
    double,
    float16,
    float32,
    float64,
    half,
    int8,
    int16,
    int32,
    int64,
    string,
    uint8,
    uint16,
    uint32,
    uint64,
)
from varstore.common.dtypes import bool_ as bool  # noqa: A004 - TF's name
from varstore.v1 import nn, train
from varstore.v1.array_ops import (
    boolean_mask,
    cast,
    concat,
    constant,
    convert_to_tensor,
    fill,
    gather,
    identity,
    ones,
    placeholder,
    random_normal,
    random_uniform,
    reshape,
    stack,
    truncated_normal,
    zeros,
)
from varstore.v1.control_flow_ops import control_dependencies, group, no_op
from varstore.v1.graph import (
    Graph,
    GraphKeys,
    Operation,
    Tensor,
    device,
    get_default_graph,
    get_default_session,
    reset_default_graph,
)
from varstore.v1.init_ops import (
    constant_initializer,
    glorot_uniform_initializer,
    ones_initializer,
    random_normal_initializer,
    random_uniform_initializer,
    truncated_normal_initializer,
    zeros_initializer,
)
from varstore.v1.math_ops import (
    abs,  # noqa: A004 - TF's name
    add,
    divide,
    equal,
    exp,
    floordiv,
    greater,
    greater_equal,
    less,
    less_equal,
    log,
    logical_and,
    logical_not,
    logical_or,
    matmul,
    maximum,
    minimum,
    mod,
    multiply,
    negative,
    not_equal,
    pow,  # noqa: A004 - TF's name
    reduce_max,
    reduce_mean,
    reduce_min,
    reduce_sum,
    sigmoid,
    sign,
    sqrt,
    square,
    subtract,
    tanh,
    truediv,
)
from varstore.v1.optimizers import IndexedSlices
from varstore.v1.partitioned import (
    PartitionedVariable,
    fixed_size_partitioner,
    min_max_variable_partitioner,
    variable_axis_size_partitioner,
)
from varstore.v1.session import Session
from varstore.v1.shapes import TensorShape
from varstore.v1.state_ops import (
    assign,
    assign_add,
    assign_sub,
    is_variable_initialized,
    scatter_add,
    scatter_sub,
    scatter_update,
)
from varstore.v1.variable_scope import (
    AUTO_REUSE,
    VariableScope,
    get_variable,
    get_variable_scope,
    name_scope,
    variable_scope,
)
from varstore.v1.variables import (
    Variable,
    VariableAggregation,
    VariableSynchronization,
    global_variables,
    global_variables_initializer,
    report_uninitialized_variables,
    trainable_variables,
    variables_initializer,
)


def get_collection(key: str, scope: str | None = None) -> list:
    """The default graph's collection ``key`` (items under ``scope`` when given)."""
    return get_default_graph().get_collection(key, scope)


def add_to_collection(name: str, value: object) -> None:
    """Adds ``value`` to the default graph's collection ``name``."""
    get_default_graph().add_to_collection(name, value)


def as_dtype(type_value: Any) -> DType:
    """The :class:`DType` for a DType, a name (``"float32"``, ``"float32_ref"``), a numpy
    dtype or a Python type, reference dtypes kept, as TF's ``tf.as_dtype``. Raises
    ``TypeError`` for anything that names no supported type."""
    return _dtypes.as_dtype(type_value, keep_ref=True)


__all__ = [
    "AUTO_REUSE", "DType", "Graph", "GraphKeys", "IndexedSlices", "Operation",
    "PartitionedVariable", "Session", "Tensor", "TensorShape", "Variable",
    "VariableAggregation", "VariableScope", "VariableSynchronization",
    "abs", "add", "add_to_collection", "as_dtype", "assign", "assign_add", "assign_sub",
    "bfloat16", "bool", "boolean_mask", "cast", "complex128", "complex64", "concat", "constant",
    "constant_initializer", "control_dependencies", "convert_to_tensor", "device", "divide",
    "double",
    "equal", "errors", "exp", "fill", "fixed_size_partitioner", "float16", "float32", "float64",
    "floordiv", "gather", "get_collection", "get_default_graph", "get_default_session",
    "get_variable", "get_variable_scope", "global_variables", "global_variables_initializer",
    "glorot_uniform_initializer", "greater", "greater_equal", "group", "half", "identity",
    "int16", "int32", "int64", "int8", "is_variable_initialized", "less", "less_equal", "log",
    "logical_and", "logical_not", "logical_or", "matmul", "maximum",
    "min_max_variable_partitioner", "minimum", "mod", "multiply", "name_scope", "negative",
    "nn", "no_op", "not_equal", "ones", "ones_initializer", "placeholder", "pow",
    "random_normal", "random_normal_initializer", "random_uniform",
    "random_uniform_initializer", "reduce_max", "reduce_mean", "reduce_min", "reduce_sum",
    "report_uninitialized_variables", "reset_default_graph", "reshape", "scatter_add",
    "scatter_sub", "scatter_update", "sigmoid", "sign", "sqrt", "square", "stack", "string",
    "subtract", "tanh", "train", "trainable_variables", "truediv", "truncated_normal",
    "truncated_normal_initializer", "uint16", "uint32", "uint64", "uint8",
    "variable_axis_size_partitioner", "variable_scope", "variables_initializer", "zeros",
    "zeros_initializer",
]


def __dir__() -> list[str]:
    """The public names only, as ``dir()`` of TensorFlow's namespace shows them (not the
    imports this module is written with)."""
    return sorted(__all__)
