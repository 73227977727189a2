"""What each client sees of a call a stopping server did not run (``UnavailableError``: nothing
was changed, safe to repeat) and of one it cut while it ran past the grace period
(``CancelledError``: it may or may not have been applied). The same under load, with a real
server process and the values after a restart, is tests/process/test_stop_calls.py."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
import varstore.aio
import varstore.v1 as tf
from varstore import dtypes
from varstore.common.codec import STREAM_THRESHOLD
from varstore.errors import CancelledError, UnavailableError
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.server import ServerConfig, create_server
from varstore.transport import Transport

NOT_RUN = "the server is shutting down; nothing was changed"


@pytest.fixture
def stopping(tmp_path: Path) -> Iterator[tuple[str, threading.Event]]:
    """A server holding ``counter`` = 5 and ``layer/w``, its address, and its stopping event
    (set: it refuses the calls that start, as while it stops; cleared: it serves again)."""
    server = create_server(ServerConfig(host="127.0.0.1", port=0,
                                        checkpoint_dir=tmp_path / "ckpt"))
    server.start()
    address = f"127.0.0.1:{server.port}"
    with vs.connect(address) as c:
        c.get_variable("counter", [], dtype=vs.int64, initializer=vs.constant_initializer(5))
    try:
        yield address, server.store.stopping
    finally:
        server.store.stopping.clear()
        server.stop(grace=1.0, quiet=0.0)


def test_every_client_sees_calls_refused_while_stopping_as_unavailable(
        stopping: tuple[str, threading.Event]) -> None:
    address, event = stopping
    with vs.connect(address) as c:
        counter = c.get_variable("counter", [], dtype=vs.int64)
        event.set()
        with pytest.raises(UnavailableError) as refused:
            counter.assign_add(1)
        assert str(refused.value) == (
            f"the varstore server at {address} is unavailable: {NOT_RUN}")
        # A checkpoint's progress stream and a request streamed for its size alike.
        with pytest.raises(UnavailableError, match=NOT_RUN):
            c.save("refused")
        with pytest.raises(UnavailableError, match=NOT_RUN):
            c.Variable(np.zeros(STREAM_THRESHOLD, np.float32), name="big")

        async def asynchronous() -> None:
            async with await varstore.aio.connect(address) as a:
                same = await a.get_variable("counter", [], dtype=vs.int64)
                event.set()
                with pytest.raises(UnavailableError, match=NOT_RUN):
                    await same.assign_add(1)

        event.clear()
        asyncio.run(asynchronous())
        event.clear()
        with tf.Graph().as_default():
            v = tf.get_variable("counter", [], dtype=tf.int64)
            with tf.Session(address) as sess:
                event.set()
                with pytest.raises(tf.errors.UnavailableError, match=NOT_RUN):
                    sess.run(v.assign_add(1))
        event.clear()
        # Nothing was changed: no variable "big", the counter as it was, no checkpoint.
        assert counter.numpy() == 5
        assert [i.name for i in c.list_variables()] == ["counter"]
        assert c.latest_checkpoint() is None


def test_a_call_cut_past_the_grace_period_may_have_been_applied(tmp_path: Path) -> None:
    server = create_server(ServerConfig(host="127.0.0.1", port=0,
                                        checkpoint_dir=tmp_path / "ckpt"))
    server.start()
    transport = Transport(f"127.0.0.1:{server.port}")
    stub = pb_grpc.VariableServiceStub(transport.channel)
    sending = threading.Event()
    done = threading.Event()

    def slow() -> Iterator[pb.RunChunk]:
        """A request still coming when the grace period ends: the call runs on the server."""
        yield pb.RunChunk(request=pb.RunRequest(tensors=[pb.Tensor(
            dtype=dtypes.float32.enum, shape=[1 << 18], streamed_bytes=1 << 20)]))
        sending.set()
        while not done.wait(0.05):
            yield pb.RunChunk(data=b"x")

    def stop_once_running() -> None:
        # The call is counted in flight once it passed the shutdown gate (the metrics
        # interceptor is after it); stopping before that would refuse it, not cut it.
        sending.wait(30)
        deadline = time.monotonic() + 30
        while server.metrics.load.load(0).in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop(grace=0.3)

    stopper = threading.Thread(target=stop_once_running)
    stopper.start()
    try:
        with pytest.raises(CancelledError) as cut:
            transport.invoke(lambda **o: list(stub.RunStream(slow(), **o)), idempotent=False)
        assert str(cut.value) == (
            f"the varstore server at 127.0.0.1:{server.port} stopped while it ran the call "
            "(past its grace period): it may or may not have been applied")
    finally:
        done.set()
        stopper.join()
        transport.close()
