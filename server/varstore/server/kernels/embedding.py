"""Embedding lookups in a partitioned variable, as TensorFlow's ``embedding_ops.py``:
``embedding_lookup(params, ids)`` with ``params`` the parts of one variable split along axis 0.

Each id belongs to one part by the ``partition_strategy``:

- ``"mod"`` (TF's default): part ``id % n``, row ``id // n`` of it;
- ``"div"``: ids are split in contiguous runs, the first ``total % n`` parts one row longer
  (as ``fixed_size_partitioner`` makes them): part ``max(id // (q + 1), (id - r) // q)``, row
  ``id % (q + 1)`` there when the part is one of the first ``r``, else ``(id - r) % q``, with
  ``q, r = divmod(total, n)``.

The lookup is one ``partition_gather`` node per part (it reads only the rows of its part's
variable that the ids ask for) and one ``partition_stitch`` that puts the rows back in the
ids' order, clipping each to ``max_norm`` when set (TF's ``clip_by_norm`` of the row).
Attributes: ``strategy`` ("mod" or "div"), ``parts`` (each part's row count, a shape),
``part`` (this node's part index), ``max_norm`` (a float; 0 for none).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import InvalidArgumentError
from varstore.server.kernels.base import Context, NodeDef, OpDef

# At most this many parts (as a cluster's shard count bounds placement).
MAX_PARTS = 1 << 16


def _layout(node: NodeDef) -> tuple[str, list[int]]:
    """The node's strategy and part sizes, checked."""
    strategy = node.attr("strategy", "mod")
    if strategy not in ("mod", "div"):
        raise InvalidArgumentError(f"{node.op}: partition_strategy must be 'mod' or 'div', "
                                   f"got {str(strategy)[:40]!r}")
    sizes = [int(d) for d in node.attr("parts", ())]
    if not 1 <= len(sizes) <= MAX_PARTS or any(d < 0 for d in sizes):
        raise InvalidArgumentError(f"{node.op}: needs 1 to {MAX_PARTS} part sizes of 0 or more")
    return strategy, sizes


def assign(ids: Any, strategy: str, sizes: list[int], what: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(part, row)`` of every id (flattened), by ``strategy`` over parts of ``sizes`` rows.
    Raises ``InvalidArgumentError`` for non-integer ids and for an id whose part or row does
    not exist (TF: "indices[i] = ... is not in [0, ...)"), in exact integer arithmetic."""
    idx = np.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what}: ids must be integers, got {idx.dtype}")
    flat = idx.reshape(-1).astype(np.int64)
    n = len(sizes)
    if strategy == "mod":
        part, row = flat % n, flat // n
    else:
        q, r = divmod(sum(sizes), n)
        part = (np.maximum(flat // (q + 1), (flat - r) // q) if q
                else flat // (q + 1))
        row = np.where(part < r, flat % (q + 1), (flat - r) % q if q else 0)
    bad = (part < 0) | (part >= n)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgumentError(f"{what}: ids[{i}] = {int(flat[i])} is not in "
                                   f"[0, {sum(sizes)})")
    limits = np.asarray(sizes, np.int64)[part]
    bad = (row < 0) | (row >= limits)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgumentError(f"{what}: ids[{i}] = {int(flat[i])} is row {int(row[i])} of "
                                   f"part {int(part[i])}, not in [0, {int(limits[i])})")
    return part, row


def _partition_gather(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """The rows of this node's part (its variable, or input 0 when it names none) that the
    ids of the last input ask for, in the ids' order."""
    strategy, sizes = _layout(node)
    index = int(node.attr("part", -1))
    if not 0 <= index < len(sizes):
        raise InvalidArgumentError(f"{node.op}: part {index} is not in [0, {len(sizes)})")
    if len(inputs) != (1 if node.variable else 2):
        raise InvalidArgumentError(f"{node.op}: takes a part and the ids")
    params = ctx.variable(node).read() if node.variable else np.asarray(inputs[0])
    if params.ndim < 1 or params.shape[0] != sizes[index]:
        raise InvalidArgumentError(
            f"{node.op}: part {index} has shape {list(params.shape)}, not "
            f"{sizes[index]} rows")
    part, row = assign(inputs[-1], strategy, sizes, "embedding_lookup")
    rows = row[part == index].astype(np.intp)
    ctx.check_alloc((len(rows), *params.shape[1:]), dtypes.as_dtype(params.dtype))
    return params[rows]


def _partition_stitch(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """Input 0's ids' rows, from inputs 1..n (each part's rows in the ids' order), shaped
    ``ids.shape + row shape``; each row clipped to norm ``max_norm`` when set."""
    strategy, sizes = _layout(node)
    if len(inputs) != len(sizes) + 1:
        raise InvalidArgumentError(f"{node.op}: takes the ids and one input per part")
    ids = np.asarray(inputs[0])
    part, _ = assign(ids, strategy, sizes, "embedding_lookup")
    gathered = [np.asarray(x) for x in inputs[1:]]
    first = gathered[0]
    for p, rows in enumerate(gathered):
        if rows.dtype != first.dtype or rows.shape[1:] != first.shape[1:] or rows.ndim < 1:
            raise InvalidArgumentError(f"{node.op}: the parts' rows differ in dtype or shape")
        if rows.shape[0] != int(np.count_nonzero(part == p)):
            raise InvalidArgumentError(f"{node.op}: part {p} gave {rows.shape[0]} rows for "
                                       f"{int(np.count_nonzero(part == p))} ids")
    shape = (*ids.shape, *first.shape[1:])
    ctx.check_alloc(shape, dtypes.as_dtype(first.dtype))
    out = np.empty((part.size, *first.shape[1:]), first.dtype)
    for p, rows in enumerate(gathered):
        out[part == p] = rows
    max_norm = float(node.attr("max_norm", 0.0))
    if max_norm > 0 and out.size and out.dtype.kind == "f":
        # TF's clip_by_norm, operation for operation in the rows' dtype:
        # t * clip / max(sqrt(sum(t * t)), clip).
        clip = np.asarray(max_norm, out.dtype)
        squares = np.sum(out * out, axis=tuple(range(1, out.ndim)), keepdims=True)
        norms = np.sqrt(squares)
        out = (out * clip) / np.maximum(norms, clip)
    return out.reshape(shape)


OPS = {
    "partition_gather": OpDef(_partition_gather, None),
    "partition_stitch": OpDef(_partition_stitch, None),
}
