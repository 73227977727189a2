"""The ``varstore`` command: serve, and talk to a running server."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# gRPC's C core writes log lines of its own to stderr (one precedes our "cannot listen" on a
# busy port); the command says what went wrong itself. GRPC_VERBOSITY=debug shows them again.
# Set before grpc is first imported, which reads it once.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from varstore.common import __version__  # noqa: E402 - after GRPC_VERBOSITY
from varstore.common.errors import OpError  # noqa: E402

if TYPE_CHECKING:
    from varstore.cluster import ShardStatus
    from varstore.proto import varstore_pb2 as pb


def _address(args: argparse.Namespace) -> str:
    """The server address: ``--address``, else ``$VARSTORE_ADDRESS``, else TF_CONFIG's first
    ps task, else localhost:7011 (as the clients resolve it)."""
    from varstore.transport import resolve_address
    return resolve_address(args.address)[0]


# TLS settings of the client commands: flag, Namespace attribute, environment variable.
_TLS_SETTINGS = (("--tls-ca", "tls_ca", "VARSTORE_TLS_CA"),
                 ("--tls-cert", "tls_cert", "VARSTORE_TLS_CERT"),
                 ("--tls-key", "tls_key", "VARSTORE_TLS_KEY"),
                 ("--tls-server-name", "tls_server_name", "VARSTORE_TLS_SERVER_NAME"))


def _tls(args: argparse.Namespace) -> Any:
    """The TLS settings the flags or ``VARSTORE_TLS_*`` give (flags win); None for none."""
    values = {dest: getattr(args, dest, None) or os.environ.get(env) or None
              for _, dest, env in _TLS_SETTINGS}
    if not any(values.values()):
        return None
    from varstore.transport import TLSConfig
    return TLSConfig(ca_cert=values["tls_ca"], client_cert=values["tls_cert"],
                     client_key=values["tls_key"], server_name=values["tls_server_name"])


def _connect(args: argparse.Namespace):  # noqa: ANN202 - varstore.Client
    from varstore.cluster import connect
    # No --address: connect() takes it from the environment and says so in its errors.
    return connect(args.address, token=args.token, timeout=args.timeout, tls=_tls(args))


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
            return print_cluster_status(client.cluster_status())
        s = client.status()
    last = s.last_checkpoint or "none"
    if s.last_checkpoint:
        last += f" ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.last_checkpoint_time))})"
    print(f"address:          {_address(args)}")
    print(f"version:          {s.version}")
    print(f"uptime:           {s.uptime_seconds:.0f}s")
    print(f"variables:        {s.variable_count}")
    print(f"bytes stored:     {s.bytes_stored}")
    print(f"client hosts:     {s.connected_clients} (hosts that read or updated variables in "
          f"the last 60s)")
    print(f"load:             {describe_load(s)}")
    print(f"checkpoint dir:   {s.checkpoint_dir} (on the server's machine)")
    print(f"last checkpoint:  {last}")
    return 0


def describe_load(s: pb.StatusResponse) -> str:
    """A server's load as it measured it (over about the last 10 s)."""
    return (f"{s.requests_per_second:.1f} requests/s, {s.requests_in_flight} in flight, "
            f"CPU {s.cpu_percent:.0f}% of one core")


def print_cluster_status(shards: list[ShardStatus]) -> int:
    """Prints ``varstore status`` for a cluster: totals, then one line per shard (health,
    variables, bytes, load, clients, uptime, or why it cannot be reached); returns 0 when
    every shard serves, 1 when one is down or not serving (the others are printed)."""
    up = [s.status for s in shards if not isinstance(s.status, OpError)]
    serving = sum(s.health == "SERVING" for s in shards)
    print(f"shards:           {len(shards)} ({serving} serving)")
    print(f"variables:        {sum(s.variable_count for s in up)}")
    print(f"bytes stored:     {sum(s.bytes_stored for s in up)}")
    print(f"load:             {sum(s.requests_per_second for s in up):.1f} requests/s, "
          f"{sum(s.requests_in_flight for s in up)} in flight")
    if up:
        print(f"version:          {up[0].version}")
        print(f"checkpoint dir:   {up[0].checkpoint_dir} (shared)")
        print(f"last checkpoint:  {up[0].last_checkpoint or 'none'}")
    for shard in shards:
        s = shard.status
        where = f"  shard {shard.task} {shard.address}:"
        if isinstance(s, OpError):
            print(f"{where} UNAVAILABLE ({s.message})")
        else:
            print(f"{where} {shard.health.lower().replace('_', ' ')}, {s.variable_count} "
                  f"variables, {s.bytes_stored} bytes, {describe_load(s)}, "
                  f"{s.connected_clients} clients, up {s.uptime_seconds:.0f}s")
    if serving < len(shards):
        print(f"{len(shards) - serving} of {len(shards)} shards not serving (exit code 1)")
        return 1
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    """Lists the server's variables."""
    with _connect(args) as client:
        infos = client.list_variables(args.scope)
    for v in infos:
        state = "" if v.initialized else "  (uninitialized)"
        part = v.save_slice
        if part is not None:  # checkpoints hold it as this slice of one tensor
            state += (f"  (part of {part.full_name} {list(part.full_shape)} at "
                      f"{list(part.offset)})")
        print(f"{v.name}\t{v.dtype.name}\t{list(v.shape)}{state}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    """Lists the checkpoints in the server's checkpoint folder, newest first."""
    with _connect(args) as client:
        found = client.list_checkpoints(args.directory or "")
    for c in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.mtime))
        marks = "  (latest)" if c.latest else ""
        if c.shards > 1:
            marks += f"  ({c.shards} data files)"
        print(f"{c.path}\t{_size(c.nbytes)}\t{when}{marks}")
    if not found:
        print("no checkpoints", file=sys.stderr)
    return 0


def _size(nbytes: int) -> str:
    """``nbytes`` for people: 512 B, 3.1 KB, 256.0 MB, 1.2 GB."""
    size = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{nbytes} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def cmd_rm(args: argparse.Namespace) -> int:
    """Removes the named variables, or those under ``--scope``."""
    if bool(args.names) == (args.scope is not None):
        what = "not both" if args.names else "give one of them"
        print(f"varstore rm: takes variable names or --scope ({what})", file=sys.stderr)
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
    address = _address(args)
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


def _progress_bar(label: str) -> Callable[[Any], None]:
    """A callback drawing a save's or restore's ``CheckpointProgress`` with tqdm: a bar that
    redraws in place on a terminal, one line at the end otherwise (a log, a pipe)."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    bar: tqdm | None = None

    def show(p: Any) -> None:
        nonlocal bar
        if bar is None:
            # Off a terminal nothing is drawn while it runs (delay never passes); the final
            # state is written once below.
            bar = tqdm(total=p.bytes_total, desc=label, unit="B", unit_scale=True,
                       unit_divisor=1024, file=sys.stderr, leave=interactive,
                       delay=0 if interactive else float("inf"))
        bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors", refresh=False)
        bar.update(p.bytes_done - bar.n)
        if p.done:
            if not interactive:
                sys.stderr.write(f"{bar}\n")
            bar.close()
    return show


def _exists_here(path: str) -> bool:
    """Whether ``path`` names a checkpoint or a folder on this machine."""
    return os.path.isdir(path) or os.path.exists(path) or os.path.exists(path + ".index")


def _in_server_folder(client: Any, prefix: str) -> str:
    """``save``/``restore``'s PREFIX as the server reads it. A relative path that means nothing
    inside the server's checkpoint folder but names a place inside that folder from here
    (``checkpoints/model.ckpt-5``, typed where the server was started) is passed as the
    absolute path, which the server accepts; any other path is passed on as it is."""
    if prefix == "latest" or os.path.isabs(prefix):
        return prefix
    root = client.status().checkpoint_dir
    if not os.path.isabs(root) or not os.path.isdir(root):
        return prefix
    root = os.path.realpath(root)
    here = os.path.realpath(prefix)
    first = Path(prefix).parts[0] if Path(prefix).parts else prefix
    if (os.path.commonpath([root, here]) == root and here != root
            and not os.path.exists(os.path.join(root, first))):
        return here
    return prefix
def cmd_save(args: argparse.Namespace) -> int:
    """Asks the server to write a checkpoint."""
    with _connect(args) as client:
        args.prefix = _in_server_folder(client, args.prefix)
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
        args.prefix = _in_server_folder(client, args.prefix)
        path = client.restore(args.prefix,
                              progress=None if args.quiet else _progress_bar("restoring"))
    print(f"restored {path}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Prints the tensors of a checkpoint on disk; needs no server."""
    from varstore.server.inspect import describe
    try:
        for line in describe(_here(args), values=args.values):
            print(line)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main() ends quietly
    except OSError as e:
        print(f"varstore inspect: {e}", file=sys.stderr)
        return 1
    except (ValueError, OverflowError, MemoryError) as e:
        # The reader reports malformed files as DataLossError; this is a last resort, so
        # that no input ever shows a traceback.
        print(f"varstore inspect: DataLossError: cannot read {args.path_prefix}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def _here(args: argparse.Namespace) -> str:
    """``inspect``'s PATH_PREFIX as a path on this machine: itself when it exists here, else
    the same relative path inside the checkpoint folder of the server at ``--address`` when
    that folder is on this machine (so the names ``save`` prints work too)."""
    path: str = args.path_prefix
    if _exists_here(path) or os.path.isabs(path):
        return path
    try:
        with _connect(args) as client:
            root = client.status().checkpoint_dir
    except OpError:
        return path
    inside = os.path.join(root, path)
    if os.path.isabs(root) and _exists_here(inside):
        print(f"varstore inspect: no {path} here; reading {inside} (the server's checkpoint "
              f"folder)", file=sys.stderr)
        return inside
    return path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``varstore`` command."""
    parser = argparse.ArgumentParser(
        prog="varstore", description="varstore parameter server",
        epilog="Set GRPC_VERBOSITY=debug to see gRPC's own log lines, which are hidden.")
    parser.add_argument(
        "--version", action="version",
        version=f"varstore {__version__} (Python {platform.python_version()}, "
                f"grpcio {_grpc_version()})")
    sub = parser.add_subparsers(dest="command", required=True)

    from varstore.server.main import add_arguments
    serve = sub.add_parser("serve", help="run a server", description=(
        "Runs a server on 127.0.0.1:7011 with its checkpoints in ./checkpoints; Ctrl-C stops "
        "it after a final checkpoint of the changes since the last one (start it again with "
        "--restore latest to get them back)."))
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    stop = sub.add_parser("stop", help="stop a server started with --pidfile (e.g. --daemon)",
                          description="stop a server started with --pidfile (e.g. --daemon)")
    stop.add_argument("--pidfile", type=Path, required=True, help="the server's pidfile")
    stop.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for it to finish and exit (default 60)")
    stop.set_defaults(func=cmd_stop)

    def connection_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", help="host:port (default $VARSTORE_ADDRESS or "
                       "localhost:7011)")
        p.add_argument("--token", help="bearer token (default $VARSTORE_TOKEN)")
        p.add_argument("--timeout", type=float, default=None,
                       help="seconds to wait for the server (default 10)")
        tls_help = {"tls_ca": "CA certificate (PEM) that signed the server's; setting any "
                              "--tls-* flag connects with TLS",
                    "tls_cert": "client certificate (PEM), for a server asking for one",
                    "tls_key": "the client certificate's private key (PEM)",
                    "tls_server_name": "name to check the server's certificate against, "
                                       "when the address names it otherwise"}
        for flag, dest, env in _TLS_SETTINGS:
            p.add_argument(flag, dest=dest, help=f"{tls_help[dest]} (default ${env})")

    def client_command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                       description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help)
        connection_arguments(p)
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
    server_paths = ("PREFIX is a path in the server's --checkpoint-dir, on the server's "
                    "machine (e.g. model.ckpt); from the server's machine, a path there such "
                    "as checkpoints/model.ckpt-5 works too.")
    save = client_command("save", cmd_save, "write a checkpoint",
                          f"The server writes a checkpoint. {server_paths}")
    save.add_argument("prefix", nargs="?", default="model.ckpt",
                      help="path prefix in the server's checkpoint folder (default model.ckpt)")
    save.add_argument("--step", type=int, help="global step suffix")
    save.add_argument("--keep", type=int, default=5,
                      help="keep the newest N checkpoints that `varstore save` of this "
                      "prefix wrote while the server runs, deleting older ones of them "
                      "(0: delete none); other checkpoints are never deleted")
    save.add_argument("--quiet", action="store_true", help="no progress bar")
    checkpoints = client_command(
        "checkpoints", cmd_checkpoints, "list the checkpoints in the server's folder",
        "Lists the complete checkpoints in the server's checkpoint folder (on the server's "
        "machine), newest first: the path restore takes, size, time written, and which one "
        "its folder's state file names as the latest.")
    checkpoints.add_argument("directory", nargs="?", metavar="FOLDER",
                             help="only this folder inside the checkpoint folder (and its "
                             "subfolders)")
    restore = client_command("restore", cmd_restore, "restore a checkpoint",
                             f"The server restores a checkpoint. {server_paths}")
    restore.add_argument("prefix", help="checkpoint prefix in the server's checkpoint folder, "
                         "or 'latest'")
    restore.add_argument("--quiet", action="store_true", help="no progress bar")
    inspect = sub.add_parser(
        "inspect", help="list a checkpoint on disk (TensorFlow's too)",
        description="Lists a checkpoint's tensors, reading its files on THIS machine; needs no "
                    "server. PATH_PREFIX is a local path; when nothing is there, the same "
                    "relative path in the checkpoint folder of the server at --address (on "
                    "this machine) is read, so the names `varstore save` prints work too.")
    inspect.add_argument("path_prefix", metavar="PATH_PREFIX",
                         help="local checkpoint prefix, its .index file, or a folder (its "
                         "newest)")
    inspect.add_argument("--values", action="store_true", help="print the values too")
    connection_arguments(inspect)
    inspect.set_defaults(func=cmd_inspect)
    return parser


def _grpc_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("grpcio")
    except PackageNotFoundError:
        return "not installed"


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
    except BrokenPipeError:
        # Whoever read the output stopped (`varstore inspect ... | head`): end as the shell's
        # own tools do when SIGPIPE stops them, silently, and keep Python from complaining
        # again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
