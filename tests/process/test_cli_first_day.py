"""What a newcomer meets on day one with the `varstore` command: its version, messages free of
gRPC's own log lines, a labelled status, progress that is one line in a log, and checkpoint
paths taken from wherever they make sense."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import ServerProcess

# gRPC's C core writes lines such as "E1129 14:42:19.519910   20355 add_port.cc:83] ...".
GRPC_LOG_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


def varstore(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "varstore.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_version_names_varstore_python_and_grpc() -> None:
    result = varstore("--version")
    assert result.returncode == 0
    assert re.fullmatch(rf"varstore {re.escape(vs.__version__)} \(Python \d+\.\d+\.\d+, "
                        rf"grpcio \d+\.\d+\.\d+\)\n", result.stdout)


def test_every_command_help_says_what_it_does() -> None:
    for command in ("serve", "stop", "status", "ls", "rm", "reset", "save", "checkpoints",
                    "restore", "inspect"):
        usage, description = varstore(command, "--help").stdout.split("\n\n")[:2]
        assert usage.startswith(f"usage: varstore {command} ")
        assert not description.startswith(("options:", "positional arguments:")), command
    serve = " ".join(varstore("serve", "--help").stdout.split())
    assert "Runs a server on 127.0.0.1:7011 with its checkpoints in ./checkpoints; Ctrl-C " \
           "stops it after a final checkpoint" in serve


def test_a_busy_port_says_only_our_message(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = varstore("serve", "--host", "127.0.0.1", "--port", str(port),
                          "--checkpoint-dir", str(tmp_path))
    assert result.returncode != 0
    assert f"varstore serve: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not GRPC_LOG_LINE.search(result.stderr), result.stderr


@pytest.fixture
def saved(server_process: ServerProcess) -> ServerProcess:
    """The server holding two variables and their checkpoint model.ckpt-5."""
    with vs.connect(server_process.address) as client:
        client.Variable(np.zeros((300, 300), np.float32), name="w")
        client.Variable(np.ones(3, np.float32), name="b")
        client.save("model.ckpt", global_step=5)
    return server_process


def test_status_says_what_its_client_count_counts(saved: ServerProcess) -> None:
    result = varstore("status", "--address", saved.address)
    assert result.returncode == 0, result.stderr
    assert ("client hosts:     1 (hosts that read or updated variables in the last 60s)"
            in result.stdout.splitlines())
    assert (f"checkpoint dir:   {saved.checkpoint_dir.resolve()} (on the server's machine)"
            in result.stdout.splitlines())


def test_progress_is_one_line_when_stderr_is_not_a_terminal(saved: ServerProcess) -> None:
    result = varstore("save", "--address", saved.address, "--step", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "model.ckpt-6\n"
    (line,) = result.stderr.splitlines()
    assert line.startswith("saving: 100%|") and line.endswith("2/2 tensors]"), line
    assert "\r" not in result.stderr


def test_inspect_reads_a_name_save_printed_from_the_servers_folder(saved: ServerProcess,
                                                                   tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = varstore("inspect", "model.ckpt-5", "--address", saved.address, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["b\tfloat32\t[3]", "w\tfloat32\t[300, 300]"]
    assert result.stderr == (f"varstore inspect: no model.ckpt-5 here; reading "
                             f"{saved.checkpoint_dir.resolve() / 'model.ckpt-5'} (the "
                             f"server's checkpoint folder)\n")


def test_inspect_of_a_local_path_needs_no_server(saved: ServerProcess) -> None:
    prefix = saved.checkpoint_dir / "model.ckpt-5"
    result = varstore("inspect", str(prefix), "--address", "127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["b\tfloat32\t[3]", "w\tfloat32\t[300, 300]"]


def test_inspect_into_a_reader_that_stops_ends_quietly(saved: ServerProcess) -> None:
    """`varstore inspect ... --values | head -1`: no message when head stops reading."""
    prefix = saved.checkpoint_dir / "model.ckpt-5"
    proc = subprocess.Popen([sys.executable, "-m", "varstore.cli", "inspect", str(prefix),
                             "--values"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == "b\tfloat32\t[3]\n"
    proc.stdout.close()  # w's 90,000 values are more than the pipe holds
    # 141 when the rest did not fit the pipe (SIGPIPE's status); 0 when it all fit first.
    assert proc.wait(timeout=120) in (0, 128 + 13)
    assert proc.stderr.read() == ""


def test_checkpoints_lists_the_servers_folder_newest_first(saved: ServerProcess) -> None:
    with vs.connect(saved.address) as client:
        client.save("best/model")
    result = varstore("checkpoints", "--address", saved.address)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(line[0], line[2].endswith("(latest)")) for line in lines] == [
        ("best/model", True), ("model.ckpt-5", True)]
    files = saved.checkpoint_dir.glob("model.ckpt-5.*")
    assert lines[1][1] == f"{sum(f.stat().st_size for f in files) / 1024:.1f} KB" == "351.7 KB"
    result = varstore("checkpoints", "nowhere", "--address", saved.address)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "no checkpoints\n")


def test_restore_takes_a_local_path_into_the_servers_folder(saved: ServerProcess) -> None:
    with vs.connect(saved.address) as client:
        _bind(client, "b").assign(np.zeros(3))
    here = saved.checkpoint_dir.parent
    local = f"{saved.checkpoint_dir.name}/model.ckpt-5"
    result = varstore("restore", local, "--quiet", "--address", saved.address, cwd=here)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"restored {saved.checkpoint_dir.resolve() / 'model.ckpt-5'}\n"
    with vs.connect(saved.address) as client:
        assert _bind(client, "b").numpy().tolist() == [1, 1, 1]


def _bind(client: vs.Client, name: str) -> vs.RemoteVariable:
    with client.variable_scope("", reuse=True):
        return client.get_variable(name, [3])


def test_serve_refuses_settings_it_cannot_honour_at_start(tmp_path: Path) -> None:
    config = tmp_path / "varstore.toml"
    config.write_text('restore = ["a"]\nmax_memory = "5Q"\n')
    for args, error in (
            (("--keep", "-1"), "varstore serve: --keep must be an integer >= 0, got -1"),
            (("--save-every", "nan"), "varstore serve: --save-every must be a number of "
                                      "seconds >= 0"),
            (("--max-memory", "-5"), "'-5' is not a size"),
            (("--config", str(config)), "'5Q' is not a size")):
        result = varstore("serve", "--port", "0", "--checkpoint-dir", str(tmp_path / "c"),
                          *args)
        assert result.returncode != 0 and error in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    config.write_text('restore = ["a"]\n')
    result = varstore("serve", "--port", "0", "--config", str(config))
    assert result.returncode == 1
    assert "--restore must be 'latest' or a checkpoint prefix, got ['a']" in result.stderr
