"""What clients see when the server stops gracefully (SIGINT, SIGTERM) under load: every call
the stopping server did not run ends with ``UnavailableError`` saying that nothing was changed
(not gRPC's bare ``CANCELLED``, newcomer report F19), every call it ran is answered, and after
a restart with ``--restore latest`` on the same port the variables hold exactly the
acknowledged updates: none lost, none applied twice. A shard of a cluster that stops fails
the calls it alone would run with ``UnavailableError``, and an update spanning shards with
``CancelledError`` (the other shards' parts may have run)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import varstore as vs
import varstore.aio
import varstore.v1 as tf
from tests.conftest import ServerProcess, start_server_process, stop_server_process
from tests.process.test_cluster import connected, start_cluster
from varstore.errors import CancelledError, OpError, UnavailableError

# What an UnavailableError may say around a restart: the stopping server's refusal, gRPC's
# stop dropping a call before it ran, or no server listening (the call never left the client).
# All mean "not run, safe to repeat".
NOT_RUN = ("is unavailable: the server is shutting down; nothing was changed",
           "ended the call before running it (it is shutting down or was overloaded); "
           "nothing was changed",
           "is not reachable: connection refused, so nothing listens there now")
BLOCKING, ASYNC, SESSIONS = 8, 4, 2
# Acknowledged increments each client makes after the restart before it stops.
AFTER_RESTART = 20


class Tally:
    """Acknowledged increments and the errors the clients saw, by class and kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked = 0
        self.errors: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.restarted = threading.Event()

    def ack(self) -> None:
        with self.lock:
            self.acked += 1

    def failed(self, e: OpError) -> None:
        """Counts an error; anything but an UnavailableError that says the call was not run
        is unexpected."""
        kind = next((k for k in NOT_RUN if k in str(e)), None)
        with self.lock:
            if isinstance(e, UnavailableError) and kind is not None:
                self.errors[kind] += 1
            else:
                self.unexpected.append(f"{type(e).__name__}: {e}")


def _loop(tally: Tally, increment: Callable[[], object]) -> None:
    """Increments until AFTER_RESTART acknowledged increments after the restart, repeating an
    increment the server did not run."""
    after = 0
    while after < AFTER_RESTART:
        try:
            increment()
        except OpError as e:
            tally.failed(e)
            if tally.unexpected:
                return
            tally.restarted.wait(0.02)
            continue
        tally.ack()
        after += tally.restarted.is_set()


def _blocking(address: str, tally: Tally) -> None:
    with vs.connect(address) as client:
        counter = client.get_variable("counter", [], dtype=vs.int64)
        _loop(tally, lambda: counter.assign_add(1))


def _session(address: str, tally: Tally) -> None:
    with tf.Graph().as_default():
        counter = tf.get_variable("counter", [], dtype=tf.int64,
                                  initializer=tf.zeros_initializer())
        increment = counter.assign_add(1)
        with tf.Session(address) as sess:
            _loop(tally, lambda: sess.run(increment))


def _asynchronous(address: str, tally: Tally) -> None:
    async def one(counter: varstore.aio.RemoteVariable) -> None:
        after = 0
        while after < AFTER_RESTART:
            try:
                await counter.assign_add(1)
            except OpError as e:
                tally.failed(e)
                if tally.unexpected:
                    return
                await asyncio.sleep(0.02)
                continue
            tally.ack()
            after += tally.restarted.is_set()

    async def main() -> None:
        async with await varstore.aio.connect(address) as client:
            counter = await client.get_variable("counter", [], dtype=vs.int64)
            await asyncio.gather(*(one(counter) for _ in range(ASYNC)))

    asyncio.run(main())


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_calls_a_stopping_server_does_not_run_are_unavailable_and_none_is_lost(
        tmp_path: Path, how: signal.Signals) -> None:
    server = start_server_process(tmp_path / "ckpt")
    restarted: ServerProcess | None = None
    with vs.connect(server.address) as client:
        client.get_variable("counter", [], dtype=vs.int64, initializer=vs.zeros_initializer())
    tally = Tally()
    workers = [threading.Thread(target=_blocking, args=(server.address, tally))
               for _ in range(BLOCKING)]
    workers += [threading.Thread(target=_session, args=(server.address, tally))
                for _ in range(SESSIONS)]
    workers.append(threading.Thread(target=_asynchronous, args=(server.address, tally)))
    try:
        for worker in workers:
            worker.start()
        while tally.acked < 200 and not tally.unexpected:
            tally.restarted.wait(0.05)
        server.process.send_signal(how)
        _, log = server.process.communicate(timeout=60)
        assert server.process.returncode == 0, log
        assert "final checkpoint written" in log
        stopped_at = tally.acked
        restarted = start_server_process(tmp_path / "ckpt", "--port", str(server.port),
                                         "--restore", "latest")
        tally.restarted.set()
        for worker in workers:
            worker.join(timeout=120)
        assert not any(w.is_alive() for w in workers)
        assert tally.unexpected == []
        # The clients kept calling while the server stopped and while it was down.
        assert sum(tally.errors.values()) > 0
        with vs.connect(restarted.address) as client:
            value = client.get_variable("counter", [], dtype=vs.int64).numpy()
        assert value == tally.acked
        assert tally.acked >= stopped_at + (BLOCKING + SESSIONS + ASYNC) * AFTER_RESTART
    finally:
        tally.restarted.set()
        stop_server_process(restarted or server)


def test_a_stopping_shard_fails_its_own_calls_as_unavailable_and_shared_updates_as_cancelled(
        tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    try:
        with connected(cluster.address, timeout=5) as client:
            handles = []
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    handles.append(client.Variable(0.0, name=f"v{shard}"))
            os.kill(cluster.pids[1], signal.SIGTERM)
            while True:  # until shard 1 is gone: first refusing, then not listening
                try:
                    handles[1].assign_add(1.0)
                except UnavailableError as e:
                    assert str(e).startswith("shard 1 of 2: "), e
                    if "nothing was changed" not in str(e):
                        break
            # A read of both shards is repeatable; an update of both ran on shard 0 only.
            with pytest.raises(UnavailableError, match="^shard 1 of 2: "):
                client.pull(handles)
            with pytest.raises(CancelledError, match=(
                    "^shard 1 of 2: .*; the request's parts on the other shards may have run: "
                    "it may have been partly applied$")):
                client.push({handles[0]: 5.0, handles[1]: 5.0})
            assert handles[0].numpy() == 5.0
    finally:
        stop_server_process(cluster.server)
