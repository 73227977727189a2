"""Waiting for a variable's lock goes through the call's Waiter: it ends at the call's
deadline, its cancellation or the server's shutdown, never holding the lock then, and a call
that waits past a short grace (or works past WORK_GRACE_SECONDS) holds what ``hold`` gives."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from varstore.common import dtypes
from varstore.common.errors import (
    CancelledError,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
)
from varstore.server.store import Variable, VariableStore
from varstore.server.waits import Waiter


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


def test_a_held_lock_ends_the_wait_at_the_deadline_without_the_lock() -> None:
    lock = _held_lock()
    with pytest.raises(DeadlineExceededError, match="^the lock of v is held by another"):
        Waiter(deadline=time.monotonic() + 0.2).acquire(lock, lambda: "the lock of v")
    assert lock.locked()
    lock.release()
    assert not lock.locked()


def test_a_held_lock_ends_the_wait_at_shutdown_and_cancellation() -> None:
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(UnavailableError, match="shutting down"):
        Waiter(stopping).acquire(_held_lock(), lambda: "x")
    with pytest.raises(CancelledError):
        Waiter(active=lambda: False).acquire(_held_lock(), lambda: "x")


def test_waiting_past_the_grace_holds_a_slot_once_and_gives_it_back() -> None:
    taken: list[str] = []

    @contextmanager
    def hold() -> Iterator[None]:
        taken.append("taken")
        yield
        taken.append("given back")

    lock = _held_lock()
    threading.Timer(0.3, lock.release).start()
    waiter = Waiter(hold=hold)
    with waiter.waiting():
        waiter.acquire(lock, lambda: "x")  # nested in a wait: the slot is taken once
    assert taken == ["taken", "given back"]


def test_a_refused_slot_ends_the_wait_without_the_lock() -> None:
    def hold() -> Iterator[None]:
        raise ResourceExhaustedError("no slot; try again later")

    lock = _held_lock()
    with pytest.raises(ResourceExhaustedError, match="try again later"):
        Waiter(hold=contextmanager(hold)).acquire(lock, lambda: "x")
    assert lock.locked()


def test_the_stores_locks_are_all_released_when_one_cannot_be_taken() -> None:
    store = VariableStore()
    a = Variable("a", dtypes.float32, ())
    b = Variable("b", dtypes.float32, ())
    b.lock.acquire()
    with pytest.raises(DeadlineExceededError, match="the lock of variable b"):
        with store.locked([b, a], Waiter(deadline=time.monotonic() + 0.2)):
            pass
    assert not a.lock.locked()
