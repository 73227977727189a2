"""`varstore status` against a cluster of real shard processes: every shard's health, size and
load as the shard measures it, and a shard that is down shown as such with exit code 1."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import varstore as vs
from tests.conftest import stop_server_process
from tests.process.test_cluster import connected, start_cluster
from varstore.request import RequestBuilder

SHARD = (r"  shard {task} {address}: serving, {variables} variables, {nbytes} bytes, "
         r"\d+\.\d requests/s, {in_flight} in flight, CPU \d+% of one core, \d+ clients, "
         r"up \d+s")


def _status(address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "varstore.cli", "status", "--address", address],
                          capture_output=True, text=True, timeout=120)


def test_status_shows_every_shards_size_load_and_health(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    waiter = None
    try:
        with connected(cluster.address) as client:
            with client.device("/job:ps/task:0"):
                client.Variable(np.zeros(100, np.float32), name="w")
            with client.device("/job:ps/task:1"):
                client.Variable(np.int64(0), name="global_step")
                client.Variable(np.zeros(10, np.float64), name="b")
        # A call that waits on shard 1 (for a synchronous step that never comes).
        shard1 = vs.Client(cluster.addresses[1])
        wait = RequestBuilder()
        wait.fetch(wait.node("sync_wait", group="global_step", generation=0, timeout=120.0))
        waiter = threading.Thread(target=lambda: _ignore_errors(lambda: shard1.run(wait)))
        waiter.start()
        deadline = time.monotonic() + 60
        while "1 in flight" not in (done := _status(cluster.address)).stdout:
            assert time.monotonic() < deadline, done.stdout
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[:4] == ["shards:           2 (2 serving)", "variables:        3",
                             "bytes stored:     488",
                             lines[3]]  # the load: summed over shards
        assert re.fullmatch(r"load:             \d+\.\d requests/s, 1 in flight", lines[3])
        assert re.fullmatch(SHARD.format(task=0, address=re.escape(cluster.addresses[0]),
                                         variables=1, nbytes=400, in_flight=0), lines[7]), lines
        assert re.fullmatch(SHARD.format(task=1, address=re.escape(cluster.addresses[1]),
                                         variables=2, nbytes=88, in_flight=1), lines[8]), lines
        # Shard 1 down: the rest is shown, and the exit code says one is not serving.
        os.kill(cluster.pids[1], signal.SIGKILL)
        down = _status(cluster.address)
        assert down.returncode == 1
        out = down.stdout.splitlines()
        assert out[0] == "shards:           2 (1 serving)"
        assert re.fullmatch(SHARD.format(task=0, address=re.escape(cluster.addresses[0]),
                                         variables=1, nbytes=400, in_flight=0), out[7]), out
        assert out[8].startswith(f"  shard 1 {cluster.addresses[1]}: UNAVAILABLE (")
        assert out[9] == "1 of 2 shards not serving (exit code 1)"
        shard1.close()
    finally:
        stop_server_process(cluster.server)
        if waiter is not None:
            waiter.join(timeout=60)


def _ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(vs.errors.OpError):  # the shard is killed while it waits
        call()
