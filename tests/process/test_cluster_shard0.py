"""A cluster whose shard 0 is down (real shard processes): what shard 0 alone does (placing
new variables, committing saves, reading checkpoints for restores) fails with an
``UnavailableError`` that says so and what to do; the other shards keep serving."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import stop_server_process
from tests.process.test_cluster import connected, start_cluster
from varstore.errors import UnavailableError

WHAT_TO_DO = r"restart it \(the same --cluster, --task-index 0, --restore latest\)$"


def test_shard_0_down_is_named_with_what_it_does(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    try:
        with connected(cluster.address, timeout=5) as client:
            handles = []
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    handles.append(client.Variable(float(shard), name=f"v{shard}"))
            client.save("model")
            os.kill(cluster.pids[0], signal.SIGKILL)
            handles[1].assign_add(1.0)
            assert float(handles[1].numpy()) == 2.0
            with pytest.raises(UnavailableError, match="^shard 0 of 2: "):
                handles[0].numpy()
            with pytest.raises(UnavailableError, match=(
                    "^shard 0 of 2, which keeps the placement table, is unavailable: .*"
                    f"Variables this client already used on the other shards keep working; .*"
                    f"{WHAT_TO_DO}")):
                client.Variable(3.0, name="new")
            with pytest.raises(UnavailableError, match="^shard 0 of 2"):
                client.save("model")
            with pytest.raises(UnavailableError, match=(
                    f"^shard 0 of 2, which reads checkpoints for restores, .*{WHAT_TO_DO}")):
                client.restore("model")
        # A worker connecting through shard 1 learns the cluster, then needs the table.
        with connected(cluster.addresses[1], timeout=5) as worker:
            with pytest.raises(UnavailableError, match=(
                    f"^shard 0 of 2, which keeps the placement table, .*{WHAT_TO_DO}")):
                with worker.variable_scope("", reuse=True):
                    worker.get_variable("v1", shape=())
    finally:
        stop_server_process(cluster.server)
