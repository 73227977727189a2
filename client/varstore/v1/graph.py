"""Graphs of operations, as TF 1.x's ``framework/ops.py`` defines them.

A :class:`Graph` holds :class:`Operation` objects and the naming state of
:class:`varstore.scopes.Naming`; building ops never contacts a server. Each operation
records the server op (``kernel``) that computes it, so that a session can compile the part
of the graph it runs into one request. The default graph and the default session live here,
as in TF.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from varstore.common.dtypes import DType
from varstore.common.names import check_node_name
from varstore.initializers import Initializer
from varstore.scopes import Naming
from varstore.v1.device_setter import resolve_device
from varstore.v1.operators import TensorOperators
from varstore.v1.shapes import TensorShape, as_shape


class GraphKeys:
    """Names of the standard graph collections."""

    GLOBAL_VARIABLES = "variables"
    TRAINABLE_VARIABLES = "trainable_variables"
    GLOBAL_STEP = "global_step"
    REGULARIZATION_LOSSES = "regularization_losses"


class Tensor(TensorOperators["Tensor"]):
    """The output of an :class:`Operation`: a symbolic value computed when a session runs."""

    def __init__(self, op: Operation, value_index: int, dtype: DType, shape: TensorShape
                 ) -> None:
        self._op = op
        self._value_index = value_index
        self._dtype = dtype
        self._shape = shape

    @property
    def op(self) -> Operation:
        """The operation that produces this tensor."""
        return self._op

    @property
    def value_index(self) -> int:
        """The index of this tensor among its operation's outputs."""
        return self._value_index

    @property
    def dtype(self) -> DType:
        """The element type."""
        return self._dtype

    @property
    def graph(self) -> Graph:
        """The graph this tensor belongs to."""
        return self._op.graph

    @property
    def name(self) -> str:
        """``"op_name:index"``, e.g. ``"add:0"``."""
        return f"{self._op.name}:{self._value_index}"

    @property
    def shape(self) -> TensorShape:
        """The static shape (dimensions may be unknown)."""
        return self._shape

    def get_shape(self) -> TensorShape:
        """The static shape, as :attr:`shape`."""
        return self._shape

    def set_shape(self, shape: Any) -> None:
        """Refines the static shape; raises ``ValueError`` when incompatible."""
        shape = as_shape(shape)
        if not self._shape.is_compatible_with(shape):
            raise ValueError(f"Tensor's shape {self._shape} is not compatible with supplied "
                             f"shape {shape}")
        if shape.dims is not None:
            known = self._shape.dims or [None] * len(shape.dims)
            self._shape = TensorShape([a if a is not None else b
                                       for a, b in zip(known, shape.dims, strict=True)])

    def eval(self, feed_dict: Any = None, session: Any = None) -> Any:
        """The tensor's value computed by ``session`` (default: the default session).

        Raises ``ValueError`` when there is no session or it runs another graph.
        """
        return _run_with_session(self, feed_dict, session, "evaluate tensor", "eval")

    def __bool__(self) -> bool:
        raise TypeError("Using a symbolic `tf.Tensor` as a Python `bool` is not allowed.")

    def __str__(self) -> str:
        return f'Tensor("{self.name}", shape={self._shape}, dtype={self._dtype.name})'

    def __repr__(self) -> str:
        return f"<tf.Tensor '{self.name}' shape={self._shape} dtype={self._dtype.name}>"


class Operation:
    """A node of a graph.

    ``kernel`` names the server op that computes it (see ``varstore.server.kernels``); an op
    that reads or updates a variable names it in ``variable`` and takes the variable's
    reference tensor as its first input. Constants carry their ``value``, initializer ops
    their :class:`varstore.initializers.Initializer`.
    """

    def __init__(self, graph: Graph, name: str, op_type: str, kernel: str,
                 inputs: Sequence[Tensor], control_inputs: Sequence[Operation],
                 attrs: dict[str, Any], variable: str, value: np.ndarray | None,
                 initializer: Initializer | None) -> None:
        self._graph = graph
        self._name = name
        self._type = op_type
        self.kernel = kernel
        self._inputs = tuple(inputs)
        self._control_inputs = list(control_inputs)
        self.attrs = attrs
        self.variable = variable
        self.value = value
        self.initializer = initializer
        self._outputs: list[Tensor] = []
        # Set by the graph's ``device`` blocks (varstore.v1.device_setter).
        self.device = ""

    @property
    def name(self) -> str:
        """The operation's unique name in its graph."""
        return self._name

    @property
    def type(self) -> str:
        """TF's op type, e.g. ``"AddV2"``, ``"Assign"``, ``"VariableV2"``."""
        return self._type

    @property
    def graph(self) -> Graph:
        """The graph this operation belongs to."""
        return self._graph

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """The input tensors."""
        return self._inputs

    @property
    def control_inputs(self) -> list[Operation]:
        """Operations that must run before this one."""
        return list(self._control_inputs)

    @property
    def outputs(self) -> list[Tensor]:
        """The output tensors (none for ops run only for their effect)."""
        return list(self._outputs)

    def run(self, feed_dict: Any = None, session: Any = None) -> None:
        """Runs this operation in ``session`` (default: the default session).

        Raises ``ValueError`` when there is no session or it runs another graph.
        """
        _run_with_session(self, feed_dict, session, "execute operation", "run")

    def __repr__(self) -> str:
        return f"<tf.Operation '{self._name}' type={self._type}>"

    __str__ = __repr__


class Graph:
    """A TF 1.x graph: operations, variables, collections and naming state."""

    def __init__(self) -> None:
        self.naming = Naming()
        self._ops: dict[str, Operation] = {}
        self._variables: list[Any] = []
        self._collections: dict[str, list[Any]] = {}
        self._control_dependencies: list[Operation] = []
        # The ``tf.device`` blocks open now, outermost first (varstore.v1.device_setter).
        self.device_functions: list[Any] = []

    # --- default graph ---------------------------------------------------------------------

    @contextlib.contextmanager
    def as_default(self) -> Iterator[Graph]:
        """Makes this graph the default graph inside the ``with`` block."""
        _stacks.graphs.append(self)
        try:
            yield self
        finally:
            _stacks.graphs.pop()

    # --- names -----------------------------------------------------------------------------

    def unique_name(self, name: str, mark_as_used: bool = True) -> str:
        """``name`` under the current name scope, made unique (``add``, ``add_1``...)."""
        return self.naming.unique_name(name, mark_as_used)

    def name_scope(self, name: str | None, default_name: str | None = None
                   ) -> contextlib.AbstractContextManager[str]:
        """Opens a name scope; yields its name with a trailing ``/``."""
        return self.naming.name_scope(name, default_name)

    # --- operations ------------------------------------------------------------------------

    def create_op(self, name: str, op_type: str, kernel: str, inputs: Sequence[Tensor] = (),
                  dtype: DType | None = None, shape: Any = None, *, variable: str = "",
                  value: np.ndarray | None = None, initializer: Initializer | None = None,
                  attrs: dict[str, Any] | None = None) -> Operation:
        """Adds an operation named exactly ``name`` (already made unique) with one output of
        ``dtype`` and ``shape``, or none when ``dtype`` is None; ``attrs`` are the server op's
        attributes. Returns the operation; raises ``ValueError`` when ``name`` is taken or is
        not a valid node name (TF's message)."""
        check_node_name(name)
        if name in self._ops:
            raise ValueError(f"Duplicate node name in graph: '{name}'")
        for t in inputs:
            if t.graph is not self:
                raise ValueError(f"Tensor {t} must be from the same graph as the operation "
                                 f"{name}.")
        op = Operation(self, name, op_type, kernel, inputs, self._control_dependencies,
                       attrs or {}, variable, value, initializer)
        if dtype is not None:
            op._outputs.append(Tensor(op, 0, dtype, as_shape(shape)))
        if self.device_functions:
            op.device = resolve_device(self.device_functions, op)
        self._ops[name] = op
        return op

    def get_operations(self) -> list[Operation]:
        """All operations, in the order they were added."""
        return list(self._ops.values())

    def get_operation_by_name(self, name: str) -> Operation:
        """The operation ``name``; raises ``KeyError`` when missing."""
        return self.as_graph_element(name, allow_tensor=False)

    def get_tensor_by_name(self, name: str) -> Tensor:
        """The tensor ``"op:index"``; raises ``KeyError`` when missing."""
        return self.as_graph_element(name, allow_operation=False)

    def as_graph_element(self, obj: Any, allow_tensor: bool = True,
                         allow_operation: bool = True) -> Any:
        """The tensor or operation ``obj`` (an object of this graph or its name).

        Raises ``ValueError`` for objects of another graph, ``KeyError`` for unknown names and
        ``TypeError`` for anything else.
        """
        if hasattr(obj, "_as_graph_element"):
            obj = obj._as_graph_element()
        if isinstance(obj, Tensor) and allow_tensor:
            if obj.graph is not self:
                raise ValueError(f"Tensor {obj} is not an element of this graph.")
            return obj
        if isinstance(obj, Operation) and allow_operation:
            if obj.graph is not self:
                raise ValueError(f"Operation {obj!r} is not an element of this graph.")
            return obj
        if isinstance(obj, str):
            return self._element_by_name(obj, allow_tensor, allow_operation)
        kinds = " or ".join(k for k, ok in (("Tensor", allow_tensor),
                                            ("Operation", allow_operation)) if ok)
        raise TypeError(f"Can not convert a {type(obj).__name__} into a {kinds}.")

    def _element_by_name(self, name: str, allow_tensor: bool, allow_operation: bool) -> Any:
        if ":" in name and allow_tensor:
            op_name, _, index = name.rpartition(":")
            op = self._ops.get(op_name)
            if op is None:
                raise KeyError(f"The name {name!r} refers to a Tensor which does not exist. "
                               f"The operation, {op_name!r}, does not exist in the graph.")
            if not index.isdigit() or int(index) >= len(op.outputs):
                raise KeyError(f"The name {name!r} refers to a Tensor which does not exist. "
                               f"The operation, {op_name!r}, exists but only has "
                               f"{len(op.outputs)} outputs.")
            return op.outputs[int(index)]
        if ":" not in name and allow_operation:
            if name not in self._ops:
                raise KeyError(f"The name {name!r} refers to an Operation not in the graph.")
            return self._ops[name]
        raise ValueError(f"The name {name!r} looks like an "
                         f"{'Operation' if allow_tensor else 'Tensor'} name, but is not "
                         f"allowed here.")

    def _as_operation(self, obj: Any) -> Operation:
        element = self.as_graph_element(obj)
        return element if isinstance(element, Operation) else element.op

    @contextlib.contextmanager
    def control_dependencies(self, control_inputs: Sequence[Any] | None) -> Iterator[None]:
        """Ops created inside run after ``control_inputs`` (None clears the dependencies)."""
        old = self._control_dependencies
        if control_inputs is None:
            self._control_dependencies = []
        else:
            extra = [self._as_operation(c) for c in control_inputs]
            self._control_dependencies = old + [c for c in extra if c not in old]
        try:
            yield
        finally:
            self._control_dependencies = old

    # --- variables and collections ---------------------------------------------------------

    def add_variable(self, variable: Any, collections: Sequence[str]) -> None:
        """Records a new variable and adds it to ``collections``."""
        self._variables.append(variable)
        for key in collections:
            self.add_to_collection(key, variable)

    @property
    def variables(self) -> list[Any]:
        """Every variable created in this graph, whatever its collections."""
        return list(self._variables)

    def add_to_collection(self, name: str, value: Any) -> None:
        """Appends ``value`` to the collection ``name``."""
        self._collections.setdefault(name, []).append(value)

    def get_collection(self, name: str, scope: str | None = None) -> list[Any]:
        """A copy of the collection ``name``; with ``scope``, only items whose name matches
        it (``re.match``, as TF)."""
        items = list(self._collections.get(name, []))
        if scope is None:
            return items
        return [v for v in items if re.match(scope, getattr(v, "name", ""))]


# --- default graph and session -------------------------------------------------------------

class _ThreadStacks(threading.local):
    def __init__(self) -> None:
        self.graphs: list[Graph] = []
        self.sessions: list[Any] = []


_stacks = _ThreadStacks()
_global_graph = Graph()


def get_default_graph() -> Graph:
    """The graph new operations go to: the innermost ``as_default()`` one, else the global
    default graph."""
    return _stacks.graphs[-1] if _stacks.graphs else _global_graph


def reset_default_graph() -> None:
    """Replaces the global default graph with a new, empty one.

    Raises ``AssertionError`` inside a ``Graph.as_default()`` or session block, as TF does.
    """
    global _global_graph
    if _stacks.graphs:
        raise AssertionError(
            "Do not use tf.reset_default_graph() to clear nested graphs. If you need a cleared "
            "graph, exit the nesting and create a new graph.")
    _global_graph = Graph()


@contextlib.contextmanager
def device(device_name_or_function: Any) -> Iterator[None]:
    """Ops created inside get this device, as ``tf.device`` (TensorFlow's ops.py): a string
    such as ``"/job:ps/task:1"``, a function of the op
    (:func:`varstore.v1.device_setter.replica_device_setter`), or None."""
    functions = get_default_graph().device_functions
    functions.append(device_name_or_function)
    try:
        yield
    finally:
        functions.pop()


@contextlib.contextmanager
def default_session(session: Any) -> Iterator[Any]:
    """Makes ``session`` the default session inside the ``with`` block."""
    _stacks.sessions.append(session)
    try:
        yield session
    finally:
        _stacks.sessions.pop()


def get_default_session() -> Any:
    """The innermost default session, or None."""
    return _stacks.sessions[-1] if _stacks.sessions else None


def _run_with_session(element: Tensor | Operation, feed_dict: Any, session: Any, what: str,
                      method: str) -> Any:
    """Runs ``element`` for ``Tensor.eval`` and ``Operation.run`` with TF's error messages."""
    if session is None:
        session = get_default_session()
        if session is None:
            colon = ":" if method == "run" else ""
            raise ValueError(
                f"Cannot {what} using `{method}()`: No default session is registered. Use "
                f"`with sess.as_default(){colon}` or pass an explicit session to "
                f"`{method}(session=sess)`")
        if session.graph is not element.graph:
            raise ValueError(
                f"Cannot use the default session to {what}: the "
                f"{'tensor' if isinstance(element, Tensor) else 'operation'}'s graph is "
                f"different from the session's graph. Pass an explicit session to "
                f"`{method}(session=sess)`.")
    elif session.graph is not element.graph:
        raise ValueError(
            f"Cannot use the given session to {what}: the "
            f"{'tensor' if isinstance(element, Tensor) else 'operation'}'s graph is different "
            f"from the session's graph.")
    return session.run(element, feed_dict)


def graph_of(values: Sequence[Any]) -> Graph:
    """The graph of the first tensor, operation or variable in ``values``, else the default
    graph."""
    for value in values:
        graph = getattr(value, "graph", None)
        if isinstance(graph, Graph):
            return graph
    return get_default_graph()


@contextlib.contextmanager
def op_scope(name: str | None, default_name: str, values: Sequence[Any] = ()
             ) -> Iterator[tuple[Graph, str]]:
    """Makes the graph of ``values`` the default and opens a unique name scope for one op.

    Yields the graph and the op's name (``"add"``, ``"add_1"``, ``"scope/add"``...); inputs
    converted inside are named under it (``"add/y"``), as in TF.
    """
    graph = graph_of(values)
    with graph.as_default(), graph.name_scope(name or None, default_name) as scope:
        yield graph, scope[:-1]
