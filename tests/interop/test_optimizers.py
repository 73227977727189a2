"""Server-side optimizers: updates against numpy references and TensorFlow, slot names, errors."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import varstore as vs
from tests.extras import require
from varstore.errors import InvalidArgumentError, NotFoundError
from varstore.train import (
    AdagradOptimizer,
    AdamOptimizer,
    FtrlOptimizer,
    GradientDescentOptimizer,
    MomentumOptimizer,
    Optimizer,
    RMSPropOptimizer,
)

STEPS = 4
W0 = np.arange(12, dtype=np.float32).reshape(4, 3) / 10 - 0.5
E0 = np.arange(10, dtype=np.float32).reshape(5, 2) / 5 + 0.25


def _inputs(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step ``step``'s dense gradient of W and sparse gradient (indices, rows) of E; the
    sparse one repeats an index, whose rows must be summed."""
    rng = np.random.default_rng(step)
    grad_w = rng.normal(size=(4, 3)).astype(np.float32)
    indices = np.array([[1, 3, 1], [0, 4, 0], [2, 2, 3], [4, 1, 1]][step % 4])
    rows = rng.normal(size=(3, 2)).astype(np.float32)
    return grad_w, indices, rows


def _dense(indices: np.ndarray, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape)
    np.add.at(out, indices, rows)
    return out


# Textbook updates in float64: (variable, slots, dense gradient, touched rows or None, t).
def _gd(w: np.ndarray, s: list[np.ndarray], g: np.ndarray, rows: Any, t: int) -> None:
    w -= 0.1 * g


def _momentum(nesterov: bool) -> Callable[..., None]:
    def update(w: np.ndarray, s: list[np.ndarray], g: np.ndarray, rows: Any, t: int) -> None:
        sel = slice(None) if rows is None else rows
        s[0][sel] = 0.9 * s[0][sel] + g[sel]
        w[sel] -= 0.1 * (g[sel] + 0.9 * s[0][sel]) if nesterov else 0.1 * s[0][sel]
    return update


def _adagrad(w: np.ndarray, s: list[np.ndarray], g: np.ndarray, rows: Any, t: int) -> None:
    sel = slice(None) if rows is None else rows
    s[0][sel] += g[sel] ** 2
    w[sel] -= 0.1 * g[sel] / np.sqrt(s[0][sel])


def _adam(w: np.ndarray, s: list[np.ndarray], g: np.ndarray, rows: Any, t: int) -> None:
    # TF1's sparse Adam decays both moments of every row, so one formula serves both.
    s[0][:] = 0.9 * s[0] + 0.1 * g
    s[1][:] = 0.999 * s[1] + 0.001 * g * g
    lr_t = 0.1 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    w -= lr_t * s[0] / (np.sqrt(s[1]) + 1e-8)


def _rms_prop(centered: bool) -> Callable[..., None]:
    # Slots: ms, [mg,] mom; rho 0.9, momentum 0.5, epsilon 1e-3.
    def update(w: np.ndarray, s: list[np.ndarray], g: np.ndarray, rows: Any, t: int) -> None:
        sel = slice(None) if rows is None else rows
        ms, mom = s[0], s[-1]
        ms[sel] = 0.9 * ms[sel] + 0.1 * g[sel] ** 2
        denom = ms[sel] + 1e-3
        if centered:
            s[1][sel] = 0.9 * s[1][sel] + 0.1 * g[sel]
            denom = denom - s[1][sel] ** 2
        mom[sel] = 0.5 * mom[sel] + 0.1 * g[sel] / np.sqrt(denom)
        w[sel] -= mom[sel]
    return update


def _ftrl(shrinkage: float) -> Callable[..., None]:
    # FTRL-Proximal (McMahan et al. 2013) with lr 0.1, l1 0.01, l2 0.02: z and n per
    # coordinate, and l2_shrinkage added to the gradient in z only (TF's ApplyFtrlV2).
    def update(w: np.ndarray, s: list[np.ndarray], g: np.ndarray, rows: Any, t: int) -> None:
        sel = slice(None) if rows is None else rows
        n, z = s
        g_z = g[sel] + 2 * shrinkage * w[sel]
        n_new = n[sel] + g[sel] ** 2
        z[sel] += g_z - (np.sqrt(n_new) - np.sqrt(n[sel])) / 0.1 * w[sel]
        n[sel] = n_new
        w[sel] = np.where(np.abs(z[sel]) > 0.01,
                          (np.sign(z[sel]) * 0.01 - z[sel]) / (np.sqrt(n_new) / 0.1 + 0.04),
                          0.0)
    return update


# name: (optimizer, [(slot suffix, initial value)], numpy reference update).
CASES: dict[str, tuple[Callable[[], Optimizer], list[tuple[str, float]],
                       Callable[..., None]]] = {
    "gd": (lambda: GradientDescentOptimizer(0.1), [], _gd),
    "momentum": (lambda: MomentumOptimizer(0.1, 0.9), [("Momentum", 0.0)], _momentum(False)),
    "nesterov": (lambda: MomentumOptimizer(0.1, 0.9, use_nesterov=True), [("Momentum", 0.0)],
                 _momentum(True)),
    "adagrad": (lambda: AdagradOptimizer(0.1, initial_accumulator_value=0.2),
                [("Adagrad", 0.2)], _adagrad),
    "adam": (lambda: AdamOptimizer(0.1), [("Adam", 0.0), ("Adam_1", 0.0)], _adam),
    "rmsprop": (lambda: RMSPropOptimizer(0.1, momentum=0.5, epsilon=1e-3),
                [("RMSProp", 1.0), ("RMSProp_1", 0.0)], _rms_prop(False)),
    "rmsprop_centered": (lambda: RMSPropOptimizer(0.1, momentum=0.5, epsilon=1e-3,
                                                  centered=True),
                         [("RMSProp", 1.0), ("RMSProp_1", 0.0), ("RMSProp_2", 0.0)],
                         _rms_prop(True)),
    "ftrl": (lambda: FtrlOptimizer(0.1, l1_regularization_strength=0.01,
                                   l2_regularization_strength=0.02),
             [("Ftrl", 0.1), ("Ftrl_1", 0.0)], _ftrl(0.0)),
    "ftrl_shrinkage": (lambda: FtrlOptimizer(0.1, l1_regularization_strength=0.01,
                                             l2_regularization_strength=0.02,
                                             l2_shrinkage_regularization_strength=0.03),
                       [("Ftrl", 0.1), ("Ftrl_1", 0.0)], _ftrl(0.03)),
}


def _train(client: vs.Client, optimizer: Optimizer) -> tuple[vs.RemoteVariable, ...]:
    with client.variable_scope("net"):
        w = client.get_variable("W", initializer=W0)
        e = client.get_variable("E", initializer=E0)
    step = vs.train.get_or_create_global_step(client)
    for t in range(STEPS):
        grad_w, indices, rows = _inputs(t)
        assert client.apply_gradients(optimizer, {w: grad_w, e: (indices, rows)},
                                      global_step=step) == t + 1
    return w, e, step


@pytest.mark.parametrize("case", list(CASES))
def test_updates_match_numpy_reference(client: vs.Client, case: str) -> None:
    make, slots, update = CASES[case]
    w, e, step = _train(client, make())
    want_w, want_e = W0.astype(np.float64), E0.astype(np.float64)
    suffixes = [suffix for suffix, _ in slots]
    slots_w = [np.full(W0.shape, fill) for _, fill in slots]
    slots_e = [np.full(E0.shape, fill) for _, fill in slots]
    for t in range(STEPS):
        grad_w, indices, rows = _inputs(t)
        update(want_w, slots_w, grad_w.astype(np.float64), None, t + 1)
        update(want_e, slots_e, _dense(indices, rows, E0.shape), np.unique(indices), t + 1)
    np.testing.assert_allclose(w.numpy(), want_w, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(e.numpy(), want_e, rtol=2e-5, atol=1e-6)
    with client.variable_scope("net", reuse=True):
        for suffix, want in zip(suffixes, slots_w, strict=True):
            got = client.get_variable(f"W/{suffix}").numpy()
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
        for suffix, want in zip(suffixes, slots_e, strict=True):
            got = client.get_variable(f"E/{suffix}").numpy()
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    assert step.numpy() == STEPS


def test_slot_and_non_slot_variables_have_tensorflows_names(client: vs.Client) -> None:
    with client.variable_scope("layer"):
        w = client.get_variable("W", [2, 3])
    b = client.get_variable("b", [3], initializer=vs.zeros_initializer)
    with client.name_scope("train"):
        client.apply_gradients(AdamOptimizer(), {w: np.ones((2, 3)), b: np.ones(3)})
    client.apply_gradients(MomentumOptimizer(0.1, 0.5, name="Mom"), {w: np.ones((2, 3))})
    infos = {v.name: v for v in client.list_variables()}
    assert sorted(infos) == [
        "b", "b/Adam", "b/Adam_1", "layer/W", "layer/W/Adam", "layer/W/Adam_1",
        "layer/W/Mom", "train/beta1_power", "train/beta2_power"]
    assert [infos[n].trainable for n in ("layer/W", "layer/W/Adam", "train/beta1_power")] == \
        [True, False, False]
    assert infos["train/beta1_power"].shape == () and infos["layer/W/Adam"].shape == (2, 3)
    with client.variable_scope("train", reuse=True):
        beta1_power = client.get_variable("beta1_power", ())
    np.testing.assert_allclose(beta1_power.numpy(), 0.9 ** 2)


def test_beta_powers_advance_once_per_step_and_keep_their_scope(client: vs.Client) -> None:
    a = client.get_variable("a", [2])
    c = client.get_variable("c", [2])
    opt = AdamOptimizer(0.01, beta1=0.5, beta2=0.25)
    client.apply_gradients(opt, {a: np.ones(2), c: np.ones(2)})
    with client.name_scope("elsewhere"):
        client.apply_gradients(opt, {a: np.ones(2)})
    with client.variable_scope("", reuse=True):
        p1 = client.get_variable("beta1_power", ())
        p2 = client.get_variable("beta2_power", ())
    np.testing.assert_allclose(client.pull([p1, p2]), [0.5 ** 3, 0.25 ** 3])


def test_apply_without_global_step_returns_none(client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.ones(3, np.float32))
    assert client.apply_gradients(GradientDescentOptimizer(0.5), {w: [1.0, 2.0, 4.0]}) is None
    np.testing.assert_array_equal(w.numpy(), [0.5, 0.0, -1.0])


def test_slots_are_declared_once_and_again_after_the_server_lost_them(
        client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.zeros(2, np.float32))
    opt = AdamOptimizer(0.1)
    client.apply_gradients(opt, {w: [1.0, 1.0]})
    b = vs.request.RequestBuilder()
    opt.build(b, [(w, b.const(np.ones(2, np.float32), vs.float32))])
    assert b.specs == []
    client.delete(["w/Adam", "beta1_power"])
    with pytest.raises(NotFoundError, match="beta1_power does not exist"):
        client.apply_gradients(opt, {w: [1.0, 1.0]})
    client.apply_gradients(opt, {w: [1.0, 1.0]})
    assert [v.name for v in client.list_variables()] == [
        "beta1_power", "beta2_power", "w", "w/Adam", "w/Adam_1"]
    with client.variable_scope("", reuse=True):
        np.testing.assert_allclose(client.get_variable("w/Adam", [2]).numpy(), [0.1, 0.1],
                                   rtol=1e-6)


def test_float64_variables_update_in_float64(client: vs.Client) -> None:
    w = client.get_variable("w", [2], dtype=vs.float64, initializer=vs.ones_initializer)
    client.apply_gradients(AdagradOptimizer(1e-9), {w: np.array([1e-3, 1.0])})
    with client.variable_scope("", reuse=True):
        accum = client.get_variable("w/Adagrad", [2], dtype=vs.float64)
    assert accum.dtype == vs.float64
    np.testing.assert_array_equal(accum.numpy(), [0.1 + 1e-6, 1.1])
    np.testing.assert_array_equal(w.numpy(), 1.0 - 1e-9 * np.array([1e-3, 1.0])
                                  / np.sqrt([0.1 + 1e-6, 1.1]))


def test_bad_gradients_are_refused_and_change_nothing(client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.zeros((3, 2), np.float32))
    step = vs.train.get_or_create_global_step(client)
    opt = MomentumOptimizer(0.1, 0.9)
    with pytest.raises(ValueError, match=r"^Gradient of w has shape \(2, 3\), the variable "
                       r"\(3, 2\)$"):
        client.apply_gradients(opt, {w: np.ones((2, 3))}, global_step=step)
    with pytest.raises(ValueError, match=r"Gradient values of w have shape \(2, 3\), expected "
                       r"\(2, 2\)"):
        client.apply_gradients(opt, {w: (np.array([0, 1]), np.ones((2, 3)))})
    with pytest.raises(ValueError, match="1-D integer array"):
        client.apply_gradients(opt, {w: (np.array([0.5]), np.ones((1, 2)))})
    with pytest.raises(InvalidArgumentError, match=r"sparse_apply_momentum w: index 7 is not "
                       r"in \[0, 3\)"):
        client.apply_gradients(opt, {w: (np.array([0, 7]), np.ones((2, 2)))}, global_step=step)
    with pytest.raises(ValueError, match="No gradients provided"):
        client.apply_gradients(opt, {})
    counter = client.Variable(0, name="counter")
    with pytest.raises(InvalidArgumentError, match="needs a floating-point variable, got int32"):
        client.apply_gradients(GradientDescentOptimizer(1.0), {counter: 1})
    missing = vs.RemoteVariable(client, "missing", vs.float32, (2,))
    with pytest.raises(NotFoundError, match="Variable missing does not exist"):
        client.apply_gradients(opt, {missing: np.ones(2)})
    np.testing.assert_array_equal(w.numpy(), np.zeros((3, 2)))
    assert step.numpy() == 0
    assert [v.name for v in client.list_variables()] == ["counter", "global_step", "w"]


def test_crafted_requests_get_clear_errors(client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.zeros(2, np.float32))
    b = vs.request.RequestBuilder()
    ref = b.node("ref", variable="w")
    b.fetch(ref)
    with pytest.raises(InvalidArgumentError, match="ref w is a variable reference"):
        client.run(b)
    b = vs.request.RequestBuilder()
    lr = b.const(np.float32(0.1), vs.float32)
    grad = b.const(np.ones(2, np.float32), vs.float32)
    b.target(b.node("apply_momentum", [lr, lr, grad, lr], variable="w"))
    with pytest.raises(InvalidArgumentError, match="slot inputs must be ref nodes"):
        client.run(b)
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0])


def _tensorflow(tf1: Any, case: str) -> Any:
    return {
        "gd": lambda: tf1.train.GradientDescentOptimizer(0.1),
        "momentum": lambda: tf1.train.MomentumOptimizer(0.1, 0.9),
        "nesterov": lambda: tf1.train.MomentumOptimizer(0.1, 0.9, use_nesterov=True),
        "adagrad": lambda: tf1.train.AdagradOptimizer(0.1, initial_accumulator_value=0.2),
        "adam": lambda: tf1.train.AdamOptimizer(0.1),
        "rmsprop": lambda: tf1.train.RMSPropOptimizer(0.1, momentum=0.5, epsilon=1e-3),
        "rmsprop_centered": lambda: tf1.train.RMSPropOptimizer(0.1, momentum=0.5,
                                                               epsilon=1e-3, centered=True),
        "ftrl": lambda: tf1.train.FtrlOptimizer(0.1, l1_regularization_strength=0.01,
                                                l2_regularization_strength=0.02),
        "ftrl_shrinkage": lambda: tf1.train.FtrlOptimizer(
            0.1, l1_regularization_strength=0.01, l2_regularization_strength=0.02,
            l2_shrinkage_regularization_strength=0.03),
    }[case]()


def _graph_run(tf: Any, tf1: Any, case: str, session: Callable[[Any], Any]
               ) -> tuple[str, dict[str, np.ndarray]]:
    """Trains the model in TF 1.x graph mode (``tf``: TensorFlow or varstore, ``tf1``: its
    compat.v1 module); returns the train op's name and every global variable's value, in
    the order of ``global_variables()``."""
    graph = tf.Graph()
    with graph.as_default():
        with tf1.variable_scope("net"):
            w = tf1.get_variable("W", initializer=W0)
            e = tf1.get_variable("E", initializer=E0)
        step = tf1.train.get_or_create_global_step()
        grad_w = tf1.placeholder(tf.float32, W0.shape)
        indices = tf1.placeholder(tf.int64, [3])
        rows = tf1.placeholder(tf.float32, [3, 2])
        sparse = tf.IndexedSlices(rows, indices, tf.constant(E0.shape, tf.int64))
        train_op = _tensorflow(tf1, case).apply_gradients([(grad_w, w), (sparse, e)],
                                                          global_step=step)
        variables = {v.op.name: v for v in tf1.global_variables()}
        with session(graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for t in range(STEPS):
                gw, idx, r = _inputs(t)
                sess.run(train_op, {grad_w: gw, indices: idx, rows: r})
            return train_op.name, sess.run(variables)


def _tensorflow_run(case: str) -> tuple[str, dict[str, np.ndarray]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = require("tensorflow")
    return _graph_run(tf, tf.compat.v1, case, lambda g: tf.compat.v1.Session(graph=g))


@pytest.mark.tensorflow
@pytest.mark.parametrize("case", list(CASES))
def test_updates_match_tensorflow(client: vs.Client, case: str) -> None:
    _, expected = _tensorflow_run(case)
    _train(client, CASES[case][0]())
    names = [v.name for v in client.list_variables()]
    assert sorted(names) == sorted(expected)
    with client.variable_scope("", reuse=vs.AUTO_REUSE):
        got = client.pull([client.get_variable(n, np.shape(expected[n]),
                                               dtype=np.asarray(expected[n]).dtype)
                           for n in names])
    for name, value in zip(names, got, strict=True):
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.tensorflow
@pytest.mark.parametrize("case", list(CASES))
def test_graph_mode_optimizers_match_tensorflow(address: str, case: str) -> None:
    import varstore.v1 as vtf
    expected_op, expected = _tensorflow_run(case)
    train_op, got = _graph_run(vtf, vtf, case, lambda g: vtf.Session(address, graph=g))
    assert train_op == expected_op
    assert list(got) == list(expected)
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_graph_mode_slots_and_errors(address: str) -> None:
    import varstore.v1 as tf
    graph = tf.Graph()
    with graph.as_default():
        w = tf.Variable(np.ones(3, np.float32), name="w")
        b = tf.Variable(np.ones(2, np.float32), name="b")
        opt = tf.train.MomentumOptimizer(0.5, 0.9)
        with tf.name_scope("train"):
            op = opt.apply_gradients([(tf.constant([1.0, 2.0, 3.0]), w), (None, b)])
        assert opt.get_slot_names() == ["momentum"]
        slot = opt.get_slot(w, "momentum")
        assert slot is not None and slot.name == "w/Momentum:0"
        assert opt.get_slot(b, "momentum") is None
        assert op.name == "train/Momentum"
        with pytest.raises(NotImplementedError, match="compute them yourself"):
            opt.minimize(w)
        with pytest.raises(ValueError, match=r"^No gradients provided for any variable: "):
            opt.apply_gradients([(None, w)])
        with pytest.raises(TypeError, match="Input 'grad' of 'ApplyMomentum' Op has type "
                                            "float64 that does not match type float32"):
            opt.apply_gradients([(tf.constant(np.ones(3)), w)])
        with pytest.raises(ValueError, match="Dimension 0 in both shapes must be equal"):
            opt.apply_gradients([(tf.constant([1.0, 2.0]), w)])
        with tf.Session(address) as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(op)
            sess.run(op)
            np.testing.assert_allclose(sess.run(w), 1 - 0.5 * (1 + 1.9) * np.array([1, 2, 3]),
                                       rtol=1e-6)
            np.testing.assert_array_equal(sess.run(b), [1.0, 1.0])


@pytest.mark.tensorflow
@pytest.mark.parametrize("case", ["momentum", "adagrad", "adam", "rmsprop_centered", "ftrl"])
def test_checkpoint_keys_match_what_tensorflow_writes(server: Any, client: vs.Client,
                                                      tmp_path: Any, case: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = require("tensorflow")
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        with tf1.variable_scope("net"):
            w = tf1.get_variable("W", initializer=W0)
            e = tf1.get_variable("E", initializer=E0)
        step = tf1.train.get_or_create_global_step()
        grad_w, indices, rows = _inputs(0)
        train_op = _tensorflow(tf1, case).apply_gradients(
            [(tf.constant(grad_w), w),
             (tf.IndexedSlices(tf.constant(rows), tf.constant(indices, tf.int64),
                               tf.constant(E0.shape, tf.int64)), e)], global_step=step)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(train_op)
            tf_path = tf1.train.Saver().save(sess, str(tmp_path / "tf" / "model.ckpt"),
                                             global_step=step)
    with client.variable_scope("net"):
        ours = [client.get_variable("W", initializer=W0), client.get_variable("E", initializer=E0)]
    global_step = vs.train.get_or_create_global_step(client)
    client.apply_gradients(CASES[case][0](), {ours[0]: grad_w, ours[1]: (indices, rows)},
                           global_step=global_step)
    path = client.save("model.ckpt", global_step=int(global_step.numpy()))
    expected = tf.train.load_checkpoint(tf_path)
    got = tf.train.load_checkpoint(str(server.checkpoints.directory / path))
    assert got.get_variable_to_dtype_map() == expected.get_variable_to_dtype_map()
    assert got.get_variable_to_shape_map() == expected.get_variable_to_shape_map()
    for key in expected.get_variable_to_shape_map():
        np.testing.assert_allclose(got.get_tensor(key), expected.get_tensor(key), rtol=1e-6,
                                   atol=1e-7, err_msg=key)


def test_a_constraint_tensorflow_applies_is_refused(tf: Any) -> None:
    """TF 1.x's optimizers project a variable with its constraint after each dense update;
    varstore.v1's cannot, so apply_gradients raises instead of dropping it."""
    import varstore.v1 as vtf
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        v = v1.Variable([1.0, -1.0], constraint=lambda x: v1.clip_by_value(x, 0.0, 0.5))
        step = v1.train.GradientDescentOptimizer(1.0).apply_gradients([([0.0, -2.0], v)])
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            sess.run(step)
            assert sess.run(v).tolist() == [0.5, 0.5]
    with vtf.Graph().as_default():
        w = vtf.Variable([1.0, -1.0], name="w", constraint=lambda x: x)
        with pytest.raises(NotImplementedError, match=r"^apply_gradients: w has a constraint"):
            vtf.train.GradientDescentOptimizer(1.0).apply_gradients([([0.0, -2.0], w)])
