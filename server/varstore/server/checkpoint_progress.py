"""Progress of a save or restore as plain values, and the relay that streams it from the
thread doing the work to the RPC's thread (the servicer turns it into messages)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

__all__ = ["PIECE_BYTES", "Progress", "ProgressSink", "Saved", "Tally", "progress_stream"]

# Large variables are copied and written in pieces of this size, with progress per piece.
PIECE_BYTES = 64 << 20
# Progress counted in tensors goes out at most about this many times per checkpoint.
PROGRESS_STEPS = 100


@dataclass
class Progress:
    """How far a save or restore is: tensor bytes and tensors, done and in all."""

    bytes_done: int = 0
    bytes_total: int = 0
    tensors_done: int = 0
    tensors_total: int = 0


ProgressSink = Callable[[Progress], None]


@dataclass
class Saved:
    """A finished save: the checkpoint's path as the client named it, and its saver's own
    checkpoints still on disk, oldest first (TensorFlow's ``Saver.last_checkpoints``)."""

    path: str
    last_checkpoints: list[str]


class Tally:
    """Counts a checkpoint operation's progress; reports it after every ``PIECE_BYTES`` and
    every few tensors (about ``PROGRESS_STEPS`` reports in all), and when complete."""

    def __init__(self, sink: ProgressSink | None, tensors: int, nbytes: int) -> None:
        self.sink = sink
        self.progress = Progress(0, nbytes, 0, tensors)
        self._every = max(1, tensors // PROGRESS_STEPS)
        self._bytes = self._tensors = 0
        self._report()

    def advance(self, nbytes: int, tensors: int = 0) -> None:
        """Adds ``nbytes`` written or read and ``tensors`` finished."""
        p = self.progress
        p.bytes_done += nbytes
        p.tensors_done += tensors
        self._bytes += nbytes
        self._tensors += tensors
        if (self._bytes >= PIECE_BYTES or self._tensors >= self._every
                or p.tensors_done == p.tensors_total):
            self._bytes = self._tensors = 0
            self._report()

    def _report(self) -> None:
        if self.sink is not None:
            p = self.progress
            # String tensors may grow while a save runs; never report more done than total.
            self.sink(replace(p, bytes_total=max(p.bytes_total, p.bytes_done)))


def progress_stream(job: Callable[[ProgressSink], Saved]
                    ) -> Iterator[tuple[Progress, Saved | None]]:
    """Runs ``job`` on its own thread and yields ``(progress, None)`` for each of its
    reports, then ``(last progress, what job returned)``; re-raises what ``job`` raised. A
    client that goes away does not stop the job: a checkpoint operation, once started,
    completes."""
    relay = _Relay()
    threading.Thread(target=relay.run, args=(job,), name="varstore-checkpoint",
                     daemon=True).start()
    yield from relay.messages()


class _Relay:
    """Hands a job's progress reports from the job's thread to the RPC's thread, every one
    of them (:class:`Tally` keeps them few), without ever making the job wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: deque[Progress] = deque()
        self._finished = False
        self._result = Saved("", [])
        self._error: BaseException | None = None

    def report(self, progress: Progress) -> None:
        """Queues one report (called on the job's thread)."""
        with self._cond:
            self._pending.append(progress)
            self._cond.notify_all()

    def run(self, job: Callable[[ProgressSink], Saved]) -> None:
        """Runs ``job``, keeping its result or error for :meth:`messages`."""
        result, error = Saved("", []), None
        try:
            result = job(self.report)
        except BaseException as e:  # noqa: BLE001 - handed to the RPC's thread
            error = e
        with self._cond:
            self._result, self._error, self._finished = result, error, True
            self._cond.notify_all()

    def messages(self) -> Iterator[tuple[Progress, Saved | None]]:
        """The reports as they come, then the last with the result (see
        :func:`progress_stream`)."""
        last = Progress()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._finished)
                reports, finished = list(self._pending), self._finished
                self._pending.clear()
            for last in reports:
                yield last, None
            if finished:
                break
        if self._error is not None:
            raise self._error
        yield last, self._result
