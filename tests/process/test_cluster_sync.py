"""Synchronous training (``SyncReplicasOptimizer``) on a cluster of real shard processes whose
trained variables live on other shards than the global step: N workers give exactly the
values the same workers give on one server."""

from __future__ import annotations

import json
import subprocess
import sys
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
