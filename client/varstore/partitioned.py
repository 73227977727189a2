"""Partitioned variables of the eager clients: ``get_variable(..., partitioner=...)``.

The rules are ``varstore.v1.partitioned``'s (TensorFlow's ``_get_partitioned_variable``: part
names ``w/part_0``..., shapes, slicing, errors); here the parts are created on the server in
one request, each with its place in the full variable (``SaveSlice``), so that every save
writes them as TF's ``Saver`` does, as slices of one tensor ``w``. TF 2 eager's
``tf.compat.v1.get_variable`` returns the same parts (checked by
``tests/interop/test_tf2_eager_fidelity.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from varstore import initializers
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import NotFoundError
from varstore.handles import Steps, VariableHandle, pull_steps, push_steps
from varstore.request import RequestBuilder
from varstore.v1 import partitioned
from varstore.v1.partitioned import _dims
from varstore.v1.shapes import TensorShape, as_shape

# (handle, the node computing its initial value, its description)
Plan = tuple[VariableHandle, Callable[[RequestBuilder], int], str]


class _Shape(TensorShape):
    """A shape printed as TF 2 prints it in messages: ``(None, 3)``."""

    def __str__(self) -> str:
        return "<unknown>" if self.rank is None else str(tuple(self.as_list()))


class PartitionedVariable(partitioned.Partitioned):
    """What an eager client's ``get_variable`` returns for a partitioned variable, with what
    TF 2 eager's ``PartitionedVariable`` has: the parts (iteration, ``len``,
    ``_get_variable_list``), ``name``, ``dtype``, ``shape``/``get_shape()`` (a tuple, as the
    eager clients' variables), ``as_tensor()`` (the whole value, read in one request) and
    ``assign``/``assign_add``/``assign_sub`` of a whole value (split along the partitioned
    axis, or a list of one value per part; one request). As in TF there is no ``numpy()``
    and no indexing. With ``varstore.aio`` the methods return awaitables."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The full variable's shape."""
        return tuple(_dims(self._shape))

    def _drive(self, steps: Steps) -> Any:
        return self._parts[0]._client._drive(steps)

    def as_tensor(self) -> Any:
        """The whole value, the parts joined along their partitioned axis (TF's
        ``PartitionedVariable.as_tensor``), all read in one request."""
        return self._drive(self._read_steps())

    def _read_steps(self) -> Steps:
        values = yield from pull_steps(self._parts)
        return np.concatenate(values, axis=self._partition_axes()[0])

    def _split(self, value: Any) -> list[Any]:
        """One value per part, as TF's ``_apply_assign_fn``: a list (one per part) or
        another partitioned variable as is, else ``value`` split along the partitioned axis.

        Raises ``InvalidArgumentError`` when the sizes do not match the parts'."""
        if isinstance(value, list):
            if len(value) != len(self._parts):
                raise ValueError(f"{len(value)} values for the {len(self._parts)} parts of "
                                 f"{self.name}")
            return value
        if isinstance(value, partitioned.Partitioned):
            return list(value)
        array = dtypes.convert(value, self.dtype)
        axis = self._partition_axes()[0]
        if array.ndim != len(self.shape) or array.shape[axis] != self.shape[axis]:
            from varstore.common.errors import InvalidArgumentError
            raise InvalidArgumentError(
                f"Assign {self.name}: value has shape {list(array.shape)}, variable has "
                f"shape {list(self.shape)}")
        bounds = np.cumsum([part.shape[axis] for part in self._parts])[:-1]
        return np.split(array, bounds, axis=axis)

    def assign(self, value: Any) -> Any:
        """Assigns a whole new value (or one per part), all parts in one request; returns
        the parts (TF returns one result per part)."""
        return self._drive(self._update_steps("assign", value))

    def assign_add(self, delta: Any) -> Any:
        """Adds ``delta`` (whole, or one per part), in one request; returns the parts."""
        return self._drive(self._update_steps("assign_add", delta))

    def assign_sub(self, delta: Any) -> Any:
        """Subtracts ``delta`` (whole, or one per part), in one request; returns the parts."""
        return self._drive(self._update_steps("assign_sub", delta))

    def _update_steps(self, op: str, value: Any) -> Steps:
        pairs = list(zip(self._parts, self._split(value), strict=True))
        if op == "assign":
            yield from push_steps(dict(pairs))
        else:
            b = RequestBuilder()
            for part, delta in pairs:
                array = part._delta(op, delta)
                b.target(b.node(op, [b.const(array, part.dtype)], variable=part.op_name))
            yield b, 0
        return list(self._parts)


def get_steps(client: Any, name: str, shape: Any, dtype: Any,
              initializer: Any, trainable: bool, partitioner: Any) -> Steps:
    """``client.get_variable`` (``client``: a ``varstore.client.ClientBase``) with a
    partitioner: gets or creates the partitioned variable
    ``scope/name`` by ``varstore.v1.partitioned.get_partitioned_variable``'s rules; new parts
    are created (or bound to, when the server has them) in one request.

    Under reuse, a partitioned variable this client does not know is looked up on the
    server (another client's), as ``get_variable`` does. Raises TF's ``ValueError``s.
    """
    naming = client.naming
    scope = naming.var_scope
    full = naming.full_name(name)
    init = initializer if initializer is not None else scope.initializer
    dtype = dtypes.as_dtype(dtype or scope.dtype or dtypes.float32)
    if shape is not None:
        shape = _Shape(as_shape(shape).as_list())
    if full not in naming.partitioned and scope.reuse:
        yield from _find_steps(client, full, shape, dtype, partitioner)
    plans: list[Plan] = []

    def make_part(part_name: str, part_shape: list[int] | None, part_init: Any
                  ) -> VariableHandle:
        def create(part_full: str) -> VariableHandle:
            if part_shape is None:  # a slice of a value initializer
                value = np.asarray(part_init)
                build: Callable[[RequestBuilder], int] = lambda b: b.const(value, dtype)  # noqa: E731
                plan_shape, description = value.shape, "initial_value"
            else:
                init_obj = initializers.resolve(part_init, dtype)
                init_obj.validate(part_shape, dtype)
                plan_shape, description = tuple(part_shape), init_obj.describe()
                build = lambda b: init_obj.build(b, plan_shape, dtype)  # noqa: E731
            handle = client.handle_type(client, part_full, dtype, tuple(plan_shape), trainable)
            plans.append((handle, build, description))
            return handle
        return naming.get_variable(part_name, part_shape, dtype, create,
                                   describe=lambda v: (v.shape, v.dtype))

    try:
        result = partitioned.get_partitioned_variable(
            full, shape, dtype, init, partitioner, scope.reuse, naming.partitioned, make_part,
            naming.shared, kind=PartitionedVariable)
        if plans:
            yield from _create_steps(client, plans)
    except BaseException:
        for handle, _, _ in plans:
            naming.shared.pop(handle.op_name, None)
        if plans:
            naming.partitioned.pop(full, None)
        raise
    return result


def _create_steps(client: Any, plans: list[Plan]) -> Steps:
    """Creates (or binds to) the new parts in one request, each with its ``SaveSlice``."""
    b = RequestBuilder()
    deferred = client._deferred
    for handle, build, description in plans:
        b.variable(handle.op_name, handle.dtype, handle.shape, handle.trainable,
                   initializer=None if deferred else build(b), created_by="get_variable",
                   initializer_desc=description,
                   save_slice=handle._get_save_slice_info().to_proto())
    yield b, 0
    for handle, build, _ in plans:
        handle._initializer = build


def _find_steps(client: Any, full: str, shape: Any, dtype: DType,
                partitioner: Any) -> Steps:
    """Binds to the parts of ``full`` that the server holds (another client made them),
    when all the parts ``partitioner`` makes of ``shape`` exist there as slices of ``full``;
    then the client knows the partitioned variable. Does nothing otherwise (the caller's
    rules then create it, or raise TF's error)."""
    try:
        full_shape = as_shape(shape)
        parts = partitioned._call_partitioner(partitioner, full_shape, dtype)
    except (ValueError, TypeError):
        return  # get_partitioned_variable raises TF's error for these
    count = max(parts)
    b = RequestBuilder()
    for i in range(count):
        b.variable(f"{full}/part_{i}", dtype, (), bind_only=True)
    try:
        _, infos = yield b, 0
    except NotFoundError:
        return
    stored = list(infos[0].save_slice.full_shape) if infos[0].HasField("save_slice") else []
    if len(stored) != len(parts):
        return
    handles = []
    for info, (offset, part_shape) in zip(infos, partitioned._slices(stored, parts),
                                          strict=True):
        part = info.save_slice if info.HasField("save_slice") else None
        if part is None or part.full_name != full or (
                list(part.full_shape), list(part.offset), list(part.shape)) != (
                stored, offset, part_shape):
            return  # not these parts of one variable: creating them fails on the server
        handle = client._handle(info)
        handle._set_save_slice_info(partitioned.SaveSliceInfo(full, stored, offset,
                                                              part_shape))
        handles.append(handle)
    naming = client.naming
    for handle in handles:
        naming.shared[handle.op_name] = handle
    naming.partitioned[full] = PartitionedVariable(full, as_shape(stored), handles[0].dtype,
                                                   handles, parts)
