"""Where a cluster's variables live, and one request routed across the shards, written once
for the blocking and the asyncio cluster clients.

:class:`Placement` caches what shard 0's placement table answered. Its methods are
generators of :data:`ClusterSteps`: they yield the calls they need (:class:`Place` to shard 0,
:class:`Find` on every shard, :class:`RunParts` on some shards in parallel) and receive the
answers, so that ``varstore.cluster.ClusterClient`` sends them blocking and
``varstore.aio``'s cluster client awaits them, with the same placement and staging rules
(:mod:`varstore.routing`). A call that fails is raised inside the generator.

Shard 0's table never answers "new" for a name it merely does not know (it restarted and
forgot, or the shards restored the name at start-up): :meth:`Placement.locate` looks names up
first, asks every shard about those the table does not know (``Held``, one call per shard;
a shard down fails the lookup, nothing placed), records the shard that holds one, and places
only names that no shard holds, under the epoch of the table it looked them up in, so that a
table that restarted meanwhile refuses (``AbortedError``) and the names are looked up again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from varstore.common import codec, dtypes
from varstore.common.errors import (
    AbortedError,
    CancelledError,
    FailedPreconditionError,
    OpError,
    PermissionDeniedError,
    UnavailableError,
    clip,
)
from varstore.common.protocol import PLACEMENT_REFUSED, READ_ONLY_OPS
from varstore.handles import Reply
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder
from varstore.routing import Plan, home_variable

T = TypeVar("T")
# Bytes assumed per string element when placing a string variable.
_STRING_BYTES = 64
# Placing names again when shard 0 restarted in between (each time a new table).
PLACEMENT_ATTEMPTS = 3


@dataclass
class Place:
    """Ask shard 0's placement table (``ClusterService.Place``); answered with the
    ``PlaceResponse``."""

    request: cpb.PlaceRequest


@dataclass
class Find:
    """Ask every shard which of ``names`` it holds (``ClusterService.Held``); answered with
    ``{name: nbytes}`` per shard, in task order."""

    names: list[str]


@dataclass
class RunParts:
    """Send each ``(shard, request, expected response bytes)`` to its shard, in parallel;
    answered with the replies, in order."""

    parts: list[tuple[int, RequestBuilder, int]]


ClusterSteps = Generator[Place | Find | RunParts, Any, T]


def task_of(device: str) -> int | None:
    """The task a device string names (``"/job:ps/task:2"``: 2), or None.

    Raises ``ValueError`` for a task that is no number."""
    for piece in device.split("/"):
        if piece.startswith("task:"):
            if not piece[5:].isdigit():
                raise ValueError(f"device {device!r}: the task must be a number")
            return int(piece[5:])
    return None


def shard_error(error: OpError, shard: int, count: int) -> OpError:
    """``error`` of a call to shard ``shard`` of ``count``; an ``UnavailableError`` says
    which shard is down (``shard 1 of 3: ...``)."""
    if not isinstance(error, UnavailableError) or error.message.startswith("shard "):
        return error
    named = UnavailableError(f"shard {shard} of {count}: {error.message}")
    named.__cause__ = error
    return named


# What only shard 0 does, by ClusterService method: named when shard 0 cannot be reached.
SHARD_0_JOBS = {"Place": "keeps the placement table", "CommitParts": "commits every save",
                "CheckpointKeys": "reads checkpoints for restores"}


def shard_0_error(error: OpError, method: str, count: int) -> OpError:
    """``error`` of ``method`` on shard 0 of ``count``; an ``UnavailableError`` says what
    shard 0 does, what still works and what to do."""
    if not isinstance(error, UnavailableError) or error.message.startswith("shard "):
        return error
    named = UnavailableError(
        f"shard 0 of {count}, which {SHARD_0_JOBS[method]}, is unavailable: {error.message}. "
        "Variables this client already used on the other shards keep working; new variables, "
        "saves and restores need shard 0: restart it (the same --cluster, --task-index 0, "
        "--restore latest)")
    named.__cause__ = error
    return named


def _nbytes(spec: pb.VariableSpec) -> int:
    dtype = dtypes.from_enum(spec.dtype)
    return codec.num_elements(spec.shape.dim) * (dtype.itemsize or _STRING_BYTES)


class Placement:
    """The shard of each variable a client of a cluster of ``num_shards`` has learnt, and the
    task new variables are pinned to (``pinned``, None: shard 0 chooses)."""

    def __init__(self, num_shards: int) -> None:
        self.num_shards = num_shards
        self.known: dict[str, int] = {}
        self.pinned: int | None = None

    @contextlib.contextmanager
    def device(self, device: str) -> Iterator[None]:
        """Pins the variables placed inside to one shard, as ``tf.device("/job:ps/task:K")``
        does (a device naming no task lets the cluster choose).

        Raises ``ValueError`` for a task outside the cluster.
        """
        task = task_of(device)
        if task is not None and not 0 <= task < self.num_shards:
            raise ValueError(f"device {device!r}: the cluster has tasks 0..{self.num_shards - 1}")
        previous, self.pinned = self.pinned, task
        try:
            yield
        finally:
            self.pinned = previous

    def shard_of(self, name: str) -> int:
        """The shard learnt for ``name`` (0 for a name no shard holds)."""
        return self.known.get(name, 0)

    def locate(self, specs: Sequence[pb.VariableSpec], names: Sequence[str],
               colocate: dict[str, str] | None = None,
               devices: dict[str, str] | None = None) -> ClusterSteps[None]:
        """Learns the shard of every name, placing the ``specs`` not placed yet (on the task
        of their ``devices`` entry, else :attr:`pinned`, else where shard 0 chooses). Names
        shard 0's table does not know are looked for on every shard first and recorded where
        one holds them; only the others are placed.

        Raises ``ValueError`` for a device naming a task outside the cluster,
        ``UnavailableError`` naming a shard that is down (nothing placed then),
        ``FailedPreconditionError`` for a name two shards hold, ``AbortedError`` when shard 0
        restarted during each of PLACEMENT_ATTEMPTS attempts."""
        colocate, devices = colocate or {}, devices or {}
        wanted: dict[str, cpb.Placement] = {}
        for spec in specs:
            if spec.name not in self.known and spec.mode == pb.CREATE_OR_BIND:
                task = task_of(devices.get(spec.name, ""))
                if task is not None and task >= self.num_shards:
                    raise ValueError(f"variable {spec.name}: device task {task} is not in a "
                                     f"cluster of {self.num_shards} shards")
                wanted.setdefault(spec.name, cpb.Placement(
                    name=spec.name, nbytes=_nbytes(spec),
                    shard=task if task is not None else (
                        -1 if self.pinned is None else self.pinned),
                    colocate_with=colocate.get(spec.name, "")))
        for name in names:
            if name not in self.known and name not in wanted:
                wanted[name] = cpb.Placement(name=name, shard=-1, lookup_only=True)
        if not wanted:
            return
        for attempt in range(PLACEMENT_ATTEMPTS):
            try:
                yield from self._place(list(wanted.values()))
                return
            except AbortedError:  # shard 0 restarted between the lookup and the placing
                if attempt == PLACEMENT_ATTEMPTS - 1:
                    raise

    def _place(self, wanted: list[cpb.Placement]) -> ClusterSteps[None]:
        """Looks ``wanted`` up in shard 0's table, asks every shard about the names it does
        not know, records those found where they are and places the others (not lookups)."""
        reply = yield Place(cpb.PlaceRequest(variables=[
            cpb.Placement(name=p.name, shard=-1, lookup_only=True) for p in wanted]))
        unknown = []
        for placement, shard in zip(wanted, reply.shards, strict=True):
            if shard >= 0:
                self.known[placement.name] = shard
            else:
                unknown.append(placement)
        if not unknown:
            return
        found = yield Find([p.name for p in unknown])
        held: dict[str, cpb.Placement] = {}
        for k, names_k in enumerate(found):
            for name, nbytes in sorted(names_k.items()):
                if name in held:
                    raise FailedPreconditionError(
                        f"variable {clip(name)} is held by shards {held[name].shard} and {k} "
                        "of the cluster; delete one of them")
                held[name] = cpb.Placement(name=name, shard=k, nbytes=nbytes)
        # What the shards hold, then new variables, then what goes next to them.
        order = list(held.values()) + sorted(
            (p for p in unknown if p.name not in held and not p.lookup_only),
            key=lambda p: bool(p.colocate_with))
        if not order:
            return
        try:
            placed = yield Place(cpb.PlaceRequest(variables=order, epoch=reply.epoch))
        except PermissionDeniedError:
            if len(order) != len(held):
                raise
            # A read-only token may not record placements in the table (a restarted shard 0
            # relearns them from other clients): it reads the names where the shards hold them.
            for placement in order:
                self.known[placement.name] = placement.shard
            return
        for placement, shard in zip(order, placed.shards, strict=True):
            self.known[placement.name] = shard

    def run(self, builder: RequestBuilder, expect_bytes: int = 0) -> ClusterSteps[Reply]:
        """Sends ``builder`` as one request per shard it touches, in parallel, in as many
        stages as values crossing shards need; returns what one server would return.

        A shard refusing to create a variable that shard 0's table does not place on it
        (:data:`PLACEMENT_REFUSED`: the table restarted or forgot the name since this client
        learnt it; nothing created there) makes this client forget where the request's
        variables are; a request sent to one shard is then looked up and sent again (up to
        PLACEMENT_ATTEMPTS times), one spanning shards raises the ``AbortedError`` (the
        other shards' parts may have run). A shard that is unavailable (it stops, or is down)
        raises ``UnavailableError`` for a request it alone runs (nothing was changed) or that
        only reads, and ``CancelledError`` for one spanning shards that changes something
        (the others' parts may have run)."""
        attempt = 1
        while True:
            try:
                return (yield from self._run(builder, expect_bytes))
            except AbortedError as e:
                if PLACEMENT_REFUSED not in e.message:
                    raise
                for spec in builder.specs:
                    self.known.pop(spec.name, None)
                if not isinstance(e, _Refused) or attempt == PLACEMENT_ATTEMPTS:
                    raise
                attempt += 1

    def _run(self, builder: RequestBuilder, expect_bytes: int) -> ClusterSteps[Reply]:
        colocate: dict[str, str] = {}
        for node in builder.nodes:
            if node.variable:
                for j in node.inputs:
                    ref = builder.nodes[j]
                    if ref.op == "ref" and ref.variable != node.variable:
                        colocate.setdefault(ref.variable, node.variable)
        yield from self.locate(builder.specs, [*(s.name for s in builder.specs),
                                               *filter(None, map(home_variable, builder.nodes))],
                               colocate, builder.devices)
        plan = Plan(builder, self.shard_of)
        single = plan.single_shard()
        if single is not None:
            try:
                (reply,) = yield RunParts([(single, builder, expect_bytes)])
            except AbortedError as e:
                if PLACEMENT_REFUSED in e.message:
                    raise _Refused(e.message) from e
                raise
            return reply
        values: dict[int, np.ndarray] = {}
        infos: dict[int, pb.VariableInfo] = {}
        for stage in range(plan.stages):
            parts = plan.parts(stage, values)
            try:
                replies = yield RunParts([(p.shard, p.builder, expect_bytes if p.fetched else 0)
                                          for p in parts])
            except UnavailableError as e:
                # The shard ran nothing, but the others may have run their parts.
                reads = not builder.specs and all(n.op in READ_ONLY_OPS for n in builder.nodes)
                if reads or (len(parts) == 1 and stage == 0):
                    raise
                raise CancelledError(f"{e.message}; the request's parts on the other shards "
                                     "may have run: it may have been partly applied") from e
            for part, (fetched, part_infos) in zip(parts, replies, strict=True):
                values.update(zip(part.fetched, fetched, strict=True))
                infos.update(zip(part.specs, part_infos, strict=True))
        return ([values[i] if i in values else _constant(builder, i) for i in builder.fetches],
                [infos[k] for k in range(len(builder.specs))])


class _Refused(AbortedError):
    """A one-shard request refused with :data:`PLACEMENT_REFUSED`: nothing ran, so it may be
    sent again."""


def _constant(builder: RequestBuilder, index: int) -> np.ndarray:
    """The value of const node ``index``, fetched as such (no shard computes it)."""
    array, _ = builder.arrays[builder.nodes[index].tensor]
    return np.asarray(array)
