"""The disk's own speed for checkpoint-sized data: numpy.tofile + fsync and numpy.fromfile,
and TensorFlow's tf.compat.v1.train.Saver (in a child process) when TensorFlow is installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def numpy_write(arrays: list[np.ndarray], folder: Path) -> float:
    """Seconds to write ``arrays`` with ``tofile`` into one file and fsync it."""
    path = folder / "arrays.bin"
    start = time.perf_counter()
    with open(path, "wb") as f:
        for a in arrays:
            a.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def numpy_read(arrays: list[np.ndarray], folder: Path) -> float:
    """Seconds to read the file :func:`numpy_write` wrote back with ``fromfile``."""
    start = time.perf_counter()
    with open(folder / "arrays.bin", "rb") as f:
        for a in arrays:
            np.fromfile(f, dtype=a.dtype, count=a.size)
    return time.perf_counter() - start


def tf_saver(shapes: list[tuple[int, ...]], folder: Path) -> tuple[dict[str, float] | None, str]:
    """Seconds TensorFlow's Saver takes to save (with an fsync of its files) and restore float32
    variables of ``shapes``; None and the reason when TensorFlow is missing or fails."""
    try:
        out = subprocess.run(
            [sys.executable, str(HERE / "tf_saver.py"), str(folder), json.dumps(shapes)],
            capture_output=True, text=True, timeout=900,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        return None, "TensorFlow's Saver took over 15 minutes"
    if out.returncode == 3:
        return None, "tensorflow is not installed"
    if out.returncode != 0:
        return None, f"TensorFlow's Saver failed: {out.stderr.strip().splitlines()[-1:]}"
    return json.loads(out.stdout.strip().splitlines()[-1]), ""
