"""Devices as TensorFlow assigns them: ``tf.device`` blocks (strings, nesting, None,
functions) and ``tf.train.replica_device_setter`` (round-robin over the ps tasks, or a
``ps_strategy``), compared with ``tf.compat.v1`` op by op. On a cluster the task a variable's device
names is the shard it lives on (tests/process/test_cluster.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.interop.fidelity import Programs, check

PROGRAMS = Programs()


def _devices(ops: list[Any]) -> list[list[str]]:
    return [[op.name, op.device] for op in ops]


@PROGRAMS.graph
def device_blocks_nest_and_merge(tf: Any, env: Any) -> Any:
    with tf.device("/job:ps"):
        a = tf.Variable(1.0, name="a")
        with tf.device("/task:2"):
            b = tf.Variable(2.0, name="b")
            c = a + b
        with tf.device("/job:worker/task:1"):
            d = tf.Variable(3.0, name="d")
        with tf.device(None):
            e = tf.Variable(4.0, name="e")
    f = tf.Variable(5.0, name="f")
    return _devices([a.op, b.op, c.op, d.op, e.op, f.op])


@PROGRAMS.graph
def replica_device_setter_round_robin(tf: Any, env: Any) -> Any:
    with tf.device(tf.train.replica_device_setter(ps_tasks=3)):
        variables = [tf.Variable(float(i), name=f"v{i}") for i in range(5)]
        total = variables[0] + variables[1]
        with tf.device("/job:ps/task:2"):
            pinned = tf.Variable(0.0, name="pinned")
    return _devices([*(v.op for v in variables), total.op, pinned.op])


@PROGRAMS.graph
def replica_device_setter_strategy_and_cluster(tf: Any, env: Any) -> Any:
    def by_rows(op: Any) -> int:  # a custom ps_strategy sees the variable op
        return 1 if op.outputs[0].shape.as_list()[0] > 100 else 0
    with tf.device(tf.train.replica_device_setter(ps_tasks=2, ps_strategy=by_rows)):
        sizes = [(1000, 10), (10, 10), (500, 10)]
        variables = [tf.get_variable(f"w{i}", shape=s) for i, s in enumerate(sizes)]
    cluster = {"ps": ["a:1", "b:1", "c:1", "d:1"], "worker": ["w:1"]}
    with tf.device(tf.train.replica_device_setter(cluster=cluster)):
        spread = [tf.Variable(1.0, name=f"s{i}") for i in range(5)]
    return _devices([v.op for v in variables + spread])


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
