"""Every example of TensorFlow 1.x's guide to saving and restoring variables (the programmer's
guide's "Variables" and "Saving and Restoring" pages) run against a real server, with only
``import tensorflow as tf`` changed to ``import varstore.v1 as tf`` and the checkpoint path
made relative to the server's checkpoint folder. ``tf.Session()`` finds the server through
``VARSTORE_ADDRESS``."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import varstore.v1 as tf
from varstore.server import ServerConfig, create_server


@pytest.fixture(autouse=True)
def seed_program(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each example is a program of its own: an empty default graph, the server in the
    environment."""
    tf.reset_default_graph()
    monkeypatch.setenv("VARSTORE_ADDRESS", address)


@contextlib.contextmanager
def new_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Another training job: a new server on a copy of the checkpoint folder (one server
    holds a folder at a time), a new graph."""
    shutil.copytree(tmp_path / "ckpt", tmp_path / "next_job")
    server = create_server(ServerConfig(host="127.0.0.1", port=0,
                                        checkpoint_dir=tmp_path / "next_job"))
    server.start()
    monkeypatch.setenv("VARSTORE_ADDRESS", f"127.0.0.1:{server.port}")
    tf.reset_default_graph()
    try:
        yield
    finally:
        server.stop(grace=1.0)


def test_using_variables(capsys: pytest.CaptureFixture[str]) -> None:
    ### Using variables
    # Define variables and its initializer
    weights = tf.Variable(tf.random_normal([784, 100], stddev=0.1), name="W")
    biases = tf.Variable(tf.zeros([100]), name="b")

    counter = tf.Variable(0, name="counter")

    # Add an Op to increment a counter
    increment = tf.assign(counter , counter + 1)

    init_op = tf.global_variables_initializer()
    with tf.Session() as sess:
      # Execute the init_op to initialize all variables
      sess.run(init_op)

      # Retrieve the value of a variable
      b = sess.run(biases)
      print(b)

    assert capsys.readouterr().out == f"{np.zeros(100, np.float32)}\n"
    assert (weights.name, biases.name, counter.name, increment.name) == (
        "W:0", "b:0", "counter:0", "Assign:0")
    with tf.Session() as sess:
        assert sess.run(increment) == 1
        w = weights.eval()
        assert w.shape == (784, 100) and 0.09 < w.std() < 0.11


def save_checkpoint() -> str:
    # Create some variables
    v1 = tf.get_variable("v1", shape=[3], initializer = tf.zeros_initializer)
    v2 = tf.get_variable("v2", shape=[5], initializer = tf.zeros_initializer)

    # Create the op
    inc_v1 = v1.assign(v1+1)
    dec_v2 = v2.assign(v2-1)
    init_op = tf.global_variables_initializer()

    # Add ops to save and restore all the variables.
    saver = tf.train.Saver()

    with tf.Session() as sess:
      sess.run(init_op)
      inc_v1.op.run()
      dec_v2.op.run()

      # Save the variables to disk.
      save_path = saver.save(sess, "model.ckpt")
    assert save_path is not None
    return save_path


def test_save_a_checkpoint(tmp_path: Path) -> None:
    assert save_checkpoint() == "model.ckpt"
    folder = tmp_path / "ckpt"
    assert {p.name for p in folder.iterdir()} >= {
        "model.ckpt.index", "model.ckpt.data-00000-of-00001", "checkpoint"}
    assert 'model_checkpoint_path: "model.ckpt"' in (folder / "checkpoint").read_text()


def test_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    save_checkpoint()
    with new_job(tmp_path, monkeypatch):
        # Create some variables.
        # We do not need to provide initializer or init_op if it is restored from a checkpoint.
        v1 = tf.get_variable("v1", shape=[3])
        v2 = tf.get_variable("v2", shape=[5])

        saver = tf.train.Saver()

        with tf.Session() as sess:
          # Restore variables from disk.
          saver.restore(sess, "model.ckpt")

          # Check the values of the variables
          print("v1 : %s" % v1.eval())  # noqa: UP031 - the seed's code
          print("v2 : %s" % v2.eval())  # noqa: UP031

    assert capsys.readouterr().out == "v1 : [1. 1. 1.]\nv2 : [-1. -1. -1. -1. -1.]\n"


def test_restore_a_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint()
    with new_job(tmp_path, monkeypatch):
        v1 = tf.get_variable("v1", [3], initializer = tf.zeros_initializer)
        v2 = tf.get_variable("v2", [5], initializer = tf.zeros_initializer)

        # Save only v2
        saver = tf.train.Saver({"v2": v2})

        with tf.Session() as sess:
          # Initialize v1 since the saver will not.
          v1.initializer.run()
          saver.restore(sess, "model.ckpt")

          assert v1.eval().tolist() == [0, 0, 0]
          assert v2.eval().tolist() == [-1] * 5


def test_variable_always_creates_a_new_variable(capsys: pytest.CaptureFixture[str]) -> None:
    # tf.Variable always create new variable even given the same name.
    v1 = tf.Variable(10, name="name1")
    v2 = tf.Variable(10, name="name1")
    assert(v1 is not v2)
    print(v1.name)  # name1:0
    print(v2.name)  # name1_1:0

    assert capsys.readouterr().out == "name1:0\nname1_1:0\n"
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run([v1, v2]) == [10, 10]


def affine(x, shape):
    W = tf.Variable(tf.truncated_normal(shape))
    b = tf.Variable(tf.zeros([shape[1]]))

    model = tf.nn.relu(tf.matmul(x, W) + b)
    return model


def affine_reuseable(x, shape):
    W = tf.get_variable("W", shape,
                    initializer=tf.random_normal_initializer())
    b = tf.get_variable("b", [shape[1]],
                    initializer=tf.constant_initializer(0.0))
    model = tf.nn.relu(tf.matmul(x, W) + b)
    return model


def test_affine_twice_makes_two_layers() -> None:
    x = tf.placeholder(tf.float32, [None, 784])
    with tf.variable_scope("n1"):
        n1 = affine(x, [784, 500])

    with tf.variable_scope("n1"):
        n2 = affine(x, [784, 500])

    assert [v.name for v in tf.global_variables()] == [
        "n1/Variable:0", "n1/Variable_1:0", "n1_1/Variable:0", "n1_1/Variable_1:0"]
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        out1, out2 = sess.run([n1, n2], {x: np.ones((2, 784))})
    assert out1.shape == out2.shape == (2, 500) and not np.array_equal(out1, out2)


def test_get_variable_shares_one_layer() -> None:
    x = tf.placeholder(tf.float32, [None, 784])

    nx = tf.placeholder(tf.float32, [None, 784])
    with tf.variable_scope("n2"):
        nn1 = affine_reuseable(x, [784, 500])

    with tf.variable_scope("n2", reuse=True):
        nn2 = affine_reuseable(x, [784, 500])

    assert [v.name for v in tf.global_variables()] == ["n2/W:0", "n2/b:0"]
    assert nx.name == "Placeholder_1:0"
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        out1, out2 = sess.run([nn1, nn2], {x: np.ones((2, 784))})
    assert out1.shape == (2, 500) and np.array_equal(out1, out2)


def test_reuse_flag_mistakes_raise() -> None:
    with pytest.raises(ValueError, match=r"^Variable foo/v already exists, disallowed\. Did you "
                                         r"mean to set reuse=True or reuse=tf\.AUTO_REUSE in "
                                         r"VarScope\?$"):
        with tf.variable_scope("foo"):
            v = tf.get_variable("v", [1])
            v1 = tf.get_variable("v")  # noqa: F841
            # Raises ValueError("... v already exists ...").

    with pytest.raises(ValueError, match=r"^Variable foo/v does not exist, or was not created "
                                         r"with tf\.get_variable\(\)\. Did you mean to set "
                                         r"reuse=tf\.AUTO_REUSE in VarScope\?$"):
        tf.reset_default_graph()
        with tf.variable_scope("foo", reuse=True):
            v = tf.get_variable("v")  # noqa: F841
            # Raises ValueError("... v does not exists ...").


def test_reuse_flag_set_properly() -> None:
    with tf.variable_scope("foo"):
        v = tf.get_variable("v2", [1]) # Create a new variable.

    with tf.variable_scope("foo", reuse=True):
        v1 = tf.get_variable("v2")  # reuse/share the variable "foo/v2".
    assert v1 == v

    with tf.variable_scope("foo") as scope:
        v = tf.get_variable("v3", [1])
        scope.reuse_variables()
        v1 = tf.get_variable("v3")
    assert v1 == v

    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        assert sess.run(tf.report_uninitialized_variables()).tolist() == []


def test_nested_scope() -> None:
    with tf.variable_scope("foo"):
        with tf.variable_scope("bar"):
            v = tf.get_variable("v", [1])
            assert v.name == "foo/bar/v:0"


def test_name_scope_caveat(capsys: pytest.CaptureFixture[str]) -> None:
    with tf.name_scope("foo1"):
        v1 = tf.get_variable("v", [1])
        v2 = tf.Variable(1, name="v2")

    with tf.variable_scope("foo2"):
        v3 = tf.get_variable("v", [1])
        v4 = tf.Variable(1, name="v2")

    print(v1.name)  # v:0 (Unexpected!)
    print(v2.name)  # foo1/v2:0
    print(v3.name)  # foo2/v:0
    print(v4.name)  # foo2/v2:0

    assert capsys.readouterr().out == "v:0\nfoo1/v2:0\nfoo2/v:0\nfoo2/v2:0\n"


def test_the_best_way() -> None:
    with tf.variable_scope("foo"):
        v = tf.get_variable("v2", [1])    # Create a new variable

    with tf.variable_scope("foo", reuse=True):
        v1 = tf.get_variable("v2")        # Reuse a variable created before.

    assert v1 is v and v.name == "foo/v2:0"
