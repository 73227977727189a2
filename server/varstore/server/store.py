"""The global variable store: one entry per full variable name, each with its own lock.

Nothing here knows about gRPC. Concurrency: the store's lock guards only the name table
(creation, deletion, listing); each variable's value is guarded by the variable's own lock, so
updates of unrelated variables never wait for each other. Callers that touch several
variables lock them with :meth:`VariableStore.locked`, in name order so that two requests
cannot deadlock.

A variable that a request (or a restore) creates is *pending* until that request commits: it
holds the name, but listings, checkpoints and ``wait_initialized`` do not see it, and another
request that creates, binds or uses the same name waits (holding no variable lock) until the
creator commits it or discards it. So a failed request removes only the variable objects it
created, which nobody else has seen, and never what another request did; a request that waited
for a discarded variable creates its own (or, binding only, finds none).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from varstore.common.codec import STRING_ELEMENT_BYTES
from varstore.common.dtypes import DType
from varstore.common.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    clip,
)
from varstore.common.names import did_you_mean, is_valid_node_name
from varstore.common.parts import check_whole_parts
from varstore.server.budget import MemoryBudget
from varstore.server.slices import SaveSlice
from varstore.server.waits import Waiter

# TensorFlow sets no limit; this one bounds what one name costs the server (names arrive in
# requests of up to protocol.MAX_MESSAGE_BYTES).
MAX_NAME_LENGTH = 1 << 16
# Memory a variable's record takes besides its name and values (the Variable, its lock, its
# entry in the name table), charged to the memory budget with them.
VARIABLE_BYTES = 512


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


_SERIALS = itertools.count()


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
    # Created by a request that has not committed yet (see the module's docstring).
    pending: bool = False
    # A part of a partitioned variable: where it lies in the full tensor that checkpoints
    # store (see varstore.server.slices).
    save_slice: SaveSlice | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    # Unique per variable object for the server's life (a deleted and re-created variable
    # gets another): what the checkpoints compare with ``version`` (varstore.server.durability).
    serial: int = field(default_factory=lambda: next(_SERIALS), repr=False, compare=False)

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
                f"Attempting to use uninitialized value {clip(self.name)}")
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
    """The name table of variables, whose values are charged to a memory budget (by default
    one of its own with limit ``max_memory``, 0 for none) for as long as they exist.

    ``stopping`` is set when the server shuts down: every wait of the store then ends.
    """

    def __init__(self, max_memory: int = 0, budget: MemoryBudget | None = None) -> None:
        self._vars: dict[str, Variable] = {}
        self._lock = threading.Lock()
        # Notified when a variable is published, discarded or initialized.
        self._changed = threading.Condition(self._lock)
        # Published variables without a value: waiters on "all variables" read this count.
        self._uninitialized = 0
        self.budget = budget if budget is not None else MemoryBudget(max_memory)
        self._reserved = 0
        self.stopping = threading.Event()

    @property
    def max_memory(self) -> int:
        """The memory budget's limit (0: none)."""
        return self.budget.limit

    def __len__(self) -> int:
        return len(self._vars)

    def waiter(self) -> Waiter:
        """A waiter with no deadline that ends when the server stops."""
        return Waiter(self.stopping)

    def get(self, name: str, waiter: Waiter | None = None) -> Variable:
        """The published variable named ``name``, waiting while another request creates it.

        Raises ``NotFoundError``, and what ``waiter`` raises (cancelled, shutting down,
        ``DeadlineExceededError`` at the call's deadline).
        """
        var = self.published(name, waiter)
        if var is None:
            raise self.missing(name)
        return var

    def missing(self, name: str) -> NotFoundError:
        """The error for a variable ``name`` that the store does not hold, naming a variable
        it holds under a close name (a typo) if there is one. Call it holding no lock: the
        hint's work is bounded (:func:`varstore.common.names.did_you_mean`) but not small."""
        held = (n for n, var in list(self._vars.items()) if not var.pending)
        return NotFoundError(f"Variable {clip(name)} does not exist on the server"
                             f"{did_you_mean(name, held)}")

    def published(self, name: str, waiter: Waiter | None = None) -> Variable | None:
        """The published variable named ``name`` or None, waiting as :meth:`get` does."""
        var = self._vars.get(name)
        if var is not None and var.pending:
            var = self._settled(name, waiter)
        return var

    def find(self, name: str) -> Variable | None:
        """The variable named ``name`` (pending or not), or None, without waiting."""
        return self._vars.get(name)

    def variables(self, scope: str = "") -> list[Variable]:
        """Published variables sorted by name; with ``scope``, only those at or under it."""
        with self._lock:
            items = [v for v in self._vars.values() if not v.pending]
        if scope:
            scope = scope.rstrip("/")
            items = [v for v in items if v.name == scope or v.name.startswith(scope + "/")]
        return sorted(items, key=lambda v: v.name)

    def bytes_stored(self) -> int:
        """Bytes reserved by all variables (their full size, initialized or not)."""
        return self._reserved

    def create(self, var: Variable, waiter: Waiter | None = None) -> tuple[Variable, bool]:
        """Adds ``var`` unless a variable of that name exists; returns (variable, created).

        ``var`` is published at once unless ``var.pending`` (then :meth:`commit` publishes and
        :meth:`discard` removes it). When another request is still creating the name, waits
        as :meth:`get` does. Binding to an existing variable checks its dtype and shape
        (``InvalidArgumentError``). A new variable that would pass the memory limit raises
        ``ResourceExhaustedError``.
        """
        validate_name(var.name)
        size = value_nbytes(var.dtype, var.shape, var.value)
        while True:
            with self._lock:
                existing = self._vars.get(var.name)
                if existing is None:
                    self._reserve(size + _overhead(var), size, var.name)
                    self._vars[var.name] = var
                    if not var.pending:
                        self._published(var)
                    return var, True
                if not existing.pending:
                    check_compatible(existing, var.dtype, var.shape, var.save_slice)
                    if existing.save_slice is None and var.save_slice is not None:
                        # A part restored or made before it was known as one becomes one.
                        existing.save_slice = var.save_slice
                    return existing, False
            self._settled(var.name, waiter)

    def _settled(self, name: str, waiter: Waiter | None) -> Variable | None:
        """Waits until ``name`` is not pending; returns its variable then, or None."""
        waiter = waiter or self.waiter()
        with self._changed:
            if not waiter.wait_for(self._changed, lambda: not getattr(
                    self._vars.get(name), "pending", False)):
                raise DeadlineExceededError(
                    f"variable {clip(name)} is still being created by another request")
            return self._vars.get(name)

    def _published(self, var: Variable) -> None:
        if var.value is None:
            self._uninitialized += 1
        self._changed.notify_all()

    def commit(self, created: Iterable[Variable]) -> None:
        """Publishes variables created pending (their creator succeeded)."""
        with self._lock:
            for var in created:
                var.pending = False
                self._published(var)

    def discard(self, created: Iterable[Variable]) -> None:
        """Removes variables created pending (their creator failed): each only if the name
        still holds that very object."""
        with self._lock:
            for var in created:
                if var.pending and self._vars.get(var.name) is var:
                    del self._vars[var.name]
                    self._reserve(-held_for(var), -var.nbytes, var.name)
            self._changed.notify_all()

    def delete(self, names: Iterable[str] = (), scope: str | None = None) -> list[str]:
        """Removes the variables named ``names``, or (with ``scope``) every variable at or
        under ``scope`` ("" for all of them); returns the removed names, sorted. A name that
        is no variable but the full name of a partitioned variable's parts held here removes
        those parts. Their memory goes back to the budget; a request still running on one
        finishes on its own copy.

        Raises:
            NotFoundError: a named variable does not exist (then nothing is removed).
            InvalidArgumentError: some parts of a partitioned variable would go and others
                stay (nothing is removed; see
                :func:`varstore.common.parts.check_whole_parts`).
        """
        absent = None
        wanted = sorted(set(names))
        with self._lock:
            if scope is None:
                wanted = sorted({part for n in wanted for part in self._parts_of(n)})
                absent = next((n for n in wanted if getattr(self._vars.get(n), "pending",
                                                            True)), None)
                if absent is not None:
                    wanted = []
            else:
                prefix = scope.rstrip("/")
                wanted = sorted(n for n, v in self._vars.items() if not v.pending and (
                    not prefix or n == prefix or n.startswith(prefix + "/")))
            check_whole_parts(wanted, [(v.name, v.save_slice.full_name if v.save_slice else None)
                                       for v in self._vars.values()])
            for name in wanted:
                var = self._vars.pop(name)
                if var.value is None:
                    self._uninitialized -= 1
                self._reserve(-held_for(var), -var.nbytes, name)
            self._changed.notify_all()
        if absent is not None:
            raise self.missing(absent)  # outside the lock
        return wanted

    def _parts_of(self, name: str) -> list[str]:
        """``[name]``, or for the full name of a partitioned variable with no variable of its
        own the parts of it held here (hold ``_lock``)."""
        if name in self._vars:
            return [name]
        parts = [n for n, v in self._vars.items()
                 if v.save_slice is not None and v.save_slice.full_name == name]
        return parts or [name]

    def _reserve(self, memory: int, size: int, name: str) -> None:
        """Charges ``memory`` bytes to the budget (gives them back when negative) for ``size``
        bytes of values; raises ``ResourceExhaustedError`` past the limit."""
        if memory > 0:
            self.budget.charge(memory, f"creating {clip(name)}")
        else:
            self.budget.release(-memory)
        self._reserved += size

    def _held(self, var: Variable) -> bool:
        """Whether ``var`` is in the name table (hold ``self._lock``): the budget holds its
        memory only then, so a request still running on a deleted variable charges nothing."""
        return self._vars.get(var.name) is var

    def _replace(self, var: Variable, value: np.ndarray | None) -> None:
        """Sets ``var.value`` (hold ``var.lock``), charging a string variable's change of
        bytes to the budget in the same step as the name table sees it (``delete`` gives back
        what the variable holds then). Raises ``ResourceExhaustedError`` past the limit."""
        if not var.dtype.is_string:
            var.value = value
            return
        with self._lock:
            if self._held(var):
                delta = value_nbytes(var.dtype, var.shape, value) - var.nbytes
                if delta:
                    self._reserve(delta, delta, var.name)
            var.value = value

    def reshape(self, var: Variable, shape: tuple[int, ...]) -> None:
        """Gives ``var`` a new shape, as TF's reference variables take an assigned value's
        shape under ``validate_shape=False`` (hold ``var.lock``); charges the difference in
        :func:`held_for` (a string variable's element pointers included) to the budget, or
        frees it. Raises ``ResourceExhaustedError`` past the limit."""
        size = value_nbytes(var.dtype, shape, None) - value_nbytes(var.dtype, var.shape, None)
        memory = size
        if var.dtype.is_string:
            memory += (math.prod(shape) - math.prod(var.shape)) * STRING_ELEMENT_BYTES
        with self._lock:
            if (memory or size) and self._held(var):
                self._reserve(memory, size, var.name)
            var.shape = shape

    def set_value(self, var: Variable, value: np.ndarray) -> None:
        """Replaces a variable's value (hold ``var.lock``); wakes waiters on initialization."""
        newly = var.value is None
        self._replace(var, value)
        var.version += 1
        if newly:
            self._initialization_changed(var, -1)

    def set_initial(self, var: Variable, value: np.ndarray) -> None:
        """Gives a variable its creator's initial value (version 0; hold ``var.lock``)."""
        was = var.value
        self._replace(var, value)
        if was is None:
            self._initialization_changed(var, -1)

    def put_back(self, var: Variable, value: np.ndarray | None, version: int) -> None:
        """Restores a value and version a failed request had changed (hold ``var.lock``)."""
        delta = (value is None) - (var.value is None)
        self._replace(var, value)
        var.version = version
        if delta:
            self._initialization_changed(var, delta)

    def _initialization_changed(self, var: Variable, delta: int) -> None:
        with self._lock:
            # Pending variables are counted when published; deleted ones no more.
            if not var.pending and self._held(var):
                self._uninitialized += delta
                self._changed.notify_all()

    def touched(self, var: Variable) -> None:
        """Records an in-place update of ``var`` (hold ``var.lock``)."""
        var.version += 1

    @contextlib.contextmanager
    def locked(self, variables: Iterable[Variable],
               waiter: Waiter | None = None) -> Iterator[None]:
        """Holds the locks of ``variables`` (deduplicated, taken in name order), each taken
        through ``waiter`` (:meth:`Waiter.acquire`: within the call's deadline, ended by its
        cancellation and the shutdown, counted as a long call when it waits; default: a
        waiter that ends at the shutdown). Raises what ``acquire`` raises, holding none."""
        ordered = sorted({id(v): v for v in variables}.values(), key=lambda v: v.name)
        waiter = waiter or self.waiter()
        if len(ordered) == 1:  # most requests: no ExitStack needed
            lock = ordered[0].lock
            waiter.acquire(lock, functools.partial(_lock_of, ordered[0]))
            try:
                yield
            finally:
                lock.release()
            return
        with contextlib.ExitStack() as stack:
            for v in ordered:
                waiter.acquire(v.lock, functools.partial(_lock_of, v))
                stack.callback(v.lock.release)
            yield

    def wait_initialized(self, names: list[str], timeout: float,
                         waiter: Waiter | None = None) -> list[str]:
        """Waits up to ``timeout`` seconds (and within ``waiter``'s limits) until the named
        variables (all when empty) are published and initialized; returns the names still
        missing or uninitialized. Raises what ``waiter`` raises."""
        def ready(name: str) -> bool:
            var = self._vars.get(name)
            return var is not None and not var.pending and var.value is not None

        done = 0  # names[:done] were ready when last looked at

        def all_ready() -> bool:
            nonlocal done
            if not names:
                return self._uninitialized == 0
            while done < len(names) and ready(names[done]):
                done += 1
            return done == len(names)

        with self._changed:
            (waiter or self.waiter()).wait_for(self._changed, all_ready, timeout)
            wanted = names or [n for n, v in self._vars.items() if not v.pending]
            return [n for n in wanted if not ready(n)]


def _lock_of(var: Variable) -> str:
    """How a refusal names ``var``'s lock."""
    return f"the lock of variable {clip(var.name)}"


def check_compatible(var: Variable, dtype: DType, shape: tuple[int, ...],
                     save_slice: SaveSlice | None = None) -> None:
    """Raises ``InvalidArgumentError`` unless ``var`` has ``dtype`` and ``shape`` and, when
    both have one, the same slice info (a part of a partitioned variable)."""
    if var.dtype != dtype or var.shape != shape:
        raise InvalidArgumentError(
            f"Trying to share variable {clip(var.name)}, but specified dtype {dtype.name} and "
            f"shape {shape} and found dtype {var.dtype.name} and shape {var.shape}.")
    if save_slice is not None and var.save_slice is not None and save_slice != var.save_slice:
        raise InvalidArgumentError(
            f"Trying to share variable {clip(var.name)} as the slice "
            f"{clip(save_slice.describe())}, but it is the slice "
            f"{clip(var.save_slice.describe())}.")


def held_for(var: Variable) -> int:
    """The memory the budget holds for ``var``: its values' bytes and :func:`_overhead`."""
    return var.nbytes + _overhead(var)


def _overhead(var: Variable) -> int:
    """Memory a variable takes besides its values' bytes: its record and name
    (:data:`VARIABLE_BYTES`), and a string element's pointer and object header
    (:data:`varstore.common.codec.STRING_ELEMENT_BYTES`)."""
    elements = math.prod(var.shape) * STRING_ELEMENT_BYTES if var.dtype.is_string else 0
    return VARIABLE_BYTES + len(var.name) + elements

