"""The server replaces only files of its kind: a state file named by ``latest_filename``, or
a checkpoint's index and data files, that already hold something else (a TensorBoard log, a
``.meta`` graph, any other file) make the save fail with AlreadyExistsError, and nothing in
the folder changes."""

from __future__ import annotations

from pathlib import Path

import pytest

import varstore as vs
from varstore.errors import AlreadyExistsError
from varstore.server.app import Server

FOREIGN = b"\x18\x00\x00\x00\x00\x00\x00\x00brain.Event:2 not a checkpoint state"


def _folder(server: Server) -> Path:
    folder = Path(server.checkpoints.folder.root)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("name, content", [
    ("events.out.tfevents.1700000000.host", FOREIGN),
    ("model.ckpt-5.meta", b"\x0a\x0bmeta_graph"),
    ("notes.txt", b"model_checkpoint_path is what this note is about\n"),
])
def test_a_foreign_file_named_as_the_state_file_is_never_replaced(
        server: Server, client: vs.Client, name: str, content: bytes) -> None:
    client.get_variable("v", [2], initializer=vs.ones_initializer())
    folder = _folder(server)
    (folder / name).write_bytes(content)
    before = _snapshot(folder)
    with pytest.raises(AlreadyExistsError, match=f"{name} exists and is no checkpoint file"):
        client.save("model.ckpt", global_step=7, latest_filename=name)
    assert _snapshot(folder) == before


def test_a_state_file_of_its_own_name_is_replaced(server: Server, client: vs.Client) -> None:
    client.get_variable("v", [2], initializer=vs.ones_initializer())
    client.save("model.ckpt", global_step=1, latest_filename="my_state")
    client.save("model.ckpt", global_step=2, latest_filename="my_state")
    text = (_folder(server) / "my_state").read_text()
    assert 'model_checkpoint_path: "model.ckpt-2"' in text
    assert client.latest_checkpoint(latest_filename="my_state") == "model.ckpt-2"


@pytest.mark.parametrize("taken", ["m.index", "m.data-00000-of-00001", "m.data-00000-of-00002"])
def test_a_prefix_whose_file_names_hold_foreign_files_is_refused(
        server: Server, client: vs.Client, taken: str) -> None:
    client.get_variable("v", [2], initializer=vs.ones_initializer())
    folder = _folder(server)
    (folder / taken).write_bytes(FOREIGN)
    before = _snapshot(folder)
    with pytest.raises(AlreadyExistsError, match=f"{taken} exists and is no checkpoint file"):
        client.save("m")
    assert _snapshot(folder) == before


def test_saving_over_a_checkpoint_replaces_it(server: Server, client: vs.Client) -> None:
    v = client.get_variable("v", [2], initializer=vs.ones_initializer())
    client.save("m")
    v.assign([5.0, 6.0])
    client.save("m")
    v.assign([0.0, 0.0])
    client.restore("m")
    assert v.numpy().tolist() == [5.0, 6.0]
