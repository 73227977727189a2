"""Shards started or restarted with ``--restore``: a checkpoint of another shard count
(resharding as deploy/README documents it) leaves the shards serving for the client restore,
and a restarted shard restores only the variables shard 0's table places on it now."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import ServerProcess, start_server_process, stop_server_process
from tests.process.test_cluster import Cluster, connected, shard_contents, start_cluster
from tests.process.test_cluster_recovery import restart_shard
from varstore.cluster import ClusterClient
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


ZBIG = np.arange(1000, dtype=np.float32)


def _replaced_layout(cluster: Cluster, client: ClusterClient) -> vs.RemoteVariable:
    """Saves model.ckpt-1 with zbig on shard 0 and a = 7 on shard 1, then gives the cluster
    another layout without a save: the variables deleted and created again the other way
    round (model code creating them in another order), and the checkpoint restored from the
    client, as documented; a = 12 after an acknowledged addition."""
    with client.device("/job:ps/task:0"):
        client.Variable(ZBIG, name="zbig")
    with client.device("/job:ps/task:1"):
        client.Variable(np.float32(7.0), name="a")
    assert client.save("model.ckpt", global_step=1) == "model.ckpt-1"
    client.reset()
    with client.device("/job:ps/task:0"):
        a = client.get_variable("a", [], initializer=vs.zeros_initializer)
    with client.device("/job:ps/task:1"):
        client.get_variable("zbig", [1000], initializer=vs.zeros_initializer)
    assert client.restore("model.ckpt-1") == "model.ckpt-1"
    a.assign_add(5.0)
    assert shard_contents(cluster) == [["a"], ["zbig"]]
    return a


def _check_one_of_each(cluster: Cluster) -> None:
    """A fresh worker finds one a (12, acknowledged on shard 0) and one zbig, and the
    cluster saves (a second variable of one name fails every save)."""
    assert shard_contents(cluster) == [["a"], ["zbig"]]
    with connected(cluster.addresses[1]) as worker:
        with worker.variable_scope("", reuse=vs.AUTO_REUSE):
            a = worker.get_variable("a", [], initializer=vs.zeros_initializer)
            zbig = worker.get_variable("zbig", [1000], initializer=vs.zeros_initializer)
        assert float(a.numpy()) == 12.0
        np.testing.assert_array_equal(zbig.numpy(), ZBIG)
        assert worker.save("after") == "after"


def test_a_shard_restarted_after_a_client_restore_restores_what_the_table_places_on_it(
        tmp_path: Path) -> None:
    # The restarted shard 1 restored data file 1 of the latest checkpoint, written with the
    # old layout: a second a (7, beside shard 0's 12), and zbig, now shard 1's, gone.
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address) as client:
            _replaced_layout(cluster, client)
        replacement = restart_shard(cluster, 1, "--restore", "latest")
        _check_one_of_each(cluster)
    finally:
        if replacement is not None:
            log = stopped_log(replacement)
        stop_server_process(cluster.server)
    assert ("restoring model.ckpt-1 at start-up: 1 variables of it live on other shards now "
            "(a), placed there since it was written; this shard leaves them alone") in log
    assert "restored this shard's 1 variables of model.ckpt-1" in log


def test_a_restarted_shard_0_restores_no_variable_another_shard_holds(tmp_path: Path) -> None:
    # Shard 0's table is new after its restart and knows no name: it restored zbig of its
    # data file while shard 1 held zbig. It asks the shards now: zbig is shard 1's.
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address) as client:
            _replaced_layout(cluster, client)
            assert client.save("model.ckpt", global_step=2) == "model.ckpt-2"  # a = 12
            client.reset()  # the old layout again, with no save
            with client.device("/job:ps/task:0"):
                client.get_variable("zbig", [1000], initializer=vs.zeros_initializer)
            with client.device("/job:ps/task:1"):
                a = client.get_variable("a", [], initializer=vs.zeros_initializer)
            assert client.restore("model.ckpt-2") == "model.ckpt-2"
            a.assign_add(1.0)
        replacement = restart_shard(cluster, 0, "--restore", "latest")
        # Data file 0 of model.ckpt-2 holds a, which shard 1 holds: not restored; zbig,
        # which lay in data file 1, is no name shard 0 can tell is its own.
        assert shard_contents(cluster) == [[], ["a"]]
        with connected(cluster.addresses[1]) as worker:
            with worker.variable_scope("", reuse=vs.AUTO_REUSE):
                assert float(worker.get_variable("a", []).numpy()) == 13.0
            assert [v.name for v in worker.list_variables()] == ["a"]
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)
