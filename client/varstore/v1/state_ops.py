"""Ops that update or inspect variables: assign, assign_add/sub, scatter_*, initialization.

Each runs on the server under the variable's lock, so ``assign(c, c + 1)`` run by many
workers at once never loses an update. ``use_locking`` is accepted for TF's signatures:
updates are always locked.
"""

from __future__ import annotations

from typing import Any

from varstore.common import dtypes
from varstore.v1 import shapes
from varstore.v1.array_ops import convert_input, convert_to_tensor
from varstore.v1.graph import Tensor, op_scope


def variable_ref(ref: Any, op_type: str) -> Tensor:
    """The reference tensor of the variable ``ref``; raises TF's ``TypeError`` otherwise."""
    tensor = convert_to_tensor(ref, as_ref=True)
    if tensor.op.type != "VariableV2":
        raise TypeError(f"Input 'ref' of '{op_type}' Op requires l-value input")
    return tensor


def _update(kernel: str, op_type: str, ref: Any, value: Any, name: str | None,
            validate_shape: bool = True) -> Tensor:
    var = variable_ref(ref, op_type)
    with op_scope(name, op_type, [ref, value]) as (graph, op_name):
        v = convert_input(value, var, op_type, "value", "ref", "value")
        if validate_shape:
            shape = shapes.merge(var.shape, v.shape, op_name, op_type)
            attrs = None
        else:
            shape, attrs = v.shape, {"validate_shape": False}
        return graph.create_op(op_name, op_type, kernel, [var, v], var.dtype.base_dtype, shape,
                               variable=var.op.name, attrs=attrs).outputs[0]


def assign(ref: Any, value: Any, validate_shape: bool | None = None,
           use_locking: bool | None = None, name: str | None = None) -> Tensor:
    """An op that sets variable ``ref`` to ``value``; evaluates to the new value.

    Raises ``ValueError`` for a value of another shape, ``TypeError`` of another dtype. With
    ``validate_shape=False`` the variable takes the value's shape instead, as TF 1.x's
    reference variables do (its graph keeps the static shape it was built with).
    """
    return _update("assign", "Assign", ref, value, name,
                   validate_shape=validate_shape is not False)


def assign_add(ref: Any, value: Any, use_locking: bool | None = None,
               name: str | None = None) -> Tensor:
    """An op that adds ``value`` to variable ``ref``; evaluates to the new value."""
    return _update("assign_add", "AssignAdd", ref, value, name)


def assign_sub(ref: Any, value: Any, use_locking: bool | None = None,
               name: str | None = None) -> Tensor:
    """An op that subtracts ``value`` from variable ``ref``; evaluates to the new value."""
    return _update("assign_sub", "AssignSub", ref, value, name)


def _scatter(kernel: str, op_type: str, ref: Any, indices: Any, updates: Any,
             name: str | None) -> Tensor:
    var = variable_ref(ref, op_type)
    with op_scope(name, op_type, [ref, indices, updates]) as (graph, op_name):
        idx = convert_to_tensor(indices, name="indices")
        if idx.dtype not in (dtypes.int32, dtypes.int64):
            raise TypeError(f"Value passed to parameter 'indices' has DataType "
                            f"{idx.dtype.name} not in list of allowed values: int32, int64")
        upd = convert_input(updates, var, op_type, "updates", "ref", "updates")
        _check_updates(var, idx, upd, op_name, op_type)
        return graph.create_op(op_name, op_type, kernel, [var, idx, upd], var.dtype.base_dtype,
                               var.shape, variable=var.op.name).outputs[0]


def _check_updates(var: Tensor, idx: Tensor, upd: Tensor, op_name: str, op_type: str) -> None:
    """TF's ``ScatterUpdate`` shape function: ``updates`` is a scalar or has shape
    ``indices.shape + ref.shape[1:]`` where the shapes are known; raises TF's ``ValueError``."""
    if upd.shape.ndims == 0 or var.shape.ndims in (None, 0) or idx.shape.ndims is None:
        return
    want = shapes.TensorShape(idx.shape.as_list() + var.shape.as_list()[1:])
    shapes.merge(upd.shape, want, op_name, op_type)


def scatter_add(ref: Any, indices: Any, updates: Any, use_locking: bool = False,
                name: str | None = None) -> Tensor:
    """An op adding ``updates`` to rows ``indices`` of ``ref`` (duplicates accumulate)."""
    return _scatter("scatter_add", "ScatterAdd", ref, indices, updates, name)


def scatter_sub(ref: Any, indices: Any, updates: Any, use_locking: bool = False,
                name: str | None = None) -> Tensor:
    """An op subtracting ``updates`` from rows ``indices`` of ``ref``."""
    return _scatter("scatter_sub", "ScatterSub", ref, indices, updates, name)


def scatter_update(ref: Any, indices: Any, updates: Any, use_locking: bool = True,
                   name: str | None = None) -> Tensor:
    """An op replacing rows ``indices`` of ``ref`` with ``updates``."""
    return _scatter("scatter_update", "ScatterUpdate", ref, indices, updates, name)


def is_variable_initialized(variable: Any) -> Tensor:
    """A bool tensor: whether ``variable`` holds a value on the server (set by any worker)."""
    var = variable_ref(variable, "IsVariableInitialized")
    with op_scope(None, "IsVariableInitialized", [variable]) as (graph, op_name):
        return graph.create_op(op_name, "IsVariableInitialized", "is_initialized", [var],
                               dtypes.bool_, (), variable=var.op.name).outputs[0]
