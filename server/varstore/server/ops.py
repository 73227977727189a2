"""The op registry: every op a graph may contain, by name, merged from the explicit tables of
the kernel modules (:mod:`varstore.server.kernels`) and the training ops
(:mod:`varstore.server.optimizers`, :mod:`varstore.server.sync`)."""

from __future__ import annotations

from collections.abc import Mapping

from varstore.common.protocol import READ_ONLY_OPS
from varstore.server import optimizers, sync
from varstore.server.kernels import array, embedding, initializers, math, state
from varstore.server.kernels.base import OpDef

TABLES: tuple[Mapping[str, OpDef], ...] = (state.OPS, initializers.OPS, math.OPS, array.OPS,
                                           embedding.OPS, optimizers.OPS, sync.OPS)


def build_registry(tables: tuple[Mapping[str, OpDef], ...] = TABLES) -> dict[str, OpDef]:
    """One table of ``tables``' ops; raises ``ValueError`` when two define the same op."""
    registry: dict[str, OpDef] = {}
    for table in tables:
        twice = registry.keys() & table.keys()
        if twice:
            raise ValueError(f"ops defined twice: {sorted(twice)}")
        registry.update(table)
    return registry


OPS: Mapping[str, OpDef] = build_registry()
# Ops whose result depends on their inputs and attributes alone (no variable, no state kept
# beside the variables, no wait), when their node names no variable: the executor computes
# them before it takes any variable's lock.
PURE_OPS = frozenset({*initializers.OPS, *math.OPS, *array.OPS, "const", "no_op", "gather"})
# Ops a read-only token's request may run: none changes a variable or state kept beside them
# (the reads, the pure ops, and the stitching of an embedding lookup's rows).
READER_OPS = READ_ONLY_OPS | PURE_OPS | {"partition_stitch"}
