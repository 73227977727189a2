"""``varstore.aio`` against a real cluster of 2 shard processes: one address is enough, the
same placement as the blocking client, concurrent per-shard requests, runs crossing shards,
and a shard that is down named in the error."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
import varstore.aio
from tests.conftest import stop_server_process
from tests.process.test_cluster import Cluster, connected, start_cluster
from varstore.common import dtypes
from varstore.errors import UnavailableError
from varstore.request import RequestBuilder


@pytest.fixture
def cluster2(tmp_path: Path) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    yield cluster
    stop_server_process(cluster.server)


async def _connect(address: str) -> varstore.aio.ClusterClient:
    client = await varstore.aio.connect(address)
    assert isinstance(client, varstore.aio.ClusterClient)
    return client


def test_asyncio_workers_share_a_cluster_exactly(cluster2: Cluster) -> None:
    workers, steps = 4, 25

    async def main() -> None:
        async with await _connect(cluster2.addresses[1]) as setup:
            assert setup.shard_addresses == cluster2.addresses
            with setup.device("/job:ps/task:0"):
                a = await setup.Variable(np.int64(0), name="a")
            with setup.device("/job:ps/task:1"):
                with setup.variable_scope("layer"):
                    b = await setup.get_variable("b", [3], dtype=vs.int64,
                                                 initializer=vs.zeros_initializer)
            assert [await setup.shard_of("a"), await setup.shard_of("layer/b")] == [0, 1]

        async def worker() -> None:
            async with await _connect(cluster2.address) as client:
                with client.variable_scope("", reuse=True):
                    a = await client.get_variable("a", [], dtype=vs.int64)
                    b = await client.get_variable("layer/b", [3], dtype=vs.int64)
                # pipelined: every update in flight at once, on both shards
                await asyncio.gather(*(u for _ in range(steps) for u in (
                    a.assign_add(1), b.assign_add(np.array([1, 2, 3])))))
        await asyncio.gather(*(worker() for _ in range(workers)))
        async with await _connect(cluster2.address) as client:
            got = await client.pull([a, b])
            assert int(got[0]) == workers * steps
            assert got[1].tolist() == [workers * steps * k for k in (1, 2, 3)]
            await client.push({a: np.int64(-1), b: np.array([7, 8, 9])})
            assert [v.name for v in await client.list_variables()] == ["a", "layer/b"]
    asyncio.run(main())
    # The blocking client sees the same store, placed the same way.
    with connected(cluster2.address) as client:
        assert [client.shard_of("a"), client.shard_of("layer/b")] == [0, 1]
        with client.variable_scope("", reuse=True):
            b = client.get_variable("layer/b", [3], dtype=vs.int64)
        assert b.numpy().tolist() == [7, 8, 9]


def test_an_asyncio_run_crossing_shards_runs_in_stages(cluster2: Cluster) -> None:
    async def main() -> None:
        async with await _connect(cluster2.address) as client:
            with client.device("/job:ps/task:0"):
                await client.Variable(np.float32(10), name="x")
            with client.device("/job:ps/task:1"):
                y = await client.Variable(np.float32(1), name="y")
            b = RequestBuilder()  # y += x + 1, fetching x + 1: x read on shard 0 first
            plus = b.node("add", [b.node("read", variable="x"),
                                  b.const(np.float32(1), dtypes.float32)])
            b.fetch(plus)
            b.target(b.node("assign_add", [plus], variable="y"))
            fetched, _ = await client.run(b)
            assert float(fetched[0]) == 11.0
            assert float(await y.numpy()) == 12.0
    asyncio.run(main())


def test_asyncio_requests_to_a_dead_shard_name_it(cluster2: Cluster) -> None:
    async def main() -> None:
        async with await _connect(cluster2.address) as client:
            handles = []
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    handles.append(await client.Variable(float(shard), name=f"v{shard}"))
            os.kill(cluster2.pids[1], signal.SIGKILL)
            with pytest.raises(UnavailableError, match=(
                    f"^shard 1 of 2: the varstore server at {re.escape(cluster2.addresses[1])}"
                    " is not reachable: connection refused")):
                await handles[1].numpy()
            with pytest.raises(UnavailableError, match="^shard 1 of 2: "):
                await client.pull(handles)
            await handles[0].assign_add(5.0)
            assert float(await handles[0].numpy()) == 5.0
    asyncio.run(main())
