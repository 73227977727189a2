"""The server's save timer (``--save-every``/``--keep``): ``model.ckpt-STEP`` every few
seconds and a final checkpoint when the server stops, each only when the store differs from
what ``--restore latest`` would restore now (:mod:`varstore.server.durability`: nothing
changed, nothing written; a store emptied by deletions is written as an empty checkpoint),
as one saver of its own.

``STEP`` is the value of the store's scalar integer variable ``global_step`` when it has one
(TensorFlow's convention); otherwise a counter that continues after the newest
``model.ckpt-N`` in the folder. The timer keeps the newest ``keep`` of the checkpoints it wrote
and deletes no other (see :mod:`varstore.server.retention`). On shard 0 of a cluster the
timer saves the whole cluster (:mod:`varstore.server.cluster_saver`); the other shards have
no timer.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from varstore.common.errors import OpError
from varstore.server.checkpoints import CheckpointManager
from varstore.server.cluster_saver import GLOBAL_STEP, ClusterSaver

__all__ = ["TIMER_PREFIX", "SaveTimer", "newest_step"]

log = logging.getLogger(__name__)

TIMER_PREFIX = "model.ckpt"
# The timer's saver; clients' savers are ("client", name), so no client can take its place.
TIMER_SAVER = ("timer",)


class SaveTimer:
    """Saves through ``checkpoints`` every ``save_every`` seconds (0: never) and at
    :meth:`stop`, keeping ``keep`` of its checkpoints (0: deletes none); the whole cluster
    through ``cluster`` when given (shard 0 of a cluster)."""

    def __init__(self, checkpoints: CheckpointManager, save_every: float = 0.0,
                 keep: int = 5, cluster: ClusterSaver | None = None) -> None:
        self.checkpoints = checkpoints
        self.save_every = save_every
        self.keep = keep
        self.cluster = cluster
        self._counter: int | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Starts the timer when ``save_every`` is set."""
        if self.save_every > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="varstore-save-timer",
                                           daemon=True)
            self._thread.start()

    def pause(self) -> None:
        """Starts no more periodic saves (one in progress finishes): the server is stopping,
        and :meth:`stop` writes the final one."""
        self._stopping.set()

    def stop(self, save: bool = True, why_not: str = "--no-save-on-exit") -> bool:
        """Stops the timer and waits for a save or restore in progress; then, when variables
        were created, changed or deleted since the checkpoint ``--restore latest`` would restore
        now, writes a final checkpoint, or with ``save`` off logs which changes are discarded and
        ``why_not`` (issue #13: a parameter server's state is the training run). Failures are logged
        as errors, not raised; returns False when the final checkpoint was due and could not be
        written (so the process can exit with an error)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        written = True
        try:
            changed = (self.cluster.unsaved() if self.cluster is not None
                       else self.checkpoints.unsaved())
        except OpError as e:
            log.error("final checkpoint not written: %s: %s", type(e).__name__, e.message)
            written = not save
        else:
            written = self._final(changed, save, why_not)
        if self.cluster is not None:
            self.cluster.close()
        return written

    def _final(self, changed: list[str], save: bool, why_not: str) -> bool:
        if not changed:
            log.info("no changes since the checkpoint --restore latest restores: nothing to "
                     "save on exit")
        elif save:
            return self._save_logged("final")
        else:
            log.warning("%s: discarding the changes of %d variables since the last "
                        "checkpoint (%s%s)", why_not, len(changed), ", ".join(changed[:10]),
                        ", ..." if len(changed) > 10 else "")
        return True

    def save_periodic(self) -> str | None:
        """Writes ``model.ckpt-STEP`` as the timer's saver, which keeps the newest ``keep`` of
        its own checkpoints; returns its path, or None (writing nothing) when the store is
        what ``--restore latest`` would restore now (:meth:`CheckpointManager.unsaved`).
        Raises what :meth:`CheckpointManager.save` and :meth:`ClusterSaver.save` raise."""
        if self.cluster is not None:
            return self.cluster.save(TIMER_PREFIX, self._next_step, self.keep, TIMER_SAVER)
        if not self.checkpoints.unsaved():
            return None
        return self.checkpoints.save(TIMER_PREFIX, global_step=self._timer_step(),
                                     max_to_keep=self.keep, saver=TIMER_SAVER,
                                     internal=True).path

    def _run(self) -> None:
        while not self._stopping.wait(self.save_every):
            self._save_logged("periodic")

    def _save_logged(self, kind: str) -> bool:
        """One save of ``kind`` (periodic or final), logged; whether it was written (or
        nothing needed it)."""
        try:
            path = self.save_periodic()
        except OpError as e:
            log.error("%s checkpoint not written: %s: %s", kind, type(e).__name__, e.message)
            return False
        except Exception:  # noqa: BLE001 - the timer must survive a bug in one save
            log.exception("%s checkpoint failed", kind)
            return False
        if path is None:  # each period of an idle server: not worth an INFO line each
            log.log(logging.INFO if kind == "final" else logging.DEBUG,
                    "%s checkpoint skipped: the store is what --restore latest restores",
                    kind)
        elif kind == "final":
            log.info("final checkpoint%s written: %s",
                     "" if self.cluster is None else " of the whole cluster", path)
        return True

    def _timer_step(self) -> int:
        var = self.checkpoints.store.find(GLOBAL_STEP)
        if var is not None and var.dtype.is_integer and var.shape == ():
            with var.lock:
                if var.value is not None:
                    return int(var.value)
        return self._next_step()

    def _next_step(self) -> int:
        """One past the last step the timer counted, or past the folder's newest
        ``model.ckpt-N`` at first."""
        if self._counter is None:
            self._counter = newest_step(self.checkpoints.folder.root)
        self._counter += 1
        return self._counter


def newest_step(folder: str | Path) -> int:
    """The largest N of the ``model.ckpt-N`` checkpoints in ``folder`` (0: none)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    pattern = re.compile(re.escape(TIMER_PREFIX) + r"-(\d{1,18})\.index")
    return max((int(m.group(1)) for n in names if (m := pattern.fullmatch(n))), default=0)
