"""Waiting on behalf of a call: bounded by the call's deadline, ended by its cancellation and
by the server's shutdown.

Every wait of the server (``WaitInitialized``, ``sync_wait``, a request waiting for a
variable another request is still creating) goes through :class:`Waiter`. It waits in short
slices, so a call that its client cancelled, or that the server cancels at shutdown, gives its
thread back within :data:`SLICE_SECONDS`, whatever timeout the client asked for. No wait
ever happens while the waiting thread holds a variable's lock.

Waiting *for* a variable's lock goes through it too (:meth:`Waiter.acquire`): in slices, ended
by the deadline, the cancellation and the shutdown. A call that is not a long call already
holds a long-call slot while it waits past a short grace (:attr:`Waiter.hold`), and for the
rest of its own work once that lasted :data:`WORK_GRACE_SECONDS` (:meth:`Waiter.working`), so
that neither calls waiting for a lock nor CPU-heavy calls can take every thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Protocol

from varstore.common.errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    UnavailableError,
)

# How often a waiting call checks that it is still wanted.
SLICE_SECONDS = 0.1
# The longest wait a client may ask for; longer ones are cut to this.
MAX_WAIT_SECONDS = 3600.0
# Left of a call's deadline to send its answer in, when a wait runs until the deadline.
ANSWER_MARGIN_SECONDS = 0.05
# How long a call may wait for a variable's lock before the wait counts as a long call.
LOCK_GRACE_SECONDS = 0.05
# How long a call's own work (a Run's nodes) may last before the rest counts as a long call.
WORK_GRACE_SECONDS = 0.25


class CallContext(Protocol):
    """What a wait needs of a call's context (``grpc.ServicerContext`` is one), without this
    module depending on gRPC."""

    def time_remaining(self) -> float | None: ...

    def is_active(self) -> bool: ...


def client_duration(value: float, what: str, maximum: float = MAX_WAIT_SECONDS) -> float:
    """A duration a client sent, in seconds, cut to ``maximum``.

    Raises ``InvalidArgumentError`` for a negative or NaN value (infinity is cut, not refused).
    """
    value = float(value)
    if math.isnan(value) or value < 0:
        raise InvalidArgumentError(f"{what} must be a number of seconds >= 0, got {value!r}")
    return min(value, maximum)


class Waiter:
    """The limits of one call's waits.

    ``stopping`` is the server's shutdown event; ``deadline`` a ``time.monotonic()`` time the
    call must answer by (None: none); ``active`` tells whether the call is still wanted (the
    gRPC context's ``is_active``; None: always); ``hold``, for a call that is no long call
    already, makes a context that holds a long-call slot while the call waits (it raises
    ``ResourceExhaustedError`` when none is left; None: nothing to hold).
    """

    def __init__(self, stopping: threading.Event | None = None, deadline: float | None = None,
                 active: Callable[[], bool] | None = None,
                 hold: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        self.stopping = stopping
        self.deadline = deadline
        self.active = active
        self.hold = hold
        self._holding = False
        self._held = ExitStack()
        self._long_at = time.monotonic() + WORK_GRACE_SECONDS

    @classmethod
    def for_call(cls, context: CallContext, stopping: threading.Event,
                 hold: Callable[[], AbstractContextManager[object]] | None = None) -> Waiter:
        """A waiter for a gRPC call: its deadline (less the time to answer) and cancellation;
        ``hold`` as the class says."""
        remaining = context.time_remaining()
        deadline = None
        if remaining is not None:
            deadline = time.monotonic() + max(0.0, remaining - ANSWER_MARGIN_SECONDS)
        return cls(stopping, deadline, context.is_active, hold)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Holds what :attr:`hold` gives (once, however nested) for the block; raises what it
        raises (before the block runs)."""
        if self.hold is None or self._holding:
            yield
            return
        with self.hold():
            self._holding = True
            try:
                yield
            finally:
                self._holding = False

    def working(self) -> None:
        """Called between the steps of the call's own work (a Run's nodes): past
        :data:`WORK_GRACE_SECONDS` since the call began, the rest of the call holds what
        :attr:`hold` gives, until :meth:`close`; raises what ``hold`` raises (a call that
        changed nothing yet may then be repeated)."""
        if self.hold is not None and not self._holding and time.monotonic() > self._long_at:
            self._held.enter_context(self.hold())
            self._holding = True

    def close(self) -> None:
        """Gives back what :meth:`working` took."""
        self._held.close()
        self._holding = False

    def acquire(self, lock: threading.Lock, what: Callable[[], str]) -> None:
        """Takes ``lock``, waiting in slices as :meth:`wait_for` does, counted as a long call
        (:meth:`waiting`) past :data:`LOCK_GRACE_SECONDS`.

        Raises ``DeadlineExceededError`` naming ``what()`` (the lock's variable) at the call's
        deadline, what :meth:`check` and :meth:`waiting` raise; the lock is not held then.
        """
        if lock.acquire(blocking=False) or lock.acquire(timeout=self._left(LOCK_GRACE_SECONDS)):
            return
        with self.waiting():
            while True:
                self.check()
                left = self._left(SLICE_SECONDS)
                if left <= 0:
                    raise DeadlineExceededError(
                        f"{what()} is held by another request until after this call's "
                        "deadline; nothing was changed")
                if lock.acquire(timeout=left):
                    return

    def _left(self, most: float) -> float:
        """``most`` seconds, or less when the deadline comes sooner (0 when it passed)."""
        if self.deadline is None:
            return most
        return max(0.0, min(most, self.deadline - time.monotonic()))

    def check(self) -> None:
        """Raises ``UnavailableError`` when the server is stopping and ``CancelledError`` when
        the call was cancelled."""
        if self.stopping is not None and self.stopping.is_set():
            raise UnavailableError("the server is shutting down")
        if self.active is not None and not self.active():
            raise CancelledError("the call was cancelled")

    def wait_for(self, condition: threading.Condition, predicate: Callable[[], bool],
                 timeout: float | None = None) -> bool:
        """Waits on ``condition`` (held by the caller) until ``predicate()`` is true, for at
        most ``timeout`` seconds (None: no limit of its own) and never past the call's
        deadline; returns the predicate's last value.

        Raises what :meth:`check` raises when the call ends or the server stops meanwhile.
        """
        end = self.deadline
        if timeout is not None:
            end = time.monotonic() + timeout if end is None else min(end, time.monotonic()
                                                                     + timeout)
        if predicate():
            return True
        with self.waiting():
            while not predicate():
                self.check()
                left = SLICE_SECONDS if end is None else min(SLICE_SECONDS,
                                                             end - time.monotonic())
                if left <= 0:
                    return predicate()
                condition.wait(left)
        return True
