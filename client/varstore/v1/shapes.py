"""``TensorShape`` and the static shape rules graph ops check when they are built.

Shapes print as TF 1.x prints them (``(?, 784)``), and the errors raised while building a
graph carry TF 1.x's messages (``Dimensions must be equal, but are 3 and 4 for 'add' ...``).
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Iterable, Iterator
from typing import Any

Dim = int | None


class TensorShape:
    """A static shape: a tuple of dimensions (None where unknown), or an unknown rank."""

    def __init__(self, dims: Any) -> None:
        if isinstance(dims, TensorShape):
            self._dims: tuple[Dim, ...] | None = dims._dims
        elif dims is None:
            self._dims = None
        elif isinstance(dims, numbers.Integral):
            self._dims = (operator.index(dims),)
        else:
            self._dims = tuple(None if d is None else operator.index(d) for d in dims)

    @property
    def dims(self) -> list[Dim] | None:
        """The dimensions, or None when the rank is unknown."""
        return None if self._dims is None else list(self._dims)

    @property
    def ndims(self) -> int | None:
        """The rank, or None when unknown."""
        return None if self._dims is None else len(self._dims)

    rank = ndims

    def as_list(self) -> list[Dim]:
        """The dimensions as a list; raises ``ValueError`` when the rank is unknown."""
        if self._dims is None:
            raise ValueError("as_list() is not defined on an unknown TensorShape.")
        return list(self._dims)

    def fully_defined_dims(self) -> tuple[int, ...]:
        """The dimensions; raises ``ValueError`` unless the shape is fully defined."""
        if self._dims is None or None in self._dims:
            raise ValueError(f"Shape {self} is not fully defined")
        return tuple(d for d in self._dims if d is not None)

    def is_fully_defined(self) -> bool:
        """True when the rank and every dimension are known."""
        return self._dims is not None and all(d is not None for d in self._dims)

    def num_elements(self) -> int | None:
        """The number of elements, or None unless fully defined."""
        if not self.is_fully_defined():
            return None
        n = 1
        for d in self._dims or ():
            n *= d or 0
        return n

    def is_compatible_with(self, other: Any) -> bool:
        """True when both shapes could describe the same tensor."""
        other = as_shape(other)
        if self._dims is None or other._dims is None:
            return True
        return len(self._dims) == len(other._dims) and all(
            a is None or b is None or a == b for a, b in zip(self._dims, other._dims, strict=True))

    def __len__(self) -> int:
        if self._dims is None:
            raise ValueError("Cannot take the length of shape with unknown rank.")
        return len(self._dims)

    def __iter__(self) -> Iterator[Dim]:
        if self._dims is None:
            raise ValueError("Cannot iterate over a shape with unknown rank.")
        return iter(self._dims)

    def __getitem__(self, key: int | slice) -> Any:
        dims = self.as_list()
        return TensorShape(dims[key]) if isinstance(key, slice) else dims[key]

    def __eq__(self, other: object) -> bool:
        try:
            other_shape = as_shape(other)
        except TypeError:
            return NotImplemented
        return self._dims == other_shape._dims

    def __hash__(self) -> int:
        return hash(self._dims)

    def __str__(self) -> str:
        if self._dims is None:
            return "<unknown>"
        dims = ["?" if d is None else str(d) for d in self._dims]
        return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"

    def __repr__(self) -> str:
        if self._dims is None:
            return "TensorShape(None)"
        return f"TensorShape([{', '.join(f'Dimension({d})' for d in self._dims)}])"


def as_shape(value: Any) -> TensorShape:
    """``value`` (a TensorShape, list, tuple, numpy array, Python or numpy int, or None) as a
    :class:`TensorShape`; raises ``TypeError`` for anything else (floats included)."""
    if isinstance(value, TensorShape):
        return value
    if value is None or isinstance(value, numbers.Integral | Iterable):
        return TensorShape(value)
    raise TypeError(f"cannot convert {value!r} to a TensorShape")


def dims_str(shape: TensorShape) -> str:
    """A shape as TF's shape-inference errors print it: ``[?,784]``."""
    if shape.dims is None:
        return "?"
    return "[" + ",".join("?" if d is None else str(d) for d in shape.dims) + "]"


def _where(name: str, op_type: str, *shapes: TensorShape) -> str:
    return (f"for '{name}' (op: '{op_type}') with input shapes: "
            f"{', '.join(dims_str(s) for s in shapes)}.")


def broadcast(a: TensorShape, b: TensorShape, name: str, op_type: str) -> TensorShape:
    """The shape of an elementwise op on ``a`` and ``b``; raises TF's ``ValueError``."""
    if a.dims is None or b.dims is None:
        return TensorShape(None)
    n = max(len(a.dims), len(b.dims))
    ones: list[Dim] = [1] * n
    x = ones[:n - len(a.dims)] + a.dims
    y = ones[:n - len(b.dims)] + b.dims
    out: list[Dim] = []
    for p, q in zip(x, y, strict=True):
        if p == 1:
            out.append(q)
        elif q == 1:
            out.append(p)
        elif p is None or q is None:
            out.append(p if q is None else q)
        elif p == q:
            out.append(p)
        else:
            raise ValueError(
                f"Dimensions must be equal, but are {p} and {q} {_where(name, op_type, a, b)}")
    return TensorShape(out)


def require_rank(shape: TensorShape, rank: int, name: str, op_type: str,
                 *shapes: TensorShape) -> None:
    """Raises TF's ``ValueError`` unless ``shape`` has rank ``rank`` (or an unknown rank)."""
    if shape.ndims is not None and shape.ndims != rank:
        raise ValueError(f"Shape must be rank {rank} but is rank {shape.ndims} "
                         f"{_where(name, op_type, *shapes)}")


def matmul(a: TensorShape, b: TensorShape, transpose_a: bool, transpose_b: bool, name: str,
           op_type: str) -> TensorShape:
    """The shape of ``matmul(a, b)``; raises TF's ``ValueError`` for rank or size mismatches."""
    require_rank(a, 2, name, op_type, a, b)
    require_rank(b, 2, name, op_type, a, b)
    m, k = (a.dims or [None, None])[::-1 if transpose_a else 1]
    k2, n = (b.dims or [None, None])[::-1 if transpose_b else 1]
    if k is not None and k2 is not None and k != k2:
        raise ValueError(
            f"Dimensions must be equal, but are {k} and {k2} {_where(name, op_type, a, b)}")
    return TensorShape([m, n])


def merge(a: TensorShape, b: TensorShape, name: str, op_type: str) -> TensorShape:
    """The shape both ``a`` and ``b`` describe (an assignment's); raises TF's ``ValueError``."""
    if a.dims is None:
        return b
    if b.dims is None:
        return a
    if len(a.dims) != len(b.dims):
        raise ValueError(f"Shapes must be equal rank, but are {a.ndims} and {b.ndims} "
                         f"{_where(name, op_type, a, b)}")
    out: list[Dim] = []
    for i, (p, q) in enumerate(zip(a.dims, b.dims, strict=True)):
        if p is not None and q is not None and p != q:
            raise ValueError(
                f"Dimension {i} in both shapes must be equal, but are {p} and {q}. Shapes are "
                f"{dims_str(a)} and {dims_str(b)}. {_where(name, op_type, a, b)}")
        out.append(p if p is not None else q)
    return TensorShape(out)


def reduce(shape: TensorShape, axis: list[int] | None, keepdims: bool) -> TensorShape:
    """The shape of a reduction of ``shape`` over ``axis`` (all axes when None)."""
    if shape.dims is None:
        return TensorShape(None)
    rank = len(shape.dims)
    axes = set(range(rank)) if axis is None else {a % rank if rank else a for a in axis}
    if keepdims:
        return TensorShape([1 if i in axes else d for i, d in enumerate(shape.dims)])
    return TensorShape([d for i, d in enumerate(shape.dims) if i not in axes])


def reshape(shape: TensorShape, new: list[int]) -> TensorShape:
    """The shape ``reshape`` gives: ``new`` with a ``-1`` resolved when sizes are known."""
    if new.count(-1) > 1:
        raise ValueError(f"reshape can infer at most one dimension, got {new}")
    if -1 not in new:
        if shape.is_fully_defined() and shape.num_elements() != _prod(new):
            raise ValueError(f"Cannot reshape a tensor with {shape.num_elements()} elements "
                             f"to shape {new} ({_prod(new)} elements)")
        return TensorShape(new)
    known = _prod([d for d in new if d != -1])
    total = shape.num_elements()
    inferred = total // known if total is not None and known else None
    return TensorShape([inferred if d == -1 else d for d in new])


def _prod(dims: list[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
