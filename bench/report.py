"""The benchmark's output: the figures table, the target ratios, JSON and the chart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# name -> (unit, description); the order is the table's.
FIGURES: dict[str, tuple[str, str]] = {
    "grpc.echo": ("ops/s", "bare gRPC unary echo, 16 bytes"),
    "vs.op": ("ops/s", "varstore assign_add(1), blocking"),
    "vs.batched": ("ops/s", "varstore 100 assign_add in one request"),
    "vs.pipelined": ("ops/s", "varstore.aio 100 assign_add in flight"),
    "redis.incr": ("ops/s", "Redis INCR, blocking"),
    "redis.incr_pipelined": ("ops/s", "Redis INCR, 100 per pipeline"),
    "grpc.pull": ("MB/s", "bare gRPC pull, one message"),
    "grpc.push": ("MB/s", "bare gRPC push, one message"),
    "grpc.stream_pull": ("MB/s", "bare gRPC pull, stream of 1 MB messages"),
    "grpc.stream_push": ("MB/s", "bare gRPC push, stream of 1 MB messages"),
    "tcp.pull": ("MB/s", "raw loopback TCP, server to client"),
    "tcp.push": ("MB/s", "raw loopback TCP, client to server"),
    "redis.get": ("MB/s", "Redis GET"),
    "redis.set": ("MB/s", "Redis SET"),
    "vs.pull": ("MB/s", "varstore pull, one variable"),
    "vs.push": ("MB/s", "varstore push, one variable"),
    "vs.model_pull": ("MB/s", "varstore pull, 100 variables"),
    "vs.model_push": ("MB/s", "varstore push, 100 variables"),
    "vs.op_ms": ("ms", "varstore assign_add(1), median"),
    "vs.gather_ms": ("ms", "varstore gather of 1,024 rows, median"),
    "vs.scatter_ms": ("ms", "varstore scatter_add of 1,024 rows, median"),
    "vs.idle_p50_ms": ("ms", "small op p50, idle"),
    "vs.idle_p99_ms": ("ms", "small op p99, idle"),
    "vs.load_p50_ms": ("ms", "small op p50, 4 workers moving big tensors"),
    "vs.load_p99_ms": ("ms", "small op p99, 4 workers moving big tensors"),
    "disk.write": ("MB/s", "numpy tofile + fsync"),
    "disk.read": ("MB/s", "numpy fromfile"),
    "tf.save": ("MB/s", "TensorFlow Saver.save + fsync"),
    "tf.restore": ("MB/s", "TensorFlow Saver.restore"),
    "vs.save": ("MB/s", "varstore checkpoint save"),
    "vs.restore": ("MB/s", "varstore checkpoint restore"),
    "vs.save_extra_mb": ("MB", "server memory above the store during save"),
    "vs.save_allowed_mb": ("MB", "largest variable + 64 MB"),
}


@dataclass
class Target:
    """``numerator / denominator`` must be ``>=`` (or ``<=``) ``bound``."""

    workload: str
    numerator: str
    denominator: str
    op: str
    bound: float


TARGETS = [
    Target("1 small op", "vs.op", "grpc.echo", ">=", 0.8),
    Target("1 batched", "vs.batched", "redis.incr", ">=", 1.0),
    Target("2 pull vs gRPC", "vs.pull", "grpc.pull", ">=", 2.5),
    Target("2 push vs gRPC", "vs.push", "grpc.push", ">=", 2.5),
    Target("2 pull vs TCP", "vs.pull", "tcp.pull", ">=", 0.45),
    Target("2 push vs TCP", "vs.push", "tcp.push", ">=", 0.45),
    Target("2 model pull", "vs.model_pull", "vs.pull", ">=", 0.8),
    Target("2 model push", "vs.model_push", "vs.push", ">=", 0.8),
    Target("2 pull vs Redis", "vs.pull", "redis.get", ">=", 3.0),
    Target("3 gather", "vs.gather_ms", "vs.op_ms", "<=", 2.0),
    Target("3 scatter_add", "vs.scatter_ms", "vs.op_ms", "<=", 2.0),
    Target("4 p99 loaded", "vs.load_p99_ms", "vs.idle_p50_ms", "<=", 10.0),
    Target("5 save vs disk", "vs.save", "disk.write", ">=", 0.8),
    Target("5 save vs TF", "vs.save", "tf.save", ">=", 1.0),
    Target("5 restore vs disk", "vs.restore", "disk.read", ">=", 0.8),
    Target("5 restore vs TF", "vs.restore", "tf.restore", ">=", 1.0),
    Target("5 save memory", "vs.save_extra_mb", "vs.save_allowed_mb", "<=", 1.0),
]


def ratios(figures: dict[str, float]) -> list[dict[str, Any]]:
    """Every target with the ratio measured (None when a figure is missing) and whether met."""
    out = []
    for t in TARGETS:
        num, den = figures.get(t.numerator), figures.get(t.denominator)
        ratio = None if num is None or not den else num / den
        met = None if ratio is None else (ratio >= t.bound if t.op == ">=" else ratio <= t.bound)
        out.append({**asdict(t), "ratio": ratio, "met": met})
    return out


def table(figures: dict[str, float], results: list[dict[str, Any]]) -> str:
    """The figures and the ratios as two Markdown tables."""
    lines = ["| figure | value | unit |", "| --- | ---: | --- |"]
    for key, (unit, text) in FIGURES.items():
        if key in figures:
            lines.append(f"| {text} | {figures[key]:,.{3 if unit == 'ms' else 0}f} | {unit} |")
    lines += ["", "| workload | ratio | target | met |", "| --- | ---: | --- | --- |"]
    for r in results:
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = {True: "yes", False: "**no**", None: "skipped"}[r["met"]]
        lines.append(f"| {r['workload']} ({r['numerator']} / {r['denominator']}) | {ratio} | "
                     f"{r['op']} {r['bound']} | {met} |")
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def chart(path: Path, series: dict[str, dict[str, list[float | None]]], sizes_mb: list[float]
          ) -> None:
    """Throughput against payload size, pull and push side by side, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, direction in zip(axes, ("pull", "push"), strict=True):
        for label, values in series[direction].items():
            if any(v is not None for v in values):
                style = "-o" if label == "varstore" else "--."
                ax.plot(sizes_mb, values, style, label=label,
                        linewidth=2.5 if label == "varstore" else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes_mb, [f"{s:g}" for s in sizes_mb])
        ax.set_xlabel("payload (MB)")
        ax.set_title(f"{direction}: one tensor over loopback")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("MB/s")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
