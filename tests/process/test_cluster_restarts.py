"""Shards started or restarted with ``--restore``: a checkpoint of another shard count
(resharding as deploy/README documents it) leaves the shards serving for the client restore,
and a restarted shard restores only the variables shard 0's table places on it now."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import ServerProcess, start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster
from varstore.server.shards import free_ports


def start_shards(folder: Path, count: int, *flags: str) -> list[ServerProcess]:
    """``count`` shards started one by one as the manifests start them (``--cluster``,
    ``--task-index``, ``flags``), on free ports of this machine."""
    addresses = [f"127.0.0.1:{p}" for p in free_ports("127.0.0.1", count)]
    shards: list[ServerProcess] = []
    try:
        for i, address in enumerate(addresses):
            shards.append(start_server_process(
                folder, "--cluster", ",".join(addresses), "--task-index", str(i),
                "--port", address.rpartition(":")[2], *flags))
    except BaseException:
        for shard in shards:
            stop_server_process(shard)
        raise
    return shards


def stopped_log(server: ServerProcess) -> str:
    """What ``server`` logged, once stopped (SIGTERM)."""
    stop_server_process(server)
    assert server.process.stderr is not None
    return server.process.stderr.read()


def _values(client: vs.Client, count: int) -> dict[str, float]:
    with client.variable_scope("", reuse=vs.AUTO_REUSE):
        return {f"v{i}": float(client.get_variable(f"v{i}", [10],
                                                    initializer=vs.zeros_initializer
                                                    ).numpy()[0])
                for i in range(count)}


def test_resharding_with_restore_latest_starts_the_shards_for_the_client_restore(
        tmp_path: Path) -> None:
    # deploy/README: change the shard count, then restore from a client. The manifests start
    # every shard with --restore latest, and every shard exited at start ("it has 3 data
    # files, the cluster 2 shards"): no shard served for that restore, a crash loop.
    folder = tmp_path / "ckpt"
    three = start_cluster(folder, 3)
    try:
        with connected(three.address) as client:
            for i in range(4):
                client.Variable(np.full(10, i + 1.0, np.float32), name=f"v{i}")
            assert client.save("model.ckpt", global_step=1) == "model.ckpt-1"
    finally:
        stop_server_process(three.server)
    # An explicit prefix of another shard count stays an error at start.
    with pytest.raises(RuntimeError, match=r"cannot restore 'model.ckpt-1' on shard 0: it has "
                                           r"3 data files, the cluster 2 shards; restore it "
                                           r"from a client \(`varstore restore model.ckpt-1`\)"):
        start_shards(folder, 2, "--restore", "model.ckpt-1")
    # One server restores a checkpoint of any shard count whole.
    single = start_server_process(folder, "--restore", "latest")
    try:
        with vs.Client(single.address) as client:
            assert _values(client, 4) == {"v0": 1.0, "v1": 2.0, "v2": 3.0, "v3": 4.0}
            assert client.save("single") == "single"  # one data file, now the latest
    finally:
        stop_server_process(single)
    shards = start_shards(folder, 2, "--restore", "latest")
    try:
        with connected(shards[0].address) as client:
            assert client.list_variables() == []
            assert client.latest_checkpoint() == "single"
            assert client.restore("single") == "single"
            assert _values(client, 4) == {"v0": 1.0, "v1": 2.0, "v2": 3.0, "v3": 4.0}
            assert sorted(client.shard_of(f"v{i}") for i in range(4)) == [0, 0, 1, 1]
    finally:
        logs = [stopped_log(shard) for shard in shards]
    for i, log in enumerate(logs):
        assert ("--restore latest: the latest checkpoint single has 1 data files, the cluster "
                "2 shards: this shard starts empty; restore it from a client (`varstore "
                "restore single`)") in log, (i, log)
