"""varstore.tensorflow: real tf.compat.v1 programs train with their variables on the server.

Each test runs the same TensorFlow program twice, plainly and with the optimizer wrapped, and
compares what users see: variable values, the server's checkpoint against TensorFlow's
``Saver``, predictions of a plain graph restored from the server's checkpoint.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
from tests.extras import require

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = require("tensorflow")
tf1 = tf.compat.v1
vst = require("varstore.tensorflow")

pytestmark = pytest.mark.tensorflow

STEPS = 6
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _dense(x: Any, units: int, name: str, activation: Any = None) -> Any:
    with tf1.variable_scope(name):
        kernel = tf1.get_variable("kernel", [x.shape[1], units],
                                  initializer=tf1.glorot_uniform_initializer(seed=1))
        bias = tf1.get_variable("bias", [units], initializer=tf1.zeros_initializer())
    out = tf.matmul(x, kernel) + bias
    return activation(out) if activation else out


def _batch_norm(x: Any, name: str) -> Any:
    """Batch normalization as ``tf1.layers.batch_normalization`` builds it in training (Keras 3
    removed ``tf1.layers``): trainable ``gamma``, ``beta``; non-trainable moving statistics
    updated by ops in ``UPDATE_OPS``, as TensorFlow's ``assign_moving_average`` (momentum
    0.99)."""
    with tf1.variable_scope(name):
        gamma = tf1.get_variable("gamma", [x.shape[1]], initializer=tf1.ones_initializer())
        beta = tf1.get_variable("beta", [x.shape[1]], initializer=tf1.zeros_initializer())
        moving = [tf1.get_variable(n, [x.shape[1]], initializer=init, trainable=False)
                  for n, init in (("moving_mean", tf1.zeros_initializer()),
                                  ("moving_variance", tf1.ones_initializer()))]
    mean, variance = tf.nn.moments(x, [0])
    for var, value in zip(moving, (mean, variance), strict=True):
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS,
                              tf1.assign_sub(var, (var - value) * 0.01))
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-3)


class Model:
    """A small classifier with an embedding (sparse gradients) and two dense layers; with
    ``norm``, batch normalization after the first, its ``UPDATE_OPS`` run before the train
    op as TensorFlow documents."""

    def __init__(self, make_optimizer: Callable[[], Any] | None, wrap: bool,
                 address: str | None = None, norm: bool = False, **wrap_args: Any) -> None:
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf1.placeholder(tf.float32, [None, 4], name="x")
            self.ids = tf1.placeholder(tf.int64, [None], name="ids")
            self.y = tf1.placeholder(tf.int64, [None], name="y")
            emb = tf1.get_variable("emb", [10, 4],
                                   initializer=tf1.random_normal_initializer(seed=3))
            hidden = _dense(self.x + tf.nn.embedding_lookup(emb, self.ids), 8, "dense",
                            tf.nn.relu)
            if norm:
                hidden = _batch_norm(hidden, "norm")
            self.logits = _dense(hidden, 3, "out")
            loss = tf1.losses.sparse_softmax_cross_entropy(self.y, self.logits)
            self.global_step = tf1.train.get_or_create_global_step()
            self.train_op = None
            if make_optimizer is not None:
                opt = make_optimizer()
                if wrap:
                    opt = vst.DistributedOptimizer(opt, client=address, **wrap_args)
                with tf1.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
                    self.train_op = opt.minimize(loss, global_step=self.global_step)

    def feeds(self, step: int) -> dict[Any, np.ndarray]:
        """Step ``step``'s minibatch; ids repeat, so sparse rows must be summed."""
        rng = np.random.default_rng(step)
        return {self.x: rng.normal(size=(6, 4)).astype(np.float32),
                self.ids: np.array([1, 3, 1, 7, 3, 1]) + step % 2,
                self.y: rng.integers(0, 3, 6)}

    def trainable(self, sess: Any) -> dict[str, np.ndarray]:
        with self.graph.as_default():
            return sess.run({v.op.name: v for v in tf1.trainable_variables()})


def _train(model: Model, hooks: list[Any], steps: range) -> dict[str, np.ndarray]:
    with model.graph.as_default():
        with tf1.train.MonitoredTrainingSession(hooks=hooks) as sess:
            for t in steps:
                sess.run(model.train_op, model.feeds(t))
            values = model.trainable(sess)
            values["global_step"] = sess.run(model.global_step)
            return values


def _plain(make_optimizer: Callable[[], Any], norm: bool = False
           ) -> tuple[dict[str, np.ndarray], Any]:
    """Trains without varstore; returns every global variable's value by name, and the
    model."""
    model = Model(make_optimizer, wrap=False, norm=norm)
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for t in range(STEPS):
            sess.run(model.train_op, model.feeds(t))
        every = sess.run({v.op.name: v for v in tf1.global_variables()})
    return every, model


def _pulled(client: vs.Client, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The server's values of the variables named in ``like``, of their dtypes and shapes."""
    names = sorted(like)
    handles = [vs.RemoteVariable(client, n, vs.as_dtype(like[n].dtype.name), like[n].shape)
               for n in names]
    return dict(zip(names, client.pull(handles), strict=True))


OPTIMIZERS = {
    "adam": lambda: tf1.train.AdamOptimizer(0.01),
    "momentum": lambda: tf1.train.MomentumOptimizer(0.05, 0.9, use_nesterov=True),
    "rmsprop": lambda: tf1.train.RMSPropOptimizer(0.01, momentum=0.5, centered=True),
    "ftrl": lambda: tf1.train.FtrlOptimizer(0.1, l1_regularization_strength=0.001),
}


@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_one_worker_trains_as_tensorflow_and_the_server_holds_what_saver_writes(
        address: str, client: vs.Client, case: str) -> None:
    expected, _ = _plain(OPTIMIZERS[case])
    model = Model(OPTIMIZERS[case], wrap=True, address=address)
    got = _train(model, [vst.SyncHook(client=address)], range(STEPS))
    assert got["global_step"] == STEPS
    names = sorted(v.name for v in client.list_variables())
    assert names == sorted(expected)
    values = _pulled(client, expected)
    for name, value in expected.items():
        np.testing.assert_allclose(values[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
        if name in got:
            np.testing.assert_array_equal(got[name], values[name], err_msg=name)


def test_an_optimizer_the_server_does_not_run_pushes_its_changes(address: str,
                                                                  client: vs.Client) -> None:
    def make() -> Any:
        return tf1.train.ProximalAdagradOptimizer(0.1, l1_regularization_strength=0.01)
    expected, _ = _plain(make)
    model = Model(make, wrap=True, address=address)
    # The five trained variables, their accumulators (mirrored) and the global step.
    assert len(model.graph.get_collection("varstore_variables")) == 11
    got = _train(model, [vst.SyncHook(client=address)], range(STEPS))
    names = sorted(v.name for v in client.list_variables())
    assert names == sorted(expected)
    assert "dense/kernel/ProximalAdagrad" in names
    on_server = _pulled(client, expected)
    for name, value in expected.items():
        np.testing.assert_allclose(on_server[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
        if name in got:
            np.testing.assert_array_equal(got[name], on_server[name], err_msg=name)
    assert got["global_step"] == STEPS


def test_two_workers_train_and_the_checkpoint_restores_into_plain_tensorflow(
        server: Any, address: str, client: vs.Client) -> None:
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    started = threading.Event()

    def worker(task: int) -> None:
        try:
            model = Model(OPTIMIZERS["adam"], wrap=True, address=address)
            hooks = [vst.SyncHook(client=address, is_chief=task == 0, timeout=120),
                     tf1.train.StopAtStepHook(last_step=4 * STEPS)]
            with model.graph.as_default():
                with tf1.train.MonitoredTrainingSession(hooks=hooks) as sess:
                    started.set()
                    t = task
                    while not sess.should_stop():
                        sess.run(model.train_op, model.feeds(t))
                        t += 2
                    results[task] = t // 2
        except BaseException as e:
            errors.append(e)
            started.set()

    # The worker starts first and waits on the server for the chief.
    threads = [threading.Thread(target=worker, args=(task,)) for task in (1, 0)]
    threads[0].start()
    threads[1].start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert sum(results.values()) >= 4 * STEPS
    step = vs.train.get_or_create_global_step(client)
    path = client.save("model.ckpt", global_step=int(step.numpy()))
    assert path == f"model.ckpt-{int(step.numpy())}"

    # A worker that joins now (no chief) gets the server's values; a plain graph restores
    # the server's checkpoint with TensorFlow's Saver: both predict the same.
    joined = Model(None, wrap=True)
    feeds = joined.feeds(99)
    with joined.graph.as_default():
        hook = vst.SyncHook(client=address, is_chief=False,
                            var_list=tf1.trainable_variables())
        with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
            from_server = sess.run(joined.logits, feeds)
    plain = Model(None, wrap=False)
    with plain.graph.as_default(), tf1.Session() as sess:
        tf1.train.Saver().restore(sess, str(server.checkpoints.directory / path))
        restored = sess.run(plain.logits, {plain.x: feeds[joined.x],
                                           plain.ids: feeds[joined.ids]})
        assert sess.run(plain.global_step) == int(step.numpy())
    np.testing.assert_array_equal(restored, from_server)


def test_synchronous_workers_apply_the_mean_of_their_gradients_once_per_step(
        address: str) -> None:
    def make() -> Any:
        return tf1.train.GradientDescentOptimizer(0.1)

    # Two replicas' minibatches of equal size: their mean gradient is the gradient of both.
    both = Model(make, wrap=False)
    with both.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for t in range(STEPS):
            feeds = [both.feeds(2 * t + i) for i in (0, 1)]
            sess.run(both.train_op, {k: np.concatenate([f[k] for f in feeds])
                                     for k in feeds[0]})
        expected = both.trainable(sess)
    seen: dict[int, list[int]] = {}
    results: dict[int, dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(task: int) -> None:
        try:
            model = Model(make, wrap=True, address=address, replicas_to_aggregate=2,
                          timeout=120)
            hook = vst.SyncHook(client=address, is_chief=task == 0, timeout=120)
            with model.graph.as_default():
                with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
                    seen[task] = []
                    for t in range(STEPS):
                        sess.run(model.train_op, model.feeds(2 * t + task))
                        seen[task].append(int(sess.run(model.global_step)))
                    results[task] = model.trainable(sess)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(task,)) for task in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    assert seen == {0: list(range(1, STEPS + 1)), 1: list(range(1, STEPS + 1))}
    for got in results.values():
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_model_of_another_shape_is_refused(address: str, client: vs.Client) -> None:
    client.get_variable("emb", [3, 3])
    model = Model(OPTIMIZERS["adam"], wrap=True, address=address)
    with pytest.raises(vs.errors.InvalidArgumentError, match="emb"):
        _train(model, [vst.SyncHook(client=address)], range(1))


def test_distributed_optimizer_refuses_what_it_cannot_wrap() -> None:
    with pytest.raises(TypeError, match="wraps a tf.compat.v1.train or Keras optimizer, not "
                                        "str"):
        vst.DistributedOptimizer("adam")
    with pytest.raises(ValueError, match="synchronous training needs an optimizer the server "
                                         "runs, not ProximalAdagradOptimizer"):
        vst.DistributedOptimizer(tf1.train.ProximalAdagradOptimizer(0.1),
                                 replicas_to_aggregate=2)


def test_the_tf1_example_trains_with_two_worker_processes(tmp_path: Path) -> None:
    require("sklearn")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "tf1_mnist_style.py"), "--workers", "2", "--steps",
         "400", "--log-every", "1000", "--checkpoint-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^worker 0: final step (\d+)  test accuracy ([\d.]+)$", result.stdout,
                      re.M)
    assert match, result.stdout
    step, accuracy = int(match.group(1)), float(match.group(2))
    assert step >= 400 and accuracy >= 0.9, result.stdout
    assert re.search(r"^worker 1: done after \d+ steps, global step \d+$", result.stdout, re.M)
    reader = tf.train.load_checkpoint(str(tmp_path / f"model.ckpt-{step}"))
    assert reader.get_variable_to_shape_map() == {
        "global_step": [], "beta1_power": [], "beta2_power": [],
        **{f"{layer}/{kind}{slot}": shape
           for layer, shapes in (("hidden", ([64, 64], [64])), ("softmax", ([64, 10], [10])))
           for kind, shape in zip(("weights", "biases"), shapes, strict=True)
           for slot in ("", "/Adam", "/Adam_1")}}


# --- TF2: Keras fit and GradientTape loops ----------------------------------------------------

def _keras_run(make_optimizer: Callable[[], Any], wrap: bool, how: str,
               address: str | None = None, norm: bool = False
               ) -> tuple[list[np.ndarray], int]:
    """Trains a small Keras model (with ``norm``, batch normalization and dropout after the
    hidden layer) with ``fit`` or a GradientTape loop, in a ``tf.function`` (``tape``) or
    eagerly (``eager``); returns the values of its variables (``model.variables``) and the
    optimizer's iterations."""
    import keras
    keras.utils.set_random_seed(0)
    extra = [keras.layers.BatchNormalization(name="norm"),
             keras.layers.Dropout(0.25, seed=1)] if norm else []
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu", name="hidden"),
                              *extra, keras.layers.Dense(3, name="out")], name="net")
    opt = make_optimizer()
    if wrap:
        opt = vst.DistributedOptimizer(opt, client=address, model=model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if how == "fit":
        model.compile(optimizer=opt, loss=loss)
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    else:
        def step(xb: Any, yb: Any) -> None:
            with tf.GradientTape() as tape:
                value = loss(yb, model(xb, training=True))
            grads = tape.gradient(value, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        run = step if how == "eager" else tf.function(step)
        for i in range(8):
            run(x[4 * i:4 * i + 4], y[4 * i:4 * i + 4])
    return [v.numpy() for v in model.variables], int(opt.iterations.numpy())


KERAS = {"adam": lambda: __import__("keras").optimizers.Adam(0.01),
         "nesterov": lambda: __import__("keras").optimizers.SGD(0.05, 0.9, nesterov=True),
         "rmsprop": lambda: __import__("keras").optimizers.RMSprop(0.01)}


@pytest.mark.parametrize("how", ["fit", "tape"])
@pytest.mark.parametrize("case", list(KERAS))
def test_keras_trains_as_keras_with_its_variables_on_the_server(
        address: str, client: vs.Client, how: str, case: str) -> None:
    expected, steps = _keras_run(KERAS[case], wrap=False, how=how)
    got, got_steps = _keras_run(KERAS[case], wrap=True, how=how, address=address)
    assert got_steps == steps == 8
    for value, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    names = [v.name for v in client.list_variables()]
    model = ["net/hidden/bias", "net/hidden/kernel", "net/out/bias", "net/out/kernel"]
    slots = {"adam": ["Adam", "Adam_1"], "nesterov": ["SGD"], "rmsprop": []}[case]
    assert names == sorted([*model, "global_step", *(f"{n}/{s}" for n in model for s in slots),
                            *(["beta1_power", "beta2_power"] if case == "adam" else [])])
    assert vs.train.get_or_create_global_step(client).numpy() == 8


def test_the_keras_example_fits_with_two_worker_processes(tmp_path: Path) -> None:
    require("sklearn")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "keras_fit.py"), "--epochs", "10",
         "--checkpoint-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^worker 0: final step (\d+)  test accuracy ([\d.]+)$", result.stdout,
                      re.M)
    assert match, result.stdout
    step, accuracy = int(match.group(1)), float(match.group(2))
    assert accuracy >= 0.9, result.stdout
    assert re.search(r"^worker 1: done at global step \d+$", result.stdout, re.M)
    reader = tf.train.load_checkpoint(str(tmp_path / f"model.ckpt-{step}"))
    assert sorted(reader.get_variable_to_shape_map()) == sorted(
        ["global_step", "beta1_power", "beta2_power",
         *(f"digits/{layer}/{kind}{slot}" for layer in ("hidden", "softmax")
           for kind in ("kernel", "bias") for slot in ("", "/Adam", "/Adam_1"))])
