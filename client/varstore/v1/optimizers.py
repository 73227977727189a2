"""``tf.train``'s optimizers in graph mode: ``apply_gradients`` adds TF 1.x's update ops.

The optimizers are :mod:`varstore.train`'s (the same server kernels, slots and arguments)
with TensorFlow's graph-mode methods. The first ``apply_gradients`` of a graph creates the
slot variables (``W/Momentum``, ``W/Adam``, ``W/Adam_1``...) as global, non-trainable graph
variables under the variable's own name, and the non-slot ones (``beta1_power``) under the
current name scope, exactly as TensorFlow names them; ``global_variables_initializer()``
initializes them and ``Saver`` saves them. Running the returned op is one atomic update of
every variable on the server, followed by the global step's increment.

Gradients are tensors (typically placeholders fed with numpy gradients) or
:class:`IndexedSlices`; there is no automatic differentiation, so ``minimize`` and
``compute_gradients`` raise ``NotImplementedError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from varstore import train
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.v1 import shapes
from varstore.v1.array_ops import cast, constant, convert_input, convert_to_tensor, zeros
from varstore.v1.control_flow_ops import group
from varstore.v1.graph import Graph, Operation, Tensor, graph_of
from varstore.v1.init_ops import constant_initializer
from varstore.v1.state_ops import variable_ref
from varstore.v1.variables import Variable


class IndexedSlices:
    """A sparse gradient, as ``tf.IndexedSlices``: rows ``values`` of a variable at
    ``indices`` (duplicates are summed)."""

    def __init__(self, values: Any, indices: Any, dense_shape: Any = None) -> None:
        self.values = values
        self.indices = indices
        self.dense_shape = dense_shape


def _op_type(kernel: str) -> str:
    return "".join(word.capitalize() for word in kernel.split("_"))


def _ref(variable: Variable) -> Tensor:
    """A tensor standing for the variable itself, for an update op's slot inputs."""
    graph = variable.graph
    name = graph.unique_name("Ref")
    return graph.create_op(name, "Ref", "ref", [variable_ref(variable, "Ref")],
                           variable.dtype.base_dtype, variable.shape,
                           variable=variable.op.name).outputs[0]


class GraphOptimizer(train.Optimizer):
    """TensorFlow 1.x's graph-mode optimizer methods over a :mod:`varstore.train` optimizer."""

    def __init__(self, name: str, **hyper: Any) -> None:
        super().__init__(name, **hyper)
        self._slot_variables: dict[tuple[Graph, str], dict[str, Variable]] = {}
        self._non_slot_variables: dict[tuple[Graph, str], Variable] = {}

    def get_slot_names(self) -> list[str]:
        """TF's names of the slots each variable gets (``["m", "v"]`` for Adam)."""
        return sorted(slot.key for slot in self.slots())

    def get_slot(self, var: Variable, name: str) -> Variable | None:
        """The slot ``name`` (``"m"``, ``"momentum"``...) of ``var``, or None."""
        return self._slot_variables.get((var.graph, var.op.name), {}).get(name)

    def minimize(self, *args: Any, **kwargs: Any) -> Operation:
        """Not available: varstore has no automatic differentiation."""
        raise NotImplementedError("varstore computes no gradients: compute them yourself and "
                                  "call apply_gradients([(grad, var), ...])")

    compute_gradients = minimize

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]],
                        global_step: Variable | None = None, name: str | None = None
                        ) -> Operation:
        """An op applying ``(gradient, variable)`` pairs on the server, then incrementing
        ``global_step``; named ``name`` (default: the optimizer's name).

        A gradient is a tensor or value of the variable's shape, an :class:`IndexedSlices`,
        or None (the variable is skipped). Raises ``ValueError`` when no pair has a gradient
        or shapes differ, ``TypeError`` for a gradient of another dtype, and
        ``NotImplementedError`` for a variable with a ``constraint`` (TF's optimizers apply
        it after the update; these cannot, and do not drop it silently).
        """
        pairs = list(grads_and_vars)
        if not pairs:
            raise ValueError("No variables provided.")
        for _, var in pairs:
            if not isinstance(var, Variable):
                raise NotImplementedError(f"Trying to update a Tensor {var}")
        present = [(g, v) for g, v in pairs if g is not None]
        if not present:
            raise ValueError(f"No gradients provided for any variable: "
                             f"{[str(v) for _, v in pairs]}.")
        for _, var in present:
            if var.constraint is not None:  # TF's optimizer.py: _RefVariableProcessor
                raise NotImplementedError(
                    f"apply_gradients: {var.op.name} has a constraint, which TF's optimizers "
                    f"apply after each update and varstore.v1's cannot; project the variable "
                    f"with assign after the update instead.")
        graph = graph_of([v for _, v in present])
        with graph.as_default():
            first = min((v for _, v in present), key=lambda v: v.op.name)
            with graph.control_dependencies(None):
                non_slots = {ns.name: self._non_slot(graph, ns, first.dtype)
                             for ns in self.non_slots()}
                for _, var in present:
                    self._create_slots(graph, var)
            with graph.name_scope(name, self._name) as scope:
                hyper: dict[tuple[str, DType], Tensor] = {}
                refs = {key: _ref(v) for key, v in non_slots.items()}
                updates = [self._update(graph, grad, var, refs, hyper)
                           for grad, var in present]
                finish = [self._decay(graph, non_slots[ns.name],
                                      self._hyper_tensor(hyper, ns.hyper, first.dtype), updates)
                          for ns in self.non_slots()]
                if global_step is None:
                    return group(*updates, *finish, name=scope)
                step = variable_ref(global_step, "Increment")
                with graph.control_dependencies(finish):
                    return graph.create_op(scope[:-1], "AssignAdd", "increment",
                                           [step, *updates], step.dtype, step.shape,
                                           variable=step.op.name).outputs[0].op

    def _non_slot(self, graph: Graph, non_slot: train.NonSlot, dtype: DType) -> Variable:
        key = (graph, non_slot.name)
        if key not in self._non_slot_variables:
            self._non_slot_variables[key] = Variable(self._hyper[non_slot.hyper],
                                                     trainable=False, name=non_slot.name,
                                                     dtype=dtype)
        return self._non_slot_variables[key]

    def _create_slots(self, graph: Graph, var: Variable) -> None:
        key = (graph, var.op.name)
        if key in self._slot_variables:
            return
        made = {}
        shape, dtype = var.shape.as_list(), var.dtype.base_dtype
        with graph.name_scope(None):
            for slot in self.slots():
                def initial(slot: train.Slot = slot) -> Tensor:
                    if slot.value == 0.0:
                        return zeros(shape, dtype)
                    return constant_initializer(slot.value)(shape, dtype)
                # Named like TF's slot_creator: "<var>/<optimizer name>", made unique, which
                # gives Adam's m and v the names W/Adam and W/Adam_1.
                made[slot.key] = Variable(initial, trainable=False,
                                          name=f"{var.op.name}/{slot.base or self._name}")
        self._slot_variables[key] = made

    def _hyper_tensor(self, cache: dict[tuple[str, DType], Tensor], key: str, dtype: DType
                      ) -> Tensor:
        if (key, dtype) not in cache:
            value = self._hyper[key]
            if isinstance(value, Tensor) or hasattr(value, "_as_graph_tensor"):
                cache[key, dtype] = cast(convert_to_tensor(value), dtype)
            else:
                cache[key, dtype] = constant(dtypes.to_numpy(value, dtype), dtype, name=key)
        return cache[key, dtype]

    def _update(self, graph: Graph, grad: Any, var: Variable, refs: dict[str, Tensor],
                hyper: dict[tuple[str, DType], Tensor]) -> Tensor:
        target = variable_ref(var, _op_type(self.op))
        with graph.name_scope(f"update_{var.op.name}") as scope:
            indices = None
            if isinstance(grad, IndexedSlices):
                op = f"sparse_{self.op}"
                values = convert_input(grad.values, target, _op_type(op), "grad", "var",
                                       "values")
                indices = convert_to_tensor(grad.indices, name="indices")
                if not indices.dtype.is_integer:
                    raise TypeError(f"Value passed to parameter 'indices' has DataType "
                                    f"{indices.dtype.name} not in list of allowed values: "
                                    f"int32, int64")
                rows = shapes.TensorShape(indices.shape.as_list() + var.shape.as_list()[1:]) \
                    if indices.shape.dims is not None else shapes.TensorShape(None)
                shapes.merge(rows, values.shape, scope[:-1], _op_type(op))
            else:
                op = self.op
                values = convert_input(grad, target, _op_type(op), "grad", "var", "grad")
                shapes.merge(var.shape, values.shape, scope[:-1], _op_type(op))
            slots = [_ref(self._slot_variables[var.graph, var.op.name][slot.key])
                     for slot in self.slots()]
            shared = dict(refs)
            shared.update({key: self._hyper_tensor(hyper, key, var.dtype.base_dtype)
                           for key in self._hyper})
            name = graph.unique_name(_op_type(op))
            return graph.create_op(name, _op_type(op), op,
                                   [target, *self._inputs(slots, shared, values, indices)],
                                   var.dtype.base_dtype, var.shape, variable=var.op.name,
                                   attrs=self._attrs()).outputs[0]

    @staticmethod
    def _decay(graph: Graph, variable: Variable, factor: Tensor, updates: list[Tensor]
               ) -> Operation:
        """``variable *= factor`` once the updates ran (and only if they did)."""
        return graph.create_op(graph.unique_name("AssignMul"), "AssignMul", "assign_mul",
                               [variable_ref(variable, "AssignMul"), factor, *updates],
                               variable.dtype.base_dtype, variable.shape,
                               variable=variable.op.name).outputs[0].op


class GradientDescentOptimizer(train.GradientDescentOptimizer, GraphOptimizer):
    """``tf.train.GradientDescentOptimizer(learning_rate)``."""


class MomentumOptimizer(train.MomentumOptimizer, GraphOptimizer):
    """``tf.train.MomentumOptimizer(learning_rate, momentum, use_nesterov=False)``; slot
    ``W/Momentum``."""


class AdagradOptimizer(train.AdagradOptimizer, GraphOptimizer):
    """``tf.train.AdagradOptimizer(learning_rate, initial_accumulator_value=0.1)``; slot
    ``W/Adagrad``."""


class AdamOptimizer(train.AdamOptimizer, GraphOptimizer):
    """``tf.train.AdamOptimizer(learning_rate=0.001, beta1=0.9, beta2=0.999,
    epsilon=1e-08)``; slots ``W/Adam`` and ``W/Adam_1``, non-slots ``beta1_power`` and
    ``beta2_power``."""


class RMSPropOptimizer(train.RMSPropOptimizer, GraphOptimizer):
    """``tf.train.RMSPropOptimizer(learning_rate, decay=0.9, momentum=0.0, epsilon=1e-10,
    centered=False)``; slots ``W/RMSProp`` (rms), ``W/RMSProp_1`` (mg when centered, else
    momentum) and ``W/RMSProp_2`` (momentum when centered)."""


class FtrlOptimizer(train.FtrlOptimizer, GraphOptimizer):
    """``tf.train.FtrlOptimizer(learning_rate, learning_rate_power=-0.5, ...)``; slots
    ``W/Ftrl`` (accum) and ``W/Ftrl_1`` (linear)."""
