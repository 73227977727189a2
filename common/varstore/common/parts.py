"""Partitioned variables as one variable: which deletions the server and the cluster client
refuse because they would leave a partitioned variable incomplete."""

from __future__ import annotations

from collections.abc import Iterable

from varstore.common.errors import InvalidArgumentError, clip

__all__ = ["check_whole_parts"]


def check_whole_parts(deleted: Iterable[str], held: Iterable[tuple[str, str | None]]) -> None:
    """Raises ``InvalidArgumentError`` when ``deleted`` names some parts of a partitioned
    variable among ``held`` (name, full name of the variable it is a part of, or None) but
    not all of them. A checkpoint stores a partitioned variable as one tensor whose slices
    must cover it (TensorFlow's ``Saver``), and TensorFlow has no way to remove one part of a
    ``PartitionedVariable``: a lone part gone would make every later save fail."""
    going = set(deleted)
    parts: dict[str, list[str]] = {}
    for name, full in held:
        if full is not None:
            parts.setdefault(full, []).append(name)
    for full, names in sorted(parts.items()):
        kept = sorted(n for n in names if n not in going)
        if kept and len(kept) < len(names):
            gone = sorted(n for n in names if n in going)
            raise InvalidArgumentError(
                f"cannot delete {clip(gone[0])}{' and more' if len(gone) > 1 else ''} "
                f"alone: it is a part of the partitioned variable {clip(repr(full))}, whose "
                f"part {clip(kept[0])}{' and more' if len(kept) > 1 else ''} would stay and "
                "no checkpoint could hold it; delete every part, or the variable by its name "
                f"{clip(repr(full))}")
