"""Keras ``model.fit`` on scikit-learn's digits with two workers and the weights on varstore.

    python examples/keras_fit.py                      # a server and two worker processes
    python examples/keras_fit.py --address HOST:PORT  # workers against a running server

The model is plain Keras; the varstore line is the optimizer::

    model.compile(optimizer=vst.DistributedOptimizer(keras.optimizers.Adam(1e-3)), ...)

Each worker fits its half of the training set; every step pushes the gradients to the server,
which applies them with Adam and returns the new weights in the same round trip. Worker 0 is
the chief: it initializes the weights on the server (the other waits for that), and at the
end saves a checkpoint in TensorFlow's format and reports the test accuracy of the server's
weights.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def run_worker(args: argparse.Namespace) -> None:
    """One worker: fits its shard for ``--epochs`` epochs."""
    import keras

    import varstore as vs
    import varstore.tensorflow as vst
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    shard = np.arange(args.task, len(y_train), args.workers)
    keras.utils.set_random_seed(args.task)
    model = keras.Sequential([keras.Input((64,)),
                              keras.layers.Dense(64, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="softmax")], name="digits")
    # model=: its non-trainable variables (none here; BatchNormalization's) go to the server.
    opt = vst.DistributedOptimizer(keras.optimizers.Adam(args.learning_rate),
                                   client=args.address, is_chief=args.task == 0, model=model)
    model.compile(optimizer=opt, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train[shard], y_train[shard], batch_size=args.batch_size, epochs=args.epochs,
              verbose=0)
    steps = int(opt.iterations.numpy())
    print(f"worker {args.task}: done at global step {steps}", flush=True)
    if args.task != 0:
        return
    with vs.connect(args.address) as client:
        names = [v.path for v in model.trainable_variables]
        handles = [vs.RemoteVariable(client, n, vs.float32, tuple(v.shape))
                   for n, v in zip(names, model.trainable_variables, strict=True)]
        for var, value in zip(model.trainable_variables, client.pull(handles), strict=True):
            var.assign(value)
        step = int(vs.train.get_or_create_global_step(client).numpy())
        print(f"worker 0: saved {client.save('model.ckpt', global_step=step)}", flush=True)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"worker 0: final step {step}  test accuracy {accuracy:.3f}", flush=True)


def launch(args: argparse.Namespace) -> int:
    """Starts a server (unless ``--address``) and the workers; returns how many failed."""
    server = None
    if args.address is None:
        server = subprocess.Popen(
            [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port",
             "0", "--checkpoint-dir", str(args.checkpoint_dir)], stdout=subprocess.PIPE,
            text=True)
        assert server.stdout is not None
        for line in server.stdout:
            match = re.search(r"serving on [^:]+:(\d+)", line)
            if match:
                args.address = f"127.0.0.1:{match.group(1)}"
                break
        else:
            raise SystemExit(f"the server did not start (exit code {server.wait()})")
    flags = ["--address", args.address, "--workers", str(args.workers), "--epochs",
             str(args.epochs), "--batch-size", str(args.batch_size), "--learning-rate",
             str(args.learning_rate)]
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
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("keras-checkpoints"),
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
