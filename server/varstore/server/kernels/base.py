"""What every kernel module shares: the node and op records, the context a kernel sees, and
the checks of attributes and indices."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import InvalidArgumentError
from varstore.server.store import Variable, VariableStore
from varstore.server.waits import Waiter


@dataclass
class NodeDef:
    """A graph node as plain values (see ``Node`` in the protocol)."""

    op: str
    inputs: tuple[int, ...] = ()
    control_inputs: tuple[int, ...] = ()
    variable: str = ""
    tensor: int = 0
    attrs: dict[str, Any] | None = None

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute ``name``, or ``default`` when the node does not set it."""
        return (self.attrs or {}).get(name, default)


class Context(Protocol):
    """What a kernel may use from the executor."""

    store: VariableStore
    tensors: list[np.ndarray]
    # The request's undo and commit actions (journal.Journal) and the limits of its waits.
    journal: Any
    waiter: Waiter

    def variable(self, node: NodeDef) -> Variable: ...

    def check_alloc(self, shape: tuple[int, ...], dtype: DType) -> None:
        """Charges an array of ``shape`` and ``dtype`` to the request's memory budget, before
        the kernel allocates it; raises ``ResourceExhaustedError`` past a limit."""

    def take(self, node: NodeDef, position: int) -> bool: ...


Kernel = Callable[[Context, NodeDef, list[Any]], Any]


@dataclass(frozen=True)
class OpDef:
    """An op: its kernel, input count (None: any) and whether it names a variable."""

    kernel: Kernel
    arity: int | None
    uses_variable: bool = False


def _dtype_attr(node: NodeDef, default: DType | None = None) -> DType:
    value = node.attr("dtype")
    if value is None:
        if default is None:
            raise InvalidArgumentError(f"op {node.op} needs a dtype attribute")
        return default
    try:
        return dtypes.from_enum(int(value))
    except ValueError as e:
        raise InvalidArgumentError(str(e)) from None


def _shape_attr(ctx: Context, node: NodeDef, dtype: DType) -> tuple[int, ...]:
    """The node's ``shape`` attribute, its output (of ``dtype``) charged to the budget."""
    shape = node.attr("shape")
    if shape is None:
        raise InvalidArgumentError(f"op {node.op} needs a shape attribute")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"op {node.op}: negative dimension in shape {list(shape)}")
    ctx.check_alloc(shape, dtype)
    return shape


def _cast(value: Any, dtype: DType) -> np.ndarray:
    return np.asarray(value).astype(dtype.np_dtype, copy=False)


def _same_dtype(node: NodeDef, a: np.ndarray, b: np.ndarray) -> None:
    if a.dtype != b.dtype:
        raise InvalidArgumentError(
            f"{node.op}: inputs have different dtypes {dtypes.as_dtype(a.dtype).name} and "
            f"{dtypes.as_dtype(b.dtype).name}")


def _indices(indices: Any, limit: int, what: str) -> np.ndarray:
    """``indices`` as an intp array; raises ``InvalidArgumentError`` for non-integers or an
    index outside ``[0, limit)`` (compared before the cast, so no index wraps)."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what}: indices must be integers, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= limit):
        bad = idx[(idx < 0) | (idx >= limit)].reshape(-1)[0]
        raise InvalidArgumentError(f"{what}: index {bad} is not in [0, {limit})")
    return idx.astype(np.intp, copy=False)
