"""How a restore reads a checkpoint into the store: all or nothing, every checksum verified
before any variable changes, and the arrays it reads charged to the server's memory budget
before they are allocated."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from varstore.common.errors import InvalidArgumentError, ResourceExhaustedError, clip
from varstore.server.budget import MemoryBudget, array_bytes
from varstore.server.bundle import BundleReader, TensorInfo
from varstore.server.checkpoint_progress import Tally
from varstore.server.store import Variable, VariableStore, validate_name, value_nbytes

__all__ = ["OBJECT_GRAPH_KEY", "RESTORE_THREADS", "Restoring"]

# Restores read and verify tensors on this many threads: reads and checksums of different
# tensors overlap (the reads release the GIL), 1.3-1.6x faster on two cores.
RESTORE_THREADS = min(4, os.cpu_count() or 1)
# TF2 object-based checkpoints describe their object graph under this key; it is no variable.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

Plan = list[tuple[str, str, TensorInfo]]


class Restoring:
    """One restore of checkpoint ``named`` (open in ``reader``) into ``store``."""

    def __init__(self, store: VariableStore, reader: BundleReader, named: str) -> None:
        self.store = store
        self.reader = reader
        self.named = named

    def plan(self, entries: Mapping[str, str] | None) -> Plan:
        """``(key, variable, info)`` for every tensor to restore: ``entries`` maps keys to
        variable names (None: every key into the variable of its name). Raises
        ``InvalidArgumentError`` for a variable named twice, an invalid name, or one whose
        dtype or shape differs from the checkpoint's, and what the reader raises."""
        return self._restore_plan(self.reader, entries, self.named)

    def run(self, plan: Plan, tally: Tally) -> None:
        """Reads and verifies every tensor of ``plan``, then creates or sets the variables
        (see :meth:`_assign`), counting progress in ``tally``. Changes nothing when it fails.
        Raises ``DataLossError``, ``ResourceExhaustedError`` and what the store raises."""
        reader, named = self.reader, self.named
        # Every checksum is verified before any variable changes, so a failed restore changes
        # nothing. A variable that already holds a numeric value is then read into in place
        # (reading the file twice from the page cache is cheaper than faulting in fresh memory
        # for a second copy); the others get new arrays, read and verified in this first pass.
        # Arrays read here are charged to the memory budget before they are allocated, until
        # the variable that keeps one takes over its charge.
        def first_pass(key: str, in_place: bool) -> np.ndarray | None:
            if in_place:
                reader.verify(key)
                return None
            info = reader.entry(key)
            buffers.charge(key, array_bytes(info.shape, info.dtype) + (
                info.size if info.dtype.is_string else 0),
                f"restoring {clip(key)} from {clip(named)}")
            return reader.read(key)

        pool = ThreadPoolExecutor(RESTORE_THREADS, "varstore-restore")
        buffers = _Buffers(self.store.budget)
        try:
            values: list[np.ndarray | None] = []
            results = pool.map(first_pass, [key for key, _, _ in plan],
                               [self._in_place(name) for _, name, _ in plan])
            for (_, _, info), value in zip(plan, results, strict=True):
                values.append(value)
                tally.advance(info.size, 1)
            self._assign(plan, values, reader, named, pool, buffers)
        finally:
            pool.shutdown(cancel_futures=True)
            buffers.close()

    def _restore_plan(self, reader: BundleReader, entries: Mapping[str, str] | None,
                      named: str) -> list[tuple[str, str, TensorInfo]]:
        if entries is None:
            pairs = [(key, key) for key in reader.keys() if key != OBJECT_GRAPH_KEY]
        else:
            pairs = sorted(entries.items())
            seen: set[str] = set()
            for _, name in pairs:
                if name in seen:
                    raise InvalidArgumentError(f"variable {clip(name)} is restored from two keys")
                seen.add(name)
        plan = []
        for key, name in pairs:
            info = reader.entry(key)
            validate_name(name)
            var = self.store.find(name)
            if var is not None and (var.dtype != info.dtype or var.shape != info.shape):
                raise InvalidArgumentError(
                    f"cannot restore variable {clip(name)} ({var.dtype.name} {list(var.shape)}) "
                    f"from key {clip(key)} of checkpoint {clip(named)} ({info.dtype.name} "
                    f"{list(info.shape)})")
            plan.append((key, name, info))
        return plan

    def _in_place(self, name: str) -> bool:
        """Whether a restore reads variable ``name``'s value into its existing array (a
        numeric variable with a value; :meth:`_restore_plan` checked dtype and shape)."""
        var = self.store.find(name)
        return var is not None and var.initialized and not var.dtype.is_string

    def _assign(self, plan: list[tuple[str, str, TensorInfo]], values: list[np.ndarray | None],
                reader: BundleReader, named: str, pool: ThreadPoolExecutor,
                buffers: _Buffers) -> None:
        """Creates the missing variables (pending until the restore commits, in name order
        as requests create theirs) and sets the others: from ``values``, or for None
        (checksums verified) by reading into the variable's array on ``pool``'s threads, all
        under the locks."""
        created: list[Variable] = []
        existing: list[tuple[str, Variable, np.ndarray | None]] = []
        try:
            for (key, name, info), value in sorted(zip(plan, values, strict=True),
                                                   key=lambda item: item[0][1]):
                if value is None and self.store.find(name) is None:
                    value = reader.read(key)  # discarded since the first pass
                buffers.release(key)  # the variable charges its value itself
                var, made = self.store.create(Variable(
                    name, info.dtype, info.shape, created_by="restore",
                    initializer_desc=f"checkpoint {clip(named)}", value=value, pending=True))
                if made:
                    created.append(var)
                    if value is None:  # its creator failed between the lookups above
                        self.store.set_initial(var, reader.read(key))
                else:
                    existing.append((key, var, value))
            buffers.close()  # what is left replaces existing values, its growth checked below
            with self.store.locked([*(var for _, var, _ in existing), *created]):
                growth = sum(value_nbytes(var.dtype, var.shape, value) - var.nbytes
                             for _, var, value in existing
                             if var.dtype.is_string and value is not None)
                limit = self.store.max_memory
                if limit and growth > 0 and self.store.bytes_stored() + growth > limit:
                    raise ResourceExhaustedError(
                        f"restoring {clip(named)} would exceed the server's memory limit of "
                        f"{limit} bytes")
                in_place = [(key, var) for key, var, value in existing if value is None]
                list(pool.map(lambda kv: reader.read_into(kv[0], kv[1].read(), verified=True),
                              in_place))
                for _, var, value in existing:
                    if value is None:
                        self.store.touched(var)
                    else:
                        self.store.set_value(var, value)
                self.store.commit(created)
        except BaseException:
            self.store.discard(created)
            raise


class _Buffers:
    """What a restore holds of the memory budget for the arrays it has read, by key."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def charge(self, key: str, nbytes: int, what: str) -> None:
        """Charges ``nbytes`` for ``key``'s array; raises ``ResourceExhaustedError``."""
        self._budget.charge(nbytes, what)
        with self._lock:
            self._held[key] = self._held.get(key, 0) + nbytes

    def release(self, key: str) -> None:
        """Gives back ``key``'s charge."""
        with self._lock:
            nbytes = self._held.pop(key, 0)
        self._budget.release(nbytes)

    def close(self) -> None:
        """Gives back every charge."""
        with self._lock:
            nbytes, self._held = sum(self._held.values()), {}
        self._budget.release(nbytes)
