"""A cluster's own saves (real shard processes): the periodic checkpoint of the whole cluster
(`--save-every`, shard 0), its retention and final save, and start-up clean-up of a restarted
shard that leaves the other shards' saves in progress alone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from tests.conftest import start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster

# An unfinished save of a 2-shard cluster as the folder shows it mid-way: each shard writes
# part I of its own (a file being written, then the part's finished files).
PART = "model.ckpt-7.tempstate0badc0de_part-{:05d}-of-{:05d}"


def _plant_parts(folder: Path, index: int, count: int) -> list[str]:
    part = PART.format(index, count)
    names = [f"{part}.index", f"{part}.data-00000-of-00001",
             f"{part}.data-00000-of-00001.tempstate-vs{1234 + index}"]
    for name in names:
        (folder / name).write_bytes(b"in progress")
    return names


def test_a_restarted_shard_removes_only_its_own_unfinished_parts(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    cluster = start_cluster(folder, 2)
    restarted = []
    try:
        with connected(cluster.address) as client:
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    client.Variable(np.full(4, float(shard)), name=f"w{shard}")
            # Shard 1 is writing its part of a save when shard 0 is killed and restarted.
            folder.mkdir(exist_ok=True)
            shard1_parts = _plant_parts(folder, 1, 2)
            shard0_parts = _plant_parts(folder, 0, 2)
            old_cluster_parts = _plant_parts(folder, 2, 3)  # a 3-shard cluster's, long gone
            os.kill(cluster.pids[0], signal.SIGKILL)
            restarted.append(start_server_process(
                folder, "--cluster", ",".join(cluster.addresses), "--task-index", "0",
                "--port", cluster.addresses[0].rpartition(":")[2]))
            left = {p.name for p in folder.iterdir()}
            assert set(shard1_parts) <= left
            assert not (set(shard0_parts) | set(old_cluster_parts)) & left
            # Then shard 1 restarts: its own abandoned part goes.
            os.kill(cluster.pids[1], signal.SIGKILL)
            restarted.append(start_server_process(
                folder, "--cluster", ",".join(cluster.addresses), "--task-index", "1",
                "--port", cluster.addresses[1].rpartition(":")[2]))
            assert not set(shard1_parts) & {p.name for p in folder.iterdir()}
        with connected(cluster.address) as client:
            client.Variable(np.arange(3.0), name="after")
            assert client.save("model.ckpt", global_step=8) == "model.ckpt-8"
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith("model")) == [
            "model.ckpt-8.data-00000-of-00002", "model.ckpt-8.data-00001-of-00002",
            "model.ckpt-8.index"]
    finally:
        for process in restarted:
            stop_server_process(process)
        stop_server_process(cluster.server)
