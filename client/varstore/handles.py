"""Variable handles of the eager clients, and the :data:`Steps` they are made of.

A client method or handle operation is written once as Steps; :class:`varstore.Client` drives
them with blocking calls, ``varstore.aio.Client`` as awaitables. :class:`VariableHandle` holds
a variable's metadata and its operations as Steps; :class:`RemoteVariable` (here) and
``varstore.aio.RemoteVariable`` drive them through the client that made the handle.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from varstore.common import codec, dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import InvalidArgumentError, NotFoundError, clip
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder

Reply = tuple[list[np.ndarray], list[pb.VariableInfo]]
# A client method written once as a generator of requests: it yields (request, expected
# response bytes), is sent each reply (or thrown its error), and returns the method's result.
# Client runs the steps with blocking calls; varstore.aio awaits them.
Steps = Generator[tuple[RequestBuilder, int], Reply, Any]


class Driver(Protocol):
    """What a handle needs of the client that made it: running Steps (blocking, or as an
    awaitable)."""

    def _drive(self, steps: Steps) -> Any: ...


def as_int_indices(indices: Any) -> np.ndarray:
    """``indices`` as int64; raises ``TypeError`` unless they are integers (TF 1.x graph
    mode's message; TF 2 eager raises ``InvalidArgumentError``)."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        try:
            name = dtypes.as_dtype(idx.dtype).name
        except TypeError:
            name = str(idx.dtype)
        raise TypeError(f"Value passed to parameter 'indices' has DataType {name} not in list "
                        f"of allowed values: int32, int64")
    return idx.astype(np.int64, copy=False)


def _tf_shape(shape: Sequence[int]) -> str:
    """A shape as TF's kernels print it: ``[784,100]``."""
    return f"[{','.join(str(d) for d in shape)}]"


def _described(value: Any) -> str:
    """``value`` for a message: its type and, for names and numbers, a bounded repr."""
    if isinstance(value, VariableHandle):
        return f"the variable {value.op_name!r}"
    if isinstance(value, str | bytes | int | float | np.generic) or value is None:
        return f"{type(value).__name__} {clip(repr(value), 80)}"
    return type(value).__name__


def variable_list(variables: Any, what: str) -> list[VariableHandle]:
    """``variables`` (an iterable of variable handles) as a list.

    Raises ``TypeError`` naming the argument ``what`` (``"pull() argument 'variables'"``)
    for one handle, a name or anything else not a list of handles, rather than failing on
    its first use."""
    if isinstance(variables, str | bytes | VariableHandle) or variables is None \
            or not isinstance(variables, Iterable):
        hint = " (a list of one: [v])" if isinstance(variables, VariableHandle) else ""
        raise TypeError(f"{what} must be a list of variables (from Variable or get_variable)"
                        f"{hint}, got {_described(variables)}")
    out = list(variables)
    for v in out:
        if not hasattr(v, "op_name"):
            raise TypeError(f"{what} must hold variables returned by Variable or "
                            f"get_variable, got {_described(v)}")
    return out


def name_list(variables: Any, what: str) -> list[str]:
    """The full names of ``variables``: handles or full names, or one of them (one name, not
    its characters). Raises ``TypeError`` naming the argument ``what`` for anything else."""
    if isinstance(variables, str | bytes) or hasattr(variables, "op_name"):
        variables = [variables]
    if variables is None or not isinstance(variables, Iterable):
        raise TypeError(f"{what} must be variables or their full names, got "
                        f"{_described(variables)}")
    names = []
    for v in variables:
        name = getattr(v, "op_name", v)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not isinstance(name, str):
            raise TypeError(f"{what} must be variables or their full names, got "
                            f"{_described(v)}")
        names.append(name)
    return names


def text(value: Any, what: str) -> str:
    """``value`` (a str, or None for "") for a string field of a request; raises
    ``TypeError`` naming the argument ``what`` for anything else (a variable, a number)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"argument '{what}' must be a string, got {_described(value)}")
    return value


def undone_on_failure(steps: Steps, undo: Callable[[], None]) -> Steps:
    """``steps``, calling ``undo`` when they fail (the server refused, the call was cancelled)."""
    try:
        return (yield from steps)
    except BaseException:
        undo()
        raise


def pull_steps(variables: Iterable[VariableHandle] | Any) -> Steps:
    """Reads ``variables`` in one request; returns their values."""
    variables = variable_list(variables, "pull() argument 'variables'")
    b = RequestBuilder()
    for v in variables:
        b.fetch(b.node("read", variable=v.op_name))
    values, _ = yield b, sum(v._nbytes() for v in variables)
    return values


def push_steps(values: Mapping[VariableHandle, Any] | Any) -> Steps:
    """Assigns each ``{variable: value}`` in one request; raises before sending (nothing
    changed) ``ValueError`` when a value has the wrong shape, ``TypeError`` when it does not
    fit the variable's dtype or ``values`` is no dict of variables."""
    if not isinstance(values, Mapping):
        raise TypeError(f"push() argument 'values' must be a dict {{variable: value}}, got "
                        f"{_described(values)}")
    variable_list(list(values), "push() argument 'values'")
    b = RequestBuilder()
    for var, value in values.items():
        array = var._full_value(value)
        b.target(b.node("assign", [b.const(array, var.dtype)], variable=var.op_name))
    yield b, 0


class VariableHandle:
    """What the handles of the blocking and the asyncio client share: the variable's
    metadata and each of its operations written once as :data:`Steps`, which the handle's
    client drives (see :class:`RemoteVariable` and ``varstore.aio.RemoteVariable``)."""

    _shown_as = "varstore.RemoteVariable"

    def __init__(self, client: Driver, name: str, dtype: DType, shape: tuple[int, ...],
                 trainable: bool = True) -> None:
        self._client = client
        self.op_name = name
        self.dtype = dtype
        self.shape = shape
        self.trainable = trainable
        # Adds the node computing the initial value to a request; None for a variable this
        # client bound to but did not create. Used by initialize_or_restore.
        self._initializer: Callable[[RequestBuilder], int] | None = None
        # Where this part of a partitioned variable lies in the full one (None for others).
        self._save_slice_info: Any = None

    @property
    def name(self) -> str:
        """The tensor name, ``"scope/name:0"``."""
        return f"{self.op_name}:0"

    def __repr__(self) -> str:
        return (f"<{self._shown_as} '{self.name}' shape={self.shape} "
                f"dtype={self.dtype.name}>")

    def get_shape(self) -> tuple[int, ...]:
        """The variable's shape."""
        return self.shape

    def _get_save_slice_info(self) -> Any:
        """Where this part lies in its partitioned variable (TF's ``SaveSliceInfo``), or
        None when it is not a part."""
        return self._save_slice_info

    def _set_save_slice_info(self, info: Any) -> None:
        """Records this variable as a part of a partitioned variable."""
        self._save_slice_info = info

    def _value(self, value: Any) -> np.ndarray:
        """``value`` as this variable's dtype by TF's rules (:func:`dtypes.convert`): numpy
        values are cast, a Python float for an integer variable raises ``TypeError``."""
        return dtypes.convert(value, self.dtype)

    def _full_value(self, value: Any) -> np.ndarray:
        """``value`` as a whole new value of this variable; checked here so that a request
        assigning several variables is refused before any of them changes.

        Raises ``ValueError`` for another shape (TF's ``assign``, no broadcasting),
        ``TypeError`` for a value that does not fit the dtype."""
        array = self._value(value)
        if array.shape != self.shape:
            raise ValueError(
                f"Cannot assign value to variable '{self.name}': Shape mismatch. The variable "
                f"shape {self.shape}, and the assigned value shape {array.shape} are "
                f"incompatible.")
        return array

    def _delta(self, op: str, value: Any) -> np.ndarray:
        """``assign_add``'s or ``assign_sub``'s ``value``, of exactly the variable's shape
        (TF's ``AssignAddVariableOp``: no broadcasting, a scalar included) and a numeric
        dtype; raises ``InvalidArgumentError`` (TF's message) or ``TypeError``."""
        array = self._value(value)
        if self.dtype.is_bool or self.dtype.is_string:
            raise InvalidArgumentError(f"{op} {self.op_name}: no kernel for dtype "
                                       f"{self.dtype.name}")
        if array.shape != self.shape:
            raise InvalidArgumentError(
                f"Cannot update variable with shape {_tf_shape(self.shape)} using a Tensor "
                f"with shape {_tf_shape(array.shape)}, shapes must be equal.")
        return array

    # Each ``_*_steps`` method converts its arguments when called (so that bad input raises
    # at the call, also with asyncio) and returns the Steps that send the request.

    def _assign_steps(self, op: str, value: Any) -> Steps:
        """``assign`` (a whole new value), ``assign_add`` or ``assign_sub``."""
        return self._update_steps(op, [self._full_value(value) if op == "assign"
                                       else self._delta(op, value)])

    def _scatter_steps(self, op: str, indices: Any, updates: Any) -> Steps:
        """``scatter_add``, ``scatter_sub`` or ``scatter_update`` of rows ``indices``.

        Raises ``InvalidArgumentError`` unless ``updates`` has shape ``indices.shape +
        shape[1:]`` or is a scalar (TF's ``ResourceScatterUpdate`` rule, its message),
        ``TypeError`` for non-integer indices or updates that do not fit the dtype."""
        idx = as_int_indices(indices)
        array = self._value(updates)
        want = idx.shape + self.shape[1:]
        if self.shape and array.shape not in (want, ()):
            raise InvalidArgumentError(
                f"Must have updates.shape = indices.shape + params.shape[1:] or updates.shape "
                f"= [], got updates.shape {_tf_shape(array.shape)}, indices.shape "
                f"{_tf_shape(idx.shape)}, params.shape {_tf_shape(self.shape)}")
        return self._update_steps(op, [idx, array])

    def _recovering(self, make: Callable[[], Steps]) -> Steps:
        """``make()``'s steps; when the server has lost this variable (it restarted empty)
        and this client created it, creates it again with its initial value and runs them
        once more, as the program that declared it would on a new server. Variables bound
        to (another client's) or deleted with ``Client.delete`` raise ``NotFoundError``."""
        try:
            return (yield from make())
        except NotFoundError:
            if self._initializer is None:
                raise
        b = RequestBuilder()
        b.variable(self.op_name, self.dtype, self.shape, self.trainable,
                   initializer=self._initializer(b), created_by="recreated",
                   initializer_desc="initial value")
        yield b, 0
        return (yield from make())

    def _update_steps(self, op: str, values: Sequence[np.ndarray]) -> Steps:
        return self._recovering(lambda: self._update_once(op, values))

    def _update_once(self, op: str, values: Sequence[np.ndarray]) -> Steps:
        b = RequestBuilder()
        inputs = [b.const(v, dtypes.as_dtype(v.dtype)) for v in values]
        b.target(b.node(op, inputs, variable=self.op_name))
        yield b, 0
        return self

    def _nbytes(self) -> int:
        return codec.num_elements(self.shape) * max(self.dtype.itemsize, 1)

    def _read_steps(self) -> Steps:
        return self._recovering(self._read_once)

    def _read_once(self) -> Steps:
        (value,) = yield from pull_steps([self])
        return value

    def _gather_steps(self, indices: Any) -> Steps:
        idx = as_int_indices(indices)
        return self._gather_rows_steps(idx)

    def _gather_rows_steps(self, idx: np.ndarray) -> Steps:
        return self._recovering(lambda: self._gather_once(idx))

    def _gather_once(self, idx: np.ndarray) -> Steps:
        row = codec.num_elements(self.shape[1:]) * max(self.dtype.itemsize, 1)
        b = RequestBuilder()
        b.fetch(b.node("gather", [b.const(idx, dtypes.int64)], variable=self.op_name))
        (rows,), _ = yield b, idx.size * row
        return rows

    def _is_initialized_steps(self) -> Steps:
        return self._recovering(self._is_initialized_once)

    def _is_initialized_once(self) -> Steps:
        b = RequestBuilder()
        b.fetch(b.node("is_initialized", variable=self.op_name))
        (flag,), _ = yield b, 0
        return bool(flag)


class RemoteVariable(VariableHandle):
    """A handle to a variable on the server; every method is one atomic round trip."""

    def numpy(self) -> np.ndarray:
        """The current value; raises ``FailedPreconditionError`` if uninitialized."""
        return self._client._drive(self._read_steps())

    read_value = numpy
    value = numpy

    def assign(self, value: Any) -> RemoteVariable:
        """Replaces the value (same shape and dtype); returns this handle."""
        return self._client._drive(self._assign_steps("assign", value))

    def assign_add(self, delta: Any) -> RemoteVariable:
        """Adds ``delta`` atomically; returns this handle."""
        return self._client._drive(self._assign_steps("assign_add", delta))

    def assign_sub(self, delta: Any) -> RemoteVariable:
        """Subtracts ``delta`` atomically; returns this handle."""
        return self._client._drive(self._assign_steps("assign_sub", delta))

    def scatter_add(self, indices: Any, updates: Any) -> RemoteVariable:
        """Adds ``updates`` to rows ``indices`` (duplicates accumulate); returns this handle."""
        return self._client._drive(self._scatter_steps("scatter_add", indices, updates))

    def scatter_sub(self, indices: Any, updates: Any) -> RemoteVariable:
        """Subtracts ``updates`` from rows ``indices``; returns this handle."""
        return self._client._drive(self._scatter_steps("scatter_sub", indices, updates))

    def scatter_update(self, indices: Any, updates: Any) -> RemoteVariable:
        """Replaces rows ``indices`` with ``updates``; returns this handle."""
        return self._client._drive(self._scatter_steps("scatter_update", indices, updates))

    def gather(self, indices: Any) -> np.ndarray:
        """Rows ``indices`` of the value, read atomically."""
        return self._client._drive(self._gather_steps(indices))

    def is_initialized(self) -> bool:
        """Whether the variable holds a value on the server."""
        return self._client._drive(self._is_initialized_steps())
