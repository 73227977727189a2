"""``tf.nn.embedding_lookup`` over a variable, a tensor or the parts of a partitioned variable,
as TensorFlow's ``embedding_ops.py``; the server reads only the rows asked for
(:mod:`varstore.server.kernels.embedding` states the partition strategies)."""

from __future__ import annotations

from typing import Any

import numpy as np

from varstore.v1.array_ops import constant, convert_to_tensor, gather, identity
from varstore.v1.graph import Tensor, op_scope
from varstore.v1.shapes import TensorShape


def embedding_lookup(params: Any, ids: Any, partition_strategy: str = "mod",
                     name: str | None = None, validate_indices: bool = True,
                     max_norm: float | None = None) -> Tensor:
    """The rows ``ids`` of ``params``, shaped ``ids.shape + params.shape[1:]``.

    ``params`` is a variable or tensor, a list of them, or a ``PartitionedVariable``: its
    parts split along axis 0, each id assigned to a part by ``partition_strategy`` ("mod":
    part ``id % n``, TF's default; "div": contiguous runs), as TF's ``embedding_lookup``.
    ``max_norm`` clips each row to that L2 norm; ``validate_indices`` is accepted and, as in
    TF 1.15+, changes nothing. Raises ``ValueError`` for no params or an unknown strategy,
    ``TypeError`` for ids that are not integers; an id out of range fails the run with
    ``InvalidArgumentError``.
    """
    parts = list(params) if isinstance(params, (list, tuple)) or hasattr(
        params, "_get_variable_list") else [params]
    if not parts:
        raise ValueError("Length of params is currently 0. Need at least one param.")
    if partition_strategy not in ("mod", "div"):
        raise ValueError(f"Unrecognized partition strategy: {partition_strategy}."
                         "Must be one of either `mod` or `div`.")
    with op_scope(name, "embedding_lookup", [*parts, ids]) as (graph, op_name):
        idx = convert_to_tensor(ids, name="ids")
        if not idx.dtype.is_integer:
            raise TypeError(f"Value passed to parameter 'indices' has DataType "
                            f"{idx.dtype.name} not in list of allowed values: int16, int32, int64")
        if len(parts) == 1 and max_norm is None:
            return identity(gather(parts[0], idx))
        refs = [convert_to_tensor(p, as_ref=True, name="params") for p in parts]
        sizes = [r.shape.dims[0] if r.shape.dims else None for r in refs]
        if any(d is None for d in sizes):
            raise ValueError("embedding_lookup of several params needs each one's first "
                             "dimension known")
        attrs = {"strategy": partition_strategy}
        part_sizes = constant(np.asarray(sizes, np.int64), name="part_sizes")
        rows = refs[0].shape.dims[1:] if refs[0].shape.dims is not None else None
        gathered = []
        for p, ref in enumerate(refs):
            variable = ref.op.name if ref.op.type == "VariableV2" else ""
            with op_scope(None, "GatherV2", [ref, idx]) as (_, gather_name):
                gathered.append(graph.create_op(
                    gather_name, "GatherV2", "partition_gather", [ref, part_sizes, idx],
                    ref.dtype.base_dtype, TensorShape(None if rows is None else [None, *rows]),
                    variable=variable, attrs={**attrs, "part": p}).outputs[0])
        shape = TensorShape(None if rows is None or idx.shape.dims is None
                            else idx.shape.dims + rows)
        with op_scope(None, "DynamicStitch", [idx, *gathered]) as (_, stitch_name):
            return graph.create_op(
                stitch_name, "DynamicStitch", "partition_stitch", [idx, part_sizes, *gathered],
                refs[0].dtype.base_dtype, shape,
                attrs={**attrs, "max_norm": float(max_norm or 0.0)}).outputs[0]
