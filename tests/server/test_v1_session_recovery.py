"""A ``varstore.v1`` session survives what would otherwise poison it: a variable the server
refuses fails only the runs that use it, and variables the server lost (it restarted empty)
are declared again, uninitialized, as a new session would see them."""

from __future__ import annotations

from pathlib import Path

import pytest

import varstore.v1 as tf
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server


def test_refused_variable_fails_only_the_runs_that_use_it(address: str) -> None:
    with tf.Graph().as_default():
        bad = tf.Variable(1.0, name="bad\\name")  # TF's Python pattern allows it, its runtime not
        good = tf.Variable(2.0, name="good")
        with tf.Session(address) as sess:
            for _ in range(2):
                sess.run(good.initializer)
                assert sess.run(good) == 2.0
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"invalid variable name 'bad\\\\name'"):
                sess.run(bad.initializer)
            assert sess.run(good.assign_add(1.0)) == 3.0


def test_session_redeclares_variables_the_server_lost(server: Server, address: str,
                                                      tmp_path: Path) -> None:
    with tf.Graph().as_default():
        v = tf.Variable([4.0], name="v")
        w = tf.get_variable("w", [1], initializer=tf.ones_initializer())
        with tf.Session(address) as sess:
            sess.run(tf.global_variables_initializer())
            assert sess.run(v).tolist() == [4.0]
            # The server restarts empty on the port it had; the session reconnects to it.
            server.stop(grace=1.0)
            restarted = create_server(ServerConfig(host="127.0.0.1", port=server.port,
                                                   checkpoint_dir=tmp_path / "restarted"))
            restarted.start()
            try:
                with pytest.raises(tf.errors.FailedPreconditionError,
                                   match="Attempting to use uninitialized value v"):
                    sess.run(v)
                sess.run(v.initializer)
                assert sess.run(v).tolist() == [4.0]
                with pytest.raises(tf.errors.FailedPreconditionError, match="value w"):
                    sess.run(w)
                sess.run(w.initializer)
                assert sess.run(w).tolist() == [1.0]
            finally:
                restarted.stop(grace=1.0)
