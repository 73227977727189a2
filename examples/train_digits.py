"""Trains a small neural network on scikit-learn's digits with four workers and one server.

    python examples/train_digits.py                       # server + 4 workers, to step 1500
    python examples/train_digits.py --address HOST:PORT   # workers against a running server
    python examples/train_digits.py --address HOST:PORT --task 2   # (re)start one worker

Each worker computes the loss and gradients of a minibatch of its shard with numpy and pushes
the gradients; the server applies them with Adam (asynchronously, or averaged over all
workers per step with ``--sync``) and returns the new weights in the same round trip
(push-pull). Worker 0 is the chief: it restores the
newest checkpoint of the server's checkpoint folder (or initializes the model), saves a
checkpoint every ``--save-secs`` seconds and at the end, and reports progress. A worker that
is killed can be started again with ``--task``; when the server is restarted (``varstore
serve --restore latest``), the workers reconnect and training continues at the checkpoint's
global step. A worker started while the server is down waits for it; each gives up after
``--reconnect-secs`` without a server.

What a worker retries: ``UnavailableError``, which a stopping server answers for every call it
did not run ("the server is shutting down; nothing was changed") and a client raises for a
server it cannot reach, and ``CancelledError``, which ends a call the server cut after its
grace period (10 s) or one in flight when the server crashed: such a call's gradients may or
may not have been applied, and one step pushed twice or lost does not matter to SGD (code that
must know, such as a counter, reads the variable back).
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import varstore as vs
from varstore.errors import (
    CancelledError,
    FailedPreconditionError,
    NotFoundError,
    UnavailableError,
)

HIDDEN = 64
CLASSES = 10


@dataclass
class Data:
    """Features scaled to [0, 1] and labels, split into a training and a test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data() -> Data:
    """The 1797 8x8 digits of scikit-learn (bundled, no download), 20% held out for testing."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    return Data(x_train, y_train, x_test, y_test)


def build_model(client: vs.Client) -> list[vs.RemoteVariable]:
    """The variables of a 64-64-10 network and the global step, created uninitialized (the
    chief initializes or restores them) or bound to the server's."""
    with client.deferred_initialization():
        with client.variable_scope("hidden"):
            w1 = client.get_variable("weights", [64, HIDDEN],
                                     initializer=vs.glorot_uniform_initializer(seed=1))
            b1 = client.get_variable("biases", [HIDDEN], initializer=vs.zeros_initializer)
        with client.variable_scope("softmax"):
            w2 = client.get_variable("weights", [HIDDEN, CLASSES],
                                     initializer=vs.glorot_uniform_initializer(seed=2))
            b2 = client.get_variable("biases", [CLASSES], initializer=vs.zeros_initializer)
        step = vs.train.get_or_create_global_step(client)
    return [w1, b1, w2, b2, step]


def forward(params: list[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden activations and class probabilities."""
    w1, b1, w2, b2 = params
    hidden = np.maximum(x @ w1 + b1, 0.0)
    logits = hidden @ w2 + b2
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return hidden, probs


def loss_and_gradients(params: list[np.ndarray], x: np.ndarray, y: np.ndarray
                       ) -> tuple[float, float, list[np.ndarray]]:
    """Mean cross-entropy, accuracy and the gradients of the loss for each parameter."""
    w1, b1, w2, b2 = params
    hidden, probs = forward(params, x)
    n = len(y)
    loss = float(-np.log(probs[np.arange(n), y] + 1e-12).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    d_logits = probs.copy()
    d_logits[np.arange(n), y] -= 1.0
    d_logits /= n
    d_hidden = (d_logits @ w2.T) * (hidden > 0)
    grads = [x.T @ d_hidden, d_hidden.sum(axis=0), hidden.T @ d_logits, d_logits.sum(axis=0)]
    return loss, accuracy, grads


def accuracy(params: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of ``x`` classified as ``y``."""
    return float((forward(params, x)[1].argmax(axis=1) == y).mean())


def start(client: vs.Client, task: int, say: Callable[[str], None]) -> list[vs.RemoteVariable]:
    """Builds the model; the chief restores or initializes it and says which, the others wait
    for that."""
    variables = build_model(client)
    if task == 0:
        restored = client.initialize_or_restore(variables)
        if restored:
            # The checkpoint's step, not the variable's: the other workers start training as
            # soon as the model is restored.
            say(f"resumed from {restored}: training continues at step "
                f"{restored.rsplit('-', 1)[-1]}")
        else:
            say("no checkpoint to resume from: starting at step 0")
    else:
        client.wait_until_ready(variables, timeout=300)
    return variables


def connect(args: argparse.Namespace, say: Callable[[str], None]) -> vs.Client:
    """A client of ``--address``, waiting up to ``--reconnect-secs`` for a server that is not
    up yet (or restarting). Raises ``UnavailableError`` when none answered by then."""
    deadline = time.monotonic() + args.reconnect_secs
    waiting = False
    while True:
        try:
            return vs.connect(args.address)
        except UnavailableError as e:
            if time.monotonic() >= deadline:
                raise
            if not waiting:
                say(f"waiting up to {args.reconnect_secs:g}s for the server: {e}")
                waiting = True
        time.sleep(1.0)


class Log:
    """Prints a worker's lines, prefixed with its task."""

    def __init__(self, task: int) -> None:
        self.prefix = f"worker {task}:"

    def __call__(self, text: str) -> None:
        # One write per line, so that lines of workers sharing a terminal never interleave.
        sys.stdout.write(f"{self.prefix} {text}\n")
        sys.stdout.flush()


def run_worker(args: argparse.Namespace) -> None:
    """One worker's training loop, until the global step reaches ``--steps``."""
    task, say = args.task, Log(args.task)
    data = load_data()
    shard = np.arange(task, len(data.y_train), args.workers)
    rng = np.random.default_rng(task)
    optimizer: vs.train.Optimizer = vs.train.AdamOptimizer(args.learning_rate)
    if args.sync:
        optimizer = vs.train.SyncReplicasOptimizer(optimizer, args.workers, timeout=300)
    with connect(args, say) as client:
        variables: list[vs.RemoteVariable] | None = None
        saver = vs.train.CheckpointSaver(client, save_secs=args.save_secs) if task == 0 \
            else None
        reported = -1
        down_since: float | None = None
        # The weights: pulled at the start and after an error, else from the last push-pull.
        params: list[np.ndarray] | None = None
        step = 0
        while True:
            try:
                if variables is None:
                    variables = start(client, task, say)
                if params is None:
                    *params, pulled_step = client.pull(variables)
                    step = int(pulled_step)
                if down_since is not None:
                    say(f"reconnected at global step {step}")
                    down_since = None
                if step >= args.steps:
                    break
                batch = rng.choice(shard, args.batch_size, replace=False)
                loss, batch_accuracy, grads = loss_and_gradients(
                    params, data.x_train[batch], data.y_train[batch])
                step, params = client.apply_gradients(
                    optimizer, dict(zip(variables[:4], grads, strict=True)),
                    global_step=variables[4], local_step=step if args.sync else None,
                    fetch=variables[:4])
                if saver is not None:
                    saver.maybe_save(step)
                if task == 0 and step // args.log_every > reported:
                    reported = step // args.log_every
                    test = accuracy(client.pull(variables[:4]), data.x_test, data.y_test)
                    say(f"step {step:5d}  loss {loss:.3f}  batch accuracy "
                        f"{batch_accuracy:.3f}  test accuracy {test:.3f}")
            except (UnavailableError, CancelledError) as e:
                params = None
                if down_since is None:
                    down_since = time.monotonic()
                    say(f"{type(e).__name__}: {e}; retrying for up to "
                        f"{args.reconnect_secs:g}s")
                elif time.monotonic() - down_since > args.reconnect_secs:
                    raise
                time.sleep(1.0)
            except (NotFoundError, FailedPreconditionError):
                say("the server lost the model (restarted without --restore?); starting over")
                params = variables = None
        if saver is not None:
            *params, pulled_step = client.pull(variables)
            step = int(pulled_step)
            saver.save(step)
            say(f"final step {step}  test accuracy "
                f"{accuracy(params, data.x_test, data.y_test):.3f}")
        else:
            say(f"done at step {step}")


def start_server(checkpoint_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Starts ``varstore serve`` on a free local port; returns it and its address."""
    server = subprocess.Popen(
        [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
         "--checkpoint-dir", str(checkpoint_dir)],
        stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        match = re.search(r"serving on [^:]+:(\d+)", line)
        if match:
            return server, f"127.0.0.1:{match.group(1)}"
    raise SystemExit(f"the server did not start (exit code {server.wait()})")


def launch(args: argparse.Namespace) -> int:
    """Starts a server (unless ``--address``) and ``--workers`` worker processes; returns
    the number of workers that failed."""
    server = None
    if args.address is None:
        server, args.address = start_server(args.checkpoint_dir)
        print(f"server on {args.address}, checkpoints in {args.checkpoint_dir}", flush=True)
    flags = ["--address", args.address, "--workers", str(args.workers), "--steps",
             str(args.steps), "--batch-size", str(args.batch_size), "--learning-rate",
             str(args.learning_rate), "--save-secs", str(args.save_secs), "--log-every",
             str(args.log_every), "--reconnect-secs", str(args.reconnect_secs)]
    flags += ["--sync"] if args.sync else []
    workers = [subprocess.Popen([sys.executable, __file__, *flags, "--task", str(task)])
               for task in range(args.workers)]
    print("workers:", " ".join(f"{task}=pid {w.pid}" for task, w in enumerate(workers)),
          flush=True)
    failed = sum(w.wait() != 0 for w in workers)
    if server is not None:
        server.terminate()
        server.wait()
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--address", help="a running server (default: start one)")
    parser.add_argument("--task", type=int, help="run only this worker (0 is the chief)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1500, help="global steps to train to")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.005)
    parser.add_argument("--sync", action="store_true",
                        help="average the gradients of all workers in each step")
    parser.add_argument("--save-secs", type=float, default=10.0,
                        help="seconds between the chief's checkpoints")
    parser.add_argument("--log-every", type=int, default=100, help="steps between reports")
    parser.add_argument("--reconnect-secs", type=float, default=120.0,
                        help="how long workers retry while the server is down")
    parser.add_argument("--checkpoint-dir", type=Path,
                        default=Path("digits-checkpoints"),
                        help="the started server's checkpoint folder")
    args = parser.parse_args(argv)
    if args.task is None:
        return 1 if launch(args) else 0
    if args.address is None:
        parser.error("--task needs --address")
    logging.basicConfig(level=logging.INFO, format=f"worker {args.task}: %(message)s",
                        stream=sys.stdout)
    run_worker(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
