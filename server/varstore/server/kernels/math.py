"""Elementwise math, matmul, casts and reductions.

Each kernel charges its result, and the scratch arrays numpy makes on the way (a float64
result of an integer input before it is cast back), before computing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import InvalidArgumentError
from varstore.server.kernels.base import (
    Context,
    Kernel,
    NodeDef,
    OpDef,
    _cast,
    _dtype_attr,
    _same_dtype,
)

Binary = Callable[[np.ndarray, np.ndarray], np.ndarray]
Unary = Callable[[np.ndarray], np.ndarray]

_INTEGER_DIVISIONS = frozenset({"div", "realdiv", "floordiv", "mod"})
_BOOLEAN_RESULTS = frozenset({"equal", "not_equal", "less", "less_equal", "greater",
                              "greater_equal", "logical_and", "logical_or"})
# Unary functions numpy computes in floating point whatever the input (then cast back), and how
# many float64 scratch arrays of the input's shape they make at once.
_FLOAT_SCRATCH = {"sqrt": 1, "exp": 1, "log": 1, "tanh": 1, "sigmoid": 2}


def _binary(name: str, fn: Binary) -> Kernel:
    def kernel(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
        a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
        _same_dtype(node, a, b)
        shape = np.broadcast_shapes(a.shape, b.shape)
        dtype = dtypes.as_dtype(a.dtype)
        ctx.check_alloc(shape, dtypes.bool_ if name in _BOOLEAN_RESULTS else dtype)
        if name == "realdiv" and a.dtype.kind in "iub":
            ctx.check_alloc(shape, dtypes.float64)
        if dtype.is_string and name == "add":
            # Concatenated strings: every result element holds new bytes.
            ctx.check_alloc((_broadcast_bytes(a, shape) + _broadcast_bytes(b, shape),),
                            dtypes.uint8)
        if name in _INTEGER_DIVISIONS and a.dtype.kind in "iu" and not np.all(b):
            raise InvalidArgumentError("Integer division by zero")
        # Floating results follow IEEE as TensorFlow's do (inf, nan), without numpy's warnings.
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b))
    return kernel


def _broadcast_bytes(strings: np.ndarray, shape: tuple[int, ...]) -> int:
    """The bytes of ``strings`` broadcast to ``shape`` (each element repeated alike)."""
    repeat = int(np.prod(shape, dtype=object)) // max(strings.size, 1)
    return repeat * sum(len(x) for x in strings.flat)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.floor_divide(a, b)
    return np.true_divide(a, b).astype(a.dtype, copy=False)


_BINARY_FUNCTIONS: dict[str, Binary] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _divide,
    "realdiv": lambda a, b: np.true_divide(a, b).astype(a.dtype, copy=False),
    "floordiv": np.floor_divide, "mod": np.mod, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less,
    "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
}


def _unary(name: str, fn: Unary) -> Kernel:
    def kernel(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
        x = np.asarray(inputs[0])
        if name == "identity":
            return x
        ctx.check_alloc(x.shape, dtypes.as_dtype(x.dtype))
        for _ in range(_FLOAT_SCRATCH.get(name, 0)):
            ctx.check_alloc(x.shape, dtypes.float64)
        with np.errstate(all="ignore"):
            return np.asarray(fn(x)).astype(x.dtype, copy=False) if x.dtype != bool else fn(x)
    return kernel


_UNARY_FUNCTIONS: dict[str, Unary] = {
    "neg": np.negative, "abs": np.abs, "square": np.square, "sqrt": np.sqrt, "exp": np.exp,
    "log": np.log, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "identity": lambda x: x,
    "sign": np.sign, "logical_not": np.logical_not,
}


def _matmul(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
    _same_dtype(node, a, b)
    if a.ndim != 2 or b.ndim != 2:
        raise InvalidArgumentError(f"matmul needs matrices, got shapes {a.shape} and {b.shape}")
    if node.attr("transpose_a", False):
        a = a.T
    if node.attr("transpose_b", False):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise InvalidArgumentError(
            f"Matrix size-incompatible: In[0]: {list(a.shape)}, In[1]: {list(b.shape)}")
    ctx.check_alloc((a.shape[0], b.shape[1]), dtypes.as_dtype(a.dtype))
    return a @ b


def _cast_op(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    x = np.asarray(inputs[0])
    dtype = _dtype_attr(node)
    if x.dtype != dtype.np_dtype:
        ctx.check_alloc(x.shape, dtype)
    return _cast(x, dtype)


def _reduce(fn: Callable[..., np.ndarray]) -> Kernel:
    def kernel(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
        x = np.asarray(inputs[0])
        dtype = dtypes.as_dtype(x.dtype)
        if dtype.is_string:
            # As TensorFlow's reductions, which take no strings (numpy's would concatenate
            # them, in time quadratic in their count).
            raise InvalidArgumentError(f"{node.op} does not take strings")
        axis = node.attr("axis")
        axis = None if axis is None else tuple(int(a) for a in axis)
        keepdims = bool(node.attr("keepdims", False))
        # Sums and means of narrow types are computed in 64 bits.
        ctx.check_alloc(_reduced_shape(x.shape, axis, keepdims),
                        dtype if dtype.itemsize >= 8 else dtypes.float64)
        out = fn(x, axis=axis, keepdims=keepdims)
        return np.asarray(out).astype(x.dtype, copy=False)
    return kernel


def _reduced_shape(shape: tuple[int, ...], axis: tuple[int, ...] | None, keepdims: bool
                   ) -> tuple[int, ...]:
    """The shape of a reduction's result (``shape`` itself for an axis numpy will refuse)."""
    rank = len(shape)
    axes = set(range(rank)) if axis is None else {a + rank if a < 0 else a for a in axis}
    if not all(0 <= a < rank for a in axes):
        return shape
    return tuple(1 if i in axes else d for i, d in enumerate(shape)
                 if keepdims or i not in axes)


OPS = {
    **{name: OpDef(_binary(name, fn), 2) for name, fn in _BINARY_FUNCTIONS.items()},
    **{name: OpDef(_unary(name, fn), 1) for name, fn in _UNARY_FUNCTIONS.items()},
    "matmul": OpDef(_matmul, 2),
    "cast": OpDef(_cast_op, 1),
    "reduce_sum": OpDef(_reduce(np.sum), 1),
    "reduce_mean": OpDef(_reduce(np.mean), 1),
    "reduce_max": OpDef(_reduce(np.max), 1),
    "reduce_min": OpDef(_reduce(np.min), 1),
}
