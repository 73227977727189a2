"""The store and executor without a network."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from varstore import dtypes
from varstore.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from varstore.server.executor import Executor, Graph, VariableSpec
from varstore.server.kernels import NodeDef
from varstore.server.store import VariableStore


def make(max_memory: int = 0) -> tuple[VariableStore, Executor]:
    store = VariableStore(max_memory=max_memory)
    return store, Executor(store)


def create(ex: Executor, name: str, value: np.ndarray) -> None:
    dtype = dtypes.as_dtype(value.dtype)
    ex.run(Graph(variables=[VariableSpec(name, dtype, value.shape, initializer=0)],
                 nodes=[NodeDef("const", tensor=0)], tensors=[value]))


def run(ex: Executor, nodes: list[NodeDef], tensors: list[np.ndarray], fetches: list[int]):
    return ex.run(Graph(nodes=nodes, tensors=tensors, fetches=fetches)).values


def test_create_initializes_and_binding_keeps_value() -> None:
    store, ex = make()
    create(ex, "w", np.arange(6, dtype=np.float32).reshape(2, 3))
    create(ex, "w", np.zeros((2, 3), np.float32))
    assert store.get("w").read().tolist() == [[0, 1, 2], [3, 4, 5]]
    assert store.get("w").version == 0


def test_binding_with_other_shape_or_dtype_is_rejected() -> None:
    _, ex = make()
    create(ex, "w", np.zeros((2, 3), np.float32))
    with pytest.raises(InvalidArgumentError, match="Trying to share variable w"):
        create(ex, "w", np.zeros((3,), np.float32))
    with pytest.raises(InvalidArgumentError):
        create(ex, "w", np.zeros((2, 3), np.int32))


def test_assign_of_counter_plus_one() -> None:
    store, ex = make()
    create(ex, "c", np.array(0, np.int32))
    nodes = [NodeDef("read", variable="c"), NodeDef("const", tensor=0),
             NodeDef("add", (0, 1)), NodeDef("assign", (2,), variable="c")]
    for _ in range(3):
        out = run(ex, nodes, [np.array(1, np.int32)], [3])
    assert out[0] == 3 and store.get("c").version == 3


def test_fetched_value_is_a_snapshot_not_a_view() -> None:
    store, ex = make()
    create(ex, "v", np.zeros(4, np.float32))
    (snap,) = run(ex, [NodeDef("read", variable="v")], [], [0])
    run(ex, [NodeDef("const", tensor=0), NodeDef("assign_add", (0,), variable="v")],
        [np.ones(4, np.float32)], [1])
    assert snap.tolist() == [0, 0, 0, 0]
    assert store.get("v").read().tolist() == [1, 1, 1, 1]


def test_uninitialized_read_fails() -> None:
    _, ex = make()
    ex.run(Graph(variables=[VariableSpec("u", dtypes.float32, (2,))]))
    with pytest.raises(FailedPreconditionError, match="uninitialized value u"):
        run(ex, [NodeDef("read", variable="u")], [], [0])


def test_scatter_and_gather() -> None:
    store, ex = make()
    create(ex, "e", np.zeros((5, 2), np.float32))
    idx = np.array([1, 1, 4])
    upd = np.ones((3, 2), np.float32)
    run(ex, [NodeDef("const", tensor=0), NodeDef("const", tensor=1),
             NodeDef("scatter_add", (0, 1), variable="e")], [idx, upd], [2])
    (rows,) = run(ex, [NodeDef("const", tensor=0), NodeDef("gather", (0,), variable="e")],
                  [np.array([1, 4, 0])], [1])
    assert rows.tolist() == [[2, 2], [1, 1], [0, 0]]
    with pytest.raises(InvalidArgumentError, match="index 5 is not in"):
        run(ex, [NodeDef("const", tensor=0), NodeDef("gather", (0,), variable="e")],
            [np.array([5])], [1])


@pytest.mark.parametrize("op, ufunc", [("scatter_add", np.add.at),
                                        ("scatter_sub", np.subtract.at)])
@pytest.mark.parametrize("idx, updates", [
    (np.array([3, 0, 3, 7, 3, 0]), np.arange(12, dtype=np.int64).reshape(6, 2)),  # 3 thrice
    (np.array([[2, 2], [5, 2]]), np.arange(8, dtype=np.int64).reshape(2, 2, 2)),  # 2-D indices
    (np.array([4, 4, 1]), np.int64(5)),  # one scalar for every row
    (np.array([], dtype=np.int64), np.zeros((0, 2), np.int64)),
])
def test_scatter_accumulates_every_repeated_index(op: str, ufunc: np.ufunc, idx: np.ndarray,
                                                  updates: np.ndarray) -> None:
    store, ex = make()
    start = np.arange(16, dtype=np.int64).reshape(8, 2)
    create(ex, "e", start)
    run(ex, [NodeDef("const", tensor=0), NodeDef("const", tensor=1),
             NodeDef(op, (0, 1), variable="e")], [idx, updates], [2])
    expected = start.copy()
    ufunc(expected, idx, updates)
    (value,) = run(ex, [NodeDef("read", variable="e")], [], [0])
    assert value.tolist() == expected.tolist()


@pytest.mark.parametrize("nodes, message", [
    ([NodeDef("bogus")], "unknown op"),
    ([NodeDef("add", (0, 1))], "not an earlier node"),
    ([NodeDef("add", (0,))], "takes 2 inputs"),
    ([NodeDef("read")], "needs a variable"),
    ([NodeDef("read", variable="bad name")], "invalid variable name"),
    ([NodeDef("zeros", attrs={"shape": [-1], "dtype": 1})], "negative dimension"),
])
def test_malformed_graphs_are_rejected(nodes: list[NodeDef], message: str) -> None:
    _, ex = make()
    with pytest.raises(InvalidArgumentError, match=message):
        run(ex, nodes, [], [0])


def test_missing_variable_is_not_found() -> None:
    _, ex = make()
    with pytest.raises(NotFoundError, match="nothere"):
        run(ex, [NodeDef("read", variable="nothere")], [], [0])


def test_memory_limit_creates_nothing_of_a_failed_request() -> None:
    store, ex = make(max_memory=1000)
    specs = [VariableSpec("a", dtypes.float32, (100,)), VariableSpec("b", dtypes.float32, (200,))]
    with pytest.raises(ResourceExhaustedError, match="memory limit"):
        ex.run(Graph(variables=specs))
    assert len(store) == 0


def test_huge_initializer_is_refused_before_allocation() -> None:
    _, ex = make(max_memory=1 << 20)
    with pytest.raises(ResourceExhaustedError):
        run(ex, [NodeDef("zeros", attrs={"shape": [1 << 40], "dtype": 1})], [], [0])


def test_parallel_updates_lose_nothing() -> None:
    store, ex = make()
    create(ex, "c", np.array(0, np.int64))
    nodes = [NodeDef("const", tensor=0), NodeDef("assign_add", (0,), variable="c")]

    def work() -> None:
        for _ in range(200):
            ex.run(Graph(nodes=nodes, tensors=[np.array(1, np.int64)], targets=[1]))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(store.get("c").read()) == 1600


def test_seeded_initializers_are_reproducible_and_truncated() -> None:
    _, ex = make()
    node = NodeDef("truncated_normal", attrs={"shape": [1000], "dtype": 1, "seed": 7,
                                               "stddev": 2.0})
    a, b = run(ex, [node, node], [], [0, 1])
    assert np.array_equal(a, b)
    assert a.dtype == np.float32 and np.abs(a).max() <= 4.0
    (g,) = run(ex, [NodeDef("glorot_uniform", attrs={"shape": [30, 20], "dtype": 1})], [], [0])
    assert np.abs(g).max() <= np.sqrt(6 / 50)


def test_a_failed_request_changes_nothing() -> None:
    store, ex = make()
    create(ex, "a", np.zeros(3, np.float32))
    create(ex, "b", np.zeros((2, 2), np.float32))
    create(ex, "s", np.array([b"x"], dtype=object))
    nodes = [
        NodeDef("const", tensor=0), NodeDef("assign_add", (0,), variable="a"),
        NodeDef("const", tensor=1), NodeDef("assign", (2,), variable="b"),
        NodeDef("const", tensor=2), NodeDef("assign", (4,), variable="s"),
        NodeDef("const", tensor=3), NodeDef("const", tensor=4),
        NodeDef("scatter_add", (6, 7), variable="b"),
    ]
    tensors = [np.ones(3, np.float32), np.ones((2, 2), np.float32),
               np.array([b"longer value"], dtype=object), np.array([7]),
               np.ones((1, 2), np.float32)]
    specs = [VariableSpec("new", dtypes.float32, (3,), initializer=0)]
    stored = store.bytes_stored()
    with pytest.raises(InvalidArgumentError, match="index 7 is not in"):
        ex.run(Graph(variables=specs, nodes=nodes, tensors=tensors,
                     targets=[1, 3, 5, 8]))
    assert store.find("new") is None
    assert store.get("a").read().tolist() == [0, 0, 0]
    assert store.get("b").read().tolist() == [[0, 0], [0, 0]]
    assert store.get("s").read().tolist() == [b"x"]
    assert [store.get(n).version for n in "abs"] == [0, 0, 0]
    assert store.bytes_stored() == stored


def test_float_math_follows_ieee_and_integer_division_by_zero_fails() -> None:
    _, ex = make()
    x = np.array([-1.0, 0.0, 1000.0], np.float32)
    log, exp, div = run(ex, [NodeDef("const", tensor=0), NodeDef("log", (0,)),
                             NodeDef("exp", (0,)), NodeDef("const", tensor=1),
                             NodeDef("div", (0, 3))],
                        [x, np.zeros(3, np.float32)], [1, 2, 4])
    assert np.isnan(log[0]) and log[1] == -np.inf and exp[2] == np.inf
    assert np.isinf(div[0]) and np.isnan(div[1])
    with pytest.raises(InvalidArgumentError, match="Integer division by zero"):
        run(ex, [NodeDef("const", tensor=0), NodeDef("const", tensor=1),
                 NodeDef("floordiv", (0, 1))], [np.array([4, 2]), np.array([2, 0])], [2])
