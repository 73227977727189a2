"""Training with many workers: server-side optimizers, synchronous steps, chief and workers.

Workers compute gradients themselves and push them; the server applies each update to the
variable and its slot variables atomically. The optimizers carry TensorFlow 1.x's names,
arguments, slot names (``W/Momentum``, ``W/Adagrad``, ``W/Adam``, ``W/Adam_1``) and non-slot
variables (``beta1_power``, ``beta2_power``), so checkpoints match what TensorFlow writes::

    opt = vs.train.AdamOptimizer(0.01)
    step = vs.train.get_or_create_global_step(client)
    client.apply_gradients(opt, {W: grad_W, emb: (rows, grad_rows)}, global_step=step)

A gradient is an array of the variable's shape, or a tuple ``(indices, values)`` of rows for
a sparse update. One ``apply_gradients`` is one round trip, whatever the number of variables.

Synchronous training wraps an optimizer in :class:`SyncReplicasOptimizer`.
Chief and workers start with :func:`initialize_or_restore` and :func:`wait_until_ready`
(``Client`` methods of the same names).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from varstore import initializers
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import DeadlineExceededError
from varstore.common.protocol import PENDING, STALE
from varstore.request import RequestBuilder

if TYPE_CHECKING:
    from varstore.client import Client, RemoteVariable

log = logging.getLogger(__name__)

GLOBAL_STEP = "global_step"


class Trainable(Protocol):
    """What an optimizer needs of a variable: its full name, dtype and shape."""

    op_name: str
    dtype: DType
    shape: tuple[int, ...]


# A gradient already in a request: a dense node, or (indices node, values node).
GradientNodes = int | tuple[int, int]


@dataclass(frozen=True)
class Slot:
    """A per-variable slot, named ``<variable>/<suffix>`` and created filled with ``value``;
    ``key`` is TensorFlow's name for it (``get_slot(var, "m")``)."""

    key: str
    suffix: str
    value: float = 0.0


@dataclass(frozen=True)
class NonSlot:
    """A scalar shared by all variables (Adam's ``beta1_power``): created with the first
    variable's dtype at the value of hyperparameter ``hyper``, and multiplied by it once
    after every step."""

    name: str
    hyper: str


# A node of whatever graph an optimizer step is built into (request node, v1 tensor).
N = TypeVar("N")


class Optimizer:
    """Base class of the server-side optimizers.

    A subclass names its kernel (``op``; the sparse one is ``"sparse_" + op``), its slots, its
    hyperparameters, and lays out its kernel's inputs like TensorFlow's training op; the same
    definition builds eager requests (:meth:`build`) and ``varstore.v1`` graphs. Subclasses
    take TensorFlow's arguments; ``use_locking`` is accepted for compatibility, as every
    update is atomic on the server anyway.
    """

    op = ""

    def __init__(self, name: str, **hyper: Any) -> None:
        self._name = name
        self._hyper = hyper
        self._scope: str | None = None

    def get_name(self) -> str:
        """The optimizer's name, used for its slots."""
        return self._name

    def slots(self) -> list[Slot]:
        """The slots each trained variable gets on the server."""
        return []

    def non_slots(self) -> list[NonSlot]:
        """The shared scalars the optimizer keeps on the server."""
        return []

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        """The kernel's inputs after the variable: slot refs, ``shared`` (hyperparameters and
        non-slot refs by name), the gradient, and ``indices`` for the sparse kernel."""
        raise NotImplementedError

    def build(self, b: RequestBuilder, grads: Sequence[tuple[Trainable, GradientNodes]],
              global_step: str | None = None, scope: str = "") -> int:
        """Adds one optimizer step to ``b``: slot variables (created where missing), one update
        per variable, the non-slot updates, then ``global_step``'s increment.

        Non-slot variables are created under the name scope ``scope`` the first time and keep
        that scope. Returns the node to fetch: the global step after the step, or a no-op.
        """
        if not grads:
            raise ValueError("No gradients provided for any variable.")
        if self._scope is None:
            self._scope = scope
        first = min((var for var, _ in grads), key=lambda v: v.op_name)
        shared: dict[str, int] = {}
        non_slots = {}
        for non_slot in self.non_slots():
            full = f"{self._scope}/{non_slot.name}" if self._scope else non_slot.name
            init = initializers.constant_initializer(self._hyper[non_slot.hyper])
            b.variable(full, first.dtype, (), trainable=False,
                       initializer=init.build(b, (), first.dtype), created_by="optimizer",
                       initializer_desc=init.describe())
            shared[non_slot.name] = b.node("ref", variable=full)
            non_slots[full] = non_slot
        consts: dict[tuple[str, DType], int] = {}

        def const(key: str, dtype: DType) -> int:
            if (key, dtype) not in consts:
                consts[key, dtype] = b.const(dtypes.to_numpy(self._hyper[key], dtype), dtype)
            return consts[key, dtype]

        updates = []
        for var, grad in grads:
            shared.update({key: const(key, var.dtype) for key in self._hyper})
            slots = [self._slot(b, var, slot) for slot in self.slots()]
            grad_node, indices = (grad[1], grad[0]) if isinstance(grad, tuple) else (grad, None)
            op = self.op if indices is None else f"sparse_{self.op}"
            updates.append(b.node(op, self._inputs(slots, shared, grad_node, indices),
                                  variable=var.op_name, **self._attrs()))
        finish = [b.node("assign_mul", [const(non_slot.hyper, first.dtype), *updates],
                         variable=full) for full, non_slot in non_slots.items()]
        if global_step is None:
            return b.node("no_op", control_inputs=updates + finish)
        return b.node("increment", updates, variable=global_step, control_inputs=finish)

    def _attrs(self) -> dict[str, Any]:
        return {}

    def _slot(self, b: RequestBuilder, var: Trainable, slot: Slot) -> int:
        name = f"{var.op_name}/{slot.suffix}"
        init = initializers.constant_initializer(slot.value)
        b.variable(name, var.dtype, var.shape, trainable=False,
                   initializer=init.build(b, var.shape, var.dtype), created_by="slot",
                   initializer_desc=init.describe())
        return b.node("ref", variable=name)

    def _run(self, client: Client, b: RequestBuilder,
             grads: list[tuple[Trainable, GradientNodes]], global_step: str | None,
             local_step: int | None) -> int | None:
        if local_step is not None:
            raise ValueError("local_step is only used by SyncReplicasOptimizer")
        node = self.build(b, grads, global_step, client.naming.name_stack)
        b.fetch(node)
        value = client.run(b)[0][0]
        return int(value) if global_step is not None else None


class GradientDescentOptimizer(Optimizer):
    """``var -= learning_rate * grad``."""

    op = "apply_gradient_descent"

    def __init__(self, learning_rate: float, use_locking: bool = False,
                 name: str = "GradientDescent") -> None:
        super().__init__(name, lr=learning_rate)

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        return [shared["lr"], grad, *_opt(indices)]


class MomentumOptimizer(Optimizer):
    """``accum = momentum * accum + grad; var -= learning_rate * accum`` (or Nesterov's
    step); the accumulator is the slot ``<var>/<name>`` (``W/Momentum``)."""

    op = "apply_momentum"

    def __init__(self, learning_rate: float, momentum: float, use_locking: bool = False,
                 name: str = "Momentum", use_nesterov: bool = False) -> None:
        super().__init__(name, lr=learning_rate, momentum=momentum)
        self.use_nesterov = use_nesterov

    def slots(self) -> list[Slot]:
        return [Slot("momentum", self._name)]

    def _attrs(self) -> dict[str, Any]:
        return {"use_nesterov": self.use_nesterov}

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        return [slots[0], shared["lr"], grad, *_opt(indices), shared["momentum"]]


class AdagradOptimizer(Optimizer):
    """``accum += grad**2; var -= learning_rate * grad / sqrt(accum)``; the accumulator is the
    slot ``<var>/<name>`` (``W/Adagrad``), starting at ``initial_accumulator_value``."""

    op = "apply_adagrad"

    def __init__(self, learning_rate: float, initial_accumulator_value: float = 0.1,
                 use_locking: bool = False, name: str = "Adagrad") -> None:
        if initial_accumulator_value <= 0.0:
            raise ValueError(f"initial_accumulator_value must be positive: "
                             f"{initial_accumulator_value}")
        super().__init__(name, lr=learning_rate)
        self.initial_accumulator_value = float(initial_accumulator_value)

    def slots(self) -> list[Slot]:
        return [Slot("accumulator", self._name, self.initial_accumulator_value)]

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        return [slots[0], shared["lr"], grad, *_opt(indices)]


class AdamOptimizer(Optimizer):
    """TF1's Adam: slots ``<var>/Adam`` (m) and ``<var>/Adam_1`` (v), and the scalars
    ``beta1_power`` and ``beta2_power``, multiplied by beta1 and beta2 once per step;
    ``lr_t = learning_rate * sqrt(1 - beta2_power) / (1 - beta1_power)``."""

    op = "apply_adam"

    def __init__(self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-08, use_locking: bool = False, name: str = "Adam") -> None:
        super().__init__(name, lr=learning_rate, beta1=beta1, beta2=beta2, epsilon=epsilon)

    def slots(self) -> list[Slot]:
        return [Slot("m", self._name), Slot("v", f"{self._name}_1")]

    def non_slots(self) -> list[NonSlot]:
        return [NonSlot("beta1_power", "beta1"), NonSlot("beta2_power", "beta2")]

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        return [*slots, shared["beta1_power"], shared["beta2_power"], shared["lr"],
                shared["beta1"], shared["beta2"], shared["epsilon"], grad, *_opt(indices)]


def _opt(node: N | None) -> list[N]:
    return [] if node is None else [node]


# --- synchronous training --------------------------------------------------------------------

# sync_accumulate's outcomes (varstore.server.sync): this replica's gradients wait for the
# others, completed the step, or were dropped as stale.


class SyncReplicasOptimizer(Optimizer):
    """Synchronous training: the server sums the gradients of ``replicas_to_aggregate``
    workers for each global step and applies their mean once with ``opt``, as TensorFlow's
    ``SyncReplicasOptimizer`` does.

    ``apply_gradients`` needs ``global_step`` and ``local_step``, the global step the worker
    read with the weights its gradients come from. It returns once the step is applied (the
    global step after it). Gradients computed at an older step are dropped and counted in
    ``stale_gradients``. Raises ``DeadlineExceededError`` when the other replicas do not
    arrive within ``timeout`` seconds.
    """

    def __init__(self, opt: Optimizer, replicas_to_aggregate: int, timeout: float = 600.0,
                 name: str = "sync_replicas") -> None:
        if replicas_to_aggregate < 1:
            raise ValueError(f"replicas_to_aggregate must be >= 1: {replicas_to_aggregate}")
        super().__init__(name)
        self.optimizer = opt
        self.replicas_to_aggregate = int(replicas_to_aggregate)
        self.timeout = float(timeout)
        self.stale_gradients = 0

    def _run(self, client: Client, b: RequestBuilder,
             grads: list[tuple[Trainable, GradientNodes]], global_step: str | None,
             local_step: int | None) -> int | None:
        if global_step is None or local_step is None:
            raise ValueError("SyncReplicasOptimizer needs global_step and local_step (the "
                             "global step the gradients were computed at)")
        flat: list[int] = []
        for _, grad in grads:
            flat += [grad[1], grad[0]] if isinstance(grad, tuple) else [grad]
        acc = b.node("sync_accumulate", flat, variable=global_step, step=int(local_step),
                     replicas=self.replicas_to_aggregate,
                     variables=",".join(var.op_name for var, _ in grads),
                     sparse="".join("1" if isinstance(g, tuple) else "0" for _, g in grads))
        means: list[tuple[Trainable, GradientNodes]] = []
        for i, (var, grad) in enumerate(grads):
            def mean(part: str, i: int = i) -> int:
                return b.node("sync_mean", [acc], variable=global_step, index=i, part=part)
            means.append((var, (mean("indices"), mean("values")) if isinstance(grad, tuple)
                          else mean("dense")))
        step = self.optimizer.build(b, means, global_step, client.naming.name_stack)
        b.fetch(acc)
        b.fetch(step)
        (status, generation), new_step = client.run(b)[0]
        if status == STALE:
            self.stale_gradients += 1
            log.info("dropped gradients of step %d: the global step is %d", local_step,
                     new_step)
        if status != PENDING:
            return int(new_step)
        wait = RequestBuilder()
        wait.fetch(wait.node("sync_wait", group=global_step, generation=int(generation),
                             timeout=self.timeout))
        return int(client.run(wait)[0][0])


# --- applying gradients ----------------------------------------------------------------------

def apply_gradients(client: Client, optimizer: Optimizer, grads: Mapping[Any, Any],
                    global_step: RemoteVariable | None = None,
                    local_step: int | None = None) -> int | None:
    """Applies ``{variable: gradient}`` with ``optimizer`` in one round trip and increments
    ``global_step``; returns the global step after the update (None without one).

    A gradient is an array of the variable's shape or a tuple ``(indices, values)``. Raises
    ``ValueError`` for a gradient of the wrong shape, ``InvalidArgumentError`` from the server
    for an index out of range.
    """
    b = RequestBuilder()
    nodes = [(var, _gradient_nodes(b, var, grad)) for var, grad in grads.items()]
    return optimizer._run(client, b, nodes, None if global_step is None else
                          global_step.op_name, local_step)


def _gradient_nodes(b: RequestBuilder, var: Trainable, grad: Any) -> GradientNodes:
    if isinstance(grad, tuple):
        if len(grad) != 2:
            raise ValueError(f"a sparse gradient of {var.op_name} is (indices, values), got a "
                             f"tuple of {len(grad)}")
        indices = np.asarray(grad[0])
        if indices.dtype.kind not in "iu" or indices.ndim != 1:
            raise ValueError(f"indices of the gradient of {var.op_name} must be a 1-D integer "
                             f"array, got {indices.dtype} of shape {indices.shape}")
        values = dtypes.to_numpy(grad[1], var.dtype)
        want = indices.shape + tuple(var.shape[1:])
        if not var.shape or values.shape != want:
            raise ValueError(f"Gradient values of {var.op_name} have shape {values.shape}, "
                             f"expected {want} for {indices.size} indices into "
                             f"{tuple(var.shape)}")
        return (b.const(indices.astype(np.int64), dtypes.int64), b.const(values, var.dtype))
    value = dtypes.to_numpy(grad, var.dtype)
    if value.shape != tuple(var.shape):
        raise ValueError(f"Gradient of {var.op_name} has shape {value.shape}, the variable "
                         f"{tuple(var.shape)}")
    return b.const(value, var.dtype)


def get_or_create_global_step(client: Client) -> RemoteVariable:
    """The ``global_step`` variable (int64 scalar, not trainable) of the current variable
    scope, created at 0 or bound to the server's, as ``tf.train.get_or_create_global_step``.
    """
    found = client.naming.shared.get(_scoped(client, GLOBAL_STEP))
    if found is not None:
        return found
    return client.get_variable(GLOBAL_STEP, (), dtypes.int64,
                               initializer=initializers.zeros_initializer, trainable=False)


def _scoped(client: Client, name: str) -> str:
    scope = client.get_variable_scope().name
    return f"{scope}/{name}" if scope else name


# --- chief and workers -----------------------------------------------------------------------

def initialize_or_restore(client: Client, variables: Sequence[RemoteVariable],
                          checkpoint_dir: str | None = None) -> str | None:
    """The chief's start: restores the newest checkpoint of ``checkpoint_dir`` (a folder inside
    the server's checkpoint folder; its root by default) when there is one, then initializes
    those of ``variables`` that are still uninitialized. Returns the checkpoint restored, or
    None.

    Variables made inside ``client.deferred_initialization()`` stay uninitialized until this
    runs, so workers never train on values the checkpoint is about to replace. Raises the
    server's errors (``DataLossError``, ``NotFoundError``...) when a checkpoint cannot be read.
    """
    latest = client.latest_checkpoint(checkpoint_dir or "")
    if latest is not None:
        client.restore(latest)
        log.info("restored %s", latest)
    variables = list(variables)
    check = RequestBuilder()
    for var in variables:
        check.fetch(check.node("is_initialized", variable=var.op_name))
    pending = [v for v, done in zip(variables, client.run(check)[0], strict=True) if not done]
    if pending:
        b = RequestBuilder()
        for var in pending:
            if var._initializer is None:
                raise ValueError(f"{var.op_name} is uninitialized and was not created by this "
                                 f"client, so it has no initializer here")
            b.target(b.node("assign", [var._initializer(b)], variable=var.op_name))
        client.run(b)
        log.info("initialized %s", ", ".join(v.op_name for v in pending))
    return latest


def wait_until_ready(client: Client, variables: Sequence[Any], timeout: float = 600.0,
                     log_every: float = 10.0) -> None:
    """A worker's start: blocks until every variable of ``variables`` (handles or full names)
    is initialized on the server, returning as soon as the chief has initialized or restored
    them; logs what it waits for every ``log_every`` seconds.

    Raises ``DeadlineExceededError`` naming the variables still uninitialized after
    ``timeout`` seconds.
    """
    names = [getattr(v, "op_name", v) for v in variables]
    deadline = time.monotonic() + timeout
    pending = client.wait_initialized(names, 0.0)
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(
                f"variables not initialized after {timeout:g}s: {', '.join(pending)}")
        log.info("waiting for the chief to initialize %d variables: %s", len(pending),
                 ", ".join(pending))
        pending = client.wait_initialized(names, min(log_every, remaining))


class CheckpointSaver:
    """Saves ``<checkpoint_dir>/model.ckpt-STEP`` on the server every ``save_secs`` seconds,
    as TensorFlow's ``CheckpointSaverHook``; only the chief should have one.

    ``checkpoint_dir`` is a folder inside the server's checkpoint folder (its root by
    default), the one :func:`initialize_or_restore` restores from. ``var_list`` is what
    ``client.save`` takes (None: every variable on the server).
    """

    def __init__(self, client: Client, checkpoint_dir: str | None = None,
                 save_secs: float = 600.0, checkpoint_basename: str = "model.ckpt",
                 max_to_keep: int = 5, var_list: Any = None) -> None:
        self.client = client
        self.save_secs = save_secs
        self.var_list = var_list
        self.prefix = f"{checkpoint_dir}/{checkpoint_basename}" if checkpoint_dir \
            else checkpoint_basename
        self.max_to_keep = max_to_keep
        self._last = time.monotonic()

    def maybe_save(self, step: int) -> str | None:
        """Saves when ``save_secs`` passed since the last save (or the start); returns the
        path saved, else None. Cheap enough to call every step."""
        if time.monotonic() - self._last < self.save_secs:
            return None
        return self.save(step)

    def save(self, step: int) -> str:
        """Saves ``prefix-step`` now; returns its path. Raises the server's errors."""
        path = self.client.save(self.prefix, self.var_list, global_step=step,
                                max_to_keep=self.max_to_keep)
        self._last = time.monotonic()
        log.info("saved %s", path)
        return path
