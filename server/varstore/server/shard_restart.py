"""Which variables a shard of a cluster restores when it (re)starts with ``--restore``.

A checkpoint's data file I holds what shard I held when the cluster saved. That layout is a
record of the past: a client restore places every variable afresh without writing a
checkpoint, so until the next cluster save the latest checkpoint's data file I may hold
variables that now live on another shard, and the variables now on shard I may lie in
another data file (attack5 04: a crashed shard 1 restarted with ``--restore latest``
recreated ``a``, which shard 0 held, and lost ``zbig``). So a restarting shard restores a
variable of the checkpoint (or of its own snapshot) by the cluster as it is now:

1. a name shard 0's table places on this shard is restored, from whichever data file holds
   it (:meth:`CreateGuard.placements`, the question every create asks);
2. a name the table places on another shard is not: that shard holds it, or restores it when
   it restarts;
3. a name the table does not know (shard 0 restarted too, or the whole cluster starts: its
   table knows nothing yet) is restored only from this shard's own data file (or snapshot),
   and only when no other shard holds it (``Held``, the question a table asks before it
   places a name it does not know). A cluster resumed as a whole thus gets the checkpoint's
   layout back, and a shard restarting after a crash of shard 0 does not recreate what
   another shard holds.

When shard 0 or another shard cannot be reached (the whole cluster starting at once, or a
shard down), rule 3 takes what can be asked: names of this shard's own data file that no
reachable shard holds are restored, i.e. the checkpoint's layout. That is right when the
cluster restarts from that checkpoint together; it could make a second variable of a name
only if shard 0 were unreachable but running with a placement the checkpoint does not have
(a client restore since the last save) at the moment this shard starts, which the log says.

What this cannot tell: a name no table knows and no shard holds may be a variable whose
shard crashed or one deleted since the save. Rule 3 restores it only from this shard's own
data file (a killed shard comes back with its part of the latest checkpoint, as documented);
so when shard 0 restarts after a client restore re-placed variables and before the next save,
a variable now shard 0's that the checkpoint stored in another data file is not restored (a
worker creates it anew). Recording the layout of each client restore in the folder would
close that case; a save after such a restore does the same today.

The restore needs no pending marks of :class:`CreateGuard`: the shard's port opens only after
it, and while this shard does not answer ``Held`` no table places a name it does not know
(placing one needs every shard's answer), and no shard creates one (creates need the table's
confirmation), so the answers above stand until the shard serves what it restored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc

from varstore.common.errors import OpError, UnavailableError, clip, from_rpc_error
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.server.placement_guard import CreateGuard
from varstore.server.slices import Entry

log = logging.getLogger(__name__)

# Seconds another shard has to say which names it holds.
HELD_TIMEOUT = 10.0


class RestartOwners:
    """Asks the cluster of shard ``task_index`` (of the shards at ``addresses``) which
    variables this shard restores at start-up (see the module docstring): shard 0's table
    through ``guard``, the other shards' ``Held`` through ``channels(k)`` (tried in turn
    while unavailable; closed after use) with ``metadata``."""

    def __init__(self, task_index: int, addresses: Sequence[str], guard: CreateGuard,
                 channels: Callable[[int], list[grpc.Channel]],
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.task_index = task_index
        self.addresses = list(addresses)
        self.guard = guard
        self._channels = channels
        self._metadata = metadata

    def select(self, entries: Sequence[Entry], own: set[str], named: str) -> list[Entry]:
        """Those of ``entries`` (the variables of checkpoint ``named``; ``own``: the names
        of this shard's own data file or snapshot) this shard restores. Never raises: what
        cannot be asked is logged and taken as unknown."""
        names = [entry.variable for entry in entries]
        try:
            placed = self.guard.placements(names) if names else []
        except OpError as e:
            log.warning("restoring %s at start-up: shard 0's placement table cannot be "
                        "asked (%s); this shard restores the variables of its own part that "
                        "no other shard holds", clip(named), e.message)
            placed = [-1] * len(names)
        unknown = [n for n, shard in zip(names, placed, strict=True) if shard < 0 and n in own]
        held = self._held_elsewhere(unknown, named) if unknown else {}
        chosen: list[Entry] = []
        elsewhere: list[str] = []
        for entry, shard in zip(entries, placed, strict=True):
            name = entry.variable
            if shard == self.task_index or (shard < 0 and name in own and name not in held):
                chosen.append(entry)
            elif shard >= 0 or name in held:
                elsewhere.append(name)
        if elsewhere:
            log.warning("restoring %s at start-up: %d variables of it live on other shards "
                        "now (%s%s), placed there since it was written; this shard leaves "
                        "them alone",
                        clip(named), len(elsewhere), ", ".join(clip(n) for n in elsewhere[:5]),
                        ", ..." if len(elsewhere) > 5 else "")
        return chosen

    def _held_elsewhere(self, names: list[str], named: str) -> dict[str, int]:
        """Which of ``names`` the other shards hold, by name: the shard holding it."""
        held: dict[str, int] = {}
        for k in range(len(self.addresses)):
            if k == self.task_index:
                continue
            try:
                for name in self._held(k, names):
                    held.setdefault(name, k)
            except OpError as e:
                log.warning("restoring %s at start-up: shard %d cannot say which variables "
                            "it holds (%s); this shard restores those of its own part no "
                            "reachable shard holds", clip(named), k, e.message)
        return held

    def _held(self, k: int, names: list[str]) -> list[str]:
        """The names of ``names`` shard ``k`` holds. Raises the error of the last channel."""
        error: OpError = UnavailableError("no channel")
        channels = self._channels(k)
        try:
            for channel in channels:
                try:
                    response = cpb_grpc.ClusterServiceStub(channel).Held(
                        cpb.HeldRequest(names=names), timeout=HELD_TIMEOUT,
                        metadata=self._metadata)
                    return [p.name for p in response.variables]
                except grpc.RpcError as e:
                    error = from_rpc_error(e, self.addresses[k])
                    if not isinstance(error, UnavailableError):
                        break
        finally:
            for channel in channels:
                channel.close()
        raise error
