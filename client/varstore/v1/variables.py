"""``tf.Variable`` in graph mode, and the functions over a graph's variables.

A variable is a server variable named by its op name (``"n1/W"``). Building it adds the ops TF
adds (``W``, ``W/initial_value``, ``W/Assign``, ``W/read``) and contacts no server; a session
creates it on the server, uninitialized, the first time it runs the graph, and running
``W.initializer`` (or ``global_variables_initializer()``) assigns the initial value there.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.v1 import math_ops, state_ops
from varstore.v1.array_ops import boolean_mask, constant, convert_to_tensor, identity, stack
from varstore.v1.control_flow_ops import group, no_op
from varstore.v1.graph import (
    Graph,
    GraphKeys,
    Operation,
    Tensor,
    get_default_graph,
    op_scope,
)
from varstore.v1.operators import TensorOperators
from varstore.v1.shapes import TensorShape, as_shape, merge


class VariableSynchronization(enum.Enum):
    """When a distributed variable is aggregated (TF's ``tf.VariableSynchronization``);
    ``ON_READ`` makes a variable non-trainable by default."""

    AUTO = 0
    NONE = 1
    ON_WRITE = 2
    ON_READ = 3


class VariableAggregation(enum.Enum):
    """How a distributed variable is aggregated (TF's ``tf.compat.v1.VariableAggregation``)."""

    NONE = 0
    SUM = 1
    MEAN = 2
    ONLY_FIRST_REPLICA = 3
    ONLY_FIRST_TOWER = 3  # noqa: PIE796 - TF's deprecated alias


def _as_mode(kind: type[enum.Enum], value: Any) -> enum.Enum:
    """``value`` as a ``kind``: one of its members, TensorFlow's own enum member of that
    name (same values), or the value. Raises ``ValueError``."""
    if isinstance(value, enum.Enum) and type(value).__name__.startswith(kind.__name__):
        value = value.value
    return kind(value)


def validate_synchronization_aggregation_trainable(
        synchronization: Any, aggregation: Any, trainable: bool | None, name: Any
        ) -> tuple[enum.Enum, enum.Enum, bool]:
    """TF's rule (``variables.validate_synchronization_aggregation_trainable``): both modes
    checked, and ``trainable`` None is True unless ``synchronization`` is ``ON_READ``.

    Raises ``ValueError``: ``Invalid variable aggregation mode: ... for variable: NAME``
    (TF's message; likewise for synchronization)."""
    try:
        agg = _as_mode(VariableAggregation,
                       0 if aggregation is None else aggregation)
    except ValueError:
        raise ValueError(f"Invalid variable aggregation mode: {aggregation} for variable: "
                         f"{name}") from None
    try:
        sync = _as_mode(VariableSynchronization,
                        0 if synchronization is None else synchronization)
    except ValueError:
        raise ValueError(f"Invalid variable synchronization mode: {synchronization} for "
                         f"variable: {name}") from None
    if trainable is None:
        trainable = sync != VariableSynchronization.ON_READ
    return sync, agg, bool(trainable)


class Variable(TensorOperators[Tensor]):
    """A variable: a named, shaped, typed value that lives on the server.

    ``name`` is ``"op_name:0"`` made unique in the graph (``name1``, ``name1_1``), under the
    current name scope. ``==`` is identity; arithmetic operators build ops on the value.
    TF 1.x's arguments are taken in its order: ``constraint`` is kept (as TF, optimizers do
    not apply it); ``shape`` must be compatible with the initial value's (as TF's
    ``Assign``), ``synchronization`` and ``aggregation`` are checked as TF checks them and
    ``synchronization=ON_READ`` makes the variable non-trainable unless ``trainable`` is
    given; ``validate_shape``, ``caching_device``, ``expected_shape`` (TF ignores it too)
    and ``import_scope`` (TF uses it only with a ``variable_def``) are accepted and change
    nothing: a server variable has the fully known shape of its initial value (TF reports a
    partly unknown ``shape`` or, with ``validate_shape=False``, an unknown one), and
    ``assign(..., validate_shape=False)`` changes it; ``use_resource=True`` only makes
    :attr:`dtype` the base dtype, as a TF resource variable's.
    Raises ``ValueError`` when ``initial_value`` is missing or its shape is not fully known
    or not ``shape``, for bad modes, and for a ``variable_def`` (MetaGraphs are TF-only).
    """

    def __init__(self, initial_value: Any = None, trainable: bool | None = None,
                 collections: Sequence[str] | None = None, validate_shape: bool = True,
                 caching_device: Any = None, name: str | None = None,
                 variable_def: Any = None, dtype: Any = None, expected_shape: Any = None,
                 import_scope: str | None = None, constraint: Any = None,
                 use_resource: bool | None = None, synchronization: Any = None,
                 aggregation: Any = None, shape: Any = None) -> None:
        if initial_value is None:
            raise ValueError("initial_value must be specified.")
        if variable_def is not None:
            raise ValueError("variable_def needs a TensorFlow MetaGraph, which varstore does "
                             "not read; create the variable from an initial_value.")
        if constraint is not None and not callable(constraint):
            raise ValueError("The `constraint` argument must be a callable.")
        _, _, self.trainable = validate_synchronization_aggregation_trainable(
            synchronization, aggregation, trainable, name)
        self.constraint = constraint
        self._use_resource = bool(use_resource)
        self.created_by = "Variable"
        self._save_slice_info: Any = None
        graph = get_default_graph()
        with graph.control_dependencies(None), graph.name_scope(name, "Variable") as scope:
            op_name = scope[:-1]
            if callable(initial_value):
                with graph.name_scope("Initializer"):
                    initial = convert_to_tensor(initial_value(), dtype=dtype)
            else:
                initial = convert_to_tensor(initial_value, dtype=dtype, name="initial_value")
            if not initial.shape.is_fully_defined():
                raise ValueError(f"initial_value must have a shape specified: {initial}")
            if shape is not None and validate_shape:  # TF's Assign checks them
                merge(as_shape(shape), initial.shape, f"{op_name}/Assign", "Assign")
            self._initial_value = initial
            self._ref = graph.create_op(op_name, "VariableV2", "read", (), initial.dtype,
                                        initial.shape, variable=op_name).outputs[0]
            self._initializer_op = state_ops.assign(self, initial, name="Assign").op
            self._snapshot = identity(self._ref, name="read")
        keys = list(collections) if collections is not None else [GraphKeys.GLOBAL_VARIABLES]
        if self.trainable and GraphKeys.TRAINABLE_VARIABLES not in keys:
            keys.append(GraphKeys.TRAINABLE_VARIABLES)
        graph.add_variable(self, keys)

    # --- identity ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``"op_name:0"``, e.g. ``"foo/bar/v:0"``."""
        return self._ref.name

    @property
    def op(self) -> Operation:
        """The variable's operation (type ``VariableV2``); its name is the server name."""
        return self._ref.op

    @property
    def dtype(self) -> DType:
        """The element type as TF 1.x reports it: the reference dtype (``float32_ref``) for
        a reference variable, the base dtype (``float32``) with ``use_resource=True``
        (TF's ``RefVariable.dtype`` and ``ResourceVariable.dtype``)."""
        return self._ref.dtype if self._use_resource else self._ref.dtype._as_ref

    @property
    def shape(self) -> TensorShape:
        """The (fully defined) shape."""
        return self._ref.shape

    def get_shape(self) -> TensorShape:
        """The shape, as :attr:`shape`."""
        return self._ref.shape

    @property
    def graph(self) -> Graph:
        """The graph the variable belongs to."""
        return self._ref.graph

    @property
    def initializer(self) -> Operation:
        """The op that assigns the initial value on the server."""
        return self._initializer_op

    @property
    def initial_value(self) -> Tensor:
        """The tensor the initializer assigns."""
        return self._initial_value

    @property
    def initializer_description(self) -> str:
        """How the initial value is made, as kept in the server's metadata."""
        init = self._initial_value.op.initializer
        return init.describe() if init is not None else "initial_value"

    def __repr__(self) -> str:
        return f"<tf.Variable '{self.name}' shape={self.shape} dtype={self.dtype.name}>"

    def _get_save_slice_info(self) -> Any:
        """Where this part lies in its partitioned variable (None when not a part)."""
        return self._save_slice_info

    def _set_save_slice_info(self, info: Any) -> None:
        """Records where this part lies in its partitioned variable."""
        self._save_slice_info = info

    # --- values ----------------------------------------------------------------------------

    def value(self) -> Tensor:
        """The variable's value as a tensor (``"name/read:0"``)."""
        return self._snapshot

    def read_value(self) -> Tensor:
        """A new tensor reading the variable's value."""
        return identity(self._ref, name="read")

    def eval(self, session: Any = None) -> Any:
        """The value computed by ``session`` (default: the default session).

        Raises ``FailedPreconditionError`` when the variable is not initialized on the server.
        """
        return self._ref.eval(session=session)

    def initialized_value(self) -> Tensor:
        """The value when the variable is initialized on the server, else its initial value."""
        with self.graph.control_dependencies(None), \
                op_scope(None, "initialized_value", [self]) as (graph, op_name):
            return graph.create_op(op_name, "ReadIfInitialized", "read_if_initialized",
                                   [self._ref, self._initial_value], self._ref.dtype, self.shape,
                                   variable=self.op.name).outputs[0]

    @overload
    def assign(self, value: Any, use_locking: bool | None = None, name: str | None = None,
               read_value: Literal[True] = True) -> Tensor: ...
    @overload
    def assign(self, value: Any, use_locking: bool | None = None, name: str | None = None,
               *, read_value: Literal[False]) -> Operation: ...
    @overload
    def assign(self, value: Any, use_locking: bool | None = None, name: str | None = None,
               read_value: bool = True) -> Tensor | Operation: ...

    def assign(self, value: Any, use_locking: bool | None = None, name: str | None = None,
               read_value: bool = True) -> Tensor | Operation:
        """An op setting the variable to ``value`` (the op itself when not ``read_value``)."""
        out = state_ops.assign(self, value, name=name)
        return out if read_value else out.op

    @overload
    def assign_add(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   read_value: Literal[True] = True) -> Tensor: ...
    @overload
    def assign_add(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   *, read_value: Literal[False]) -> Operation: ...
    @overload
    def assign_add(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   read_value: bool = True) -> Tensor | Operation: ...

    def assign_add(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   read_value: bool = True) -> Tensor | Operation:
        """An op adding ``delta`` to the variable (the op itself when not ``read_value``)."""
        out = state_ops.assign_add(self, delta, name=name)
        return out if read_value else out.op

    @overload
    def assign_sub(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   read_value: Literal[True] = True) -> Tensor: ...
    @overload
    def assign_sub(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   *, read_value: Literal[False]) -> Operation: ...
    @overload
    def assign_sub(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   read_value: bool = True) -> Tensor | Operation: ...

    def assign_sub(self, delta: Any, use_locking: bool | None = None, name: str | None = None,
                   read_value: bool = True) -> Tensor | Operation:
        """An op subtracting ``delta`` from the variable (the op itself when not
        ``read_value``)."""
        out = state_ops.assign_sub(self, delta, name=name)
        return out if read_value else out.op

    # --- conversion ------------------------------------------------------------------------

    def _as_graph_tensor(self, as_ref: bool) -> Tensor:
        """The reference (for ops that update it) or the value (for everything else)."""
        return self._ref if as_ref else self._snapshot

    def _as_graph_element(self) -> Tensor:
        """What a session fetches for this variable."""
        return self._ref



def global_variables(scope: str | None = None) -> list[Variable]:
    """The default graph's global variables (those under ``scope`` when given)."""
    return get_default_graph().get_collection(GraphKeys.GLOBAL_VARIABLES, scope)


def trainable_variables(scope: str | None = None) -> list[Variable]:
    """The default graph's trainable variables (those under ``scope`` when given)."""
    return get_default_graph().get_collection(GraphKeys.TRAINABLE_VARIABLES, scope)


def variables_initializer(var_list: Sequence[Variable], name: str = "init") -> Operation:
    """An op running the initializers of ``var_list``."""
    if not var_list:
        return no_op(name=name)
    return group(*[v.initializer for v in var_list], name=name)


def global_variables_initializer() -> Operation:
    """An op (``"init"``) running the initializers of all global variables."""
    return variables_initializer(global_variables())


def report_uninitialized_variables(var_list: Sequence[Variable] | None = None,
                                   name: str = "report_uninitialized_variables") -> Tensor:
    """A 1-D string tensor: the names (bytes) of the variables of ``var_list`` (default: all
    global variables) that are not initialized on the server, whoever initialized the rest."""
    variables = list(global_variables() if var_list is None else var_list)
    with op_scope(name, "report_uninitialized_variables", variables) as (_, op_name):
        if not variables:
            return constant(np.array([], dtype=object), dtype=dtypes.string, name=f"{op_name}/")
        names = constant(np.array([v.op.name.encode() for v in variables], dtype=object),
                         dtype=dtypes.string)
        initialized = stack([state_ops.is_variable_initialized(v) for v in variables])
        return boolean_mask(names, math_ops.logical_not(initialized))
