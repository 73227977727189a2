"""Synchronous training: the gradients of N replicas averaged into one update per step.

TensorFlow's ``SyncReplicasOptimizer`` idea, kept on the server. Each replica sends one
request per step: ``sync_accumulate`` (on the global step, whose lock orders the replicas)
adds its gradients to the step's sums, keyed by the global step the replica computed them
at, and drops gradients of any other step as stale. The request's ``sync_mean`` nodes yield
the mean gradients only when this replica completes the step, so the optimizer ops behind
them (gated, see :mod:`varstore.server.optimizers`) apply the mean exactly once and the
global step moves once. Other replicas then wait in ``sync_wait``, which locks no variable,
until the step they joined is applied.

On a cluster whose trained variables live on other shards than the global step, the client
splits the step (``deferred``): ``sync_accumulate`` on the global step's shard closes the step
when its last replica arrives (later gradients of that step are stale) and returns the means;
the client applies them on the variables' shards, and the global step's ``increment``, last,
completes the step (:func:`complete_at_increment`), so waiting replicas go on only once every
shard has applied it. Gradients are checked against their variables where they are applied,
and here against the step's first replica's (shape and dtype).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import DeadlineExceededError, InvalidArgumentError, clip
from varstore.common.protocol import APPLIED, PENDING, STALE
from varstore.server.kernels import Context, NodeDef, OpDef, _indices
from varstore.server.store import VariableStore
from varstore.server.waits import client_duration

log = logging.getLogger(__name__)

# A gradient as accumulated: a dense array, or (indices, rows) pairs to concatenate.
Gradient = np.ndarray | tuple[np.ndarray, np.ndarray]


@dataclass
class SyncGroup:
    """The accumulation state of one global step variable."""

    condition: threading.Condition = field(default_factory=threading.Condition)
    step: int | None = None
    layout: tuple[tuple[str, bool], ...] = ()
    replicas: int = 0
    count: int = 0
    sums: list[Any] = field(default_factory=list)
    means: list[Gradient] = field(default_factory=list)
    # Completed steps so far; replicas wait for it to pass the value they saw.
    generation: int = 0
    applied_step: int = 0
    dropped: int = 0
    # A deferred step closed by its last replica, completed by the global step's increment.
    closed: int | None = None

    def reset(self, step: int, layout: tuple[tuple[str, bool], ...], replicas: int) -> None:
        """Starts accumulating ``step``, discarding what was gathered for another step."""
        if self.count:
            log.info("discarding %d partial gradients of step %s", self.count, self.step)
        self.step, self.layout, self.replicas = step, layout, replicas
        self.count = 0
        self.sums = [None] * len(layout)

    def snapshot(self) -> Callable[[], None]:
        """An action that puts the accumulation state back as it is now (for a request that
        fails after accumulating; its global step's lock keeps others out meanwhile)."""
        saved = (self.step, self.layout, self.replicas, self.count, list(self.sums),
                 self.means, self.closed)

        def restore() -> None:
            with self.condition:
                (self.step, self.layout, self.replicas, self.count, self.sums,
                 self.means, self.closed) = saved
        return restore

    def undo_drop(self) -> None:
        """Forgets one dropped stale gradient (its request failed)."""
        with self.condition:
            self.dropped -= 1

    def complete(self, step: int) -> None:
        """Marks ``step`` applied and wakes the replicas waiting for it."""
        with self.condition:
            self.generation += 1
            self.applied_step = step + 1
            self.condition.notify_all()


_groups: weakref.WeakKeyDictionary[VariableStore, dict[str, SyncGroup]] = \
    weakref.WeakKeyDictionary()
_groups_lock = threading.Lock()


def sync_group(store: VariableStore, global_step: str) -> SyncGroup:
    """The state of ``global_step``'s synchronous steps in ``store``, created on first use."""
    with _groups_lock:
        return _groups.setdefault(store, {}).setdefault(global_step, SyncGroup())


def complete_at_increment(ctx: Context, global_step: str, before: int) -> None:
    """Called by the global step's increment from ``before``: when that step was closed by a
    deferred ``sync_accumulate``, the step completes (waiting replicas go on) once this
    request commits."""
    with _groups_lock:
        group = _groups.get(ctx.store, {}).get(global_step)
    if group is None:
        return
    with group.condition:
        if group.closed != before:
            return
        group.closed = None

    def reopen() -> None:
        with group.condition:
            group.closed = before
    ctx.journal.on_undo(reopen)
    ctx.journal.on_commit(lambda: group.complete(before))


def _layout(node: NodeDef) -> tuple[tuple[str, bool], ...]:
    names = str(node.attr("variables", "")).split(",")
    mask = str(node.attr("sparse", ""))
    if not names[0] or len(mask) != len(names) or set(mask) - {"0", "1"}:
        raise InvalidArgumentError(
            "sync_accumulate needs `variables` (comma-separated) and a `sparse` mask of 0/1 "
            "per variable")
    return tuple((name, flag == "1") for name, flag in zip(names, mask, strict=True))


def _gradients(ctx: Context, layout: tuple[tuple[str, bool], ...], inputs: list[Any],
               sums: list[Any] | None = None) -> list[Gradient]:
    """The request's gradients, checked against their variables' dtype and shape; with
    ``sums`` (a deferred step, whose variables live on other shards), against the sums of the
    step's earlier replicas instead (nothing to check for the first), the row indices where
    the gradients are applied."""
    if len(inputs) != sum(2 if sparse else 1 for _, sparse in layout):
        raise InvalidArgumentError("sync_accumulate: inputs do not match the variables")
    out: list[Gradient] = []
    it = iter(inputs)
    for i, (name, sparse) in enumerate(layout):
        values = np.asarray(next(it))
        what = f"sync_accumulate {clip(name)}"
        rows = 1 << 62  # checked where the gradient is applied
        if sums is None:
            var = ctx.store.get(name)
            dtype, shape, rows = var.dtype.np_dtype, var.shape, var.shape[0] if var.shape else 0
        else:
            earlier = sums[i][0][1] if isinstance(sums[i], list) else sums[i]
            if earlier is None:
                earlier = values
            dtype, shape = earlier.dtype, (0, *earlier.shape[1:]) if sparse else earlier.shape
        if values.dtype != dtype:
            raise InvalidArgumentError(
                f"{what}: gradient has dtype {dtypes.as_dtype(values.dtype).name}, variable "
                f"has dtype {dtypes.as_dtype(dtype).name}")
        if not sparse:
            if values.shape != shape:
                raise InvalidArgumentError(
                    f"{what}: gradient has shape {list(values.shape)}, variable "
                    f"{list(shape)}")
            out.append(values)
            continue
        if not shape:
            raise InvalidArgumentError(f"{what}: a sparse gradient needs rank >= 1")
        idx = _indices(next(it), rows, what)
        if idx.ndim != 1 or values.shape != idx.shape + tuple(shape[1:]):
            raise InvalidArgumentError(
                f"{what}: values of shape {list(values.shape)} do not fit indices of shape "
                f"{list(idx.shape)} into {list(shape)}")
        out.append((idx, values))
    return out


def _sync_accumulate(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """Adds one replica's gradients to the sums of step ``step`` of the node's global step.

    Attributes: ``step``, ``replicas``, ``variables``, ``sparse``, and ``deferred`` (1: the
    variables live on other shards and the global step's increment completes the step).
    Returns ``[status, generation]``: APPLIED when this replica completed the step, PENDING
    when others are still missing, STALE (gradients dropped) when ``step`` is not the global
    step or was closed already.
    """
    global_step = ctx.variable(node)
    current = global_step.read()
    if not global_step.dtype.is_integer or current.shape != ():
        raise InvalidArgumentError(f"sync_accumulate: {clip(global_step.name)} is not an integer "
                                   f"scalar")
    step, replicas = int(node.attr("step", -1)), int(node.attr("replicas", 0))
    if replicas < 1:
        raise InvalidArgumentError("sync_accumulate needs replicas >= 1")
    layout = _layout(node)
    deferred = bool(node.attr("deferred", 0))
    grads = None if deferred else _gradients(ctx, layout, inputs)
    group = sync_group(ctx.store, global_step.name)
    with group.condition:
        if step != int(current) or step == group.closed:
            group.dropped += 1
            ctx.journal.on_undo(group.undo_drop)
            log.info("dropped stale gradients of step %d (global step %d; %d dropped so far)",
                     step, int(current), group.dropped)
            return np.array([STALE, group.generation], np.int64)
        if group.step != step or group.layout != layout or group.replicas != replicas:
            sums = [None] * len(layout)
        else:
            sums = group.sums
        if grads is None:
            grads = _gradients(ctx, layout, inputs, sums)
        ctx.journal.on_undo(group.snapshot())
        if sums is not group.sums:
            group.reset(step, layout, replicas)
        for i, grad in enumerate(grads):
            # New arrays, never writes into the sums: the snapshot keeps the old ones.
            if isinstance(grad, tuple):
                group.sums[i] = (group.sums[i] or []) + [grad]
            elif group.sums[i] is None:
                group.sums[i] = grad.copy()
            else:
                group.sums[i] = group.sums[i] + grad
        group.count += 1
        generation = group.generation
        if group.count < replicas:
            return np.array([PENDING, generation], np.int64)
        group.means = [_mean(s, replicas) for s in group.sums]
        group.reset(step, layout, replicas)
        if deferred:
            group.closed = step
        else:
            # Waiting replicas go on only once this request has committed the step's update.
            ctx.journal.on_commit(lambda: group.complete(step))
        return np.array([APPLIED, generation], np.int64)


def _mean(total: Any, replicas: int) -> Gradient:
    if isinstance(total, list):
        indices = np.concatenate([i for i, _ in total])
        values = np.concatenate([v for _, v in total])
        return indices, (values / replicas).astype(values.dtype, copy=False)
    return (total / replicas).astype(total.dtype, copy=False)


def _sync_mean(ctx: Context, node: NodeDef, inputs: list[Any]) -> Any:
    """Gradient ``index`` of a step this request's ``sync_accumulate`` completed (``part``:
    ``dense``, ``indices`` or ``values``), or None when it did not complete one."""
    if int(np.asarray(inputs[0]).reshape(-1)[0]) != APPLIED:
        return None
    group = sync_group(ctx.store, ctx.variable(node).name)
    index, part = int(node.attr("index", -1)), node.attr("part", "dense")
    if not 0 <= index < len(group.means):
        raise InvalidArgumentError(f"sync_mean: no gradient {index}")
    mean = group.means[index]
    if part == "dense" and not isinstance(mean, tuple):
        return mean
    if part in ("indices", "values") and isinstance(mean, tuple):
        return mean[0] if part == "indices" else mean[1]
    raise InvalidArgumentError(f"sync_mean: gradient {index} has no part {part!r}")


def _sync_wait(ctx: Context, node: NodeDef, _: list[Any]) -> np.ndarray:
    """Blocks until a step of global step ``group`` completes after ``generation``; returns
    the global step then. Raises ``DeadlineExceededError`` after ``timeout`` seconds (cut to
    :data:`~varstore.server.waits.MAX_WAIT_SECONDS`) or at the call's deadline,
    ``InvalidArgumentError`` for a negative or NaN timeout, and what the request's waiter
    raises when the call is cancelled or the server stops."""
    group = sync_group(ctx.store, ctx.store.get(str(node.attr("group", "")), ctx.waiter).name)
    generation = int(node.attr("generation", 0))
    timeout = client_duration(node.attr("timeout", 0.0), "sync_wait's timeout")
    with group.condition:
        if not ctx.waiter.wait_for(group.condition, lambda: group.generation > generation,
                                   timeout):
            raise DeadlineExceededError(
                f"synchronous step {group.step}: {group.count} of {group.replicas} replicas "
                f"sent gradients within {timeout:g}s")
        return np.int64(group.applied_step)


OPS = {
    "sync_accumulate": OpDef(_sync_accumulate, None, uses_variable=True),
    "sync_mean": OpDef(_sync_mean, 1, uses_variable=True),
    "sync_wait": OpDef(_sync_wait, 0),
}
