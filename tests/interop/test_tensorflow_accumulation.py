"""``backward_passes_per_step``: gradients aggregated locally over N passes, pushed on every
N-th, as Horovod's ``DistributedOptimizer``.

The reference is TensorFlow itself: the same model's gradients of the same N minibatches at
the same weights, summed (or averaged) by TensorFlow ops and applied by TensorFlow's own
optimizer; the server's variables and slots must equal its result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import varstore as vs
from tests.extras import require
from tests.interop.test_tensorflow_plugin import (
    KERAS,
    OPTIMIZERS,
    Model,
    _keras_run,
    _pulled,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = require("tensorflow")
tf1 = tf.compat.v1
vst = require("varstore.tensorflow")
accumulate = require("varstore.tensorflow.accumulate")

pytestmark = pytest.mark.tensorflow

N = 3
UPDATES = 3


def _reference(make_optimizer: Callable[[], Any], average: bool) -> dict[str, np.ndarray]:
    """TensorFlow alone: every update applies, with TF's optimizer, the sum (or mean) that
    TF's ops make of N passes' gradients computed at the same weights; sparse gradients are
    concatenated, as TF aggregates ``IndexedSlices``."""
    model = Model(None, wrap=False)
    with model.graph.as_default():
        opt = make_optimizer()
        loss = tf1.get_collection(tf1.GraphKeys.LOSSES)[0]
        pairs = [(g, v) for g, v in opt.compute_gradients(loss) if g is not None]
        feeds_in, fed = [], []
        for grad, var in pairs:
            if isinstance(grad, tf.IndexedSlices):
                values = tf1.placeholder(grad.values.dtype, [None, *var.shape[1:]])
                indices = tf1.placeholder(tf.int64, [None])
                feeds_in.append((indices, values))
                fed.append((tf.IndexedSlices(values, indices, var.shape), var))
            else:
                feeds_in.append(tf1.placeholder(grad.dtype, var.shape))
                fed.append((feeds_in[-1], var))
        train = opt.apply_gradients(fed, global_step=model.global_step)
        init = tf1.global_variables_initializer()
        every = {v.op.name: v for v in tf1.global_variables()}
    # The session runs the graph (not as the default one: entering it would make it so);
    # the aggregation is eager TensorFlow, out of it.
    sess = tf1.Session(graph=model.graph)
    try:
        sess.run(init)
        for k in range(UPDATES):
            passes = [sess.run([g for g, _ in pairs], model.feeds(N * k + i))
                      for i in range(N)]
            sess.run(train, _aggregate(feeds_in, passes, average))
        return sess.run(every)
    finally:
        sess.close()


def _aggregate(feeds_in: list[Any], passes: list[list[Any]], average: bool
               ) -> dict[Any, np.ndarray]:
    """The feeds of an update: each gradient summed by ``tf.add`` (rows concatenated by
    ``tf.concat``) over the passes, divided by ``tf.divide`` when ``average``."""
    feed: dict[Any, np.ndarray] = {}
    for j, holder in enumerate(feeds_in):
        if isinstance(holder, tuple):
            rows = [p[j] for p in passes]
            feed[holder[0]] = tf.concat([r.indices for r in rows], 0).numpy()
            total = tf.concat([r.values for r in rows], 0)
        else:
            total = tf.constant(passes[0][j])
            for p in passes[1:]:
                total = tf.add(total, p[j])
        feed[holder[-1] if isinstance(holder, tuple) else holder] = (
            tf.divide(total, N) if average else total).numpy()
    return feed


CASES = {"adam-sum": ("adam", False), "momentum-mean": ("momentum", True),
         "ftrl-sum": ("ftrl", False),
         "local-mean": ("proximal", True)}
MAKE = {**OPTIMIZERS, "proximal": lambda: tf1.train.ProximalAdagradOptimizer(
    0.1, l1_regularization_strength=0.01)}


@pytest.mark.parametrize("case", list(CASES))
def test_the_server_changes_every_nth_step_by_what_tensorflow_applies_to_the_aggregate(
        address: str, client: vs.Client, case: str) -> None:
    kind, average = CASES[case]
    expected = _reference(MAKE[kind], average)
    model = Model(MAKE[kind], wrap=True, address=address, backward_passes_per_step=N,
                  average_aggregated_gradients=average)
    with model.graph.as_default():
        with tf1.train.MonitoredTrainingSession(hooks=[vst.SyncHook(client=address)]) as sess:
            local = model.trainable(sess)
            server = _pulled(client, local)
            for t in range(N * UPDATES):
                sess.run(model.train_op, model.feeds(t))
                now, step = model.trainable(sess), sess.run(model.global_step)
                on_server = _pulled(client, local)
                assert step == (t + 1) // N
                for name in local:
                    changed = (t + 1) % N == 0
                    assert changed != np.array_equal(on_server[name], server[name]), (t, name)
                    # The local variables are the server's after every step.
                    np.testing.assert_array_equal(now[name], on_server[name], err_msg=name)
                local, server = now, on_server
    # A local optimizer's slots are mirrored: the server holds them too.
    got = _pulled(client, expected)
    assert sorted(v.name for v in client.list_variables()) == sorted(expected)
    for name, value in got.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_synchronous_replicas_aggregate_their_workers_local_aggregates(address: str) -> None:
    """Two replicas of two averaged passes each: every update is the mean gradient of four
    equal minibatches, the gradient of their concatenation."""
    passes, replicas, updates = 2, 2, 3

    def make() -> Any:
        return tf1.train.GradientDescentOptimizer(0.1)

    both = Model(make, wrap=False)
    with both.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        for k in range(updates):
            feeds = [both.feeds(passes * replicas * k + i) for i in range(passes * replicas)]
            sess.run(both.train_op, {key: np.concatenate([f[key] for f in feeds])
                                     for key in feeds[0]})
        expected = both.trainable(sess)
    seen: dict[int, list[int]] = {}
    results: dict[int, dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(task: int) -> None:
        try:
            model = Model(make, wrap=True, address=address, replicas_to_aggregate=replicas,
                          timeout=120, backward_passes_per_step=np.int64(passes),
                          average_aggregated_gradients=True)
            hook = vst.SyncHook(client=address, is_chief=task == 0, timeout=120)
            with model.graph.as_default():
                with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
                    seen[task] = []
                    for k in range(updates):
                        for i in range(passes):
                            sess.run(model.train_op,
                                     model.feeds(passes * replicas * k + passes * task + i))
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
    assert seen == {task: [0, 1, 1, 2, 2, 3] for task in (0, 1)}
    for got in results.values():
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def _keras_plain_accumulating(make: Callable[[], Any], how: str, passes: int) -> Any:
    """Keras's own gradient accumulation (the mean of ``passes`` passes, one update)."""
    def accumulating() -> Any:
        opt = make()
        return type(opt).from_config({**opt.get_config(),
                                      "gradient_accumulation_steps": passes})
    return _keras_run(accumulating, wrap=False, how=how)


@pytest.mark.parametrize("how", ["fit", "tape"])
def test_keras_pushes_every_nth_step_the_mean_keras_accumulation_applies(
        address: str, client: vs.Client, how: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SGD with momentum: Keras's own ``gradient_accumulation_steps`` averages the passes and
    applies one update, as ``average_aggregated_gradients`` does; the server's global step
    counts 8 / 2 updates."""
    expected, _ = _keras_plain_accumulating(KERAS["nesterov"], how, 2)
    real = vst.DistributedOptimizer

    def wrap(opt: Any, client: Any = None, **kwargs: Any) -> Any:
        return real(opt, client, backward_passes_per_step=2,
                    average_aggregated_gradients=True, **kwargs)
    monkeypatch.setattr(vst, "DistributedOptimizer", wrap)
    got, iterations = _keras_run(KERAS["nesterov"], wrap=True, how=how, address=address)
    assert iterations == 4
    assert vs.train.get_or_create_global_step(client).numpy() == 4
    for value, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)


def test_keras_adam_on_the_server_gets_one_update_per_n_passes(
        address: str, client: vs.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    real = vst.DistributedOptimizer
    monkeypatch.setattr(vst, "DistributedOptimizer", lambda opt, client=None, **kwargs: real(
        opt, client, backward_passes_per_step=4, **kwargs))
    _, iterations = _keras_run(KERAS["adam"], wrap=True, how="fit", address=address)
    assert iterations == 2
    assert vs.train.get_or_create_global_step(client).numpy() == 2
    beta1_power = vs.RemoteVariable(client, "beta1_power", vs.float32, ())
    np.testing.assert_allclose(client.pull([beta1_power])[0], 0.9 ** 3, rtol=1e-6)


@pytest.mark.parametrize("rows", [False, True])
def test_an_eager_loop_aggregates_dense_and_sparse_gradients(address: str, client: vs.Client,
                                                             rows: bool) -> None:
    """No ``tf.function``: the Keras optimizer runs step by step; the embedding's gradient is
    ``IndexedSlices`` with a repeated row, summed on the server."""
    import keras
    w = keras.Variable(np.zeros(2, np.float32), name="w")
    emb = keras.Variable(np.zeros((4, 2), np.float32), name="emb")
    variables = [w, emb] if rows else [w]
    opt = vst.DistributedOptimizer(keras.optimizers.SGD(1.0), client=address,
                                   backward_passes_per_step=np.int16(N))
    seen = []
    for t in range(1, 2 * N + 1):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_sum(w * [t, 1.0]) - t * tf.reduce_sum(tf.gather(emb, [1, 1, 3]))
        grads = tape.gradient(loss, variables)
        assert isinstance(grads[-1], tf.IndexedSlices) == rows
        opt.apply_gradients(zip(grads, variables, strict=True))
        seen.append((int(opt.iterations.numpy()), w.numpy().tolist(), emb.numpy()[1].tolist()))
    e1, e2 = ([12, 12], [42, 42]) if rows else ([0, 0], [0, 0])
    assert seen == [(0, [0, 0], [0, 0])] * 2 + [(1, [6, 3], e1)] * 3 + [(2, [21, 6], e2)]
    handles = [vs.RemoteVariable(client, v.path, vs.float32, tuple(v.shape))
               for v in variables]
    np.testing.assert_array_equal(client.pull(handles)[0], [21, 6])
    if rows:
        np.testing.assert_array_equal(client.pull(handles)[1],
                                      [[0, 0], [42, 42], [0, 0], [21, 21]])
    assert vs.train.get_or_create_global_step(client).numpy() == 2


# tf.compat.v1 with disable_v2_behavior (reference variables, TF1 control flow) is global to
# the process: a subprocess trains the same graph plainly, and through varstore with a local
# optimizer, which pushes the changes it makes.
V1_PROGRAM = """
import sys
import numpy as np
import tensorflow as tf
tf1 = tf.compat.v1
tf1.disable_v2_behavior()
import varstore.tensorflow as vst

def run(wrap):
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 2])
        ids = tf1.placeholder(tf.int64, [None])
        w = tf1.get_variable("w", [2, 1], initializer=tf1.ones_initializer())
        emb = tf1.get_variable("emb", [5, 2], initializer=tf1.ones_initializer())
        loss = tf.reduce_sum(tf.matmul(x + tf.nn.embedding_lookup(emb, ids), w) ** 2)
        step = tf1.train.get_or_create_global_step()
        opt = tf1.train.ProximalAdagradOptimizer(0.1, l1_regularization_strength=0.01)
        if wrap:
            opt = vst.DistributedOptimizer(opt, backward_passes_per_step=2)
            train = opt.minimize(loss, global_step=step)
        else:
            grads = tf1.placeholder(tf.float32, [2, 1]), tf1.placeholder(tf.float32, [None, 2])
            rows = tf1.placeholder(tf.int64, [None])
            train = opt.apply_gradients([(grads[0], w), (tf.IndexedSlices(grads[1], rows,
                                          [5, 2]), emb)], global_step=step)
            each = tf.gradients(loss, [w, emb])
        hooks = [vst.SyncHook()] if wrap else []
        with tf1.train.MonitoredTrainingSession(hooks=hooks) as sess:
            for k in range(3):
                feeds = [{x: np.full((3, 2), 2 * k + i, np.float32) / 10, ids: [1, 2, 1]}
                         for i in range(2)]
                if wrap:
                    for feed in feeds:
                        sess.run(train, feed)
                    continue
                g = [sess.run(each, feed) for feed in feeds]
                sess.run(train, {grads[0]: g[0][0] + g[1][0], rows: np.concatenate(
                    [g[0][1].indices, g[1][1].indices]), grads[1]: np.concatenate(
                    [g[0][1].values, g[1][1].values])})
            return [*sess.run([w, emb, step]), type(w).__name__]

plain, pushed = run(False), run(True)
print(pushed[3], pushed[2], plain[2])
for a, b in zip(plain[:2], pushed[:2]):
    np.testing.assert_allclose(b, a, rtol=1e-6)
    assert not np.array_equal(b, np.ones_like(b))
print("same")
"""


def test_tf1_reference_variables_push_their_local_optimizers_changes(address: str) -> None:
    result = subprocess.run([sys.executable, "-c", V1_PROGRAM], capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "VARSTORE_ADDRESS": address})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == ["RefVariable 3 3", "same"]


@pytest.mark.parametrize("value", [np.int32(2), 3])
def test_backward_passes_per_step_takes_python_and_numpy_integers(value: Any) -> None:
    assert accumulate.check_backward_passes(value) == int(value)
    assert type(accumulate.check_backward_passes(value)) is int


@pytest.mark.parametrize(("value", "error", "message"), [
    (0, ValueError, "backward_passes_per_step must be > 0, got 0"),
    (np.int64(-2), ValueError, "backward_passes_per_step must be > 0, got -2"),
    (2.0, TypeError, "backward_passes_per_step must be an integer, not float"),
    (True, TypeError, "backward_passes_per_step must be an integer, not bool"),
    ("3", TypeError, "backward_passes_per_step must be an integer, not str")])
def test_backward_passes_per_step_is_refused_unless_a_positive_integer(
        value: Any, error: type[Exception], message: str) -> None:
    import keras
    with pytest.raises(error, match=f"^{message}$"):
        vst.DistributedOptimizer(tf1.train.AdamOptimizer(0.1), backward_passes_per_step=value)
    with pytest.raises(error, match=f"^{message}$"):
        vst.DistributedOptimizer(keras.optimizers.SGD(0.1), backward_passes_per_step=value)


def test_the_accumulator_sums_or_averages_in_the_gradients_dtype() -> None:
    acc = accumulate.GradientAccumulator(3, average_aggregated_gradients=True)
    grads = [np.array([0.1, 1e8], np.float32), np.array([0.2, 1.0], np.float32),
             np.array([0.3, -1e8], np.float32)]
    rows = [(np.array([1, 2]), np.ones((2, 2), np.float32)), (np.array([2]),
                                                             np.full((1, 2), 3, np.float32))]
    due = [acc.add(["w", "emb"], [False, True], [g, *r]) for g, r in zip(
        grads, [*rows, (np.array([], np.int64), np.zeros((0, 2), np.float32))], strict=True)]
    assert due == [False, False, True]
    dense, indices, values = acc.take(["w", "emb"], [False, True])
    want = ((grads[0] + grads[1]) + grads[2]) / np.float32(3)
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, want)
    np.testing.assert_array_equal(indices, [1, 2, 2])
    np.testing.assert_array_equal(values, np.array([[1, 1], [1, 1], [3, 3]], np.float32)
                                  / np.float32(3))
    assert acc.passes == 0
    with pytest.raises(ValueError, match="no dense gradient of w was accumulated"):
        acc.take(["w"], [False])
