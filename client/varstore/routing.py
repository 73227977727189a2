"""Splits one request's op graph across the shards of a cluster.

Every node that names a variable runs on that variable's shard; constants are copied to
every part that uses them; any other node runs where its inputs are (where its consumers are
when it has no stateful input). A node whose input lives on another shard runs one stage
later, with that input's value fetched in the earlier stage and sent as a constant: a read on
shard A feeding an assign on shard B is two round trips, while everything one shard can do
alone in a stage is one request per shard, sent in parallel. Each part is atomic on its shard
(``assign(c, c + 1)`` stays exact); nothing spans shards atomically, as with TensorFlow's ps
tasks, where each op runs on its own device.

A variable reference (``ref``, an optimizer's slot input) cannot cross shards: slots are
placed next to their variable (see :mod:`varstore.server.cluster`); Adam's beta powers,
shared by every variable, reach the other shards as values read in an earlier stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import InvalidArgumentError
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder

# Ref inputs that a kernel also takes as values read on another shard: Adam's beta powers.
_VALUE_REFS = {"apply_adam": (2, 3), "sparse_apply_adam": (2, 3)}
# Attributes through which an op names more variables than its own (sync_accumulate).
_VARIABLE_ATTRS = ("variables", "group")


@dataclass
class Part:
    """One shard's request in one stage, and where its results belong in the original."""

    shard: int
    builder: RequestBuilder = field(default_factory=RequestBuilder)
    # Original node index of each fetch of ``builder``, in order.
    fetched: list[int] = field(default_factory=list)
    # Original spec index of each spec of ``builder``, in order.
    specs: list[int] = field(default_factory=list)


class Plan:
    """Where each node and variable spec of ``builder`` runs: shard and stage."""

    def __init__(self, builder: RequestBuilder, shard_of: Callable[[str], int]) -> None:
        self.source = builder
        nodes = builder.nodes
        self.var_shard = {s.name: shard_of(s.name) for s in builder.specs}
        for node in nodes:
            name = home_variable(node)
            if name and name not in self.var_shard:
                self.var_shard[name] = shard_of(name)
        self.needed = _closure(builder)
        self.home = self._homes()
        self.level, self.spec_level = self._levels()
        self.stages = 1 + max([*self.level.values(), *self.spec_level, 0])
        self._check()

    def single_shard(self) -> int | None:
        """The shard that runs the whole request unchanged in one stage, or None."""
        shards = {self.home[i] for i in self.needed if i in self.home}
        shards |= {self.var_shard[s.name] for s in self.source.specs}
        if self.stages == 1 and len(shards) <= 1:
            return shards.pop() if shards else 0
        return None

    def _homes(self) -> dict[int, int]:
        nodes = self.source.nodes
        home: dict[int, int] = {}
        for i, node in enumerate(nodes):
            if node.op == "const":
                continue
            if home_variable(node):
                home[i] = self.var_shard[home_variable(node)]
                continue
            sources = {home[j] for j in (*node.inputs, *node.control_inputs) if j in home}
            if sources:
                home[i] = min(sources)
        consumer: dict[int, int] = {}
        for spec in self.source.specs:
            if spec.initializer:
                consumer.setdefault(spec.initializer - 1, self.var_shard[spec.name])
        for i in range(len(nodes) - 1, -1, -1):
            if nodes[i].op == "const":
                continue
            if i not in home:
                home[i] = consumer.get(i, 0)
            for j in (*nodes[i].inputs, *nodes[i].control_inputs):
                consumer.setdefault(j, home[i])
        return home

    def _levels(self) -> tuple[dict[int, int], list[int]]:
        nodes, specs = self.source.nodes, self.source.specs
        floor: dict[str, int] = {}
        while True:
            level: dict[int, int] = {}
            for i, node in enumerate(nodes):
                if i not in self.home:
                    continue
                here = self.home[i]
                lv = floor.get(node.variable, 0)
                for j in (*node.inputs, *node.control_inputs):
                    if j in self.home:
                        lv = max(lv, level[j] + (self.home[j] != here))
                level[i] = lv
            spec_level = []
            for spec in specs:
                j = spec.initializer - 1
                lv = 0
                if j in self.home:
                    lv = level[j] + (self.home[j] != self.var_shard[spec.name])
                spec_level.append(lv)
            new_floor = {s.name: lv for s, lv in zip(specs, spec_level, strict=True) if lv}
            if new_floor == floor:
                return level, spec_level
            floor = new_floor

    def _check(self) -> None:
        nodes = self.source.nodes
        for i in self.needed:
            node = nodes[i]
            for k, j in enumerate(node.inputs):
                if nodes[j].op == "ref" and self.home[j] != self.home[i] and \
                        not (node.op in _VALUE_REFS and k in _VALUE_REFS[node.op]):
                    raise InvalidArgumentError(
                        f"{node.op} of {node.variable or 'node ' + str(i)} (shard "
                        f"{self.home[i]}) takes a reference to {nodes[j].variable} on shard "
                        f"{self.home[j]}: an update's variable references must be on its shard")
            for attr in _VARIABLE_ATTRS:
                if attr == "variables" and "deferred" in node.attrs:
                    continue  # a synchronous step split across shards (varstore.server.sync)
                if attr in node.attrs and node.attrs[attr].s:
                    for name in node.attrs[attr].s.split(","):
                        if name and self.var_shard.get(name, self.home[i]) != self.home[i]:
                            raise InvalidArgumentError(
                                f"{node.op} of {node.variable} (shard {self.home[i]}) names "
                                f"{name} on another shard")

    def parts(self, stage: int, values: dict[int, np.ndarray]) -> list[Part]:
        """The requests of ``stage``, one per shard with work, given the ``values`` of the
        nodes earlier stages fetched (original node index -> value).

        A ``ref`` node is repeated in every part of its shard that uses it; where a node on
        another shard takes it, its variable's value is read in this stage instead.
        """
        src = self.source
        nodes = src.nodes
        outside = self._consumed_elsewhere(stage)
        members: dict[int, list[int]] = {}
        reads: dict[int, list[int]] = {}
        for i in self.needed:
            if i in self.home and self.level[i] == stage:
                if nodes[i].op != "ref":
                    members.setdefault(self.home[i], []).append(i)
                elif i in outside:
                    reads.setdefault(self.home[i], []).append(i)
        spec_parts: dict[int, list[int]] = {}
        for k, spec in enumerate(src.specs):
            if self.spec_level[k] == stage:
                spec_parts.setdefault(self.var_shard[spec.name], []).append(k)
        return [self._part(shard, members.get(shard, []), reads.get(shard, []),
                           spec_parts.get(shard, []), values, outside)
                for shard in sorted(set(members) | set(reads) | set(spec_parts))]

    def _part(self, shard: int, members: list[int], reads: list[int], specs: list[int],
              values: dict[int, np.ndarray], outside: set[int]) -> Part:
        src = self.source
        nodes = src.nodes
        part = Part(shard)
        b = part.builder
        index: dict[int, int] = {}

        def source(j: int) -> int:
            if j not in index:
                node = nodes[j]
                if node.op == "const":
                    array, dtype = src.arrays[node.tensor]
                    index[j] = b.const(array, dtype)
                elif node.op == "ref" and self.home[j] == shard:
                    index[j] = b.node("ref", variable=node.variable)
                else:
                    index[j] = b.const(values[j], _dtype_of(values[j]))
            return index[j]

        inside = set(members)
        used: set[int] = set()
        for i in members:
            node = nodes[i]
            clone = pb.Node()
            clone.CopyFrom(node)
            del clone.inputs[:]
            clone.inputs.extend(source(j) for j in node.inputs)
            del clone.control_inputs[:]
            clone.control_inputs.extend(index[j] for j in node.control_inputs if j in inside)
            used.update(j for j in (*node.inputs, *node.control_inputs) if j in inside)
            b.nodes.append(clone)
            index[i] = len(b.nodes) - 1
        for k in specs:
            spec = pb.VariableSpec()
            spec.CopyFrom(src.specs[k])
            if spec.initializer:
                used.add(spec.initializer - 1)
                spec.initializer = source(spec.initializer - 1) + 1
            b.specs.append(spec)
            part.specs.append(k)
        fetch = set(src.fetches) | outside
        for i in members:
            if i in fetch:
                b.fetch(index[i])
                part.fetched.append(i)
            elif i not in used or i in src.targets:
                b.target(index[i])
        for i in reads:
            b.fetch(b.node("read", variable=nodes[i].variable))
            part.fetched.append(i)
        return part

    def _consumed_elsewhere(self, stage: int) -> set[int]:
        """Nodes of ``stage`` whose values a later stage needs."""
        nodes = self.source.nodes
        out: set[int] = set()
        for i in self.needed:
            if i not in self.home:
                continue
            for j in nodes[i].inputs:
                if j in self.home and self.level[j] == stage and (
                        self.level[i] != stage or self.home[i] != self.home[j]):
                    out.add(j)
        for k, spec in enumerate(self.source.specs):
            j = spec.initializer - 1
            if j in self.home and self.level[j] == stage and (
                    self.spec_level[k] != stage or self.home[j] != self.var_shard[spec.name]):
                out.add(j)
        return out


def home_variable(node: pb.Node) -> str:
    """The variable whose shard runs ``node``: its own, or the global step a ``sync_wait``
    waits on (its ``group``)."""
    if node.variable:
        return node.variable
    return node.attrs["group"].s if "group" in node.attrs else ""


def _closure(builder: RequestBuilder) -> list[int]:
    """The nodes the request's fetches, targets and initializers need, in order."""
    nodes = builder.nodes
    stack = [*builder.fetches, *builder.targets,
             *(s.initializer - 1 for s in builder.specs if s.initializer)]
    seen: set[int] = set()
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(nodes[i].inputs)
        stack.extend(nodes[i].control_inputs)
    return sorted(seen)


def _dtype_of(value: np.ndarray) -> DType:
    """The dtype of a fetched value (object arrays hold strings)."""
    array = np.asarray(value)
    return dtypes.string if array.dtype == object else dtypes.as_dtype(array.dtype)
