"""``varstore.v1`` sessions against a real server: round trips, fetches, feeds, sharing."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as tf


@pytest.fixture(autouse=True)
def fresh_graph() -> Iterator[tf.Graph]:
    """Each test builds its own default graph."""
    graph = tf.Graph()
    with graph.as_default():
        yield graph


class CountingSession:
    """A session whose client counts its requests (``client.run`` calls)."""

    def __init__(self, address: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.session = tf.Session(address)
        self.calls = 0
        run = self.session.client.run

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return run(*args, **kwargs)
        monkeypatch.setattr(self.session.client, "run", counted)


def test_each_run_is_one_round_trip_whatever_it_fetches(address: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tf.Variable(0, name="counter")
    w = tf.get_variable("w", [3, 2], initializer=tf.ones_initializer)
    x = tf.placeholder(tf.float32, [None, 3])
    y = tf.nn.relu(tf.matmul(x, w) - 1.0)
    increment = tf.assign(counter, counter + 1)
    init = tf.global_variables_initializer()
    counting = CountingSession(address, monkeypatch)
    with counting.session as sess:
        assert counting.calls == 0
        sess.run(init)
        assert counting.calls == 1
        out = sess.run({"y": [y, (w, counter)], "ops": (increment.op, init), "inc": increment},
                       feed_dict={x: np.ones((4, 3))})
        assert counting.calls == 2
        assert out["y"][0].tolist() == [[2, 2]] * 4
        counter.eval()
        increment.op.run()
        assert counting.calls == 4
        z = tf.Variable(5, name="late")
        sess.run([z.initializer, counter])
        assert counting.calls == 5
        sess.bind_variables()
        assert counting.calls == 5
        assert sess.run(z) == 5


def test_runs_are_evaluated_on_the_server_in_one_request(address: str) -> None:
    """The assign and the read it depends on travel together: another session's updates
    between two runs are seen, never lost."""
    counter = tf.Variable(0, name="counter")
    increment = tf.assign(counter, counter + 1)
    with tf.Session(address) as a, tf.Session(address) as b:
        a.run(counter.initializer)
        for _ in range(5):
            a.run(increment)
            b.run(increment)
        assert a.run(counter) == 10 and b.run(counter) == 10


def test_nested_fetches_keep_their_structure(address: str) -> None:
    pair = collections.namedtuple("pair", ["left", "right"])
    v = tf.Variable([1.0, 2.0], name="v")
    c = tf.constant(3)
    with tf.Session(address) as sess:
        sess.run(v.initializer)
        out = sess.run([v, (c, [v.initializer]), pair(c, {"k": v}),
                        collections.OrderedDict([("b", c), ("a", v)]), "v:0", "v/Assign"])
    assert isinstance(out, list) and isinstance(out[1], tuple) and isinstance(out[2], pair)
    assert isinstance(out[3], collections.OrderedDict) and list(out[3]) == ["b", "a"]
    assert out[0].tolist() == [1.0, 2.0] and out[1][0] == 3 and out[1][1] == [None]
    assert out[2].left == 3 and out[2].right["k"].tolist() == [1.0, 2.0]
    assert out[4].tolist() == [1.0, 2.0] and out[5] is None


def test_fetched_values_have_tensorflow_types(address: str) -> None:
    c = tf.Variable(0, name="c")
    with tf.Session(address) as sess:
        sess.run(c.initializer)
        values = sess.run([c + 1, tf.constant(2.5), tf.constant(2 ** 40), tf.constant("s"),
                           tf.constant([1, 2]), c / 2, tf.constant([True])])
    assert [type(v) for v in values[:4]] == [np.int32, np.float32, np.int64, bytes]
    assert values[4].dtype == np.int32 and values[5].dtype == np.float64
    assert values[3] == b"s" and values[6].dtype == np.bool_


def test_feeds_by_tensor_name_and_override(address: str) -> None:
    x = tf.placeholder(tf.int32, [2], name="x")
    y = x * 2
    z = y + 1
    with tf.Session(address) as sess:
        assert sess.run(z, {x: [1, 2]}).tolist() == [3, 5]
        assert sess.run(z, {"x:0": [3, 4]}).tolist() == [7, 9]
        assert sess.run(z, {y: [10, 10]}).tolist() == [11, 11]
        assert sess.run(x, {x: [5, 6]}).tolist() == [5, 6]
        with pytest.raises(TypeError, match="The value of a feed cannot be a tf.Tensor"):
            sess.run(z, {x: y})
        with pytest.raises(TypeError, match="Cannot interpret feed_dict key as Tensor"):
            sess.run(z, {"nothere:0": [1, 2]})
        with pytest.raises(ValueError, match=r"Cannot feed value of shape \(3,\) for Tensor "
                                             r"x:0, which has shape \(2,\)"):
            sess.run(z, {x: [1, 2, 3]})


def test_building_a_graph_contacts_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VARSTORE_ADDRESS", "127.0.0.1:1")
    with tf.variable_scope("layer"):
        w = tf.get_variable("W", [4, 2], initializer=tf.random_normal_initializer())
        b = tf.Variable(tf.zeros([2]), name="b")
    y = tf.matmul(tf.placeholder(tf.float32, [None, 4]), w) + b
    tf.global_variables_initializer()
    assert (w.name, b.name, y.name) == ("layer/W:0", "layer/b:0", "add:0")
    with pytest.raises(vs.errors.UnavailableError, match="127.0.0.1:1"):
        tf.Session(timeout=0.5)


def test_session_target_and_environment(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v = tf.Variable(7, name="v")
    monkeypatch.setenv("VARSTORE_ADDRESS", address)
    with tf.Session() as sess:
        sess.run(v.initializer)
    with tf.Session(f"grpc://{address}") as sess:
        assert sess.run(v) == 7
    with pytest.raises(RuntimeError, match="Attempted to use a closed Session."):
        sess.run(v)


def test_workers_share_variables_by_name(address: str) -> None:
    """A second graph (another worker) binds to the same server variables, sees what the first
    initialized, and is refused a variable of another shape."""
    with tf.Graph().as_default():
        w = tf.get_variable("w", [2], initializer=tf.ones_initializer)
        u = tf.get_variable("u", [2])
        with tf.Session(address) as sess:
            sess.run(w.initializer)
    with tf.Graph().as_default():
        w2 = tf.get_variable("w", [2], initializer=tf.zeros_initializer)
        u2 = tf.get_variable("u", [2])
        with tf.Session(address) as sess:
            assert sess.run(tf.report_uninitialized_variables()).tolist() == [b"u"]
            assert w2.eval().tolist() == [1.0, 1.0]
            with pytest.raises(tf.errors.FailedPreconditionError,
                               match="Attempting to use uninitialized value u"):
                u2.eval()
    assert u is not u2
    with tf.Graph().as_default():
        w3 = tf.get_variable("w", [3])
        with tf.Session(address) as sess:
            sess.run(tf.no_op())  # binds only what a run uses
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"Trying to share variable w, but specified dtype float32 "
                                     r"and shape \(3,\) and found dtype float32 and shape "
                                     r"\(2,\)\."):
                sess.run(w3)


def test_initialized_value_and_initializer_dependencies(address: str) -> None:
    w = tf.Variable(tf.constant([1.0, 2.0]), name="w")
    w2 = tf.Variable(w.initialized_value() * 2, name="w2")
    with tf.Session(address) as sess:
        sess.run(w2.initializer)
        assert sess.run(tf.report_uninitialized_variables()).tolist() == [b"w"]
        assert w2.eval().tolist() == [2.0, 4.0]
        sess.run(w.assign([5.0, 5.0]))
        sess.run(w2.initializer)
        assert w2.eval().tolist() == [10.0, 10.0]


def test_control_dependencies_and_group(address: str) -> None:
    a = tf.Variable(0, name="a")
    b = tf.Variable(0, name="b")
    with tf.control_dependencies([tf.assign_add(a, 1)]):
        bump_b = tf.assign_add(b, 10)
    both = tf.group(tf.assign_add(a, 100), bump_b)
    with tf.Session(address) as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(bump_b)
        assert sess.run([a, b]) == [1, 10]
        assert sess.run(both) is None
        assert sess.run([a, b]) == [102, 20]


def test_global_step_scatter_and_gather(address: str) -> None:
    step = tf.train.get_or_create_global_step()
    assert tf.train.get_or_create_global_step() is step
    assert step in tf.global_variables() and step not in tf.trainable_variables()
    table = tf.get_variable("table", [4, 2], initializer=tf.zeros_initializer)
    updates = [tf.scatter_add(table, [0, 0, 3], tf.ones([3, 2])),
               tf.scatter_sub(table, [1], [[1.0, 1.0]]),
               tf.scatter_update(table, [2], [[7.0, 8.0]])]
    with tf.Session(address) as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(tf.assign_add(step, 1))
        for op in updates:
            sess.run(op)
        assert sess.run(step) == 1 and isinstance(sess.run(step), np.int64)
        assert table.eval().tolist() == [[2, 2], [-1, -1], [7, 8], [1, 1]]
        assert sess.run(tf.gather(table, [2, 0])).tolist() == [[7, 8], [2, 2]]


def test_deep_graph_compiles_into_one_request(address: str) -> None:
    total = tf.constant(0)
    for _ in range(3000):
        total = total + 1
    with tf.Session(address) as sess:
        assert sess.run(total) == 3000


def test_graphs_have_their_own_names_and_reset(fresh_graph: tf.Graph) -> None:
    first = tf.Variable(1, name="v")
    other = tf.Graph()
    with other.as_default():
        assert tf.get_default_graph() is other
        assert tf.Variable(1, name="v").name == "v:0"
        with pytest.raises(AssertionError, match="Do not use tf.reset_default_graph"):
            tf.reset_default_graph()
    assert tf.get_default_graph() is fresh_graph
    assert tf.Variable(1, name="v").name == "v_1:0"
    assert fresh_graph.get_tensor_by_name("v:0") is first._as_graph_element()
    assert fresh_graph.get_operation_by_name("v") is first.op
    assert first.op.type == "VariableV2"
    with pytest.raises(KeyError, match="refers to an Operation not in the graph"):
        fresh_graph.get_operation_by_name("nothere")


def test_initializers_in_graph_mode(address: str) -> None:
    z = tf.zeros_initializer()([2, 2], dtype=tf.int32)
    c = tf.constant_initializer([1.0, 2.0])([2])
    lam = tf.get_variable("lam", [3], initializer=lambda shape, dtype: tf.ones(shape, dtype) * 4)
    from_fn = tf.Variable(lambda: tf.fill([2], 9), name="from_fn")
    glorot = tf.get_variable("glorot", [40, 60])
    ints = tf.get_variable("ints", [2], dtype=tf.int64)
    assert (z.name, c.name, z.dtype) == ("zeros:0", "Const:0", tf.int32)
    assert from_fn.initial_value.name == "from_fn/Initializer/Fill:0"
    with tf.Session(address) as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(z).tolist() == [[0, 0], [0, 0]] and sess.run(c).tolist() == [1.0, 2.0]
        assert lam.eval().tolist() == [4.0] * 3 and from_fn.eval().tolist() == [9, 9]
        g = glorot.eval()
        assert np.abs(g).max() <= np.sqrt(6 / 100) and g.std() > 0
        assert ints.eval().tolist() == [0, 0] and ints.dtype.base_dtype == tf.int64
    with vs.connect(address) as client:
        infos = {v.name: v for v in client.list_variables()}
    assert infos["lam"].created_by == "get_variable" and infos["from_fn"].created_by == "Variable"
    assert infos["glorot"].initializer.startswith("glorot_uniform_initializer")


def test_duplicate_op_names_are_refused() -> None:
    tf.constant(1, name="a")
    assert tf.constant(2, name="a").name == "a_1:0"
    with pytest.raises(ValueError, match="Duplicate node name in graph: 'a'"):
        tf.constant(3, name="a/")


def test_constant_with_a_shape(address: str) -> None:
    filled = tf.constant(1.5, shape=[2, 2])
    reshaped = tf.constant([1, 2, 3, 4], shape=[2, 2])
    with pytest.raises(ValueError, match=r"Cannot make a tensor of shape \(2, 2\) from 3 "
                                         r"elements"):
        tf.constant([1, 2, 3], shape=[2, 2])
    with tf.Session(address) as sess:
        assert sess.run(filled).tolist() == [[1.5, 1.5]] * 2
        assert sess.run(reshaped).tolist() == [[1, 2], [3, 4]]
