"""Checkpoints written and restored by the server: files, values, errors, paths, timer, CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from google.protobuf import text_format

import varstore as vs
from tests.conftest import ServerProcess, folder_names
from tests.unit.test_bundle import EXPECTED, SHAPES, TF_DATA, _same, _sample
from varstore import dtypes
from varstore.errors import (
    AlreadyExistsError,
    DataLossError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from varstore.proto import tensor_bundle_pb2 as bundle_pb
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server
from varstore.server.bundle import BundleReader, BundleWriter
from varstore.server.checkpoint_folder import CheckpointFolder
from varstore.server.checkpoints import CheckpointManager
from varstore.server.store import Variable, VariableStore


@pytest.fixture(scope="module")
def expected_npz() -> dict[str, np.ndarray]:
    with np.load(TF_DATA / "expected.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture
def ckpt_dir(server: Server) -> Path:
    return Path(server.checkpoints.directory)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[..., vs.Client]]:
    """Starts more in-process servers, on the checkpoint folder of ``server`` unless told
    another (``checkpoint_dir=``; one server holds a folder at a time)."""
    servers: list[Server] = []
    clients: list[vs.Client] = []

    def start(**config: Any) -> vs.Client:
        config.setdefault("checkpoint_dir", tmp_path / "ckpt")
        srv = create_server(ServerConfig(host="127.0.0.1", port=0, **config))
        srv.start()
        servers.append(srv)
        clients.append(vs.connect(f"127.0.0.1:{srv.port}"))
        return clients[-1]

    yield start
    for c in clients:
        c.close()
    for srv in servers:
        srv.stop(grace=1.0)


def _uninitialized(client: vs.Client, name: str, shape: tuple[int, ...],
                   dtype: vs.DType = vs.float32) -> vs.RemoteVariable:
    b = RequestBuilder()
    b.variable(name, dtype, shape)
    client.run(b)
    return vs.RemoteVariable(client, name, dtype, shape)


def _handle(client: vs.Client, name: str) -> vs.RemoteVariable:
    info = {v.name: v for v in client.list_variables()}[name]
    return vs.RemoteVariable(client, name, info.dtype, info.shape)


def _values(client: vs.Client) -> dict[str, np.ndarray]:
    """Every variable's value by checkpoint key: the parts of a partitioned variable
    assembled under its full name."""
    infos = client.list_variables()
    handles = [vs.RemoteVariable(client, v.name, v.dtype, v.shape) for v in infos]
    values: dict[str, np.ndarray] = {}
    for info, value in zip(infos, client.pull(handles), strict=True):
        part = info.save_slice
        if part is None:
            values[info.name] = value
            continue
        full = values.setdefault(part.full_name, np.zeros(part.full_shape, value.dtype))
        full[tuple(slice(o, o + n) for o, n in zip(part.offset, part.shape, strict=True))] = \
            value
    return values


def _state(directory: Path) -> bundle_pb.CheckpointState:
    return text_format.Parse((directory / "checkpoint").read_text(), bundle_pb.CheckpointState())


def _copy_tf_checkpoints(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for f in TF_DATA.iterdir():
        if not f.name.startswith("expected"):
            shutil.copy(f, target / f.name)


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# --- writing ---

def test_save_writes_tensorflow_files_and_the_state_file(client: vs.Client, ckpt_dir: Path
                                                          ) -> None:
    with client.variable_scope("n2"):
        w = client.get_variable("W", [2, 3], initializer=vs.ones_initializer)
    step = client.Variable(7, name="step")
    assert client.save("model.ckpt", global_step=3) == "model.ckpt-3"
    assert client.save("sub/dir/model.ckpt") == "sub/dir/model.ckpt"
    assert folder_names(ckpt_dir) == [
        "checkpoint", "model.ckpt-3.data-00000-of-00001", "model.ckpt-3.index", "sub"]
    assert sorted(os.listdir(ckpt_dir / "sub" / "dir")) == [
        "checkpoint", "model.ckpt.data-00000-of-00001", "model.ckpt.index"]
    state = _state(ckpt_dir)
    assert state.model_checkpoint_path == "model.ckpt-3"
    assert list(state.all_model_checkpoint_paths) == ["model.ckpt-3"]
    assert _state(ckpt_dir / "sub" / "dir").model_checkpoint_path == "model.ckpt"
    with BundleReader(ckpt_dir / "model.ckpt-3") as r:
        assert r.keys() == ["n2/W", "step"]
        _same(r.read("n2/W"), np.ones((2, 3), np.float32))
        _same(r.read("step"), np.array(7, np.int32))
    assert client.latest_checkpoint() == "model.ckpt-3"
    assert client.latest_checkpoint("sub/dir") == "sub/dir/model.ckpt"
    assert client.latest_checkpoint("sub") is None
    assert client.status().last_checkpoint == "sub/dir/model.ckpt"
    assert w.name == "n2/W:0" and step.numpy() == 7


def test_saves_and_restores_are_counted_in_the_metrics(client: vs.Client, server: Server) -> None:
    client.Variable(np.zeros(10, np.float64), name="v")
    client.save("a")
    client.save("b")
    client.restore("a")
    registry = server.metrics.registry
    assert registry.get_sample_value("varstore_checkpoints_total", {"kind": "save"}) == 2
    assert registry.get_sample_value("varstore_checkpoints_total", {"kind": "restore"}) == 1
    assert registry.get_sample_value("varstore_checkpoint_last_bytes", {"kind": "save"}) == 80


def test_a_file_in_the_way_of_a_prefix_is_a_clear_error(client: vs.Client) -> None:
    client.Variable(1.0, name="v")
    client.save("model.ckpt")
    with pytest.raises(AlreadyExistsError, match="cannot write checkpoint checkpoint/model"):
        client.save("checkpoint/model")  # "checkpoint" is the state file


def test_absolute_prefix_inside_the_folder_is_returned_as_given(client: vs.Client,
                                                                ckpt_dir: Path) -> None:
    client.Variable(1.5, name="x")
    prefix = str(ckpt_dir / "abs" / "model")
    assert client.save(prefix, global_step=10) == f"{prefix}-10"
    assert (ckpt_dir / "abs" / "model-10.index").exists()
    assert client.restore(f"{prefix}-10") == f"{prefix}-10"
    assert client.latest_checkpoint(str(ckpt_dir / "abs")) == f"{prefix}-10"


def test_every_dtype_round_trips_through_a_fresh_server(
        client: vs.Client, fresh: Callable[..., vs.Client]) -> None:
    rng = np.random.default_rng(11)
    written = {}
    for dtype in dtypes.ALL:
        for i, shape in enumerate(SHAPES):
            name = f"{dtype.name}/v{i}"
            written[name] = _sample(dtype, shape, rng)
            client.Variable(written[name], name=name, dtype=dtype)
    assert client.save("all", global_step=1) == "all-1"
    copy = Path(client.status().checkpoint_dir).with_name("copy")
    shutil.copytree(client.status().checkpoint_dir, copy)
    other = fresh(checkpoint_dir=copy)
    assert other.list_variables() == []
    assert other.restore("all-1") == "all-1"
    infos = {v.name: v for v in other.list_variables()}
    assert sorted(infos) == sorted(written)
    got = _values(other)
    for name, value in written.items():
        assert infos[name].initialized and infos[name].shape == value.shape
        _same(got[name], value)


def test_saver_dict_saves_and_restores_only_its_keys(client: vs.Client, ckpt_dir: Path) -> None:
    v1 = client.get_variable("v1", [3], initializer=vs.zeros_initializer)
    v2 = client.get_variable("v2", [5], initializer=vs.zeros_initializer)
    v1.assign_add(np.ones(3, np.float32))
    v2.assign_sub(np.ones(5, np.float32))
    assert client.save("model.ckpt", var_list={"renamed": v2}) == "model.ckpt"
    with BundleReader(ckpt_dir / "model.ckpt") as r:
        assert r.keys() == ["renamed"]
    v1.assign(np.full(3, 9, np.float32))
    v2.assign(np.full(5, 9, np.float32))
    client.restore("model.ckpt", var_list={"renamed": v2})
    _same(v2.numpy(), -np.ones(5, np.float32))
    _same(v1.numpy(), np.full(3, 9, np.float32))
    client.save("both", var_list=[v1, v2])
    with BundleReader(ckpt_dir / "both") as r:
        assert r.keys() == ["v1", "v2"]


def test_uninitialized_variable_fails_the_save_and_writes_nothing(client: vs.Client,
                                                                  ckpt_dir: Path) -> None:
    client.Variable(1.0, name="ready")
    _uninitialized(client, "layer/W", (2, 2))
    with pytest.raises(FailedPreconditionError,
                       match="Attempting to use uninitialized value layer/W"):
        client.save("model.ckpt")
    assert folder_names(ckpt_dir) == []


def test_saving_nothing_or_a_missing_variable_fails(client: vs.Client) -> None:
    with pytest.raises(FailedPreconditionError, match="No variables to save"):
        client.save("model.ckpt")
    with pytest.raises(NotFoundError, match="ghost"):
        client.save("model.ckpt", var_list={"k": "ghost"})


def test_saving_the_same_prefix_again_replaces_it(client: vs.Client, ckpt_dir: Path) -> None:
    v = client.Variable(np.arange(4, dtype=np.float32), name="v")
    client.save("model.ckpt")
    v.assign(np.full(4, 7, np.float32))
    client.save("model.ckpt")
    assert folder_names(ckpt_dir) == [
        "checkpoint", "model.ckpt.data-00000-of-00001", "model.ckpt.index"]
    assert list(_state(ckpt_dir).all_model_checkpoint_paths) == ["model.ckpt"]
    v.assign(np.zeros(4, np.float32))
    client.restore("model.ckpt")
    _same(v.numpy(), np.full(4, 7, np.float32))


def test_max_to_keep_deletes_old_checkpoints(client: vs.Client, ckpt_dir: Path) -> None:
    v = client.Variable(0, name="v")
    for step in range(1, 6):
        v.assign(step)
        client.save("model.ckpt", global_step=step, max_to_keep=2)
    assert folder_names(ckpt_dir) == [
        "checkpoint", "model.ckpt-4.data-00000-of-00001", "model.ckpt-4.index",
        "model.ckpt-5.data-00000-of-00001", "model.ckpt-5.index"]
    state = _state(ckpt_dir)
    assert state.model_checkpoint_path == "model.ckpt-5"
    assert list(state.all_model_checkpoint_paths) == ["model.ckpt-4", "model.ckpt-5"]
    # As TF's Saver(max_to_keep=0): nothing deleted, the state file lists only the newest.
    for step in (6, 7, 8):
        client.save("model.ckpt", global_step=step, max_to_keep=0)
    assert list(_state(ckpt_dir).all_model_checkpoint_paths) == ["model.ckpt-8"]
    assert sorted(n[:-6] for n in os.listdir(ckpt_dir) if n.endswith(".index")) == [
        f"model.ckpt-{s}" for s in (4, 5, 6, 7, 8)]
    client.restore("model.ckpt-4")
    assert v.numpy() == 4


# --- reading, TensorFlow's files included ---

@pytest.mark.parametrize("name", ["golden", "sharded"])
def test_tensorflow_checkpoints_restore_every_variable(
        name: str, client: vs.Client, ckpt_dir: Path,
        expected_npz: dict[str, np.ndarray]) -> None:
    _copy_tf_checkpoints(ckpt_dir)
    assert client.restore(name) == name
    expected = EXPECTED[name]
    infos = {v.name: v for v in client.list_variables()}
    # TF's partitioned variable (golden's part/P) comes back as its parts, named as TF
    # names them.
    parts = [f"part/P/part_{i}" for i in range(3)] if "part/P" in expected else []
    assert sorted(infos) == sorted([*(k for k in expected if k != "part/P"), *parts])
    assert [infos[p].shape for p in parts] == [(4, 4), (3, 4), (3, 4)][:len(parts)]
    values = _values(client)
    assert sorted(values) == sorted(expected)
    for key, want in expected.items():
        assert dtypes.as_dtype(values[key].dtype).name == want["dtype"]
        assert values[key].shape == tuple(want["shape"])
        if "npz_key" in want:
            _same(values[key], expected_npz[want["npz_key"]])
        elif "value_as_float32" in want:
            assert values[key].dtype == ml_dtypes.bfloat16
            _same(values[key].astype(np.float32), np.array(want["value_as_float32"], np.float32))
        else:
            assert values[key].tolist() == [s.encode() for s in want["value_utf8"]]


def test_restore_latest_follows_the_state_file(client: vs.Client, ckpt_dir: Path,
                                               expected_npz: dict[str, np.ndarray]) -> None:
    with pytest.raises(NotFoundError, match="no checkpoint"):
        client.restore("latest")
    assert client.latest_checkpoint() is None
    _copy_tf_checkpoints(ckpt_dir)  # its state file names "golden"
    assert client.latest_checkpoint() == "golden"
    assert client.restore("latest") == "golden"
    _same(_values(client)["part/P"], expected_npz["golden::part/P"])


def test_tf2_object_checkpoint_restores_by_key(client: vs.Client, ckpt_dir: Path,
                                               expected_npz: dict[str, np.ndarray]) -> None:
    _copy_tf_checkpoints(ckpt_dir)
    w_key, step_key = "model/w/.ATTRIBUTES/VARIABLE_VALUE", "model/step/.ATTRIBUTES/VARIABLE_VALUE"
    w = client.get_variable("w", [2, 2], initializer=vs.zeros_initializer)
    client.restore("tf2obj", var_list={w_key: w, step_key: "step"})
    _same(w.numpy(), expected_npz[f"tf2obj::{w_key}"])
    _same(_handle(client, "step").numpy(), expected_npz[f"tf2obj::{step_key}"])
    # Restoring everything skips TensorFlow's object graph, which is no variable.
    client.restore("tf2obj")
    assert sorted(v.name for v in client.list_variables()) == sorted(
        ["w", "step", w_key, step_key])


def test_restore_initializes_existing_variables_and_leaves_others(client: vs.Client) -> None:
    v1 = client.get_variable("v1", [3], initializer=vs.ones_initializer)
    v2 = client.get_variable("v2", [5], initializer=vs.zeros_initializer)
    client.save("model.ckpt")
    v1.assign(np.full(3, 4, np.float32))
    other = vs.connect(client.address)
    with other:
        _uninitialized(other, "fresh", (3,))
        other.restore("model.ckpt", var_list={"v1": "fresh"})
        _same(_handle(other, "fresh").numpy(), np.ones(3, np.float32))
    _same(v1.numpy(), np.full(3, 4, np.float32))
    assert v2.is_initialized()


# --- integrity: a failed restore changes nothing ---

def _prepared(client: vs.Client) -> tuple[vs.RemoteVariable, vs.RemoteVariable]:
    a = client.Variable(np.arange(100, dtype=np.float32), name="a")
    b = client.Variable(np.arange(10, dtype=np.int64), name="b")
    client.save("model.ckpt")
    a.assign(np.zeros(100, np.float32))
    b.assign(np.zeros(10, np.int64))
    return a, b


def _unchanged(client: vs.Client, a: vs.RemoteVariable, b: vs.RemoteVariable) -> None:
    _same(a.numpy(), np.zeros(100, np.float32))
    _same(b.numpy(), np.zeros(10, np.int64))
    assert sorted(v.name for v in client.list_variables()) == ["a", "b"]


def test_corrupt_checkpoint_is_data_loss_naming_tensor_and_file(client: vs.Client,
                                                                ckpt_dir: Path) -> None:
    a, b = _prepared(client)
    data = ckpt_dir / "model.ckpt.data-00000-of-00001"
    _flip(data, 405)  # inside "b", after the 400 bytes of "a"
    with pytest.raises(DataLossError) as err:
        client.restore("model.ckpt")
    assert "tensor b" in str(err.value) and str(data) in str(err.value)
    _unchanged(client, a, b)


def test_corrupt_index_is_data_loss(client: vs.Client, ckpt_dir: Path) -> None:
    a, b = _prepared(client)
    _flip(ckpt_dir / "model.ckpt.index", 5)
    with pytest.raises(DataLossError, match=r"model\.ckpt\.index"):
        client.restore("model.ckpt")
    _unchanged(client, a, b)


def test_missing_checkpoint_or_key_is_not_found(client: vs.Client) -> None:
    a, b = _prepared(client)
    with pytest.raises(NotFoundError, match="nothing"):
        client.restore("nothing")
    with pytest.raises(NotFoundError, match="Key c not found"):
        client.restore("model.ckpt", var_list={"a": "a", "c": "b"})
    _unchanged(client, a, b)


def test_shape_or_dtype_mismatch_is_invalid_argument(client: vs.Client) -> None:
    a, b = _prepared(client)
    with pytest.raises(InvalidArgumentError, match=r"variable a .*int64 \[10\]"):
        client.restore("model.ckpt", var_list={"b": "a"})
    _unchanged(client, a, b)
    with vs.connect(client.address) as other:
        other.Variable(np.zeros(3, np.float32), name="b2")
    with pytest.raises(InvalidArgumentError, match="b2"):
        client.restore("model.ckpt", var_list={"a": "new", "b": "b2"})
    assert "new" not in [v.name for v in client.list_variables()]


# --- paths stay inside the checkpoint folder ---

def test_paths_escaping_the_folder_are_refused(client: vs.Client, ckpt_dir: Path,
                                               tmp_path: Path) -> None:
    client.Variable(1.0, name="x")
    outside = tmp_path / "outside"
    outside.mkdir()
    ckpt_dir.mkdir(exist_ok=True)
    (ckpt_dir / "link").symlink_to(outside, target_is_directory=True)
    with BundleWriter(outside / "theirs") as w:
        w.add("x", np.array(2.0, np.float32), dtypes.float32)
    (ckpt_dir / "theirs.index").symlink_to(outside / "theirs.index")
    (ckpt_dir / "theirs.data-00000-of-00001").symlink_to(outside / "theirs.data-00000-of-00001")
    for bad in ("../escape", "a/../../escape", str(outside / "model"), "link/model", "/etc/x",
                "."):
        with pytest.raises(PermissionDeniedError, match="outside"):
            client.save(bad)
        with pytest.raises(PermissionDeniedError, match="outside"):
            client.restore(bad)
    with pytest.raises(PermissionDeniedError, match="outside"):
        client.restore("theirs")
    for bad in ("..", str(outside), "link"):
        with pytest.raises(PermissionDeniedError, match="outside"):
            client.latest_checkpoint(bad)
    assert sorted(os.listdir(outside)) == ["theirs.data-00000-of-00001", "theirs.index"]
    assert _handle(client, "x").numpy() == 1.0
    assert client.save("inside/../fine") == "inside/../fine"
    assert (ckpt_dir / "fine.index").exists()


# --- consistency while workers update ---

def test_a_save_during_updates_has_no_torn_values(client: vs.Client, ckpt_dir: Path) -> None:
    v = client.Variable(np.zeros(2_000_000, np.float32), name="v")
    stop = threading.Event()

    def worker() -> None:
        with vs.connect(client.address) as c:
            handle = vs.RemoteVariable(c, "v", vs.float32, (2_000_000,))
            while not stop.is_set():
                handle.assign_add(np.float32(1))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(5):
            client.save(f"c{i}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    seen = set()
    for i in range(5):
        with BundleReader(ckpt_dir / f"c{i}") as r:
            value = r.read("v")
        assert (value == value[0]).all()
        seen.add(float(value[0]))
    assert v.numpy()[0] >= max(seen)


def test_progress_reaches_the_total_in_several_messages(client: vs.Client) -> None:
    client.Variable(np.ones((500, 100_000), np.float32), name="big")  # 200 MB: 4 pieces
    for i in range(300):
        client.Variable(np.full(10, i, np.int64), name=f"small/{i:03d}")
    for call in (lambda p: client.save("model.ckpt", progress=p),
                 lambda p: client.restore("model.ckpt", progress=p)):
        seen: list[Any] = []
        assert call(seen.append) == "model.ckpt"
        # Every 64 MiB and every few tensors (about 100 reports), and once more when done.
        assert 100 <= len(seen) <= 110 and seen[-1].done and seen[-1].path == "model.ckpt"
        assert not any(m.done for m in seen[:-1])
        total = 500 * 100_000 * 4 + 300 * 80
        assert {(m.bytes_total, m.tensors_total) for m in seen} == {(total, 301)}
        done = [m.bytes_done for m in seen]
        assert done == sorted(done) and done[-1] == total and seen[-1].tensors_done == 301
        assert done[0] == 0 and done[1] in (64 << 20, 500 * 100_000 * 4)


# --- the timer, start-up and recovery ---

def _wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def _counter_step(path: str | None) -> int:
    return int(path.rsplit("-", 1)[1]) if path else 0


def test_timer_saves_with_the_global_step_or_a_counter(
        tmp_path: Path, fresh: Callable[..., vs.Client]) -> None:
    ckpt = tmp_path / "ckpt"
    client = fresh(save_every=0.1, keep=2)
    w = client.Variable(1.0, name="w")
    _wait_for(lambda: _counter_step(client.latest_checkpoint()) >= 1)
    w.assign(2.0)  # each period writes only what changed since the last save
    _wait_for(lambda: _counter_step(client.latest_checkpoint()) >= 2)
    step = client.Variable(np.int64(100), name="global_step")
    _wait_for(lambda: client.latest_checkpoint() == "model.ckpt-100")
    step.assign(np.int64(101))
    _wait_for(lambda: client.latest_checkpoint() == "model.ckpt-101")
    assert len(_state(ckpt).all_model_checkpoint_paths) == 2
    with BundleReader(ckpt / "model.ckpt-101") as r:
        assert r.read("global_step") == 101
    assert client.status().last_checkpoint.startswith("model.ckpt-")


def test_stop_writes_a_final_checkpoint_that_start_up_restores(tmp_path: Path) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ckpt",
                          save_every=3600, keep=3)
    srv = create_server(config)
    srv.start()
    with vs.connect(f"127.0.0.1:{srv.port}") as c:
        c.Variable(np.arange(3, dtype=np.float64), name="w")
    srv.stop(grace=1.0)
    assert _state(tmp_path / "ckpt").model_checkpoint_path == "model.ckpt-1"
    config.restore = "latest"
    srv = create_server(config)
    try:
        w = srv.store.get("w")
        _same(w.read(), np.arange(3, dtype=np.float64))  # before the port serves
        assert srv.checkpoints.last_saved is not None
        assert srv.checkpoints.last_saved[0] == "model.ckpt-1"
    finally:
        srv.stop(grace=1.0)
    # Nothing changed since the restore: no checkpoint on exit.
    assert _state(tmp_path / "ckpt").all_model_checkpoint_paths == ["model.ckpt-1"]
    srv = create_server(config)
    srv.start()
    # Nor does the timer write while nothing changed since the restore; a change, it does.
    assert srv.timer.save_periodic() is None
    with vs.connect(f"127.0.0.1:{srv.port}") as c:
        c.get_variable("w", shape=[3], dtype=vs.float64).assign_add(np.ones(3))
    assert srv.timer.save_periodic() == "model.ckpt-2"  # the counter goes on
    assert srv.timer.save_periodic() is None
    srv.stop(grace=1.0)
    assert _state(tmp_path / "ckpt").model_checkpoint_path == "model.ckpt-2"
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.index")) == [
        "model.ckpt-1.index", "model.ckpt-2.index"]


def test_bad_restore_at_start_up_fails(tmp_path: Path) -> None:
    for restore, error in (("nope", NotFoundError), ("../x", PermissionDeniedError)):
        with pytest.raises(error, match=f"cannot restore '{restore}'"):
            create_server(ServerConfig(host="127.0.0.1", port=0,
                                       checkpoint_dir=tmp_path / "ckpt", restore=restore))
    # "latest" with no checkpoint yet starts an empty server.
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ckpt",
                                     restore="latest"))
    assert len(srv.store) == 0
    srv.stop(grace=0)


def _manager_with(tmp_path: Path, **values: np.ndarray) -> CheckpointManager:
    manager = CheckpointManager(VariableStore(), tmp_path / "ckpt")
    for name, value in values.items():
        manager.store.create(Variable(name, dtypes.as_dtype(value.dtype), value.shape,
                                      value=value.copy()))
    return manager


def test_recovery_finishes_committed_saves_and_drops_uncommitted_ones(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    manager = _manager_with(tmp_path, v=np.arange(3, dtype=np.int32))
    manager.save("old")
    manager.save("kept")
    temp = CheckpointFolder.temp_prefix(str(ckpt / "kept"))
    # A crash after the commit point of a save replacing "kept": new data moved, index not.
    with BundleWriter(temp) as w:
        w.add("v", np.full(3, 9, np.int32), dtypes.int32)
    os.replace(f"{temp}.data-00000-of-00001", ckpt / "kept.data-00000-of-00001")
    # A crash before the commit point of a save replacing "old".
    old_temp = CheckpointFolder.temp_prefix(str(ckpt / "old"))
    with BundleWriter(old_temp) as w:
        w.add("v", np.full(3, 5, np.int32), dtypes.int32)
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "x.data-00000-of-00001.tempstate-vs123").write_bytes(b"partial")
    # TensorFlow's own leftover (its temp names have no "-vs") is not the server's to delete.
    (ckpt / "sub" / "y.data-00000-of-00001.tempstate123").write_bytes(b"TF's")
    fresh = CheckpointManager(VariableStore(), ckpt)
    fresh.recover()
    assert folder_names(ckpt) == [
        "checkpoint", "kept.data-00000-of-00001", "kept.index", "old.data-00000-of-00001",
        "old.index", "sub"]
    assert os.listdir(ckpt / "sub") == ["y.data-00000-of-00001.tempstate123"]
    with BundleReader(ckpt / "kept") as r:
        _same(r.read("v"), np.full(3, 9, np.int32))
    with BundleReader(ckpt / "old") as r:
        _same(r.read("v"), np.arange(3, dtype=np.int32))


def test_replacing_a_sharded_checkpoint_removes_its_old_shards(client: vs.Client,
                                                               ckpt_dir: Path) -> None:
    _copy_tf_checkpoints(ckpt_dir)
    client.restore("sharded")
    client.save("sharded")
    assert sorted(n for n in os.listdir(ckpt_dir) if n.startswith("sharded")) == [
        "sharded.data-00000-of-00001", "sharded.index"]
    client.restore("sharded")


# --- the command line ---

def varstore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "varstore.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_save_and_restore_show_progress(server_process: ServerProcess) -> None:
    with vs.connect(server_process.address) as c:
        c.Variable(np.ones((300, 100_000), np.float32), name="big")  # 120 MB
        w = c.Variable(np.arange(5, dtype=np.int64), name="w")
        saved = varstore("save", "model.ckpt", "--step", "5", "--address",
                         server_process.address)
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.strip() == "model.ckpt-5"
        # Off a terminal the bar is one line, written when the save is done.
        assert saved.stderr.count("\n") == 1, saved.stderr
        assert saved.stderr.startswith("saving: 100%") and "114M/114M" in saved.stderr
        assert saved.stderr.rstrip().endswith("2/2 tensors]")
        w.assign(np.zeros(5, np.int64))
        restored = varstore("restore", "latest", "--address", server_process.address)
        assert restored.returncode == 0, restored.stderr
        assert restored.stdout.strip() == "restored model.ckpt-5"
        assert "2/2 tensors" in restored.stderr
        _same(w.numpy(), np.arange(5, dtype=np.int64))
    missing = varstore("restore", "gone", "--address", server_process.address)
    assert missing.returncode == 1 and "NotFoundError" in missing.stderr


def test_cli_inspect_lists_tensorflow_checkpoints() -> None:
    listed = varstore("inspect", str(TF_DATA / "golden"))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "b\tbool\t[3]"
    assert "part/P\tfloat32\t[10, 4]" in lines and "strs\tstring\t[3]" in lines
    assert len(lines) == len(EXPECTED["golden"])
    assert varstore("inspect", str(TF_DATA)).stdout == listed.stdout  # the folder's newest
    obj = varstore("inspect", str(TF_DATA / "tf2obj"))
    assert "model/w/.ATTRIBUTES/VARIABLE_VALUE\tfloat32\t[2, 2]" in obj.stdout.splitlines()
    values = varstore("inspect", str(TF_DATA / "golden"), "--values")
    assert values.returncode == 0, values.stderr
    assert "[b'hello' b'' b'w\\xc3\\xb6rld']" in values.stdout
    assert "i8\tint8\t[3]" in values.stdout


def test_cli_inspect_truncates_big_values_and_fails_clearly(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "big") as w:
        w.add("big", np.arange(100_000, dtype=np.int64), dtypes.int64)
    shown = varstore("inspect", str(tmp_path / "big"), "--values")
    assert shown.returncode == 0
    assert "..." in shown.stdout and len(shown.stdout) < 2000
    missing = varstore("inspect", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "NotFoundError" in missing.stderr
    assert "nothing.index" in missing.stderr
    _flip(tmp_path / "big.data-00000-of-00001", 100)
    corrupt = varstore("inspect", str(tmp_path / "big"))
    assert corrupt.returncode == 1 and "DataLossError" in corrupt.stderr and "big" in corrupt.stderr


def test_a_save_logs_what_it_deleted_and_keeps_files_it_did_not_write(
        client: vs.Client, ckpt_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    client.Variable(1.0, name="v")
    client.save("m", global_step=1, max_to_keep=1)
    client.save("m", global_step=2, max_to_keep=1)
    with caplog.at_level("INFO", logger="varstore.server.checkpoints"):
        client.save("m", global_step=3, max_to_keep=1)
    assert any("deleted checkpoint m-2" in r.getMessage() and "m-2.index" in r.getMessage()
               and "its saver keeps" in r.getMessage() for r in caplog.records)
    # m-3 replaced by someone else: its files are no longer the ones this saver wrote.
    for name in ("m-3.index", "m-3.data-00000-of-00001"):
        (ckpt_dir / "copy").write_bytes((ckpt_dir / name).read_bytes())
        os.replace(ckpt_dir / "copy", ckpt_dir / name)
    caplog.clear()
    with caplog.at_level("INFO", logger="varstore.server.checkpoints"):
        client.save("m", global_step=4, max_to_keep=1)
    assert (ckpt_dir / "m-3.index").exists()
    assert any("kept m-3" in r.getMessage() and "replaced or moved" in r.getMessage()
               for r in caplog.records)
    assert sorted(n[:-6] for n in os.listdir(ckpt_dir) if n.endswith(".index")) == ["m-3", "m-4"]


@pytest.mark.parametrize("bad", ["a/b", "m-1.index", "x.data-00000-of-00001", "..",
                                 "checkpoint.tmp1234", "x" * 300])
def test_bad_state_file_names_are_refused(client: vs.Client, ckpt_dir: Path, bad: str) -> None:
    client.Variable(1.0, name="v")
    with pytest.raises(InvalidArgumentError, match="latest_filename"):
        client.save("m", latest_filename=bad)
    with pytest.raises(InvalidArgumentError, match="latest_filename"):
        client.latest_checkpoint("", latest_filename=bad)
    assert folder_names(ckpt_dir) == []
