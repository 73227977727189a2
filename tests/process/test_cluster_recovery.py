"""Clusters whose shards restart: shard 0's placement table never places afresh a name a
shard holds (a restarted shard 0, a cluster resumed with --restore latest), and shards create
no variable for clients that do not route by the table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import varstore as vs
from tests.conftest import ServerProcess, start_server_process, stop_server_process
from tests.process.test_cluster import (
    Cluster,
    connected,
    shard_contents,
    start_cluster,
    start_cluster_from,
)
from varstore.cluster import ClusterClient
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc


def restart_shard(cluster: Cluster, task: int, *flags: str, kill: bool = True) -> ServerProcess:
    """Kills shard ``task`` (SIGKILL; not with ``kill`` off: it stopped) and starts it again
    with the same address."""
    if kill:
        os.kill(cluster.pids[task], signal.SIGKILL)
    return start_server_process(
        cluster.server.checkpoint_dir, "--cluster", ",".join(cluster.addresses),
        "--task-index", str(task), "--port", cluster.addresses[task].rpartition(":")[2], *flags)


def _model(client: ClusterClient) -> vs.RemoteVariable:
    """``big`` on shard 0 and ``v`` on shard 1 (pinned), v = 10 after ten additions."""
    with client.device("/job:ps/task:0"):
        client.get_variable("big", [1000], initializer=vs.zeros_initializer)
    with client.device("/job:ps/task:1"):
        v = client.get_variable("v", [], initializer=vs.zeros_initializer)
    for _ in range(10):
        v.assign_add(1.0)
    return v


def test_a_restarted_shard_0_binds_new_workers_to_the_variables_the_shards_hold(
        tmp_path: Path) -> None:
    # Shard 0's table lived in memory only: after its restart, a new worker's get_variable("v")
    # placed v afresh on shard 0 and created a second v there, at 0 (A's ten additions
    # invisible), and every cluster save failed on the duplicate key.
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address) as a:
            v = _model(a)
            replacement = restart_shard(cluster, 0)
            with connected(cluster.address) as b:  # the same model code, nothing cached
                vb = b.get_variable("v", [], initializer=vs.zeros_initializer)
                assert vb.numpy() == 10.0
                vb.assign_add(5.0)
                assert v.numpy() == 15.0
                assert b.shard_of("v") == 1
                # big went with shard 0's memory; a new big is placed, on the emptier shard 0.
                b.get_variable("big", [1000], initializer=vs.zeros_initializer)
                assert [x.name for x in b.list_variables()] == ["big", "v"]
                assert b.save("model") == "model"

            async def aio_worker() -> float:  # the asyncio cluster client finds it too
                import varstore.aio
                c = await varstore.aio.connect(cluster.addresses[1])
                try:
                    vc = await c.get_variable("v", [], initializer=vs.zeros_initializer)
                    return float(await vc.numpy())
                finally:
                    await c.close()
            assert asyncio.run(aio_worker()) == 15.0
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_a_cluster_resumed_with_restore_latest_finds_every_restored_variable(
        tmp_path: Path) -> None:
    # The documented resume (`serve --shards N --restore latest`): shard 1 restored v = 10,
    # but the new table placed the worker's get_variable("v") on shard 0 as a new v = 0.
    folder = tmp_path / "ckpt"
    cluster = start_cluster(folder, 2)
    with connected(cluster.address) as client:
        _model(client)
    cluster.server.process.send_signal(signal.SIGTERM)
    assert cluster.server.process.wait(timeout=60) == 0
    resumed = start_cluster_from(
        start_server_process(folder, "--shards", "2", "--restore", "latest"), 2)
    try:
        with connected(resumed.address) as client:
            with client.variable_scope("", reuse=vs.AUTO_REUSE):
                v = client.get_variable("v", [], initializer=vs.zeros_initializer)
                big = client.get_variable("big", [1000], initializer=vs.zeros_initializer)
            assert v.numpy() == 10.0
            assert big.numpy().shape == (1000,)
            assert [(x.name, client.shard_of(x.name)) for x in client.list_variables()] == [
                ("big", 0), ("v", 1)]
            assert client.save("again") == "again"
    finally:
        stop_server_process(resumed.server)


def test_a_name_is_not_placed_while_a_shard_that_may_hold_it_is_down(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address, timeout=5) as client:
            _model(client)
        replacement = restart_shard(cluster, 0)
        os.kill(cluster.pids[1], signal.SIGKILL)
        with connected(cluster.address, timeout=5) as client:
            with pytest.raises(vs.errors.UnavailableError, match="^shard 1 of 2: "):
                client.get_variable("v", [], initializer=vs.zeros_initializer)
            with pytest.raises(vs.errors.UnavailableError, match="^shard 1 of 2: "):
                client.get_variable("fresh", [], initializer=vs.zeros_initializer)
            assert [x.name for x in vs.Client.list_variables(client)] == []  # shard 0's own
        with grpc.insecure_channel(cluster.address) as channel:
            reply = cpb_grpc.ClusterServiceStub(channel).Place(cpb.PlaceRequest(variables=[
                cpb.Placement(name=n, lookup_only=True) for n in ("v", "fresh")]))
        assert list(reply.shards) == [-1, -1]  # nothing placed
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_a_placement_from_before_shard_0_restarted_is_refused(tmp_path: Path) -> None:
    # A client that looked a name up (and asked the shards) before shard 0 restarted must
    # look again: the new table refuses its placement (ABORTED) instead of placing afresh.
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with grpc.insecure_channel(cluster.address) as channel:
            epoch = cpb_grpc.ClusterServiceStub(channel).Place(cpb.PlaceRequest()).epoch
        replacement = restart_shard(cluster, 0)
        with grpc.insecure_channel(cluster.address) as channel:
            stub = cpb_grpc.ClusterServiceStub(channel)
            for stale in (epoch, 0):
                with pytest.raises(grpc.RpcError) as e:
                    stub.Place(cpb.PlaceRequest(variables=[cpb.Placement(name="w", shard=-1)],
                                                epoch=stale))
                assert e.value.code() == grpc.StatusCode.ABORTED
                assert "does not know variable w and the request is not of its epoch" in \
                    str(e.value.details())
            current = stub.Place(cpb.PlaceRequest()).epoch
            assert current != epoch
            reply = stub.Place(cpb.PlaceRequest(variables=[cpb.Placement(name="w", shard=-1)],
                                                epoch=current))
            assert list(reply.shards) == [0]
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_clients_that_do_not_route_create_no_variable_on_a_shard(tmp_path: Path) -> None:
    import varstore.aio
    cluster = start_cluster(tmp_path / "ckpt", 2)
    refused = ("cannot create variable {}: this server is one shard of a cluster of 2, where "
               "shard 0 places every variable; connect with varstore.connect")
    try:
        with connected(cluster.address) as client:
            with client.device("/job:ps/task:1"):
                client.Variable(3.0, name="v")
        with vs.Client(cluster.addresses[1]) as plain:
            with pytest.raises(vs.errors.FailedPreconditionError, match=refused.format("w")):
                plain.Variable(1.0, name="w")
            assert plain.get_variable("v", []).numpy() == 3.0  # binding what it holds works
            with pytest.raises(vs.errors.FailedPreconditionError,
                               match="cannot restore on one shard of a cluster of 2: a restore "
                                     "creates variables"):
                plain.restore("any")

        async def aio_create() -> None:
            aio = varstore.aio.Client(cluster.addresses[0])
            try:
                await aio.Variable(1.0, name="x")
            finally:
                await aio.close()
        with pytest.raises(vs.errors.FailedPreconditionError, match=refused.format("x")):
            asyncio.run(aio_create())
        with connected(cluster.address) as client:
            assert [x.name for x in client.list_variables()] == ["v"]
    finally:
        stop_server_process(cluster.server)


def test_connect_reports_a_failed_cluster_lookup_instead_of_taking_one_shard(
        tmp_path: Path) -> None:
    # Any failed ClusterInfo made varstore.aio.connect (and vs.connect) treat the shard as a
    # single server, which then created variables wherever it was connected.
    import varstore.aio
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cluster = start_cluster_from(start_server_process(
        tmp_path / "ckpt", "--shards", "2", "--token-file", str(token)), 2)
    try:
        with pytest.raises(vs.errors.UnauthenticatedError):
            vs.connect(cluster.addresses[1], token="wrong")
        with pytest.raises(vs.errors.UnauthenticatedError):
            asyncio.run(varstore.aio.connect(cluster.addresses[1], token="wrong"))
        with vs.connect(cluster.addresses[1], token="s3cret") as client:
            assert isinstance(client, ClusterClient)
            client.Variable(np.arange(2.0), name="w")
            assert client.shard_of("w") in (0, 1)
    finally:
        stop_server_process(cluster.server)


def test_a_shard_stopped_alone_and_restarted_keeps_every_acknowledged_update(
        tmp_path: Path) -> None:
    # A shard of a cluster saved nothing on SIGTERM and restored its part of the older cluster
    # checkpoint: 310 of 600 acknowledged additions were lost, silently.
    folder = tmp_path / "ckpt"
    cluster = start_cluster(folder, 2)
    replacement = None
    workers, steps = 4, 40
    acked = [0] * workers
    try:
        with connected(cluster.address) as client:
            with client.device("/job:ps/task:1"):
                client.get_variable("counter", [], initializer=vs.zeros_initializer)
            assert client.save("model", global_step=0) == "model-0"
        started = threading.Barrier(workers + 1)

        def work(w: int) -> None:
            with connected(cluster.address, timeout=5) as c:
                with c.variable_scope("", reuse=True):
                    counter = c.get_variable("counter", [])
                started.wait()
                for _ in range(steps):
                    try:
                        counter.assign_add(1.0)
                        acked[w] += 1
                    except (vs.errors.UnavailableError, vs.errors.CancelledError):
                        time.sleep(0.05)  # the shard is stopping or down: not acknowledged
        threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        started.wait()
        while sum(acked) < workers * steps // 4:
            time.sleep(0.01)
        os.kill(cluster.pids[1], signal.SIGTERM)
        snapshot = folder / ".shard-00001-of-00002.snapshot.index"
        while not snapshot.exists():
            time.sleep(0.01)
        for _attempt in range(50):  # until the stopped shard has let its port go
            try:
                replacement = restart_shard(cluster, 1, "--restore", "latest", kill=False)
                break
            except RuntimeError:
                time.sleep(0.1)
        for t in threads:
            t.join()
        with connected(cluster.address) as client:
            with client.variable_scope("", reuse=True):
                total = client.get_variable("counter", []).numpy()
        assert sum(acked) > workers * steps // 4
        assert total == sum(acked)
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_shards_restarted_alone_save_only_what_changed_since_their_restore(
        tmp_path: Path) -> None:
    # A restored shard counts its part of the checkpoint as saved: restarted and left
    # untouched it writes no snapshot, and shard 0 no final checkpoint; a change after the
    # restore on another shard, while shard 0 was down, is saved.
    folder = tmp_path / "ckpt"
    cluster = start_cluster(folder, 2)
    restarted: list[ServerProcess] = []
    with contextlib.ExitStack() as stack:
        stack.callback(stop_server_process, cluster.server)
        stack.callback(lambda: list(map(stop_server_process, restarted)))
        client = stack.enter_context(connected(cluster.address, timeout=5))
        v = _model(client)
        assert client.save("model.ckpt", global_step=1) == "model.ckpt-1"
        restarted.append(restart_shard(cluster, 1, "--restore", "latest"))
        stop_server_process(restarted[-1])
        _, err = restarted[-1].process.communicate(timeout=60)
        assert "no changes since what --restore latest restores: no snapshot to write" in err
        assert not list(folder.glob(".shard-*"))
        restarted[-1] = restart_shard(cluster, 1, "--restore", "latest", kill=False)
        restarted.append(restart_shard(cluster, 0, "--restore", "latest"))
        stop_server_process(restarted[-1])
        _, err = restarted[-1].process.communicate(timeout=60)
        assert "--restore latest restores: nothing to save on exit" in err
        assert sorted(p.name for p in folder.glob("*.index")) == ["model.ckpt-1.index"]
        v.assign(-1.0)  # on shard 1, while shard 0 is down
        restarted[-1] = restart_shard(cluster, 0, "--restore", "latest", kill=False)
        stop_server_process(restarted[-1])
        _, err = restarted[-1].process.communicate(timeout=60)
        assert "final checkpoint of the whole cluster written: model.ckpt-2" in err
        from varstore.server.bundle import BundleReader
        with BundleReader(folder / "model.ckpt-2") as reader:
            assert float(reader.read("v")) == -1.0


def test_a_shard_stopped_alone_keeps_what_restore_latest_would_not_bring_back(
        tmp_path: Path) -> None:
    # A save that shard 0 refused at its commit, or wrote where --restore latest does not
    # look (another folder, no state file), counted as saved on every shard that wrote its
    # part: a shard stopped alone wrote no snapshot and came back rolled back (attack5 01).
    # Deleting a shard's variables was no change to save: they came back (attack5 07).
    folder = tmp_path / "ckpt"
    cluster = start_cluster(folder, 2)
    restarted: list[ServerProcess] = []
    with contextlib.ExitStack() as stack:
        stack.callback(stop_server_process, cluster.server)
        stack.callback(lambda: list(map(stop_server_process, restarted)))
        client = stack.enter_context(connected(cluster.address, timeout=5))
        v = _model(client)
        with client.device("/job:ps/task:1"):
            client.get_variable("gone", [], initializer=vs.ones_initializer)
        assert client.save("model.ckpt", global_step=0) == "model.ckpt-0"
        restarted.append(restart_shard(cluster, 1, "--restore", "latest"))

        def stop_and_restart() -> str:
            stop_server_process(restarted[-1])
            _, err = restarted[-1].process.communicate(timeout=60)
            restarted[-1] = restart_shard(cluster, 1, "--restore", "latest", kill=False)
            return err

        v.assign_add(5.0)
        client.delete(["gone"])
        with pytest.raises(vs.errors.InvalidArgumentError, match="max_to_keep must be >= 0"):
            client.save("refused", max_to_keep=-1)
        assert client.save("best/model") == "best/model"
        assert client.save_checkpoint("nostate", write_state=False).path == "nostate"
        assert "wrote this shard's own snapshot" in stop_and_restart()
        assert shard_contents(cluster) == [["big"], ["v"]]
        with client.variable_scope("", reuse=True):
            assert client.get_variable("v", []).numpy() == 15.0
        # The snapshot is no checkpoint of the cluster (attack5 14): not listed, not restored.
        assert sorted(c.path for c in client.list_checkpoints()) == [
            "best/model", "model.ckpt-0", "nostate"]
        with pytest.raises(vs.errors.InvalidArgumentError, match="shard's own snapshot"):
            client.restore(".shard-00001-of-00002.snapshot")
        # The shard's last variable deleted: an empty snapshot, nothing comes back.
        client.delete(["v"])
        assert "wrote this shard's own snapshot" in stop_and_restart()
        assert shard_contents(cluster) == [["big"], []]
        # Restored from that snapshot and left untouched: nothing more to write.
        assert "no snapshot to write" in stop_and_restart()
        assert shard_contents(cluster) == [["big"], []]
