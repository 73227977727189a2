"""Updates of the wrong shape or type are refused whole, by the server itself too: a
hand-built request never broadcasts a delta, never adds to a bool or string variable; push
and apply_gradients convert values by TensorFlow's rules before anything is sent."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import varstore as vs
from varstore.common import dtypes
from varstore.errors import InvalidArgumentError
from varstore.request import RequestBuilder


def _update(client: vs.Client, op: str, name: str, *inputs: Any) -> None:
    b = RequestBuilder()
    nodes = [b.const(np.asarray(x), dtypes.as_dtype(np.asarray(x).dtype)) for x in inputs]
    b.target(b.node(op, nodes, variable=name))
    client.run(b)


def _versions(client: vs.Client) -> list[int]:
    return [i.version for i in client.list_variables()]


@pytest.mark.parametrize("op", ["assign_add", "assign_sub"])
@pytest.mark.parametrize("delta", [np.float32(1), np.ones(3, np.float32),
                                   np.ones((1, 3), np.float32)])
def test_the_server_never_broadcasts_a_delta(client: vs.Client, op: str,
                                             delta: np.ndarray) -> None:
    w = client.Variable(np.zeros((2, 3), np.float32), name="w")
    with pytest.raises(InvalidArgumentError,
                       match=rf"{op} w: Cannot update variable with shape \[2, 3\] using a "
                             rf"Tensor with shape \[[0-9, ]*\], shapes must be equal"):
        _update(client, op, "w", delta)
    assert w.numpy().tolist() == [[0, 0, 0], [0, 0, 0]]
    assert _versions(client) == [0]


@pytest.mark.parametrize("op, value", [
    ("assign_add", np.array([True, False])),
    ("assign_sub", np.array([True, False])),
    ("scatter_add", None),
])
def test_the_server_adds_to_no_bool_variable(client: vs.Client, op: str, value: Any) -> None:
    flags = client.Variable(np.array([False, True]), name="flags")
    inputs = (value,) if value is not None else (np.array([0]), np.array([True]))
    with pytest.raises(InvalidArgumentError, match="no kernel adds to a bool variable"):
        _update(client, op, "flags", *inputs)
    assert flags.numpy().tolist() == [False, True]


def test_the_server_adds_to_no_string_variable(client: vs.Client) -> None:
    s = client.Variable(np.array([b"a"], dtype=object), name="s")
    with pytest.raises(InvalidArgumentError, match="no kernel adds to a string variable"):
        _update(client, "assign_add", "s", np.array([b"b"], dtype=object))
    assert s.numpy().tolist() == [b"a"]


def test_the_server_refuses_scatter_updates_of_another_row_shape(client: vs.Client) -> None:
    e = client.Variable(np.zeros((4, 3), np.float32), name="e")
    with pytest.raises(InvalidArgumentError, match=r"updates have shape \[2, 2\], expected "
                                                   r"\[2, 3\]"):
        _update(client, "scatter_update", "e", np.array([0, 1]), np.ones((2, 2), np.float32))
    assert e.numpy().sum() == 0


def test_eager_updates_refuse_what_tensorflow_refuses(client: vs.Client) -> None:
    w = client.Variable(np.zeros((784, 100), np.float32), name="W")
    with pytest.raises(InvalidArgumentError, match=r"^Cannot update variable with shape "
                                                   r"\[784,100\] using a Tensor with shape "
                                                   r"\[100\], shapes must be equal\.$"):
        w.assign_add(np.arange(100, dtype=np.float32))
    counter = client.Variable(5, name="counter")
    for delta in (0.5, 1.9, [1.0]):
        with pytest.raises(TypeError, match="Expected int32, but got"):
            counter.assign_add(delta)
    assert counter.numpy() == 5 and w.numpy().sum() == 0
    assert _versions(client) == [0, 0]


def test_push_converts_every_value_before_sending(client: vs.Client) -> None:
    a = client.Variable(np.zeros(2, np.float32), name="a")
    n = client.Variable(np.zeros(2, np.int32), name="n")
    with pytest.raises(TypeError, match=r"Expected int32, but got 0\.5 of type 'float'"):
        client.push({a: [1.0, 2.0], n: [0.5, 1]})
    with pytest.raises(ValueError, match="None"):
        client.push({a: None})
    assert _versions(client) == [0, 0]
    client.push({a: np.array([1.5, 2.5]), n: np.array([1.9, 2.1])})  # numpy values are cast
    assert [v.tolist() for v in client.pull([a, n])] == [[1.5, 2.5], [1, 2]]


def test_gradients_are_converted_and_never_broadcast(client: vs.Client) -> None:
    w = client.Variable(np.zeros((2, 2), np.float32), name="w")
    b = client.Variable(np.float32(0), name="b")
    opt = vs.train.GradientDescentOptimizer(1.0)
    with pytest.raises(ValueError, match=r"Gradient of w has shape \(2,\)"):
        client.apply_gradients(opt, {w: np.ones(2)})
    with pytest.raises(ValueError, match="None"):
        client.apply_gradients(opt, {b: None})
    with pytest.raises(TypeError, match="Expected float32, but got 'x'"):
        client.apply_gradients(opt, {b: "x"})
    assert _versions(client) == [0, 0]
    client.apply_gradients(opt, {w: np.ones((2, 2)), b: 1})
    assert [v.tolist() for v in client.pull([w, b])] == [[[-1, -1], [-1, -1]], -1]
