"""Partitioned variables: ``get_variable(..., partitioner=...)`` and TF's three partitioners.

As TensorFlow's ``variable_scope._VariableStore._get_partitioned_variable`` and
``partitioned_variables.py``: a partitioner maps a shape and dtype to a number of parts per
axis (more than one on at most one axis); the variable ``emb`` becomes the server variables
``emb/part_0``, ``emb/part_1``... each holding a slice of the full value along that axis (the
first ``dim % parts`` slices one row longer), and each part records the full variable's name,
shape and its offset (:class:`SaveSliceInfo`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varstore import initializers
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.proto import varstore_pb2 as pb
from varstore.v1.shapes import TensorShape, as_shape


@dataclass(frozen=True)
class SaveSliceInfo:
    """Where a part lies in its full variable (TF's ``Variable.SaveSliceInfo``)."""

    full_name: str
    full_shape: list[int]
    var_offset: list[int]
    var_shape: list[int]

    @property
    def spec(self) -> str:
        """The checkpoint slice spec: ``"10 4 4,3:0,4"`` (full shape, then offset,length per
        axis), as TF's ``SaveSliceInfo.spec``."""
        axes = ":".join(f"{offset},{length}" for offset, length
                        in zip(self.var_offset, self.var_shape, strict=True))
        return " ".join(str(d) for d in self.full_shape) + " " + axes

    def to_proto(self) -> pb.SaveSlice:
        """The server's record of the part (see ``SaveSlice`` in varstore.proto)."""
        return pb.SaveSlice(full_name=self.full_name, full_shape=self.full_shape,
                            offset=self.var_offset, shape=self.var_shape)


class Partitioned:
    """The parts of one partitioned variable, in order, as TF's ``PartitionedVariable`` holds
    them (graph mode: :class:`PartitionedVariable`; the eager clients:
    ``varstore.partitioned.PartitionedVariable``); iterating yields the parts."""

    def __init__(self, name: str, shape: TensorShape, dtype: DType, parts: list[Any],
                 partitions: list[int]) -> None:
        self.name = name
        self._shape = shape
        self.dtype = dtype
        self._parts = parts
        self._partitions = partitions

    def get_shape(self) -> Any:
        """The full variable's shape (as :attr:`shape`)."""
        return self.shape

    @property
    def shape(self) -> Any:
        """The full variable's shape."""
        return self._shape

    def __iter__(self) -> Iterator[Any]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def _get_variable_list(self) -> list[Any]:
        return list(self._parts)

    def _get_partitions(self) -> list[int]:
        return list(self._partitions)

    def _partition_axes(self) -> list[int]:
        """The partitioned axes ([0] when there is one part), as TF's."""
        return [k for k, n in enumerate(self._partitions) if n > 1] or [0]

    def __repr__(self) -> str:
        return (f"<PartitionedVariable '{self.name}' shape={self._shape} "
                f"parts={len(self._parts)}>")


class PartitionedVariable(Partitioned):
    """A graph's partitioned variable: its parts, and its full value as one tensor."""

    def _concat(self) -> Any:
        """The full value: the parts joined along their partitioned axis (TF's
        ``PartitionedVariable._concat``)."""
        from varstore.v1.array_ops import concat
        if len(self._parts) == 1:
            return self._parts[0]._as_graph_tensor(False)
        return concat(self._parts, self._partition_axes()[0], name=self.name)

    def as_tensor(self) -> Any:
        """The full value as one tensor (TF's ``PartitionedVariable.as_tensor``)."""
        return self._concat()

    def _as_graph_tensor(self, as_ref: bool) -> Any:
        """What ``convert_to_tensor`` (and so ``matmul``, ``reduce_sum``...) makes of the
        variable: its full value. Raises ``ValueError`` for a reference, as TF does."""
        if as_ref:
            raise ValueError("PartitionedVariable cannot be converted to a reference; use "
                             "its parts")
        return self._concat()


def fixed_size_partitioner(num_shards: int, axis: int = 0) -> Callable[..., list[int]]:
    """A partitioner making ``num_shards`` parts along ``axis`` (fewer for a shorter axis)."""
    def partitioner(shape: TensorShape, **_: Any) -> list[int]:
        parts = [1] * len(shape)
        parts[axis] = min(num_shards, _dims(shape)[axis])
        return parts
    return partitioner


def variable_axis_size_partitioner(max_shard_bytes: int, axis: int = 0,
                                   bytes_per_string_element: int = 16,
                                   max_shards: int | None = None) -> Callable[..., list[int]]:
    """A partitioner keeping each part under ``max_shard_bytes`` (at least one slice of
    ``axis`` per part), at most ``max_shards`` parts; TF's arithmetic.

    Raises ``ValueError`` for non-positive sizes, as TF does."""
    if max_shard_bytes < 1 or bytes_per_string_element < 1:
        raise ValueError(
            "Both max_shard_bytes and bytes_per_string_element must be positive. "
            f"Currently, max_shard_bytes is {max_shard_bytes} and"
            f"bytes_per_string_element is {bytes_per_string_element}")
    if max_shards and max_shards < 1:
        raise ValueError("max_shards must be positive.")

    def partitioner(shape: TensorShape, dtype: Any) -> list[int]:
        if not isinstance(shape, TensorShape):
            raise ValueError(f"shape is not a TensorShape: {shape}")
        if not shape.is_fully_defined():
            raise ValueError(f"shape is not fully defined: {shape}")
        dims = _dims(shape)
        size = _element_size(dtype, bytes_per_string_element)
        parts = [1] * len(dims)
        bytes_per_slice = 1.0 * (math.prod(dims) / dims[axis]) * size
        slices_per_shard = max(1, math.floor(max_shard_bytes / bytes_per_slice))
        axis_shards = int(math.ceil(1.0 * dims[axis] / slices_per_shard))
        if max_shards:
            axis_shards = min(max_shards, axis_shards)
        parts[axis] = axis_shards
        return parts
    return partitioner


def min_max_variable_partitioner(max_partitions: int = 1, axis: int = 0,
                                 min_slice_size: int = 256 << 10,
                                 bytes_per_string_element: int = 16
                                 ) -> Callable[..., list[int]]:
    """A partitioner making parts of at least ``min_slice_size`` bytes, at most
    ``max_partitions`` of them; TF's arithmetic."""
    def partitioner(shape: TensorShape, dtype: Any) -> list[int]:
        if axis >= len(shape):
            raise ValueError(f"Cannot partition variable along axis {axis} when shape is "
                             f"only {shape}")
        dims = _dims(shape)
        total = math.prod(dims) * _element_size(dtype, bytes_per_string_element)
        parts = [1] * len(dims)
        parts[axis] = max(1, min(dims[axis], max_partitions,
                                 int(math.ceil(total / min_slice_size))))
        return parts
    return partitioner


def _dims(shape: TensorShape) -> list[int]:
    """A fully defined shape's dimensions; raises ``ValueError`` otherwise."""
    dims = shape.as_list()
    known = [d for d in dims if d is not None]
    if len(known) != len(dims):
        raise ValueError(f"shape is not fully defined: {shape}")
    return known


def _element_size(dtype: Any, bytes_per_string_element: int) -> int:
    dtype = dtypes.as_dtype(dtype)
    return bytes_per_string_element if dtype.is_string else dtype.itemsize


def _call_partitioner(partitioner: Any, shape: TensorShape, dtype: DType) -> list[int]:
    """The partitioner's parts per axis, checked as TF's ``_call_partitioner``."""
    if not shape.is_fully_defined():
        raise ValueError(f"Shape of a new partitioned variable must be fully defined, but "
                         f"instead was {shape}.")
    if len(shape) < 1:
        raise ValueError(f"A partitioned Variable must have rank at least 1, shape: {shape}")
    slicing = partitioner(**_partitioner_args(partitioner, shape, dtype))
    if not isinstance(slicing, Sequence):
        raise ValueError(f"Partitioner must return a sequence, but saw: {slicing}")
    if len(slicing) != len(shape):
        raise ValueError(f"Partitioner returned a partition list that does not match the "
                         f"Variable's rank: {slicing} vs. {shape}")
    if any(p < 1 for p in slicing):
        raise ValueError(f"Partitioner returned zero partitions for some axes: {slicing}")
    if sum(p > 1 for p in slicing) > 1:
        raise ValueError(f"Can only slice a variable along one dimension: shape: {shape}, "
                         f"partitioning: {slicing}")
    return [int(p) for p in slicing]


def _partitioner_args(partitioner: Any, shape: TensorShape, dtype: DType) -> dict[str, Any]:
    """The ``shape=`` and ``dtype=`` a partitioner is called with: varstore's, or for one of
    TensorFlow's own (``tf.compat.v1.fixed_size_partitioner``...) TensorFlow's
    ``TensorShape`` and ``DType``, which its code reads."""
    module = getattr(partitioner, "__module__", None) or ""
    tf = sys.modules.get("tensorflow")
    if tf is not None and module.split(".")[0] == "tensorflow":
        return {"shape": tf.TensorShape(shape.as_list()), "dtype": tf.as_dtype(dtype.name)}
    return {"shape": shape, "dtype": dtype}


def _slices(full: list[int], parts: list[int]) -> Iterator[tuple[list[int], list[int]]]:
    """(offset, shape) of each part, as TF's ``_iter_slices``."""
    axis = next((i for i, p in enumerate(parts) if p > 1), 0)
    count = parts[axis] if parts else 1
    longer, base = full[axis] % count, full[axis] // count
    offset = [0] * len(full)
    for i in range(count):
        shape = list(full)
        shape[axis] = base + (1 if i < longer else 0)
        yield list(offset), shape
        offset[axis] += shape[axis]


def get_partitioned_variable(name: str, shape: Any, dtype: DType, initializer: Any,
                             partitioner: Any, reuse: Any, known: dict[str, Any],
                             make_part: Callable[[str, list[int] | None, Any], Any],
                             single: Mapping[str, Any],
                             kind: type[Partitioned] = PartitionedVariable) -> Partitioned:
    """Gets or creates the partitioned variable ``name`` (``known`` holds the graph's or
    client's partitioned variables by name, ``single`` its other ``get_variable``
    variables); ``make_part(part_name, part_shape, initializer)`` gets or creates one part;
    a new one is a ``kind``.

    A value initializer (number, list, array, constant tensor) is sliced for each part.
    Raises TF's ``ValueError`` messages for bad partitionings and reuse mistakes.
    """
    if not callable(partitioner):
        raise ValueError(f"Partitioner must be callable, but received: {partitioner}")
    value = None
    if initializer is not None and not callable(initializer):
        value = _constant_value(initializer, dtype)
        if hasattr(initializer, "op"):  # as TF: a tensor gives its shape and dtype
            dtype = dtypes.as_dtype(value.dtype)
            shape = as_shape(value.shape) if shape is None else shape
    shape = as_shape(shape)
    if name in single:
        raise ValueError(f"A partitioner was provided, but an unpartitioned version of the "
                         f"variable was found: {name}.  Perhaps a variable of the same name "
                         f"was already created without partitioning?")
    parts = _call_partitioner(partitioner, shape, dtype) if not reuse or partitioner else None
    existing = known.get(name)
    if existing is not None:
        if reuse is False:
            raise ValueError(f"Partitioned variable with name {name} already exists. Did you "
                             f"mean to set reuse=True or reuse=tf.AUTO_REUSE in VarScope?")
        if not shape.is_compatible_with(existing.get_shape()):
            raise ValueError(f"Trying to reuse partitioned variable {name}, but specified shape "
                             f"{shape} and found shape {existing.get_shape()}.")
        if dtype != existing.dtype:
            raise ValueError(f"Trying to reuse partitioned variable {name}, but specified "
                             f"dtype {dtype.name} and found dtype {existing.dtype.name}.")
        if parts is not None and existing._get_partitions() != parts:
            raise ValueError(f"Trying to reuse partitioned variable {name}, but specified "
                             f"partitions {parts} and found partitions "
                             f"{existing._get_partitions()}.")
        return existing
    if reuse is True:
        raise ValueError(f"PartitionedVariable {name} does not exist, or was not created with "
                         f"tf.get_variable(). Did you mean to set reuse=False or "
                         f"reuse=tf.AUTO_REUSE in VarScope?")
    assert parts is not None
    count = max(parts)
    if f"{name}/part_0" in single:
        if f"{name}/part_{count - 1}" not in single:
            raise ValueError(f"Partitioner returned a different partitioning than what was "
                             f"already found.  Partitioner returned {count} shards, and shard "
                             f"{name}/part_0 was found, but {name}/part_{count - 1} was not.")
        if f"{name}/part_{count}" in single:
            raise ValueError(f"Partitioner returned a different partitioning than what was "
                             f"already found.  Partitioner returned {count} shards, and shard "
                             f"{name}/part_0 was found, but so was the extra shard "
                             f"{name}/part_{count}.")
    full = _dims(shape)
    made = []
    for i, (offset, part_shape) in enumerate(_slices(full, parts)):
        if value is not None:
            index = tuple(slice(o, o + n) for o, n in zip(offset, part_shape, strict=True))
            var = make_part(f"{name}/part_{i}", None, value[index])
        else:
            var = make_part(f"{name}/part_{i}", part_shape,
                            initializers.for_part(initializer, dtype, full))
        var._set_save_slice_info(SaveSliceInfo(name, full, offset, part_shape))
        made.append(var)
    result = kind(name, shape, dtype, made, parts)
    known[name] = result
    return result


def _constant_value(initializer: Any, dtype: DType) -> np.ndarray:
    """A value initializer as an array (a constant tensor's own value)."""
    op = getattr(initializer, "op", None)
    if op is not None:
        if getattr(op, "value", None) is None:
            raise TypeError(f"A partitioned variable's initializer tensor must be a constant, "
                            f"got {initializer}")
        return op.value
    dtypes.check_convertible(initializer, dtype)
    return dtypes.to_numpy(initializer, dtype)
