"""Partitioned variables in checkpoints: where a part lies in its full tensor, and the
checkpoint entries that save a part as a slice of one tensor (or restore it from a region of
the stored tensor), as TensorFlow's ``Saver`` does with ``Variable.SaveSliceInfo``
(``training/saving/saveable_object_util.py``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from varstore.common.errors import InvalidArgumentError, clip

__all__ = ["MAX_ELEMENTS", "Entry", "SaveSlice", "check_disjoint", "covers", "entry_plan",
           "overlaps"]

# TensorFlow's TensorShape holds at most 2**63 - 1 elements; so may a full tensor here.
MAX_ELEMENTS = (1 << 63) - 1
MAX_RANK = 64


@dataclass(frozen=True)
class SaveSlice:
    """Part ``offset``..``offset + shape`` of the tensor ``full_name`` of ``full_shape``."""

    full_name: str
    full_shape: tuple[int, ...]
    offset: tuple[int, ...]
    shape: tuple[int, ...]

    @classmethod
    def checked(cls, full_name: str, full_shape: Sequence[int], offset: Sequence[int],
                shape: Sequence[int]) -> SaveSlice:
        """A slice after checking with exact integers that it lies inside its full tensor:
        equal ranks (1 to 64), offsets >= 0, offset + length <= the full dimension, at most
        2**63 - 1 elements in the full tensor (the caller checks the name).

        Raises ``InvalidArgumentError`` naming (the start of) the refused value."""
        full, start, size = (tuple(int(d) for d in v) for v in (full_shape, offset, shape))
        what = f"slice of {clip(repr(full_name))}"
        if not 1 <= len(full) <= MAX_RANK or len(start) != len(full) or len(size) != len(full):
            raise InvalidArgumentError(
                f"{what}: full shape {list(full)[:8]}, offset {list(start)[:8]} and shape "
                f"{list(size)[:8]} must have one equal rank from 1 to {MAX_RANK}")
        if any(d < 0 for d in (*full, *start, *size)):
            raise InvalidArgumentError(f"{what}: negative size or offset in full shape "
                                       f"{list(full)[:8]}, offset {list(start)[:8]}, shape "
                                       f"{list(size)[:8]}")
        if math.prod(full) > MAX_ELEMENTS:
            raise InvalidArgumentError(f"{what}: full shape {list(full)[:8]} has more than "
                                       f"{MAX_ELEMENTS} elements")
        if any(s + n > d for s, n, d in zip(start, size, full, strict=True)):
            raise InvalidArgumentError(f"{what}: offset {list(start)[:8]} with shape "
                                       f"{list(size)[:8]} lies outside the full shape "
                                       f"{list(full)[:8]}")
        return cls(full_name, full, start, size)

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(start, length) per dimension."""
        return list(zip(self.offset, self.shape, strict=True))

    def describe(self) -> str:
        """The full name and TensorFlow's slice spec (``SaveSliceInfo.spec``):
        ``"emb 10 4 4,3:0,4"`` (full shape, then offset,length per dimension)."""
        axes = ":".join(f"{s},{n}" for s, n in self.bounds)
        return f"{self.full_name} {' '.join(map(str, self.full_shape))} {axes}"


@dataclass(frozen=True)
class Entry:
    """A checkpoint key and the variable saved under it; with ``slice``, the variable is
    that slice of tensor ``key`` (``slice.full_name == key``)."""

    key: str
    variable: str
    slice: SaveSlice | None = None


def overlaps(a: SaveSlice, b: SaveSlice) -> bool:
    """Whether two slices of one tensor share an element."""
    return all(s1 < s2 + n2 and s2 < s1 + n1 and n1 and n2
               for (s1, n1), (s2, n2) in zip(a.bounds, b.bounds, strict=True))


def check_disjoint(slices: Sequence[SaveSlice]) -> None:
    """Raises ``InvalidArgumentError`` unless ``slices`` (of one tensor) share one full shape
    and no element."""
    ordered = sorted(slices, key=lambda s: s.offset)
    for i, a in enumerate(ordered):
        if a.full_shape != ordered[0].full_shape:
            raise InvalidArgumentError(
                f"the parts of {clip(repr(a.full_name))} disagree on its full shape: "
                f"{list(ordered[0].full_shape)[:8]} and {list(a.full_shape)[:8]}")
        for b in ordered[i + 1:]:
            if overlaps(a, b):
                raise InvalidArgumentError(
                    f"the parts of {clip(repr(a.full_name))} at {list(a.offset)[:8]} and "
                    f"{list(b.offset)[:8]} overlap")


def covers(slices: Sequence[SaveSlice]) -> bool:
    """Whether disjoint ``slices`` cover their full tensor (exact integers)."""
    full = slices[0].full_shape
    return sum(math.prod(s.shape) for s in slices) == math.prod(full)


def entry_plan(entries: Iterable[Entry], disjoint: bool = True) -> list[Entry]:
    """``entries`` checked as a whole: a key that is no slice is listed once and never also
    sliced; with ``disjoint`` (a save) the slices of one key share no element.
    Raises ``InvalidArgumentError``."""
    whole: set[str] = set()
    sliced: dict[str, list[SaveSlice]] = {}
    out = []
    for entry in entries:
        if entry.slice is None:
            if entry.key in whole or entry.key in sliced:
                raise InvalidArgumentError(
                    f"checkpoint key {clip(repr(entry.key))} is listed twice")
            whole.add(entry.key)
        else:
            if entry.key in whole:
                raise InvalidArgumentError(
                    f"checkpoint key {clip(repr(entry.key))} is listed twice")
            sliced.setdefault(entry.key, []).append(entry.slice)
        out.append(entry)
    for slices in sliced.values() if disjoint else ():
        check_disjoint(slices)
    return out


def check_save(items: Sequence[tuple[str, str, tuple[int, ...], SaveSlice | None]],
               whole: bool) -> None:
    """Checks what a save writes, ``(key, variable, its shape, its slice)`` each: a key is one
    variable or the disjoint slices of one tensor, each slice of its variable's shape, and
    (``whole``: a checkpoint written by one server) the slices of a key cover the tensor,
    so that every reader can assemble it. Raises ``InvalidArgumentError``."""
    by_key: dict[str, list[tuple[str, tuple[int, ...], SaveSlice | None]]] = {}
    for key, name, shape, part in items:
        by_key.setdefault(key, []).append((name, shape, part))
    for key, group in by_key.items():
        names = [name for name, _, _ in group]
        if len(group) > 1 and any(part is None for _, _, part in group):
            raise InvalidArgumentError(
                f"checkpoint key {clip(repr(key))} would hold both variable "
                f"{clip(repr(names[0]))} and {clip(repr(names[1]))}: a key is one variable or "
                "the parts of one partitioned variable")
        parts = [part for _, _, part in group if part is not None]
        if not parts:
            continue
        for name, shape, part in group:
            assert part is not None
            if part.shape != shape:
                raise InvalidArgumentError(
                    f"variable {clip(repr(name))} has shape {list(shape)[:8]}, not the shape "
                    f"of its slice {clip(part.describe())}")
        check_disjoint(parts)
        if whole and not covers(parts):
            raise InvalidArgumentError(
                f"the parts saved under {clip(repr(key))} ({clip(', '.join(names))}) do not "
                f"cover its full shape {list(parts[0].full_shape)[:8]}: save every part")
