"""Executes a request's op graph atomically against the variable store.

A request first creates or binds its variables, then evaluates the nodes its fetches and
targets need. Every variable those nodes touch is locked (in name order) for the whole
evaluation, so ``assign(c, c + 1)`` never loses an update and reads are never torn, while
requests on other variables run in parallel.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varstore.common.codec import MAX_RANK
from varstore.common.dtypes import DType
from varstore.common.errors import (
    InvalidArgumentError,
    NotFoundError,
    OpError,
    ResourceExhaustedError,
    clip,
)
from varstore.common.protocol import READ_ONLY_OPS
from varstore.server import optimizers, sync  # noqa: F401 - registers the training ops
from varstore.server.kernels import OPS, NodeDef
from varstore.server.store import Variable, VariableStore, validate_name

log = logging.getLogger(__name__)

MAX_NODES = 100_000


@dataclass
class VariableSpec:
    """A variable a request creates (when missing) or binds to."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    trainable: bool = True
    bind_only: bool = False
    initializer: int | None = None
    created_by: str = "Variable"
    initializer_desc: str = ""


@dataclass
class Graph:
    """A request as plain values: variables to create or bind, nodes, tensors, outputs."""

    variables: list[VariableSpec] = field(default_factory=list)
    nodes: list[NodeDef] = field(default_factory=list)
    tensors: list[np.ndarray] = field(default_factory=list)
    fetches: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    # Set by the executor once it checked the graph, which a graph run again is not twice.
    validated: bool = False
    # The tensors belong to this request alone (no later request shares them), so a kernel may
    # keep one that no other node uses instead of copying it (a pushed value, see _Context.take).
    owned: bool = False


@dataclass
class Result:
    """Fetched values (None for ops without output) and the request's variables."""

    values: list[np.ndarray | None]
    variables: list[tuple[Variable, bool]]


class Executor:
    """Runs graphs against one :class:`VariableStore`."""

    def __init__(self, store: VariableStore, max_tensor_bytes: int = 1 << 36) -> None:
        self.store = store
        self.max_tensor_bytes = max_tensor_bytes

    def run(self, graph: Graph) -> Result:
        """Creates or binds ``graph.variables``, then evaluates fetches and targets.

        Raises ``InvalidArgumentError`` for a malformed graph, ``NotFoundError`` for a missing
        variable, and the kernels' errors. A request that fails changes nothing: variables it
        created are removed and variables it updated get their values back.
        """
        if not graph.validated:
            self._validate(graph)
            graph.validated = True
        memo: dict[int, Any] = {}
        bound = self._create_variables(graph, memo)
        wanted = list(graph.fetches) + list(graph.targets)
        try:
            values = self._evaluate(graph, wanted, memo, graph.fetches)
        except BaseException:
            self._remove_created(bound)
            raise
        return Result(values, bound)

    def _remove_created(self, bound: list[tuple[Variable, bool]]) -> None:
        for var, created in bound:
            if created:
                self.store.delete(var.name)

    def _validate(self, graph: Graph) -> None:
        if len(graph.nodes) > MAX_NODES:
            raise InvalidArgumentError(f"graph has {len(graph.nodes)} nodes > {MAX_NODES}")
        for i, node in enumerate(graph.nodes):
            opdef = OPS.get(node.op)
            if opdef is None:
                raise InvalidArgumentError(f"node {i}: unknown op {clip(repr(node.op), 64)}")
            if opdef.arity is not None and len(node.inputs) != opdef.arity:
                raise InvalidArgumentError(
                    f"node {i}: op {node.op} takes {opdef.arity} inputs, got {len(node.inputs)}")
            for j in (*node.inputs, *node.control_inputs):
                if not 0 <= j < i:
                    raise InvalidArgumentError(f"node {i}: input {j} is not an earlier node")
            if opdef.uses_variable and not node.variable:
                raise InvalidArgumentError(f"node {i}: op {node.op} needs a variable")
            if node.variable:
                validate_name(node.variable)
        for j in (*graph.fetches, *graph.targets):
            if not 0 <= j < len(graph.nodes):
                raise InvalidArgumentError(f"fetch or target {j} is not a node")
        for spec in graph.variables:
            validate_name(spec.name)
            check_alloc(spec.shape, spec.dtype, self.max_tensor_bytes)
            if spec.initializer is not None and not 0 <= spec.initializer < len(graph.nodes):
                raise InvalidArgumentError(f"initializer of {spec.name} is not a node")

    def _create_variables(self, graph: Graph, memo: dict[int, Any]
                          ) -> list[tuple[Variable, bool]]:
        missing = [s for s in graph.variables if self.store.find(s.name) is None]
        for spec in missing:
            if spec.bind_only:
                raise NotFoundError(f"Variable {spec.name} does not exist on the server")
        init_nodes = [s.initializer for s in missing if s.initializer is not None]
        if init_nodes:
            self._evaluate(graph, init_nodes, memo, [])
        bound: list[tuple[Variable, bool]] = []
        try:
            for spec in graph.variables:
                if spec.bind_only:
                    bound.append((self.store.get(spec.name), False))
                    continue
                value = None
                if spec.initializer is not None and spec.initializer in memo:
                    value = self._initial_value(spec, memo[spec.initializer])
                var, created = self.store.create(Variable(
                    spec.name, spec.dtype, spec.shape, spec.trainable, spec.created_by,
                    spec.initializer_desc, value))
                bound.append((var, created))
        except Exception:
            self._remove_created(bound)
            raise
        return bound

    @staticmethod
    def _initial_value(spec: VariableSpec, value: Any) -> np.ndarray:
        value = np.asarray(value)
        if value.dtype != spec.dtype.np_dtype and not (spec.dtype.is_string
                                                       and value.dtype == object):
            raise InvalidArgumentError(
                f"initial value of {spec.name} has dtype {value.dtype}, expected "
                f"{spec.dtype.name}")
        if value.shape != spec.shape:
            raise InvalidArgumentError(
                f"initial value of {spec.name} has shape {list(value.shape)}, expected "
                f"{list(spec.shape)}")
        return np.array(value, copy=True)

    def _evaluate(self, graph: Graph, wanted: list[int], memo: dict[int, Any],
                  fetches: list[int]) -> list[Any]:
        needed = _closure(graph.nodes, wanted, memo)
        names = {graph.nodes[i].variable for i in needed if graph.nodes[i].variable}
        variables = {n: self.store.get(n) for n in sorted(names)}
        ctx = _Context(self, graph, variables)
        undo = _UndoLog()
        with self.store.locked(variables.values()):
            try:
                for i in needed:
                    node = graph.nodes[i]
                    if i != needed[-1]:
                        undo.save_changed(node, graph.nodes, variables)
                    memo[i] = _call(ctx, node, [memo[j] for j in node.inputs], i)
            except BaseException:
                undo.restore(self.store)
                raise
            return [_detach(memo[i], variables) for i in fetches]




class _UndoLog:
    """What variables held before a request changed them, put back when a later node fails,
    so that a failed request changes nothing.

    The last node of a request needs no entry (nothing can fail after it), so single-op
    requests copy nothing. ``assign`` replaces a variable's array instead of writing into it,
    so its entry keeps the old array itself; in-place updates keep a copy.
    """

    def __init__(self) -> None:
        self._saved: dict[int, tuple[Variable, np.ndarray | None, int]] = {}

    def save_changed(self, node: NodeDef, nodes: list[NodeDef],
                     variables: dict[str, Variable]) -> None:
        """Records the variables ``node`` may change, unless recorded already."""
        if node.op in READ_ONLY_OPS:
            return
        if node.variable:
            self._save(variables[node.variable], copy=node.op != "assign")
        for j in node.inputs:
            if nodes[j].op == "ref":
                self._save(variables[nodes[j].variable], copy=True)

    def _save(self, var: Variable, copy: bool) -> None:
        if id(var) not in self._saved:
            value = var.value
            if copy and value is not None:
                value = value.copy()
            self._saved[id(var)] = (var, value, var.version)

    def restore(self, store: VariableStore) -> None:
        """Puts every recorded variable back as it was (the locks are held)."""
        for var, value, version in self._saved.values():
            store.put_back(var, value, version)


def _closure(nodes: list[NodeDef], wanted: list[int], memo: dict[int, Any]) -> list[int]:
    """Indices of the nodes ``wanted`` depends on (not yet evaluated), in ascending order."""
    seen: set[int] = set()
    stack = [i for i in wanted if i not in memo]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        node = nodes[i]
        stack.extend(j for j in (*node.inputs, *node.control_inputs)
                     if j not in seen and j not in memo)
    return sorted(seen)


def _call(ctx: _Context, node: NodeDef, inputs: list[Any], index: int) -> Any:
    try:
        return _checked(OPS[node.op].kernel(ctx, node, inputs), node, index)
    except OpError:
        raise
    except MemoryError:
        raise ResourceExhaustedError(f"out of memory evaluating {node.op} (node {index})") \
            from None
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as e:
        raise InvalidArgumentError(f"{node.op} (node {index}): {e}") from None


def _checked(value: Any, node: NodeDef, index: int) -> Any:
    """``value`` if it is a tensor the wire and the checkpoints can carry: numpy accepts more
    dimensions, and its casts to the string dtype (object arrays) keep numbers as they are."""
    if not isinstance(value, np.ndarray):
        return value
    if value.ndim > MAX_RANK:
        raise InvalidArgumentError(
            f"{node.op} (node {index}): result has rank {value.ndim} > {MAX_RANK}")
    if value.dtype == object and not all(isinstance(x, bytes) for x in value.flat):
        raise InvalidArgumentError(
            f"{node.op} (node {index}): cannot make a string tensor of non-string values")
    return value


def _detach(value: Any, variables: dict[str, Variable]) -> Any:
    """A fetched value that no longer aliases variable storage (copied under the lock)."""
    if isinstance(value, np.ndarray) and (not value.flags.owndata or any(
            value is v.value for v in variables.values())):
        return value.copy()
    return value


class _Context:
    """What kernels see of an evaluation: the store, the request's tensors, locked variables."""

    def __init__(self, executor: Executor, graph: Graph, variables: dict[str, Variable]
                 ) -> None:
        self.store = executor.store
        self.tensors = graph.tensors
        self._graph = graph
        self._variables = variables
        self._max_bytes = executor.max_tensor_bytes
        self._sole: set[int] | None = None

    def variable(self, node: NodeDef) -> Variable:
        return self._variables[node.variable]

    def take(self, node: NodeDef, position: int) -> bool:
        """Whether ``node``'s kernel may keep its input ``position`` as it is: a const node of
        the request's own tensors that no other node, fetch or initializer uses."""
        if self._sole is None:
            self._sole = _sole_consts(self._graph) if self._graph.owned else set()
        return node.inputs[position] in self._sole

    def check_alloc(self, shape: tuple[int, ...], dtype: DType) -> None:
        check_alloc(shape, dtype, self._max_bytes)


def _sole_consts(graph: Graph) -> set[int]:
    """The const nodes whose tensor no other const node produces and whose value exactly one
    node input consumes (no fetch, no initializer)."""
    uses = Counter(j for node in graph.nodes for j in node.inputs)
    uses.update(graph.fetches)
    uses.update(s.initializer for s in graph.variables if s.initializer is not None)
    consts = [(i, node.tensor) for i, node in enumerate(graph.nodes) if node.op == "const"]
    producers = Counter(t for _, t in consts)
    return {i for i, t in consts if uses[i] == 1 and producers[t] == 1}


def check_alloc(shape: tuple[int, ...], dtype: DType, limit: int) -> None:
    """Raises ``ResourceExhaustedError`` when a tensor of ``shape`` and ``dtype`` would take
    more than ``limit`` bytes."""
    size = math.prod(shape) * max(dtype.itemsize, 1)
    if size > limit:
        raise ResourceExhaustedError(
            f"a tensor of shape {list(shape)} and dtype {dtype.name} ({size} bytes) "
            f"exceeds the server's limit of {limit} bytes")
