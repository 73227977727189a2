"""A request's journal: what it changed, put back when it fails (see :class:`Journal`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from varstore.common.errors import clip
from varstore.common.protocol import READ_ONLY_OPS
from varstore.server.budget import Lease
from varstore.server.kernels import NodeDef
from varstore.server.store import Variable, VariableStore


class Journal:
    """What a request changed, to put back when it fails, so that a failed request changes
    nothing: the values of variables it changes (recorded before the node that changes
    them), and undo and commit actions of state kept beside the variables (a kernel's
    :meth:`on_undo` and :meth:`on_commit`).

    ``assign`` replaces a variable's array instead of writing into it, so its record keeps
    the old array itself; in-place updates keep a copy.
    """

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._saved: dict[int, tuple[Variable, np.ndarray | None, int]] = {}
        self._undo: list[Callable[[], None]] = []
        self._commit: list[Callable[[], None]] = []

    def save_changed(self, node: NodeDef, nodes: list[NodeDef],
                     variables: dict[str, Variable]) -> None:
        """Records the variables ``node`` may change, unless recorded already."""
        if node.op in READ_ONLY_OPS:
            return
        if node.variable:
            self._save(variables[node.variable], copy=node.op != "assign")
        for j in node.inputs:
            if nodes[j].op == "ref":
                self._save(variables[nodes[j].variable], copy=True)

    def _save(self, var: Variable, copy: bool) -> None:
        if id(var) not in self._saved:
            value = var.value
            if copy and value is not None:
                self._lease.charge_array(value.shape, var.dtype,
                                         f"an undo copy of {clip(var.name)}")
                value = value.copy()
            self._saved[id(var)] = (var, value, var.version)

    def on_undo(self, action: Callable[[], None]) -> None:
        """Runs ``action`` if the request fails (actions run newest first)."""
        self._undo.append(action)

    def on_commit(self, action: Callable[[], None]) -> None:
        """Runs ``action`` once the request succeeded, before its locks are released."""
        self._commit.append(action)

    def undo(self, store: VariableStore) -> None:
        """Puts every recorded variable back as it was (the locks are held)."""
        for action in reversed(self._undo):
            action()
        for var, value, version in self._saved.values():
            store.put_back(var, value, version)

    def commit(self) -> None:
        """Runs the commit actions."""
        for action in self._commit:
            action()
