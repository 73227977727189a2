"""One checkpoint folder, one store: a second server on a folder in use is refused at start,
naming the server that holds it, and nothing of the first one's is touched."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
from varstore.errors import FailedPreconditionError
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server

IN_USE = "is in use by another varstore server"


def _config(folder: Path, **settings: object) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=folder, **settings)  # type: ignore[arg-type]


def test_a_second_server_on_a_folder_in_use_is_refused(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    with vs.connect(f"127.0.0.1:{server.port}") as client:
        client.Variable(np.ones(4, np.float32), name="w")
        client.save("model.ckpt", global_step=1)
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(FailedPreconditionError, match=IN_USE) as refused:
        create_server(_config(folder))
    assert (f"varstore server: pid {os.getpid()} on {socket.gethostname()}"
            in str(refused.value))
    assert "Give this one its own --checkpoint-dir" in str(refused.value)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_folder_is_free_again_once_its_server_stopped(tmp_path: Path) -> None:
    first = create_server(_config(tmp_path / "ckpt"))
    first.start()
    first.stop(grace=1.0)
    second = create_server(_config(tmp_path / "ckpt"))
    second.stop(grace=1.0)


def test_a_server_that_fails_to_start_leaves_the_folder_free(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="cannot listen"):
            create_server(ServerConfig(host="127.0.0.1", port=busy.getsockname()[1],
                                       checkpoint_dir=tmp_path / "ckpt"))
    create_server(_config(tmp_path / "ckpt")).stop(grace=1.0)


def test_shards_share_a_folder_but_not_a_task_index(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    cluster = ("127.0.0.1:1", "127.0.0.1:2")
    shard0 = create_server(_config(folder, cluster=cluster, task_index=0))
    try:
        shard1 = create_server(_config(folder, cluster=cluster, task_index=1))
        shard1.stop(grace=1.0)
        with pytest.raises(FailedPreconditionError, match=f"{IN_USE} .*varstore shard 0: pid"):
            create_server(_config(folder, cluster=cluster, task_index=0))
        with pytest.raises(FailedPreconditionError, match=IN_USE):
            create_server(_config(folder))  # a single server beside a cluster
    finally:
        shard0.stop(grace=1.0)


def test_a_symlink_planted_as_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (folder / ".varstore.lock").symlink_to(target)
    srv = create_server(_config(folder))  # runs, without the check (logged)
    srv.stop(grace=1.0)
    assert target.read_text() == "precious\n"
