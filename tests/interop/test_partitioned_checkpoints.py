"""Partitioned variables in checkpoints, compared with TensorFlow 1.x: varstore saves the parts
of ``get_variable(..., partitioner=...)`` as slices of one tensor under the full name, as TF's
``Saver`` does, and restores any slicing into any other (TF's own checkpoints too)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore.v1 as vtf
from varstore.server.app import Server
from varstore.server.bundle import BundleReader

pytestmark = pytest.mark.tensorflow

FULL = np.arange(40, dtype=np.float32).reshape(10, 4)
BIAS = np.array([0.5, -1.5], np.float32)


@pytest.fixture
def ckpt_dir(server: Server) -> Path:
    return Path(server.checkpoints.directory)


@pytest.fixture(autouse=True)
def fresh_graph() -> Iterator[None]:
    with vtf.Graph().as_default():
        yield


def _partitioner(module: Any, parts: int | None) -> Any:
    return None if parts is None else module.fixed_size_partitioner(parts)


def tf_program(tf: Any, parts: int | None, body: Callable[[Any, Any, Any], Any],
               initial: np.ndarray = FULL) -> Any:
    """Runs ``body(tf, sess, emb)`` in a fresh TF1 graph holding ``emb`` [10, 4] (in
    ``parts`` parts; None: unpartitioned) and ``dense/b``, initialized to ``initial`` and
    BIAS."""
    v1 = tf.compat.v1
    with tf.Graph().as_default():
        emb = v1.get_variable("emb", initializer=tf.constant(initial),
                              partitioner=_partitioner(v1, parts))
        v1.get_variable("dense/b", initializer=tf.constant(BIAS))
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return body(tf, sess, emb)


def vs_program(address: str, parts: int | None, body: Callable[[Any, Any, Any], Any],
               initial: np.ndarray = FULL) -> Any:
    """``tf_program`` under varstore.v1 against the server at ``address``."""
    with vtf.Graph().as_default():
        emb = vtf.get_variable("emb", initializer=vtf.constant(initial),
                               partitioner=_partitioner(vtf, parts))
        vtf.get_variable("dense/b", initializer=vtf.constant(BIAS))
        with vtf.Session(address) as sess:
            sess.run(vtf.global_variables_initializer())
            return body(vtf, sess, emb)


def _value(sess: Any, emb: Any) -> np.ndarray:
    """The full value of ``emb``, partitioned or not."""
    parts = list(emb) if hasattr(emb, "_get_variable_list") else [emb]
    return np.concatenate(sess.run(parts), axis=0)


def _save(path: str) -> Callable[[Any, Any, Any], Any]:
    return lambda tf, sess, emb: tf.compat.v1.train.Saver().save(sess, path) \
        if hasattr(tf, "compat") else tf.train.Saver().save(sess, path)


def _restore(path: str) -> Callable[[Any, Any, Any], Any]:
    def body(tf: Any, sess: Any, emb: Any) -> np.ndarray:
        train = tf.compat.v1.train if hasattr(tf, "compat") else tf.train
        train.Saver().restore(sess, path)
        return _value(sess, emb)
    return body


@pytest.mark.parametrize(("saved", "parts"), [(3, 2), (3, 3), (3, 5), (3, None), (None, 3),
                                              (4, 1)])
def test_a_tensorflow_checkpoint_restores_into_any_partitioning(
        tf: Any, address: str, ckpt_dir: Path, saved: int | None, parts: int | None) -> None:
    tf_program(tf, saved, _save(str(ckpt_dir / "tf.ckpt")))
    with BundleReader(ckpt_dir / "tf.ckpt") as reader:
        assert reader.entry("emb").sliced == (saved is not None)
        assert reader.keys() == ["dense/b", "emb"]
    zeros = np.zeros_like(FULL)
    got = vs_program(address, parts, _restore("tf.ckpt"), initial=zeros)
    np.testing.assert_array_equal(got, FULL)
    # TensorFlow itself does the same with the same program.
    np.testing.assert_array_equal(
        tf_program(tf, parts, _restore(str(ckpt_dir / "tf.ckpt")), initial=zeros), FULL)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_tensorflow_reads_varstores_partitioned_checkpoint_as_one_tensor(
        tf: Any, address: str, ckpt_dir: Path, tmp_path: Path, parts: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert vs_program(address, 3, _save("vs.ckpt")) == "vs.ckpt"
    tf_program(tf, 3, _save(str(tmp_path / "tf.ckpt")))
    prefix = str(ckpt_dir / "vs.ckpt")
    reader = tf.train.load_checkpoint(prefix)
    assert reader.get_variable_to_shape_map() == {"emb": [10, 4], "dense/b": [2]}
    np.testing.assert_array_equal(reader.get_tensor("emb"), FULL)
    listed = tf.train.list_variables(str(tmp_path / "tf.ckpt"))
    assert tf.train.list_variables(prefix) == listed == [("dense/b", [2]), ("emb", [10, 4])]
    # varstore.v1's list_variables asks the server, of a prefix or a folder.
    monkeypatch.setenv("VARSTORE_ADDRESS", address)
    assert vtf.train.list_variables("vs.ckpt") == listed
    tf_program(tf, 3, _save(str(ckpt_dir / "sub" / "tf.ckpt")))
    assert vtf.train.list_variables("sub") == listed
    with pytest.raises(vtf.errors.NotFoundError):
        vtf.train.list_variables("missing")
    # Byte for byte what TensorFlow's Saver writes for the same program.
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(prefix + suffix).read_bytes() == (tmp_path / f"tf.ckpt{suffix}").read_bytes()
    # TF's Saver.restore reads it into TF partitioned variables of another count.
    np.testing.assert_array_equal(
        tf_program(tf, parts, _restore(prefix), initial=np.zeros_like(FULL)), FULL)


def test_monitored_training_session_saves_parts_as_tensorflow_does(
        tf: Any, address: str, ckpt_dir: Path, tmp_path: Path) -> None:
    def program(module: Any, **kwargs: Any) -> None:
        with module.Graph().as_default():
            module.get_variable("emb", initializer=module.constant(FULL),
                                partitioner=module.fixed_size_partitioner(3))
            module.train.get_or_create_global_step()
            with module.train.MonitoredTrainingSession(is_chief=True, **kwargs):
                pass  # the chief's first checkpoint, model.ckpt-0

    program(tf.compat.v1, checkpoint_dir=str(tmp_path / "tf"))
    program(vtf, master=address, checkpoint_dir="mts")
    ours = tf.train.latest_checkpoint(str(ckpt_dir / "mts"))
    assert ours is not None and ours.endswith("model.ckpt-0")
    assert tf.train.list_variables(ours) == tf.train.list_variables(str(tmp_path / "tf")) == [
        ("emb", [10, 4]), ("global_step", [])]
    np.testing.assert_array_equal(tf.train.load_checkpoint(ours).get_tensor("emb"), FULL)
