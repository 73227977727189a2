"""A cluster's own saves (real shard processes): the periodic checkpoint of the whole cluster
(`--save-every`, shard 0), its retention and final save, and start-up clean-up of a restarted
shard that leaves the other shards' saves in progress alone."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster, start_cluster_from

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


def _wait_for(what: str, found: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not found():
        assert time.monotonic() < deadline, f"still no {what}"
        time.sleep(0.1)


def _timer_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("model.ckpt-"))


def _cluster_checkpoint(step: int) -> list[str]:
    return [f"model.ckpt-{step}.data-00000-of-00002", f"model.ckpt-{step}.data-00001-of-00002",
            f"model.ckpt-{step}.index"]


def test_save_every_writes_the_whole_cluster_and_keeps_its_own_newest(tmp_path: Path) -> None:
    from varstore.server.bundle import BundleReader
    folder = tmp_path / "ckpt"
    server = start_server_process(folder, "--shards", "2", "--save-every", "0.2", "--keep", "2")
    cluster = start_cluster_from(server, 2)
    try:
        with connected(cluster.address) as client:
            with client.device("/job:ps/task:1"):
                step = client.Variable(np.int64(5), name="global_step")
            with client.device("/job:ps/task:0"):
                w = client.Variable(np.zeros(3), name="w")
            assert client.save("mine", global_step=1) == "mine-1"  # a client's, never deleted
            for n in (6, 7, 8):
                w.assign(np.full(3, float(n)))  # first: every model.ckpt-n holds w = n
                step.assign(np.int64(n))
                index = folder / f"model.ckpt-{n}.index"
                _wait_for(index.name, index.exists)
            # The timer keeps its newest 2 (7 and 8), whole, and no one else's goes.
            _wait_for("retention", lambda: _timer_files(folder) ==
                      _cluster_checkpoint(7) + _cluster_checkpoint(8))
            assert (folder / "mine-1.index").exists()
            with BundleReader(folder / "model.ckpt-8") as reader:
                assert int(reader.read("global_step")) == 8
                np.testing.assert_array_equal(reader.read("w"), np.full(3, 8.0))
            step.assign(np.int64(9))
        server.process.send_signal(signal.SIGINT)
        server.process.communicate(timeout=120)
        assert server.process.returncode == 0
        # The final checkpoint (or a last period's) is the timer's too: 9 pushes 7 out.
        assert _timer_files(folder) == _cluster_checkpoint(8) + _cluster_checkpoint(9)
    finally:
        stop_server_process(server)


def test_a_restored_cluster_timer_writes_only_after_a_change(tmp_path: Path) -> None:
    # Nothing changed, nothing written: as on one server, the restore counts as saved.
    folder = tmp_path / "ckpt"
    server = start_server_process(folder, "--shards", "2")
    with connected(start_cluster_from(server, 2).address) as client:
        for shard in range(2):
            with client.device(f"/job:ps/task:{shard}"):
                client.Variable(np.zeros(3), name=f"w{shard}")
    server.process.send_signal(signal.SIGINT)
    server.process.communicate(timeout=120)
    assert _timer_files(folder) == _cluster_checkpoint(1)
    server = start_server_process(folder, "--shards", "2", "--restore", "latest",
                                  "--save-every", "0.1")
    try:
        with connected(start_cluster_from(server, 2).address) as client:
            time.sleep(1.0)  # periods of the timer while the cluster is idle
            with client.variable_scope("", reuse=True):
                client.get_variable("w1", [3], dtype=vs.float64).assign(np.ones(3))
            _wait_for("model.ckpt-2", (folder / "model.ckpt-2.index").exists)
        server.process.send_signal(signal.SIGINT)
        _, err = server.process.communicate(timeout=120)
        assert server.process.returncode == 0
        # The idle periods wrote nothing (the counter would have passed 2), nor did the exit.
        assert _timer_files(folder) == _cluster_checkpoint(1) + _cluster_checkpoint(2)
        assert "--restore latest restores: nothing to save on exit" in err
    finally:
        stop_server_process(server)


def test_every_shard_takes_save_every_and_shard_0_saves(tmp_path: Path) -> None:
    # A StatefulSet gives every shard the same flags: shard 1 serves, with its timer off.
    from varstore.server.shards import free_ports
    ports = free_ports("127.0.0.1", 2)
    shard = start_server_process(
        tmp_path, "--cluster", ",".join(f"127.0.0.1:{p}" for p in ports), "--task-index", "1",
        "--port", str(ports[1]), "--save-every", "0.1")
    stop_server_process(shard)
    _, err = shard.process.communicate(timeout=60)
    assert shard.process.returncode == 0
    assert "--save-every: shard 0's timer saves the whole cluster; this shard writes its " \
        "part then" in err
    assert not list(tmp_path.glob("model.ckpt*"))


def test_a_client_that_does_not_route_cannot_save_one_shard_alone(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    cluster = start_cluster(folder, 2)
    try:
        with connected(cluster.address) as client:
            with pytest.raises(vs.errors.FailedPreconditionError, match="^No variables to save$"):
                client.save("model")  # as one server says it
            with client.device("/job:ps/task:1"):
                client.Variable(1.0, name="v")
        for address in cluster.addresses:
            with vs.Client(address) as plain:
                with pytest.raises(vs.errors.FailedPreconditionError, match=(
                        "^cannot save on one shard of a cluster of 2: the checkpoint would hold "
                        "this shard's variables only; connect with varstore.connect")):
                    plain.save("model")
        assert not folder.exists() or not list(folder.glob("model*"))
    finally:
        stop_server_process(cluster.server)
