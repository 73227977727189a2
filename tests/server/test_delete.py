"""Removing variables from a long-lived server: ``client.delete``/``reset``, ``varstore rm``
and ``varstore reset``, ``tf.Session.reset``; and clients that recover when the server lost
their variables (restarted empty)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as tf
from varstore import cli
from varstore.common.errors import InvalidArgumentError, NotFoundError
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server


def names(client: vs.Client) -> list[str]:
    return [v.name for v in client.list_variables()]


def test_delete_by_name_and_scope(client: vs.Client) -> None:
    for name in ["a/w", "a/b/w", "ab/w", "c"]:
        client.Variable(np.ones(2, np.float32), name=name)
    with pytest.raises(NotFoundError, match="Variable missing does not exist"):
        client.delete(["c", "missing"])
    assert names(client) == ["a/b/w", "a/w", "ab/w", "c"]
    assert client.delete(scope="a") == ["a/b/w", "a/w"]
    assert names(client) == ["ab/w", "c"]
    assert client.delete(scope="nothing") == []
    with pytest.raises(InvalidArgumentError, match=r"variables or a scope \(give one of them"):
        client.delete()
    with pytest.raises(InvalidArgumentError, match=r"variables or a scope \(not both"):
        client.delete(["c"], scope="a")
    with pytest.raises(InvalidArgumentError, match="use reset"):
        client.delete(scope="/")
    assert client.status().variable_count == 2
    # One name is one variable, not a list of one-letter names.
    client.Variable(1.0, name="ok")
    assert client.delete("ok") == ["ok"]
    assert client.delete(client.Variable(1.0, name="ok2")) == ["ok2"]
    assert client.reset() == ["ab/w", "c"]
    assert names(client) == [] and client.status().bytes_stored == 0


def test_deleted_variables_are_made_anew_and_old_handles_fail(client: vs.Client) -> None:
    w = client.get_variable("w", [2], initializer=vs.ones_initializer())
    w.assign_add(np.ones(2))
    assert client.delete([w]) == ["w"]
    with pytest.raises(NotFoundError, match="Variable w does not exist"):
        w.numpy()
    w2 = client.get_variable("w", [3], initializer=vs.zeros_initializer())
    assert w2.numpy().tolist() == [0.0, 0.0, 0.0]


def test_eager_handles_recreate_what_the_server_lost(server: Server, address: str,
                                                     tmp_path: Path) -> None:
    with vs.connect(address) as client:
        w = client.get_variable("w", [2], initializer=vs.ones_initializer())
        v = client.Variable([1.0, 2.0], name="v")
        w.assign_add(np.ones(2))
        server.stop(grace=1.0)
        restarted = create_server(ServerConfig(host="127.0.0.1", port=server.port,
                                               checkpoint_dir=tmp_path / "restarted"))
        restarted.start()
        try:
            assert w.numpy().tolist() == [1.0, 1.0]
            v.assign_add([1.0, 1.0])
            assert v.numpy().tolist() == [2.0, 3.0]
            assert names(client) == ["v", "w"]
        finally:
            restarted.stop(grace=1.0)


def test_session_reset_clears_the_server(address: str) -> None:
    with tf.Graph().as_default():
        v = tf.Variable([4.0], name="v")
        with tf.Session(address) as sess:
            sess.run(v.initializer)
            tf.Session.reset(f"grpc://{address}")
            with pytest.raises(tf.errors.FailedPreconditionError,
                               match="Attempting to use uninitialized value v"):
                sess.run(v)
            sess.run(v.initializer)
            assert sess.run(v).tolist() == [4.0]


def test_cli_rm_and_reset(client: vs.Client, address: str, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    for name in ["s/a", "s/b", "t", "u"]:
        client.Variable(1.0, name=name)
    assert cli.main(["rm", "t", "--address", address]) == 0
    assert cli.main(["rm", "--scope", "s", "--address", address]) == 0
    assert capsys.readouterr().out.splitlines() == ["removed t", "removed s/a", "removed s/b"]
    assert cli.main(["rm", "gone", "--address", address]) == 1
    assert "NotFoundError: Variable gone does not exist" in capsys.readouterr().err
    assert cli.main(["rm", "u", "--scope", "s", "--address", address]) == 2
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert cli.main(["reset", "--address", address]) == 1
    assert names(client) == ["u"]
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert cli.main(["reset", "--address", address]) == 0
    assert names(client) == []
    client.Variable(1.0, name="x")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.main(["reset", "--address", address]) == 2
    assert cli.main(["reset", "--yes", "--address", address]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "removed 1 variable(s)"
    assert names(client) == []
