"""A read-only token on a cluster of real shard processes: it reads across the shards (placement
lookups included) and changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from tests.process.test_cluster import Cluster, start_cluster_from
from tests.process.test_cluster_recovery import restart_shard
from tests.server.test_token_roles import DENIED, TOKENS
from varstore.cluster import ClusterClient
from varstore.errors import PermissionDeniedError


def _cluster(tmp_path: Path) -> tuple[Cluster, Path]:
    """`varstore serve --shards 2` with TOKENS, and the token file."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    return start_cluster_from(start_server_process(
        tmp_path / "ckpt", "--shards", "2", "--token-file", str(tokens)), 2), tokens


def _write(cluster: Cluster, names: list[str], device: str = "") -> None:
    """The writer creates ``names[i]`` filled with i (on ``device``'s shard when given)."""
    with vs.connect(cluster.address, token="writer-123") as writer:
        assert isinstance(writer, ClusterClient)
        with writer.device(device):
            for i, name in enumerate(names):
                writer.get_variable(name, shape=[8], initializer=vs.constant_initializer(i))


def _read(cluster: Cluster, names: list[str]) -> ClusterClient:
    """The reader, on shard 1's address, binds ``names`` and finds ``names[i]`` filled with
    i; it may not create another variable. Returns it, still connected."""
    reader = vs.connect(cluster.addresses[1], token="reader-789")
    assert isinstance(reader, ClusterClient)
    with reader.variable_scope("", reuse=True):
        found = [reader.get_variable(name, shape=[8]) for name in names]
    for i, value in enumerate(reader.pull(found)):
        np.testing.assert_array_equal(value, np.full(8, float(i), np.float32))
    with pytest.raises(PermissionDeniedError, match=DENIED):
        reader.get_variable("layer9/W", shape=[8])
    return reader


def test_a_read_only_token_reads_across_shards(tmp_path: Path) -> None:
    cluster, _ = _cluster(tmp_path)
    try:
        names = [f"layer{i}/W" for i in range(6)]
        _write(cluster, names)
        with _read(cluster, names) as reader:
            with reader.variable_scope("", reuse=True):
                first = reader.get_variable(names[0], shape=[8])
            with pytest.raises(PermissionDeniedError, match=DENIED):
                reader.push({first: np.ones(8, np.float32)})
            with pytest.raises(PermissionDeniedError, match=DENIED):
                reader.save("model")
            assert sorted(v.name for v in reader.list_variables()) == names
            np.testing.assert_array_equal(first.numpy(), np.zeros(8, np.float32))
    finally:
        stop_server_process(cluster.server)


def test_a_read_only_token_reads_after_shard_0_restarted(tmp_path: Path) -> None:
    # A restarted shard 0's table knows no name; a read-only client may not record where the
    # shards hold them, and reads them there.
    cluster, tokens = _cluster(tmp_path)
    replacement = None
    try:
        names = [f"layer{i}/W" for i in range(4)]
        _write(cluster, names, "/job:ps/task:1")  # shard 1 keeps them across the restart
        replacement = restart_shard(cluster, 0, "--token-file", str(tokens))
        _read(cluster, names).close()
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)
