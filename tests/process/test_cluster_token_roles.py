"""A read-only token on a cluster of real shard processes: it reads across the shards (placement
lookups included) and changes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from tests.process.test_cluster import start_cluster_from
from tests.process.test_cluster_recovery import restart_shard
from tests.server.test_token_roles import DENIED, TOKENS
from varstore.cluster import ClusterClient
from varstore.errors import PermissionDeniedError


def test_a_read_only_token_reads_across_shards(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    cluster = start_cluster_from(start_server_process(
        tmp_path / "ckpt", "--shards", "2", "--token-file", str(tokens)), 2)
    try:
        names = [f"layer{i}/W" for i in range(6)]
        with vs.connect(cluster.address, token="writer-123") as writer:
            for i, name in enumerate(names):
                writer.get_variable(name, shape=[8], initializer=vs.constant_initializer(i))
        with vs.connect(cluster.addresses[1], token="reader-789") as reader:
            assert isinstance(reader, ClusterClient)
            with reader.variable_scope("", reuse=True):
                found = [reader.get_variable(name, shape=[8]) for name in names]
            for i, value in enumerate(reader.pull(found)):
                np.testing.assert_array_equal(value, np.full(8, float(i), np.float32))
            with pytest.raises(PermissionDeniedError, match=DENIED):
                reader.get_variable("layer9/W", shape=[8])
            with pytest.raises(PermissionDeniedError, match=DENIED):
                reader.push({found[0]: np.ones(8, np.float32)})
            with pytest.raises(PermissionDeniedError, match=DENIED):
                reader.save("model")
            assert sorted(v.name for v in reader.list_variables()) == names
            np.testing.assert_array_equal(found[0].numpy(), np.zeros(8, np.float32))
    finally:
        stop_server_process(cluster.server)


def test_a_read_only_token_reads_after_shard_0_restarted(tmp_path: Path) -> None:
    # A restarted shard 0's table knows no name; a read-only client may not record where the
    # shards hold them, and reads them there.
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    cluster = start_cluster_from(start_server_process(
        tmp_path / "ckpt", "--shards", "2", "--token-file", str(tokens)), 2)
    replacement = None
    try:
        names = [f"layer{i}/W" for i in range(4)]
        with vs.connect(cluster.address, token="writer-123") as writer:
            assert isinstance(writer, ClusterClient)
            with writer.device("/job:ps/task:1"):  # shard 1 keeps them across the restart
                for i, name in enumerate(names):
                    writer.get_variable(name, shape=[8], initializer=vs.constant_initializer(i))
        replacement = restart_shard(cluster, 0, "--token-file", str(tokens))
        with vs.connect(cluster.addresses[1], token="reader-789") as reader:
            with reader.variable_scope("", reuse=True):
                found = [reader.get_variable(name, shape=[8]) for name in names]
            for i, value in enumerate(reader.pull(found)):
                np.testing.assert_array_equal(value, np.full(8, float(i), np.float32))
            with pytest.raises(PermissionDeniedError, match=DENIED):
                reader.get_variable("layer9/W", shape=[8])
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)
