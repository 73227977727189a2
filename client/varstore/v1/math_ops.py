"""Arithmetic, comparisons, matmul and reductions, and the operators of tensors and variables.

Op names and types are TF's: ``c + 1`` is ``add`` (type ``AddV2``), ``tf.add`` is ``Add``,
``tf.matmul`` is ``MatMul`` and ``a @ b`` is ``matmul``. Integer ``/`` casts to float first,
as Python 3 division does in TF.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.v1 import operators, shapes
from varstore.v1.array_ops import cast, convert_input, convert_to_tensor
from varstore.v1.graph import Tensor, op_scope

_BOOL_RESULT = {"Less", "LessEqual", "Greater", "GreaterEqual", "Equal", "NotEqual"}


def _binary(kernel: str, op_type: str, x: Any, y: Any, name: str | None, default: str,
            reverse: bool = False) -> Tensor:
    """Adds the elementwise op ``kernel(x, y)``; ``reverse`` converts ``x`` to ``y``'s dtype
    (Python's reflected operators) instead of ``y`` to ``x``'s."""
    with op_scope(name, default, [x, y]) as (graph, op_name):
        if reverse:
            b = convert_to_tensor(y, name="y")
            a = convert_to_tensor(x, dtype=b.dtype, name="x")
        else:
            a = convert_to_tensor(x, name="x")
            b = convert_input(y, a, op_type, "y", "x", "y")
        if op_type in ("LogicalAnd", "LogicalOr") and a.dtype != dtypes.bool_:
            raise TypeError(f"Value passed to parameter 'x' has DataType {a.dtype.name} not "
                            f"in list of allowed values: bool")
        shape = shapes.broadcast(a.shape, b.shape, op_name, op_type)
        dtype = dtypes.bool_ if op_type in _BOOL_RESULT else a.dtype
        return graph.create_op(op_name, op_type, kernel, [a, b], dtype, shape).outputs[0]


def _unary(kernel: str, op_type: str, x: Any, name: str | None) -> Tensor:
    with op_scope(name, op_type, [x]) as (graph, op_name):
        t = convert_to_tensor(x, name="x")
        if op_type == "LogicalNot" and t.dtype != dtypes.bool_:
            raise TypeError(f"Value passed to parameter 'x' has DataType {t.dtype.name} not "
                            f"in list of allowed values: bool")
        return graph.create_op(op_name, op_type, kernel, [t], t.dtype, t.shape).outputs[0]


def _float_for_division(dtype: DType) -> DType | None:
    """The dtype TF's true division casts integers to (None: no cast)."""
    if dtype.name in ("int8", "uint8", "int16", "uint16"):
        return dtypes.float32
    if dtype.name in ("int32", "uint32", "int64", "uint64"):
        return dtypes.float64
    return None


def _truediv(x: Any, y: Any, name: str | None, reverse: bool = False) -> Tensor:
    with op_scope(name, "truediv", [x, y]) as (graph, op_name):
        if reverse:
            b = convert_to_tensor(y, name="y")
            a = convert_to_tensor(x, dtype=b.dtype, name="x")
        else:
            a = convert_to_tensor(x, name="x")
            b = convert_input(y, a, "RealDiv", "y", "x", "y")
        target = _float_for_division(a.dtype)
        if target is not None:
            a, b = cast(a, target), cast(b, target)
        shape = shapes.broadcast(a.shape, b.shape, op_name, "RealDiv")
        return graph.create_op(op_name, "RealDiv", "realdiv", [a, b], a.dtype,
                               shape).outputs[0]


# --- functions -------------------------------------------------------------------------------

def add(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x + y`` elementwise, with broadcasting."""
    return _binary("add", "AddV2", x, y, name, "Add")


def subtract(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x - y`` elementwise."""
    return _binary("sub", "Sub", x, y, name, "Sub")


def multiply(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x * y`` elementwise."""
    return _binary("mul", "Mul", x, y, name, "Mul")


def divide(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x / y`` (integers are cast to float first)."""
    return _truediv(x, y, name)


truediv = divide


def floordiv(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x // y`` elementwise."""
    return _binary("floordiv", "FloorDiv", x, y, name, "floordiv")


def mod(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x % y`` elementwise, with the sign of ``y`` as in Python."""
    return _binary("mod", "FloorMod", x, y, name, "FloorMod")


def pow(x: Any, y: Any, name: str | None = None) -> Tensor:  # noqa: A001 - TF's name
    """``x ** y`` elementwise."""
    return _binary("pow", "Pow", x, y, name, "Pow")


def maximum(x: Any, y: Any, name: str | None = None) -> Tensor:
    """The larger of ``x`` and ``y`` elementwise."""
    return _binary("maximum", "Maximum", x, y, name, "Maximum")


def minimum(x: Any, y: Any, name: str | None = None) -> Tensor:
    """The smaller of ``x`` and ``y`` elementwise."""
    return _binary("minimum", "Minimum", x, y, name, "Minimum")


def equal(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x == y`` elementwise (a bool tensor)."""
    return _binary("equal", "Equal", x, y, name, "Equal")


def not_equal(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x != y`` elementwise (a bool tensor)."""
    return _binary("not_equal", "NotEqual", x, y, name, "NotEqual")


def less(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x < y`` elementwise."""
    return _binary("less", "Less", x, y, name, "Less")


def less_equal(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x <= y`` elementwise."""
    return _binary("less_equal", "LessEqual", x, y, name, "LessEqual")


def greater(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x > y`` elementwise."""
    return _binary("greater", "Greater", x, y, name, "Greater")


def greater_equal(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x >= y`` elementwise."""
    return _binary("greater_equal", "GreaterEqual", x, y, name, "GreaterEqual")


def logical_and(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x and y`` elementwise on bool tensors."""
    return _binary("logical_and", "LogicalAnd", x, y, name, "LogicalAnd")


def logical_or(x: Any, y: Any, name: str | None = None) -> Tensor:
    """``x or y`` elementwise on bool tensors."""
    return _binary("logical_or", "LogicalOr", x, y, name, "LogicalOr")


def logical_not(x: Any, name: str | None = None) -> Tensor:
    """``not x`` elementwise on a bool tensor."""
    return _unary("logical_not", "LogicalNot", x, name)


def negative(x: Any, name: str | None = None) -> Tensor:
    """``-x`` elementwise."""
    return _unary("neg", "Neg", x, name)


def abs(x: Any, name: str | None = None) -> Tensor:  # noqa: A001 - TF's name
    """``|x|`` elementwise."""
    return _unary("abs", "Abs", x, name)


def square(x: Any, name: str | None = None) -> Tensor:
    """``x * x`` elementwise."""
    return _unary("square", "Square", x, name)


def sqrt(x: Any, name: str | None = None) -> Tensor:
    """The square root elementwise."""
    return _unary("sqrt", "Sqrt", x, name)


def exp(x: Any, name: str | None = None) -> Tensor:
    """``e ** x`` elementwise."""
    return _unary("exp", "Exp", x, name)


def log(x: Any, name: str | None = None) -> Tensor:
    """The natural logarithm elementwise."""
    return _unary("log", "Log", x, name)


def tanh(x: Any, name: str | None = None) -> Tensor:
    """The hyperbolic tangent elementwise."""
    return _unary("tanh", "Tanh", x, name)


def sigmoid(x: Any, name: str | None = None) -> Tensor:
    """``1 / (1 + exp(-x))`` elementwise."""
    return _unary("sigmoid", "Sigmoid", x, name)


def relu(features: Any, name: str | None = None) -> Tensor:
    """``max(features, 0)`` elementwise."""
    return _unary("relu", "Relu", features, name)


def sign(x: Any, name: str | None = None) -> Tensor:
    """-1, 0 or 1 elementwise."""
    return _unary("sign", "Sign", x, name)


def matmul(a: Any, b: Any, transpose_a: bool = False, transpose_b: bool = False,
           name: str | None = None) -> Tensor:
    """The matrix product of ``a`` and ``b`` (optionally transposed).

    Raises TF's ``ValueError`` for ranks other than 2 or mismatched inner dimensions.
    """
    return _matmul(a, b, transpose_a, transpose_b, name, "MatMul")


def _matmul(a: Any, b: Any, transpose_a: bool, transpose_b: bool, name: str | None,
            default: str, reverse: bool = False) -> Tensor:
    with op_scope(name, default, [a, b]) as (graph, op_name):
        if reverse:
            y = convert_to_tensor(b, name="b")
            x = convert_to_tensor(a, dtype=y.dtype, name="a")
        else:
            x = convert_to_tensor(a, name="a")
            y = convert_input(b, x, "MatMul", "b", "a", "b")
        shape = shapes.matmul(x.shape, y.shape, transpose_a, transpose_b, op_name, "MatMul")
        return graph.create_op(op_name, "MatMul", "matmul", [x, y], x.dtype, shape,
                               attrs={"transpose_a": transpose_a,
                                      "transpose_b": transpose_b}).outputs[0]


def _reduction(kernel: str, op_type: str) -> Callable[..., Tensor]:
    def reduce(input_tensor: Any, axis: int | Sequence[int] | None = None,
               keepdims: bool = False, name: str | None = None) -> Tensor:
        with op_scope(name, op_type, [input_tensor]) as (graph, op_name):
            t = convert_to_tensor(input_tensor, name="input")
            axes = None if axis is None else [int(axis)] if isinstance(axis, int) else \
                [int(a) for a in axis]
            return graph.create_op(op_name, op_type, kernel, [t], t.dtype,
                                   shapes.reduce(t.shape, axes, keepdims),
                                   attrs={"axis": axes, "keepdims": keepdims}).outputs[0]
    reduce.__name__ = kernel
    reduce.__doc__ = (f"``{kernel}`` over ``axis`` (all axes when None); ``keepdims`` keeps "
                      f"reduced axes with size 1.")
    return reduce


reduce_sum = _reduction("reduce_sum", "Sum")
reduce_mean = _reduction("reduce_mean", "Mean")
reduce_max = _reduction("reduce_max", "Max")
reduce_min = _reduction("reduce_min", "Min")


# --- operators ---------------------------------------------------------------------------

def _operator(kernel: str, op_type: str, default: str) -> tuple[Callable[..., Tensor],
                                                                Callable[..., Tensor]]:
    def forward(x: Any, y: Any) -> Tensor:
        return _binary(kernel, op_type, x, y, None, default)

    def reflected(y: Any, x: Any) -> Tensor:
        return _binary(kernel, op_type, x, y, None, default, reverse=True)
    return forward, reflected


_OPERATORS: dict[str, Callable[..., Tensor]] = {}
for _names, _args in {
    ("__add__", "__radd__"): ("add", "AddV2", "add"),
    ("__sub__", "__rsub__"): ("sub", "Sub", "sub"),
    ("__mul__", "__rmul__"): ("mul", "Mul", "mul"),
    ("__floordiv__", "__rfloordiv__"): ("floordiv", "FloorDiv", "floordiv"),
    ("__mod__", "__rmod__"): ("mod", "FloorMod", "mod"),
    ("__pow__", "__rpow__"): ("pow", "Pow", "pow"),
    ("__and__", "__rand__"): ("logical_and", "LogicalAnd", "and"),
    ("__or__", "__ror__"): ("logical_or", "LogicalOr", "or"),
}.items():
    _OPERATORS[_names[0]], _OPERATORS[_names[1]] = _operator(*_args)
for _name, _args in {
    "__lt__": ("less", "Less", "Less"), "__le__": ("less_equal", "LessEqual", "LessEqual"),
    "__gt__": ("greater", "Greater", "Greater"),
    "__ge__": ("greater_equal", "GreaterEqual", "GreaterEqual"),
}.items():
    _OPERATORS[_name] = _operator(*_args)[0]
_OPERATORS.update({
    "__truediv__": lambda x, y: _truediv(x, y, None),
    "__rtruediv__": lambda y, x: _truediv(x, y, None, reverse=True),
    "__matmul__": lambda x, y: _matmul(x, y, False, False, None, "matmul"),
    "__rmatmul__": lambda y, x: _matmul(x, y, False, False, None, "matmul", reverse=True),
    "__neg__": lambda x: negative(x),
    "__abs__": lambda x: abs(x),
    "__invert__": lambda x: logical_not(x),
})


operators.register(_OPERATORS)
