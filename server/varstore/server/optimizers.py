"""Optimizer kernels: TensorFlow's ``Apply*`` and ``SparseApply*`` training ops, in numpy.

Workers push gradients; the server applies them to the variable and its slots (``W/Momentum``,
``W/Adam``...) while the executor holds their locks, so every update is atomic. The ops follow
TensorFlow's input order, with slot variables passed as ``ref`` nodes (TensorFlow's ref
inputs) and hyperparameters as scalar inputs cast to the variable's dtype, as TF1's
optimizers cast them. The arithmetic follows TensorFlow's CPU kernels term by term, so float32
results match TensorFlow's to rounding.

Sparse ops take ``grad`` rows and their ``indices``; duplicate indices are summed first, as
TF1's ``Optimizer._apply_sparse_duplicate_indices`` does.

Gating: an update whose gradient input is None does nothing and returns None, and
``assign_mul`` and ``increment`` do nothing when every update they follow returned None. A
synchronous step (:mod:`varstore.server.sync`) feeds None until the step's last replica
arrives, so one request graph serves both the waiting and the applying replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import InvalidArgumentError, clip
from varstore.server.fused import adam_step
from varstore.server.kernels import Context, NodeDef, OpDef, _indices
from varstore.server.store import Variable
from varstore.server.sync import complete_at_increment


@dataclass(frozen=True)
class VariableRef:
    """A ``ref`` node's value: the variable itself, for ops that update it in place."""

    variable: Variable

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise InvalidArgumentError(
            f"ref {clip(self.variable.name)} is a variable reference, not a value: it can only be "
            f"an input of an update op")


def _ref(ctx: Context, node: NodeDef, _: list[Any]) -> VariableRef:
    return VariableRef(ctx.variable(node))


def _float_variable(ctx: Context, node: NodeDef) -> Variable:
    var = ctx.variable(node)
    if not var.dtype.is_floating:
        raise InvalidArgumentError(
            f"{node.op} {clip(var.name)}: needs a floating-point variable, got {var.dtype.name}")
    var.read()
    return var


def _slot(var: Variable, ref: Any, node: NodeDef) -> Variable:
    """The slot variable behind ``ref``, checked to match ``var``'s dtype and shape."""
    if not isinstance(ref, VariableRef):
        raise InvalidArgumentError(f"{node.op} {clip(var.name)}: slot inputs must be ref nodes")
    slot = ref.variable
    if slot.dtype != var.dtype or slot.shape != var.shape:
        raise InvalidArgumentError(
            f"{node.op} {clip(var.name)}: slot {clip(slot.name)} has dtype {slot.dtype.name} "
            f"and shape {list(slot.shape)}, the variable {var.dtype.name} and "
            f"{list(var.shape)}")
    slot.read()
    return slot


def _scalar_ref(ref: Any, node: NodeDef, dtype: np.dtype) -> np.ndarray:
    """A beta power's value: from a ref to a scalar variable, or, when that variable lives on
    another shard of a cluster, the value the client read there (as TensorFlow's ps tasks
    receive it from the device that holds it)."""
    if not isinstance(ref, VariableRef):
        value = np.asarray(ref)
        if value.shape != () or value.dtype != dtype:
            raise InvalidArgumentError(f"{node.op}: beta powers must be {dtype} scalars")
        return value
    if ref.variable.shape != ():
        raise InvalidArgumentError(f"{node.op}: beta power inputs must be refs to scalars")
    value = ref.variable.read()
    if ref.variable.dtype.np_dtype != dtype:
        raise InvalidArgumentError(
            f"{node.op}: {clip(ref.variable.name)} has dtype {ref.variable.dtype.name}, expected "
            f"{dtypes.as_dtype(dtype).name}")
    return value


def _hyper(value: Any, var: Variable, node: NodeDef, what: str) -> np.ndarray:
    """A scalar hyperparameter cast to the variable's dtype."""
    array = np.asarray(value)
    if array.shape != () or array.dtype.kind not in "iuf":
        raise InvalidArgumentError(f"{node.op} {clip(var.name)}: {what} must be a real scalar")
    return array.astype(var.dtype.np_dtype)


# How many arrays of the variable's shape (dense ops) or of the gradient's (sparse ops) an
# op's numpy expressions hold at once; they are charged to the request's memory budget
# before the op computes anything (see _dense_grad, _sparse_grad).
_SCRATCH = {
    "apply_gradient_descent": 1, "sparse_apply_gradient_descent": 2,
    "apply_momentum": 3, "sparse_apply_momentum": 4,
    "apply_adagrad": 3, "sparse_apply_adagrad": 4,
    "apply_adam": 2, "sparse_apply_adam": 3,
    "apply_rms_prop": 4, "sparse_apply_rms_prop": 5,
    "apply_centered_rms_prop": 5, "sparse_apply_centered_rms_prop": 6,
    "apply_ftrl": 8, "sparse_apply_ftrl": 11,
}


def _dense_grad(ctx: Context, var: Variable, grad: Any, node: NodeDef) -> np.ndarray:
    """The checked gradient of a dense update, its op's scratch charged."""
    grad = np.asarray(grad)
    if grad.dtype != var.dtype.np_dtype:
        raise InvalidArgumentError(
            f"{node.op} {clip(var.name)}: grad has dtype {dtypes.as_dtype(grad.dtype).name}, "
            f"variable has dtype {var.dtype.name}")
    if grad.shape != var.shape:
        raise InvalidArgumentError(
            f"{node.op} {clip(var.name)}: var and grad do not have the same shape "
            f"{list(var.shape)} {list(grad.shape)}")
    ctx.check_alloc((_SCRATCH[node.op], *var.shape), var.dtype)
    return grad


def _sparse_grad(ctx: Context, var: Variable, grad: Any, indices: Any, node: NodeDef,
                 unique: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(indices, rows)``, the op's scratch charged; with ``unique``, duplicate
    indices' rows are summed."""
    what = f"{node.op} {clip(var.name)}"
    if not var.shape:
        raise InvalidArgumentError(f"{what}: var must be at least 1 dimensional")
    grad = np.asarray(grad)
    idx = _indices(indices, var.shape[0], what)
    if idx.ndim != 1:
        raise InvalidArgumentError(f"{what}: indices must be one-dimensional")
    if grad.dtype != var.dtype.np_dtype:
        raise InvalidArgumentError(
            f"{what}: grad has dtype {dtypes.as_dtype(grad.dtype).name}, variable has dtype "
            f"{var.dtype.name}")
    if grad.shape != idx.shape + var.shape[1:]:
        raise InvalidArgumentError(
            f"{what}: grad has shape {list(grad.shape)}, expected "
            f"{list(idx.shape + var.shape[1:])} for {idx.size} indices")
    ctx.check_alloc((_SCRATCH[node.op] + unique, *grad.shape), var.dtype)
    if unique:
        idx, positions = np.unique(idx, return_inverse=True)
        summed = np.zeros((idx.size,) + var.shape[1:], var.dtype.np_dtype)
        np.add.at(summed, positions.reshape(-1), grad)
        grad = summed
    return idx, grad


def _done(ctx: Context, *variables: Variable) -> np.ndarray:
    for v in variables:
        ctx.store.touched(v)
    return variables[0].read()


# --- gradient descent ------------------------------------------------------------------------

def _apply_gradient_descent(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """``var -= grad * lr``; inputs: lr, grad."""
    if inputs[1] is None:
        return None
    var = _float_variable(ctx, node)
    lr = _hyper(inputs[0], var, node, "lr")
    grad = _dense_grad(ctx, var, inputs[1], node)
    var.read()[...] -= grad * lr
    return _done(ctx, var)


def _sparse_apply_gradient_descent(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """``var[indices] -= grad * lr``, duplicates accumulating; inputs: lr, grad, indices."""
    if inputs[1] is None:
        return None
    var = _float_variable(ctx, node)
    lr = _hyper(inputs[0], var, node, "lr")
    idx, grad = _sparse_grad(ctx, var, inputs[1], inputs[2], node, unique=False)
    np.add.at(var.read(), idx, -grad * lr)
    return _done(ctx, var)


# --- momentum --------------------------------------------------------------------------------

def _apply_momentum(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """``accum = accum * momentum + grad``, then ``var -= accum * lr`` (or the Nesterov step
    with ``use_nesterov``); inputs: accum ref, lr, grad, momentum."""
    if inputs[2] is None:
        return None
    var = _float_variable(ctx, node)
    accum = _slot(var, inputs[0], node)
    lr = _hyper(inputs[1], var, node, "lr")
    grad = _dense_grad(ctx, var, inputs[2], node)
    momentum = _hyper(inputs[3], var, node, "momentum")
    a, v = accum.read(), var.read()
    a[...] = a * momentum + grad
    if node.attr("use_nesterov", False):
        v -= grad * lr + a * momentum * lr
    else:
        v -= a * lr
    return _done(ctx, var, accum)


def _sparse_apply_momentum(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """The momentum step on rows ``indices`` only; inputs: accum ref, lr, grad, indices,
    momentum."""
    if inputs[2] is None:
        return None
    var = _float_variable(ctx, node)
    accum = _slot(var, inputs[0], node)
    lr = _hyper(inputs[1], var, node, "lr")
    idx, grad = _sparse_grad(ctx, var, inputs[2], inputs[3], node)
    momentum = _hyper(inputs[4], var, node, "momentum")
    a_rows = accum.read()[idx] * momentum + grad
    accum.read()[idx] = a_rows
    if node.attr("use_nesterov", False):
        var.read()[idx] -= grad * lr + a_rows * momentum * lr
    else:
        var.read()[idx] -= a_rows * lr
    return _done(ctx, var, accum)


# --- adagrad ---------------------------------------------------------------------------------

def _apply_adagrad(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """``accum += grad**2``, then ``var -= grad * lr / sqrt(accum)``; inputs: accum ref, lr,
    grad."""
    if inputs[2] is None:
        return None
    var = _float_variable(ctx, node)
    accum = _slot(var, inputs[0], node)
    lr = _hyper(inputs[1], var, node, "lr")
    grad = _dense_grad(ctx, var, inputs[2], node)
    a = accum.read()
    a += grad * grad
    var.read()[...] -= grad * lr / np.sqrt(a)
    return _done(ctx, var, accum)


def _sparse_apply_adagrad(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """The Adagrad step on rows ``indices`` only; inputs: accum ref, lr, grad, indices."""
    if inputs[2] is None:
        return None
    var = _float_variable(ctx, node)
    accum = _slot(var, inputs[0], node)
    lr = _hyper(inputs[1], var, node, "lr")
    idx, grad = _sparse_grad(ctx, var, inputs[2], inputs[3], node)
    a_rows = accum.read()[idx] + grad * grad
    accum.read()[idx] = a_rows
    var.read()[idx] -= grad * lr / np.sqrt(a_rows)
    return _done(ctx, var, accum)


# --- adam ------------------------------------------------------------------------------------

def _adam_inputs(ctx: Context, node: NodeDef, inputs: list[Any]
                 ) -> tuple[Variable, Variable, Variable, np.ndarray, np.ndarray, np.ndarray,
                            np.ndarray, np.ndarray]:
    """The variable, its m and v slots, and lr_t (TF's bias-corrected rate), beta1, beta2,
    epsilon, from inputs m ref, v ref, beta1_power ref, beta2_power ref, lr, beta1, beta2,
    epsilon."""
    var = _float_variable(ctx, node)
    m = _slot(var, inputs[0], node)
    v = _slot(var, inputs[1], node)
    dtype = var.dtype.np_dtype
    beta1_power = _scalar_ref(inputs[2], node, dtype)
    beta2_power = _scalar_ref(inputs[3], node, dtype)
    lr, beta1, beta2, epsilon = (_hyper(inputs[4 + i], var, node, what) for i, what in
                                 enumerate(("lr", "beta1", "beta2", "epsilon")))
    one = dtype.type(1)
    lr_t = lr * np.sqrt(one - beta2_power) / (one - beta1_power)
    return var, m, v, lr_t, beta1, beta2, epsilon, one


def _apply_adam(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """TF1's Adam step with the bias correction folded into the rate; inputs: m ref, v ref,
    beta1_power ref, beta2_power ref, lr, beta1, beta2, epsilon, grad."""
    if inputs[8] is None:
        return None
    var, m, v, lr_t, beta1, beta2, epsilon, one = _adam_inputs(ctx, node, inputs)
    grad = _dense_grad(ctx, var, inputs[8], node)
    adam_step(var.read(), m.read(), v.read(), grad, lr_t, one - beta1, one - beta2, epsilon)
    return _done(ctx, var, m, v)


def _sparse_apply_adam(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """TF1's sparse Adam: both moments decay everywhere, the gradient is added on rows
    ``indices``, and every row of the variable moves; inputs as ``apply_adam``, then indices.
    """
    if inputs[8] is None:
        return None
    var, m, v, lr_t, beta1, beta2, epsilon, one = _adam_inputs(ctx, node, inputs)
    idx, grad = _sparse_grad(ctx, var, inputs[8], inputs[9], node)
    ctx.check_alloc((3, *var.shape), var.dtype)  # every row moves
    m_, v_ = m.read(), v.read()
    m_ *= beta1
    np.add.at(m_, idx, grad * (one - beta1))
    v_ *= beta2
    np.add.at(v_, idx, (grad * grad) * (one - beta2))
    var.read()[...] -= lr_t * m_ / (np.sqrt(v_) + epsilon)
    return _done(ctx, var, m, v)


# --- rmsprop ---------------------------------------------------------------------------------

def _rms_prop_inputs(ctx: Context, node: NodeDef, inputs: list[Any], centered: bool
                     ) -> tuple[Variable, list[Variable], list[np.ndarray]]:
    """The variable, its slots ([mg,] ms, mom) and lr, rho, momentum, epsilon."""
    var = _float_variable(ctx, node)
    count = 3 if centered else 2
    slots = [_slot(var, ref, node) for ref in inputs[:count]]
    hyper = [_hyper(inputs[count + i], var, node, what)
             for i, what in enumerate(("lr", "rho", "momentum", "epsilon"))]
    return var, slots, hyper


def _rms_prop(ctx: Context, node: NodeDef, inputs: list[Any], centered: bool,
              sparse: bool) -> Any:
    """TF's (Sparse)Apply(Centered)RMSProp, following training_ops.cc's CPU functors: the
    dense step divides ``grad * lr`` by the root, the sparse one multiplies by its inverse,
    and the centered sparse step adds epsilon before subtracting ``mg**2``."""
    grad_at = 6 + centered
    if inputs[grad_at] is None:
        return None
    var, slots, (lr, rho, momentum, epsilon) = _rms_prop_inputs(ctx, node, inputs, centered)
    one = var.dtype.np_dtype.type(1)
    v_all = var.read()
    arrays = [s.read() for s in slots]
    ms, mom = arrays[-2:]
    mg = arrays[0] if centered else None
    if not sparse:
        grad = _dense_grad(ctx, var, inputs[grad_at], node)
        ms += (grad * grad - ms) * (one - rho)
        if mg is not None:
            mg += (grad - mg) * (one - rho)
            denom = (ms - mg * mg) + epsilon
        else:
            denom = ms + epsilon
        mom[...] = mom * momentum + (grad * lr) / np.sqrt(denom)
        v_all -= mom
        return _done(ctx, var, *slots)
    idx, grad = _sparse_grad(ctx, var, inputs[grad_at], inputs[grad_at + 1], node)
    ms_rows = ms[idx] * rho + grad * grad * (one - rho)
    ms[idx] = ms_rows
    if mg is not None:
        mg_rows = mg[idx] * rho + grad * (one - rho)
        mg[idx] = mg_rows
        denom = (ms_rows + epsilon) - mg_rows * mg_rows
    else:
        denom = ms_rows + epsilon
    mom_rows = mom[idx] * momentum + (one / np.sqrt(denom)) * lr * grad
    mom[idx] = mom_rows
    v_all[idx] -= mom_rows
    return _done(ctx, var, *slots)


def _apply_rms_prop(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """RMSProp; inputs: ms ref, mom ref, lr, rho, momentum, epsilon, grad."""
    return _rms_prop(ctx, node, inputs, centered=False, sparse=False)


def _sparse_apply_rms_prop(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """RMSProp on rows ``indices``; inputs as ``apply_rms_prop``, then indices."""
    return _rms_prop(ctx, node, inputs, centered=False, sparse=True)


def _apply_centered_rms_prop(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """Centered RMSProp; inputs: mg ref, ms ref, mom ref, lr, rho, momentum, epsilon, grad."""
    return _rms_prop(ctx, node, inputs, centered=True, sparse=False)


def _sparse_apply_centered_rms_prop(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """Centered RMSProp on rows ``indices``; inputs as the dense op, then indices."""
    return _rms_prop(ctx, node, inputs, centered=True, sparse=True)


# --- ftrl ------------------------------------------------------------------------------------

def _ftrl_step(var: np.ndarray, accum: np.ndarray, linear: np.ndarray, grad: np.ndarray,
               hyper: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FTRL-Proximal on arrays, as training_ops.cc's ApplyFtrlV2 CPU functor; returns the new
    variable, accumulator and linear term."""
    lr, l1, l2, l2_shrinkage, lr_power = hyper
    two = var.dtype.type(2)
    shrunk = grad + two * l2_shrinkage * var
    new_accum = accum + grad * grad
    if lr_power == var.dtype.type(-0.5):
        new_root, old_root = np.sqrt(new_accum), np.sqrt(accum)
    else:
        new_root, old_root = np.power(new_accum, -lr_power), np.power(accum, -lr_power)
    linear = linear + (shrunk - (new_root - old_root) / lr * var)
    x = np.clip(linear, -l1, l1) - linear
    y = new_root / lr + two * l2
    return x / y, new_accum, linear


def _ftrl(ctx: Context, node: NodeDef, inputs: list[Any], sparse: bool) -> Any:
    if inputs[2] is None:
        return None
    var = _float_variable(ctx, node)
    accum, linear = (_slot(var, ref, node) for ref in inputs[:2])
    first = 4 if sparse else 3
    hyper = [_hyper(inputs[first + i], var, node, what)
             for i, what in enumerate(("lr", "l1", "l2", "l2_shrinkage", "lr_power"))]
    v, a, z = var.read(), accum.read(), linear.read()
    if sparse:
        idx, grad = _sparse_grad(ctx, var, inputs[2], inputs[3], node)
        v[idx], a[idx], z[idx] = _ftrl_step(v[idx], a[idx], z[idx], grad, hyper)
    else:
        grad = _dense_grad(ctx, var, inputs[2], node)
        v[...], a[...], z[...] = _ftrl_step(v, a, z, grad, hyper)
    return _done(ctx, var, accum, linear)


def _apply_ftrl(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """FTRL-Proximal; inputs: accum ref, linear ref, grad, lr, l1, l2, l2_shrinkage,
    lr_power."""
    return _ftrl(ctx, node, inputs, sparse=False)


def _sparse_apply_ftrl(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """FTRL-Proximal on rows ``indices``; inputs: accum ref, linear ref, grad, indices, lr,
    l1, l2, l2_shrinkage, lr_power."""
    return _ftrl(ctx, node, inputs, sparse=True)


# --- after the updates -----------------------------------------------------------------------

def _skipped(updates: list[Any]) -> bool:
    return bool(updates) and all(u is None for u in updates)


def _assign_mul(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """``var *= factor`` (Adam's beta powers); inputs: factor, then the updates it follows."""
    if not inputs:
        raise InvalidArgumentError("assign_mul takes a factor")
    var = _float_variable(ctx, node)
    if _skipped(inputs[1:]):
        return var.read()
    value = var.read()
    value *= _hyper(inputs[0], var, node, "factor")
    return _done(ctx, var)


def _increment(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """Adds one to an integer variable (the global step) and returns it; inputs: the updates
    it follows."""
    var = ctx.variable(node)
    value = var.read()
    if not var.dtype.is_integer or value.shape != ():
        raise InvalidArgumentError(
            f"increment {clip(var.name)}: needs an integer scalar, got {var.dtype.name} "
            f"{list(var.shape)}")
    if not _skipped(inputs):
        complete_at_increment(ctx, var.name, int(value))
        value += 1
        ctx.store.touched(var)
    return value


OPS = {
    "ref": OpDef(_ref, 0, uses_variable=True),
    "apply_gradient_descent": OpDef(_apply_gradient_descent, 2, uses_variable=True),
    "sparse_apply_gradient_descent": OpDef(_sparse_apply_gradient_descent, 3, uses_variable=True),
    "apply_momentum": OpDef(_apply_momentum, 4, uses_variable=True),
    "sparse_apply_momentum": OpDef(_sparse_apply_momentum, 5, uses_variable=True),
    "apply_adagrad": OpDef(_apply_adagrad, 3, uses_variable=True),
    "sparse_apply_adagrad": OpDef(_sparse_apply_adagrad, 4, uses_variable=True),
    "apply_adam": OpDef(_apply_adam, 9, uses_variable=True),
    "sparse_apply_adam": OpDef(_sparse_apply_adam, 10, uses_variable=True),
    "assign_mul": OpDef(_assign_mul, None, uses_variable=True),
    "increment": OpDef(_increment, None, uses_variable=True),
    "apply_rms_prop": OpDef(_apply_rms_prop, 7, uses_variable=True),
    "sparse_apply_rms_prop": OpDef(_sparse_apply_rms_prop, 8, uses_variable=True),
    "apply_centered_rms_prop": OpDef(_apply_centered_rms_prop, 8, uses_variable=True),
    "sparse_apply_centered_rms_prop": OpDef(_sparse_apply_centered_rms_prop, 9, uses_variable=True),
    "apply_ftrl": OpDef(_apply_ftrl, 8, uses_variable=True),
    "sparse_apply_ftrl": OpDef(_sparse_apply_ftrl, 9, uses_variable=True),
}
