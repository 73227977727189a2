"""``tf.train.Saver`` and ``tf.train.latest_checkpoint`` of ``varstore.v1`` on a real server:
files on disk, what TensorFlow reads, and restoring what TensorFlow wrote."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore.v1 as tf
from tests.extras import require

TF_DATA = Path(__file__).parents[1] / "data" / "tf_checkpoints"


@pytest.fixture(autouse=True)
def fresh_graph() -> Iterator[None]:
    with tf.Graph().as_default():
        yield


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The checkpoint folder of the ``server`` fixture."""
    return tmp_path / "ckpt"


def test_save_with_global_step_keeps_the_newest(address: str, folder: Path) -> None:
    with tf.variable_scope("layer"):
        w = tf.get_variable("W", [2, 3], initializer=tf.ones_initializer)
    step = tf.train.get_or_create_global_step()
    saver = tf.train.Saver(max_to_keep=2)
    with tf.Session(address) as sess:
        sess.run(tf.global_variables_initializer())
        paths = []
        for _ in range(3):
            sess.run([tf.assign_add(step, 1), tf.assign_add(w, tf.ones([2, 3]))])
            paths.append(saver.save(sess, "dir/model.ckpt", global_step=step))
        assert saver.save(sess, "dir/model.ckpt", global_step=3) == "dir/model.ckpt-3"
    assert paths == ["dir/model.ckpt-1", "dir/model.ckpt-2", "dir/model.ckpt-3"]
    assert sorted(p.name for p in (folder / "dir").iterdir()) == [
        "checkpoint", "model.ckpt-2.data-00000-of-00001", "model.ckpt-2.index",
        "model.ckpt-3.data-00000-of-00001", "model.ckpt-3.index"]


@pytest.mark.tensorflow
def test_tensorflow_reads_what_saver_wrote(address: str, folder: Path) -> None:
    real_tf = require("tensorflow")
    with tf.variable_scope("layer"):
        w = tf.get_variable("W", [2, 3], initializer=tf.constant_initializer(
            np.arange(6, dtype=np.float32).reshape(2, 3)))
    step = tf.train.get_or_create_global_step()
    with tf.Session(address) as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(tf.assign(step, 7))
        path = tf.train.Saver().save(sess, "model.ckpt", global_step=step)
        assert w.name == "layer/W:0" and path == "model.ckpt-7"
    reader = real_tf.train.load_checkpoint(str(folder / path))
    assert reader.get_variable_to_shape_map() == {"layer/W": [2, 3], "global_step": []}
    assert reader.get_tensor("layer/W").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert reader.get_tensor("global_step") == 7


def test_subset_and_renamed_keys(address: str) -> None:
    v1 = tf.get_variable("v1", [3], initializer=tf.zeros_initializer)
    v2 = tf.get_variable("v2", [5], initializer=tf.ones_initializer)
    other = tf.get_variable("other", [5], initializer=tf.zeros_initializer)
    with tf.Session(address) as sess:
        sess.run(tf.global_variables_initializer())
        tf.train.Saver({"v2": v2}).save(sess, "only_v2")
        with pytest.raises(tf.errors.NotFoundError, match="v1"):
            tf.train.Saver([v1]).restore(sess, "only_v2")
        tf.train.Saver({"v2": other}).restore(sess, "only_v2")
        assert other.eval().tolist() == [1] * 5


def test_restore_does_not_initialize_the_others(address: str, folder: Path) -> None:
    v1 = tf.get_variable("v1", [3], initializer=tf.zeros_initializer)
    v2 = tf.get_variable("v2", [5], initializer=tf.zeros_initializer)
    with tf.Session(address) as sess:
        sess.run(v2.initializer)
        tf.train.Saver([v2]).save(sess, "model.ckpt")
    with tf.Graph().as_default():
        w1 = tf.get_variable("w1", [3])
        w2 = tf.get_variable("v2", [5])
        with tf.Session(address) as sess:
            tf.train.Saver({"v2": w2}).restore(sess, "model.ckpt")
            assert sess.run(tf.report_uninitialized_variables()).tolist() == [b"w1"]
            assert w2.eval().tolist() == [0] * 5
            with pytest.raises(tf.errors.FailedPreconditionError):
                w1.eval()
    assert v1.name == "v1:0"


def test_restore_what_tensorflow_wrote(address: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in TF_DATA.iterdir():
        if not f.name.startswith("expected"):
            shutil.copy(f, folder / f.name)
    expected = np.load(TF_DATA / "expected.npz")
    with tf.variable_scope("scope"):
        with tf.variable_scope("inner"):
            w = tf.get_variable("w", [3, 4])
    step = tf.train.get_or_create_global_step()
    with tf.variable_scope("ps1"):
        b = tf.get_variable("b", [4], dtype=tf.int64)
    with tf.Session(address) as sess:
        tf.train.Saver([w, step]).restore(sess, tf.train.latest_checkpoint(""))
        tf.train.Saver([b]).restore(sess, "sharded")
        assert np.array_equal(w.eval(), expected["golden::scope/inner/w"])
        assert step.eval() == expected["golden::global_step"]
        assert np.array_equal(b.eval(), expected["sharded::ps1/b"])
        with tf.variable_scope("scope"):
            wrong = tf.get_variable("wrong", [4, 3])
        with pytest.raises(tf.errors.InvalidArgumentError, match="scope/wrong"):
            tf.train.Saver({"scope/inner/w": wrong}).restore(sess, "golden")


def test_latest_checkpoint(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v = tf.Variable(1.0, name="v")
    monkeypatch.setenv("VARSTORE_ADDRESS", address)
    with tf.Session() as sess:
        sess.run(v.initializer)
        assert tf.train.latest_checkpoint("runs") is None
        tf.train.Saver().save(sess, "runs/model.ckpt", global_step=5)
        assert tf.train.latest_checkpoint("runs") == "runs/model.ckpt-5"
    assert tf.train.latest_checkpoint("runs") == "runs/model.ckpt-5"


def test_saver_errors(address: str) -> None:
    with pytest.raises(ValueError, match="No variables to save"):
        tf.train.Saver()
    v = tf.Variable(1.0, name="v")
    with pytest.raises(ValueError, match="At least two variables have the same name: v"):
        tf.train.Saver([v, v])
    with pytest.raises(TypeError, match="Variable to save is not a Variable"):
        not_variables: dict[str, Any] = {"k": tf.constant(1.0)}
        tf.train.Saver(not_variables)
    saver = tf.train.Saver()
    with tf.Session(address) as sess:
        with pytest.raises(tf.errors.FailedPreconditionError,
                           match="Attempting to use uninitialized value v"):
            saver.save(sess, "model.ckpt")
        sess.run(v.initializer)
        with pytest.raises(tf.errors.PermissionDeniedError):
            saver.save(sess, "../outside/model.ckpt")
        with pytest.raises(tf.errors.NotFoundError):
            saver.restore(sess, "never_saved")
        with pytest.raises(ValueError, match="Can't load save_path when it is None."):
            saver.restore(sess, None)


def test_saver_arguments_the_server_cannot_honour_are_refused() -> None:
    v = tf.Variable(1.0, name="v")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"saver_def": object()}, r"^Saver\(saver_def=\.\.\.\) is not"),
        ({"builder": object()}, r"^Saver\(builder=\.\.\.\) is not"),
        ({"write_version": 1}, r"^Saver\(write_version=1\) is not .* V2")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            tf.train.Saver([v], **kwargs)
    assert tf.train.Saver([v], write_version=2, sharded=True, reshape=True).last_checkpoints == []
