"""``varstore serve --shards N``: N shard processes on one machine under one parent.

The parent picks the ports (``--port P``: P..P+N-1; ``--port 0``: N free ones), starts each
shard as ``varstore serve --cluster ... --task-index I`` with the other settings unchanged
(one checkpoint folder, shared by all), and prints one line once every shard serves. SIGTERM
or SIGINT to the parent stops every shard gracefully; a shard that dies is reported on stderr
while the others keep serving; the shards exit when the parent dies (Linux's parent-death
signal), so no orphaned ps task outlives its job (tensorflow#4713). ``--save-every`` goes to
shard 0, whose timer saves the whole cluster (:mod:`varstore.server.cluster_saver`). On stop,
shard 0 stops first, while the others still serve: it writes one final checkpoint of the whole
cluster (``model.ckpt-N``, every shard's part) unless ``--no-save-on-exit``; a shard alone never
saves, since its part would pass for the cluster's latest checkpoint. The shards run in a
session of their own, so a terminal's Ctrl-C or a signal to the parent's process group reaches
the parent only and this order holds (under systemd, ``KillMode=mixed`` keeps it too). Shard 0
saves through a Unix socket each shard also listens on, in a folder only this user may enter,
so the save needs neither the network port's TLS settings nor client certificates (the token
file still applies).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from varstore.server.cluster import MAX_SHARDS, WILDCARD_HOSTS
from varstore.server.daemon import DaemonError, ServeProcess

log = logging.getLogger("varstore.server")

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
# How long shard 0 may take to stop, its final checkpoint of the cluster included.
EXIT_SAVE_TIMEOUT = 600.0
POLL_SECONDS = 0.2
# Flags passed on unchanged to every shard (dest, flag); ports and the cluster are set apart.
_FORWARDED = (("config", "--config"), ("checkpoint_dir", "--checkpoint-dir"),
              ("keep", "--keep"), ("restore", "--restore"), ("max_memory", "--max-memory"),
              ("max_request_bytes", "--max-request-bytes"), ("tls_cert", "--tls-cert"),
              ("tls_key", "--tls-key"), ("tls_client_ca", "--tls-client-ca"),
              ("token_file", "--token-file"), ("log_level", "--log-level"),
              ("log_file", "--log-file"))


class Shard:
    """One shard process and the thread that passes its output on."""

    def __init__(self, index: int, address: str, argv: list[str]) -> None:
        self.index = index
        self.address = address
        self.ready = threading.Event()
        # A session of its own: a signal to the parent's process group (a terminal's Ctrl-C)
        # does not stop a shard before shard 0 has saved the cluster through it.
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True,
                                        preexec_fn=_die_with_parent, start_new_session=True)
        self.reported = False
        threading.Thread(target=self._read_output, daemon=True,
                         name=f"varstore-shard-{index}").start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not self.ready.is_set() and "serving on" in line:
                self.ready.set()
                continue
            sys.stdout.write(f"[shard {self.index}] {line}")
            sys.stdout.flush()

    def describe(self) -> str:
        """``shard I (ADDRESS, pid P)``."""
        return f"shard {self.index} ({self.address}, pid {self.process.pid})"


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports free on ``host`` now (bound together, then released)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host if host not in WILDCARD_HOSTS else "", 0))
            ports.append(sock.getsockname()[1])
        return ports


def shard_argv(args: argparse.Namespace, host: str, port: int, addresses: list[str],
               index: int, socket_dir: Path) -> list[str]:
    """The ``varstore serve`` command line of shard ``index``."""
    argv = [sys.executable, "-m", "varstore.cli", "serve", "--host", host, "--port", str(port),
            "--cluster", ",".join(addresses), "--task-index", str(index),
            "--local-socket-dir", str(socket_dir)]
    for dest, flag in _FORWARDED:
        value = getattr(args, dest, None)
        if value is not None:
            argv += [flag, str(value)]
    if args.metrics_port is not None:
        argv += ["--metrics-port", str(args.metrics_port and args.metrics_port + index)]
    if index == 0 and args.save_every is not None:
        argv += ["--save-every", str(args.save_every)]
    if args.save_on_exit is False:
        argv.append("--no-save-on-exit")
    return argv


def run_shards(args: argparse.Namespace, host: str, port: int) -> int:
    """Starts ``args.shards`` shards on ``host`` from ``port`` and supervises them until
    SIGTERM/SIGINT; returns the exit code (1 when a shard failed, or shard 0 could not
    write the cluster's final checkpoint)."""
    count = args.shards
    process = ServeProcess(args.pidfile, args.log_file, args.daemon)
    try:
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"--shards must be in [1, {MAX_SHARDS}], got {count}")
        if args.cluster:
            raise ValueError("--shards does not take --cluster (it makes the cluster of its "
                             "shards itself)")
        process.start()
        ports = free_ports(host, count) if port == 0 else list(range(port, port + count))
    except (OSError, ValueError, DaemonError) as e:
        process.failed(f"varstore serve: {e}")
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with _socket_folder() as socket_dir:
        return _supervise(args, process, stop, host, ports, socket_dir)


@contextlib.contextmanager
def _socket_folder() -> Iterator[Path]:
    """A new folder only this user may enter, for the shards' Unix sockets; removed after.
    A short path: a socket's path must fit in 107 bytes."""
    base = tempfile.gettempdir()
    folder = Path(tempfile.mkdtemp(prefix="varstore-", dir=base if len(base) < 60 else "/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _supervise(args: argparse.Namespace, process: ServeProcess, stop: threading.Event,
               host: str, ports: list[int], socket_dir: Path) -> int:
    """Starts the shards, serves until ``stop``, then stops shard 0 (it saves the cluster)
    and the others; the exit code."""
    count = len(ports)
    addresses = [f"{host}:{p}" for p in ports]
    shards = [Shard(i, a, shard_argv(args, host, p, addresses, i, socket_dir))
              for i, (a, p) in enumerate(zip(addresses, ports, strict=True))]
    failed = _wait_ready(shards, stop)
    if failed:
        _stop_all(shards)
        process.failed(f"varstore serve: {failed}")
        return 1
    process.ready(f"varstore serving on {addresses[0]} (cluster of {count} shards: "
                  f"{', '.join(addresses)}; checkpoints in {args.checkpoint_dir or 'checkpoints'}"
                  f", shared by all)")
    for shard in shards:
        print(f"  {shard.describe()}", flush=True)
    crashed = False
    while not stop.wait(POLL_SECONDS):
        for shard in _newly_exited(shards):
            crashed = True
            message = f"{shard.describe()} exited with code {shard.process.returncode}"
            log.error("%s; the other shards keep serving", message)
            print(f"varstore serve: {message}", file=sys.stderr, flush=True)
        if all(s.reported for s in shards):
            break
    log.info("stopping %d shards", count)
    codes = _stop_all(shards[:1], EXIT_SAVE_TIMEOUT) + _stop_all(shards[1:])
    process.close()
    return 1 if crashed or any(codes) else 0


def _wait_ready(shards: list[Shard], stop: threading.Event) -> str | None:
    deadline = time.monotonic() + START_TIMEOUT
    for shard in shards:
        while not shard.ready.wait(POLL_SECONDS):
            if shard.process.poll() is not None:
                return f"{shard.describe()} failed to start (exit code " \
                       f"{shard.process.returncode}; its error is above)"
            if stop.is_set() or time.monotonic() > deadline:
                return f"{shard.describe()} did not start"
    return None


def _newly_exited(shards: list[Shard]) -> Iterator[Shard]:
    for shard in shards:
        if not shard.reported and shard.process.poll() is not None:
            shard.reported = True
            yield shard


def _stop_all(shards: list[Shard], timeout: float = STOP_TIMEOUT) -> list[int]:
    """SIGTERM to every shard still running, SIGKILL after ``timeout`` seconds; the exit
    codes."""
    for shard in shards:
        if shard.process.poll() is None:
            shard.process.terminate()
    deadline = time.monotonic() + timeout
    codes = []
    for shard in shards:
        try:
            codes.append(shard.process.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            shard.process.kill()
            codes.append(shard.process.wait())
    return codes
