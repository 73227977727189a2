"""The `varstore` command, run as users run it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import varstore as vs
from tests.conftest import ServerProcess


def varstore(*args: str, address: str | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--address", address] if address else []
    return subprocess.run([sys.executable, "-m", "varstore.cli", *args, *extra],
                          capture_output=True, text=True, timeout=120)


def test_serve_port_zero_prints_port_and_serves(server_process: ServerProcess) -> None:
    with vs.connect(server_process.address) as client:
        with client.variable_scope("n2"):
            client.get_variable("W", [2, 3])
        client.get_variable("top", [1], dtype=vs.int64)
    listed = varstore("ls", address=server_process.address)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["n2/W\tfloat32\t[2, 3]", "top\tint64\t[1]"]
    scoped = varstore("ls", "--scope", "n2", address=server_process.address)
    assert scoped.stdout.splitlines() == ["n2/W\tfloat32\t[2, 3]"]
    status = varstore("status", address=server_process.address)
    assert status.returncode == 0
    assert "variables:        2" in status.stdout
    assert f"version:          {vs.__version__}" in status.stdout


def test_busy_port_fails_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--checkpoint-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use (another varstore serve? " \
           f"`varstore status --address 127.0.0.1:{port}` tells) or 127.0.0.1 is no address " \
           "of this machine; choose another --port (0: a free one) or --host" in result.stderr


def test_client_command_without_server_says_where_it_looked() -> None:
    result = varstore("status", "--timeout", "0.5", address="127.0.0.1:1")
    assert result.returncode == 1
    assert "UnavailableError" in result.stderr and "127.0.0.1:1" in result.stderr
