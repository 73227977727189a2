"""Training with many workers: chief/worker start-up, checkpoints, synchronous steps."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
from varstore.errors import DeadlineExceededError
from varstore.server import ServerConfig, create_server
from varstore.train import (
    AdamOptimizer,
    CheckpointSaver,
    GradientDescentOptimizer,
    SyncReplicasOptimizer,
)

W_INIT = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)


def _model(client: vs.Client) -> list[vs.RemoteVariable]:
    """The model every process builds: the same code, the same server variables."""
    with client.deferred_initialization():
        with client.variable_scope("model"):
            w = client.get_variable("W", initializer=W_INIT)
            b = client.get_variable("b", [2], initializer=vs.constant_initializer(0.5))
        step = vs.train.get_or_create_global_step(client)
    return [w, b, step]


def _start_worker(address: str, **wait_args: float) -> tuple[threading.Thread, dict]:
    """A worker in a thread: builds the model, waits until ready, then reads it."""
    out: dict = {}

    def run() -> None:
        with vs.connect(address) as client:
            variables = _model(client)
            try:
                client.wait_until_ready(variables, **wait_args)
                out["values"] = client.pull(variables)
            except DeadlineExceededError as e:
                out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    event = threading.Event()
    for _ in range(200):
        if any(text in r.getMessage() for r in caplog.records):
            return
        event.wait(0.05)
    raise AssertionError(f"no log line containing {text!r}")


def test_worker_started_first_waits_for_the_chief(address: str, client: vs.Client,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="varstore.train")
    worker, out = _start_worker(address, timeout=120.0)
    _wait_for_log(caplog, "waiting for the chief to initialize 3 variables: model/W, "
                          "model/b, global_step")
    assert out == {}
    infos = {v.name: v for v in client.list_variables()}
    assert sorted(infos) == ["global_step", "model/W", "model/b"]
    assert not any(v.initialized for v in infos.values())
    assert client.initialize_or_restore(_model(client)) is None
    # The worker logs every 10 s while it waits; it must wake on initialization, not later.
    worker.join(timeout=8.0)
    assert not worker.is_alive()
    w, b, step = out["values"]
    np.testing.assert_array_equal(w, W_INIT)
    np.testing.assert_array_equal(b, [0.5, 0.5])
    assert step == 0 and step.dtype == np.int64


def test_chief_started_first_initializes_and_workers_proceed(address: str,
                                                             client: vs.Client) -> None:
    variables = _model(client)
    assert client.initialize_or_restore(variables) is None
    np.testing.assert_array_equal(variables[0].numpy(), W_INIT)
    worker, out = _start_worker(address, timeout=30.0)
    worker.join(timeout=30.0)
    np.testing.assert_array_equal(out["values"][1], [0.5, 0.5])


def test_worker_times_out_naming_the_variables(address: str) -> None:
    worker, out = _start_worker(address, timeout=0.3)
    worker.join(timeout=30.0)
    assert isinstance(out["error"], DeadlineExceededError)
    assert str(out["error"]) == ("variables not initialized after 0.3s: model/W, model/b, "
                                 "global_step")


def test_variables_outside_deferred_initialization_are_initialized_at_once(
        client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.ones(2, np.float32))
    with client.deferred_initialization():
        v = client.get_variable("v", initializer=np.ones(2, np.float32))
    assert w.is_initialized() and not v.is_initialized()
    client.wait_until_ready([w], timeout=0.0)
    with pytest.raises(DeadlineExceededError, match=r"after 0s: v$"):
        client.wait_until_ready([w, "v"], timeout=0.0)


def test_chief_restores_the_latest_checkpoint_and_training_continues(tmp_path: Path) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ckpt")
    first = create_server(config)
    first.start()
    try:
        with vs.connect(f"127.0.0.1:{first.port}") as chief:
            variables = _model(chief)
            chief.initialize_or_restore(variables, checkpoint_dir="run")
            opt = AdamOptimizer(0.1)
            for _ in range(3):
                step = chief.apply_gradients(opt, {variables[0]: np.ones((2, 2))},
                                             global_step=variables[2])
            assert step == 3
            saver = CheckpointSaver(chief, checkpoint_dir="run", save_secs=3600.0)
            assert saver.maybe_save(3) is None
            assert saver.save(3) == "run/model.ckpt-3"
            trained = chief.pull(variables)
    finally:
        first.stop(grace=1.0)
    second = create_server(config)
    second.start()
    try:
        with vs.connect(f"127.0.0.1:{second.port}") as chief:
            with chief.deferred_initialization():
                extra = chief.get_variable("extra", [3], initializer=vs.ones_initializer)
            variables = _model(chief)
            assert chief.initialize_or_restore(variables + [extra], "run") == "run/model.ckpt-3"
            restored = chief.pull(variables)
            for got, want in zip(restored, trained, strict=True):
                np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(extra.numpy(), [1.0, 1.0, 1.0])
            names = [v.name for v in chief.list_variables()]
            assert "model/W/Adam_1" in names and "beta1_power" in names
            step = chief.apply_gradients(AdamOptimizer(0.1), {variables[0]: np.ones((2, 2))},
                                         global_step=variables[2])
            assert step == 4
            with chief.variable_scope("", reuse=True):
                beta1_power = chief.get_variable("beta1_power", ())
            np.testing.assert_allclose(beta1_power.numpy(), 0.9 ** 5, rtol=1e-6)
    finally:
        second.stop(grace=1.0)


def test_initializing_a_variable_this_client_did_not_create_is_an_error(
        client: vs.Client, address: str) -> None:
    with client.deferred_initialization():
        client.get_variable("v", [2])
    with vs.connect(address) as other:
        with other.variable_scope("", reuse=True):
            bound = other.get_variable("v", [2])
        with pytest.raises(ValueError, match="v is uninitialized and was not created by this "
                                             "client"):
            other.initialize_or_restore([bound])


# --- synchronous training ----------------------------------------------------------------------

WORKER = """
import json, sys
import numpy as np
import varstore as vs

address = sys.argv[1]
replica, replicas, steps = (int(a) for a in sys.argv[2:5])
with vs.connect(address) as client:
    w = client.get_variable("W", [3])
    e = client.get_variable("E", [4, 2])
    step = vs.train.get_or_create_global_step(client)
    client.wait_until_ready([w, e, step], timeout=60)
    opt = vs.train.SyncReplicasOptimizer(vs.train.AdamOptimizer(0.1), replicas, timeout=60)
    seen = []
    for _ in range(steps):
        _, local_step = client.pull([w, step])
        grad_w = np.full(3, replica + 1.0) * (int(local_step) + 1)
        rows = np.full((1, 2), float(replica))
        seen.append(client.apply_gradients(opt, {w: grad_w, e: ([replica % 4], rows)},
                                           global_step=step, local_step=int(local_step)))
print(json.dumps(seen))
"""


def test_synchronous_steps_apply_the_mean_of_all_replicas_once(address: str,
                                                               client: vs.Client) -> None:
    replicas, steps = 3, 4
    w = client.get_variable("W", [3], initializer=vs.zeros_initializer)
    e = client.get_variable("E", [4, 2], initializer=vs.ones_initializer)
    step = vs.train.get_or_create_global_step(client)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i), str(replicas),
                                 str(steps)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(replicas)]
    results = []
    for proc in workers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert results == [[1, 2, 3, 4]] * replicas
    assert step.numpy() == steps
    # The same steps, applied asynchronously with the mean gradients, on a copy of the model.
    with client.variable_scope("ref"):
        ref_w = client.get_variable("W", [3], initializer=vs.zeros_initializer)
        ref_e = client.get_variable("E", [4, 2], initializer=vs.ones_initializer)
    opt = AdamOptimizer(0.1)
    with client.name_scope("reference"):
        for t in range(steps):
            mean_w = np.full(3, np.mean(np.arange(1, replicas + 1))) * (t + 1)
            rows = np.arange(replicas, dtype=np.float32)[:, None].repeat(2, 1) / replicas
            client.apply_gradients(opt, {ref_w: mean_w,
                                         ref_e: (np.arange(replicas) % 4, rows)})
    np.testing.assert_allclose(w.numpy(), ref_w.numpy(), rtol=1e-6)
    np.testing.assert_allclose(e.numpy(), ref_e.numpy(), rtol=1e-6)
    with client.variable_scope("", reuse=True):
        powers = client.pull([client.get_variable("beta1_power", ()),
                              client.get_variable("reference/beta1_power", ())])
    np.testing.assert_allclose(powers, [0.9 ** (steps + 1)] * 2, rtol=1e-6)


def test_stale_gradients_are_dropped_and_counted(address: str, client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.zeros(2, np.float32))
    step = vs.train.get_or_create_global_step(client)
    fast = SyncReplicasOptimizer(GradientDescentOptimizer(1.0), replicas_to_aggregate=1)
    slow = SyncReplicasOptimizer(GradientDescentOptimizer(1.0), replicas_to_aggregate=1)
    assert client.apply_gradients(fast, {w: [1.0, 1.0]}, global_step=step, local_step=0) == 1
    assert client.apply_gradients(slow, {w: [5.0, 5.0]}, global_step=step, local_step=0) == 1
    assert (fast.stale_gradients, slow.stale_gradients) == (0, 1)
    np.testing.assert_array_equal(w.numpy(), [-1.0, -1.0])
    assert client.apply_gradients(slow, {w: [1.0, 3.0]}, global_step=step, local_step=1) == 2
    np.testing.assert_array_equal(w.numpy(), [-2.0, -4.0])


def test_a_missing_replica_times_out(client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.zeros(2, np.float32))
    step = vs.train.get_or_create_global_step(client)
    opt = SyncReplicasOptimizer(GradientDescentOptimizer(1.0), 2, timeout=0.2)
    with pytest.raises(DeadlineExceededError, match=r"^synchronous step 0: 1 of 2 replicas "
                                                    r"sent gradients within 0.2s$"):
        client.apply_gradients(opt, {w: [1.0, 1.0]}, global_step=step, local_step=0)
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0])
    assert step.numpy() == 0
    with pytest.raises(ValueError, match="needs global_step and local_step"):
        client.apply_gradients(opt, {w: [1.0, 1.0]}, global_step=step)
    with pytest.raises(ValueError, match="local_step is only used by SyncReplicasOptimizer"):
        client.apply_gradients(GradientDescentOptimizer(1.0), {w: [1.0, 1.0]}, local_step=0)


def test_push_pull_returns_the_values_after_the_update(client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.ones(2, np.float32))
    e = client.get_variable("e", initializer=np.zeros((3, 2), np.float32))
    frozen = client.get_variable("frozen", initializer=np.full(2, 7, np.int32))
    step = vs.train.get_or_create_global_step(client)
    opt = GradientDescentOptimizer(0.5)
    got_step, values = client.apply_gradients(
        opt, {w: [2.0, 4.0], e: ([2, 2], np.ones((2, 2)))}, global_step=step,
        fetch=[w, e, frozen])
    assert got_step == 1
    np.testing.assert_array_equal(values[0], [0.0, -1.0])
    np.testing.assert_array_equal(values[1], [[0, 0], [0, 0], [-1, -1]])
    np.testing.assert_array_equal(values[2], [7, 7])
    got_step, (value,) = client.apply_gradients(opt, {w: [2.0, 2.0]}, fetch=[w])
    assert got_step is None
    np.testing.assert_array_equal(value, [-1.0, -2.0])
    assert client.apply_gradients(opt, {w: [0.0, 0.0]}, fetch=[]) == (None, [])


def test_synchronous_push_pull_returns_the_values_after_the_step(address: str,
                                                                 client: vs.Client) -> None:
    w = client.get_variable("w", initializer=np.zeros(2, np.float32))
    step = vs.train.get_or_create_global_step(client)
    results: dict[int, Any] = {}

    def replica(i: int) -> None:
        with vs.connect(address) as own:
            with own.variable_scope("", reuse=True):
                mine = own.get_variable("w", [2])
            opt = SyncReplicasOptimizer(GradientDescentOptimizer(1.0), 2, timeout=60)
            results[i] = own.apply_gradients(opt, {mine: [i, 2.0 * i]}, global_step=step,
                                             local_step=0, fetch=[mine])

    threads = [threading.Thread(target=replica, args=(i,)) for i in (1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in (1, 3):
        got_step, (value,) = results[i]
        assert got_step == 1
        np.testing.assert_array_equal(value, [-2.0, -4.0])
    np.testing.assert_array_equal(w.numpy(), [-2.0, -4.0])


# --- tf.train.MonitoredTrainingSession ---------------------------------------------------------

def _graph_model(tf: Any) -> tuple[Any, Any, Any, Any]:
    """A TF 1.x model: W, its gradient placeholder, the global step and the train op."""
    with tf.variable_scope("model"):
        w = tf.get_variable("W", initializer=W_INIT)
    step = tf.train.get_or_create_global_step()
    grad = tf.placeholder(tf.float32, [2, 2])
    train_op = tf.train.GradientDescentOptimizer(0.5).apply_gradients([(grad, w)],
                                                                      global_step=step)
    return w, grad, step, train_op


def test_monitored_worker_waits_for_the_chief(address: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import varstore.v1 as tf
    caplog.set_level(logging.INFO, logger="varstore.train")
    out: dict = {}

    def worker() -> None:
        with tf.Graph().as_default():
            w, _, step, _ = _graph_model(tf)
            with tf.train.MonitoredTrainingSession(master=address, is_chief=False) as sess:
                out["values"] = sess.run([w, step])

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    _wait_for_log(caplog, "waiting for the chief to initialize 2 variables: model/W, "
                          "global_step")
    assert out == {}
    with tf.Graph().as_default():
        w, grad, step, train_op = _graph_model(tf)
        with tf.train.MonitoredTrainingSession(master=address, is_chief=True) as sess:
            thread.join(timeout=8.0)
            assert not thread.is_alive()
            sess.run(train_op, {grad: np.ones((2, 2))})
    np.testing.assert_array_equal(out["values"][0], W_INIT)
    assert out["values"][1] == 0


def test_monitored_worker_times_out_naming_the_variables(address: str) -> None:
    import varstore.v1 as tf
    with tf.Graph().as_default():
        _graph_model(tf)
        with pytest.raises(DeadlineExceededError, match=r"^variables not initialized after "
                                                        r"0.2s: model/W, global_step$"):
            tf.train.MonitoredTrainingSession(master=address, is_chief=False,
                                              max_wait_secs=0.2)


def test_monitored_chief_saves_restores_and_stops_at_step(server: Any, address: str) -> None:
    import varstore.v1 as tf
    with tf.Graph().as_default():
        w, grad, step, train_op = _graph_model(tf)
        hooks = [tf.train.StopAtStepHook(last_step=3)]
        with tf.train.MonitoredTrainingSession(master=address, checkpoint_dir="job",
                                               hooks=hooks) as sess:
            runs = 0
            while not sess.should_stop():
                sess.run(train_op, {grad: np.ones((2, 2))})
                runs += 1
        assert runs == 3
    assert (server.checkpoints.directory / "job" / "model.ckpt-3.index").exists()
    with vs.connect(address) as client:
        client.push({vs.RemoteVariable(client, "model/W", vs.float32, (2, 2)): np.zeros((2, 2))})
    with tf.Graph().as_default():
        w, grad, step, train_op = _graph_model(tf)
        hooks = [tf.train.StopAtStepHook(num_steps=2)]
        with tf.train.MonitoredTrainingSession(master=address, checkpoint_dir="job",
                                               hooks=hooks) as sess:
            np.testing.assert_array_equal(sess.run(w), W_INIT - 1.5)
            while not sess.should_stop():
                sess.run(train_op, {grad: np.ones((2, 2))})
            with pytest.raises(RuntimeError, match="Run called even after should_stop"):
                sess.run(step)
    with vs.connect(address) as client:
        assert client.latest_checkpoint("job") == "job/model.ckpt-5"
        assert client.pull([vs.RemoteVariable(client, "global_step", vs.int64, ())]) == [5]
    with pytest.raises(TypeError, match="StopAtStepHook only"):
        not_hooks: list[Any] = [object()]
        tf.train.MonitoredTrainingSession(master=address, hooks=not_hooks)
