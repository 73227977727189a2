"""Constants, placeholders, tensor conversion and the ops that make or reshape tensors.

Conversion follows TF's rules: Python ints become int32 (int64 when they do not fit),
floats float32, numpy values keep their dtype; a value converted for an op that already has
a typed input takes that input's dtype when it can (``c + 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from varstore import initializers
from varstore.common import dtypes
from varstore.v1 import shapes
from varstore.v1.graph import Tensor, get_default_graph, op_scope
from varstore.v1.init_ops import initializer_tensor
from varstore.v1.shapes import TensorShape, as_shape


def constant(value: Any, dtype: Any = None, shape: Any = None, name: str = "Const") -> Tensor:
    """A tensor holding ``value``, sent with the request that needs it.

    With ``shape``, a scalar is broadcast and a value with as many elements is reshaped
    (``ValueError`` otherwise). Raises ``TypeError`` when ``value`` does not fit ``dtype``.
    """
    if dtype is None:
        dtype = dtypes.infer(value)
    else:
        dtype = dtypes.as_dtype(dtype)
        dtypes.check_convertible(value, dtype)
    array = dtypes.to_numpy(value, dtype)
    if shape is not None:
        target = as_shape(shape).fully_defined_dims()
        count = int(np.prod(target, dtype=np.int64))
        if array.size == 1:
            array = np.full(target, array.reshape(()), dtype=array.dtype)
        elif array.size == count:
            array = array.reshape(target)
        else:
            raise ValueError(f"Cannot make a tensor of shape {target} from {array.size} "
                             f"elements")
    # As TF's Graph.create_op: a constant's name is made unique, opening no name scope.
    graph = get_default_graph()
    return graph.create_op(graph.naming.op_name(name or "Const"), "Const", "const", (), dtype,
                           array.shape, value=array).outputs[0]


def convert_to_tensor(value: Any, dtype: Any = None, name: str | None = None,
                      dtype_hint: Any = None, as_ref: bool = False) -> Tensor:
    """``value`` as a tensor: tensors as they are, variables as their value (their reference
    with ``as_ref``), anything else as a constant.

    ``dtype`` is required (``ValueError`` for a tensor of another dtype, ``TypeError`` for a
    value that does not fit); ``dtype_hint`` is used when the value fits it.
    """
    dtype = dtypes.as_dtype(dtype) if dtype is not None else None
    if hasattr(value, "_as_graph_tensor"):
        value = value._as_graph_tensor(as_ref)
    if isinstance(value, Tensor):
        if dtype is not None and value.dtype != dtype:
            raise ValueError(f"Tensor conversion requested dtype {dtype.name} for Tensor with "
                             f"dtype {value.dtype.name}: {value!r}")
        return value
    if dtype is None and dtype_hint is not None:
        try:
            return constant(value, dtypes.as_dtype(dtype_hint), name=name or "Const")
        except (TypeError, ValueError, OverflowError):
            pass
    return constant(value, dtype, name=name or "Const")


def convert_input(value: Any, like: Tensor, op_type: str, arg: str, like_arg: str,
                  name: str) -> Tensor:
    """Converts the op input ``arg``, which must have the dtype of input ``like_arg``.

    Raises TF's ``TypeError`` when the dtypes differ.
    """
    tensor = convert_to_tensor(value, name=name, dtype_hint=like.dtype)
    if tensor.dtype != like.dtype:
        raise TypeError(f"Input '{arg}' of '{op_type}' Op has type {tensor.dtype.name} that "
                        f"does not match type {like.dtype.name} of argument '{like_arg}'.")
    return tensor


def placeholder(dtype: Any, shape: Any = None, name: str | None = None) -> Tensor:
    """A tensor whose value must be fed at run time (``feed_dict``)."""
    with op_scope(name, "Placeholder") as (graph, op_name):
        return graph.create_op(op_name, "Placeholder", "placeholder", (),
                               dtypes.as_dtype(dtype), as_shape(shape)).outputs[0]


def zeros(shape: Any, dtype: Any = dtypes.float32, name: str | None = None) -> Tensor:
    """A tensor of zeros, made on the server."""
    return initializer_tensor(initializers.zeros_initializer(), shape, dtypes.as_dtype(dtype),
                              name)


def ones(shape: Any, dtype: Any = dtypes.float32, name: str | None = None) -> Tensor:
    """A tensor of ones, made on the server."""
    return initializer_tensor(initializers.ones_initializer(), shape, dtypes.as_dtype(dtype),
                              name)


def fill(dims: Any, value: Any, name: str | None = None) -> Tensor:
    """A tensor of shape ``dims`` filled with the scalar ``value``."""
    return initializer_tensor(initializers.constant_initializer(value), dims,
                              dtypes.infer(value), name, default_name="Fill")


def random_normal(shape: Any, mean: float = 0.0, stddev: float = 1.0,
                  dtype: Any = dtypes.float32, seed: int | None = None,
                  name: str | None = None) -> Tensor:
    """Normally distributed values, drawn on the server every time the tensor is computed."""
    init = initializers.random_normal_initializer(mean, stddev, seed)
    return initializer_tensor(init, shape, dtypes.as_dtype(dtype), name)


def truncated_normal(shape: Any, mean: float = 0.0, stddev: float = 1.0,
                     dtype: Any = dtypes.float32, seed: int | None = None,
                     name: str | None = None) -> Tensor:
    """Normal values redrawn beyond two standard deviations, drawn on the server."""
    init = initializers.truncated_normal_initializer(mean, stddev, seed)
    return initializer_tensor(init, shape, dtypes.as_dtype(dtype), name)


def random_uniform(shape: Any, minval: Any = 0, maxval: Any = None,
                   dtype: Any = dtypes.float32, seed: int | None = None,
                   name: str | None = None) -> Tensor:
    """Uniform values on [minval, maxval), drawn on the server.

    Raises ``ValueError`` for an integer dtype without ``maxval``.
    """
    dtype = dtypes.as_dtype(dtype)
    if dtype.is_integer and maxval is None:
        raise ValueError(f"Must specify maxval for integer dtype {dtype.name}")
    init = initializers.random_uniform_initializer(minval, maxval, seed)
    return initializer_tensor(init, shape, dtype, name)


def identity(input: Any, name: str | None = None) -> Tensor:  # noqa: A002 - TF's name
    """A tensor with the same value as ``input``."""
    with op_scope(name, "Identity", [input]) as (graph, op_name):
        x = convert_to_tensor(input)
        return graph.create_op(op_name, "Identity", "identity", [x], x.dtype,
                               x.shape).outputs[0]


def cast(x: Any, dtype: Any, name: str | None = None) -> Tensor:
    """``x`` converted to ``dtype`` (``x`` itself when it has that dtype already)."""
    dtype = dtypes.as_dtype(dtype)
    with op_scope(name, "Cast", [x]) as (graph, op_name):
        t = convert_to_tensor(x, name="x")
        if t.dtype == dtype:
            return t
        return graph.create_op(op_name, "Cast", "cast", [t], dtype, t.shape,
                               attrs={"dtype": dtype}).outputs[0]


def reshape(tensor: Any, shape: Sequence[int], name: str | None = None) -> Tensor:
    """``tensor`` with a new shape (one dimension may be -1); raises ``ValueError`` when the
    sizes cannot match."""
    new = [int(d) for d in shape]
    with op_scope(name, "Reshape", [tensor]) as (graph, op_name):
        t = convert_to_tensor(tensor, name="tensor")
        return graph.create_op(op_name, "Reshape", "reshape", [t], t.dtype,
                               shapes.reshape(t.shape, new), attrs={"shape": new}).outputs[0]


def stack(values: Sequence[Any], axis: int = 0, name: str = "stack") -> Tensor:
    """The tensors ``values`` (same dtype and shape) packed along a new ``axis``."""
    with op_scope(name, "stack", list(values)) as (graph, op_name):
        if not values:
            raise ValueError("stack needs at least one value")
        first = convert_to_tensor(values[0])
        tensors = [first] + [convert_input(v, first, "Pack", "values", "values", "Const")
                             for v in values[1:]]
        shape = first.shape
        for t in tensors[1:]:
            shape = shapes.merge(shape, t.shape, op_name, "Pack")
        dims = shape.dims
        if dims is not None:
            dims.insert(axis if axis >= 0 else len(dims) + 1 + axis, len(tensors))
        return graph.create_op(op_name, "Pack", "stack", tensors, first.dtype,
                               TensorShape(dims), attrs={"axis": axis}).outputs[0]


def concat(values: Sequence[Any], axis: int, name: str = "concat") -> Tensor:
    """The tensors ``values`` (same dtype and rank, equal dimensions but ``axis``) joined
    along ``axis`` (negative counts from the end), as TF's ``tf.concat``; one value is
    returned as its identity. Raises ``ValueError`` for shapes that cannot be joined and an
    ``axis`` out of range, ``TypeError`` for mixed dtypes."""
    values = list(values)
    if len(values) == 1:
        with op_scope(name, "concat", values):
            return identity(values[0], name="concat")
    with op_scope(name, "concat", values) as (graph, op_name):
        if not values:
            raise ValueError("concat needs at least one value")
        first = convert_to_tensor(values[0])
        tensors = [first] + [convert_to_tensor(v, dtype_hint=first.dtype) for v in values[1:]]
        if any(t.dtype != first.dtype for t in tensors):
            raise TypeError(f"Tensors in list passed to 'values' of 'ConcatV2' Op have types "
                            f"[{', '.join(t.dtype.name for t in tensors)}] that don't all "
                            "match.")
        axis = int(axis)
        dims = _concat_shape([t.shape for t in tensors], axis, op_name)
        return graph.create_op(op_name, "ConcatV2", "concat", tensors, first.dtype,
                               TensorShape(dims), attrs={"axis": axis}).outputs[0]


def _concat_shape(shapes_in: list[TensorShape], axis: int, op_name: str) -> list[Any] | None:
    """The dims of ``concat(..., axis)`` of tensors of ``shapes_in``; TF's shape errors."""
    if any(s.dims is None for s in shapes_in):
        return None
    where = (f"for '{op_name}' (op: 'ConcatV2') with input shapes: "
             f"{', '.join(shapes.dims_str(s) for s in shapes_in)}, []")
    computed = f"{where} and with computed input tensors: input[{len(shapes_in)}] = <{axis}>."
    dims = list(shapes_in[0].dims or [])
    rank = len(dims)
    if not -rank <= axis < rank:
        raise ValueError(f"Shape must be at least rank {axis + 1 if axis >= 0 else -axis} but "
                         f"is rank {rank} {computed}")
    axis %= rank
    for other_shape in shapes_in[1:]:
        other = list(other_shape.dims or [])
        if len(other) != rank:
            raise ValueError(f"Shape must be rank {rank} but is rank {len(other)} {where}.")
        rest = [d for k, d in enumerate(dims) if k != axis]
        other_rest = [d for k, d in enumerate(other) if k != axis]
        for k, (a, b) in enumerate(zip(rest, other_rest, strict=True)):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    f"Dimension {k} in both shapes must be equal, but are {a} and {b}. Shapes "
                    f"are {shapes.dims_str(TensorShape(rest))} and "
                    f"{shapes.dims_str(TensorShape(other_rest))}. {computed}")
        dims = [(None if a is None or b is None else a + b) if k == axis else
                (b if a is None else a) for k, (a, b) in enumerate(zip(dims, other, strict=True))]
    return dims


def boolean_mask(tensor: Any, mask: Any, name: str = "boolean_mask") -> Tensor:
    """The rows of ``tensor`` where the boolean ``mask`` is true."""
    with op_scope(name, "boolean_mask", [tensor, mask]) as (graph, op_name):
        t = convert_to_tensor(tensor, name="tensor")
        m = convert_to_tensor(mask, dtype=dtypes.bool_, name="mask")
        rest = t.shape.dims[m.shape.ndims:] if t.shape.dims is not None and m.shape.ndims \
            is not None else None
        shape = TensorShape(None if rest is None else [None, *rest])
        return graph.create_op(op_name, "BooleanMask", "boolean_mask", [t, m], t.dtype,
                               shape).outputs[0]


def gather(params: Any, indices: Any, name: str | None = None, axis: int | None = None
           ) -> Tensor:
    """Rows ``indices`` of ``params``; a variable's rows are read atomically on the server.

    Raises ``ValueError`` for an ``axis`` other than 0.
    """
    if axis not in (None, 0):
        raise ValueError(f"gather supports axis 0 only, got axis={axis}")
    with op_scope(name, "GatherV2", [params, indices]) as (graph, op_name):
        ref = convert_to_tensor(params, as_ref=True, name="params")
        idx = convert_to_tensor(indices, name="indices")
        if not idx.dtype.is_integer:
            raise TypeError(f"Value passed to parameter 'indices' has DataType "
                            f"{idx.dtype.name} not in list of allowed values: int16, int32, "
                            "int64")
        rows = ref.shape.dims[1:] if ref.shape.dims is not None else None
        shape = TensorShape(None if rows is None or idx.shape.dims is None
                            else idx.shape.dims + rows)
        variable = ref.op.name if ref.op.type == "VariableV2" else ""
        return graph.create_op(op_name, "GatherV2", "gather", [ref, idx], ref.dtype, shape,
                               variable=variable).outputs[0]

