"""Model state changed outside the optimizer (batch normalization's moving statistics) lives
on the server too, as every global variable lives on TensorFlow's ps.

Each test runs the same program plainly and through varstore and compares what users see:
the moving statistics and the trained variables, the server's checkpoint against what
TensorFlow's ``Saver`` writes for the same graph, and ``Saver.restore`` of it.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
from tests.extras import require
from tests.interop.test_tensorflow_plugin import (
    KERAS,
    OPTIMIZERS,
    STEPS,
    Model,
    _keras_run,
    _plain,
    _pulled,
    _train,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = require("tensorflow")
tf1 = tf.compat.v1
vst = require("varstore.tensorflow")

pytestmark = pytest.mark.tensorflow

MOVING = ["norm/moving_mean", "norm/moving_variance"]
MAKE = {"adam": OPTIMIZERS["adam"],
        "proximal": lambda: tf1.train.ProximalAdagradOptimizer(
            0.1, l1_regularization_strength=0.01)}


def _saver_keys(make: Any, directory: Path) -> list[tuple[str, list[int]]]:
    """The keys and shapes TensorFlow's ``Saver`` writes for the plain graph."""
    model = Model(make, wrap=False, norm=True)
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        path = tf1.train.Saver().save(sess, str(directory / "plain.ckpt"))
    return tf.train.list_variables(path)


@pytest.mark.parametrize("case", list(MAKE))
def test_one_worker_keeps_the_moving_statistics_on_the_server_as_tensorflow_computes_them(
        server: Any, address: str, client: vs.Client, tmp_path: Path, case: str) -> None:
    expected, _ = _plain(MAKE[case], norm=True)
    model = Model(MAKE[case], wrap=True, address=address, norm=True)
    got = _train(model, [vst.SyncHook(client=address)], range(STEPS))
    assert sorted(v.name for v in client.list_variables()) == sorted(expected)
    on_server = _pulled(client, expected)
    for name, value in expected.items():
        np.testing.assert_allclose(on_server[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
        if name in got:
            np.testing.assert_array_equal(got[name], on_server[name], err_msg=name)
    assert not np.allclose(on_server["norm/moving_mean"], 0)

    path = server.checkpoints.directory / client.save("model.ckpt")
    assert tf.train.list_variables(str(path)) == _saver_keys(MAKE[case], tmp_path)
    plain = Model(MAKE[case], wrap=False, norm=True)
    with plain.graph.as_default(), tf1.Session() as sess:
        tf1.train.Saver().restore(sess, str(path))
        restored = sess.run({v.op.name: v for v in tf1.global_variables()})
    for name, value in restored.items():
        np.testing.assert_array_equal(value, on_server[name], err_msg=name)


def test_accumulating_workers_send_the_statistics_of_every_pass_on_every_nth(
        address: str, client: vs.Client) -> None:
    model = Model(OPTIMIZERS["momentum"], wrap=True, address=address, norm=True,
                  backward_passes_per_step=2)
    with model.graph.as_default():
        moving = [v for v in tf1.global_variables() if v.op.name in MOVING]
        with tf1.train.MonitoredTrainingSession(hooks=[vst.SyncHook(client=address)]) as sess:
            like = dict(zip(MOVING, sess.run(moving), strict=True))
            before = _pulled(client, like)
            for t in range(4):
                sess.run(model.train_op, model.feeds(t))
                local = dict(zip(MOVING, sess.run(moving), strict=True))
                on_server = _pulled(client, like)
                for name in MOVING:
                    if t % 2:
                        np.testing.assert_array_equal(on_server[name], local[name])
                    else:
                        np.testing.assert_array_equal(on_server[name], before[name])
                        assert not np.array_equal(local[name], before[name])
                before = on_server


def _one_step(t: int) -> dict[str, np.ndarray]:
    """The moving statistics after one plain TensorFlow step on minibatch ``t`` from the
    initial values."""
    model = Model(OPTIMIZERS["momentum"], wrap=False, norm=True)
    with model.graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        sess.run(model.train_op, model.feeds(t))
        return sess.run({v.op.name: v for v in tf1.global_variables()
                         if v.op.name in MOVING})


def test_two_workers_changes_of_the_statistics_add_up_on_the_server(
        address: str, client: vs.Client) -> None:
    """Worker 1 steps from the initial values after worker 0 stepped: the server's
    statistics move by both steps' changes, and worker 1 gets them back."""
    workers = [Model(OPTIMIZERS["momentum"], wrap=True, address=address, norm=True)
               for _ in range(2)]
    initial = {"norm/moving_mean": np.zeros(8, np.float32),
               "norm/moving_variance": np.ones(8, np.float32)}
    each = [_one_step(t) for t in range(2)]
    sessions = []
    try:
        for task, worker in enumerate(workers):
            with worker.graph.as_default():
                sessions.append(tf1.train.MonitoredTrainingSession(hooks=[vst.SyncHook(
                    client=address, is_chief=task == 0)]))
        for t, (worker, sess) in enumerate(zip(workers, sessions, strict=True)):
            sess.run(worker.train_op, worker.feeds(t))
        with workers[1].graph.as_default():
            local = sessions[1].run({v.op.name: v for v in tf1.global_variables()
                                     if v.op.name in MOVING})
    finally:
        for sess in sessions:
            sess.close()
    on_server = _pulled(client, initial)
    for name in MOVING:
        both = initial[name] + (each[0][name] - initial[name]) + (each[1][name] - initial[name])
        np.testing.assert_allclose(on_server[name], both, rtol=1e-6, err_msg=name)
        np.testing.assert_array_equal(local[name], on_server[name], err_msg=name)
    assert vs.train.get_or_create_global_step(client).numpy() == 2


def test_synchronous_replicas_changes_of_the_statistics_add_up_on_the_server(
        address: str, client: vs.Client) -> None:
    """Both replicas step from the initial values (their gradients make one global step):
    the server's statistics move by both steps' changes, and both workers get them back."""
    initial = {"norm/moving_mean": np.zeros(8, np.float32),
               "norm/moving_variance": np.ones(8, np.float32)}
    each = [_one_step(t) for t in range(2)]
    started = threading.Barrier(2, timeout=120)
    local: dict[int, dict[str, np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(task: int) -> None:
        try:
            model = Model(OPTIMIZERS["momentum"], wrap=True, address=address, norm=True,
                          replicas_to_aggregate=2, timeout=120)
            hook = vst.SyncHook(client=address, is_chief=task == 0, timeout=120)
            with model.graph.as_default():
                with tf1.train.MonitoredTrainingSession(hooks=[hook]) as sess:
                    started.wait()
                    sess.run(model.train_op, model.feeds(task))
                    local[task] = sess.run({v.op.name: v for v in tf1.global_variables()
                                            if v.op.name in MOVING})
        except BaseException as e:
            errors.append(e)
            started.abort()

    threads = [threading.Thread(target=worker, args=(task,)) for task in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    on_server = _pulled(client, initial)
    for name in MOVING:
        both = initial[name] + (each[0][name] - initial[name]) + (each[1][name] - initial[name])
        np.testing.assert_allclose(on_server[name], both, rtol=1e-6, err_msg=name)
        for task in (0, 1):
            np.testing.assert_array_equal(local[task][name], on_server[name], err_msg=name)
    assert vs.train.get_or_create_global_step(client).numpy() == 1


def test_a_variable_no_step_pushes_is_declared_and_named_in_a_warning(
        address: str, client: vs.Client, caplog: pytest.LogCaptureFixture) -> None:
    model = Model(OPTIMIZERS["adam"], wrap=True, address=address)
    with model.graph.as_default():
        tf1.get_variable("late", [2], initializer=tf1.ones_initializer(), trainable=False)
        tf1.get_variable("scratch", [2], collections=[tf1.GraphKeys.LOCAL_VARIABLES])
    with caplog.at_level(logging.WARNING, "varstore.tensorflow.graph"):
        _train(model, [vst.SyncHook(client=address)], range(1))
    assert [r.getMessage() for r in caplog.records] == [
        "varstore: no DistributedOptimizer step sends the changes of late (created after "
        "minimize, or trainable without a gradient); the server keeps them as loaded"]
    names = [v.name for v in client.list_variables()]
    assert "late" in names and "scratch" not in names


@pytest.mark.parametrize("how", ["fit", "tape", "eager"])
def test_keras_keeps_the_models_non_trainable_variables_on_the_server(
        address: str, client: vs.Client, how: str) -> None:
    expected, steps = _keras_run(KERAS["adam"], wrap=False, how=how, norm=True)
    got, got_steps = _keras_run(KERAS["adam"], wrap=True, how=how, address=address,
                                norm=True)
    assert got_steps == steps == 8
    # model.variables: hidden kernel, bias, norm gamma, beta, moving mean, variance, the
    # dropout's seed state, out kernel, bias. Keras's Adam and TensorFlow's (the server's)
    # round differently: the tolerance of test_keras_trains_as_keras... for the trained ones.
    for i, (value, want) in enumerate(zip(got, expected, strict=True)):
        rtol = 1e-6 if i in (4, 5, 6) else 1e-5
        np.testing.assert_allclose(value, want, rtol=rtol, atol=rtol / 10, err_msg=str(i))
    np.testing.assert_array_equal(got[6], expected[6])
    assert got[6].any()
    held = {v.name: v for v in client.list_variables()}
    assert {"net/norm/moving_mean", "net/norm/moving_variance", "net/norm/gamma"} <= set(held)
    seeds = [n for n in held if n.endswith("seed_generator_state")]
    assert len(seeds) == 1 and held[seeds[0]].dtype == vs.int64
    moving = vs.RemoteVariable(client, "net/norm/moving_mean", vs.float32, (8,))
    np.testing.assert_array_equal(client.pull([moving])[0], got[4])
    assert not np.allclose(got[4], 0)


def test_keras_accumulation_sends_the_statistics_on_every_nth_step(
        address: str, client: vs.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    real = vst.DistributedOptimizer
    monkeypatch.setattr(vst, "DistributedOptimizer", lambda opt, client=None, **kwargs: real(
        opt, client, backward_passes_per_step=2, **kwargs))
    got, iterations = _keras_run(KERAS["nesterov"], wrap=True, how="tape", address=address,
                                 norm=True)
    assert iterations == 4
    moving = [vs.RemoteVariable(client, f"net/norm/{n}", vs.float32, (8,))
              for n in ("moving_mean", "moving_variance")]
    for value, local in zip(client.pull(moving), got[4:6], strict=True):
        np.testing.assert_array_equal(value, local)


def test_keras_without_a_model_warns_that_its_other_variables_stay_local(
        address: str, client: vs.Client, caplog: pytest.LogCaptureFixture) -> None:
    import keras
    w = keras.Variable(np.zeros(2, np.float32), name="w")
    opt = vst.DistributedOptimizer(keras.optimizers.SGD(1.0), client=address)
    with caplog.at_level(logging.WARNING, "varstore.tensorflow.keras"):
        opt.apply_gradients([(tf.ones(2), w)])
    assert [r.getMessage() for r in caplog.records] == [
        "varstore: DistributedOptimizer was given no model=: only the variables it trains "
        "are on the server, not the model's non-trainable ones (batch normalization's moving "
        "statistics)"]
    np.testing.assert_array_equal(w.numpy(), [-1, -1])
    assert sorted(v.name for v in client.list_variables()) == ["global_step", w.path]
