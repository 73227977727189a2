"""varstore on 1, 2 and 4 shards (`varstore serve --shards N`), on this machine.

    python bench/cluster.py [--shards 1 2 4] [--repeat 3] [--seconds 3] [--clients 4]
                            [--model-mb 256] [--rounds 2]

For each shard count it starts a fresh cluster and measures, from worker processes:
small ops/s (every client adds to its own counter, the counters spread over the shards), the
shards' CPU per small op, and pull + push of a 100-variable model by two workers: aggregate
MB/s moved, the shards' CPU per request and per MB moved, the workers' CPU per MB and how busy
the whole machine was meanwhile (1.0: every core busy, with whatever else runs on it). CPU
times come from /proc. Each repetition runs every shard count once, in order; the ratios to one
shard are taken within a repetition and the summary gives their medians. Prints one line per
shard count and repetition, then the medians, and writes OUT/cluster.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import varstore as vs
from varstore.common.allocator import keep_freed_memory

MB = 1 << 20
# Workers start as fresh interpreters: the parent has used gRPC, and a process forked from one
# can hang in its first channel (gRPC's threads held locks at the fork).
SPAWN = mp.get_context("spawn")
SHARD_LINE = re.compile(r"shard \d+ \([^,]+, pid (\d+)\)")


def start_cluster(shards: int, folder: str) -> tuple[subprocess.Popen[str], str, list[int]]:
    """`varstore serve --shards N --port 0`: the process, shard 0's address, shard pids."""
    cmd = [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--shards", str(shards), "--checkpoint-dir", folder, "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"serving on (\S+?) ", line) or re.search(r"serving on (\S+)", line)
    if m is None:
        proc.kill()
        raise RuntimeError(f"cluster did not start: {line!r}")
    pids = []
    for _ in range(shards):
        found = SHARD_LINE.search(proc.stdout.readline())
        assert found is not None
        pids.append(int(found.group(1)))
    return proc, m.group(1), pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _small_ops(address: str, k: int, seconds: float, start: Any, out: Any) -> None:
    with vs.connect(address) as client:
        counter = client.Variable(0, name=f"counter{k}", dtype=vs.int64)
        start.wait()
        n = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            counter.assign_add(1)
            n += 1
        out.put(n)


def machine_busy() -> tuple[int, int]:
    """Busy and total clock ticks of every CPU so far (from /proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


def _pull_push(address: str, names: list[str], rounds: int, start: Any, out: Any) -> None:
    keep_freed_memory()  # as README "Benchmarks" says a worker moving big tensors should
    with vs.connect(address) as client:
        with client.variable_scope("", reuse=True):
            variables = [client.get_variable(n, shape=None) for n in names]
        start.wait()
        began, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            values = client.pull(variables)
            client.push(dict(zip(variables, values, strict=True)))
        out.put((time.perf_counter() - began, time.process_time() - cpu))


def _parallel(target: Any, jobs: list[tuple[Any, ...]], probe: Callable[[], Any]
              ) -> tuple[list[Any], Any, Any]:
    """Runs ``target(*job, start, out)`` for every job in a worker process; they start
    together once all are ready. Returns what they put in ``out`` and what ``probe()`` gives
    at the start and at the end."""
    start = SPAWN.Barrier(len(jobs) + 1)
    out: mp.Queue[Any] = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*job, start, out)) for job in jobs]
    for p in procs:
        p.start()
    start.wait()
    before = probe()
    results = [out.get() for _ in procs]
    after = probe()
    for p in procs:
        p.join()
    return results, before, after


def measure(shards: int, args: argparse.Namespace) -> dict[str, float]:
    """The figures for one shard count."""
    with tempfile.TemporaryDirectory() as folder:
        proc, address, pids = start_cluster(shards, folder)
        try:
            def shard_cpu() -> float:
                return sum(cpu_seconds(p) for p in pids)

            counts, before, after = _parallel(
                _small_ops, [(address, k, args.seconds) for k in range(args.clients)], shard_cpu)
            ops = sum(counts)
            cpu = after - before
            with vs.connect(address) as client:
                per = args.model_mb * MB // 100 // 4
                names = [f"model/v{i}" for i in range(100)]
                for name in names:
                    client.Variable(np.ones(per, np.float32), name=name)
            times, before, after = _parallel(_pull_push, [(address, names, args.rounds)] * 2,
                                             lambda: (shard_cpu(), *machine_busy()))
            model_cpu, busy, ticks = (b - a for a, b in zip(before, after, strict=True))
            moved = 2 * 2 * args.rounds * 100 * per * 4 / MB
            # Each worker's pull and push is one request to every shard.
            requests = 2 * 2 * args.rounds * shards
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return {"shards": shards, "small_ops_per_s": ops / args.seconds,
            "shard_cpu_ms_per_op": 1000 * cpu / max(ops, 1),
            "pull_push_mb_per_s": moved / max(t for t, _ in times),
            "shard_cpu_ms_per_request": 1000 * model_cpu / requests,
            "shard_cpu_ms_per_mb": 1000 * model_cpu / moved,
            "worker_cpu_ms_per_mb": 1000 * sum(c for _, c in times) / moved,
            "machine_busy": busy / max(ticks, 1)}


FIGURES = [("small_ops_per_s", "{:8.0f} small ops/s"), ("shard_cpu_ms_per_op", "{:.3f} ms/op"),
           ("pull_push_mb_per_s", "{:7.1f} MB/s pull+push"),
           ("shard_cpu_ms_per_request", "shards {:6.1f} ms/request"),
           ("shard_cpu_ms_per_mb", "{:.3f} ms/MB"),
           ("worker_cpu_ms_per_mb", "workers {:.3f} ms/MB"),
           ("machine_busy", "machine busy {:.2f}")]


def describe(figures: dict[str, float]) -> str:
    """One line of ``figures``."""
    return ", ".join(form.format(figures[key]) for key, form in FIGURES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--model-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    print(f"{args.model_mb} MB model of 100 variables, 2 workers; shard CPU per small op, "
          "per pull or push request to a shard and per MB moved; load average "
          f"{os.getloadavg()[0]:.2f} at the start", flush=True)
    runs: list[list[dict[str, float]]] = []
    for repetition in range(args.repeat):
        run = []
        for shards in args.shards:
            figures = measure(shards, args)
            figures["load_average"] = os.getloadavg()[0]
            run.append(figures)
            print(f"run {repetition + 1}, {shards} shards: {describe(figures)}", flush=True)
        for figures in run:
            figures["pull_push_vs_one_shard"] = (figures["pull_push_mb_per_s"]
                                                 / run[0]["pull_push_mb_per_s"])
            figures["small_ops_vs_one_shard"] = (figures["small_ops_per_s"]
                                                 / run[0]["small_ops_per_s"])
        runs.append(run)
    summary = []
    for i, shards in enumerate(args.shards):
        median = {key: statistics.median(run[i][key] for run in runs) for key in runs[0][i]}
        summary.append(median)
        print(f"median, {shards} shards: {describe(median)}; pull+push "
              f"{median['pull_push_vs_one_shard']:.2f}x and small ops "
              f"{median['small_ops_vs_one_shard']:.2f}x of {args.shards[0]} shard(s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster.json").write_text(json.dumps({"runs": runs, "median": summary},
                                                      indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
