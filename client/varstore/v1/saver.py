"""``tf.train.Saver`` and ``tf.train.latest_checkpoint``, as TensorFlow's ``saver.py``.

Checkpoints are written and read by the server, in TensorFlow's format, inside its
checkpoint folder: paths are resolved there, and keys are variable names without ``:0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import varstore
from varstore.v1.graph import get_default_session
from varstore.v1.session import Session
from varstore.v1.variables import Variable, global_variables


def _checkpoint_names(var_list: Sequence[Variable] | Mapping[str, Variable]) -> dict[str, str]:
    """``{checkpoint key: variable name}``: a dict's own keys, else the variables' names."""
    items = list(var_list.items()) if isinstance(var_list, Mapping) else \
        [(getattr(getattr(v, "op", None), "name", None), v) for v in var_list]
    names: dict[str, str] = {}
    for key, var in items:
        if not isinstance(var, Variable):
            raise TypeError(f"Variable to save is not a Variable: {var}")
        if key in names:
            raise ValueError(f"At least two variables have the same name: {key}")
        names[str(key)] = var.op.name
    return names


class Saver:
    """Saves and restores variables through the server.

    ``var_list`` is a list of variables (saved under their own names) or a ``{key: variable}``
    dict; None means every global variable that exists now. The server keeps the newest
    ``max_to_keep`` checkpoints of a prefix. Raises ``ValueError`` when there is nothing to
    save or two variables share a key.
    """

    def __init__(self, var_list: Sequence[Variable] | Mapping[str, Variable] | None = None,
                 max_to_keep: int = 5) -> None:
        variables = global_variables() if var_list is None else var_list
        if not variables:
            raise ValueError("No variables to save")
        self._names = _checkpoint_names(variables)
        self.max_to_keep = max_to_keep

    def save(self, sess: Session, save_path: str, global_step: Any = None,
             write_meta_graph: bool = True) -> str:
        """Writes a checkpoint ``save_path`` (``save_path-STEP`` with ``global_step``, an int
        or a tensor/variable evaluated in ``sess``); returns the path written.

        ``write_meta_graph`` is accepted for TF's signature; ``.meta`` files are TF-only and
        never written. Raises ``FailedPreconditionError`` for uninitialized variables and
        ``PermissionDeniedError`` for a path outside the server's checkpoint folder.
        """
        if global_step is not None and not isinstance(global_step, int):
            global_step = int(sess.run(global_step))
        sess.bind_variables()
        return sess.client.save(save_path, self._names, global_step, self.max_to_keep)

    def restore(self, sess: Session, save_path: str | None) -> None:
        """Sets the variables to their values in checkpoint ``save_path``; other variables
        are left as they are.

        Raises ``ValueError`` for a None path, ``NotFoundError`` for a missing checkpoint or
        key, ``InvalidArgumentError`` for a shape or dtype mismatch.
        """
        if save_path is None:
            raise ValueError("Can't load save_path when it is None.")
        sess.bind_variables()
        sess.client.restore(save_path, self._names)


def latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest checkpoint in ``checkpoint_dir`` (inside the server's checkpoint folder),
    or None; asks the default session's server, else the one ``varstore.connect()`` finds."""
    session = get_default_session()
    if session is not None:
        return session.client.latest_checkpoint(checkpoint_dir)
    with varstore.connect() as client:
        return client.latest_checkpoint(checkpoint_dir)
