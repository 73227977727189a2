"""A cluster of shards acting as one store: who the shards are, and where variables live.

Several ``varstore serve`` processes form one store as TensorFlow's ps tasks do: each shard
holds whole variables, workers route every request by variable name and learn the cluster
from any one shard (``ClusterInfo``). The cluster is given as ``--cluster HOST:PORT,...
--task-index I`` or by the ``TF_CONFIG`` environment variable that Kubeflow's TFJob sets
(``cluster.ps`` and ``task.index``, as TensorFlow's ``TFConfigClusterResolver`` reads it).

Shard 0 keeps the placement table (:class:`PlacementTable`): the first client to create a
variable asks it for a shard, and every later client asks it where that name lives, so all
clients agree. New variables go to the shard holding the fewest bytes so far, TensorFlow's
``GreedyLoadBalancingStrategy`` (``python/training/device_setter.py``), except that the
table is shared by every client rather than rebuilt by each. The table lives in shard 0's
memory, so it never answers "new" for a name it merely does not know: each table has an epoch
(a new one whenever shard 0 starts), and a name it does not know is placed only for a client
that looked it up in this epoch and then asked every shard whether it holds the name
(``Held``); a shard that does is recorded as its place. So a restarted shard 0, or a cluster
resumed with ``--restore latest``, finds the variables where the shards hold them. A shard
creates a variable only after shard 0's table, as it is then, confirms the shard as its place,
the name reported by ``Held`` meanwhile (:mod:`varstore.server.placement_guard`), so that a
placement a restarted table forgot before its variable existed is never made twice. Deleting
variables through a cluster client removes them from the table (``PlaceRequest.forget``),
giving back their charge to ``--max-memory``.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varstore.common.errors import FailedPreconditionError, InvalidArgumentError, clip
from varstore.common.tf_config import TF_CONFIG, parse_tf_config
from varstore.server.budget import MemoryBudget
from varstore.server.store import VARIABLE_BYTES, validate_name

# Addresses a shard listens on for every interface: a client reaches such a shard at the host
# it used to reach the shard that told it the cluster.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
MAX_SHARDS = 1024
# The cluster client's part names (see varstore.server.cluster_service.PART_NAME).
_CLUSTER_PART = re.compile(r"\.tempstate[0-9a-f]{8}_part-(?P<index>\d{5})-of-(?P<count>\d{5})")
# A shard's own snapshot (varstore.server.cluster_service.save_shard_snapshot), written by
# that shard alone when it stops on its own.
_SNAPSHOT = re.compile(r"\.shard-(?P<index>\d{5})-of-(?P<count>\d{5})\.snapshot")


def is_snapshot(prefix: str) -> bool:
    """Whether checkpoint ``prefix`` is named as a shard's own snapshot
    (:attr:`ClusterSpec.snapshot`), a name no client may save, restore or list."""
    return _SNAPSHOT.match(os.path.basename(prefix)) is not None


def refuse_snapshot(named: str) -> None:
    """Raises ``InvalidArgumentError`` when checkpoint ``named`` is a shard's own snapshot,
    which holds one shard's variables only and is no checkpoint of the cluster."""
    if is_snapshot(named):
        raise InvalidArgumentError(
            f"{clip(repr(named))} is the name of a cluster shard's own snapshot (its "
            "variables only, restored by that shard alone at start-up), not a checkpoint")


def local_shards(folder: Path | None, count: int) -> tuple[str, ...]:
    """``unix:FOLDER/shard-I.sock`` for each of ``count`` task indexes (none without a folder).

    Raises ``ValueError`` unless ``folder`` is a folder of this user that no one else may
    enter (mode 0700, as ``varstore serve --shards`` makes it): the sockets take plain gRPC.
    """
    if folder is None:
        return ()
    info = os.stat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ValueError(f"local socket folder {clip(str(folder))} must be a folder of this "
                         "user that no one else may enter (mode 0700)")
    return tuple(f"unix:{folder}/shard-{index}.sock" for index in range(count))


@dataclass(frozen=True)
class ClusterSpec:
    """The shards of a cluster (``host:port`` by task index) and this server's index."""

    shards: tuple[str, ...]
    task_index: int
    # Under ``varstore serve --shards N``: every shard's Unix socket (``unix:PATH``) by task
    # index, reported to a client that came through one (the supervising parent).
    local_shards: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= len(self.shards) <= MAX_SHARDS:
            raise ValueError(f"a cluster needs 1 to {MAX_SHARDS} shards, got {len(self.shards)}")
        for address in self.shards:
            host, sep, port = address.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"cluster address {clip(repr(address))} is not HOST:PORT")
        if len(set(self.shards)) != len(self.shards):
            raise ValueError("cluster addresses must be distinct")
        if not 0 <= self.task_index < len(self.shards):
            raise ValueError(f"task index {self.task_index} is not in [0, {len(self.shards)})")

    @property
    def port(self) -> int:
        """The port this shard's address names."""
        return int(self.shards[self.task_index].rpartition(":")[2])

    @property
    def snapshot(self) -> str:
        """The prefix of this shard's own snapshot, in the checkpoint folder."""
        return f".shard-{self.task_index:05d}-of-{len(self.shards):05d}.snapshot"

    def owns_leftover(self, name: str) -> bool:
        """Whether this shard may delete the temporary checkpoint file ``name`` at start-up,
        when the folder is shared and other shards may be saving into it right now.

        Part I of a cluster save (``PREFIX.tempstateTOKEN_part-0000I-of-0000N``) is written by
        shard I alone, so shard I owns its own parts; a part of another shard count was
        written by no shard of this cluster, and shard 0 removes it. Every other temporary
        file (merges, commits, state files) is written by shard 0, which owns them, except
        those of shard I's own snapshot (:attr:`snapshot`); a shard of a cluster of one owns
        everything.
        """
        if len(self.shards) == 1:
            return True
        part = _CLUSTER_PART.search(name) or _SNAPSHOT.match(name)
        if part is None:
            return self.task_index == 0
        return int(part["index"]) == self.task_index or (
            self.task_index == 0 and int(part["count"]) != len(self.shards))


def parse_addresses(text: str) -> tuple[str, ...]:
    """``"h:p,h:p"`` as a tuple of addresses (``--cluster``'s argument)."""
    return tuple(a.strip() for a in text.split(",") if a.strip())


def spec_from_tf_config(text: str) -> ClusterSpec:
    """The cluster of a ``TF_CONFIG`` value for a ps task, as TFJob sets it:
    ``{"cluster": {"ps": [...], ...}, "task": {"type": "ps", "index": I}}``.

    Raises ``ValueError`` for malformed JSON, a missing ``cluster.ps``, a bad address in it
    (the message names ``TF_CONFIG``) or a task that is not a ps task (workers connect to the
    cluster; they do not serve it).
    """
    config = parse_tf_config(text)
    ps = config.cluster.get("ps")
    if not ps:
        raise ValueError(f"{TF_CONFIG} has no cluster.ps list of addresses")
    if config.task_type not in (None, "ps"):
        raise ValueError(f"{TF_CONFIG} names task type {clip(repr(config.task_type))}: "
                         "varstore serve runs the ps tasks")
    try:
        return ClusterSpec(tuple(ps), config.task_index)
    except ValueError as e:  # a bad address or index: fixed in TF_CONFIG, not in flags
        raise ValueError(f"{TF_CONFIG}: {e}") from None


# Every shard writing a final checkpoint of its own part into the one shared folder would make
# N one-shard checkpoints of the same name, each overwriting the last, and point `latest` at
# one shard's variables; shard 0 saves the cluster as a whole (varstore.server.cluster_saver).
SHARD_NO_FINAL_SAVE = ("a shard of a cluster other than shard 0 writes no checkpoint of the "
                       "cluster (shard 0 saves the whole cluster when it stops, if the other "
                       "shards still serve; or save from a client, `varstore save`), only a "
                       "snapshot of its own")


def cluster_settings(values: dict[str, Any], environ: Mapping[str, str] = os.environ) -> None:
    """Fills ``cluster`` from ``TF_CONFIG`` in server settings that name none, and checks
    that ``cluster`` and ``task_index`` make a valid :class:`ClusterSpec`. (Every shard may
    take ``--save-every``, as a StatefulSet gives all the same flags: shard 0's timer saves
    the whole cluster, the others' is off.)

    Raises ``ValueError`` for an invalid cluster or ``TF_CONFIG``.
    """
    if not values.get("cluster") and environ.get(TF_CONFIG):
        spec = spec_from_tf_config(environ[TF_CONFIG])
        values["cluster"] = spec.shards
        values.setdefault("task_index", spec.task_index)
        values.setdefault("port", spec.port)
    if values.get("cluster"):
        cluster = values["cluster"]
        if isinstance(cluster, str):
            cluster = parse_addresses(cluster)
        values["cluster"] = tuple(cluster)
        spec = ClusterSpec(values["cluster"], int(values.get("task_index", 0)))
        values.setdefault("port", spec.port)


class PlacementTable:
    """Shard 0's record of which shard holds each variable, and the bytes placed per shard.

    :meth:`place` answers for many names at once; the first answer for a name is final until
    :meth:`forget` removes it (the variable was deleted). Each name in the table is charged to
    ``budget`` (when given) while it is there, so that clients placing names cannot make shard
    0 hold more than ``--max-memory``, and deleting gives it back. ``epoch`` identifies this
    table (random, never 0); it changes when names are forgotten, so that a client that looked
    a name up before (and asked the shards, ``Held``, before someone created and deleted it)
    looks it up again before placing it.
    """

    def __init__(self, num_shards: int, budget: MemoryBudget | None = None) -> None:
        self.num_shards = num_shards
        self.budget = budget
        self.epoch = _new_epoch()
        self._shard: dict[str, tuple[int, int]] = {}  # name: (shard, bytes placed)
        self._bytes = [0] * num_shards
        self._lock = threading.Lock()

    def place(self, name: str, nbytes: int = 0, shard: int = -1, colocate_with: str = "",
              lookup_only: bool = False) -> int:
        """The shard of ``name``; placing it first if it is new and not ``lookup_only``
        (-1 then). A new variable goes to ``shard`` when given (>= 0), else next to
        ``colocate_with`` or to the variable its name extends (``W/Adam`` next to ``W``, as
        TensorFlow colocates slots with their variable), else to the shard with the fewest
        bytes (the lowest index among equals).

        Raises ``InvalidArgumentError`` for a shard outside the cluster, negative bytes or a
        name that is no variable name (:func:`validate_name`, at most 64 KiB),
        ``ResourceExhaustedError`` when placing a new name would pass the memory budget.
        """
        validate_name(name)
        if shard >= self.num_shards or shard < -1:
            raise InvalidArgumentError(
                f"shard {shard} of variable {clip(name)} is not in a cluster of "
                f"{self.num_shards} shards")
        if nbytes < 0:
            raise InvalidArgumentError(f"variable {clip(name)} cannot hold {nbytes} bytes")
        with self._lock:
            known = self._shard.get(name)
            if known is not None:
                return known[0]
            if lookup_only:
                return -1
            if shard < 0:
                shard = self._neighbour(colocate_with or name, exact=bool(colocate_with))
            if shard < 0:
                shard = min(range(self.num_shards), key=lambda s: (self._bytes[s], s))
            if self.budget is not None:
                self.budget.charge(_entry_bytes(name), f"placing {clip(name)}")
            self._shard[name] = (shard, nbytes)
            self._bytes[shard] += nbytes
            return shard

    def forget(self, names: Sequence[str]) -> int:
        """Removes ``names`` from the table (their variables were deleted), giving back their
        charge and bytes; a new :attr:`epoch` when one was there. Returns how many were."""
        with self._lock:
            removed = [(n, entry) for n in dict.fromkeys(names)
                       if (entry := self._shard.pop(n, None)) is not None]
            for name, (shard, nbytes) in removed:
                self._bytes[shard] -= nbytes
                if self.budget is not None:
                    self.budget.release(_entry_bytes(name))
            if removed:
                self.epoch = _new_epoch()
            return len(removed)

    def size(self) -> int:
        """How many names the table holds."""
        with self._lock:
            return len(self._shard)

    def _neighbour(self, name: str, exact: bool) -> int:
        if exact:
            return self._shard.get(name, (-1, 0))[0]
        while "/" in name:
            name = name.rpartition("/")[0]
            if name in self._shard:
                return self._shard[name][0]
        return -1

    def bytes_per_shard(self) -> list[int]:
        """Bytes placed on each shard by the names in the table."""
        with self._lock:
            return list(self._bytes)


def _new_epoch() -> int:
    return 1 + secrets.randbelow((1 << 62) - 1)


def _entry_bytes(name: str) -> int:
    """What one name in the table is charged to the memory budget."""
    return VARIABLE_BYTES + len(name)


def greedy_placement(sizes: Sequence[tuple[str, int]], num_shards: int) -> list[int]:
    """The shards a fresh :class:`PlacementTable` gives variables created in this order."""
    table = PlacementTable(num_shards)
    return [table.place(name, nbytes) for name, nbytes in sizes]


def require_shared_folder(directory: str, part: str) -> None:
    """Checks that a checkpoint part another shard wrote is visible here.

    Raises ``FailedPreconditionError`` saying that the checkpoint folder must be shared.
    """
    if not os.path.exists(part):
        raise FailedPreconditionError(
            f"checkpoint part {clip(os.path.relpath(part, directory))} written by another shard "
            f"is not visible in this shard's checkpoint folder {clip(directory)}: the shards of a "
            "cluster must share one checkpoint folder (one mounted volume)")
