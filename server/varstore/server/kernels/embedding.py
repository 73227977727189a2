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
Attributes: ``strategy`` ("mod" or "div"), ``part`` (a gather's part index), ``max_norm`` (a
float; 0 for none). Each part's row count comes as an int64 input (a list of sizes, not a
shape: any number of parts up to :data:`MAX_PARTS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.errors import InvalidArgumentError
from varstore.server.kernels.base import Context, NodeDef, OpDef

# At most this many parts (as a cluster's shard count bounds placement).
MAX_PARTS = 1 << 16
# Int64 arrays the size of the ids that assign() holds at once (a copy, parts, rows, masks).
_SCRATCH = 6


def _layout(node: NodeDef, sizes_input: Any) -> tuple[str, list[int]]:
    """The node's strategy and the part sizes of its int64 ``sizes`` input, checked with
    exact integers (1 to MAX_PARTS sizes of 0 or more, their sum below 2**62)."""
    strategy = node.attr("strategy", "mod")
    if strategy not in ("mod", "div"):
        raise InvalidArgumentError(f"{node.op}: partition_strategy must be 'mod' or 'div', "
                                   f"got {str(strategy)[:40]!r}")
    array = np.asarray(sizes_input)
    if array.dtype.kind not in "iu" or array.ndim != 1 or not 1 <= array.size <= MAX_PARTS:
        raise InvalidArgumentError(f"{node.op}: the part sizes must be 1 to {MAX_PARTS} "
                                   "integers")
    sizes = [int(d) for d in array.tolist()]
    if any(d < 0 for d in sizes) or sum(sizes) >= 1 << 62:
        raise InvalidArgumentError(f"{node.op}: part sizes must be 0 or more, summing to less "
                                   "than 2**62")
    return strategy, sizes


def assign(ctx: Context, ids: Any, strategy: str, sizes: list[int], what: str
           ) -> tuple[np.ndarray, np.ndarray]:
    """``(part, row)`` of every id (flattened), by ``strategy`` over parts of ``sizes`` rows,
    its scratch charged to the request's budget first. Raises ``InvalidArgumentError`` for
    non-integer ids and for an id whose part or row does not exist (TF: "indices[i] = ... is
    not in [0, ...)"), in exact integer arithmetic."""
    idx = np.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what}: ids must be integers, got {idx.dtype}")
    if idx.dtype == np.uint64 and idx.size and int(idx.max()) >= 1 << 63:
        raise InvalidArgumentError(f"{what}: id {int(idx.max())} is not in [0, {sum(sizes)})")
    ctx.check_alloc((idx.size * _SCRATCH,), dtypes.int64)
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
    """The rows of this node's part (its variable, or the first input when it names none)
    that the ids (last input) ask for, in the ids' order; the part sizes come before the
    ids."""
    if len(inputs) != (2 if node.variable else 3):
        raise InvalidArgumentError(f"{node.op}: takes a part, the part sizes and the ids")
    strategy, sizes = _layout(node, inputs[-2])
    index = int(node.attr("part", -1))
    if not 0 <= index < len(sizes):
        raise InvalidArgumentError(f"{node.op}: part {index} is not in [0, {len(sizes)})")
    params = ctx.variable(node).read() if node.variable else np.asarray(inputs[0])
    if params.ndim < 1 or params.shape[0] != sizes[index]:
        raise InvalidArgumentError(
            f"{node.op}: part {index} has shape {list(params.shape)}, not "
            f"{sizes[index]} rows")
    part, row = assign(ctx, inputs[-1], strategy, sizes, "embedding_lookup")
    rows = row[part == index].astype(np.intp)
    ctx.check_alloc((len(rows), *params.shape[1:]), dtypes.as_dtype(params.dtype))
    return params[rows]


def _partition_stitch(ctx: Context, node: NodeDef, inputs: list[Any]) -> np.ndarray:
    """The ids' (input 0) rows, from inputs 2.. (each part's rows in the ids' order; input 1
    the part sizes), shaped ``ids.shape + row shape``; each row clipped to norm
    ``max_norm`` when set."""
    if len(inputs) < 3:
        raise InvalidArgumentError(f"{node.op}: takes the ids, the part sizes and the rows")
    strategy, sizes = _layout(node, inputs[1])
    if len(inputs) != len(sizes) + 2:
        raise InvalidArgumentError(f"{node.op}: takes the ids and one input per part")
    ids = np.asarray(inputs[0])
    part, _ = assign(ctx, ids, strategy, sizes, "embedding_lookup")
    gathered = [np.asarray(x) for x in inputs[2:]]
    first = gathered[0]
    counts = np.bincount(part, minlength=len(sizes))
    for p, rows in enumerate(gathered):
        if rows.ndim < 1 or rows.dtype != first.dtype or rows.shape[1:] != first.shape[1:]:
            raise InvalidArgumentError(f"{node.op}: the parts' rows differ in dtype or shape")
        if rows.shape[0] != int(counts[p]):
            raise InvalidArgumentError(f"{node.op}: part {p} gave {rows.shape[0]} rows for "
                                       f"{int(counts[p])} ids")
    shape = (*ids.shape, *first.shape[1:])
    # The ids in part order (stable: each part's own order), the joined rows, the result;
    # max_norm's temporaries are as large as the result, twice.
    ctx.check_alloc((part.size,), dtypes.int64)
    ctx.check_alloc(shape, dtypes.as_dtype(first.dtype))
    ctx.check_alloc(shape, dtypes.as_dtype(first.dtype))
    order = np.argsort(part, kind="stable")
    out = np.empty((part.size, *first.shape[1:]), first.dtype)
    if part.size:
        out[order] = np.concatenate(gathered)
    max_norm = float(node.attr("max_norm", 0.0))
    if max_norm > 0 and out.size and out.dtype.kind == "f":
        ctx.check_alloc(shape, dtypes.as_dtype(first.dtype))
        ctx.check_alloc(shape, dtypes.as_dtype(first.dtype))
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
