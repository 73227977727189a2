"""Real shard processes: a shard creates a variable only where shard 0's placement table puts
it (varstore.server.placement_guard), so a create delayed past a restart of shard 0 cannot make
a second variable of one name (attack4 02); deleting variables takes them out of the table and
gives its memory back (attack4 08)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster
from varstore import dtypes
from varstore.common.protocol import PLACEMENT_REFUSED, ROUTED_METADATA
from varstore.errors import AbortedError
from varstore.placement import RunParts
from varstore.request import RequestBuilder

# Seconds the delayed worker waits at most for the test to let its create go.
HOOK_WAIT = 60.0


def test_a_create_delayed_past_a_shard_0_restart_binds_the_one_variable(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address) as a:
            a.get_variable("big", [1000], initializer=vs.zeros_initializer)  # shard 0 heavier
            # The test hook: A's requests to the shards wait, after A's Place, until `go`.
            placed, go = threading.Event(), threading.Event()
            perform = a._perform

            def delayed(call: Any) -> Any:
                if isinstance(call, RunParts) and not go.is_set():
                    placed.set()
                    go.wait(HOOK_WAIT)
                return perform(call)
            a._perform = delayed  # type: ignore[method-assign]
            made: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: made.setdefault(
                "v", a.get_variable("v", [], initializer=vs.zeros_initializer)))
            worker.start()
            assert placed.wait(HOOK_WAIT)
            assert a.placement.known["v"] == 1  # the old table put v on the emptier shard 1
            os.kill(cluster.pids[0], signal.SIGKILL)
            replacement = start_server_process(
                cluster.server.checkpoint_dir, "--cluster", ",".join(cluster.addresses),
                "--task-index", "0", "--port", cluster.addresses[0].rpartition(":")[2])
            with connected(cluster.address) as b:
                vb = b.get_variable("v", [], initializer=vs.zeros_initializer)
                assert b.shard_of("v") == 0  # the new table: both shards empty, shard 0
                go.set()
                worker.join(HOOK_WAIT)
                va = made["v"]
                assert a.shard_of("v") == 0  # A's create was refused on shard 1, then bound
                va.assign_add(10.0)
                assert (va.numpy(), vb.numpy()) == (10.0, 10.0)
                assert [v.name for v in b.list_variables()] == ["v"]
                b.save("model")
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_a_routed_create_the_table_did_not_place_there_is_refused(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    try:
        shard_1 = vs.Client(cluster.addresses[1])
        shard_1.transport.metadata += (ROUTED_METADATA,)  # as a cluster client sends
        with pytest.raises(AbortedError, match=f"variable w {PLACEMENT_REFUSED} \\(shard 1; "
                           "the table does not know it"):
            shard_1.get_variable("w", [2], initializer=vs.zeros_initializer)
        with connected(cluster.address) as client:
            assert client.list_variables() == []
            with client.device("/job:ps/task:0"):
                client.get_variable("w", [2], initializer=vs.ones_initializer)
        with pytest.raises(AbortedError, match="the table places it on shard 0"):
            shard_1.get_variable("w", [2], initializer=vs.zeros_initializer)
        shard_1.close()
        with connected(cluster.address) as client:
            assert [v.name for v in client.list_variables()] == ["w"]
            w = client.get_variable("w", [2], initializer=vs.zeros_initializer)  # binds
            np.testing.assert_array_equal(w.numpy(), [1.0, 1.0])
    finally:
        stop_server_process(cluster.server)


def test_created_and_deleted_variables_leave_shard_0_room(tmp_path: Path) -> None:
    # 1000 names of 1000 characters would charge shard 0's table 1.5 MB, past --max-memory.
    server = start_server_process(tmp_path / "ckpt", "--shards", "2", "--max-memory", "1M",
                                  "--no-save-on-exit")
    try:
        with connected(f"127.0.0.1:{server.port}") as client:
            for batch in range(10):
                builder = RequestBuilder()
                zero = builder.const(np.zeros((), np.float32), dtypes.float32)
                for i in range(100):
                    builder.variable(f"tmp/{batch}_{i}_" + "x" * 1000, dtypes.float32, [],
                                     initializer=zero)
                client.run(builder)
                assert len(client.delete(scope="tmp")) == 100
            assert client.list_variables() == []
            w = client.get_variable("weights", [4], initializer=vs.ones_initializer)
            np.testing.assert_array_equal(w.numpy(), np.ones(4))
            # A name deleted and created again is placed afresh (greedy: the emptier shard).
            client.delete([w])
            with client.device("/job:ps/task:1"):
                client.get_variable("weights", [4], initializer=vs.zeros_initializer)
            assert client.shard_of("weights") == 1
    finally:
        stop_server_process(server)
