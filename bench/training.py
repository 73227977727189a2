"""Training throughput: varstore against TensorFlow's own parameter server, same machine, same run.

    python bench/training.py [--workers 4] [--model small|large|both] [--seconds 20]

TensorFlow's side is the TF1 recipe: ``tf.compat.v1.train.Server`` with one ps task and N
worker tasks, ``replica_device_setter``, ``AdamOptimizer.minimize``, ``MonitoredTrainingSession``
with ``device_filters`` (each worker talks only to the ps). varstore's side runs the same model,
batch, optimizer and workers, with TensorFlow computing the gradients through
``varstore.tensorflow.DistributedOptimizer`` against one ``varstore serve``. Every worker is a
process. Reported: global steps per second in the window where every worker trains (from the
last worker's first step to the first worker's last step).

Models: ``small`` is the 64-64-10 digits network, batch 64 (latency-bound); ``large`` an MLP
of about 25M parameters (1024-4096-4096-1024-10), batch 32 (bandwidth-bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODELS = {"small": ([64, 64, 10], 64), "large": ([1024, 4096, 4096, 1024, 10], 32)}


def build(tf: Any, model: str) -> tuple[Any, Any, Any, Any]:
    """The MLP's placeholders, loss and global step, in plain tf.compat.v1."""
    tf1 = tf.compat.v1
    sizes, _ = MODELS[model]
    x = tf1.placeholder(tf.float32, [None, sizes[0]])
    y = tf1.placeholder(tf.int64, [None])
    out = x
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        with tf1.variable_scope(f"layer{i}"):
            w = tf1.get_variable("weights", [n_in, n_out],
                                 initializer=tf1.glorot_uniform_initializer(seed=i))
            b = tf1.get_variable("biases", [n_out], initializer=tf1.zeros_initializer())
        out = tf.matmul(out, w) + b
        if i < len(sizes) - 2:
            out = tf.nn.relu(out)
    loss = tf1.losses.sparse_softmax_cross_entropy(y, out)
    return x, y, loss, tf1.train.get_or_create_global_step()


def batches(model: str, task: int) -> tuple[np.ndarray, np.ndarray]:
    """A worker's pool of inputs: the digits for ``small``, random data for ``large``."""
    sizes, _ = MODELS[model]
    if model == "small":
        from sklearn.datasets import load_digits
        digits = load_digits()
        return (digits.data / 16.0).astype(np.float32), digits.target
    rng = np.random.default_rng(task)
    return rng.normal(size=(512, sizes[0])).astype(np.float32), rng.integers(0, 10, 512)


def run_worker(args: argparse.Namespace) -> None:
    """One worker: trains until every worker has started and ``--seconds`` more passed, and
    writes the wall-clock time of each of its steps to ``--out``."""
    import tensorflow as tf
    tf1 = tf.compat.v1
    task, spec = args.task, json.loads(args.cluster)
    x_all, y_all = batches(args.model, task)
    rng = np.random.default_rng(task)
    _, batch = MODELS[args.model]
    quiet = {"save_checkpoint_secs": None, "save_summaries_steps": None,
             "save_summaries_secs": None, "log_step_count_steps": None}
    with tf.Graph().as_default():
        if args.system == "tf":
            cluster = tf.train.ClusterSpec(spec)
            server = tf1.train.Server(cluster, job_name="worker", task_index=task)
            with tf1.device(tf1.train.replica_device_setter(
                    worker_device=f"/job:worker/task:{task}", cluster=cluster)):
                x, y, loss, step = build(tf, args.model)
                train_op = tf1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step)
            config = tf1.ConfigProto(device_filters=["/job:ps", f"/job:worker/task:{task}"])
            session = tf1.train.MonitoredTrainingSession(
                master=server.target, is_chief=task == 0, config=config, **quiet)
        else:
            import varstore.tensorflow as vst
            x, y, loss, step = build(tf, args.model)
            opt = vst.DistributedOptimizer(tf1.train.AdamOptimizer(1e-3), client=spec)
            train_op = opt.minimize(loss, global_step=step)
            session = tf1.train.MonitoredTrainingSession(
                hooks=[vst.SyncHook(client=spec, is_chief=task == 0)], **quiet)
        times: list[float] = []
        started = Path(args.out).with_suffix(".started")
        deadline = None
        with session as sess:
            while deadline is None or times[-1] < deadline:
                pick = rng.integers(0, len(y_all), batch)
                sess.run(train_op, {x: x_all[pick], y: y_all[pick]})
                times.append(time.time())
                if len(times) == 1:
                    started.touch()
                if deadline is None and len(times) % 10 == 0 and \
                        len(list(started.parent.glob("*.started"))) == args.workers:
                    deadline = times[-1] + args.seconds
    Path(args.out).write_text(json.dumps(times))


def window_rate(all_times: list[list[float]]) -> tuple[float, float]:
    """Global steps per second while every worker trains, and that window's seconds."""
    start = max(t[0] for t in all_times)
    end = min(t[-1] for t in all_times)
    steps = sum(sum(1 for s in t if start < s <= end) for t in all_times)
    return steps / (end - start), end - start


def measure(system: str, model: str, workers: int, seconds: float) -> tuple[float, float]:
    """Starts the servers and workers of ``system`` (``tf`` or ``varstore``); returns its
    global steps per second and the window they were measured in."""
    with tempfile.TemporaryDirectory() as work:
        servers: list[subprocess.Popen[bytes]] = []
        if system == "tf":
            ps = f"localhost:{free_port()}"
            cluster: Any = {"ps": [ps],
                            "worker": [f"localhost:{free_port()}" for _ in range(workers)]}
            code = ("import os, sys, json, tensorflow as tf; tf1 = tf.compat.v1\n"
                    "s = tf1.train.Server(tf.train.ClusterSpec(json.loads(sys.argv[1])), "
                    "job_name='ps', task_index=0); s.join()")
            servers.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(cluster)]))
        else:
            port = free_port()
            cluster = f"127.0.0.1:{port}"
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "varstore.cli", "serve", "--port", str(port),
                 "--checkpoint-dir", work], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        outs = [Path(work) / f"worker{task}.json" for task in range(workers)]
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--system", system, "--model", model, "--workers",
             str(workers), "--seconds", str(seconds), "--task", str(task), "--cluster",
             json.dumps(cluster), "--out", str(out)]) for task, out in enumerate(outs)]
        failed = [p.wait() for p in procs]
        for server in servers:
            server.terminate()
            server.wait()
        if any(failed):
            raise SystemExit(f"{system} workers failed: exit codes {failed}")
        return window_rate([json.loads(out.read_text()) for out in outs])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--model", choices=["small", "large", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="seconds of training once every worker runs")
    parser.add_argument("--system", choices=["tf", "varstore"], help=argparse.SUPPRESS)
    parser.add_argument("--task", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.task is not None:
        run_worker(args)
        return 0
    models = ["small", "large"] if args.model == "both" else [args.model]
    for model in models:
        rates = {}
        for system in ("tf", "varstore"):
            rates[system], window = measure(system, model, args.workers, args.seconds)
            print(f"{model:5s} {system:8s} {args.workers} workers: "
                  f"{rates[system]:7.1f} global steps/s ({window:.1f} s window)", flush=True)
        print(f"{model:5s} varstore / TensorFlow PS: {rates['varstore'] / rates['tf']:.2f}x",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
