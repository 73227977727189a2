"""A shard of a cluster creates a variable only where shard 0's placement table puts it.

Shard 0's table records a placement before the variable exists on its shard, and forgets it
when shard 0 restarts. A worker that got ``v`` placed on shard 1 and whose create is slow to
arrive (a slow link, busy retries) would otherwise create ``v`` on shard 1 after a restarted
shard 0 placed ``v`` afresh on shard 0 for another worker: two variables of one name
(attack4 02). So every create of a variable the shard does not hold yet goes through
:meth:`CreateGuard.creating`:

1. the names become *pending* on this shard: ``Held`` reports them as held here, so a table
   that looks for them on the shards from now on (a restarted one) records them here;
2. the shard asks shard 0's table, as it is now, where they go (``Place``, lookup only; on
   shard 0 itself, its own table): a name the table does not place on this shard (it does
   not know it, having restarted or forgotten it, or it places it on another shard) is
   refused with ``AbortedError`` (:data:`~varstore.common.protocol.PLACEMENT_REFUSED`), and
   the client looks it up again;
3. the request runs and creates them; they stop being pending when it ends.

Why this is enough: a table places a name it does not know only after asking every shard
(``Held``) in its epoch, and its first answer stands until the name is forgotten (which
starts a new epoch). A create confirmed in step 2 was placed here by the table of that
moment; a later table finds it here (pending, or created) before it places the name. A
create refused in step 2 creates nothing. No timers, no state kept across restarts.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc

from varstore.common.errors import (
    AbortedError,
    OpError,
    UnavailableError,
    clip,
    from_rpc_error,
)
from varstore.common.protocol import PLACEMENT_REFUSED
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.server.cluster import PlacementTable

# Seconds shard 0 has to answer where new variables go.
CONFIRM_TIMEOUT = 60.0


class CreateGuard:
    """Confirms with shard 0's table (``table`` on shard 0 itself, else through ``channel``
    to shard 0 with ``metadata``) that the variables shard ``task_index`` creates are placed
    on it, and keeps them pending meanwhile (see the module docstring)."""

    def __init__(self, task_index: int, table: PlacementTable | None = None,
                 channels: Sequence[grpc.Channel] = (),
                 metadata: tuple[tuple[str, str], ...] = (), shard_0: str | None = None
                 ) -> None:
        """``channels`` lead to shard 0 (at ``shard_0``, named when it cannot be reached)."""
        self.task_index = task_index
        self.shard_0 = shard_0
        self.table = table
        self._stubs = [cpb_grpc.ClusterServiceStub(channel) for channel in channels]
        self._metadata = metadata
        self._pending: Counter[str] = Counter()
        self._lock = threading.Lock()

    def pending(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` this shard is creating now."""
        with self._lock:
            return {n for n in names if n in self._pending}

    @contextmanager
    def creating(self, names: Sequence[str]) -> Iterator[None]:
        """Keeps ``names`` pending while the block runs, after confirming them with shard 0.

        Raises ``AbortedError`` naming a variable shard 0's table does not place on this
        shard, the error of asking shard 0 (``UnavailableError`` when it is down; nothing
        created then).
        """
        if not names:
            yield
            return
        with self._lock:
            self._pending.update(names)
        try:
            self._confirm(names)
            yield
        finally:
            with self._lock:
                self._pending.subtract(names)
                for name in names:
                    if self._pending[name] <= 0:
                        del self._pending[name]

    def placements(self, names: Sequence[str]) -> list[int]:
        """Where shard 0's table, as it is now, places ``names`` (-1: it does not know the
        name). Raises the error of asking shard 0 (``UnavailableError`` when it is down)."""
        if self.table is not None:
            return [self.table.place(n, lookup_only=True) for n in names]
        return self._ask_shard_0(names)

    def _confirm(self, names: Sequence[str]) -> None:
        shards = self.placements(names)
        for name, shard in zip(names, shards, strict=True):
            if shard != self.task_index:
                where = ("does not know it" if shard < 0
                         else f"places it on shard {shard}")
                raise AbortedError(
                    f"variable {clip(name)} {PLACEMENT_REFUSED} (shard {self.task_index}; the "
                    f"table {where}; shard 0 restarted or the variable was deleted since the "
                    "client looked it up): nothing created; look it up again")

    def _ask_shard_0(self, names: Sequence[str]) -> list[int]:
        """Shard 0's answer for ``names``, through each channel in turn while the last one
        was unavailable. Raises the error of the last channel."""
        request = cpb.PlaceRequest(variables=[
            cpb.Placement(name=n, shard=-1, lookup_only=True) for n in names])
        error: OpError = UnavailableError("no channel to shard 0")
        for stub in self._stubs:
            try:
                return list(stub.Place(request, timeout=CONFIRM_TIMEOUT,
                                       metadata=self._metadata).shards)
            except grpc.RpcError as e:
                error = from_rpc_error(e, self.shard_0)
                if not isinstance(error, UnavailableError):
                    break
        raise type(error)(
            f"cannot create variable {clip(names[0])}: shard 0, which keeps the placement "
            f"table, did not confirm where it goes: {error.message}") from None
