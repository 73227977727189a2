"""Fixtures: a real server in-process on localhost:0, and one as a `varstore serve` process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests and the servers they start run this checkout's code, whichever varstore is installed.
SOURCE_ROOTS = [str(ROOT / folder) for folder in ("client", "common", "server")]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*SOURCE_ROOTS, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

import varstore as vs  # noqa: E402
from varstore.server import ServerConfig, create_server  # noqa: E402
from varstore.server.app import Server  # noqa: E402

DATA = Path(__file__).parent / "data"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A started in-process server with its checkpoint folder in tmp_path."""
    srv = create_server(ServerConfig(host="127.0.0.1", port=0,
                                     checkpoint_dir=tmp_path / "ckpt"))
    srv.start()
    yield srv
    # No client calls it any more: nothing to refuse before gRPC's stop.
    srv.stop(grace=1.0, quiet=0.0)


@pytest.fixture
def address(server: Server) -> str:
    """The in-process server's address."""
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def client(address: str) -> Iterator[vs.Client]:
    """A client connected to the in-process server."""
    with vs.connect(address) as c:
        yield c


def folder_names(folder: Path) -> list[str]:
    """The names in a checkpoint folder, sorted, without the lock files a running server keeps
    there (varstore.server.folder_lock); [] for a folder that does not exist."""
    if not folder.exists():
        return []
    return sorted(n for n in os.listdir(folder)
                  if not (n.startswith(".varstore") and n.endswith(".lock")))


@dataclass
class ServerProcess:
    """A `varstore serve` subprocess and where it listens."""

    process: subprocess.Popen[str]
    port: int
    checkpoint_dir: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_server_process(checkpoint_dir: Path, *extra: str,
                         env: dict[str, str] | None = None,
                         start_new_session: bool = False) -> ServerProcess:
    """Starts `varstore serve --port 0` (in a process group of its own with
    ``start_new_session``) and waits for the port it prints."""
    cmd = [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
           "--checkpoint-dir", str(checkpoint_dir), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})},
                            start_new_session=start_new_session)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"serving on [^:]+:(\d+)", line)
        if m:
            return ServerProcess(proc, int(m.group(1)), checkpoint_dir)
    proc.kill()
    _, err = proc.communicate()
    raise RuntimeError(f"server did not start: {err}")


def stop_server_process(server: ServerProcess) -> None:
    """Terminates the process (SIGTERM), killing it if it does not exit."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A `varstore serve --port 0` subprocess with its checkpoint folder in tmp_path."""
    srv = start_server_process(tmp_path / "ckpt")
    yield srv
    stop_server_process(srv)
