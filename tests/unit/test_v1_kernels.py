"""The server kernels graph mode adds (stack, boolean_mask, read_if_initialized), without a
network."""

from __future__ import annotations

import numpy as np
import pytest

from varstore import dtypes
from varstore.errors import InvalidArgumentError
from varstore.server.executor import Executor, Graph, VariableSpec
from varstore.server.kernels import NodeDef
from varstore.server.store import VariableStore


def run(ex: Executor, nodes: list[NodeDef], tensors: list[np.ndarray],
        variables: list[VariableSpec] | None = None) -> np.ndarray:
    result = ex.run(Graph(variables=variables or [], nodes=nodes, tensors=tensors,
                          fetches=[len(nodes) - 1]))
    value = result.values[0]
    assert isinstance(value, np.ndarray)
    return value


def test_stack_packs_along_an_axis() -> None:
    ex = Executor(VariableStore())
    a, b = np.array([1, 2], np.int32), np.array([3, 4], np.int32)
    consts = [NodeDef("const", tensor=0), NodeDef("const", tensor=1)]
    assert run(ex, [*consts, NodeDef("stack", (0, 1))], [a, b]).tolist() == [[1, 2], [3, 4]]
    assert run(ex, [*consts, NodeDef("stack", (0, 1), attrs={"axis": 1})],
               [a, b]).tolist() == [[1, 3], [2, 4]]
    with pytest.raises(InvalidArgumentError, match="different shapes"):
        run(ex, [*consts, NodeDef("stack", (0, 1))], [a, np.array([1], np.int32)])
    with pytest.raises(InvalidArgumentError, match="different dtypes int32 and float32"):
        run(ex, [*consts, NodeDef("stack", (0, 1))], [a, np.zeros(2, np.float32)])
    with pytest.raises(InvalidArgumentError, match="at least one input"):
        run(ex, [NodeDef("stack")], [])


def test_boolean_mask_keeps_rows_where_true() -> None:
    ex = Executor(VariableStore())
    names = np.array([b"a", b"b", b"c"], dtype=object)
    nodes = [NodeDef("const", tensor=0), NodeDef("const", tensor=1),
             NodeDef("boolean_mask", (0, 1))]
    assert run(ex, nodes, [names, np.array([True, False, True])]).tolist() == [b"a", b"c"]
    assert run(ex, nodes, [names, np.zeros(3, bool)]).tolist() == []
    with pytest.raises(InvalidArgumentError, match="mask must be bool"):
        run(ex, nodes, [names, np.ones(3, np.int32)])
    with pytest.raises(InvalidArgumentError, match=r"mask of shape \[2\] does not match"):
        run(ex, nodes, [names, np.ones(2, bool)])


def test_read_if_initialized_falls_back_to_its_input() -> None:
    store = VariableStore()
    ex = Executor(store)
    spec = VariableSpec("v", dtypes.float32, (2,))
    nodes = [NodeDef("const", tensor=0), NodeDef("read_if_initialized", (0,), variable="v")]
    initial = np.array([1, 2], np.float32)
    assert run(ex, nodes, [initial], [spec]).tolist() == [1, 2]
    assert not store.get("v").initialized
    store.set_value(store.get("v"), np.array([5, 6], np.float32))
    out = run(ex, nodes, [initial], [spec])
    assert out.tolist() == [5, 6]
    out[0] = 0
    assert store.get("v").read().tolist() == [5, 6]
