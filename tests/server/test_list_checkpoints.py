"""`Client.list_checkpoints`: the complete checkpoints in the server's folder, as a client on
another machine sees them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from varstore.errors import PermissionDeniedError
from varstore.server import checkpoint_list
from varstore.server.app import Server

DATA = Path(__file__).resolve().parents[1] / "data" / "tf_checkpoints"


def _listed(client: vs.Client, directory: str = "") -> list[tuple[str, int, bool]]:
    return [(c.path, c.shards, c.latest) for c in client.list_checkpoints(directory)]


def test_lists_complete_checkpoints_newest_first(client: vs.Client, server: Server) -> None:
    folder = Path(server.checkpoints.directory)
    client.Variable(np.arange(1000, dtype=np.float32), name="w")
    for step in (1, 2):
        client.save("model.ckpt", global_step=step)
    client.save("best/model")
    client.save_checkpoint("side", write_state=False)
    os.utime(folder / "model.ckpt-1.index", (1, 1))  # oldest by far
    assert _listed(client) == [("side", 1, False), ("best/model", 1, True),
                               ("model.ckpt-2", 1, True), ("model.ckpt-1", 1, False)]
    assert _listed(client, "best") == [("best/model", 1, True)]
    (entry,) = [c for c in client.list_checkpoints() if c.path == "model.ckpt-2"]
    assert entry.nbytes == sum(f.stat().st_size for f in folder.glob("model.ckpt-2.*"))
    assert entry.mtime == pytest.approx((folder / "model.ckpt-2.index").stat().st_mtime)


def test_incomplete_and_temporary_files_are_no_checkpoints(client: vs.Client,
                                                           server: Server) -> None:
    folder = Path(server.checkpoints.directory)
    client.Variable(np.ones(10, np.float32), name="w")
    client.save("whole")
    shutil.copy(folder / "whole.index", folder / "nodata.index")
    shutil.copy(folder / "whole.index", folder / "half.index")
    (folder / "half.data-00001-of-00002").write_bytes(b"")
    (folder / "x.tempstate123.index").write_bytes(b"")
    (folder / "whole.data-00000-of-00001.tempstate9").write_bytes(b"")
    assert _listed(client) == [("whole", 1, True)]


def test_tensorflows_sharded_checkpoints_are_listed(client: vs.Client, server: Server) -> None:
    folder = Path(server.checkpoints.directory)
    folder.mkdir(parents=True, exist_ok=True)
    sharded = sorted(DATA.glob("*.data-00001-of-*"))
    assert sharded, "tests/data/tf_checkpoints holds a sharded TF checkpoint"
    prefix = sharded[0].name.split(".data-")[0]
    for f in DATA.glob(f"{prefix}.*"):
        shutil.copy(f, folder / f.name)
    shards = int(sharded[0].name.rsplit("-of-", 1)[1])
    assert _listed(client) == [(prefix, shards, False)]


def test_folders_outside_are_refused(client: vs.Client) -> None:
    for outside in ("..", "/tmp", "a/../../b"):
        with pytest.raises(PermissionDeniedError, match="outside the server's checkpoint"):
            client.list_checkpoints(outside)


def test_a_symlinked_folder_is_not_followed(client: vs.Client, server: Server,
                                            tmp_path: Path) -> None:
    folder = Path(server.checkpoints.directory)
    client.Variable(np.ones(3, np.float32), name="w")
    client.save("inside")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in folder.glob("inside.*"):
        shutil.copy(f, elsewhere / f.name.replace("inside", "secret"))
    (folder / "link").symlink_to(elsewhere, target_is_directory=True)
    assert _listed(client) == [("inside", 1, True)]


def test_a_huge_folder_is_listed_in_part_with_a_warning(
        client: vs.Client, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    client.Variable(np.ones(3, np.float32), name="w")
    for i in range(5):
        client.save(f"m{i}")
    monkeypatch.setattr(checkpoint_list, "MAX_CHECKPOINTS", 3)
    with pytest.warns(UserWarning, match="some checkpoints are missing"):
        assert len(client.list_checkpoints()) == 3
    monkeypatch.setattr(checkpoint_list, "MAX_ENTRIES", 4)
    with pytest.warns(UserWarning, match="some checkpoints are missing"):
        client.list_checkpoints()
