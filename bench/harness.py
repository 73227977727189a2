"""Shared pieces of the benchmark: timing, child processes, memory sampling, payloads."""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MB = 1 << 20


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def rate(fn: Callable[[], object], seconds: float, per_call: int = 1) -> float:
    """Calls ``fn`` for about ``seconds``; returns the operations per second it sustained."""
    fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n * per_call / (now - start)


def throughput(nbytes: int, times: list[float]) -> float:
    """MB/s for moving ``nbytes`` in the median of ``times``."""
    return nbytes / MB / statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by nearest rank."""
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


@dataclass
class VarstoreServer:
    """A `varstore serve --port 0` child process."""

    process: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after 30 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_varstore(checkpoint_dir: Path) -> VarstoreServer:
    """Starts a fresh `varstore serve` on a free port and waits for the port it prints."""
    cmd = [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--checkpoint-dir", str(checkpoint_dir), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise RuntimeError("varstore serve exited before printing its port")
        m = re.search(r"serving on [^:]+:(\d+)", line)
        if m:
            return VarstoreServer(proc, int(m.group(1)))


def read_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of process ``pid`` in bytes, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@dataclass
class MemorySampler:
    """Samples a process's VmRSS every few milliseconds in a thread; keeps the peak."""

    pid: int
    interval: float = 0.002
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self.peak = read_memory(self.pid)["VmRSS"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, read_memory(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, read_memory(self.pid)["VmRSS"])


def payload(nbytes: int) -> bytes:
    """``nbytes`` of non-constant data (so nothing can cheat by compressing)."""
    block = os.urandom(1 << 16)
    reps, rest = divmod(nbytes, len(block))
    return block * reps + block[:rest]
