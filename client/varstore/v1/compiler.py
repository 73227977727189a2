"""Compiles the part of a graph a session runs into one ``RequestBuilder`` request.

Only the operations the fetches need are emitted, inputs before the ops that use them; fed
tensors become constants and cut the graph there. Ops that name a variable take its
reference as their first input, which is not a value to compute: the server resolves the
variable by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from varstore.common.errors import InvalidArgumentError
from varstore.request import RequestBuilder
from varstore.v1.graph import Operation, Tensor
from varstore.v1.shapes import dims_str

# TF's names for dtypes in kernel error messages (DataTypeString).
_PROTO_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def _data_inputs(op: Operation) -> tuple[Tensor, ...]:
    return op.inputs[1:] if op.variable else op.inputs


class _Compiler:
    def __init__(self, builder: RequestBuilder, feeds: Mapping[Tensor, np.ndarray]) -> None:
        self.builder = builder
        self.feeds = feeds
        self.nodes: dict[Operation, int] = {}
        self.fed: dict[Tensor, int] = {}

    def tensor(self, tensor: Tensor) -> int:
        if tensor in self.feeds:
            if tensor not in self.fed:
                self.fed[tensor] = self.builder.const(self.feeds[tensor], tensor.dtype)
            return self.fed[tensor]
        return self.operation(tensor.op)

    def operation(self, root: Operation) -> int:
        """Emits ``root`` and what it depends on (iteratively: graphs may be deep)."""
        stack: list[tuple[Operation, bool]] = [(root, False)]
        while stack:
            op, ready = stack.pop()
            if op in self.nodes:
                continue
            if ready:
                self.nodes[op] = self._emit(op)
                continue
            stack.append((op, True))
            stack.extend((t.op, False) for t in reversed(_data_inputs(op))
                         if t not in self.feeds and t.op not in self.nodes)
            stack.extend((c, False) for c in op.control_inputs if c not in self.nodes)
        return self.nodes[root]

    def _emit(self, op: Operation) -> int:
        b = self.builder
        out = op.outputs[0] if op.outputs else None
        if op.kernel == "placeholder":
            assert out is not None
            shape = "" if out.shape.dims is None else f" and shape {dims_str(out.shape)}"
            raise InvalidArgumentError(
                f"You must feed a value for placeholder tensor '{op.name}' with dtype "
                f"{_PROTO_NAMES.get(out.dtype.name, out.dtype.name)}{shape}")
        if op.value is not None:
            assert out is not None
            index = b.const(op.value, out.dtype)
        elif op.initializer is not None:
            assert out is not None
            index = op.initializer.build(b, out.shape.fully_defined_dims(), out.dtype)
        else:
            index = b.node(op.kernel, [self.tensor(t) for t in _data_inputs(op)],
                           variable=op.variable, **op.attrs)
        b.nodes[index].control_inputs.extend(self.nodes[c] for c in op.control_inputs)
        return index


def compile_run(builder: RequestBuilder, elements: Sequence[Tensor | Operation],
                feeds: Mapping[Tensor, np.ndarray]) -> list[int | None]:
    """Adds ``elements`` to ``builder``: tensors as fetches, operations as targets.

    Returns each element's position among the fetched values (None for operations). Raises
    ``InvalidArgumentError`` when a needed placeholder is not fed.
    """
    compiler = _Compiler(builder, feeds)
    positions: list[int | None] = []
    for element in elements:
        if isinstance(element, Tensor):
            positions.append(builder.fetch(compiler.tensor(element)))
        else:
            builder.target(compiler.operation(element))
            positions.append(None)
    return positions
