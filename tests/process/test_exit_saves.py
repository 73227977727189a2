"""How a server and a `varstore serve --shards N` cluster end: one final checkpoint (of the
whole cluster, written by shard 0 before the other shards stop), whoever sends the signal (a
terminal's Ctrl-C reaches the whole process group) and whatever TLS the shards' port asks for;
an error and exit code 1 when it could not be written. And the CLI over TLS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import varstore as vs
from tests.conftest import ServerProcess, folder_names, start_server_process
from tests.pki import Pki, make_pki
from tests.process.test_cluster import start_cluster_from
from varstore.cluster import ClusterClient
from varstore.transport import TLSConfig


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


_STARTED: list[ServerProcess] = []


@pytest.fixture(autouse=True)
def _stop_leftovers() -> Iterator[None]:
    """A test that fails before its server stops leaves no server behind (a --shards
    parent killed takes its shards with it: their parent-death signal)."""
    yield
    while _STARTED:
        server = _STARTED.pop()
        if server.process.poll() is None:
            server.process.kill()
            server.process.communicate(timeout=60)


def _start(tmp_path: Path, *flags: str) -> ServerProcess:
    # A process group of its own, as a shell gives a command it runs in a terminal.
    server = start_server_process(tmp_path / "ckpt", "--shards", "2", *flags,
                                  start_new_session=True)
    _STARTED.append(server)
    start_cluster_from(server, 2)
    return server


def _change(server: ServerProcess, tls: TLSConfig | None = None) -> None:
    with vs.connect(server.address, tls=tls) as client:
        assert isinstance(client, ClusterClient)
        for i in range(4):
            with client.device(f"/job:ps/task:{i % 2}"):
                client.Variable(float(i), name=f"v{i}").assign_add(10.0)


def _saved(folder: Path, step: int = 1) -> dict[str, float]:
    from varstore.server.bundle import BundleReader
    with BundleReader(folder / f"model.ckpt-{step}") as reader:
        return {k: float(reader.read(k)) for k in reader.keys()}


def test_ctrl_c_to_the_process_group_saves_the_cluster_first(tmp_path: Path) -> None:
    server = _start(tmp_path)
    _change(server)
    os.killpg(server.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 0, err[-2000:]
    assert _saved(tmp_path / "ckpt") == {"v0": 10.0, "v1": 11.0, "v2": 12.0, "v3": 13.0}
    assert "final checkpoint of the whole cluster written" in err


def _ctrl_c(server: ServerProcess) -> str:
    """Ctrl-C to the cluster's process group; its log, once it exited with status 0."""
    os.killpg(server.process.pid, signal.SIGINT)
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 0, err[-2000:]
    return err


def _files(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_mtime_ns for name in folder_names(folder)}


def test_a_cluster_restored_and_left_untouched_writes_nothing_on_exit(tmp_path: Path) -> None:
    # Restarted with --restore latest, shard 0 counted every variable as unsaved and wrote
    # model.ckpt-2, a copy of model.ckpt-1; a single server writes nothing then.
    folder = tmp_path / "ckpt"
    _change(_start(tmp_path))
    _ctrl_c(_STARTED[-1])
    before = _files(folder)
    err = _ctrl_c(_start(tmp_path, "--restore", "latest"))
    assert _files(folder) == before  # nothing written or rewritten, no shard's snapshot
    assert "--restore latest restores: nothing to save on exit" in err
    # Any change after the restore counts, on any shard.
    server = _start(tmp_path, "--restore", "latest")
    with vs.connect(server.address) as client:
        with client.variable_scope("", reuse=True):
            client.get_variable("v1", []).assign(-1.0)
    err = _ctrl_c(server)
    assert "final checkpoint of the whole cluster written: model.ckpt-2" in err
    assert _saved(folder, 2) == {"v0": 10.0, "v1": -1.0, "v2": 12.0, "v3": 13.0}


def test_a_mutual_tls_cluster_saves_on_exit(tmp_path: Path, pki: Pki) -> None:
    server = _start(tmp_path, "--tls-cert", str(pki.server_cert), "--tls-key",
                    str(pki.server_key), "--tls-client-ca", str(pki.ca))
    _change(server, TLSConfig(ca_cert=pki.ca, client_cert=pki.client_cert,
                              client_key=pki.client_key))
    server.process.send_signal(signal.SIGTERM)
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 0, err[-2000:]
    assert "final checkpoint of the whole cluster written" in err, err[-3000:]
    assert _saved(tmp_path / "ckpt") == {"v0": 10.0, "v1": 11.0, "v2": 12.0, "v3": 13.0}


def test_an_exit_checkpoint_that_cannot_be_written_is_an_error(tmp_path: Path) -> None:
    server = _start(tmp_path)
    _change(server)
    # A folder where a data file of the checkpoint must go: the save fails.
    (tmp_path / "ckpt" / "model.ckpt-1.data-00000-of-00002").mkdir(parents=True)
    server.process.send_signal(signal.SIGTERM)
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 1
    assert "ERROR varstore.server.checkpoint_timer: final checkpoint not written" in err


def test_a_server_whose_final_checkpoint_fails_exits_with_an_error(tmp_path: Path) -> None:
    server = start_server_process(tmp_path / "ckpt")
    _STARTED.append(server)
    with vs.connect(server.address) as client:
        client.Variable(1.0, name="v")
    (tmp_path / "ckpt" / "model.ckpt-1.data-00000-of-00001").mkdir(parents=True)
    server.process.send_signal(signal.SIGTERM)
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 1
    assert "ERROR varstore.server.checkpoint_timer: final checkpoint not written" in err
    assert "stopped; its final checkpoint was not written" in err


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "varstore.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_the_cli_speaks_tls_from_flags_or_the_environment(tmp_path: Path, pki: Pki) -> None:
    server = start_server_process(tmp_path / "ckpt", "--tls-cert", str(pki.server_cert),
                                  "--tls-key", str(pki.server_key), "--tls-client-ca",
                                  str(pki.ca))
    tls = TLSConfig(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    try:
        with vs.connect(server.address, tls=tls) as client:
            client.Variable(1.0, name="v")
        address = ["--address", server.address]
        flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                 "--tls-key", str(pki.client_key)]
        done = _cli("save", "m", "--quiet", *address, *flags)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "ckpt" / "m.index").is_file()
        env = {"VARSTORE_TLS_CA": str(pki.ca), "VARSTORE_TLS_CERT": str(pki.client_cert),
               "VARSTORE_TLS_KEY": str(pki.client_key)}
        done = _cli("status", *address, env=env)
        assert done.returncode == 0, done.stderr
        assert "variables:" in done.stdout
        # Plain text to a TLS port: refused, saying what failed.
        done = _cli("status", *address)
        assert done.returncode == 1
        assert "handshake failed" in done.stderr
    finally:
        server.process.terminate()
        server.process.communicate(timeout=60)


def _stop(server: ServerProcess) -> str:
    """SIGTERM to one server; its log, once it exited with status 0."""
    server.process.terminate()
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 0, err[-2000:]
    return err


def test_one_server_saves_on_exit_what_restore_latest_would_not_bring_back(
        tmp_path: Path) -> None:
    # After a save into another folder, one without a state file or one refused, SIGTERM
    # wrote nothing and --restore latest rolled v back to 0 (attack5 02); after reset, it
    # brought every deleted variable back (attack5 07).
    folder = tmp_path / "ckpt"

    def start(*flags: str) -> ServerProcess:
        _STARTED.append(start_server_process(folder, *flags))
        return _STARTED[-1]

    server = start()
    with vs.connect(server.address) as client:
        v = client.Variable(0, dtype=vs.int64, name="v")
        client.Variable(1.0, name="w")
        assert client.save("model.ckpt", global_step=0) == "model.ckpt-0"
        for _ in range(10):
            v.assign_add(1)
        assert client.save("best/model") == "best/model"
        assert client.save_checkpoint("nostate", write_state=False).path == "nostate"
        with pytest.raises(vs.errors.InvalidArgumentError, match="max_to_keep must be >= 0"):
            client.save("refused", max_to_keep=-1)
    assert "final checkpoint written: model.ckpt-1" in _stop(server)
    server = start("--restore", "latest")
    with vs.connect(server.address) as client:
        with client.variable_scope("", reuse=True):
            assert client.get_variable("v", [], dtype=vs.int64).numpy() == 10
        assert client.reset() == ["v", "w"]
    assert "final checkpoint written: model.ckpt-2" in _stop(server)
    assert _saved(folder, 2) == {}  # an empty checkpoint (TensorFlow reads it: interop)
    server = start("--restore", "latest")
    with vs.connect(server.address) as client:
        assert client.list_variables() == []
    assert "--restore latest restores: nothing to save on exit" in _stop(server)


def test_a_cluster_saves_on_exit_what_restore_latest_would_not_bring_back(
        tmp_path: Path) -> None:
    # After a save shard 0 refused at its commit, or one into another folder, every shard
    # answered "nothing unsaved": the whole cluster wrote nothing on exit and lost every
    # change (attack5 01b); after reset the deleted variables came back (attack5 07).
    folder = tmp_path / "ckpt"
    server = _start(tmp_path)
    with vs.connect(server.address) as client:
        _change(server)
        assert client.save("model.ckpt", global_step=0) == "model.ckpt-0"
        with client.variable_scope("", reuse=True):
            client.get_variable("v1", []).assign_add(5.0)
        with pytest.raises(vs.errors.InvalidArgumentError, match="max_to_keep must be >= 0"):
            client.save("refused", max_to_keep=-1)
        assert client.save("best/model") == "best/model"
    assert "final checkpoint of the whole cluster written: model.ckpt-1" in _ctrl_c(server)
    assert _saved(folder, 1) == {"v0": 10.0, "v1": 16.0, "v2": 12.0, "v3": 13.0}
    server = _start(tmp_path, "--restore", "latest")
    with vs.connect(server.address) as client:
        assert sorted(client.reset()) == ["v0", "v1", "v2", "v3"]
    assert "final checkpoint of the whole cluster written: model.ckpt-2" in _ctrl_c(server)
    assert _saved(folder, 2) == {}
    server = _start(tmp_path, "--restore", "latest")
    with vs.connect(server.address) as client:
        assert client.list_variables() == []
    assert "--restore latest restores: nothing to save on exit" in _ctrl_c(server)
