"""The ``varstore`` command: serve, and talk to a running server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from varstore.common.errors import OpError


def _address(args: argparse.Namespace) -> str | None:
    return args.address or os.environ.get("VARSTORE_ADDRESS")


def _connect(args: argparse.Namespace):  # noqa: ANN202 - varstore.Client
    from varstore.cluster import connect
    return connect(_address(args), token=args.token, timeout=args.timeout)


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs a server."""
    from varstore.server.main import serve
    return serve(args)


def cmd_stop(args: argparse.Namespace) -> int:
    """Stops a server started with ``--pidfile``: SIGTERM, then waits until it exited."""
    from varstore.server.daemon import DaemonError, stop
    try:
        pid = stop(args.pidfile, args.timeout)
    except DaemonError as e:
        print(f"varstore stop: {e}", file=sys.stderr)
        return 1
    print(f"stopped the varstore server (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Prints the server's status."""
    with _connect(args) as client:
        if hasattr(client, "cluster_status"):  # one line per shard (varstore.cluster)
            from varstore.cluster import print_cluster_status
            return print_cluster_status(client.cluster_status())
        s = client.status()
    last = s.last_checkpoint or "none"
    if s.last_checkpoint:
        last += f" ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.last_checkpoint_time))})"
    print(f"address:          {_address(args) or 'localhost:7011'}")
    print(f"version:          {s.version}")
    print(f"uptime:           {s.uptime_seconds:.0f}s")
    print(f"variables:        {s.variable_count}")
    print(f"bytes stored:     {s.bytes_stored}")
    print(f"clients:          {s.connected_clients}")
    print(f"checkpoint dir:   {s.checkpoint_dir}")
    print(f"last checkpoint:  {last}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """Lists the server's variables."""
    with _connect(args) as client:
        infos = client.list_variables(args.scope)
    for v in infos:
        state = "" if v.initialized else "  (uninitialized)"
        print(f"{v.name}\t{v.dtype.name}\t{list(v.shape)}{state}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """Removes the named variables, or those under ``--scope``."""
    if bool(args.names) == (args.scope is not None):
        print("varstore rm: give variable names or --scope, not both", file=sys.stderr)
        return 2
    with _connect(args) as client:
        removed = client.delete(args.names, scope=args.scope)
    for name in removed:
        print(f"removed {name}")
    if not removed:
        print(f"no variables under {args.scope}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    """Removes every variable, after asking for confirmation unless ``--yes``."""
    address = _address(args) or "localhost:7011"
    if not args.yes:
        if not sys.stdin.isatty():
            print("varstore reset: refusing to remove every variable without --yes "
                  "(standard input is not a terminal)", file=sys.stderr)
            return 2
        answer = input(f"Remove every variable of the server at {address}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("reset cancelled")
            return 1
    with _connect(args) as client:
        removed = client.reset()
    print(f"removed {len(removed)} variable(s)")
    return 0


def _progress_bar(label: str) -> Callable[[object], None]:
    interactive = sys.stderr.isatty()

    def show(p: object) -> None:
        total = getattr(p, "bytes_total", 0) or 1
        done = getattr(p, "bytes_done", 0)
        width = 30
        filled = int(width * done / total)
        tensors = f"{getattr(p, 'tensors_done', 0)}/{getattr(p, 'tensors_total', 0)}"
        finished = getattr(p, "done", False)
        # On a terminal the bar redraws in place; in a log each update is a line of its own.
        start = "\r" if interactive else ""
        end = "\n" if finished or not interactive else ""
        sys.stderr.write(f"{start}{label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB {tensors} tensors{end}")
        sys.stderr.flush()
    return show


def cmd_save(args: argparse.Namespace) -> int:
    """Asks the server to write a checkpoint."""
    with _connect(args) as client:
        # Every `varstore save` of one prefix is one saver: --keep deletes only checkpoints
        # that earlier `varstore save` runs of this prefix wrote, while the server runs.
        path = client.save(args.prefix, global_step=args.step, max_to_keep=args.keep,
                           saver=f"varstore save {args.prefix}",
                           progress=None if args.quiet else _progress_bar("saving"))
    print(path)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Asks the server to restore a checkpoint."""
    with _connect(args) as client:
        path = client.restore(args.prefix,
                              progress=None if args.quiet else _progress_bar("restoring"))
    print(f"restored {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Prints the tensors of a checkpoint on disk; needs no server."""
    from varstore.server.inspect import describe
    try:
        for line in describe(args.path_prefix, values=args.values):
            print(line)
    except OSError as e:
        print(f"varstore inspect: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``varstore`` command."""
    parser = argparse.ArgumentParser(prog="varstore", description="varstore parameter server")
    sub = parser.add_subparsers(dest="command", required=True)

    from varstore.server.main import add_arguments
    serve = sub.add_parser("serve", help="run a server")
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    stop = sub.add_parser("stop", help="stop a server started with --pidfile (e.g. --daemon)")
    stop.add_argument("--pidfile", type=Path, required=True, help="the server's pidfile")
    stop.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for it to finish and exit (default 60)")
    stop.set_defaults(func=cmd_stop)

    def client_command(name: str, func: Callable[[argparse.Namespace], int], help: str
                       ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--address", help="host:port (default $VARSTORE_ADDRESS or "
                       "localhost:7011)")
        p.add_argument("--token", help="bearer token (default $VARSTORE_TOKEN)")
        p.add_argument("--timeout", type=float, default=None, help="seconds to wait")
        p.set_defaults(func=func)
        return p

    client_command("status", cmd_status, "print the server's status")
    ls = client_command("ls", cmd_ls, "list variables")
    ls.add_argument("--scope", help="only variables under this scope")
    rm = client_command("rm", cmd_rm, "remove variables")
    rm.add_argument("names", nargs="*", metavar="NAME", help="full variable names")
    rm.add_argument("--scope", help="remove every variable at or under this scope")
    reset = client_command("reset", cmd_reset, "remove every variable")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    save = client_command("save", cmd_save, "write a checkpoint")
    save.add_argument("prefix", nargs="?", default="model.ckpt",
                      help="path prefix inside the checkpoint folder (default model.ckpt)")
    save.add_argument("--step", type=int, help="global step suffix")
    save.add_argument("--keep", type=int, default=5,
                      help="keep the newest N checkpoints that `varstore save` of this "
                      "prefix wrote while the server runs, deleting older ones of them "
                      "(0: delete none); other checkpoints are never deleted")
    save.add_argument("--quiet", action="store_true", help="no progress bar")
    restore = client_command("restore", cmd_restore, "restore a checkpoint")
    restore.add_argument("prefix", help="checkpoint prefix, or 'latest'")
    restore.add_argument("--quiet", action="store_true", help="no progress bar")
    inspect = sub.add_parser("inspect", help="list a checkpoint on disk (TensorFlow's too)")
    inspect.add_argument("path_prefix", metavar="PATH_PREFIX",
                         help="checkpoint prefix, its .index file, or a folder (its newest)")
    inspect.add_argument("--values", action="store_true", help="print the values too")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``varstore`` command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OpError as e:
        print(f"varstore {args.command}: {type(e).__name__}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
