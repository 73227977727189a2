"""Shape ops: reshape, concat, and the graph-mode helpers ``stack`` and ``boolean_mask``
(varstore.v1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import InvalidArgumentError
from varstore.server.kernels.base import Context, NodeDef, OpDef, _same_dtype


def _reshape(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    x = np.asarray(inputs[0])
    shape = tuple(int(d) for d in node.attr("shape", ()))
    if not x.flags.c_contiguous:  # numpy copies it then
        ctx.check_alloc(x.shape, dtypes.as_dtype(x.dtype))
    return np.reshape(x, shape)


def _stack(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """Packs its inputs (same dtype and shape) along a new ``axis`` (default 0)."""
    if not inputs:
        raise InvalidArgumentError("stack needs at least one input")
    values = [np.asarray(x) for x in inputs]
    for other in values[1:]:
        _same_dtype(node, values[0], other)
        if other.shape != values[0].shape:
            raise InvalidArgumentError(
                f"stack: inputs have different shapes {list(values[0].shape)} and "
                f"{list(other.shape)}")
    ctx.check_alloc((len(values), *values[0].shape), dtypes.as_dtype(values[0].dtype))
    return np.stack(values, axis=int(node.attr("axis", 0)))


def _concat(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """Joins its inputs (same dtype and rank, equal dimensions but ``axis``) along ``axis``
    (negative counts from the end), as TensorFlow's ConcatV2."""
    if not inputs:
        raise InvalidArgumentError("concat needs at least one input")
    values = [np.asarray(x) for x in inputs]
    rank = values[0].ndim
    axis = int(node.attr("axis", 0))
    if not -rank <= axis < rank:
        raise InvalidArgumentError(f"ConcatOp : Expected concatenating dimensions in the range "
                                   f"[{-rank}, {rank}), but got {axis}")
    axis %= rank
    for i, other in enumerate(values[1:], 1):
        _same_dtype(node, values[0], other)
        if other.ndim != rank or any(a != b for k, (a, b) in enumerate(
                zip(values[0].shape, other.shape, strict=True)) if k != axis):
            raise InvalidArgumentError(
                f"ConcatOp : Dimension {axis} in both shapes must be equal: shape[0] = "
                f"{list(values[0].shape)} vs. shape[{i}] = {list(other.shape)}")
    shape = list(values[0].shape)
    shape[axis] = sum(v.shape[axis] for v in values)
    ctx.check_alloc(tuple(shape), dtypes.as_dtype(values[0].dtype))
    return np.concatenate(values, axis=axis)


def _boolean_mask(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """The rows of input 0 where the boolean input 1 is true."""
    values, mask = np.asarray(inputs[0]), np.asarray(inputs[1])
    if mask.dtype != np.bool_:
        raise InvalidArgumentError(f"boolean_mask: mask must be bool, got {mask.dtype}")
    if mask.ndim == 0 or values.shape[:mask.ndim] != mask.shape:
        raise InvalidArgumentError(
            f"boolean_mask: mask of shape {list(mask.shape)} does not match tensor of shape "
            f"{list(values.shape)}")
    ctx.check_alloc((int(np.count_nonzero(mask)), *values.shape[mask.ndim:]),
                    dtypes.as_dtype(values.dtype))
    return values[mask]


OPS = {
    "reshape": OpDef(_reshape, 1),
    "stack": OpDef(_stack, None),
    "concat": OpDef(_concat, None),
    "boolean_mask": OpDef(_boolean_mask, 2),
}
