"""Requests that are all or nothing on one server stay so on a cluster: a deletion naming a
variable that does not exist, or reaching a shard that is down, removes nothing anywhere."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import varstore as vs
from tests.conftest import stop_server_process
from tests.process.test_cluster import Cluster, connected, start_cluster


@pytest.fixture
def cluster2(tmp_path: Path) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    with connected(cluster.address) as client:
        for shard, name in enumerate(["s/a", "s/b"]):
            with client.device(f"/job:ps/task:{shard}"):
                client.Variable(float(shard), name=name)
    yield cluster
    stop_server_process(cluster.server)


def _names(address: str) -> list[str]:
    with connected(address) as client:
        return [v.name for v in client.list_variables()]


def test_deleting_a_missing_name_removes_nothing_on_any_shard(cluster2: Cluster) -> None:
    # `varstore rm b typo` deleted b (shard 1) and reported typo missing (shard 0).
    with connected(cluster2.address) as client:
        with pytest.raises(vs.errors.NotFoundError,
                           match="Variable typo does not exist on the cluster .nothing removed"):
            client.delete(["s/b", "typo"])
        with pytest.raises(vs.errors.NotFoundError):
            client.delete(["s/a", "s/b", "s/c"])
    assert _names(cluster2.address) == ["s/a", "s/b"]
    with connected(cluster2.address) as client:
        assert client.delete(["s/b", "s/a"]) == ["s/a", "s/b"]
    assert _names(cluster2.address) == []


@pytest.mark.parametrize("how", ["reset", "scope", "names"])
def test_a_deletion_reaching_a_shard_that_is_down_removes_nothing(cluster2: Cluster,
                                                                  how: str) -> None:
    with connected(cluster2.address, timeout=5) as client:
        assert client.shard_of("s/a") == 0
        os.kill(cluster2.pids[1], signal.SIGKILL)
        with pytest.raises(vs.errors.UnavailableError, match="^shard 1 of 2: "):
            if how == "reset":
                client.reset()
            elif how == "scope":
                client.delete(scope="s")
            else:
                client.delete(["s/a", "s/b"])
        with vs.Client(cluster2.address) as shard0:
            assert [v.name for v in shard0.list_variables()] == ["s/a"]


@pytest.mark.parametrize("with_var_list", [False, True])
def test_a_restore_failing_its_checksum_on_one_shard_changes_no_shard(
        cluster2: Cluster, with_var_list: bool) -> None:
    # Each shard restored its own keys on its own: a corrupt tensor of shard 1 failed the
    # restore while shard 0 had already put back the saved value of its variable.
    folder = cluster2.server.checkpoint_dir
    with connected(cluster2.address) as client:
        with client.variable_scope("s", reuse=True):
            a = client.get_variable("a", [])
            b = client.get_variable("b", [])
        assert client.save("m") == "m"
        a.assign(5.0)
        b.assign(6.0)
        data = folder / "m.data-00001-of-00002"  # shard 1's part: s/b alone
        raw = bytearray(data.read_bytes())
        raw[0] ^= 0xFF
        data.write_bytes(bytes(raw))
        with pytest.raises(vs.errors.DataLossError, match="checksum mismatch for tensor s/b"):
            client.restore("m", var_list=[a, b] if with_var_list else None)
        assert (a.numpy(), b.numpy()) == (5.0, 6.0)
        raw[0] ^= 0xFF
        data.write_bytes(bytes(raw))
        assert client.restore("m", var_list=[a, b] if with_var_list else None) == "m"
        assert (a.numpy(), b.numpy()) == (0.0, 1.0)
