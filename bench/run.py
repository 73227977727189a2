"""varstore against what users would pick instead, in one run on this machine.

    python bench/run.py [--quick] [--out bench/results]

Starts a fresh `varstore serve --port 0`, a bare gRPC server, a raw TCP server and a
redis-server, each in its own process, runs every workload against them, and prints the
figures and the target ratios; writes them to OUT/results.json and draws OUT/throughput.png.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import disk
import numpy as np
import report
from floor import GrpcFloor, TcpFloor
from harness import MB, payload, rate, start_varstore, throughput, timed
from redis_baseline import RedisBaseline
from workloads import CheckpointWorkload, VarstoreWorkloads, floats, total_mb

from varstore.common.allocator import keep_freed_memory


@dataclass
class Config:
    """Sizes and durations of one run."""

    sizes_mb: list[int]
    repeats: int
    rate_seconds: float
    model_variables: int = 100
    embedding_rows: int = 1_000_000
    embedding_width: int = 64
    sparse_batch: int = 1024
    sparse_repeats: int = 200
    load_workers: int = 4
    load_seconds: float = 5.0
    checkpoint_rounds: int = 3
    checkpoint_shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def payload(self) -> int:
        """The headline payload: the largest size."""
        return self.sizes_mb[-1] * MB


FULL = Config(sizes_mb=[1, 4, 16, 64, 256], repeats=5, rate_seconds=3.0,
              checkpoint_shapes=[(32 * MB,)] * 8)
QUICK = Config(sizes_mb=[4, 16, 64], repeats=3, rate_seconds=1.0, embedding_rows=250_000,
               sparse_repeats=100, load_seconds=2.0, checkpoint_rounds=2,
               checkpoint_shapes=[(16 * MB,)] * 4)


# The chart's series whose value at the largest size is a headline figure.
HEADLINE = {
    ("varstore", "pull"): "vs.pull", ("varstore", "push"): "vs.push",
    ("gRPC one message", "pull"): "grpc.pull", ("gRPC one message", "push"): "grpc.push",
    ("gRPC stream", "pull"): "grpc.stream_pull", ("gRPC stream", "push"): "grpc.stream_push",
    ("raw TCP", "pull"): "tcp.pull", ("raw TCP", "push"): "tcp.push",
    ("Redis", "pull"): "redis.get", ("Redis", "push"): "redis.set",
}


class Run:
    """Collects figures, chart series and notes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.figures: dict[str, float] = {}
        self.notes: list[str] = []
        labels = ("varstore", "gRPC one message", "gRPC stream", "raw TCP", "Redis")
        self.series: dict[str, dict[str, list[float | None]]] = {
            d: {label: [] for label in labels} for d in ("pull", "push")}

    def step(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)


def small_ops(run: Run, wl: VarstoreWorkloads, grpc_floor: GrpcFloor,
              redis: RedisBaseline | None) -> None:
    s = run.config.rate_seconds
    run.step("1. small ops")
    run.figures["grpc.echo"] = rate(grpc_floor.echo, s)
    run.figures["vs.op"] = wl.op_rate(s)
    run.figures["vs.batched"] = wl.batched_rate(s)
    pipelined = wl.pipelined_rate(s)
    if pipelined is None:
        run.note("varstore.aio is not available: pipelined ops skipped")
    else:
        run.figures["vs.pipelined"] = pipelined
    if redis is not None:
        run.figures["redis.incr"] = rate(redis.incr, s)
        run.figures["redis.incr_pipelined"] = rate(lambda: redis.incr_pipelined(100), s, 100)


def transfers(run: Run, wl: VarstoreWorkloads, grpc_floor: GrpcFloor, tcp: TcpFloor,
              redis: RedisBaseline | None) -> None:
    c = run.config
    for size_mb in c.sizes_mb:
        run.step(f"2. pull and push of {size_mb} MB")
        _transfer(run, size_mb * MB, wl, grpc_floor, tcp, redis)
    for (label, direction), key in HEADLINE.items():
        value = run.series[direction][label][-1]
        if value is not None:
            run.figures[key] = value
    run.step(f"2. a model of {c.model_variables} variables, {c.payload // MB} MB in all")
    model = wl.model(c.payload, c.model_variables, c.repeats)
    run.figures["vs.model_pull"], run.figures["vs.model_push"] = model["pull"], model["push"]


def _transfer(run: Run, n: int, wl: VarstoreWorkloads, grpc_floor: GrpcFloor, tcp: TcpFloor,
              redis: RedisBaseline | None) -> None:
    """One point of the chart: every contender moving ``n`` bytes each way."""
    repeats = run.config.repeats
    data = payload(n)
    chunks = [data[i:i + MB] for i in range(0, n, MB)]
    measured = {
        ("gRPC one message", "pull"): lambda: grpc_floor.pull(n),
        ("gRPC one message", "push"): lambda: grpc_floor.push(data),
        ("gRPC stream", "pull"): lambda: grpc_floor.pull_stream(n),
        ("gRPC stream", "push"): lambda: grpc_floor.push_stream(chunks),
        ("raw TCP", "pull"): lambda: tcp.pull(n),
        ("raw TCP", "push"): lambda: tcp.push(data),
    }
    if redis is not None:
        redis.set(data)
        measured[("Redis", "pull")] = lambda: redis.get(n)
        measured[("Redis", "push")] = lambda: redis.set(data)
    for (label, direction), fn in measured.items():
        run.series[direction][label].append(throughput(n, timed(fn, repeats)))
    dense = wl.dense(n, repeats)
    for direction in ("pull", "push"):
        run.series[direction]["varstore"].append(dense[direction])
        if redis is None:
            run.series[direction]["Redis"].append(None)


def sparse(run: Run, wl: VarstoreWorkloads) -> None:
    c = run.config
    run.step(f"3. gather and scatter_add of {c.sparse_batch} rows of a "
             f"{c.embedding_rows:,} x {c.embedding_width} embedding")
    out = wl.sparse(c.embedding_rows, c.embedding_width, c.sparse_batch, c.sparse_repeats)
    run.figures["vs.op_ms"] = out["op"] * 1e3
    run.figures["vs.gather_ms"] = out["gather"] * 1e3
    run.figures["vs.scatter_ms"] = out["scatter"] * 1e3


def under_load(run: Run, wl: VarstoreWorkloads) -> None:
    c = run.config
    run.step(f"4. small-op latency, idle and while {c.load_workers} workers move "
             f"{c.payload // MB} MB")
    out = wl.under_load(c.payload, c.load_workers, c.load_seconds)
    for key in ("idle_p50", "idle_p99", "load_p50", "load_p99"):
        run.figures[f"vs.{key}_ms"] = out[key] * 1e3


def checkpoints(run: Run, work: Path) -> None:
    """Save and restore of each contender, in rounds: the disk slows down after a burst of
    writes, so whoever always went last would always lose. Each round rotates the order
    (each contender goes first once in three rounds); each figure is the median of its
    rounds."""
    c = run.config
    mb = total_mb(c.checkpoint_shapes)
    run.step(f"5. checkpoint of a {mb:.0f} MB store, {c.checkpoint_rounds} rounds")
    arrays = [floats(int(np.prod(s)) * 4, seed=i) for i, s in enumerate(c.checkpoint_shapes)]
    times: dict[str, list[float]] = {}
    peak = 0.0
    skipped: set[str] = set()

    def numpy_round(r: int) -> None:
        folder = work / "disk"
        folder.mkdir()
        times.setdefault("disk.write", []).append(disk.numpy_write(arrays, folder))
        times.setdefault("disk.read", []).append(disk.numpy_read(arrays, folder))
        shutil.rmtree(folder)

    def varstore_round(r: int) -> None:
        nonlocal peak
        out, why = varstore.round(f"bench/model-{r}")
        shutil.rmtree(work / "ckpt" / "bench", ignore_errors=True)
        if out is None:
            run.note(f"varstore checkpoints skipped: {why}")
            skipped.add("varstore")
            return
        times.setdefault("vs.save", []).append(out["save"])
        times.setdefault("vs.restore", []).append(out["restore"])
        peak = max(peak, out["peak_extra"])

    def tf_round(r: int) -> None:
        folder = work / "tf"
        folder.mkdir()
        tf, why = disk.tf_saver(c.checkpoint_shapes, folder)
        shutil.rmtree(folder)
        if tf is None:
            run.note(f"TensorFlow baseline skipped: {why}")
            skipped.add("tf")
            return
        times.setdefault("tf.save", []).append(tf["save"])
        times.setdefault("tf.restore", []).append(tf["restore"])

    server = start_varstore(work / "ckpt")
    varstore = CheckpointWorkload(server.address, server.pid, c.checkpoint_shapes)
    contenders = [("numpy", numpy_round), ("varstore", varstore_round), ("tf", tf_round)]
    try:
        for r in range(c.checkpoint_rounds):
            k = r % len(contenders)
            for name, measure in contenders[k:] + contenders[:k]:
                if name not in skipped:
                    measure(r)
    finally:
        varstore.close()
        server.stop()
    arrays.clear()
    for key, seconds in times.items():
        run.figures[key] = mb / statistics.median(seconds)
    if "vs.save" in times:
        run.figures["vs.save_extra_mb"] = peak / MB
        run.figures["vs.save_allowed_mb"] = max(
            int(np.prod(s)) for s in c.checkpoint_shapes) * 4 / MB + 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and fewer iterations (under a minute)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder for results.json and throughput.png")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    run = Run(config)
    # This process is a training worker pulling and pushing big tensors: it recycles freed
    # buffers, as `varstore serve` does (see varstore.common.allocator).
    keep_freed_memory()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="varstore-bench-"))
    redis, why = RedisBaseline.start()
    if redis is None:
        run.note(f"Redis baseline skipped: {why}")
    grpc_floor, tcp = GrpcFloor(), TcpFloor()
    server = start_varstore(work / "serve")
    wl = VarstoreWorkloads(server.address)
    steps: list[Callable[[], None]] = [
        lambda: small_ops(run, wl, grpc_floor, redis),
        lambda: transfers(run, wl, grpc_floor, tcp, redis),
        lambda: sparse(run, wl),
        lambda: under_load(run, wl),
    ]
    try:
        for step in steps:
            step()
    finally:
        wl.close()
        server.stop()
        grpc_floor.close()
        tcp.close()
        if redis is not None:
            redis.stop()
    try:
        checkpoints(run, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = report.ratios(run.figures)
    print()
    print(report.table(run.figures, results))
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "results.json", {
        "config": asdict(config), "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "platform": platform.platform()},
        "seconds": time.perf_counter() - started,
        "figures": run.figures, "ratios": results, "series": run.series, "notes": run.notes})
    report.chart(args.out / "throughput.png", run.series, [float(s) for s in config.sizes_mb])
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'throughput.png'} "
          f"in {time.perf_counter() - started:.0f} s")
    for text in run.notes:
        print(f"note: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
