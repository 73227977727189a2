"""Synchronous training (``SyncReplicasOptimizer``) on a cluster of real shard processes whose
trained variables live on other shards than the global step: N workers give exactly the
values the same workers give on one server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster

REPLICAS, STEPS = 3, 4
WORKER = """
import json, sys
import numpy as np
import varstore as vs

address, replica, replicas, steps = sys.argv[1], *(int(a) for a in sys.argv[2:5])
with vs.connect(address) as client:
    with client.variable_scope("", reuse=True):
        w = client.get_variable("W", [3])
        e = client.get_variable("E", [4, 2])
        step = client.get_variable("global_step", [], dtype=vs.int64)
    opt = vs.train.SyncReplicasOptimizer(vs.train.AdamOptimizer(0.1), replicas, timeout=60)
    seen = []
    for _ in range(steps):
        w_now, local_step = client.pull([w, step])
        grad_w = np.full(3, replica + 1.0) * (int(local_step) + 1) + np.round(w_now * 8)
        rows = np.full((1, 2), float(replica))
        seen.append(client.apply_gradients(opt, {w: grad_w, e: ([replica % 4], rows)},
                                           global_step=step, local_step=int(local_step)))
print(json.dumps(seen))
"""


def _train(address: str, placed: dict[str, int]) -> dict[str, np.ndarray]:
    """Creates the model (each variable on its ``placed`` shard, on a cluster), trains it
    with REPLICAS worker processes and returns every variable's value."""
    with vs.connect(address) as chief:
        for name, make in (("W", lambda: chief.get_variable(
                               "W", [3], initializer=vs.zeros_initializer)),
                           ("E", lambda: chief.get_variable(
                               "E", [4, 2], initializer=vs.ones_initializer)),
                           ("global_step", lambda: vs.train.get_or_create_global_step(chief))):
            device = getattr(chief, "device", None)
            if device is None:
                make()
                continue
            with device(f"/job:ps/task:{placed[name]}"):
                make()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), str(REPLICAS),
                                 str(STEPS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(REPLICAS)]
    for proc in workers:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out) == list(range(1, STEPS + 1))
    with vs.connect(address) as reader:
        infos = reader.list_variables()
        with reader.variable_scope("", reuse=True):
            handles = [reader.get_variable(v.name, v.shape, dtype=v.dtype) for v in infos]
        return {v.name: value for v, value in zip(infos, reader.pull(handles), strict=True)}


def test_synchronous_steps_across_shards_match_one_server(tmp_path: Path) -> None:
    single = start_server_process(tmp_path / "one")
    try:
        expected = _train(single.address, {})
    finally:
        stop_server_process(single)
    assert int(expected["global_step"]) == STEPS
    for placed in ({"W": 0, "E": 1, "global_step": 1}, {"W": 1, "E": 0, "global_step": 0}):
        cluster = start_cluster(tmp_path / f"cluster{placed['W']}", 2)
        try:
            got = _train(cluster.address, placed)
            with connected(cluster.address) as client:
                assert [client.shard_of(n) for n in ("W", "E", "global_step")] == [
                    placed["W"], placed["E"], placed["global_step"]]
        finally:
            stop_server_process(cluster.server)
        assert sorted(got) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_a_shard_failing_mid_step_fails_that_replica_and_releases_the_others(
        tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    try:
        with connected(cluster.address, timeout=5) as a, \
                connected(cluster.address, timeout=5) as b:
            with a.device("/job:ps/task:0"):
                step = vs.train.get_or_create_global_step(a)
            with a.device("/job:ps/task:1"):
                w = a.get_variable("W", [2], initializer=vs.zeros_initializer)
            with b.variable_scope("", reuse=True):
                w_b = b.get_variable("W", [2])
                step_b = b.get_variable("global_step", [], dtype=vs.int64)
            opt = vs.train.SyncReplicasOptimizer(vs.train.GradientDescentOptimizer(1.0), 2,
                                                 timeout=60)
            outcomes: dict[str, object] = {}

            def replica_a() -> None:
                try:
                    outcomes["a"] = a.apply_gradients(opt, {w: np.ones(2, np.float32)},
                                                      global_step=step, local_step=0)
                except vs.errors.OpError as e:
                    outcomes["a"] = e
            waiter = threading.Thread(target=replica_a)
            waiter.start()
            with vs.Client(cluster.addresses[0]) as shard0:  # replica a waits on shard 0
                deadline = time.monotonic() + 60
                while shard0.status().requests_in_flight < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            os.kill(cluster.pids[1], signal.SIGKILL)
            try:
                outcomes["b"] = b.apply_gradients(opt, {w_b: np.ones(2, np.float32)},
                                                  global_step=step_b, local_step=0)
            except vs.errors.OpError as e:
                outcomes["b"] = e
            waiter.join(timeout=60)
            # The replica that completed the step (b, unless a's request was still on its way)
            # fails naming the shard; the other is released: the global step moved on.
            failed = [v for v in outcomes.values() if isinstance(v, vs.errors.OpError)]
            assert len(failed) == 1 and isinstance(failed[0], vs.errors.UnavailableError)
            assert failed[0].message.startswith("shard 1 of 2: ")
            assert [v for v in outcomes.values() if v not in failed] == [1]
            assert int(step.numpy()) == 1
    finally:
        stop_server_process(cluster.server)
