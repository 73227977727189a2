"""``tf.train.MonitoredTrainingSession``: chief and workers of a between-graph training job.

The chief restores the newest checkpoint of ``checkpoint_dir`` (a folder inside the server's
checkpoint folder) or, when there is none, runs ``global_variables_initializer()``; it then
saves a checkpoint at once, every ``save_checkpoint_secs`` seconds and when the session
closes. Other workers wait until every global variable of their graph is initialized on the
server: the server wakes them as soon as the chief is done (no polling), they log what they
wait for, and after ``max_wait_secs`` they raise ``DeadlineExceededError`` naming the variables.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from varstore import train
from varstore.v1.graph import Graph, get_default_graph
from varstore.v1.saver import Saver, checkpoint_entries
from varstore.v1.session import Session
from varstore.v1.training_util import get_global_step
from varstore.v1.variables import global_variables, global_variables_initializer

log = logging.getLogger(__name__)

USE_DEFAULT = object()


class StopAtStepHook:
    """Asks the session to stop once the global step reaches ``last_step``, or ``num_steps``
    steps after the step the session started at (exactly one of them). Raises ``ValueError``
    otherwise."""

    def __init__(self, num_steps: int | None = None, last_step: int | None = None) -> None:
        if (num_steps is None) == (last_step is None):
            raise ValueError("One of num_steps or last_step must be specified.")
        if num_steps is not None and num_steps < 0:
            raise ValueError("num_steps must be nonnegative.")
        self._num_steps = num_steps
        self.last_step = last_step

    def _begin(self, step: int) -> None:
        if self._num_steps is not None:
            self.last_step = step + self._num_steps

    def _done(self, step: int) -> bool:
        return self.last_step is not None and step >= self.last_step


class MonitoredSession:
    """A session that has been initialized or restored (chief) or found ready (worker);
    made by :func:`MonitoredTrainingSession`. ``run`` is one round trip, also reading the
    global step for the hooks."""

    def __init__(self, session: Session, hooks: Sequence[StopAtStepHook],
                 saver: train.CheckpointSaver | None) -> None:
        self._session = session
        self._hooks = list(hooks)
        self._saver = saver
        self._global_step = get_global_step(session.graph)
        self._stop = False
        self._step = None if self._global_step is None else int(session.run(self._global_step))
        for hook in self._hooks:
            if self._step is None:
                raise ValueError("StopAtStepHook needs a global step (create one with "
                                 "tf.train.get_or_create_global_step())")
            hook._begin(self._step)
        if self._saver is not None and self._step is not None:
            # As CheckpointSaverHook.after_create_session: the state at the initial step.
            self._saver.save(self._step)
        self._stop = self._done()

    @property
    def graph(self) -> Graph:
        """The graph the session runs."""
        return self._session.graph

    def run(self, fetches: Any, feed_dict: Any = None) -> Any:
        """As ``Session.run``; then the chief saves a checkpoint when one is due, and the
        hooks may ask to stop. Raises ``RuntimeError`` once a hook asked to stop or the
        session is closed, as TF's ``_MonitoredSession.run``."""
        if self.should_stop():
            raise RuntimeError("Run called even after should_stop requested.")
        if self._global_step is None:
            values = self._session.run(fetches, feed_dict)
        else:
            values, step = self._session.run([fetches, self._global_step], feed_dict)
            self._step = int(step)
            if self._saver is not None:
                self._saver.maybe_save(self._step)
        self._stop = self._done()
        return values

    def _done(self) -> bool:
        return self._step is not None and any(h._done(self._step) for h in self._hooks)

    def should_stop(self) -> bool:
        """True once a hook asked to stop, or the session is closed."""
        return self._stop

    def close(self) -> None:
        """The chief saves a last checkpoint unless it saved this step already (as
        ``CheckpointSaverHook.end``); then the connection closes."""
        if (self._saver is not None and self._step is not None
                and self._step != self._saver.last_step):
            self._saver.save(self._step)
        self._saver = None
        self._stop = True
        self._session.close()

    def __enter__(self) -> MonitoredSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def MonitoredTrainingSession(  # noqa: N802 - TensorFlow's name
        master: str = "", is_chief: bool = True, checkpoint_dir: str | None = None,
        hooks: Sequence[StopAtStepHook] | None = None,
        save_checkpoint_secs: Any = USE_DEFAULT, max_wait_secs: float = 7200.0
        ) -> MonitoredSession:
    """Connects to the server ``master`` and prepares the default graph's global variables.

    The chief restores ``checkpoint_dir``'s newest checkpoint or initializes every global
    variable, and saves ``model.ckpt-STEP`` there at once (the initial step), every
    ``save_checkpoint_secs`` (600 by default; None: never) and on close. Other workers
    wait up to ``max_wait_secs`` for the chief. Raises ``DeadlineExceededError`` naming the
    variables still uninitialized, ``TypeError`` for a hook varstore does not provide, and
    the server's errors for an unreadable checkpoint.
    """
    hooks = list(hooks or [])
    for hook in hooks:
        if not isinstance(hook, StopAtStepHook):
            raise TypeError(f"varstore.v1 runs StopAtStepHook only, not {hook!r}")
    variables = global_variables()
    session = Session(master, graph=get_default_graph())
    try:
        saver = _prepare(session, variables, is_chief, checkpoint_dir, save_checkpoint_secs,
                         max_wait_secs)
        return MonitoredSession(session, hooks, saver)
    except BaseException:
        session.close()
        raise


def _prepare(session: Session, variables: list[Any], is_chief: bool,
             checkpoint_dir: str | None, save_checkpoint_secs: Any, max_wait_secs: float
             ) -> train.CheckpointSaver | None:
    names = [v.op.name for v in variables]
    if not is_chief:
        train.wait_until_ready(session.client, names, timeout=max_wait_secs)
        return None
    session.bind_variables()
    latest = None
    if checkpoint_dir is not None:
        latest = session.client.latest_checkpoint(checkpoint_dir)
    if latest is not None:
        Saver(variables).restore(session, latest)
        log.info("restored %s", latest)
    else:
        session.run(global_variables_initializer())
    secs = 600.0 if save_checkpoint_secs is USE_DEFAULT else save_checkpoint_secs
    if checkpoint_dir is None or secs is None:
        return None
    # As the Saver of TF's CheckpointSaverHook: partitioned variables as slices of one tensor.
    return train.CheckpointSaver(session.client, checkpoint_dir, float(secs),
                                 var_list=checkpoint_entries(variables))
