"""The ops a graph may contain, as numpy kernels registered by name.

A kernel receives the evaluation context, its node and its input values, and returns its
output (None for ops run for effect). Kernels that update a variable run while the executor
holds that variable's lock. Kernels raise varstore's errors for bad input; the executor turns
numpy's own exceptions into ``InvalidArgumentError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import InvalidArgumentError
from varstore.server.store import Variable, VariableStore
from varstore.server.waits import Waiter


@dataclass
class NodeDef:
    """A graph node as plain values (see ``Node`` in the protocol)."""

    op: str
    inputs: tuple[int, ...] = ()
    control_inputs: tuple[int, ...] = ()
    variable: str = ""
    tensor: int = 0
    attrs: dict[str, Any] | None = None

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute ``name``, or ``default`` when the node does not set it."""
        return (self.attrs or {}).get(name, default)


class Context(Protocol):
    """What a kernel may use from the executor."""

    store: VariableStore
    tensors: list[np.ndarray]
    # The request's undo and commit actions (executor.Journal) and the limits of its waits.
    journal: Any
    waiter: Waiter

    def variable(self, node: NodeDef) -> Variable: ...

    def check_alloc(self, shape: tuple[int, ...], dtype: DType) -> None: ...

    def take(self, node: NodeDef, position: int) -> bool: ...


Kernel = Callable[[Context, NodeDef, list[Any]], Any]


@dataclass(frozen=True)
class OpDef:
    """A registered op: its kernel, input count (None: any) and whether it names a variable."""

    kernel: Kernel
    arity: int | None
    uses_variable: bool


OPS: dict[str, OpDef] = {}


def register(name: str, arity: int | None, uses_variable: bool = False
             ) -> Callable[[Kernel], Kernel]:
    """Registers ``kernel`` as op ``name``."""
    def wrap(kernel: Kernel) -> Kernel:
        OPS[name] = OpDef(kernel, arity, uses_variable)
        return kernel
    return wrap


def _dtype_attr(node: NodeDef, default: DType | None = None) -> DType:
    value = node.attr("dtype")
    if value is None:
        if default is None:
            raise InvalidArgumentError(f"op {node.op} needs a dtype attribute")
        return default
    try:
        return dtypes.from_enum(int(value))
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None


def _shape_attr(ctx: Context, node: NodeDef, dtype: DType) -> tuple[int, ...]:
    shape = node.attr("shape")
    if shape is None:
        raise InvalidArgumentError(f"op {node.op} needs a shape attribute")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"op {node.op}: negative dimension in shape {list(shape)}")
    ctx.check_alloc(shape, dtype)
    return shape


def _rng(node: NodeDef) -> np.random.Generator:
    seed = node.attr("seed")
    return np.random.default_rng(None if seed is None else int(seed) & 0xFFFFFFFFFFFFFFFF)


def _cast(value: Any, dtype: DType) -> np.ndarray:
    return np.asarray(value).astype(dtype.np_dtype, copy=False)


# --- sources ---------------------------------------------------------------------------------

@register("const", 0)
def _const(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    if not 0 <= node.tensor < len(ctx.tensors):
        raise InvalidArgumentError(f"const refers to missing tensor {node.tensor}")
    return ctx.tensors[node.tensor]


@register("read", 0, uses_variable=True)
def _read(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    return ctx.variable(node).read()


@register("is_initialized", 0, uses_variable=True)
def _is_initialized(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    return np.asarray(ctx.variable(node).initialized)


@register("no_op", 0)
def _no_op(ctx: Context, node: NodeDef, _: list[Any]) -> None:
    return None


# --- variable updates ------------------------------------------------------------------------

def _check_value(var: Variable, value: np.ndarray, what: str) -> np.ndarray:
    if value.dtype != var.dtype.np_dtype:
        if var.dtype.is_string and value.dtype == object:
            pass
        else:
            raise InvalidArgumentError(
                f"{what} {var.name}: value has dtype {dtypes.as_dtype(value.dtype).name}, "
                f"variable has dtype {var.dtype.name}")
    if value.shape != var.shape:
        raise InvalidArgumentError(
            f"{what} {var.name}: value has shape {list(value.shape)}, variable has shape "
            f"{list(var.shape)}")
    return value


@register("assign", 1, uses_variable=True)
def _assign(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    var = ctx.variable(node)
    value = _check_value(var, np.asarray(inputs[0]), "Assign")
    # A new array rather than a write into the old one: a failed request can put the old
    # array back (executor._UndoLog) without having copied it. A pushed value that nothing
    # else in the request uses becomes the variable's array as it is, without a copy.
    ctx.store.set_value(var, value if ctx.take(node, 0) else np.array(value, copy=True))
    return var.read()


def _update(ctx: Context, node: NodeDef, inputs: list[Any], ufunc: np.ufunc) -> np.ndarray:
    var = ctx.variable(node)
    current = var.read()
    delta = np.asarray(inputs[0])
    if delta.dtype != current.dtype:
        raise InvalidArgumentError(
            f"{node.op} {var.name}: delta has dtype {dtypes.as_dtype(delta.dtype).name}, "
            f"variable has dtype {var.dtype.name}")
    if delta.shape != current.shape and \
            np.broadcast_shapes(delta.shape, current.shape) != current.shape:
        raise InvalidArgumentError(
            f"{node.op} {var.name}: delta of shape {list(delta.shape)} does not fit variable "
            f"of shape {list(current.shape)}")
    ufunc(current, delta, out=current)
    ctx.store.touched(var)
    return current


@register("assign_add", 1, uses_variable=True)
def _assign_add(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    return _update(ctx, node, inputs, np.add)


@register("assign_sub", 1, uses_variable=True)
def _assign_sub(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    return _update(ctx, node, inputs, np.subtract)


def _indices(indices: Any, limit: int, what: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what}: indices must be integers, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= limit):
        bad = idx[(idx < 0) | (idx >= limit)].reshape(-1)[0]
        raise InvalidArgumentError(f"{what}: index {bad} is not in [0, {limit})")
    return idx.astype(np.intp, copy=False)


def _scatter(ctx: Context, node: NodeDef, inputs: list[Any], mode: str) -> np.ndarray:
    var = ctx.variable(node)
    current = var.read()
    if not var.shape:
        raise InvalidArgumentError(f"{node.op} {var.name}: cannot scatter into a scalar")
    idx = _indices(inputs[0], var.shape[0], f"{node.op} {var.name}")
    updates = np.asarray(inputs[1])
    want = idx.shape + var.shape[1:]
    if updates.shape != want and updates.shape != ():
        raise InvalidArgumentError(
            f"{node.op} {var.name}: updates have shape {list(updates.shape)}, expected "
            f"{list(want)}")
    if updates.dtype != current.dtype:
        raise InvalidArgumentError(
            f"{node.op} {var.name}: updates have dtype {dtypes.as_dtype(updates.dtype).name}, "
            f"variable has dtype {var.dtype.name}")
    if mode == "update":
        current[idx] = updates
    else:
        _add_rows(current, idx, np.broadcast_to(updates, want), mode == "sub")
    ctx.store.touched(var)
    return current


def _add_rows(target: np.ndarray, idx: np.ndarray, updates: np.ndarray, negate: bool) -> None:
    """``target[idx] += updates`` (or ``-=``) where a repeated index accumulates every row.

    ``np.add.at`` does that but costs about 0.7 µs per element (0.7 ms for 1,024 rows of 64);
    a fancy-indexed add is ten times faster but keeps only one of repeated rows, so repeats
    are added in rounds of distinct indices (as many rounds as the most repeated index).
    """
    op = np.subtract if negate else np.add
    idx = idx.reshape(-1)
    updates = updates.reshape((idx.size,) + target.shape[1:])
    while idx.size:
        distinct, first = np.unique(idx, return_index=True)
        if distinct.size == idx.size:
            target[idx] = op(target[idx], updates)
            return
        target[distinct] = op(target[distinct], updates[first])
        rest = np.ones(idx.size, dtype=bool)
        rest[first] = False
        idx, updates = idx[rest], updates[rest]


@register("scatter_add", 2, uses_variable=True)
def _scatter_add(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    return _scatter(ctx, node, inputs, "add")


@register("scatter_sub", 2, uses_variable=True)
def _scatter_sub(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    return _scatter(ctx, node, inputs, "sub")


@register("scatter_update", 2, uses_variable=True)
def _scatter_update(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    return _scatter(ctx, node, inputs, "update")


@register("gather", None)
def _gather(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """``gather(params, indices)``, or ``gather(indices)`` on the node's variable."""
    if node.variable:
        params, indices = ctx.variable(node).read(), inputs[0]
    elif len(inputs) == 2:
        params, indices = np.asarray(inputs[0]), inputs[1]
    else:
        raise InvalidArgumentError("gather takes params and indices")
    if not params.shape:
        raise InvalidArgumentError("gather: params must have rank >= 1")
    idx = _indices(indices, params.shape[0], "gather")
    ctx.check_alloc(idx.shape + params.shape[1:], dtypes.as_dtype(params.dtype))
    return params[idx]


# --- initializers ----------------------------------------------------------------------------

@register("zeros", 0)
def _zeros(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _dtype_attr(node, dtypes.float32)
    shape = _shape_attr(ctx, node, dtype)
    if dtype.is_string:
        out = np.empty(shape, dtype=object)
        out.fill(b"")
        return out
    return np.zeros(shape, dtype=dtype.np_dtype)


@register("ones", 0)
def _ones(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _dtype_attr(node, dtypes.float32)
    return np.ones(_shape_attr(ctx, node, dtype), dtype=dtype.np_dtype)


@register("fill", 1)
def _fill(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """Broadcasts its input (a scalar or a value of the full shape) to ``shape``."""
    dtype = _dtype_attr(node, dtypes.as_dtype(np.asarray(inputs[0]).dtype))
    shape = _shape_attr(ctx, node, dtype)
    value = _cast(inputs[0], dtype)
    if value.size not in (1, math.prod(shape)) and value.shape != shape:
        raise InvalidArgumentError(
            f"constant of {value.size} elements cannot fill shape {list(shape)}")
    if value.size == math.prod(shape):
        return value.reshape(shape).copy()
    return np.full(shape, value.reshape(()), dtype=dtype.np_dtype)


def _float_dtype(node: NodeDef) -> DType:
    dtype = _dtype_attr(node, dtypes.float32)
    if not dtype.is_floating:
        raise InvalidArgumentError(f"{node.op} needs a floating dtype, got {dtype.name}")
    return dtype


@register("random_normal", 0)
def _random_normal(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _float_dtype(node)
    shape = _shape_attr(ctx, node, dtype)
    values = _rng(node).standard_normal(shape, dtype=np.float32)
    return _cast(values * node.attr("stddev", 1.0) + node.attr("mean", 0.0), dtype)


@register("truncated_normal", 0)
def _truncated_normal(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _float_dtype(node)
    shape = _shape_attr(ctx, node, dtype)
    rng = _rng(node)
    values = rng.standard_normal(shape, dtype=np.float32)
    outside = np.abs(values) > 2.0
    while outside.any():
        values[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
        outside = np.abs(values) > 2.0
    return _cast(values * node.attr("stddev", 1.0) + node.attr("mean", 0.0), dtype)


@register("random_uniform", 0)
def _random_uniform(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _dtype_attr(node, dtypes.float32)
    shape = _shape_attr(ctx, node, dtype)
    low, high = node.attr("minval", 0.0), node.attr("maxval", None)
    rng = _rng(node)
    if dtype.is_integer:
        if high is None:
            raise InvalidArgumentError("random_uniform of an integer dtype needs maxval")
        return rng.integers(int(low), int(high), size=shape, dtype=dtype.np_dtype)
    high = 1.0 if high is None else high
    return _cast(rng.uniform(low, high, size=shape), dtype)


@register("glorot_uniform", 0)
def _glorot_uniform(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    dtype = _float_dtype(node)
    shape = _shape_attr(ctx, node, dtype)
    fan_in, fan_out = _fans(shape)
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


# --- math ------------------------------------------------------------------------------------

def _same_dtype(node: NodeDef, a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype != b.dtype:
        raise InvalidArgumentError(
            f"{node.op}: inputs have different dtypes {dtypes.as_dtype(a.dtype).name} and "
            f"{dtypes.as_dtype(b.dtype).name}")


def _binary(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    def kernel(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
        a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
        _same_dtype(node, a, b)
        ctx.check_alloc(np.broadcast_shapes(a.shape, b.shape), dtypes.as_dtype(a.dtype))
        if name in _INTEGER_DIVISIONS and a.dtype.kind in "iu" and not np.all(b):
            raise InvalidArgumentError("Integer division by zero")
        # Floating results follow IEEE as TensorFlow's do (inf, nan), without numpy's warnings.
        with np.errstate(all="ignore"):
            return np.asarray(fn(a, b))
    register(name, 2)(kernel)


_INTEGER_DIVISIONS = frozenset({"div", "realdiv", "floordiv", "mod"})


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.floor_divide(a, b)
    return np.true_divide(a, b).astype(a.dtype, copy=False)


_BINARY_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _divide,
    "realdiv": lambda a, b: np.true_divide(a, b).astype(a.dtype, copy=False),
    "floordiv": np.floor_divide, "mod": np.mod, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less,
    "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
}
for _name, _binary_fn in _BINARY_FUNCTIONS.items():
    _binary(_name, _binary_fn)


def _unary(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    def kernel(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
        x = np.asarray(inputs[0])
        with np.errstate(all="ignore"):
            return np.asarray(fn(x)).astype(x.dtype, copy=False) if x.dtype != bool else fn(x)
    register(name, 1)(kernel)


_UNARY_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "neg": np.negative, "abs": np.abs, "square": np.square, "sqrt": np.sqrt, "exp": np.exp,
    "log": np.log, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)), "identity": lambda x: x,
    "sign": np.sign, "logical_not": np.logical_not,
}
for _name, _unary_fn in _UNARY_FUNCTIONS.items():
    _unary(_name, _unary_fn)


@register("matmul", 2)
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


@register("cast", 1)
def _cast_op(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    return _cast(inputs[0], _dtype_attr(node))


@register("reshape", 1)
def _reshape(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    shape = tuple(int(d) for d in node.attr("shape", ()))
    return np.reshape(np.asarray(inputs[0]), shape)


def _reduce(name: str, fn: Callable[..., np.ndarray]) -> None:
    def kernel(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
        x = np.asarray(inputs[0])
        axis = node.attr("axis")
        axis = None if axis is None else tuple(int(a) for a in axis)
        out = fn(x, axis=axis, keepdims=bool(node.attr("keepdims", False)))
        return np.asarray(out).astype(x.dtype, copy=False)
    register(name, 1)(kernel)


_reduce("reduce_sum", np.sum)
_reduce("reduce_mean", np.mean)
_reduce("reduce_max", np.max)
_reduce("reduce_min", np.min)


# --- graph-mode helpers (varstore.v1) ---------------------------------------------------------

@register("read_if_initialized", 1, uses_variable=True)
def _read_if_initialized(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """The variable's value when it is initialized, else the input (``initialized_value()``)."""
    var = ctx.variable(node)
    return var.read() if var.initialized else np.asarray(inputs[0])


@register("stack", None)
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
    return np.stack(values, axis=int(node.attr("axis", 0)))


@register("boolean_mask", 2)
def _boolean_mask(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """The rows of input 0 where the boolean input 1 is true."""
    values, mask = np.asarray(inputs[0]), np.asarray(inputs[1])
    if mask.dtype != np.bool_:
        raise InvalidArgumentError(f"boolean_mask: mask must be bool, got {mask.dtype}")
    if mask.ndim == 0 or values.shape[:mask.ndim] != mask.shape:
        raise InvalidArgumentError(
            f"boolean_mask: mask of shape {list(mask.shape)} does not match tensor of shape "
            f"{list(values.shape)}")
    return values[mask]
