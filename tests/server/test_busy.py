"""A busy server refuses a call it cannot admit with RESOURCE_EXHAUSTED "try again later" (or
gRPC's "Concurrent RPC limit exceeded!") before the call changes anything, and both clients
retry those refusals with backoff, whatever the call: pipelined updates are all applied, each
once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import varstore as vs
import varstore.aio
from varstore.server import ServerConfig, create_server
from varstore.server.app import ADMITTED_PER_THREAD, Server

WORKERS = 4
CALLS = 40 * WORKERS * ADMITTED_PER_THREAD  # many times what the server admits at once


@pytest.fixture
def busy(tmp_path: Path) -> Iterator[Server]:
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ck",
                                     max_workers=WORKERS))
    srv.start()
    yield srv
    srv.stop(grace=1.0)


async def test_pipelined_updates_past_the_admission_limit_are_all_applied_once(
        busy: Server) -> None:
    async with await varstore.aio.connect(f"127.0.0.1:{busy.port}") as c:
        step = await c.get_variable("step", [], dtype=vs.int64,
                                    initializer=vs.zeros_initializer)
        results = await asyncio.gather(*(step.assign_add(1) for _ in range(CALLS)),
                                       return_exceptions=True)
        assert [r for r in results if isinstance(r, Exception)] == []
        assert int(await step.numpy()) == CALLS


def test_blocking_updates_from_more_threads_than_admitted_are_all_applied_once(
        busy: Server) -> None:
    threads = 3 * WORKERS * ADMITTED_PER_THREAD
    errors: list[Exception] = []
    with vs.connect(f"127.0.0.1:{busy.port}") as c:
        step = c.get_variable("step", [], dtype=vs.int64, initializer=vs.zeros_initializer())

        def work() -> None:
            try:
                for _ in range(5):
                    step.assign_add(1)
            except vs.errors.OpError as e:
                errors.append(e)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        assert errors == []
        assert int(step.numpy()) == 5 * threads

