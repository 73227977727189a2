"""How a restore reads a checkpoint into the store: all or nothing, every checksum verified
before any variable changes, and the arrays it reads charged to the server's memory budget
before they are allocated."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from varstore.common.errors import InvalidArgumentError, ResourceExhaustedError, clip
from varstore.server.budget import MemoryBudget, array_bytes
from varstore.server.bundle import BundleReader, TensorInfo
from varstore.server.checkpoint_progress import Tally
from varstore.server.slices import Entry, SaveSlice
from varstore.server.store import Variable, VariableStore, validate_name, value_nbytes

__all__ = ["NOT_VARIABLES", "OBJECT_GRAPH_KEY", "PART_NAMES_KEY", "RESTORE_THREADS", "Item",
           "Restoring", "part_names_tensor", "shard_entries",
           "stored_parts"]

# Restores read and verify tensors on this many threads: reads and checksums of different
# tensors overlap (the reads release the GIL), 1.3-1.6x faster on two cores.
RESTORE_THREADS = min(4, os.cpu_count() or 1)
# TF2 object-based checkpoints describe their object graph under this key; it is no variable.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# A cluster shard's own snapshot (varstore.server.cluster_service.save_shard_snapshot) holds
# some parts of a partitioned variable only, so their names cannot follow from their order
# among all slices: it names them under this key (see part_names_tensor); it is no variable.
PART_NAMES_KEY = "_VARSTORE_PART_NAMES"
NOT_VARIABLES = frozenset({OBJECT_GRAPH_KEY, PART_NAMES_KEY})

@dataclass(frozen=True)
class Item:
    """One variable a restore sets: from tensor ``key``, or with ``part`` from its region
    ``part.offset``..``part.offset + part.shape`` (a part of a partitioned variable)."""

    key: str
    name: str
    info: TensorInfo
    part: SaveSlice | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The variable's shape."""
        return self.info.shape if self.part is None else self.part.shape

    @property
    def size(self) -> int:
        """About the stored bytes it reads (its share of a tensor's, for a region)."""
        full = math.prod(self.info.shape)
        return self.info.size if self.part is None or not full else \
            self.info.size * math.prod(self.part.shape) // full


Plan = list[Item]


class Restoring:
    """One restore of checkpoint ``named`` (open in ``reader``) into ``store``."""

    def __init__(self, store: VariableStore, reader: BundleReader, named: str) -> None:
        self.store = store
        self.reader = reader
        self.named = named

    def plan(self, entries: Sequence[Entry] | None) -> Plan:
        """What to restore: ``entries`` name keys and variables (a slice: the variable is
        that region of the stored tensor); None restores every key (see :meth:`everything`).
        Raises ``InvalidArgumentError`` for a variable named twice, an invalid name, or one
        whose dtype or shape differs from the checkpoint's, and what the reader raises."""
        if entries is None:
            entries = self.everything()
        seen: set[str] = set()
        plan = []
        for entry in entries:
            if entry.variable in seen:
                raise InvalidArgumentError(
                    f"variable {clip(entry.variable)} is restored from two keys")
            seen.add(entry.variable)
            info = self.reader.entry(entry.key)
            validate_name(entry.variable)
            item = Item(entry.key, entry.variable, info, entry.slice)
            stored = f"{info.dtype.name} {list(info.shape)[:8]}"
            if item.part is not None and item.part.full_shape != info.shape:
                raise InvalidArgumentError(
                    f"cannot restore variable {clip(entry.variable)} as the slice "
                    f"{clip(item.part.describe())} of key {clip(entry.key)} of checkpoint "
                    f"{clip(self.named)} ({stored}): the full shapes differ")
            var = self.store.find(entry.variable)
            if var is not None and (var.dtype != info.dtype or var.shape != item.shape):
                where = "" if item.part is None else f" (slice {clip(item.part.describe())})"
                raise InvalidArgumentError(
                    f"cannot restore variable {clip(entry.variable)} ({var.dtype.name} "
                    f"{list(var.shape)[:8]}) from key {clip(entry.key)}{where} of checkpoint "
                    f"{clip(self.named)} ({stored})")
            plan.append(item)
        return sorted(plan, key=lambda item: (item.key, item.name))

    def everything(self) -> list[Entry]:
        """Every key of the checkpoint as entries: into the server's parts of a partitioned
        variable of that name (re-sliced, whatever slices the checkpoint stores), else the
        variable of that name, else, for a tensor stored in slices, new parts ``KEY/part_I``
        (TensorFlow's names, in offset order, or as a snapshot names them) that keep their
        slice info."""
        names = _part_names(self.reader)
        held: dict[str, list[Variable]] = {}
        for var in self.store.variables():
            if var.save_slice is not None:
                held.setdefault(var.save_slice.full_name, []).append(var)
        entries: list[Entry] = []
        for key in self.reader.keys():
            if key in NOT_VARIABLES:
                continue
            whole = self.store.find(key) is not None
            if not whole and key in held:
                entries += [Entry(key, var.name, var.save_slice) for var in held[key]]
                continue
            info = self.reader.entry(key)
            if whole or not info.sliced:
                entries.append(Entry(key, key))
                continue
            entries += stored_parts(info, names=names)
        return entries

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
        def first_pass(item: Item, in_place: bool) -> np.ndarray | None:
            if in_place:
                reader.verify(item.key)
                return None
            info, what = item.info, f"restoring {clip(item.name)} from {clip(named)}"
            strings = info.size if info.dtype.is_string else 0
            if item.part is None:
                buffers.charge(item.name, array_bytes(info.shape, info.dtype) + strings, what)
                return reader.read(item.key)
            offset, shape = item.part.offset, item.part.shape
            scratch = max((array_bytes(r, info.dtype)
                           for r in reader.region_reads(item.key, offset, shape)), default=0)
            buffers.charge(item.name, array_bytes(shape, info.dtype) + scratch + strings, what)
            return reader.read_region(item.key, offset, shape)

        pool = ThreadPoolExecutor(RESTORE_THREADS, "varstore-restore")
        buffers = _Buffers(self.store.budget)
        try:
            values: list[np.ndarray | None] = []
            results = pool.map(first_pass, plan, [self._in_place(item) for item in plan])
            for item, value in zip(plan, results, strict=True):
                values.append(value)
                tally.advance(item.size, 1)
            self._assign(plan, values, pool, buffers)
        finally:
            pool.shutdown(cancel_futures=True)
            buffers.close()

    def _in_place(self, item: Item) -> bool:
        """Whether a restore reads ``item``'s value into its variable's existing array (a
        numeric variable with a value, restored from a whole tensor; :meth:`plan` checked
        dtype and shape)."""
        var = self.store.find(item.name)
        return (item.part is None and var is not None and var.initialized
                and not var.dtype.is_string)

    def _assign(self, plan: Plan, values: list[np.ndarray | None], pool: ThreadPoolExecutor,
                buffers: _Buffers) -> None:
        """Creates the missing variables (pending until the restore commits, in name order
        as requests create theirs; parts with their slice info) and sets the others: from
        ``values``, or for None (checksums verified) by reading into the variable's array on
        ``pool``'s threads, all under the locks."""
        reader, named = self.reader, self.named
        created: list[Variable] = []
        existing: list[tuple[str, Variable, np.ndarray | None]] = []
        try:
            for item, value in sorted(zip(plan, values, strict=True),
                                      key=lambda pair: pair[0].name):
                if value is None and self.store.find(item.name) is None:
                    value = reader.read(item.key)  # discarded since the first pass
                buffers.release(item.name)  # the variable charges its value itself
                var, made = self.store.create(Variable(
                    item.name, item.info.dtype, item.shape, created_by="restore",
                    initializer_desc=f"checkpoint {clip(named)}", value=value, pending=True,
                    save_slice=item.part))
                if made:
                    created.append(var)
                    if value is None:  # its creator failed between the lookups above
                        self.store.set_initial(var, reader.read(item.key))
                else:
                    existing.append((item.key, var, value))
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


def stored_parts(info: TensorInfo, shard: int | None = None,
                 names: dict[tuple[str, tuple[int, ...]], str] | None = None) -> list[Entry]:
    """The parts ``KEY/part_I`` of a tensor stored in slices (TensorFlow's names, in offset
    order; ``names`` by key and offset when given, as :func:`part_names_tensor` wrote them),
    as entries restoring each from its slice; with ``shard``, those stored in that data file.
    Raises ``InvalidArgumentError`` for a slice varstore cannot hold or an invalid name."""
    names = names or {}
    return [Entry(info.key, validate_name(names.get((info.key, tuple(offset)),
                                                    f"{info.key}/part_{i}")),
                  SaveSlice.checked(info.key, info.shape, offset, shape))
            for i, ((offset, shape), stored) in enumerate(zip(info.slices, info.shards,
                                                               strict=True))
            if shard is None or stored == shard]


def shard_entries(reader: BundleReader, shard: int | None = None) -> list[Entry]:
    """The variables of a checkpoint as a cluster's shard restores them at start-up: the
    tensors, and the slices of partitioned ones (as parts ``KEY/part_I``), stored in data
    file ``shard`` (None: in any); a snapshot's parts by the names it stored."""
    names = _part_names(reader)
    entries: list[Entry] = []
    for key in reader.keys():
        if key in NOT_VARIABLES:
            continue
        info = reader.entry(key)
        if info.sliced:
            entries += stored_parts(info, shard, names)
        elif shard is None or info.shards == (shard,):
            entries.append(Entry(key, key))
    return entries


def part_names_tensor(plan: Sequence[tuple[str, Variable, SaveSlice | None]]) -> np.ndarray:
    """What a snapshot stores under :data:`PART_NAMES_KEY`: for each part of ``plan`` (key,
    variable, slice) the string ``KEY NUL OFFSETS NUL NAME`` (offsets comma-separated)."""
    return np.array([f"{key}\0{','.join(map(str, part.offset))}\0{var.name}".encode()
                     for key, var, part in plan if part is not None], dtype=object)


def _part_names(reader: BundleReader) -> dict[tuple[str, tuple[int, ...]], str]:
    """The part names a snapshot stored (:func:`part_names_tensor`), by key and offset."""
    if PART_NAMES_KEY not in reader.keys():
        return {}
    names = {}
    for line in reader.read(PART_NAMES_KEY).reshape(-1):
        key, offset, name = bytes(line).decode().split("\0")
        names[key, tuple(int(d) for d in offset.split(",") if d)] = name
    return names


class _Buffers:
    """What a restore holds of the memory budget for the arrays it has read, by variable."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def charge(self, key: str, nbytes: int, what: str) -> None:
        """Charges ``nbytes`` for the array read for variable ``key``; raises
        ``ResourceExhaustedError``."""
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
