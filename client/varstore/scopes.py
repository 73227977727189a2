"""TensorFlow 1.x naming: unique names, name scopes, variable scopes and reuse.

One :class:`Naming` exists per graph (``varstore.v1``) or per client (eager ``varstore``); it
holds what TF keeps in ``ops.Graph`` (names in use, the name stack) and in
``variable_scope._VariableStore`` (variables made by ``get_variable``, scope counts). The rules
and messages follow TF's ``python/framework/ops.py`` and ``python/ops/variable_scope.py``.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class _ReuseMode(enum.Enum):
    AUTO_REUSE = 1


AUTO_REUSE = _ReuseMode.AUTO_REUSE


def shape_str(shape: Sequence[int] | None) -> str:
    """A shape as TF's ``TensorShape`` prints it: ``(2,)``, ``(3, 4)``, ``<unknown>``."""
    if shape is None:
        return "<unknown>"
    return str(tuple(None if d is None else int(d) for d in shape))


class VariableScope:
    """A variable scope: its name, reuse mode, default initializer and dtype."""

    def __init__(self, reuse: bool | _ReuseMode | None, name: str = "",
                 initializer: Any = None, dtype: Any = None, name_scope: str = "") -> None:
        self._reuse = reuse
        self._name = name
        self.initializer = initializer
        self.dtype = dtype
        self.original_name_scope = name_scope

    @property
    def name(self) -> str:
        """The scope's full name (``"foo/bar"``)."""
        return self._name

    @property
    def reuse(self) -> bool | _ReuseMode | None:
        """True, ``AUTO_REUSE`` or None (create only)."""
        return self._reuse

    def reuse_variables(self) -> None:
        """Makes ``get_variable`` in this scope return existing variables."""
        self._reuse = True

    def set_initializer(self, initializer: Any) -> None:
        """Sets the default initializer of variables created in this scope."""
        self.initializer = initializer

    def __repr__(self) -> str:
        return f"<VariableScope {self._name!r} reuse={self._reuse}>"


class Naming:
    """Name bookkeeping of one graph or client."""

    def __init__(self) -> None:
        self._names_in_use: dict[str, int] = {}
        self.name_stack = ""
        self.var_scope = VariableScope(False)
        self._scope_counts: dict[str, int] = {}
        self.shared: dict[str, Any] = {}

    # --- names ----------------------------------------------------------------------------

    def unique_name(self, name: str, mark_as_used: bool = True) -> str:
        """``name`` under the current name scope, suffixed ``_1``, ``_2``... when taken."""
        if self.name_stack:
            name = f"{self.name_stack}/{name}"
        key = name.lower()
        i = self._names_in_use.get(key, 0)
        if mark_as_used:
            self._names_in_use[key] = i + 1
        if i > 0:
            base = key
            while key in self._names_in_use:
                key = f"{base}_{i}"
                i += 1
            if mark_as_used:
                self._names_in_use[key] = 1
            name = f"{name}_{i - 1}"
        return name

    @contextlib.contextmanager
    def name_scope(self, name: str | None, default_name: str | None = None) -> Iterator[str]:
        """Opens a name scope; yields its name with a trailing ``/`` ("" at the top).

        A name ending in ``/`` is taken as is (re-entering a scope); None or "" resets to
        the top level; other names are made unique.
        """
        name = name if name is not None else default_name
        old = self.name_stack
        if not name:
            new = ""
        elif name.endswith("/"):
            new = name[:-1]
        else:
            new = self.unique_name(name)
        self.name_stack = new
        try:
            yield f"{new}/" if new else ""
        finally:
            self.name_stack = old

    def variable_name(self, name: str | None) -> str:
        """The full name ``tf.Variable(name=...)`` gets: a unique name scope of its own."""
        with self.name_scope(name, "Variable") as scope:
            return scope[:-1]

    # --- variable scopes ------------------------------------------------------------------

    @contextlib.contextmanager
    def variable_scope(self, name_or_scope: str | VariableScope | None,
                       default_name: str | None = None,
                       reuse: bool | _ReuseMode | None = None, initializer: Any = None,
                       dtype: Any = None, auxiliary_name_scope: bool = True
                       ) -> Iterator[VariableScope]:
        """Opens a variable scope (and its name scope), as ``tf.variable_scope``."""
        if name_or_scope is None and default_name is None:
            raise TypeError("If default_name is None then name_or_scope is required")
        if reuse is False:
            reuse = None
        old = self.var_scope
        if isinstance(name_or_scope, VariableScope):
            scope_name = name_or_scope.name
            name_scope = name_or_scope.original_name_scope
            inherited = name_or_scope.reuse
            init = name_or_scope.initializer
            dt = name_or_scope.dtype
        else:
            if name_or_scope is None:
                base = f"{old.name}/{default_name}" if old.name else default_name
                assert base is not None
                count = self._scope_counts.get(base, 0)
                name_or_scope = default_name if count == 0 else f"{default_name}_{count}"
            assert isinstance(name_or_scope, str)
            scope_name = f"{old.name}/{name_or_scope}" if old.name else name_or_scope
            name_scope = None
            inherited = old.reuse
            init = old.initializer
            dt = old.dtype
        self._scope_counts[scope_name] = self._scope_counts.get(scope_name, 0) + 1
        new_reuse = reuse if reuse is not None else (inherited or None)
        with contextlib.ExitStack() as stack:
            if auxiliary_name_scope:
                leaf = scope_name.rsplit("/", 1)[-1]
                if name_scope is None:
                    name_scope = stack.enter_context(self.name_scope(leaf))
                elif leaf:
                    # As TF: a scope object opens a new unique name scope (foo_1) and keeps
                    # its original_name_scope.
                    stack.enter_context(self.name_scope(leaf))
            scope = VariableScope(new_reuse, scope_name, initializer or init, dtype or dt,
                                  name_scope or "")
            self.var_scope = scope
            try:
                yield scope
            finally:
                self.var_scope = old

    def full_name(self, name: str) -> str:
        """``name`` under the current variable scope (name scopes do not count)."""
        return f"{self.var_scope.name}/{name}" if self.var_scope.name else name

    def get_variable(self, name: str, shape: Sequence[int] | None, dtype: Any,
                     create: Callable[[str], Any],
                     find_elsewhere: Callable[[str], Any] | None = None,
                     describe: Callable[[Any], tuple[Sequence[int], Any]] | None = None) -> Any:
        """TF's ``get_variable`` rules: returns the shared variable ``name`` in the current
        scope, or ``create(full_name)``'s new one, or raises TF's ``ValueError``.

        ``find_elsewhere(full_name)`` may find a variable this naming does not know (another
        client's, on the server); ``describe(var)`` gives (shape, dtype) for the sharing check.
        """
        full = self.full_name(name)
        reuse = self.var_scope.reuse
        found = self.shared.get(full)
        if found is not None:
            if not reuse:
                raise ValueError(
                    f"Variable {full} already exists, disallowed. Did you mean to set "
                    f"reuse=True or reuse=tf.AUTO_REUSE in VarScope?")
            if describe is not None:
                _check_sharing(full, shape, dtype, *describe(found))
            return found
        if find_elsewhere is not None:
            found = find_elsewhere(full)
            if found is not None:
                if describe is not None:
                    _check_sharing(full, shape, dtype, *describe(found))
                self.shared[full] = found
                return found
        if reuse is True:
            raise ValueError(
                f"Variable {full} does not exist, or was not created with tf.get_variable(). "
                f"Did you mean to set reuse=tf.AUTO_REUSE in VarScope?")
        with self.name_scope(None):
            var = create(full)
        self.shared[full] = var
        return var


def _check_sharing(name: str, shape: Sequence[int] | None, dtype: Any,
                   found_shape: Sequence[int], found_dtype: Any) -> None:
    if shape is not None and tuple(shape) != tuple(found_shape):
        raise ValueError(
            f"Trying to share variable {name}, but specified shape {shape_str(shape)} and "
            f"found shape {shape_str(found_shape)}.")
    if dtype is not None and dtype != found_dtype:
        raise ValueError(
            f"Trying to share variable {name}, but specified dtype {dtype.name} and found "
            f"dtype {found_dtype.name}.")
