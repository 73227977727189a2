"""Initializers: zeros, ones, fill and the random ones, seedable, as TensorFlow's init_ops.

Random values are drawn in float32 or float64 and then cast; that scratch array is charged to
the request's budget with the result.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import InvalidArgumentError
from varstore.server.kernels.base import Context, NodeDef, OpDef, _cast, _dtype_attr, _shape_attr


def _rng(node: NodeDef) -> np.random.Generator:
    seed = node.attr("seed")
    return np.random.default_rng(None if seed is None else int(seed) & 0xFFFFFFFFFFFFFFFF)


def _zeros(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _dtype_attr(node, dtypes.float32)
    shape = _shape_attr(ctx, node, dtype)
    if dtype.is_string:
        out = np.empty(shape, dtype=object)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=dtype.np_dtype)


def _ones(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _dtype_attr(node, dtypes.float32)
    return np.ones(_shape_attr(ctx, node, dtype), dtype=dtype.np_dtype)


def _fill(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """Broadcasts its input (a scalar or a value of the full shape) to ``shape``."""
    source = np.asarray(inputs[0])
    dtype = _dtype_attr(node, dtypes.as_dtype(source.dtype))
    shape = _shape_attr(ctx, node, dtype)
    if source.dtype != dtype.np_dtype:
        ctx.check_alloc(source.shape, dtype)
    value = _cast(source, dtype)
    if value.size not in (1, math.prod(shape)) and value.shape != shape:
        raise InvalidArgumentError(
            f"constant of {value.size} elements cannot fill shape {list(shape)}")
    if value.size == math.prod(shape):
        return value.reshape(shape).copy()
    return np.full(shape, value.reshape(()), dtype=dtype.np_dtype)


def _random_shape(ctx: Context, node: NodeDef, dtype: DType) -> tuple[int, ...]:
    """The node's shape, its result and the float64-sized scratch it is drawn in charged."""
    shape = _shape_attr(ctx, node, dtype)
    ctx.check_alloc(shape, dtypes.float64)
    return shape


def _float_dtype(node: NodeDef) -> DType:
    dtype = _dtype_attr(node, dtypes.float32)
    if not dtype.is_floating:
        raise InvalidArgumentError(f"{node.op} needs a floating dtype, got {dtype.name}")
    return dtype


def _random_normal(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _float_dtype(node)
    shape = _random_shape(ctx, node, dtype)
    values = _rng(node).standard_normal(shape, dtype=np.float32)
    return _cast(values * node.attr("stddev", 1.0) + node.attr("mean", 0.0), dtype)


def _truncated_normal(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _float_dtype(node)
    shape = _random_shape(ctx, node, dtype)
    rng = _rng(node)
    values = rng.standard_normal(shape, dtype=np.float32)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(values) > 2.0
    return _cast(values * node.attr("stddev", 1.0) + node.attr("mean", 0.0), dtype)


def _random_uniform(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _dtype_attr(node, dtypes.float32)
    shape = _random_shape(ctx, node, dtype)
    low, high = node.attr("minval", 0.0), node.attr("maxval", None)
    rng = _rng(node)
    if dtype.is_integer:
        if high is None:
            raise InvalidArgumentError("random_uniform of an integer dtype needs maxval")
        return rng.integers(int(low), int(high), size=shape, dtype=dtype.np_dtype)
    high = 1.0 if high is None else high
    return _cast(rng.uniform(low, high, size=shape), dtype)


def _glorot_uniform(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    """Glorot's uniform values; the fans come from ``fan_shape`` when given (the full shape
    of a partitioned variable this node fills one part of, as TF's ``partition_info``)."""
    dtype = _float_dtype(node)
    shape = _random_shape(ctx, node, dtype)
    fan_shape = node.attr("fan_shape")
    if fan_shape is not None and len(fan_shape) != len(shape):
        raise InvalidArgumentError(f"glorot_uniform: fan_shape {list(fan_shape)} and shape "
                                   f"{list(shape)} differ in rank")
    fan_in, fan_out = _fans(shape if fan_shape is None else tuple(fan_shape))
    limit = math.sqrt(6.0 / max(1.0, fan_in + fan_out))
    return _cast(_rng(node).uniform(-limit, limit, size=shape), dtype)


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    """TensorFlow's fan-in and fan-out of a weight shape (init_ops._compute_fans)."""
    if not shape:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


OPS = {
    "zeros": OpDef(_zeros, 0),
    "ones": OpDef(_ones, 0),
    "fill": OpDef(_fill, 1),
    "random_normal": OpDef(_random_normal, 0),
    "truncated_normal": OpDef(_truncated_normal, 0),
    "random_uniform": OpDef(_random_uniform, 0),
    "glorot_uniform": OpDef(_glorot_uniform, 0),
}
