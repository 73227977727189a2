"""``tf.device`` and ``tf.train.replica_device_setter``: which ps task holds each variable.

As in TensorFlow (``python/framework/ops.py``'s ``Graph.device`` and
``python/training/device_setter.py``), every op records the device of the ``device`` blocks
around its creation; a device is a string such as ``"/job:ps/task:2"`` or a function of the
op returning one. On a varstore cluster (:mod:`varstore.cluster`) a variable whose device names
``task:K`` is placed on shard K; the other variables are placed by the cluster (balanced by
bytes), and on a single server devices change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from varstore.common import codec

# The op types TensorFlow's replica_device_setter sends to the ps tasks by default.
STANDARD_PS_OPS = ("Variable", "VariableV2", "AutoReloadVariable", "MutableHashTable",
                   "MutableHashTableV2", "MutableHashTableOfTensors",
                   "MutableHashTableOfTensorsV2", "MutableDenseHashTable",
                   "MutableDenseHashTableV2", "VarHandleOp", "BoostedTreesEnsembleResourceHandleOp",
                   "BoostedTreesQuantileStreamResourceHandleOp", "ResourceConditionalAccumulator",
                   "DecisionTreeResource")


def _fields(device: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for piece in device.split("/"):
        key, sep, value = piece.partition(":")
        if sep:
            fields[key.lower()] = value
    return fields


def merge_device(outer: str, inner: str) -> str:
    """``inner``'s fields over ``outer``'s, as nested ``tf.device`` blocks merge
    (``"/job:ps"`` then ``"/task:1"`` is ``"/job:ps/task:1"``)."""
    fields = {**_fields(outer), **_fields(inner)}
    return "".join(f"/{key}:{fields[key]}" for key in ("job", "replica", "task", "device")
                   if key in fields)


def resolve_device(functions: Sequence[Any], op: Any) -> str:
    """The device of ``op`` under the ``device`` blocks ``functions`` (outermost first); a
    ``None`` block clears the ones outside it."""
    device = ""
    for spec in functions:
        if spec is None:
            device = ""
            continue
        value = spec(op) if callable(spec) else spec
        device = merge_device(device, value or "")
    return device


def byte_size_load_fn(op: Any) -> int:
    """The bytes of ``op``'s first output, TF 1.x's ``tf.contrib.training.byte_size_load_fn``
    for variables."""
    output = op.outputs[0]
    return codec.num_elements(output.shape.as_list()) * max(output.dtype.itemsize, 1)


class GreedyLoadBalancingStrategy:
    """Puts each variable on the ps task with the least load so far (``load_fn`` of the
    op, bytes by default), as TF 1.x's ``tf.contrib.training.GreedyLoadBalancingStrategy``
    (``contrib/training/python/training/device_setter.py``); a ``ps_strategy`` for
    :func:`replica_device_setter`."""

    def __init__(self, num_tasks: int, load_fn: Callable[[Any], int] = byte_size_load_fn
                 ) -> None:
        self._load_fn = load_fn
        self._loads = [0] * num_tasks

    def __call__(self, op: Any) -> int:
        task = min(range(len(self._loads)), key=lambda t: (self._loads[t], t))
        self._loads[task] += self._load_fn(op)
        return task


class _RoundRobinStrategy:
    def __init__(self, num_tasks: int) -> None:
        self._num_tasks = num_tasks
        self._next = 0

    def __call__(self, op: Any) -> int:
        task = self._next
        self._next = (self._next + 1) % self._num_tasks
        return task


def replica_device_setter(ps_tasks: int = 0, ps_device: str = "/job:ps",
                          worker_device: str = "/job:worker", merge_devices: bool = True,
                          cluster: Any = None, ps_ops: Sequence[str] | None = None,
                          ps_strategy: Callable[[Any], int] | None = None
                          ) -> Callable[[Any], str] | None:
    """A device function for ``tf.device`` that puts variables on the ps tasks (round-robin,
    or by ``ps_strategy``) and other ops on ``worker_device``, as TensorFlow's.

    ``cluster`` (a dict of job name to addresses, or an object with ``as_dict()``) gives the
    ps task count. Returns None when there are no ps tasks. Raises ``TypeError`` for a
    ``ps_strategy`` that is not callable.
    """
    if cluster is not None:
        jobs = cluster.as_dict() if hasattr(cluster, "as_dict") else dict(cluster)
        ps_tasks = len(jobs.get(ps_device.split("/")[1].partition(":")[2] or "ps", []))
    if ps_tasks == 0:
        return None
    if ps_strategy is None:
        ps_strategy = _RoundRobinStrategy(ps_tasks)
    if not callable(ps_strategy):
        raise TypeError("ps_strategy must be callable")
    ops = tuple(STANDARD_PS_OPS if ps_ops is None else ps_ops)

    def choose(op: Any) -> str:
        current = getattr(op, "device", "") if merge_devices else ""
        if op.type in ops:
            return merge_device(f"{ps_device}/task:{ps_strategy(op)}", current)
        return merge_device(worker_device, current)
    return choose
