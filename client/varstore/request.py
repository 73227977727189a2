"""Builds ``RunRequest`` graphs: the one request shape behind every client call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from varstore.common import codec
from varstore.common.dtypes import DType
from varstore.common.errors import clip
from varstore.proto import varstore_pb2 as pb


def attr_value(value: Any) -> pb.AttrValue:
    """An ``AttrValue`` for a Python bool, int, float, str, DType or shape (list/tuple)."""
    if isinstance(value, bool | np.bool_):
        return pb.AttrValue(b=bool(value))
    if isinstance(value, DType):
        return pb.AttrValue(i=value.enum)
    if isinstance(value, int | np.integer):
        return pb.AttrValue(i=int(value))
    if isinstance(value, float | np.floating):
        return pb.AttrValue(f=float(value))
    if isinstance(value, str):
        return pb.AttrValue(s=value)
    if isinstance(value, list | tuple):
        return pb.AttrValue(shape=pb.Shape(dim=[int(d) for d in value]))
    raise TypeError(f"unsupported attribute value {value!r}")


class RequestBuilder:
    """Accumulates variables, nodes, tensors and outputs of one request."""

    def __init__(self) -> None:
        self.specs: list[pb.VariableSpec] = []
        self.nodes: list[pb.Node] = []
        self.arrays: list[tuple[np.ndarray, DType]] = []
        self.fetches: list[int] = []
        self.targets: list[int] = []
        # Variables' devices ("/job:ps/task:2"), which a cluster client places them by; not
        # sent.
        self.devices: dict[str, str] = {}

    def const(self, array: np.ndarray, dtype: DType) -> int:
        """A node producing ``array``; returns its index."""
        self.arrays.append((array, dtype))
        return self.node("const", tensor=len(self.arrays) - 1)

    def node(self, op: str, inputs: Sequence[int] = (), variable: str = "",
             control_inputs: Sequence[int] = (), tensor: int = 0, **attrs: Any) -> int:
        """Adds an op node; returns its index."""
        self.nodes.append(pb.Node(
            op=op, inputs=inputs, control_inputs=control_inputs, variable=variable,
            tensor=tensor,
            attrs={k: attr_value(v) for k, v in attrs.items() if v is not None}))
        return len(self.nodes) - 1

    def variable(self, name: str, dtype: DType, shape: Sequence[int], trainable: bool = True,
                 initializer: int | None = None, bind_only: bool = False,
                 created_by: str = "Variable", initializer_desc: str = "",
                 device: str = "", save_slice: pb.SaveSlice | None = None) -> int:
        """Creates or binds a variable before the graph runs; returns its spec index.
        ``device`` (``tf.device``'s) places it on a cluster's ps task; ``save_slice`` says
        where a part of a partitioned variable lies in the full one."""
        if device:
            self.devices[name] = device
        self.specs.append(pb.VariableSpec(
            name=name, dtype=dtype.enum, shape=codec.shape_to_proto(shape),
            trainable=trainable, mode=pb.BIND if bind_only else pb.CREATE_OR_BIND,
            initializer=0 if initializer is None else initializer + 1,
            created_by=created_by, initializer_desc=initializer_desc, save_slice=save_slice))
        return len(self.specs) - 1

    def fetch(self, index: int) -> int:
        """Returns node ``index``'s value; gives its position among the fetched values."""
        self.fetches.append(index)
        return len(self.fetches) - 1

    def target(self, index: int) -> None:
        """Runs node ``index`` for its effect."""
        self.targets.append(index)

    def payload_bytes(self) -> int:
        """Approximate bytes of tensor data the request carries."""
        return sum(a.nbytes if not d.is_string else 64 * a.size for a, d in self.arrays)

    def build(self, stream: bool) -> tuple[pb.RunRequest, list[codec.Payload]]:
        """The request message; with ``stream``, tensor bytes are returned separately."""
        request = pb.RunRequest(variables=self.specs, nodes=self.nodes,
                                fetches=self.fetches, targets=self.targets)
        return request, codec.pack_tensors(self.arrays, stream, request.tensors)


def checkpoint_entries(var_list: Any) -> list[pb.CheckpointEntry]:
    """Checkpoint entries for a list of variables or a ``{key: variable}`` dict, as TF's
    ``Saver`` keys them: in a list, a variable under its own name, a part of a partitioned
    variable (or a whole ``PartitionedVariable``) as a slice of its full variable's tensor;
    in a dict, under the key (parts as slices of it). ``CheckpointEntry`` messages in a
    list are taken as they are."""
    if var_list is None:
        return []
    if isinstance(var_list, str | bytes) or hasattr(var_list, "op_name") \
            or not isinstance(var_list, Iterable):
        raise TypeError(f"Variables to save should be passed in a dict or a list. Got "
                        f"{clip(repr(var_list), 100)}")
    if not isinstance(var_list, Mapping) and all(
            isinstance(e, pb.CheckpointEntry) for e in var_list):
        return list(var_list)
    items: list[tuple[Any, Any]]
    if isinstance(var_list, Mapping):
        items = list(var_list.items())
    else:
        items = []
        for v in var_list:
            info = _slice_info(v)
            items.append((v.name if hasattr(v, "_get_variable_list")
                          else info.full_name if info is not None
                          else getattr(v, "op_name", v), v))
    entries = []
    for key, value in items:
        for v in value._get_variable_list() if hasattr(value, "_get_variable_list") \
                else [value]:
            info = _slice_info(v)
            part = None if info is None else info.to_proto()
            if part is not None:
                part.full_name = key
            name = getattr(v, "op_name", v)
            if not isinstance(key, str) or not isinstance(name, str):
                raise TypeError(f"var_list must hold variables or their full names, got "
                                f"{type(key if not isinstance(key, str) else v).__name__}")
            entries.append(pb.CheckpointEntry(key=key, variable=name, slice=part))
    return entries


def _slice_info(var: Any) -> Any:
    """A part's place in its partitioned variable; None for other variables and names."""
    get = getattr(var, "_get_save_slice_info", None)
    return get() if get is not None else None
