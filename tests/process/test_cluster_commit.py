"""A cluster save commits as a server's save does: shard 0 killed (SIGKILL) at each step of
the commit leaves, after its restart, either the previous checkpoint of that name or the whole
new one, never a mix; directories in the way refuse the save before anything moves."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import folder_names, start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster_from
from varstore.server.bundle import BundleReader

# Steps of shard 0's commit of a 2-shard save (CheckpointFolder.commit): before the first
# data file's rename (the commit point), before the second's, before the index's.
STEPS = {"commit": "old", "data": "new", "index": "new"}


def _release_until(pauses: Path, stop: threading.Event, target: str | None) -> str | None:
    """Lets every paused step go on until ``target`` (a marker name) pauses; returns it."""
    while not stop.is_set():
        for marker in sorted(pauses.iterdir()):
            if marker.name == target:
                return target
            marker.unlink()
        time.sleep(0.005)
    return None


@pytest.mark.parametrize("step", sorted(STEPS))
def test_shard_0_killed_mid_commit_leaves_the_old_or_the_new_checkpoint(
        tmp_path: Path, step: str) -> None:
    folder, pauses = tmp_path / "ckpt", tmp_path / "pauses"
    pauses.mkdir()
    cluster = start_cluster_from(start_server_process(
        folder, "--shards", "2", env={"VARSTORE_TEST_PAUSE_DIR": str(pauses)}), 2)
    replacement = None
    stop = threading.Event()
    try:
        with connected(cluster.address) as client:
            handles = []
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    handles.append(client.Variable(np.full(1000, 1.0), name=f"w{shard}"))
            releaser = threading.Thread(target=_release_until, args=(pauses, stop, None))
            releaser.start()
            client.save("m")
            stop.set()
            releaser.join()
            for h in handles:
                h.assign(np.full(1000, 2.0))
            stop.clear()
            errors: list[BaseException] = []

            def save() -> None:
                try:
                    client.save("m")
                except vs.errors.OpError as e:
                    errors.append(e)
            saver = threading.Thread(target=save)
            saver.start()
            assert _release_until(pauses, stop, f"{step}-2") == f"{step}-2"
            os.kill(cluster.pids[0], signal.SIGKILL)
            saver.join()
            assert errors and isinstance(errors[0], vs.errors.UnavailableError)
        expected = 1.0 if STEPS[step] == "old" else 2.0
        # Before shard 0 finishes the commit at its restart, m reads whole: the old one before
        # the commit point, the new one (its files wherever they are) after it.
        with BundleReader(folder / "m") as reader:
            for key in ("w0", "w1"):
                np.testing.assert_array_equal(reader.read(key), np.full(1000, expected))
        replacement = start_server_process(
            folder, "--cluster", ",".join(cluster.addresses), "--task-index", "0",
            "--port", cluster.addresses[0].rpartition(":")[2])
        assert folder_names(folder) == [
            "checkpoint", "m.data-00000-of-00002", "m.data-00001-of-00002", "m.index"]
        with connected(cluster.address) as client:
            assert client.latest_checkpoint() == "m"
            with client.variable_scope("", reuse=vs.AUTO_REUSE):
                got = [client.get_variable(f"w{shard}", [1000], dtype=vs.float64,
                                           initializer=vs.zeros_initializer)
                       for shard in range(2)]
            for g in got:
                g.assign(np.zeros(1000))
            assert client.restore("m") == "m"
            for g in got:
                np.testing.assert_array_equal(g.numpy(), np.full(1000, expected))
    finally:
        stop.set()
        for marker in pauses.iterdir():
            marker.unlink()
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_a_directory_in_the_way_refuses_the_cluster_save_before_anything_moves(
        tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    cluster = start_cluster_from(start_server_process(folder, "--shards", "2"), 2)
    try:
        with connected(cluster.address) as client:
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    client.Variable(np.full(4, float(shard)), name=f"w{shard}")
            client.save("m")
            # Any client can make a directory where a data file of "n" would go.
            client.save("n.data-00001-of-00002/x")
            before = folder_names(folder)
            with pytest.raises(vs.errors.InvalidArgumentError,
                               match="cannot write checkpoint n: n.data-00001-of-00002 is a "
                                     "directory or no regular file"):
                client.save("n")
            assert folder_names(folder) == before
            assert client.latest_checkpoint() == "m"
    finally:
        stop_server_process(cluster.server)


@pytest.mark.parametrize("step", sorted(STEPS))
def test_a_reader_opened_mid_commit_reads_one_checkpoint_whole(tmp_path: Path,
                                                                step: str) -> None:
    # A reader in another process (a shard's restore, the CLI) opened just before shard 0's
    # commit point and reading after it got the old index with the new data file:
    # DataLossError, checksum mismatch (attack4 10).
    folder, pauses = tmp_path / "ckpt", tmp_path / "pauses"
    pauses.mkdir()
    cluster = start_cluster_from(start_server_process(
        folder, "--shards", "2", "--no-save-on-exit",
        env={"VARSTORE_TEST_PAUSE_DIR": str(pauses)}), 2)
    stop = threading.Event()
    try:
        with connected(cluster.address) as client:
            handles = []
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    handles.append(client.Variable(np.full(1 << 18, 1.0), name=f"w{shard}"))
            releaser = threading.Thread(target=_release_until, args=(pauses, stop, None))
            releaser.start()
            client.save("m")
            stop.set()
            releaser.join()
            for h in handles:
                h.assign(np.full(1 << 18, 2.0))
            stop.clear()
            saver = threading.Thread(target=client.save, args=("m",))
            saver.start()
            assert _release_until(pauses, stop, f"{step}-2") == f"{step}-2"
            with BundleReader(folder / "m") as reader:
                releaser = threading.Thread(target=_release_until, args=(pauses, stop, None))
                releaser.start()
                saver.join()
                stop.set()
                releaser.join()
                assert folder_names(folder) == [
                    "checkpoint", "m.data-00000-of-00002", "m.data-00001-of-00002", "m.index"]
                expected = 1.0 if STEPS[step] == "old" else 2.0
                for key in ("w0", "w1"):
                    np.testing.assert_array_equal(reader.read(key), np.full(1 << 18, expected))
    finally:
        stop.set()
        for marker in pauses.iterdir():
            marker.unlink()
        stop_server_process(cluster.server)
