"""Training with many workers: server-side optimizers, synchronous steps, chief and workers.

Workers compute gradients themselves and push them; the server applies each update to the
variable and its slot variables atomically. The optimizers carry TensorFlow 1.x's names,
arguments, slot names (``W/Momentum``, ``W/Adagrad``, ``W/Adam``, ``W/Adam_1``) and non-slot
variables (``beta1_power``, ``beta2_power``), so checkpoints match what TensorFlow writes::

    opt = vs.train.AdamOptimizer(0.01)
    step = vs.train.get_or_create_global_step(client)
    client.apply_gradients(opt, {W: grad_W, emb: (rows, grad_rows)}, global_step=step)

A gradient is an array of the variable's shape, or a tuple ``(indices, values)`` of rows for
a sparse update. One ``apply_gradients`` is one round trip, whatever the number of variables;
with ``fetch=[W, ...]`` that round trip also returns the updated values (push-pull). The
optimizers themselves live in :mod:`varstore.optimizers` and are re-exported here.

Synchronous training wraps an optimizer in :class:`SyncReplicasOptimizer`.
Chief and workers start with :func:`initialize_or_restore` and :func:`wait_until_ready`
(``Client`` methods of the same names).
"""


from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from varstore import initializers
from varstore.common import dtypes
from varstore.common.errors import DeadlineExceededError, OpError
from varstore.common.protocol import APPLIED, PENDING, STALE
from varstore.handles import VariableHandle, name_list, variable_list
from varstore.optimizers import (
    AdagradOptimizer,
    AdamOptimizer,
    FtrlOptimizer,
    GradientDescentOptimizer,
    GradientNodes,
    MomentumOptimizer,
    NonSlot,
    Optimizer,
    RMSPropOptimizer,
    Runner,
    Slot,
    Trainable,
    read_after,
)
from varstore.request import RequestBuilder
from varstore.scopes import VariableScope

__all__ = [
    "GLOBAL_STEP", "AdagradOptimizer", "AdamOptimizer", "CheckpointSaver", "FtrlOptimizer",
    "GradientDescentOptimizer", "MomentumOptimizer", "NonSlot", "Optimizer",
    "RMSPropOptimizer", "Slot", "SyncReplicasOptimizer", "Trainable", "apply_gradients",
    "get_or_create_global_step", "initialize_or_restore", "wait_until_ready"]

log = logging.getLogger(__name__)

GLOBAL_STEP = "global_step"

V_co = TypeVar("V_co", covariant=True)
V = TypeVar("V")


class TrainingClient(Runner, Protocol[V_co]):
    """What training needs of a client (:class:`varstore.Client` is one, with handles
    ``V_co``). Typed here so that this module imports no client."""

    def get_variable(self, name: str, shape: Sequence[int] | None = None, dtype: Any = None,
                     initializer: Any = None, trainable: bool = True) -> V_co: ...

    def get_variable_scope(self) -> VariableScope: ...

    def latest_checkpoint(self, directory: str = "") -> str | None: ...

    def restore(self, prefix: str, var_list: Any = None) -> str: ...

    def save(self, prefix: str, var_list: Any = None, global_step: Any = None,
             max_to_keep: int | None = 5, *, saver: str | None = None) -> str: ...

    def wait_initialized(self, names: Sequence[str] = (), timeout: float = 60.0
                         ) -> list[str]: ...

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

    def _run(self, client: Runner, b: RequestBuilder,
             grads: list[tuple[Trainable, GradientNodes]], global_step: str | None,
             local_step: int | None, fetch: Sequence[Trainable]) -> tuple[Any, list[Any]]:
        if global_step is None or local_step is None:
            raise ValueError("SyncReplicasOptimizer needs global_step and local_step (the "
                             "global step the gradients were computed at)")
        flat: list[int] = []
        for _, grad in grads:
            flat += [grad[1], grad[0]] if isinstance(grad, tuple) else [grad]
        split = _split_step(client, global_step, grads)
        acc = b.node("sync_accumulate", flat, variable=global_step, step=int(local_step),
                     replicas=self.replicas_to_aggregate,
                     variables=",".join(var.op_name for var, _ in grads),
                     sparse="".join("1" if isinstance(g, tuple) else "0" for _, g in grads),
                     deferred=1 if split else None)
        means: list[tuple[Trainable, GradientNodes]] = []
        for i, (var, grad) in enumerate(grads):
            def mean(part: str, i: int = i) -> int:
                return b.node("sync_mean", [acc], variable=global_step, index=i, part=part)
            means.append((var, (mean("indices"), mean("values")) if isinstance(grad, tuple)
                          else mean("dense")))
        if split:
            status, generation, new_step, values = self._run_split(client, b, acc, means,
                                                                   global_step, fetch)
        else:
            step = self.optimizer.build(b, means, global_step, client.naming.name_stack)
            b.fetch(acc)
            b.fetch(step)
            expect = read_after(b, step, fetch)
            (status, generation), new_step, *values = self.optimizer._send(client, b,
                                                                           expect)[0]
        if status == STALE:
            self.stale_gradients += 1
            log.info("dropped gradients of step %d: the global step is %d", local_step,
                     new_step)
        if status != PENDING:
            return int(new_step), values
        wait = RequestBuilder()
        wait.fetch(wait.node("sync_wait", group=global_step, generation=int(generation),
                             timeout=self.timeout))
        applied = int(client.run(wait)[0][0])
        if not fetch:
            return applied, []
        # A second request: sync_wait must hold no variable lock while it waits.
        read = RequestBuilder()
        return applied, client.run(read, read_after(read, None, fetch))[0]


    def _run_split(self, client: Runner, b: RequestBuilder, acc: int,
                   means: list[tuple[Trainable, GradientNodes]], global_step: str,
                   fetch: Sequence[Trainable]) -> tuple[int, int, int, list[Any]]:
        """A step whose variables live on other shards than ``global_step``: the global
        step's shard accumulates (``b``) and returns the means when this replica completes
        the step, which a second request applies on the variables' shards, incrementing the
        global step last, which lets the waiting replicas go on (:mod:`varstore.server.sync`).
        Returns the status, generation, global step and ``fetch``'s values."""
        b.fetch(acc)
        b.fetch(b.node("read", variable=global_step))
        for _, nodes in means:
            for node in nodes if isinstance(nodes, tuple) else (nodes,):
                b.fetch(node)
        (status, generation), new_step, *flat = client.run(b)[0]
        if status != APPLIED:
            return int(status), int(generation), int(new_step), []
        apply = RequestBuilder()
        it = iter(flat)
        grads: list[tuple[Trainable, GradientNodes]] = []
        for var, nodes in means:
            if isinstance(nodes, tuple):
                indices, values = next(it), next(it)
                grads.append((var, (apply.const(indices, dtypes.int64),
                                    apply.const(values, var.dtype))))
            else:
                grads.append((var, apply.const(next(it), var.dtype)))
        step = self.optimizer.build(apply, grads, global_step, client.naming.name_stack)
        apply.fetch(step)
        expect = read_after(apply, step, fetch)
        try:
            applied, *values = self.optimizer._send(client, apply, expect)[0]
        except OpError:
            _release(client, global_step, int(new_step))
            raise
        return APPLIED, int(generation), int(applied), values


def _release(client: Runner, global_step: str, closed: int) -> None:
    """After a split step failed to apply on some shard: moves the global step past the
    closed step unless it moved already, so that the waiting replicas go on (the shards that
    applied the step keep it; the step is not atomic across shards). Raises nothing."""
    read = RequestBuilder()
    read.fetch(read.node("read", variable=global_step))
    release = RequestBuilder()
    release.target(release.node("increment", variable=global_step))
    with contextlib.suppress(OpError):
        if int(client.run(read)[0][0]) == closed:
            client.run(release)


def _split_step(client: Runner, global_step: str,
                grads: list[tuple[Trainable, GradientNodes]]) -> bool:
    """Whether ``client`` is a cluster's whose shards hold some of the variables apart from
    ``global_step``: a synchronous step is then split in two requests."""
    shard_of = getattr(client, "shard_of", None)
    if shard_of is None:
        return False
    home = shard_of(global_step)
    return any(shard_of(var.op_name) != home for var, _ in grads)


# --- applying gradients ----------------------------------------------------------------------

def apply_gradients(client: Runner, optimizer: Optimizer, grads: Mapping[Any, Any],
                    global_step: Trainable | None = None,
                    local_step: int | None = None,
                    fetch: Sequence[Trainable] | None = None,
                    builder: RequestBuilder | None = None) -> Any:
    """Applies ``{variable: gradient}`` with ``optimizer`` in one round trip and increments
    ``global_step``; returns the global step after the update (None without one).

    With ``fetch`` (variables), the same round trip also reads their values after the update
    (push-pull), and the result is ``(global_step, [values])``; a synchronous replica that
    waits for the others reads them in a second request once the step is applied.
    ``builder``, a request holding other updates as targets (no fetches), is sent with the
    step, atomically; ``fetch`` reads after them too. A stale or waiting synchronous
    replica's request still applies them.

    A gradient is an array of the variable's shape or a tuple ``(indices, values)``, converted
    as TensorFlow converts it (numpy arrays cast to the variable's dtype). Raises
    ``ValueError`` for a gradient of the wrong shape (never broadcast) or None, ``TypeError``
    for a Python value that does not fit the dtype or ``grads`` not a dict of variables,
    ``InvalidArgumentError`` from the server for an index out of range.
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"apply_gradients() argument 'optimizer' must be an Optimizer "
                        f"(varstore.train), got {type(optimizer).__name__}")
    if global_step is not None:
        variable_list([global_step], "apply_gradients() argument 'global_step'")
    if not isinstance(grads, Mapping):
        raise TypeError(f"apply_gradients() argument 'grads' must be a dict "
                        f"{{variable: gradient}}, got {type(grads).__name__}")
    variable_list(list(grads), "apply_gradients() argument 'grads'")
    b = RequestBuilder() if builder is None else builder
    if fetch is not None:
        fetch = variable_list(fetch, "apply_gradients() argument 'fetch'")
    nodes = [(var, _gradient_nodes(b, var, grad)) for var, grad in grads.items()]
    step, values = optimizer._run(client, b, nodes, None if global_step is None else
                                  global_step.op_name, local_step, fetch or ())
    return step if fetch is None else (step, values)


def _gradient_nodes(b: RequestBuilder, var: Trainable, grad: Any) -> GradientNodes:
    if isinstance(grad, tuple):
        if len(grad) != 2:
            raise ValueError(f"a sparse gradient of {var.op_name} is (indices, values), got a "
                             f"tuple of {len(grad)}")
        indices = np.asarray(grad[0])
        if indices.dtype.kind not in "iu" or indices.ndim != 1:
            raise ValueError(f"indices of the gradient of {var.op_name} must be a 1-D integer "
                             f"array, got {indices.dtype} of shape {indices.shape}")
        values = dtypes.convert(grad[1], var.dtype)
        want = indices.shape + tuple(var.shape[1:])
        if not var.shape or values.shape != want:
            raise ValueError(f"Gradient values of {var.op_name} have shape {values.shape}, "
                             f"expected {want} for {indices.size} indices into "
                             f"{tuple(var.shape)}")
        return (b.const(indices.astype(np.int64), dtypes.int64), b.const(values, var.dtype))
    value = dtypes.convert(grad, var.dtype)
    if value.shape != tuple(var.shape):
        raise ValueError(f"Gradient of {var.op_name} has shape {value.shape}, the variable "
                         f"{tuple(var.shape)}")
    return b.const(value, var.dtype)


def get_or_create_global_step(client: TrainingClient[V]) -> V:
    """The ``global_step`` variable (int64 scalar, not trainable) of the current variable
    scope, created at 0 or bound to the server's, as ``tf.train.get_or_create_global_step``.
    """
    found = client.naming.shared.get(_scoped(client, GLOBAL_STEP))
    if found is not None:
        return found
    return client.get_variable(GLOBAL_STEP, (), dtypes.int64,
                               initializer=initializers.zeros_initializer, trainable=False)


def _scoped(client: TrainingClient[Any], name: str) -> str:
    scope = client.get_variable_scope().name
    return f"{scope}/{name}" if scope else name


# --- chief and workers -----------------------------------------------------------------------

def initialize_or_restore(client: TrainingClient[Any], variables: Sequence[VariableHandle],
                          checkpoint_dir: str | None = None,
                          initial_values: Mapping[str, Any] | None = None) -> str | None:
    """The chief's start: restores the newest checkpoint of ``checkpoint_dir`` (a folder inside
    the server's checkpoint folder; its root by default) when there is one, then initializes
    those of ``variables`` that are still uninitialized, with their initializers or, when
    given, ``initial_values`` (arrays by variable name). Returns the checkpoint restored, or
    None.

    Variables made inside ``client.deferred_initialization()`` stay uninitialized until this
    runs, so workers never train on values the checkpoint is about to replace. Raises the
    server's errors (``DataLossError``, ``NotFoundError``...) when a checkpoint cannot be read.
    """
    variables = variable_list(variables, "initialize_or_restore() argument 'variables'")
    latest = client.latest_checkpoint(checkpoint_dir or "")
    if latest is not None:
        client.restore(latest)
        log.info("restored %s", latest)
    check = RequestBuilder()
    for var in variables:
        check.fetch(check.node("is_initialized", variable=var.op_name))
    pending = [v for v, done in zip(variables, client.run(check)[0], strict=True) if not done]
    if pending:
        b = RequestBuilder()
        for var in pending:
            if initial_values is not None:
                value = b.const(var._full_value(initial_values[var.op_name]), var.dtype)
            elif var._initializer is None:
                raise ValueError(f"{var.op_name} is uninitialized and was not created by this "
                                 f"client, so it has no initializer here")
            else:
                value = var._initializer(b)
            b.target(b.node("assign", [value], variable=var.op_name))
        client.run(b)
        log.info("initialized %s", ", ".join(v.op_name for v in pending))
    return latest


def wait_until_ready(client: TrainingClient[Any], variables: Sequence[Any],
                     timeout: float = 600.0,
                     log_every: float = 10.0) -> None:
    """A worker's start: blocks until every variable of ``variables`` (handles or full names)
    is initialized on the server, returning as soon as the chief has initialized or restored
    them; logs what it waits for every ``log_every`` seconds.

    Raises ``DeadlineExceededError`` naming the variables still uninitialized after
    ``timeout`` seconds.
    """
    names = name_list(variables, "wait_until_ready() argument 'variables'")
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
    ``client.save`` takes (None: every variable on the server). It is one saver: it keeps
    the newest ``max_to_keep`` of the checkpoints it wrote (0 or None: deletes none) and
    never deletes others, as the hook's ``Saver`` does.
    """

    def __init__(self, client: TrainingClient[Any], checkpoint_dir: str | None = None,
                 save_secs: float = 600.0, checkpoint_basename: str = "model.ckpt",
                 max_to_keep: int | None = 5, var_list: Any = None) -> None:
        self.client = client
        self.save_secs = save_secs
        self.var_list = var_list
        self.prefix = f"{checkpoint_dir}/{checkpoint_basename}" if checkpoint_dir \
            else checkpoint_basename
        self.max_to_keep = max_to_keep
        # The step of the last save, as the hook's timer remembers its last triggered step.
        self.last_step: int | None = None
        self._saver = f"CheckpointSaver:{uuid.uuid4().hex}"
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
                                max_to_keep=self.max_to_keep, saver=self._saver)
        self._last = time.monotonic()
        self.last_step = step
        log.info("saved %s", path)
        return path
