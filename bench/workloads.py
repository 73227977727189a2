"""varstore's side of every workload, against a `varstore serve` child process."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

import numpy as np
from harness import MB, MemorySampler, percentile, rate, throughput, timed

import varstore as vs
from varstore.common.allocator import keep_freed_memory
from varstore.errors import OpError
from varstore.request import RequestBuilder

BATCH = 100


def floats(nbytes: int, seed: int = 0) -> np.ndarray:
    """A float32 vector of ``nbytes`` bytes of random values."""
    return np.random.default_rng(seed).random(nbytes // 4, dtype=np.float32)


class VarstoreWorkloads:
    """Workloads 1-4 through one client of one server."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = vs.connect(address)
        self.counter = self.client.get_variable("bench/counter", [], dtype=vs.int64,
                                                initializer=vs.zeros_initializer)

    def close(self) -> None:
        self.client.close()

    # --- 1. small atomic ops --------------------------------------------------------------

    def op_rate(self, seconds: float) -> float:
        """Blocking ``assign_add(1)`` calls per second."""
        return rate(lambda: self.counter.assign_add(1), seconds)

    def batched_rate(self, seconds: float) -> float:
        """assign_add ops per second, 100 to a request built with one RequestBuilder."""
        b = RequestBuilder()
        one = b.const(np.int64(1), vs.int64)
        for _ in range(BATCH):
            b.target(b.node("assign_add", [one], variable=self.counter.op_name))
        return rate(lambda: self.client.run(b), seconds, per_call=BATCH)

    def pipelined_rate(self, seconds: float) -> float | None:
        """assign_add ops per second with 100 in flight at once on one asyncio client."""
        try:
            import varstore.aio as aio
        except ImportError:
            return None

        async def measure() -> float:
            client = await aio.connect(self.address)
            try:
                counter = await client.get_variable("bench/counter", [], dtype=vs.int64)
                await asyncio.gather(*(counter.assign_add(1) for _ in range(BATCH)))
                n, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    await asyncio.gather(*(counter.assign_add(1) for _ in range(BATCH)))
                    n += BATCH
                return n / (time.perf_counter() - start)
            finally:
                await client.close()

        return asyncio.run(measure())

    def op_latencies(self, seconds: float) -> list[float]:
        """Latencies (s) of blocking ``assign_add(1)`` calls made for about ``seconds``."""
        out: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            self.counter.assign_add(1)
            out.append(time.perf_counter() - start)
        return out

    # --- 2. dense transfers ---------------------------------------------------------------

    def dense(self, nbytes: int, repeats: int) -> dict[str, float]:
        """MB/s of pulling and pushing one float32 variable of ``nbytes``."""
        value = floats(nbytes)
        var = self.client.get_variable(f"bench/dense_{nbytes}", value.shape,
                                       initializer=vs.zeros_initializer)
        push = throughput(nbytes, timed(lambda: self.client.push({var: value}), repeats))
        # Only the latest pull is kept, as a training loop would: its buffer gets reused.
        pulled: list[np.ndarray] = []

        def pull_once() -> None:
            pulled[:] = self.client.pull([var])

        pull = throughput(nbytes, timed(pull_once, repeats))
        assert np.array_equal(pulled[0], value)
        return {"pull": pull, "push": push}

    def model(self, nbytes: int, count: int, repeats: int) -> dict[str, float]:
        """MB/s of pulling and pushing ``count`` variables totalling ``nbytes`` in one call."""
        each = nbytes // count // 4 * 4
        values = [floats(each, seed=i) for i in range(count)]
        with self.client.variable_scope("bench/model"):
            variables = [self.client.get_variable(f"w{i}", v.shape,
                                                  initializer=vs.zeros_initializer)
                         for i, v in enumerate(values)]
        total = each * count
        push = throughput(total, timed(
            lambda: self.client.push(dict(zip(variables, values, strict=True))), repeats))
        pull = throughput(total, timed(lambda: self.client.pull(variables), repeats))
        return {"pull": pull, "push": push}

    # --- 3. sparse ------------------------------------------------------------------------

    def sparse(self, rows: int, width: int, batch: int, repeats: int) -> dict[str, float]:
        """Median seconds of a gather and of a scatter_add of ``batch`` random rows, and of
        a small op measured the same way."""
        emb = self.client.get_variable("bench/embedding", [rows, width],
                                       initializer=vs.zeros_initializer)
        rng = np.random.default_rng(1)
        idx = rng.integers(0, rows, batch)
        updates = rng.random((batch, width), dtype=np.float32)
        gather = timed(lambda: emb.gather(idx), repeats, warmup=5)
        scatter = timed(lambda: emb.scatter_add(idx, updates), repeats, warmup=5)
        op = timed(lambda: self.counter.assign_add(1), repeats, warmup=5)
        return {"gather": float(np.median(gather)), "scatter": float(np.median(scatter)),
                "op": float(np.median(op))}

    # --- 4. small ops under load ------------------------------------------------------------

    def under_load(self, nbytes: int, workers: int, seconds: float) -> dict[str, float]:
        """p50/p99 (s) of small ops when idle and while ``workers`` processes pull and push
        ``nbytes`` in a loop."""
        idle = self.op_latencies(seconds)
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        ready = ctx.Barrier(workers + 1)
        procs = [ctx.Process(target=_load_worker, args=(self.address, k, nbytes, stop, ready))
                 for k in range(workers)]
        for p in procs:
            p.start()
        try:
            ready.wait(timeout=300)
            loaded = self.op_latencies(seconds)
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=120)
        return {"idle_p50": percentile(idle, 50), "idle_p99": percentile(idle, 99),
                "load_p50": percentile(loaded, 50), "load_p99": percentile(loaded, 99),
                "load_ops": len(loaded)}


def _load_worker(address: str, k: int, nbytes: int, stop: Any, ready: Any) -> None:
    keep_freed_memory()
    with vs.connect(address) as client:
        value = floats(nbytes, seed=k)
        var = client.get_variable(f"bench/load_{k}", value.shape,
                                  initializer=vs.zeros_initializer)
        client.push({var: value})
        ready.wait()
        while not stop.is_set():
            client.pull([var])
            client.push({var: value})


class CheckpointWorkload:
    """Saves and restores float32 variables of ``shapes`` on a `varstore serve` child process,
    one round at a time (so that rounds can alternate with the baselines')."""

    def __init__(self, address: str, server_pid: int, shapes: list[tuple[int, ...]]) -> None:
        self.client = vs.connect(address)
        self.server_pid = server_pid
        for i, shape in enumerate(shapes):
            v = self.client.get_variable(f"ckpt/v{i}", shape, initializer=vs.zeros_initializer)
            self.client.push({v: floats(int(np.prod(shape)) * 4, seed=i).reshape(shape)})

    def round(self, prefix: str) -> tuple[dict[str, float] | None, str]:
        """Seconds of a save to ``prefix`` and of a restore from it, and the server's peak
        resident memory above its size before the save; None and why when checkpoints fail."""
        try:
            with MemorySampler(self.server_pid) as memory:
                before = memory.peak
                start = time.perf_counter()
                path = self.client.save(prefix)
                save = time.perf_counter() - start
            start = time.perf_counter()
            self.client.restore(path)
            restore = time.perf_counter() - start
        except OpError as e:
            return None, f"{type(e).__name__}: {e}"
        return {"save": save, "restore": restore, "peak_extra": float(memory.peak - before),
                "rss_before": float(before)}, ""

    def close(self) -> None:
        self.client.close()


def total_mb(shapes: list[tuple[int, ...]]) -> float:
    """MB of float32 variables of ``shapes``."""
    return sum(int(np.prod(s)) for s in shapes) * 4 / MB
