"""Attacks of the second hardening round (issue #12) that broke a promise, kept as tests:
each asserts what the attacker sees once the promise holds."""

from __future__ import annotations

import pytest

from varstore.common.errors import InvalidArgumentError, ResourceExhaustedError
from varstore.proto import cluster_pb2 as cpb
from varstore.server.app import Server
from varstore.server.budget import MemoryBudget
from varstore.server.cluster import ClusterSpec, PlacementTable
from varstore.server.cluster_service import ClusterServicer
from varstore.server.store import MAX_NAME_LENGTH


def test_placing_names_is_bounded_by_the_memory_budget() -> None:
    # A plain client's Place calls add names to shard 0's table forever: each one is
    # charged, so --max-memory bounds them (before: 600 MiB held under --max-memory 64M).
    budget = MemoryBudget(limit=1 << 20)
    table = PlacementTable(2, budget)
    with pytest.raises(ResourceExhaustedError, match="would exceed the server's memory limit"):
        for i in range(1000):
            table.place(f"v{i}/" + "x" * 10_000)
    assert 0 < budget.used <= 1 << 20
    used = budget.used
    assert table.place("v0/" + "x" * 10_000, lookup_only=True) == 0  # placed names stay
    assert table.place("fresh", lookup_only=True) == -1
    assert budget.used == used


@pytest.mark.parametrize("name", ["x" * (MAX_NAME_LENGTH + 1), "", "a:b", "w/"])
def test_placing_a_name_that_is_no_variable_name_is_refused(name: str) -> None:
    table = PlacementTable(2, MemoryBudget())
    with pytest.raises(InvalidArgumentError, match="invalid variable name"):
        table.place(name)
    assert table.budget is not None and table.budget.used == 0


def test_shard_zero_charges_placements_to_the_servers_budget(server: Server) -> None:
    servicer = ClusterServicer(ClusterSpec(("127.0.0.1:1", "127.0.0.1:2"), 0),
                               server.checkpoints)
    before = server.checkpoints.store.budget.used
    reply = servicer.Place(cpb.PlaceRequest(variables=[cpb.Placement(name="w", shard=-1)]),
                           None)  # type: ignore[arg-type]
    assert list(reply.shards) == [0]
    assert server.checkpoints.store.budget.used > before
