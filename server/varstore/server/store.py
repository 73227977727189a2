"""The global variable store: one entry per full variable name, each with its own lock.

Nothing here knows about gRPC. Concurrency: the store's lock guards only the name table
(creation, deletion, listing); each variable's value is guarded by the variable's own lock, so
updates of unrelated variables never wait for each other. Callers that touch several
variables lock them with :meth:`VariableStore.locked`, in name order so that two requests
cannot deadlock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from varstore.common.dtypes import DType
from varstore.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    clip,
)
from varstore.common.names import is_valid_node_name

# TensorFlow sets no limit; this one bounds what one name costs the server (names arrive in
# requests of up to protocol.MAX_MESSAGE_BYTES).
MAX_NAME_LENGTH = 1 << 16


def validate_name(name: str) -> str:
    """Returns ``name`` if TensorFlow accepts it as a variable's full name: a node name by
    TF's runtime rule (:func:`varstore.common.names.is_valid_node_name`: ``a//b``, ``a>b``
    and ``.a`` are names, ``a\\b``, ``_a`` and ``a:b`` are not) that does not end in ``/``
    (TF takes such a name as a scope and strips the slash).

    Raises:
        InvalidArgumentError: naming (the start of) the refused name.
    """
    if len(name) > MAX_NAME_LENGTH or not is_valid_node_name(name) or name.endswith("/"):
        raise InvalidArgumentError(f"invalid variable name {clip(repr(name))}")
    return name


@dataclass
class Variable:
    """One server variable: metadata, value and the lock that guards the value."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    trainable: bool = True
    created_by: str = "Variable"
    initializer_desc: str = ""
    value: np.ndarray | None = None
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def initialized(self) -> bool:
        """Whether the variable holds a value."""
        return self.value is not None

    @property
    def nbytes(self) -> int:
        """Bytes the variable's value occupies (strings: their total length)."""
        return value_nbytes(self.dtype, self.shape, self.value)

    def read(self) -> np.ndarray:
        """The current value (a view; hold the lock); raises ``FailedPreconditionError``."""
        if self.value is None:
            raise FailedPreconditionError(
                f"Attempting to use uninitialized value {self.name}")
        return self.value


def value_nbytes(dtype: DType, shape: tuple[int, ...], value: np.ndarray | None) -> int:
    """The bytes a value of ``dtype`` and ``shape`` occupies in the store."""
    if dtype.is_string:
        return 0 if value is None else sum(len(x) for x in value.reshape(-1))
    n = 1
    for d in shape:
        n *= d
    return n * dtype.itemsize


class VariableStore:
    """The name table of variables, with an optional limit on the bytes they hold."""

    def __init__(self, max_memory: int = 0) -> None:
        self._vars: dict[str, Variable] = {}
        self._lock = threading.Lock()
        self._initialized = threading.Condition(self._lock)
        self.max_memory = max_memory
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._vars)

    def get(self, name: str) -> Variable:
        """The variable named ``name``; raises ``NotFoundError``."""
        var = self._vars.get(name)
        if var is None:
            raise NotFoundError(f"Variable {clip(name)} does not exist on the server")
        return var

    def find(self, name: str) -> Variable | None:
        """The variable named ``name``, or None."""
        return self._vars.get(name)

    def variables(self, scope: str = "") -> list[Variable]:
        """Variables sorted by name; with ``scope``, only those at or under it."""
        with self._lock:
            items = list(self._vars.values())
        if scope:
            scope = scope.rstrip("/")
            items = [v for v in items if v.name == scope or v.name.startswith(scope + "/")]
        return sorted(items, key=lambda v: v.name)

    def bytes_stored(self) -> int:
        """Bytes reserved by all variables (their full size, initialized or not)."""
        return self._reserved

    def create(self, var: Variable) -> tuple[Variable, bool]:
        """Adds ``var`` unless a variable of that name exists; returns (variable, created).

        Binding to an existing variable checks its dtype and shape (``InvalidArgumentError``).
        A new variable that would pass the memory limit raises ``ResourceExhaustedError``.
        """
        validate_name(var.name)
        size = value_nbytes(var.dtype, var.shape, var.value)
        with self._lock:
            existing = self._vars.get(var.name)
            if existing is not None:
                check_compatible(existing, var.dtype, var.shape)
                return existing, False
            self._reserve(size, var.name)
            self._vars[var.name] = var
            if var.initialized:
                self._initialized.notify_all()
            return var, True

    def delete(self, name: str) -> None:
        """Removes a variable (used to undo a failed creation); missing names are ignored."""
        with self._lock:
            var = self._vars.pop(name, None)
            if var is not None:
                self._reserved -= var.nbytes

    def _reserve(self, size: int, name: str) -> None:
        if self.max_memory and self._reserved + size > self.max_memory:
            raise ResourceExhaustedError(
                f"creating {name} ({size} bytes) would exceed the server's memory limit of "
                f"{self.max_memory} bytes ({self._reserved} in use)")
        self._reserved += size

    def resize(self, var: Variable, new_value: np.ndarray) -> None:
        """Accounts for a string variable whose byte size changes (hold ``var.lock``)."""
        delta = value_nbytes(var.dtype, var.shape, new_value) - var.nbytes
        if delta:
            with self._lock:
                self._reserve(delta, var.name)

    def set_value(self, var: Variable, value: np.ndarray) -> None:
        """Replaces a variable's value (hold ``var.lock``); wakes waiters on initialization."""
        if var.dtype.is_string:
            self.resize(var, value)
        newly = var.value is None
        var.value = value
        var.version += 1
        if newly:
            with self._lock:
                self._initialized.notify_all()

    def put_back(self, var: Variable, value: np.ndarray | None, version: int) -> None:
        """Restores a value and version a failed request had changed (hold ``var.lock``)."""
        if var.dtype.is_string and value is not None:
            self.resize(var, value)
        var.value = value
        var.version = version

    def touched(self, var: Variable) -> None:
        """Records an in-place update of ``var`` (hold ``var.lock``)."""
        var.version += 1

    @contextlib.contextmanager
    def locked(self, variables: Iterable[Variable]) -> Iterator[None]:
        """Holds the locks of ``variables`` (deduplicated, taken in name order)."""
        ordered = sorted({id(v): v for v in variables}.values(), key=lambda v: v.name)
        if len(ordered) == 1:  # most requests: no ExitStack needed
            with ordered[0].lock:
                yield
            return
        with contextlib.ExitStack() as stack:
            for v in ordered:
                stack.enter_context(v.lock)
            yield

    def wait_initialized(self, names: list[str], timeout: float) -> list[str]:
        """Waits up to ``timeout`` seconds until the named variables (all when empty) exist and
        are initialized; returns the names still missing or uninitialized."""
        def pending() -> list[str]:
            wanted = names or list(self._vars)
            return [n for n in wanted
                    if (v := self._vars.get(n)) is None or not v.initialized]

        with self._initialized:
            self._initialized.wait_for(lambda: not pending(), timeout=max(0.0, timeout))
            return pending()

    def notify_created(self) -> None:
        """Wakes waiters after variables appeared (creation without the store's lock held)."""
        with self._lock:
            self._initialized.notify_all()


def check_compatible(var: Variable, dtype: DType, shape: tuple[int, ...]) -> None:
    """Raises ``InvalidArgumentError`` unless ``var`` has ``dtype`` and ``shape``."""
    if var.dtype != dtype or var.shape != shape:
        raise InvalidArgumentError(
            f"Trying to share variable {var.name}, but specified dtype {dtype.name} and shape "
            f"{shape} and found dtype {var.dtype.name} and shape {var.shape}.")
