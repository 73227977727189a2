"""Turns protocol messages into the executor's plain values and results back into messages."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from varstore.common import codec, dtypes
from varstore.common.errors import InvalidArgumentError, clip
from varstore.proto import varstore_pb2 as pb
from varstore.server.executor import Graph, Result, VariableSpec
from varstore.server.kernels import NodeDef
from varstore.server.slices import Entry, SaveSlice, entry_plan
from varstore.server.store import Variable, validate_name

MAX_ATTRS = 64


def tensors_from_proto(messages: Sequence[pb.Tensor], streamed: Sequence[np.ndarray | None],
                       charge: codec.Charge | None = None) -> list[np.ndarray]:
    """The request's tensors as arrays: ``streamed`` holds those whose bytes came in stream
    chunks (None for tensors inline in their message, decoded with ``charge``)."""
    return [array if array is not None else codec.tensor_from_proto(t, charge=charge)
            for t, array in zip(messages, streamed, strict=True)]


def graph_from_proto(request: pb.RunRequest, tensors: list[np.ndarray]) -> Graph:
    """A validated :class:`Graph` for ``request`` with its decoded ``tensors``."""
    nodes = [NodeDef(n.op, tuple(n.inputs), tuple(n.control_inputs), n.variable, n.tensor,
                     _attrs(n, i)) for i, n in enumerate(request.nodes)]
    specs = [VariableSpec(
        name=v.name, dtype=dtype, shape=codec.shape_from_proto(v.shape.dim, dtype),
        trainable=v.trainable, bind_only=v.mode == pb.BIND,
        initializer=v.initializer - 1 if v.initializer else None,
        created_by=v.created_by[:64], initializer_desc=v.initializer_desc[:256],
        save_slice=slice_from_proto(v.save_slice) if v.HasField("save_slice") else None)
        for v in request.variables for dtype in (codec.dtype_from_proto(v.dtype),)]
    return Graph(specs, nodes, tensors, list(request.fetches), list(request.targets))


def _attrs(node: pb.Node, index: int) -> dict[str, Any] | None:
    if not node.attrs:
        return None
    if len(node.attrs) > MAX_ATTRS:
        raise InvalidArgumentError(f"node {clip(node.op, 64)!r} has too many attributes")
    out: dict[str, Any] = {}
    for key, value in node.attrs.items():
        kind = value.WhichOneof("value")
        if kind is None:
            raise InvalidArgumentError(f"attribute {clip(key, 64)!r} has no value")
        if kind == "shape":
            out[key] = list(codec.check_shape(
                value.shape.dim, what=f"{clip(node.op, 64)} (node {index}): attribute "
                f"{clip(key, 64)!r}"))
        else:
            out[key] = getattr(value, kind)
    return out


def variable_info(var: Variable, created: bool = False) -> pb.VariableInfo:
    """The ``VariableInfo`` message describing ``var``."""
    return pb.VariableInfo(
        name=var.name, dtype=var.dtype.enum, shape=codec.shape_to_proto(var.shape),
        trainable=var.trainable, initialized=var.initialized, version=var.version,
        created_by=var.created_by, initializer_desc=var.initializer_desc, nbytes=var.nbytes,
        created=created, save_slice=None if var.save_slice is None
        else slice_to_proto(var.save_slice))


def slice_from_proto(message: pb.SaveSlice, key: str | None = None) -> SaveSlice:
    """A checked :class:`SaveSlice`; ``key``: the checkpoint entry's key, which an empty
    ``full_name`` stands for and any other must equal. Raises ``InvalidArgumentError``."""
    name = message.full_name
    if key is not None:
        if name and name != key:
            raise InvalidArgumentError(
                f"the slice of checkpoint key {clip(repr(key))} names another tensor, "
                f"{clip(repr(name))}")
        name = key
    if max(len(message.full_shape), len(message.offset), len(message.shape)) > codec.MAX_RANK:
        raise InvalidArgumentError(f"slice of {clip(repr(name))} has rank > {codec.MAX_RANK}")
    return SaveSlice.checked(validate_name(name), message.full_shape, message.offset,
                             message.shape)


def slice_to_proto(s: SaveSlice) -> pb.SaveSlice:
    """The ``SaveSlice`` message of ``s``."""
    return pb.SaveSlice(full_name=s.full_name, full_shape=s.full_shape, offset=s.offset,
                        shape=s.shape)


def entries_from_proto(entries: Iterable[pb.CheckpointEntry], save: bool) -> list[Entry]:
    """A request's checkpoint entries as checked :class:`Entry` values (see
    :func:`varstore.server.slices.entry_plan`; a ``save``'s slices of one key must be
    disjoint). Raises ``InvalidArgumentError``."""
    return entry_plan((Entry(e.key, e.variable, slice_from_proto(e.slice, e.key)
                             if e.HasField("slice") else None) for e in entries), save)


def result_to_proto(result: Result, stream: bool) -> tuple[pb.RunResponse, list[codec.Payload]]:
    """The response for ``result``; with ``stream``, tensor bytes are returned separately.
    (The executor charged the memory its encoding takes, see budget.reply_bytes.)"""
    arrays: list[tuple[np.ndarray | codec.Framed, dtypes.DType]] = []
    for value in result.values:
        if isinstance(value, codec.Framed):
            arrays.append((value, value.dtype))
            continue
        array = np.asarray(value if value is not None else np.zeros((0,), np.float32))
        arrays.append((array, dtypes.as_dtype(array.dtype)))
    response = pb.RunResponse(variables=[variable_info(v, c) for v, c in result.variables])
    return response, codec.pack_tensors(arrays, stream, response.values)
