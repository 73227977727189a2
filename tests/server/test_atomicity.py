"""A request's effects are all or nothing, and acknowledged updates are never lost.

Every way a request can fail after it did something (a later node, an initializer with
effects on other variables, a reply too large to send, a synchronous step, a restore racing
a create) leaves the store as if it had not run, and never undoes what other requests did.
A variable a request is still creating is invisible to listings and waits, and requests that
use it wait for its creator's outcome.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from varstore import dtypes
from varstore.common.protocol import APPLIED, PENDING
from varstore.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server

F32, I64 = dtypes.float32, dtypes.int64


def _scalar(b: RequestBuilder, value: int) -> int:
    return b.const(np.array(value, np.int64), I64)


def _slow(b: RequestBuilder, n: int = 1000, steps: int = 8) -> int:
    """Nodes that take a while to evaluate and lock nothing: a chain of matmuls."""
    big = b.const(np.full((n, n), 1e-3, np.float32), F32)
    prev = big
    for _ in range(steps):
        prev = b.node("matmul", [prev, big])
    return prev


def _create_then_fail(name: str) -> RequestBuilder:
    """Creates int64 scalar ``name`` (initial value 0), runs slow nodes, then fails (adds
    float32 to int64)."""
    b = RequestBuilder()
    b.variable(name, I64, (), initializer=_scalar(b, 0))
    b.target(b.node("add", [_slow(b), _scalar(b, 1)]))
    return b


def _bind_and_add(name: str) -> RequestBuilder:
    b = RequestBuilder()
    b.variable(name, I64, (), initializer=_scalar(b, 0))
    b.target(b.node("assign_add", [_scalar(b, 1)], variable=name))
    return b


def _read(client: vs.Client, name: str, expect_bytes: int = 0) -> np.ndarray:
    b = RequestBuilder()
    b.fetch(b.node("read", variable=name))
    return client.run(b, expect_bytes)[0][0]


def _in_background(job: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("attempt", range(3))
def test_a_failed_creator_never_undoes_acknowledged_updates(address: str, attempt: int) -> None:
    with vs.connect(address) as a, vs.connect(address) as b:
        thread, errors = _in_background(lambda: a.run(_create_then_fail("shared")))
        time.sleep(0.2)  # lets A create "shared" first (the test holds whatever the order)
        acked = 0
        while thread.is_alive() or acked < 3:
            b.run(_bind_and_add("shared"))
            acked += 1
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], InvalidArgumentError)
        assert int(_read(b, "shared")) == acked


def test_binding_a_variable_whose_creator_fails_finds_nothing(address: str) -> None:
    with vs.connect(address) as a, vs.connect(address) as b:
        thread, errors = _in_background(lambda: a.run(_create_then_fail("ghost")))
        outcomes: list[str] = []
        while thread.is_alive():
            bind = RequestBuilder()
            bind.variable("ghost", I64, (), bind_only=True)
            bind.fetch(bind.node("read", variable="ghost"))
            try:
                b.run(bind)
                outcomes.append("read")
            except NotFoundError:
                outcomes.append("missing")
        thread.join()
        assert errors and isinstance(errors[0], InvalidArgumentError)
        # The variable never existed for anyone: no read of it ever succeeded.
        assert "read" not in outcomes
        assert [v.name for v in b.list_variables()] == []


def test_a_variable_being_created_is_not_listed_nor_initialized(address: str) -> None:
    with vs.connect(address) as a, vs.connect(address) as b:
        thread, _ = _in_background(lambda: a.run(_create_then_fail("wip")))
        seen: set[str] = set()
        waits: list[list[str]] = []
        while thread.is_alive():
            seen.update(v.name for v in b.list_variables())
            waits.append(b.wait_initialized(["wip"], 0.0))
        thread.join()
        assert "wip" not in seen
        assert all(w == ["wip"] for w in waits)


def _with_side_effect(failure: str) -> RequestBuilder:
    """Creates ``y`` whose initializer adds 100 to ``x``, then fails as ``failure`` says."""
    b = RequestBuilder()
    hundred = _scalar(b, 100)
    bump = b.node("assign_add", [hundred], variable="x")
    if failure == "initial dtype":
        b.variable("y", F32, (), initializer=bump)
    elif failure == "initial shape":
        b.variable("y", I64, (2,), initializer=bump)
    else:
        b.variable("y", I64, (), initializer=bump)
    if failure == "later node":
        b.target(b.node("add", [hundred, b.const(np.array(1.0, np.float32), F32)]))
    elif failure == "later update":
        b.target(b.node("assign_add", [b.const(np.array(1.0, np.float32), F32)],
                        variable="x"))
    elif failure == "reply too large":
        b.fetch(b.node("ones", dtype=F32, shape=[80 << 18]))  # 80 MiB
    elif failure == "missing variable":
        b.fetch(b.node("read", variable="nowhere"))
    return b


FAILURES = {"initial dtype": InvalidArgumentError, "initial shape": InvalidArgumentError,
            "later node": InvalidArgumentError, "later update": InvalidArgumentError,
            "reply too large": ResourceExhaustedError, "missing variable": NotFoundError}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_initializer_side_effects_are_undone(client: vs.Client, failure: str) -> None:
    client.Variable(np.int64(0), name="x")
    with pytest.raises(FAILURES[failure]):
        client.run(_with_side_effect(failure))
    assert int(_read(client, "x")) == 0
    assert [v.name for v in client.list_variables()] == ["x"]
    assert client.list_variables()[0].version == 0


def _bump_and_fetch_ones(elements: int) -> RequestBuilder:
    b = RequestBuilder()
    b.target(b.node("assign_add", [_scalar(b, 1)], variable="c"))
    b.fetch(b.node("ones", dtype=F32, shape=[elements]))
    return b


@pytest.mark.parametrize("elements", [80 << 18, (64 << 18) - 8, 1 << 26])
def test_a_reply_too_large_to_send_changes_nothing(client: vs.Client, elements: int) -> None:
    client.Variable(np.int64(0), name="c")
    with pytest.raises(ResourceExhaustedError, match="nothing was changed"):
        client.run(_bump_and_fetch_ones(elements))
    assert int(_read(client, "c")) == 0


def test_a_large_reply_over_the_stream_applies_once(client: vs.Client) -> None:
    client.Variable(np.int64(0), name="c")
    values, _ = client.run(_bump_and_fetch_ones(80 << 18), expect_bytes=80 << 20)
    assert values[0].shape == (80 << 18,)
    assert int(_read(client, "c")) == 1


def test_a_large_fetch_as_the_last_node_is_checked_too(client: vs.Client) -> None:
    client.Variable(np.ones(20 << 20, np.float32), name="big")
    b = RequestBuilder()
    read = b.node("read", variable="big")
    b.fetch(read)
    b.fetch(b.node("assign_add", [read], variable="big"))  # doubles it
    with pytest.raises(ResourceExhaustedError):
        client.run(b)
    assert float(_read(client, "big", 80 << 20).max()) == 1.0


def _accumulate(step: int, fail: bool) -> RequestBuilder:
    """One replica's gradient (1.0) for step ``step`` of a 2-replica group on ``gs``; with
    ``fail``, a later node fails."""
    b = RequestBuilder()
    grad = b.const(np.array([1.0, 1.0], np.float32), F32)
    acc = b.node("sync_accumulate", [grad], variable="gs", step=step, replicas=2,
                 variables="w", sparse="0")
    b.fetch(acc)
    if fail:
        b.target(b.node("add", [_scalar(b, 1), b.const(np.array(1.0, np.float32), F32)]))
    return b


def _sync_wait(generation: int, timeout: float) -> RequestBuilder:
    b = RequestBuilder()
    b.fetch(b.node("sync_wait", group="gs", generation=generation, timeout=timeout))
    return b


def test_failed_sync_accumulate_counts_for_nothing(client: vs.Client) -> None:
    client.Variable(np.int64(0), name="gs")
    client.Variable(np.zeros(2, np.float32), name="w")
    for _ in range(2):
        with pytest.raises(InvalidArgumentError):
            client.run(_accumulate(0, fail=True))
    with pytest.raises(DeadlineExceededError):
        client.run(_sync_wait(0, 0.2))
    first = client.run(_accumulate(0, fail=False))[0][0]
    assert int(first[0]) == PENDING
    second = client.run(_accumulate(0, fail=False))[0][0]
    assert int(second[0]) == APPLIED


def test_a_waiter_is_released_only_by_a_committed_step(client: vs.Client,
                                                       address: str) -> None:
    client.Variable(np.int64(0), name="gs")
    client.Variable(np.zeros(2, np.float32), name="w")
    assert int(client.run(_accumulate(0, fail=False))[0][0][0]) == PENDING
    with vs.connect(address) as waiter:
        thread, errors = _in_background(lambda: waiter.run(_sync_wait(0, 1.0)))
        with pytest.raises(InvalidArgumentError):
            client.run(_accumulate(0, fail=True))  # would complete the step, then fails
        thread.join()
    assert len(errors) == 1 and isinstance(errors[0], DeadlineExceededError)


def test_sync_wait_with_variables_is_refused(client: vs.Client) -> None:
    client.Variable(np.int64(0), name="gs")
    b = _sync_wait(0, 1.0)
    b.fetch(b.node("read", variable="gs"))
    with pytest.raises(InvalidArgumentError, match="sync_wait"):
        client.run(b)


@pytest.mark.parametrize("attempt", range(4))
def test_restore_racing_a_create_with_another_shape(client: vs.Client, server: Server,
                                                    attempt: int) -> None:
    client.Variable(np.arange(4, dtype=np.float32), name="v")
    client.Variable(np.int64(5), name="other")
    client.save("ck")
    # A second server with a copy of the folder starts empty: its restore creates the
    # variables.
    copy = Path(server.checkpoints.directory).with_name(f"copy{attempt}")
    shutil.copytree(server.checkpoints.directory, copy)
    second = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=copy))
    second.start()
    try:
        with vs.connect(f"127.0.0.1:{second.port}") as a, \
                vs.connect(f"127.0.0.1:{second.port}") as b:
            results: list[str] = []

            def create_other_shape() -> None:
                r = RequestBuilder()
                r.variable("v", F32, (3,), initializer=r.const(np.ones(3, np.float32), F32))
                try:
                    b.run(r)
                    results.append("created")
                except InvalidArgumentError:
                    results.append("refused")

            thread, _ = _in_background(create_other_shape)
            try:
                a.restore("ck")
                results.append("restored")
            except InvalidArgumentError:
                results.append("restore refused")
            thread.join()
            value = _read(a, "v")
            if value.shape == (3,):
                assert value.tolist() == [1.0, 1.0, 1.0]
                assert sorted(results) == ["created", "restore refused"]
                assert [v.name for v in a.list_variables()] == ["v"]
            else:
                assert value.tolist() == [0.0, 1.0, 2.0, 3.0]
                assert sorted(results) == ["refused", "restored"]
                assert int(_read(a, "other")) == 5
    finally:
        second.stop(grace=1.0)


def test_optimizer_update_failing_halfway_is_undone(client: vs.Client) -> None:
    """An optimizer op as the request's last node updates a variable and its slot; when the
    request then fails (its reply is too large), both are put back."""
    client.Variable(np.ones(3, np.float32), name="w")
    client.Variable(np.zeros(3, np.float32), name="w/Momentum")
    b = RequestBuilder()
    b.fetch(b.node("ones", dtype=F32, shape=[80 << 18]))
    lr = b.const(np.float32(0.1), F32)
    grad = b.const(np.ones(3, np.float32), F32)
    slot = b.node("ref", variable="w/Momentum")
    b.target(b.node("apply_momentum", [slot, lr, grad, b.const(np.float32(0.9), F32)],
                    variable="w"))
    with pytest.raises(ResourceExhaustedError):
        client.run(b)
    assert _read(client, "w").tolist() == [1.0, 1.0, 1.0]
    assert _read(client, "w/Momentum").tolist() == [0.0, 0.0, 0.0]
