"""``varstore serve``: runs a server until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from varstore.common.allocator import keep_freed_memory
from varstore.common.errors import OpError
from varstore.server.app import DEFAULT_PORT, ServerConfig, create_server
from varstore.server.cluster import cluster_settings, parse_addresses
from varstore.server.daemon import DaemonError, ServeProcess
from varstore.server.settings import parse_size

log = logging.getLogger("varstore.server")

# After SIGTERM, calls in flight get this long before they are cancelled.
GRACE_SECONDS = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``varstore serve``'s flags to ``parser``."""
    parser.add_argument("--config", type=Path, help="TOML file with the same settings as the "
                        "flags (flags win), e.g. port = 7011")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; another "
                        "interface needs --token-file, TLS or --allow-insecure-remote)")
    parser.add_argument("--allow-insecure-remote", action="store_const", const=True,
                        help="listen on a non-loopback address with neither a token file nor "
                        "TLS (anyone who reaches it can read and change every variable)")
    parser.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT}; 0 picks a free "
                        "one and prints it)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="folder for checkpoints (default ./checkpoints)")
    parser.add_argument("--restore", metavar="latest|PREFIX",
                        help="restore a checkpoint before accepting requests ('latest': the "
                        "newest one, if there is one yet)")
    parser.add_argument("--save-every", type=float, metavar="SECONDS",
                        help="save a checkpoint on this period")
    parser.add_argument("--no-save-on-exit", dest="save_on_exit", action="store_const",
                        const=False, help="on shutdown, do not write a final checkpoint of "
                        "the changes since the last one (they are lost; the log lists them)")
    parser.add_argument("--keep", type=int, metavar="N",
                        help="timer checkpoints kept: the newest N that the timer wrote; it "
                        "deletes no other checkpoint (default 5; 0: delete none)")
    parser.add_argument("--max-memory", type=_size, metavar="BYTES",
                        help="bound on the memory the server holds for clients: variables "
                        "and everything requests in flight hold (suffixes K, M, G)")
    parser.add_argument("--max-request-bytes", type=_size, metavar="BYTES",
                        help="bound on the request bytes of all calls in flight together, "
                        "one request's included (default 8G)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="CA whose client certificates are required (mutual TLS)")
    parser.add_argument("--token-file", type=Path,
                        help="file of accepted bearer tokens, one per line: TOKEN or "
                        "TOKEN ROLE (read-write, the default, or read-only)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-file", type=Path, help="append the log here (default stderr)")
    parser.add_argument("--pidfile", type=Path,
                        help="write the server's pid here (for `varstore stop`)")
    parser.add_argument("--daemon", action="store_true",
                        help="detach and run in the background (needs --pidfile and "
                        "--log-file); returns once the server listens")
    parser.add_argument("--shards", type=int, metavar="N",
                        help="start N shard processes on ports PORT..PORT+N-1 (all picked "
                        "with --port 0) as one cluster; stopping this process stops them")
    parser.add_argument("--cluster", type=parse_addresses, metavar="HOST:PORT,...",
                        help="every shard of a multi-host cluster, by task index (else read "
                        "from TF_CONFIG's cluster.ps when set)")
    parser.add_argument("--task-index", type=int, metavar="I",
                        help="this shard's index in --cluster (default 0)")
    # Set by a --shards parent for its shards only (varstore.server.shards).
    parser.add_argument("--local-socket-dir", type=Path, help=argparse.SUPPRESS)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from the config file (if any) overridden by the flags.

    Raises ``ValueError`` for unknown keys in the config file.
    """
    values: dict[str, Any] = {}
    if args.config is not None:
        with open(args.config, "rb") as f:
            values = {k.replace("-", "_"): v for k, v in tomllib.load(f).items()}
    known = {f.name for f in fields(ServerConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings in {args.config}: {', '.join(sorted(unknown))}")
    for name in known:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    cluster_settings(values)
    for name in ("checkpoint_dir", "tls_cert", "tls_key", "tls_client_ca", "token_file",
                 "local_socket_dir"):
        if isinstance(values.get(name), str):
            values[name] = Path(values[name])
    for name in ("max_memory", "max_request_bytes"):
        if isinstance(values.get(name), str):
            values[name] = parse_size(values[name])
    return ServerConfig(**values)


def serve(args: argparse.Namespace) -> int:
    """Runs the server (detached with ``--daemon``) until SIGTERM/SIGINT, then stops it and
    ends the process (:func:`leave`) with status 0, or 1 when its final checkpoint was due
    and not written; returns 1 when it cannot start."""
    # A shard of a cluster says which one it is: the shards of `--shards N` share one log.
    shard = (f"[shard {args.task_index or 0}] " if getattr(args, "cluster", None) else "")
    logging.basicConfig(level=args.log_level.upper(), filename=args.log_file,
                        format=f"%(asctime)s {shard}%(levelname)s %(name)s: %(message)s")
    if getattr(args, "shards", None) is not None:
        try:
            config = config_from_args(args)
        except (OSError, ValueError) as e:
            print(f"varstore serve: {e}", file=sys.stderr)
            return 1
        from varstore.server.shards import run_shards
        return run_shards(args, config.host, config.port)
    process = ServeProcess(args.pidfile, args.log_file, args.daemon)
    try:
        config = config_from_args(args)
        process.start()
        # Large transfers reuse freed buffers instead of faulting in fresh pages each time.
        keep_freed_memory()
        server = create_server(config)
    except (OSError, ValueError, DaemonError, OpError) as e:
        process.failed(f"varstore serve: {e}")
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    metrics = f", metrics on port {server.metrics_port}" if server.metrics_port is not None else ""
    process.ready(f"varstore serving on {config.host}:{server.port} "
                  f"(checkpoints in {config.checkpoint_dir}{metrics})")
    stop.wait()
    log.info("shutting down")
    written = server.stop(grace=GRACE_SECONDS)
    process.close()
    log.info("stopped" if written else "stopped; its final checkpoint was not written")
    leave(0 if written else 1)


def leave(code: int) -> NoReturn:
    """Ends the process with ``code`` once the server stopped: a request thread still
    computing past the grace period (its call is cancelled; its client has its answer) must
    not keep the process alive, so the interpreter's join of the request threads is skipped
    after the logs are flushed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
