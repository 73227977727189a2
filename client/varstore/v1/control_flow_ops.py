"""Ops run for their effect: ``no_op``, ``group`` and control dependencies."""

from __future__ import annotations

import contextlib
from typing import Any

from varstore.v1.graph import Operation, Tensor, get_default_graph, op_scope


def no_op(name: str | None = None) -> Operation:
    """An operation that does nothing (runs its control dependencies)."""
    with op_scope(name, "NoOp") as (graph, op_name):
        return graph.create_op(op_name, "NoOp", "no_op")


def group(*inputs: Any, name: str | None = None) -> Operation:
    """An operation that runs all of ``inputs`` (operations or tensors)."""
    ops = [x.op if isinstance(x, Tensor) else x for x in inputs]
    with op_scope(name, "group_deps", ops) as (graph, op_name):
        with graph.control_dependencies(ops):
            return no_op(name=f"{op_name}/")


def control_dependencies(control_inputs: Any) -> contextlib.AbstractContextManager[None]:
    """Ops created inside the ``with`` block run after ``control_inputs`` (None: none)."""
    return get_default_graph().control_dependencies(control_inputs)
