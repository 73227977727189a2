"""Real TensorFlow reads the server's checkpoints, and the server restores TensorFlow's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import varstore as vs
from tests.unit.test_bundle import SHAPES, _same, _sample
from varstore import dtypes
from varstore.server.app import Server
from varstore.server.bundle import BundleReader

pytestmark = pytest.mark.tensorflow


@pytest.fixture
def ckpt_dir(server: Server) -> Path:
    return Path(server.checkpoints.directory)


def _from_tf(value: Any, like: np.ndarray) -> np.ndarray:
    """A value TensorFlow returned, as the numpy dtype varstore uses for it."""
    got = np.asarray(value)
    if like.dtype == object:
        return got.astype(object)
    return got.astype(like.dtype) if like.dtype == ml_dtypes.bfloat16 else got


@pytest.fixture
def every_dtype(client: vs.Client) -> dict[str, np.ndarray]:
    """One server variable per dtype and shape, named ``scope/<dtype>/v<i>``."""
    rng = np.random.default_rng(5)
    written = {}
    for dtype in dtypes.ALL:
        for i, shape in enumerate(SHAPES):
            name = f"scope/{dtype.name}/v{i}"
            written[name] = _sample(dtype, shape, rng)
            client.Variable(written[name], name=name, dtype=dtype)
    return written


def test_tensorflow_reads_what_the_server_saves(
        tf: Any, client: vs.Client, ckpt_dir: Path, every_dtype: dict[str, np.ndarray]) -> None:
    assert client.save("model.ckpt", global_step=1000) == "model.ckpt-1000"
    prefix = str(ckpt_dir / "model.ckpt-1000")
    assert tf.train.latest_checkpoint(str(ckpt_dir)) == prefix
    for reader in (tf.train.load_checkpoint(prefix),
                   tf.compat.v1.train.NewCheckpointReader(prefix)):
        shapes = reader.get_variable_to_shape_map()
        assert sorted(shapes) == sorted(every_dtype)
        for name, value in every_dtype.items():
            assert tuple(shapes[name]) == value.shape
            _same(_from_tf(reader.get_tensor(name), value), value)


def test_tensorflow_saver_restores_the_servers_checkpoint_in_graph_mode(
        tf: Any, client: vs.Client, ckpt_dir: Path) -> None:
    with client.variable_scope("n2"):
        w = client.get_variable("W", [3, 4], initializer=vs.random_normal_initializer(seed=1))
    b = client.get_variable("b", [4], dtype=vs.float64, initializer=vs.ones_initializer)
    counter = client.Variable(0, name="counter")
    words = client.Variable(np.array([b"a", b"bc"], dtype=object), name="words")
    counter.assign_add(5)
    path = client.save("model.ckpt")
    graph = tf.Graph()
    with graph.as_default():
        with tf.compat.v1.variable_scope("n2"):
            tf_w = tf.compat.v1.get_variable("W", [3, 4])
        tf_b = tf.compat.v1.get_variable("b", [4], dtype=tf.float64)
        tf_counter = tf.compat.v1.Variable(0, name="counter")
        tf_words = tf.compat.v1.Variable(["", ""], name="words")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            saver.restore(sess, str(ckpt_dir / path))
            got = sess.run([tf_w, tf_b, tf_counter, tf_words])
    _same(got[0], w.numpy())
    _same(got[1], np.ones(4, np.float64))
    assert got[2] == 5 and got[2].dtype == np.int32
    assert got[3].tolist() == [b"a", b"bc"]
    assert words.numpy().tolist() == [b"a", b"bc"]
    assert b.name == "b:0"


def test_server_restores_what_tensorflow_saver_writes(tf: Any, client: vs.Client,
                                                      ckpt_dir: Path) -> None:
    rng = np.random.default_rng(9)
    want: dict[str, np.ndarray] = {
        "layer/W": rng.standard_normal((5, 3)).astype(np.float32),
        "layer/b": np.arange(3, dtype=np.float64),
        "global_step": np.array(42, np.int64),
        "flags": np.array([True, False]),
        "half": np.array([1.5, -2.25], np.float16),
        "names": np.array([b"x", "wörld".encode()], dtype=object),
    }
    partitioned = np.arange(40, dtype=np.float32).reshape(10, 4)
    graph = tf.Graph()
    with graph.as_default():
        for name, value in want.items():
            tf.compat.v1.Variable(value, name=name)
        tf.compat.v1.get_variable(
            "part/P", initializer=tf.constant(partitioned),
            partitioner=tf.compat.v1.fixed_size_partitioner(3))
        saver = tf.compat.v1.train.Saver(max_to_keep=2)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in (1, 2, 3):
                saved = saver.save(sess, str(ckpt_dir / "model.ckpt"), global_step=step)
    assert saved == str(ckpt_dir / "model.ckpt-3")
    with BundleReader(saved) as reader:
        assert reader.entry("part/P").sliced  # TensorFlow saved it as three slices
    assert client.latest_checkpoint() == "model.ckpt-3"
    assert client.restore("latest") == "model.ckpt-3"
    infos = {v.name: v for v in client.list_variables()}
    # The partitioned variable comes back as TF's parts, each knowing its slice.
    parts = [f"part/P/part_{i}" for i in range(3)]
    assert sorted(infos) == sorted([*want, *parts])
    slices = [infos[p].save_slice for p in parts]
    assert [(s.full_name, list(s.offset), list(s.shape)) for s in slices if s is not None] == [
        ("part/P", [0, 0], [4, 4]), ("part/P", [4, 0], [3, 4]), ("part/P", [7, 0], [3, 4])]
    for name, value in want.items():
        handle = vs.RemoteVariable(client, name, infos[name].dtype, infos[name].shape)
        _same(handle.numpy(), value)
    handles = [vs.RemoteVariable(client, p, vs.float32, infos[p].shape) for p in parts]
    _same(np.concatenate(client.pull(handles)), partitioned)


def test_a_tensorflow_saver_dict_checkpoint_restores_by_key(tf: Any, client: vs.Client,
                                                            ckpt_dir: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        v2 = tf.compat.v1.get_variable("v2", [5], initializer=tf.compat.v1.ones_initializer())
        saver = tf.compat.v1.train.Saver({"renamed": v2})
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(v2.initializer)
            saver.save(sess, str(ckpt_dir / "dict.ckpt"))
    mine = client.get_variable("mine", [5], initializer=vs.zeros_initializer)
    client.restore("dict.ckpt", var_list={"renamed": mine})
    _same(mine.numpy(), np.ones(5, np.float32))
