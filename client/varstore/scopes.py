"""TensorFlow 1.x naming: unique names, name scopes, variable scopes and reuse.

One :class:`Naming` exists per graph (``varstore.v1``) or per client (eager ``varstore``); it
holds what TF keeps in ``ops.Graph`` (names in use, the name stack) and in
``variable_scope._VariableStore`` (variables made by ``get_variable``, scope counts). The rules
and messages follow TF's ``python/framework/ops.py`` and ``python/ops/variable_scope.py``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from varstore.common import dtypes, names


class _ReuseMode(enum.Enum):
    AUTO_REUSE = 1


AUTO_REUSE = _ReuseMode.AUTO_REUSE


def shape_str(shape: Sequence[int] | None) -> str:
    """A shape as TF's ``TensorShape`` prints it: ``(2,)``, ``(3, 4)``, ``<unknown>``."""
    if shape is None:
        return "<unknown>"
    return str(tuple(None if d is None else int(d) for d in shape))


# The defaults a variable scope carries for ``get_variable`` besides reuse and dtype, as TF's
# ``VariableScope`` keeps them; each has a ``set_<name>`` method.
SCOPE_DEFAULTS = ("initializer", "regularizer", "caching_device", "partitioner",
                  "custom_getter", "use_resource", "constraint")


class VariableScope:
    """A variable scope: its name, reuse mode, name scope and the defaults it gives
    ``get_variable`` (initializer, regularizer, partitioner, custom getter, dtype...), as
    TF's ``variable_scope.VariableScope``."""

    def __init__(self, reuse: bool | _ReuseMode | None, name: str = "",
                 initializer: Any = None, dtype: Any = None, name_scope: str = "",
                 **defaults: Any) -> None:
        self._reuse = reuse
        self._name = name
        self.initializer = initializer
        self.dtype = dtype
        self.original_name_scope = name_scope
        self.regularizer: Any = None
        self.caching_device: Any = None
        self.partitioner: Any = None
        self.custom_getter: Any = None
        self.use_resource: Any = None
        self.constraint: Any = None
        for key, value in defaults.items():
            if key not in SCOPE_DEFAULTS:
                raise TypeError(f"VariableScope got an unexpected keyword argument '{key}'")
            setattr(self, key, value)

    @property
    def name(self) -> str:
        """The scope's full name (``"foo/bar"``)."""
        return self._name

    @property
    def reuse(self) -> bool | _ReuseMode | None:
        """False (create only), True (reuse only) or ``AUTO_REUSE``."""
        return self._reuse

    def reuse_variables(self) -> None:
        """Makes ``get_variable`` in this scope return existing variables."""
        self._reuse = True

    def set_initializer(self, initializer: Any) -> None:
        """Sets the default initializer of variables created in this scope."""
        self.initializer = initializer

    def set_dtype(self, dtype: Any) -> None:
        """Sets the default dtype of variables created in this scope."""
        self.dtype = dtype

    def set_regularizer(self, regularizer: Any) -> None:
        """Sets the default regularizer of variables created in this scope."""
        self.regularizer = regularizer

    def set_caching_device(self, caching_device: Any) -> None:
        """Sets the default caching device (accepted; the server holds every value)."""
        self.caching_device = caching_device

    def set_partitioner(self, partitioner: Any) -> None:
        """Sets the default partitioner of variables created in this scope."""
        self.partitioner = partitioner

    def set_custom_getter(self, custom_getter: Any) -> None:
        """Sets the custom getter ``get_variable`` calls in this scope."""
        self.custom_getter = custom_getter

    def set_use_resource(self, use_resource: Any) -> None:
        """Sets ``use_resource`` (accepted; every varstore variable is a server resource)."""
        self.use_resource = use_resource

    def _copy(self, reuse: bool | _ReuseMode | None, name: str, name_scope: str
              ) -> VariableScope:
        """A scope with this one's defaults under a new name, reuse and name scope."""
        return VariableScope(reuse, name, self.initializer, self.dtype, name_scope,
                             **{k: getattr(self, k) for k in SCOPE_DEFAULTS[1:]})

    def __repr__(self) -> str:
        return f"<VariableScope {self._name!r} reuse={self._reuse}>"


def _wrap_custom_getter(custom_getter: Any, old: Any) -> Any:
    """``custom_getter`` calling ``old`` as its getter, as TF's ``_maybe_wrap_custom_getter``
    (getters are called with keyword arguments: ``getter=``, ``name=``...)."""
    if old is None:
        return custom_getter

    def wrapped(getter: Any, *args: Any, **kwargs: Any) -> Any:
        return custom_getter(functools.partial(old, getter), *args, **kwargs)
    return wrapped


class Naming:
    """Name bookkeeping of one graph or client."""

    def __init__(self) -> None:
        self._names_in_use: dict[str, int] = {}
        # While variable_name runs: what unique_name changed, (key, previous count or None).
        self._claims: list[tuple[str, int | None]] | None = None
        self.name_stack = ""
        self.var_scope = VariableScope(False, dtype=dtypes.float32)
        self._scope_counts: dict[str, int] = {}
        self.shared: dict[str, Any] = {}
        # Partitioned variables by full name (varstore.v1.partitioned).
        self.partitioned: dict[str, Any] = {}

    # --- names ----------------------------------------------------------------------------

    def unique_name(self, name: str, mark_as_used: bool = True) -> str:
        """``name`` under the current name scope, suffixed ``_1``, ``_2``... when taken."""
        if self.name_stack:
            name = f"{self.name_stack}/{name}"
        key = name.lower()
        i = self._names_in_use.get(key, 0)
        if mark_as_used:
            self._mark(key, i + 1)
        if i > 0:
            base = key
            while key in self._names_in_use:
                key = f"{base}_{i}"
                i += 1
            if mark_as_used:
                self._mark(key, 1)
            name = f"{name}_{i - 1}"
        return name

    def _mark(self, key: str, count: int) -> None:
        if self._claims is not None:
            self._claims.append((key, self._names_in_use.get(key)))
        self._names_in_use[key] = count

    def op_name(self, name: str) -> str:
        """The full name of an op created as ``name`` (TF's ``Graph.create_op``): a name
        ending in ``/`` is taken as is (without the slash), others are made unique."""
        return name[:-1] if name.endswith("/") else self.unique_name(name)

    @contextlib.contextmanager
    def name_scope(self, name: str | None, default_name: str | None = None) -> Iterator[str]:
        """Opens a name scope; yields its name with a trailing ``/`` ("" at the top), as TF's
        ``Graph.name_scope``.

        A name ending in ``/`` is taken as is (re-entering a scope); None or "" resets to
        the top level; other names are made unique.

        Raises:
            ValueError: the name does not match TF's root or nested scope pattern.
        """
        name = name if name is not None else default_name
        if name:
            names.check_scope_name(name, at_root=not self.name_stack)
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

    def variable_name(self, name: str | None) -> tuple[str, Callable[[], None]]:
        """The full name ``tf.Variable(name=...)`` gets (a unique name scope of its own), and
        a function giving the name back, for a variable the server refused: the next
        ``Variable(name=...)`` gets the same name again. Other calls may take names
        meanwhile (asyncio): unique_name skips every name still in use, so none repeats.

        Raises ``ValueError`` for a name TF refuses, leaving no name used (as TF)."""
        claims: list[tuple[str, int | None]] = []
        self._claims = claims
        try:
            with self.name_scope(name, "Variable") as scope:
                full = scope[:-1]
        finally:
            self._claims = None

        def give_back() -> None:
            for key, previous in reversed(claims):
                if previous is None:
                    self._names_in_use.pop(key, None)
                else:
                    self._names_in_use[key] = previous
        return full, give_back

    # --- variable scopes ------------------------------------------------------------------

    @contextlib.contextmanager
    def variable_scope(self, name_or_scope: str | VariableScope | None,
                       default_name: str | None = None,
                       reuse: bool | _ReuseMode | None = None, initializer: Any = None,
                       dtype: Any = None, auxiliary_name_scope: bool = True,
                       **defaults: Any) -> Iterator[VariableScope]:
        """Opens a variable scope (and its name scope), as ``tf.variable_scope``; yields the
        new :class:`VariableScope`. ``defaults`` are the other :data:`SCOPE_DEFAULTS`.

        The rules are TF's ``variable_scope``/``_pure_variable_scope``: a default name is made
        unique among the scopes opened under the current one (``fc``, ``fc_1``); closing a
        scope opened by name forgets those counts under it, closing one re-entered by object
        restores them; reuse is inherited (False at the top, never None).

        Raises:
            TypeError: no name and no default name, a name that is neither a string nor a
                scope, or a non-bool ``auxiliary_name_scope``.
            ValueError: a reuse value other than True, False, None and ``AUTO_REUSE``, or
                ``reuse=True`` with a default name; invalid scope names (TF's messages).
        """
        if name_or_scope is None and default_name is None:
            raise TypeError("If default_name is None then name_or_scope is required")
        if reuse is False:
            reuse = None
        if not (reuse is True or reuse is None or reuse is AUTO_REUSE):
            raise ValueError("The reuse parameter must be True or False or None.")
        if not isinstance(auxiliary_name_scope, bool):
            raise TypeError(f"The auxiliary_name_scope must be `True` or `False`, while get "
                            f"{auxiliary_name_scope}")
        if name_or_scope is not None and not isinstance(name_or_scope, VariableScope | str):
            raise TypeError("VariableScope: name_or_scope must be a string or VariableScope.")
        if name_or_scope is None and reuse:
            raise ValueError("reuse=True cannot be used without a name_or_scope")
        with contextlib.ExitStack() as stack:
            if auxiliary_name_scope:
                if isinstance(name_or_scope, VariableScope):
                    scope_for_names: str | None = name_or_scope.name.split("/")[-1]
                else:
                    scope_for_names = name_or_scope if name_or_scope is not None \
                        else default_name
            else:
                # As TF: re-enter the current name scope ("" at the top resets to it).
                scope_for_names = f"{self.name_stack}/" if self.name_stack else ""
            opened = None
            if scope_for_names or not auxiliary_name_scope:
                opened = stack.enter_context(self.name_scope(scope_for_names))
            if name_or_scope is None:
                assert default_name is not None
                name_or_scope = self._unique_scope_name(default_name)
            scope = self._enter_variable_scope(name_or_scope, opened, reuse, initializer,
                                               dtype, defaults, stack)
            yield scope

    def _unique_scope_name(self, prefix: str) -> str:
        """TF's ``_get_unique_variable_scope``: ``prefix``, else the first ``prefix_N`` no
        open-or-closed sibling scope has used since the parent was entered."""
        parent = self.var_scope.name
        base = f"{parent}/{prefix}" if parent else prefix
        if self._scope_counts.get(base, 0) == 0:
            return prefix
        idx = 1
        while self._scope_counts.get(f"{base}_{idx}", 0) > 0:
            idx += 1
        return f"{prefix}_{idx}"

    def _enter_variable_scope(self, name_or_scope: str | VariableScope, opened: str | None,
                              reuse: bool | _ReuseMode | None, initializer: Any, dtype: Any,
                              defaults: dict[str, Any], stack: contextlib.ExitStack
                              ) -> VariableScope:
        """TF's ``_pure_variable_scope.__enter__``; registers its ``__exit__`` on ``stack``."""
        old = self.var_scope
        if isinstance(name_or_scope, VariableScope):
            new_name = name_or_scope.name
            scope = name_or_scope._copy(reuse or name_or_scope.reuse, new_name,
                                        name_or_scope.original_name_scope)
            scope.constraint = defaults.get("constraint")
            parent_getter = name_or_scope.custom_getter
        else:
            new_name = f"{old.name}/{name_or_scope}" if old.name else name_or_scope
            scope = old._copy(reuse or old.reuse, new_name,
                              opened if opened is not None else name_or_scope)
            scope.constraint = defaults.get("constraint")
            parent_getter = old.custom_getter
        if initializer is not None:
            scope.set_initializer(initializer)
        if dtype is not None:
            scope.set_dtype(dtype)
        for key, value in defaults.items():
            if key not in SCOPE_DEFAULTS:
                raise TypeError(f"variable_scope() got an unexpected keyword argument '{key}'")
            if value is not None and key != "constraint":
                setattr(scope, key, value)
        if defaults.get("custom_getter") is not None:
            scope.custom_getter = _wrap_custom_getter(defaults["custom_getter"], parent_getter)
        self._scope_counts[new_name] = self._scope_counts.get(new_name, 0) + 1
        saved_counts = dict(self._scope_counts)
        by_object = isinstance(name_or_scope, VariableScope)

        def leave() -> None:
            if by_object:
                self._scope_counts = saved_counts
            else:
                prefix = f"{new_name}/"
                for key in self._scope_counts:
                    if key.startswith(prefix):
                        self._scope_counts[key] = 0
            self.var_scope = old

        self.var_scope = scope
        stack.callback(leave)
        return scope

    def full_name(self, name: str) -> str:
        """``name`` under the current variable scope (name scopes do not count)."""
        return f"{self.var_scope.name}/{name}" if self.var_scope.name else name

    def forget(self, names: Sequence[str]) -> list[Any]:
        """Forgets the variables ``names`` (deleted from the server), and the partitioned
        variables with a part among them; returns the variables forgotten."""
        gone = set(names)
        for full, var in list(self.partitioned.items()):
            if any(part.op_name in gone for part in var):
                del self.partitioned[full]
        return [self.shared.pop(name) for name in names if name in self.shared]

    def get_variable(self, full: str, shape: Sequence[int] | None, dtype: Any,
                     create: Callable[[str], Any],
                     find_elsewhere: Callable[[str], Any] | None = None,
                     describe: Callable[[Any], tuple[Sequence[int], Any]] | None = None,
                     reuse: Any = None) -> Any:
        """TF's ``_VariableStore.get_variable`` rules: returns the shared variable ``full``
        (a full name, see :meth:`full_name`), or ``create(full)``'s new one, or raises TF's
        ``ValueError``.

        ``reuse`` defaults to the current scope's. ``find_elsewhere(full)`` may find a
        variable this naming does not know (another client's, on the server);
        ``describe(var)`` gives (shape, dtype) for the sharing check.
        """
        if reuse is None:
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
                f"Did you mean to set reuse=tf.AUTO_REUSE in VarScope?"
                f"{names.did_you_mean(full, self.shared)}")
        with self.name_scope(None):
            var = create(full)
        self.shared[full] = var
        return var


def check_initializer_dtype(init_dtype: Any, dtype: Any) -> None:
    """TF's ``VariableScope.get_variable`` check of a value initializer against an explicit
    dtype (no conversion: ``[1, 2]`` is int32, ``np.array([1, 2])`` int64).

    Raises:
        ValueError: ``Initializer type '<dtype: 'int64'>' and explicit dtype ... don't match.``
    """
    if init_dtype != dtype:
        raise ValueError(f"Initializer type '{init_dtype}' and explicit dtype '{dtype}' don't "
                         f"match.")


def _check_sharing(name: str, shape: Sequence[int] | None, dtype: Any,
                   found_shape: Sequence[int], found_dtype: Any) -> None:
    if shape is not None and tuple(shape) != tuple(found_shape):
        raise ValueError(
            f"Trying to share variable {name}, but specified shape {shape_str(shape)} and "
            f"found shape {shape_str(found_shape)}.")
    if dtype is not None and dtype != found_dtype.base_dtype:
        raise ValueError(
            f"Trying to share variable {name}, but specified dtype {dtype.name} and found "
            f"dtype {found_dtype.name}.")


# What the eager clients cannot do with a scope default that TF 2 eager honours: refused, as
# dropping it would change results.
_EAGER_REFUSED = {
    "regularizer": "TF adds the loss it makes of each new variable to the "
                   "REGULARIZATION_LOSSES collection, and the eager client keeps no "
                   "collections: compute the loss from the variables' values",
    "custom_getter": "TF calls it instead of get_variable; use varstore.v1, or call "
                     "get_variable with the arguments the getter would give it",
    "constraint": "TF's optimizers project the variable with it after each update, and "
                  "varstore's apply_gradients does not: apply it with assign",
}


def refuse_eager(where: str, scope: Any = None, **arguments: Any) -> None:
    """Raises ``NotImplementedError`` naming the first of ``regularizer``, ``custom_getter``
    and ``constraint`` given in ``arguments`` or set on ``scope``: the eager clients cannot
    honour them, and TF 2 eager does (see ``_EAGER_REFUSED``)."""
    for key, why in _EAGER_REFUSED.items():
        value = arguments.get(key, getattr(scope, key, None))
        if value is not None:
            raise NotImplementedError(f"{where}({key}=...) is not supported by varstore's "
                                      f"eager client: {why}.")


class EagerScopes:
    """The scope methods of the eager clients (``varstore.Client``, ``varstore.aio.Client``)
    over their :class:`Naming`, with ``tf.compat.v1``'s arguments."""

    naming: Naming

    def variable_scope(self, name_or_scope: str | VariableScope | None,
                       default_name: str | None = None, values: Any = None,
                       initializer: Any = None, regularizer: Any = None,
                       caching_device: Any = None, partitioner: Any = None,
                       custom_getter: Any = None, reuse: Any = None, dtype: Any = None,
                       use_resource: bool | None = None, constraint: Any = None,
                       auxiliary_name_scope: bool = True) -> Any:
        """A context manager like ``tf.variable_scope`` (same arguments and rules, see
        :meth:`Naming.variable_scope`); yields the :class:`VariableScope`.

        ``initializer``, ``partitioner`` and ``dtype`` are defaults for ``get_variable``.
        Accepted and without effect: ``values`` (it picks a graph; TF eager ignores it too),
        ``use_resource=True`` (every variable is a server resource) and ``caching_device``
        (no value is cached: every read goes to the server; TF eager raises
        NotImplementedError for it, TF 1 graphs only cache reads with it).
        Raises ``NotImplementedError`` for ``regularizer``, ``custom_getter`` and
        ``constraint``, which TF 2 eager honours and this client cannot; TF eager's
        ``ValueError`` for ``use_resource=False``; TF's ``TypeError``/``ValueError`` for
        misuse.
        """
        refuse_eager("variable_scope", regularizer=regularizer, custom_getter=custom_getter,
                     constraint=constraint)
        if use_resource is False:  # TF's VariableScope.set_use_resource, eager
            raise ValueError("When eager execution is enabled, use_resource cannot be set to "
                             "false.")
        return self.naming.variable_scope(
            name_or_scope, default_name, reuse, initializer,
            dtypes.as_dtype(dtype) if dtype is not None else None, auxiliary_name_scope,
            caching_device=caching_device, partitioner=partitioner, use_resource=use_resource)

    def name_scope(self, name: str | None, default_name: str | None = None,
                   values: Any = None) -> Any:
        """A context manager like ``tf.name_scope``; yields the scope string (``"a/"``).
        ``values`` is accepted and ignored, as TF eager does (it picks a graph).

        Raises ``ValueError`` for names TF refuses (its messages)."""
        return self.naming.name_scope(name, default_name)

    def get_variable_scope(self) -> VariableScope:
        """The current variable scope."""
        return self.naming.var_scope
