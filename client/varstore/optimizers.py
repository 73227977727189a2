"""Server-side optimizers: TensorFlow 1.x's ``tf.train`` optimizers, run by the server.

Each class carries TensorFlow's name, arguments, slot names (``W/Momentum``, ``W/Adam``,
``W/Adam_1``, ``W/RMSProp``, ``W/Ftrl``...) and non-slot variables (``beta1_power``), so the
server's checkpoints hold what TensorFlow's ``Saver`` writes. One definition builds eager
requests (:meth:`Optimizer.build`, used by :func:`varstore.train.apply_gradients`) and
``varstore.v1`` graphs. The kernels are :mod:`varstore.server.optimizers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from varstore import initializers
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import NotFoundError
from varstore.request import RequestBuilder
from varstore.scopes import Naming


class Runner(Protocol):
    """What an optimizer needs of a client (:class:`varstore.Client` is one): its naming
    state and blocking requests. Typed here so that this module imports no client."""

    @property
    def naming(self) -> Naming: ...

    def run(self, builder: RequestBuilder, expect_bytes: int = 0
            ) -> tuple[list[np.ndarray], list[Any]]: ...


class Trainable(Protocol):
    """What an optimizer needs of a variable: its full name, dtype and shape."""

    @property
    def op_name(self) -> str: ...

    @property
    def dtype(self) -> DType: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


# A gradient already in a request: a dense node, or (indices node, values node).
GradientNodes = int | tuple[int, int]


@dataclass(frozen=True)
class Slot:
    """A per-variable slot, named ``<variable>/<suffix>`` and created filled with ``value``;
    ``key`` is TensorFlow's name for it (``get_slot(var, "m")``). ``base`` is the name
    TensorFlow's slot_creator is given (``suffix`` is it made unique), when it is not the
    optimizer's name."""

    key: str
    suffix: str
    value: float = 0.0
    base: str = ""


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
        # Slot and non-slot variables that a request of this optimizer created or bound, so
        # later requests need not declare them again (the server checks and initializes a
        # declared variable on every request), and those the request being built declares.
        self._on_server: set[str] = set()
        self._declaring: set[str] = set()

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
            self._declare(b, full, first.dtype, (), self._hyper[non_slot.hyper], "optimizer")
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
        self._declare(b, name, var.dtype, var.shape, slot.value, "slot")
        return b.node("ref", variable=name)

    def _declare(self, b: RequestBuilder, name: str, dtype: DType, shape: Sequence[int],
                 value: float, created_by: str) -> None:
        """Creates (filled with ``value``) or binds the slot or non-slot ``name`` in ``b``,
        unless an earlier request of this optimizer did (see :meth:`_send`)."""
        if name in self._on_server:
            return
        init = initializers.constant_initializer(value)
        b.variable(name, dtype, shape, trainable=False, initializer=init.build(b, shape, dtype),
                   created_by=created_by, initializer_desc=init.describe())
        self._declaring.add(name)

    def _send(self, client: Runner, b: RequestBuilder, expect_bytes: int) -> Any:
        """Runs a request built by :meth:`build`; returns its reply. Once it succeeded, its
        slots are known to be on the server; a ``NotFoundError`` (the server lost them, as
        after a restart without ``--restore``) makes the next request declare them all."""
        declaring, self._declaring = self._declaring, set()
        try:
            reply = client.run(b, expect_bytes)
        except NotFoundError:
            self._on_server.clear()
            raise
        self._on_server |= declaring
        return reply

    def _run(self, client: Runner, b: RequestBuilder,
             grads: list[tuple[Trainable, GradientNodes]], global_step: str | None,
             local_step: int | None, fetch: Sequence[Trainable]) -> tuple[Any, list[Any]]:
        """Sends the step; returns the global step after it (None without one) and the
        values of ``fetch`` read after it, all in one round trip."""
        if local_step is not None:
            raise ValueError("local_step is only used by SyncReplicasOptimizer")
        node = self.build(b, grads, global_step, client.naming.name_stack)
        b.fetch(node)
        values = self._send(client, b, read_after(b, node, fetch))[0]
        return (int(values[0]) if global_step is not None else None), values[1:]


def read_after(b: RequestBuilder, node: int | None, variables: Sequence[Trainable]) -> int:
    """Fetches the value of each of ``variables`` once ``node`` (if given) and ``b``'s
    targets ran; returns their bytes."""
    after = [*([] if node is None else [node]), *b.targets]
    for var in variables:
        b.fetch(b.node("read", variable=var.op_name, control_inputs=after))
    return sum(int(np.prod(var.shape, dtype=np.int64)) * var.dtype.itemsize
               for var in variables)


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


class RMSPropOptimizer(Optimizer):
    """TF1's RMSProp: ``ms += (grad**2 - ms) * (1 - decay)``, ``mom = mom * momentum +
    grad * lr / sqrt(ms + epsilon)``, ``var -= mom``; with ``centered``, ``mg += (grad - mg)
    * (1 - decay)`` and ``ms - mg**2`` replaces ``ms``. Slots as TensorFlow's rmsprop.py
    names them: ``rms`` (``W/RMSProp``, starting at one), ``mg`` when centered, then
    ``momentum`` (``W/RMSProp_1``, or ``W/RMSProp_2`` when centered)."""

    def __init__(self, learning_rate: float, decay: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-10, use_locking: bool = False, centered: bool = False,
                 name: str = "RMSProp") -> None:
        super().__init__(name, lr=learning_rate, rho=decay, momentum=momentum,
                         epsilon=epsilon)
        self.centered = bool(centered)
        self.op = "apply_centered_rms_prop" if centered else "apply_rms_prop"

    def slots(self) -> list[Slot]:
        keys = ["rms", "mg", "momentum"] if self.centered else ["rms", "momentum"]
        return [Slot(key, f"{self._name}_{i}" if i else self._name, 1.0 if key == "rms" else 0.0)
                for i, key in enumerate(keys)]

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        if self.centered:
            slots = [slots[1], slots[0], slots[2]]
        return [*slots, shared["lr"], shared["rho"], shared["momentum"], shared["epsilon"],
                grad, *_opt(indices)]


class FtrlOptimizer(Optimizer):
    """TF1's FTRL-Proximal (``tf.train.FtrlOptimizer``): slots ``accum`` (``W/Ftrl``,
    starting at ``initial_accumulator_value``) and ``linear`` (``W/Ftrl_1``); ``beta`` is
    folded into the L2 strength as ``l2 + beta / (2 * learning_rate)``, as TensorFlow's
    ftrl.py does. Raises ``ValueError`` for the arguments TensorFlow refuses."""

    op = "apply_ftrl"

    def __init__(self, learning_rate: float, learning_rate_power: float = -0.5,
                 initial_accumulator_value: float = 0.1,
                 l1_regularization_strength: float = 0.0,
                 l2_regularization_strength: float = 0.0, use_locking: bool = False,
                 name: str = "Ftrl", accum_name: str | None = None,
                 linear_name: str | None = None,
                 l2_shrinkage_regularization_strength: float = 0.0,
                 beta: float | None = None) -> None:
        if initial_accumulator_value < 0.0:
            raise ValueError(f"initial_accumulator_value {initial_accumulator_value:f} needs "
                             f"to be positive or zero")
        if learning_rate_power > 0.0:
            raise ValueError(f"learning_rate_power {learning_rate_power:f} needs to be "
                             f"negative or zero")
        for what, value in (("l1_regularization_strength", l1_regularization_strength),
                            ("l2_regularization_strength", l2_regularization_strength),
                            ("l2_shrinkage_regularization_strength",
                             l2_shrinkage_regularization_strength)):
            if value < 0.0:
                raise ValueError(f"{what} {value:f} needs to be positive or zero")
        l2 = l2_regularization_strength + (0.0 if beta is None else
                                           beta / (2.0 * learning_rate))
        super().__init__(name, lr=learning_rate, l1=l1_regularization_strength, l2=l2,
                         l2_shrinkage=l2_shrinkage_regularization_strength,
                         lr_power=learning_rate_power)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self._slot_names = (accum_name or name, linear_name or name)

    def slots(self) -> list[Slot]:
        accum, linear = self._slot_names
        return [Slot("accum", accum, self.initial_accumulator_value, accum),
                Slot("linear", f"{linear}_1" if linear == accum else linear, 0.0, linear)]

    def _inputs(self, slots: list[N], shared: Mapping[str, N], grad: N,
                indices: N | None) -> list[N]:
        return [*slots, grad, *_opt(indices), shared["lr"], shared["l1"], shared["l2"],
                shared["l2_shrinkage"], shared["lr_power"]]


def _opt(node: N | None) -> list[N]:
    return [] if node is None else [node]

