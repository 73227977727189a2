"""Waiting on behalf of a call: bounded by the call's deadline, ended by its cancellation and
by the server's shutdown.

Every wait of the server (``WaitInitialized``, ``sync_wait``, a request waiting for a
variable another request is still creating) goes through :class:`Waiter`. It waits in short
slices, so a call that its client cancelled, or that the server cancels at shutdown, gives its
thread back within :data:`SLICE_SECONDS`, whatever timeout the client asked for. No wait
ever happens while the waiting thread holds a variable's lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from varstore.common.errors import CancelledError, InvalidArgumentError, UnavailableError

# How often a waiting call checks that it is still wanted.
SLICE_SECONDS = 0.1
# The longest wait a client may ask for; longer ones are cut to this.
MAX_WAIT_SECONDS = 3600.0
# Left of a call's deadline to send its answer in, when a wait runs until the deadline.
ANSWER_MARGIN_SECONDS = 0.05


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
    gRPC context's ``is_active``; None: always).
    """

    def __init__(self, stopping: threading.Event | None = None, deadline: float | None = None,
                 active: Callable[[], bool] | None = None) -> None:
        self.stopping = stopping
        self.deadline = deadline
        self.active = active

    @classmethod
    def for_call(cls, context: CallContext, stopping: threading.Event) -> Waiter:
        """A waiter for a gRPC call: its deadline (less the time to answer) and cancellation."""
        remaining = context.time_remaining()
        deadline = None
        if remaining is not None:
            deadline = time.monotonic() + max(0.0, remaining - ANSWER_MARGIN_SECONDS)
        return cls(stopping, deadline, context.is_active)

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
        while not predicate():
            self.check()
            left = SLICE_SECONDS if end is None else min(SLICE_SECONDS, end - time.monotonic())
            if left <= 0:
                return predicate()
            condition.wait(left)
        return True
