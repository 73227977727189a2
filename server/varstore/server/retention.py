"""Which checkpoints a save deletes: TensorFlow 1's ``Saver`` rule, kept on the server.

As ``tf.compat.v1.train.Saver`` (``training/saver.py``: ``_RecordLastCheckpoint``,
``_MaybeDeleteOldCheckpoints``), every saver remembers the checkpoints it wrote itself,
oldest first. A save appends the new one (moving it to the end when that name was written
before); past ``max_to_keep`` the oldest falls off the list and is deleted, unless
``keep_checkpoint_every_n_hours`` keeps it. ``max_to_keep`` 0 records nothing and deletes
nothing. A saver never deletes a checkpoint it did not write, whatever a state file lists,
and forgets its list when the server stops (a new TF ``Saver`` starts with an empty list too).

Savers are named by the client (a v1 ``Saver``, one eager prefix, ``varstore save`` of one
prefix) or are the server's own timer. The server remembers at most :data:`MAX_SAVERS`
savers; the least recently used is forgotten first, which can only make it delete less.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from varstore.common.errors import InvalidArgumentError, clip

__all__ = ["MAX_SAVERS", "MAX_SAVER_NAME", "Retention", "SaverSettings", "Written",
           "check_retention", "client_saver", "file_identity"]

MAX_SAVERS = 4096
MAX_SAVER_NAME = 256

# (st_dev, st_ino, st_size, st_mtime_ns) of a file: one replaced or rewritten since this
# server wrote it is not its own any more.
FileId = tuple[int, int, int, int]


def file_identity(paths: Iterable[str]) -> dict[str, FileId]:
    """``{path: (device, inode, size, mtime)}`` of the files among ``paths`` that exist."""
    found: dict[str, FileId] = {}
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        found[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return found


@dataclass
class Written:
    """A checkpoint this server wrote: its name as the client gave it, its real prefix,
    when it was written (unix time) and the identity of each of its files."""

    named: str
    prefix: str
    time: float
    files: dict[str, FileId] = field(default_factory=dict)


@dataclass(frozen=True)
class SaverSettings:
    """How a save records itself, as ``Saver(max_to_keep, keep_checkpoint_every_n_hours)``
    and ``Saver.save(latest_filename, write_state)`` say: ``saver`` names who saves (None: a
    saver for this save alone), ``latest_filename`` the state file ("" for ``checkpoint``)."""

    saver: Hashable | None = None
    max_to_keep: int = 0
    latest_filename: str = ""
    write_state: bool = True
    keep_every_hours: float = 0.0


@dataclass
class _History:
    last: list[Written]
    next_keep_time: float


class Retention:
    """The checkpoints each saver wrote, and which of them a new save makes it delete."""

    def __init__(self, max_savers: int = MAX_SAVERS) -> None:
        self._savers: OrderedDict[Hashable, _History] = OrderedDict()
        self._max_savers = max_savers

    def record(self, saver: Hashable | None, written: Written, max_to_keep: int,
               keep_every_hours: float = 0.0) -> tuple[list[Written], list[Written]]:
        """Records that ``saver`` (None: a saver for this save alone) wrote ``written``.

        Returns the saver's checkpoints after the save (oldest first; empty when
        ``max_to_keep`` is 0) and the ones to delete now. ``keep_every_hours`` > 0 keeps, of
        the checkpoints that fall off the list, one per that many hours since the saver's
        first save. Raises ``InvalidArgumentError`` for a negative ``max_to_keep`` or a
        negative or non-finite ``keep_every_hours``.
        """
        check_retention(max_to_keep, keep_every_hours)
        history = self._history(saver, written.time, keep_every_hours)
        if not max_to_keep:
            return [], []
        history.last = [w for w in history.last if w.prefix != written.prefix]
        history.last.append(written)
        doomed: list[Written] = []
        while len(history.last) > max_to_keep:
            oldest = history.last.pop(0)
            if keep_every_hours > 0 and oldest.time > history.next_keep_time:
                history.next_keep_time += keep_every_hours * 3600
                continue
            doomed.append(oldest)
        return list(history.last), doomed

    def _history(self, saver: Hashable | None, now: float, keep_every_hours: float) -> _History:
        start = now + keep_every_hours * 3600
        if saver is None:
            return _History([], start)
        history = self._savers.get(saver)
        if history is None:
            history = self._savers[saver] = _History([], start)
            while len(self._savers) > self._max_savers:
                self._savers.popitem(last=False)
        self._savers.move_to_end(saver)
        return history


def check_retention(max_to_keep: int, keep_every_hours: float) -> None:
    """Raises ``InvalidArgumentError`` unless ``max_to_keep`` >= 0 and ``keep_every_hours``
    is finite and >= 0."""
    if max_to_keep < 0:
        raise InvalidArgumentError(f"max_to_keep must be >= 0, got {max_to_keep}")
    if not math.isfinite(keep_every_hours) or keep_every_hours < 0:
        raise InvalidArgumentError(
            f"keep_checkpoint_every_n_hours must be a finite number >= 0, got "
            f"{keep_every_hours!r}")


def client_saver(name: str) -> Hashable | None:
    """The saver a client named ``name`` (None for "": a saver for one save), kept apart from
    the server's own savers. Raises ``InvalidArgumentError`` for a name over
    :data:`MAX_SAVER_NAME` bytes."""
    if len(name.encode("utf-8", "surrogatepass")) > MAX_SAVER_NAME:
        raise InvalidArgumentError(
            f"saver name longer than {MAX_SAVER_NAME} bytes: {clip(repr(name))}")
    return ("client", name) if name else None
