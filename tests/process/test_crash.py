"""A real `varstore serve` killed during a save, stopped by SIGTERM, saving on its timer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

import varstore as vs
from tests.conftest import folder_names, start_server_process, stop_server_process
from varstore.proto import tensor_bundle_pb2 as bundle_pb
from varstore.server.bundle import TEMP_MARK

BIG_VARIABLES = 4
BIG_ELEMENTS = 20_000_000  # 80 MB of float32 each, 320 MB in all


def _state(directory: Path) -> bundle_pb.CheckpointState:
    return text_format.Parse((directory / "checkpoint").read_text(), bundle_pb.CheckpointState())


def _wait_for(condition: Callable[[], Any], timeout: float = 30.0, step: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(step)
    raise AssertionError("condition not reached")


def _growing_temp_file(directory: Path) -> Path | None:
    for entry in os.scandir(directory):
        if TEMP_MARK in entry.name and ".data-" in entry.name and entry.stat().st_size > 0:
            return Path(entry.path)
    return None


@pytest.mark.slow
def test_kill_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    server = start_server_process(ckpt)
    try:
        with vs.connect(server.address) as c:
            big = [c.get_variable(f"big/{i}", [BIG_ELEMENTS],
                                  initializer=vs.constant_initializer(float(i)))
                   for i in range(BIG_VARIABLES)]
            marker = c.Variable(np.int64(1), name="marker")
            assert c.save("model.ckpt", global_step=1) == "model.ckpt-1"
            hundred = np.full(BIG_ELEMENTS, 100, np.float32)  # TF's exact shape, no broadcast
            for v in big:
                v.assign_add(hundred)
            marker.assign(np.int64(2))
            failed: list[BaseException] = []

            def save() -> None:
                try:
                    c.save("model.ckpt", global_step=2)
                except vs.errors.OpError as e:
                    failed.append(e)

            saver = threading.Thread(target=save)
            saver.start()
            temp = _wait_for(lambda: _growing_temp_file(ckpt))
            server.process.kill()
            server.process.wait()
            saver.join()
        assert failed and isinstance(failed[0], vs.errors.UnavailableError)
        assert temp.exists() and temp.stat().st_size < BIG_VARIABLES * BIG_ELEMENTS * 4
        assert not (ckpt / "model.ckpt-2.index").exists()
        assert _state(ckpt).model_checkpoint_path == "model.ckpt-1"
    finally:
        stop_server_process(server)

    server = start_server_process(ckpt, "--restore", "latest")
    try:
        assert folder_names(ckpt) == [
            "checkpoint", "model.ckpt-1.data-00000-of-00001", "model.ckpt-1.index"]
        state = _state(ckpt)
        assert state.model_checkpoint_path == "model.ckpt-1"
        assert list(state.all_model_checkpoint_paths) == ["model.ckpt-1"]
        with vs.connect(server.address) as c:
            names = {v.name: v for v in c.list_variables()}
            assert sorted(names) == [*(f"big/{i}" for i in range(BIG_VARIABLES)), "marker"]
            handles = [vs.RemoteVariable(c, n, v.dtype, v.shape) for n, v in names.items()]
            values = dict(zip(names, c.pull(handles), strict=True))
            assert values["marker"] == 1
            for i in range(BIG_VARIABLES):
                value = values[f"big/{i}"]
                assert value.shape == (BIG_ELEMENTS,) and (value == float(i)).all()
            assert c.save("model.ckpt", global_step=2) == "model.ckpt-2"
        # A new client's saver lists its own checkpoints only, and deletes none it did not write.
        assert list(_state(ckpt).all_model_checkpoint_paths) == ["model.ckpt-2"]
        assert (ckpt / "model.ckpt-1.index").exists()
    finally:
        stop_server_process(server)


def test_timer_and_sigterm_write_checkpoints(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    server = start_server_process(ckpt, "--save-every", "0.2", "--keep", "2")
    with vs.connect(server.address) as c:
        w = c.Variable(np.arange(4, dtype=np.float32), name="w")
        def saved_step() -> int:
            return int((c.latest_checkpoint() or "-0").rsplit("-", 1)[1])

        for n in range(1, 4):  # a period saves only when the store changed since the last
            _wait_for(lambda n=n: saved_step() >= n, step=0.05)  # type: ignore[misc]
            w.assign_add(np.zeros(4, np.float32))  # a change (its version), the same value
        step = c.Variable(np.int64(1000), name="global_step")
        _wait_for(lambda: c.latest_checkpoint() == "model.ckpt-1000", step=0.05)
        step.assign(np.int64(1234))
    assert len(_state(ckpt).all_model_checkpoint_paths) == 2
    server.process.send_signal(signal.SIGTERM)
    _, err = server.process.communicate(timeout=60)
    assert server.process.returncode == 0, err
    assert "final checkpoint written: model.ckpt-1234" in err
    assert _state(ckpt).model_checkpoint_path == "model.ckpt-1234"

    server = start_server_process(ckpt, "--restore", "latest")
    try:
        with vs.connect(server.address) as c:
            handles = {v.name: vs.RemoteVariable(c, v.name, v.dtype, v.shape)
                       for v in c.list_variables()}
            w_value, step_value = c.pull([handles["w"], handles["global_step"]])
        assert w_value.tolist() == [0.0, 1.0, 2.0, 3.0] and step_value == 1234
    finally:
        stop_server_process(server)


def test_sigterm_with_no_save_on_exit_writes_nothing(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    server = start_server_process(ckpt, "--no-save-on-exit")
    with vs.connect(server.address) as c:
        c.Variable(1.0, name="w")
    server.process.send_signal(signal.SIGTERM)
    server.process.communicate(timeout=60)
    assert server.process.returncode == 0
    assert folder_names(ckpt) == []


def test_bad_restore_fails_start_up(tmp_path: Path) -> None:
    for restore, message in (("missing", "cannot restore 'missing': checkpoint"),
                             ("../elsewhere", "outside the server's checkpoint folder")):
        result = subprocess.run(
            [sys.executable, "-m", "varstore.cli", "serve", "--host", "127.0.0.1", "--port", "0",
             "--checkpoint-dir", str(tmp_path / "ckpt"), "--restore", restore],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr
        assert "serving" not in result.stdout
