"""A tf.compat.v1 program trains on scikit-learn's digits with its variables on varstore.

    python examples/tf1_mnist_style.py                      # server, chief + 4 workers
    python examples/tf1_mnist_style.py --address HOST:PORT  # workers against a running server
    python examples/tf1_mnist_style.py --address HOST:PORT --task 2   # (re)start one worker

The model is ordinary TF1 code (``get_variable``, ``variable_scope``, ``nn``, ``losses``,
``AdamOptimizer``, ``MonitoredTrainingSession``); the varstore lines are the wrapped
optimizer and the hook::

    opt = vst.DistributedOptimizer(tf1.train.AdamOptimizer(1e-3))
    hooks = [vst.SyncHook(is_chief=task == 0), ...]

Each worker process computes the gradients of minibatches of its shard with TensorFlow and
pushes them; the server applies them with Adam and returns the new weights in the same round
trip. Task 0 is the chief: it initializes the model on the server (or restores the newest
checkpoint of the server's checkpoint folder), and at the end saves a checkpoint that
TensorFlow's ``Saver`` restores, and reports the test accuracy.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HIDDEN = 64
CLASSES = 10


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1797 8x8 digits (bundled, no download) scaled to [0, 1]; 20% held out."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, digits.target, test_size=0.2, random_state=0,
                                  stratify=digits.target))


def build_model(tf: Any, learning_rate: float, address: str) -> dict[str, Any]:
    """The 64-64-10 network in plain tf.compat.v1, trained through varstore."""
    import varstore.tensorflow as vst
    tf1 = tf.compat.v1
    x = tf1.placeholder(tf.float32, [None, 64], name="x")
    y = tf1.placeholder(tf.int64, [None], name="y")
    with tf1.variable_scope("hidden"):
        w1 = tf1.get_variable("weights", [64, HIDDEN],
                              initializer=tf1.glorot_uniform_initializer(seed=1))
        b1 = tf1.get_variable("biases", [HIDDEN], initializer=tf1.zeros_initializer())
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1)
    with tf1.variable_scope("softmax"):
        w2 = tf1.get_variable("weights", [HIDDEN, CLASSES],
                              initializer=tf1.glorot_uniform_initializer(seed=2))
        b2 = tf1.get_variable("biases", [CLASSES], initializer=tf1.zeros_initializer())
        logits = tf.matmul(hidden, w2) + b2
    loss = tf1.losses.sparse_softmax_cross_entropy(y, logits)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))
    global_step = tf1.train.get_or_create_global_step()
    opt = vst.DistributedOptimizer(tf1.train.AdamOptimizer(learning_rate), client=address)
    train_op = opt.minimize(loss, global_step=global_step)
    return {"x": x, "y": y, "loss": loss, "accuracy": accuracy, "train_op": train_op,
            "global_step": global_step}


def say(task: int, text: str) -> None:
    """One line, prefixed with the task, written at once (workers share a terminal)."""
    sys.stdout.write(f"worker {task}: {text}\n")
    sys.stdout.flush()


def run_worker(args: argparse.Namespace) -> None:
    """One worker: trains until the global step reaches ``--steps``."""
    import tensorflow as tf

    import varstore as vs
    import varstore.tensorflow as vst
    tf1 = tf.compat.v1
    x_train, x_test, y_train, y_test = load_data()
    shard = np.arange(args.task, len(y_train), args.workers)
    rng = np.random.default_rng(args.task)
    with tf.Graph().as_default():
        model = build_model(tf, args.learning_rate, args.address)
        hooks = [vst.SyncHook(client=args.address, is_chief=args.task == 0, timeout=300),
                 tf1.train.StopAtStepHook(last_step=args.steps)]
        steps, started = 0, time.monotonic()
        with tf1.train.MonitoredTrainingSession(hooks=hooks) as sess:
            while not sess.should_stop():
                batch = rng.choice(shard, args.batch_size, replace=False)
                _, loss, step = sess.run(
                    [model["train_op"], model["loss"], model["global_step"]],
                    {model["x"]: x_train[batch], model["y"]: y_train[batch]})
                steps += 1
                if args.task == 0 and steps % args.log_every == 0:
                    say(0, f"step {step:5d}  loss {loss:.3f}  "
                           f"{steps / (time.monotonic() - started):.0f} own steps/s")
            # The stop hook ended the hooked runs; a step function still reaches the session.
            test, step = sess.run_step_fn(lambda step_context: step_context.session.run(
                [model["accuracy"], model["global_step"]],
                {model["x"]: x_test, model["y"]: y_test}))
    if args.task == 0:
        with vs.connect(args.address) as client:
            # The session's global_step is this worker's copy, as of its last step; the
            # other workers may have moved the server's on since. Name the checkpoint after
            # the server's.
            step = int(vs.train.get_or_create_global_step(client).numpy())
            path = client.save("model.ckpt", global_step=step)
        say(0, f"saved {path}")
        say(0, f"final step {step}  test accuracy {test:.3f}")
    else:
        say(args.task, f"done after {steps} steps, global step {step}")


def start_server(checkpoint_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Starts ``varstore serve`` on a free local port; returns it and its address."""
    server = subprocess.Popen(
        [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--checkpoint-dir", str(checkpoint_dir)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        match = re.search(r"serving on [^:]+:(\d+)", line)
        if match:
            return server, f"127.0.0.1:{match.group(1)}"
    raise SystemExit(f"the server did not start (exit code {server.wait()})")


def launch(args: argparse.Namespace) -> int:
    """Starts a server (unless ``--address``) and the worker processes; returns how many
    failed."""
    server = None
    if args.address is None:
        server, args.address = start_server(args.checkpoint_dir)
        print(f"server on {args.address}, checkpoints in {args.checkpoint_dir}", flush=True)
    flags = ["--address", args.address, "--workers", str(args.workers), "--steps",
             str(args.steps), "--batch-size", str(args.batch_size), "--learning-rate",
             str(args.learning_rate), "--log-every", str(args.log_every)]
    workers = [subprocess.Popen([sys.executable, __file__, *flags, "--task", str(task)])
               for task in range(args.workers)]
    failed = sum(w.wait() != 0 for w in workers)
    if server is not None:
        server.terminate()
        server.wait()
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="a running server (default: start one)")
    parser.add_argument("--task", type=int, help="run only this worker (0 is the chief)")
    parser.add_argument("--workers", type=int, default=5,
                        help="worker processes, the chief included")
    parser.add_argument("--steps", type=int, default=1500, help="global steps to train to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.005)
    parser.add_argument("--log-every", type=int, default=100, help="chief steps between reports")
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("tf1-digits-checkpoints"),
                        help="the started server's checkpoint folder")
    args = parser.parse_args(argv)
    if args.task is None:
        return 1 if launch(args) else 0
    if args.address is None:
        parser.error("--task needs --address")
    run_worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
