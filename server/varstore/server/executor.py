"""Executes a request's op graph atomically against the variable store.

A request first creates or binds its variables, then evaluates the initializers of those it
created and the nodes its fetches and targets need: first, holding no lock, the nodes that
touch no variable directly or through their inputs (a chain of matmuls of constants); then,
under the locks of every variable the others touch (taken in name order, within the call's
deadline), the rest. So ``assign(c, c + 1)`` never loses an update and reads are never torn,
while requests on other variables run in parallel. A failed request changes nothing."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.codec import FRAMED_BYTES, MAX_RANK, Framed, check_shape
from varstore.common.dtypes import DType
from varstore.common.errors import (
    InvalidArgumentError,
    OpError,
    PermissionDeniedError,
    ResourceExhaustedError,
    clip,
)
from varstore.server.budget import Lease, check_alloc, reply_bytes
from varstore.server.journal import Journal
from varstore.server.kernels import NodeDef
from varstore.server.ops import OPS, PURE_OPS
from varstore.server.slices import SaveSlice
from varstore.server.store import Variable, VariableStore, check_compatible, validate_name
from varstore.server.waits import Waiter

log = logging.getLogger(__name__)

MAX_NODES = 100_000
# Ops that wait for other requests: a request that runs one may lock no variable.
BLOCKING_OPS = frozenset({"sync_wait"})


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
    # A part of a partitioned variable: where it lies in the full tensor.
    save_slice: SaveSlice | None = None


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
    # Whether the graph waits for other requests (BLOCKING_OPS); set with ``validated``.
    blocking: bool = False
    # Per node: computed before any lock (a PURE_OPS naming no variable, of such inputs).
    free: list[bool] = field(default_factory=list)
    # The tensors belong to this request alone (no later request shares them), so a kernel may
    # keep one that no other node uses instead of copying it (a pushed value, see _Context.take).
    owned: bool = False


@dataclass
class Result:
    """Fetched values (None for ops without output) and the request's variables."""

    values: list[np.ndarray | Framed | None]
    variables: list[tuple[Variable, bool]]


class Executor:
    """Runs graphs against one :class:`VariableStore`."""

    def __init__(self, store: VariableStore, max_tensor_bytes: int = 1 << 36) -> None:
        self.store = store
        self.max_tensor_bytes = max_tensor_bytes

    def run(self, graph: Graph, waiter: Waiter | None = None,
            max_reply_bytes: int | None = None, lease: Lease | None = None,
            reply_streamed: bool = False, read_only: bool = False) -> Result:
        """Creates or binds ``graph.variables``, then evaluates fetches and targets.

        All or nothing: the variables the request creates stay pending (see
        :mod:`varstore.server.store`) until it commits; every variable it changes, initializers
        included, gets its value back, and state kept beside the variables (a synchronous
        step's sums) is put back, when any node fails, or when the fetched values would not fit
        in ``max_reply_bytes`` (the reply is checked before anything is committed). Waits
        (for a variable another request is still creating, ``sync_wait``) end as ``waiter``
        says.

        Every array the evaluation makes (nodes' results, undo and fetched copies, and the
        reply's encoding, streamed or not) is charged to ``lease`` before it is allocated
        (without one, to a lease of the store's budget given back at the end). With
        ``reply_streamed`` (RunStream's), large numeric values read from variables are fetched
        as ``codec.Framed`` copies instead of arrays.

        With ``read_only`` (a read-only token's call), a variable the request would create
        raises ``PermissionDeniedError`` (its nodes were checked by the caller).

        Raises ``InvalidArgumentError`` for a malformed graph, ``NotFoundError`` for a missing
        variable, ``ResourceExhaustedError`` for a reply past ``max_reply_bytes`` or past the
        memory budget, the kernels' errors and ``waiter``'s.
        """
        if lease is None:
            with contextlib.closing(self.store.budget.lease()) as own:
                return self.run(graph, waiter, max_reply_bytes, own, reply_streamed, read_only)
        self.validate(graph)
        waiter = waiter or self.store.waiter()
        resolved, bound = self._bind(graph, waiter, read_only)
        created = [var for var, made in bound if made]
        try:
            values = self._evaluate(graph, resolved, created, waiter, max_reply_bytes, lease,
                                    reply_streamed)
        except BaseException:
            self.store.discard(created)
            raise
        return Result(values, bound)

    def validate(self, graph: Graph) -> None:
        """Checks ``graph`` once (sets ``validated`` and ``blocking``); raises
        ``InvalidArgumentError`` for a malformed graph."""
        if graph.validated:
            return
        self._validate(graph)
        graph.validated = True

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
                raise InvalidArgumentError(f"initializer of {clip(spec.name)} is not a node")
            if spec.save_slice is not None and spec.save_slice.shape != spec.shape:
                raise InvalidArgumentError(
                    f"variable {clip(spec.name)} of shape {list(spec.shape)[:8]} cannot be the "
                    f"slice {clip(spec.save_slice.describe())}")
        graph.blocking = any(node.op in BLOCKING_OPS for node in graph.nodes)
        free = graph.free = []
        for n in graph.nodes:
            free.append(not n.variable and n.op in PURE_OPS and all(map(free.__getitem__, (
                *n.inputs, *n.control_inputs))))
        if graph.blocking and (graph.variables or any(n.variable for n in graph.nodes)):
            raise InvalidArgumentError(
                "sync_wait waits for other requests, so its request may name no variable "
                "(send it alone)")

    def _bind(self, graph: Graph, waiter: Waiter, read_only: bool = False
              ) -> tuple[dict[str, Variable | None], list[tuple[Variable, bool]]]:
        """Creates (pending) or binds the request's variables and looks up those its nodes
        name, in name order: a request waits for a variable another one is creating only
        after the variables it creates itself sort before it, so waits never form a cycle.
        Returns every name's variable (None: missing) and ``graph.variables``' bindings.
        With ``read_only``, variables to create are only bound (``PermissionDeniedError``
        for one that does not exist)."""
        specs: dict[str, list[VariableSpec]] = {}
        for spec in graph.variables:
            specs.setdefault(spec.name, []).append(spec)
        names = sorted(set(specs) | {n.variable for n in graph.nodes if n.variable})
        resolved: dict[str, Variable | None] = {}
        made: dict[str, Variable] = {}
        var: Variable | None
        try:
            for name in names:
                creating = [s for s in specs.get(name, ()) if not s.bind_only]
                if creating and read_only:
                    if self.store.find(name) is None:
                        raise PermissionDeniedError(f"creating variable {clip(name)} needs a "
                                                    "read-write token; this one is read-only")
                    var = self.store.get(name, waiter)
                    for spec in creating:
                        check_compatible(var, spec.dtype, spec.shape, spec.save_slice)
                elif creating:
                    s = creating[0]
                    var, created = self.store.create(Variable(
                        s.name, s.dtype, s.shape, s.trainable, s.created_by,
                        s.initializer_desc, pending=True, save_slice=s.save_slice), waiter)
                    if created:
                        made[name] = var
                    for other in creating[1:]:
                        check_compatible(var, other.dtype, other.shape, other.save_slice)
                elif name in specs:
                    var = self.store.get(name, waiter)
                else:
                    var = self.store.published(name, waiter)
                resolved[name] = var
        except BaseException:
            self.store.discard(made.values())
            raise
        bound: list[tuple[Variable, bool]] = []
        for spec in graph.variables:
            var = resolved[spec.name]
            assert var is not None
            bound.append((var, made.get(spec.name) is var
                          and not any(v is var for v, _ in bound)))
        return resolved, bound

    def _evaluate(self, graph: Graph, resolved: dict[str, Variable | None],
                  created: list[Variable], waiter: Waiter, max_reply_bytes: int | None,
                  lease: Lease, reply_streamed: bool) -> list[Any]:
        """Runs the created variables' initializers, then the fetches and targets, under the
        locks of every variable they touch, with one journal for both; checks the reply's
        size, then commits."""
        by_name = {var.name: var for var in created}
        initializers = [s.initializer for s in graph.variables
                        if s.initializer is not None and by_name.get(s.name) is not None]
        wanted = [*graph.fetches, *graph.targets]
        needed = _closure(graph.nodes, [*initializers, *wanted], {})
        variables: dict[str, Variable] = {}
        for i in needed:
            name = graph.nodes[i].variable
            if name:
                var = resolved[name]
                if var is None:
                    raise self.store.missing(name)
                variables[name] = var
        journal = Journal(lease)
        ctx = _Context(self, graph, variables, journal, waiter, lease)
        memo: dict[int, Any] = {}
        self._run_nodes(ctx, [i for i in needed if graph.free[i]], memo, journal, False, None)
        with self.store.locked([*variables.values(), *created], waiter):
            try:
                if initializers:
                    self._run_nodes(ctx, _closure(graph.nodes, initializers, memo), memo,
                                    journal, False, None)
                    for spec in graph.variables:
                        var = by_name.pop(spec.name, None)
                        if var is not None and spec.initializer is not None:
                            self.store.set_initial(var, self._initial_value(
                                spec, memo[spec.initializer]))
                self._run_nodes(ctx, _closure(graph.nodes, wanted, memo), memo, journal,
                                True, max_reply_bytes)
                values = [_detach(memo[i], variables, lease, reply_streamed)
                          for i in graph.fetches]
                lease.charge(reply_bytes(values, reply_streamed), "the reply")
                if max_reply_bytes is not None:
                    size = _reply_bytes(values, graph)
                    if size > max_reply_bytes:
                        raise ResourceExhaustedError(
                            f"the reply would take {size} bytes, more than the {max_reply_bytes} "
                            "a single message may carry; nothing was changed (fetch less, or "
                            "fetch it over the streaming call)")
                journal.commit()
                self.store.commit(created)
            except BaseException:
                journal.undo(self.store)
                raise
        return values

    @staticmethod
    def _run_nodes(ctx: _Context, order: list[int], memo: dict[int, Any], journal: Journal,
                   final: bool, max_reply_bytes: int | None) -> None:
        """Evaluates ``order`` into ``memo``, recording in ``journal`` what each node may
        change. With ``final``, the last of them is the request's last node: it needs no
        record when nothing can fail after it (see :func:`_last_is_safe`)."""
        nodes = ctx.graph.nodes
        for i in order:
            ctx.waiter.working()
            node = nodes[i]
            ctx.node = f"{node.op} (node {i})"
            if not (final and i == order[-1] and _last_is_safe(ctx, node, memo,
                                                               max_reply_bytes)):
                journal.save_changed(node, nodes, ctx.variables)
            memo[i] = _call(ctx, node, [memo[j] for j in node.inputs], i)

    @staticmethod
    def _initial_value(spec: VariableSpec, value: Any) -> np.ndarray:
        value = np.asarray(value)
        if value.dtype != spec.dtype.np_dtype and not (spec.dtype.is_string
                                                       and value.dtype == object):
            raise InvalidArgumentError(
                f"initial value of {clip(spec.name)} has dtype {value.dtype}, expected "
                f"{spec.dtype.name}")
        if value.shape != spec.shape:
            raise InvalidArgumentError(
                f"initial value of {clip(spec.name)} has shape {list(value.shape)}, expected "
                f"{list(spec.shape)}")
        return np.array(value, copy=True)


def _last_is_safe(ctx: _Context, node: NodeDef, memo: dict[int, Any],
                  max_reply_bytes: int | None) -> bool:
    """Whether the request's last node can go without an undo record: it changes at most
    its own variable (no ``ref`` inputs: optimizer ops update slots too, and may fail
    between them), nothing it fetches needs memory the budget may refuse (under a memory
    limit, copying and encoding fetched values is charged after the node) and, with a reply
    limit, the reply fits even counting the node's output as large as its variable."""
    graph = ctx.graph
    if any(graph.nodes[j].op == "ref" for j in node.inputs):
        return False
    if graph.fetches and ctx.lease.budget.limit:
        return False
    if max_reply_bytes is None:
        return True
    own = sum(1 for i in graph.fetches if i not in memo)
    bound = _reply_bytes([memo[i] for i in graph.fetches if i in memo], graph)
    if own:
        var = ctx.variables.get(node.variable)
        if var is None or var.dtype.is_string:
            return False
        bound += own * (var.nbytes + _TENSOR_OVERHEAD)
    return bound <= max_reply_bytes


# Bytes a fetched tensor's message takes besides its content (dtype, shape, field tags).
_TENSOR_OVERHEAD = 32 + 11 * MAX_RANK
# Bytes a variable's description takes in a reply besides its name.
_VARIABLE_OVERHEAD = 512


def _reply_bytes(values: list[Any], graph: Graph) -> int:
    """An upper bound of the encoded size of a reply carrying ``values`` and the
    descriptions of ``graph.variables``."""
    size = sum(len(s.name) + _VARIABLE_OVERHEAD for s in graph.variables)
    for value in values:
        size += _TENSOR_OVERHEAD
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                size += sum(8 + len(x) for x in value.flat)
            else:
                size += value.nbytes
    return size


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
    check_shape(value.shape, what=f"{node.op} (node {index}): result of shape")
    if value.dtype == object and not all(isinstance(x, bytes) for x in value.flat):
        raise InvalidArgumentError(
            f"{node.op} (node {index}): cannot make a string tensor of non-string values")
    return value


def _detach(value: Any, variables: dict[str, Variable], lease: Lease, streamed: bool) -> Any:
    """A fetched value that no longer aliases variable storage (copied under the lock). For a
    streamed reply, a large numeric one is copied straight into the stream's frames."""
    if isinstance(value, np.ndarray) and (not value.flags.owndata or any(
            value is v.value for v in variables.values())):
        dtype = dtypes.as_dtype(value.dtype)
        lease.charge_array(value.shape, dtype, "a fetched value")
        if streamed and not dtype.is_string and value.nbytes >= FRAMED_BYTES:
            return Framed(value, dtype)
        return value.copy()
    return value


class _Context:
    """What kernels see of an evaluation: the store, the request's tensors, locked variables."""

    def __init__(self, executor: Executor, graph: Graph, variables: dict[str, Variable],
                 journal: Journal, waiter: Waiter, lease: Lease) -> None:
        self.store = executor.store
        self.lease = lease
        # The node being evaluated, as refusals name it ("stack (node 3)").
        self.node = ""
        self.tensors = graph.tensors
        self.graph = graph
        self.variables = variables
        self.journal = journal
        self.waiter = waiter
        self._max_bytes = executor.max_tensor_bytes
        self._sole: set[int] | None = None

    def variable(self, node: NodeDef) -> Variable:
        return self.variables[node.variable]

    def take(self, node: NodeDef, position: int) -> bool:
        """Whether ``node``'s kernel may keep its input ``position`` as it is: a const node of
        the request's own tensors that no other node, fetch or initializer uses."""
        if self._sole is None:
            self._sole = _sole_consts(self.graph) if self.graph.owned else set()
        return node.inputs[position] in self._sole

    def check_alloc(self, shape: tuple[int, ...], dtype: DType) -> None:
        """Charges a result of ``shape`` and ``dtype`` to the request's lease, before the
        kernel allocates it; raises ``ResourceExhaustedError`` past a limit."""
        check_alloc(shape, dtype, self._max_bytes, self.node)
        self.lease.charge_array(shape, dtype, self.node)


def _sole_consts(graph: Graph) -> set[int]:
    """The const nodes whose tensor no other const node produces and whose value exactly one
    node input consumes (no fetch, no initializer)."""
    uses = Counter(j for node in graph.nodes for j in node.inputs)
    uses.update(graph.fetches)
    uses.update(s.initializer for s in graph.variables if s.initializer is not None)
    consts = [(i, node.tensor) for i, node in enumerate(graph.nodes) if node.op == "const"]
    producers = Counter(t for _, t in consts)
    return {i for i, t in consts if uses[i] == 1 and producers[t] == 1}
