"""The checkpoint folder under attack (issue #12, kind 5): a failed save leaves the folder as
it was and the server able to start; the server deletes and renames only files it wrote,
inside its folder, whatever a state file lists; crafted checkpoints are refused as
``DataLossError`` by restore and by ``varstore inspect`` (never a traceback)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from tests.conftest import start_server_process, stop_server_process
from varstore.common import dtypes
from varstore.common.errors import DataLossError, InvalidArgumentError
from varstore.server import checkpoints
from varstore.server.app import Server
from varstore.server.checkpoints import CheckpointManager
from varstore.server.store import VariableStore


@pytest.fixture
def ckpt_dir(server: Server) -> Path:
    """The in-process server's checkpoint folder."""
    return Path(server.checkpoints.directory)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_directory_in_the_way_fails_the_save_and_leaves_the_folder_as_it_was(
        client: vs.Client, ckpt_dir: Path) -> None:
    client.Variable(1.0, name="v")
    client.save("trap.index/m")  # makes a directory named like trap's index
    client.save("d/checkpoint/x")  # makes a directory where d's state file goes
    before = _files(ckpt_dir)
    with pytest.raises(InvalidArgumentError, match="trap.index is a directory"):
        client.save("trap")
    with pytest.raises(InvalidArgumentError, match="checkpoint is a directory"):
        client.save("d/model")
    assert _files(ckpt_dir) == before
    # Without a state file the save in d/ has nothing in its way.
    assert client.save("d/model", write_state=False) == "d/model"


def test_a_failed_save_removes_its_files_and_the_folders_it_made(
        client: vs.Client, ckpt_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client.Variable(1.0, name="v")
    client.save("m")
    before = _files(ckpt_dir)

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "_write_variable", disk_full)
    with pytest.raises(vs.errors.ResourceExhaustedError, match="No space left"):
        client.save("new/deeper/m")
    assert _files(ckpt_dir) == before
    monkeypatch.undo()
    (ckpt_dir / "blocker").write_text("a file where a folder should go")
    with pytest.raises(InvalidArgumentError, match="Not a directory"):
        client.save("blocker/x/m")
    assert _files(ckpt_dir) == sorted([*before, "blocker"])


def test_a_state_file_listing_files_outside_the_folder_deletes_nothing(
        client: vs.Client, ckpt_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("model.ckpt-1.index", "model.ckpt-1.data-00000-of-00001"):
        (victim / name).write_text("not the server's")
    ckpt_dir.mkdir(exist_ok=True)
    # TF1 writes absolute paths; these point outside the folder, and inside it at a file
    # another program wrote.
    (ckpt_dir / "mine.index").write_text("another program's")
    (ckpt_dir / "checkpoint").write_text(
        f'model_checkpoint_path: "{victim}/model.ckpt-1"\n'
        f'all_model_checkpoint_paths: "{victim}/model.ckpt-1"\n'
        f'all_model_checkpoint_paths: "{ckpt_dir}/mine"\n')
    client.Variable(1.0, name="v")
    for step in range(1, 4):
        client.save("model.ckpt", global_step=step, max_to_keep=1)
    assert sorted(os.listdir(victim)) == ["model.ckpt-1.data-00000-of-00001",
                                          "model.ckpt-1.index"]
    assert (ckpt_dir / "mine.index").read_text() == "another program's"
    assert client.latest_checkpoint() == "model.ckpt-3"


def test_start_up_deletes_only_the_servers_own_leftovers(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "exports").mkdir(parents=True)
    foreign = [ckpt / "exports" / "embeddings.data-00000-of-00002",
               ckpt / "notes.tempstate.txt", ckpt / "checkpoint.tmp0123456789abcdef",
               ckpt / "m.data-00000-of-00001.tempstate42"]
    for path in foreign:
        path.write_text("not the server's")
    own = ckpt / "x.data-00000-of-00001.tempstate-vs42"
    own.write_text("partial")
    # A directory where an interrupted save's index must go cannot stop the server.
    (ckpt / "y.tempstate-commit.index").write_text("index")
    (ckpt / "y.index").mkdir()
    manager = CheckpointManager(VariableStore(), ckpt)
    manager.recover()
    assert all(p.exists() for p in foreign)
    assert not own.exists()

    server = start_server_process(ckpt)
    try:
        with vs.connect(server.address) as c:
            c.Variable(1.0, name="v")
            assert c.save("z") == "z"
    finally:
        stop_server_process(server)


def _crafted(folder: Path) -> str:
    from tests.unit.test_bundle_crafted import FLOAT, _entry, _write
    folder.mkdir(parents=True, exist_ok=True)
    return _write(folder / "evil", {b"v": _entry(FLOAT, [2**40, 2**40], 0, 16)}, bytes(16))


def test_a_crafted_checkpoint_is_data_loss_for_restore_and_inspect(
        client: vs.Client, ckpt_dir: Path) -> None:
    _crafted(ckpt_dir)
    with pytest.raises(DataLossError, match="evil.index"):
        client.restore("evil")
    assert client.list_variables() == []
    done = subprocess.run([sys.executable, "-m", "varstore.cli", "inspect", str(ckpt_dir /
                                                                                "evil")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "DataLossError" in done.stderr and "Traceback" not in done.stderr


def test_restore_charges_what_it_reads_to_the_memory_limit(tmp_path: Path) -> None:
    from varstore.server import ServerConfig, create_server
    from varstore.server.bundle import BundleWriter
    from varstore.server.store import held_for

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with BundleWriter(ckpt / "big") as w:
        for i in range(3):
            w.add(f"t{i}", np.zeros(1 << 20, np.float32), dtypes.float32)  # 4 MiB each
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=ckpt,
                                     max_memory=6 << 20))
    srv.start()
    try:
        with vs.connect(f"127.0.0.1:{srv.port}") as c:
            with pytest.raises(vs.errors.ResourceExhaustedError, match="restoring t[012] from big"):
                c.restore("big")
            assert c.list_variables() == []
            # Nothing of the refused restore stays charged (calls in flight hold a little).
            assert srv.store.budget.used < 1 << 16
            c.restore("big", var_list={"t0": "t0"})
            assert [v.name for v in c.list_variables()] == ["t0"]
            # The value's 4 MiB, and the variable's record and name (store.held_for).
            assert srv.store.budget.used == held_for(srv.store.get("t0")) == (4 << 20) + 514
    finally:
        srv.stop(grace=1.0)
