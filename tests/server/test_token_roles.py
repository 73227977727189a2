"""Token roles: a read-only token reads everything and changes nothing, whatever it sends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as tf
from varstore.errors import PermissionDeniedError
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server

TOKENS = "# training jobs\nwriter-123\nwriter-456 read-write\n# evaluation, dashboards\n" \
    "reader-789 read-only\n"
DENIED = "read-write token; this .*read-only"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    srv = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path / "ckpt",
                                     token_file=tokens))
    srv.start()
    yield srv, tmp_path / "ckpt"
    srv.stop(grace=1.0)


@pytest.fixture
def address(served: tuple[Server, Path]) -> str:
    return f"127.0.0.1:{served[0].port}"


@pytest.fixture
def writer(address: str) -> Iterator[vs.Client]:
    with vs.connect(address, token="writer-123") as client:
        yield client


@pytest.fixture
def reader(address: str) -> Iterator[vs.Client]:
    with vs.connect(address, token="reader-789") as client:
        yield client


def _bound(client: vs.Client, name: str) -> vs.RemoteVariable:
    """``client``'s handle on the existing variable ``name``."""
    info = next(i for i in client.list_variables() if i.name == name)
    with client.variable_scope("", reuse=True):
        return client.get_variable(name, shape=info.shape, dtype=info.dtype)


def _state(client: vs.Client) -> dict[str, tuple[int, list[float]]]:
    """Every variable's version and value, as a read-write client sees them."""
    infos = client.list_variables()
    values = client.pull([_bound(client, i.name) for i in infos]) if infos else []
    return {i.name: (i.version, np.asarray(v).ravel().tolist())
            for i, v in zip(infos, values, strict=True)}


def test_a_read_only_token_reads_everything(writer: vs.Client, reader: vs.Client) -> None:
    w = writer.get_variable("w", shape=[2, 3], initializer=vs.constant_initializer(1.5))
    counter = writer.Variable(7, name="counter", dtype=vs.int64)
    writer.save("model")
    assert [v.name for v in reader.list_variables()] == ["counter", "w"]
    with reader.variable_scope("", reuse=True):
        seen = reader.get_variable("w", shape=[2, 3])
    np.testing.assert_array_equal(seen.numpy(), np.full((2, 3), 1.5, np.float32))
    # get_variable of a variable that exists binds to it, as any client would.
    again = reader.get_variable("counter", shape=[], dtype=vs.int64)
    assert again.numpy() == 7
    np.testing.assert_array_equal(reader.pull([seen])[0], w.numpy())
    assert (reader.latest_checkpoint() or "").endswith("model")
    assert reader.status().variable_count == 2
    counter.assign_add(1)
    assert again.numpy() == 8


def test_a_read_only_token_changes_nothing(writer: vs.Client, reader: vs.Client,
                                           served: tuple[Server, Path]) -> None:
    writer.get_variable("w", shape=[4], initializer=vs.constant_initializer(2.0))
    writer.Variable(7, name="counter", dtype=vs.int64)
    writer.save("model")
    folder = served[1]
    before, files = _state(writer), sorted(p.name for p in folder.iterdir())
    w, counter = _bound(reader, "w"), _bound(reader, "counter")
    big = np.ones(1 << 22, np.float32)  # 16 MB: pushed through the chunked stream
    attempts = {
        "assign_add": lambda: counter.assign_add(1),
        "push": lambda: reader.push({w: np.zeros(4, np.float32)}),
        "scatter": lambda: w.scatter_add([0], [1.0]),
        "create": lambda: reader.get_variable("new", shape=[3]),
        "create big": lambda: reader.Variable(big, name="big"),
        "delete": lambda: reader.delete(["w"]),
        "delete scope": lambda: reader.delete(scope="w"),
        "save": lambda: reader.save("other"),
        "restore": lambda: reader.restore("model"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(PermissionDeniedError, match=DENIED):
            attempt()
        assert _state(writer) == before, what
        assert sorted(p.name for p in folder.iterdir()) == files, what


def test_a_read_then_write_request_is_refused_whole(address: str, writer: vs.Client) -> None:
    writer.Variable(1.0, name="x")
    with tf.Graph().as_default():
        x = tf.get_variable("x", shape=[], dtype=tf.float32)
        bump = tf.assign_add(x, 1.0)
        with tf.Session(address, token="reader-789") as sess:
            assert sess.run(x * 2.0) == 2.0
            with pytest.raises(PermissionDeniedError, match="op 'assign_add'"):
                sess.run([x, bump])
            with pytest.raises(PermissionDeniedError, match=DENIED):
                sess.run(tf.global_variables_initializer())
            assert sess.run(x) == 1.0


def test_read_write_tokens_keep_every_right(address: str) -> None:
    for token in ("writer-123", "writer-456"):
        with vs.connect(address, token=token) as client:
            v = client.get_variable(f"v_{token}", shape=[2])
            v.assign_add([1.0, 1.0])
            client.save(f"m_{token}")
            client.delete([v])


@pytest.mark.parametrize("text, error", [
    ("tok read-only extra\n", "line 1: expected TOKEN or TOKEN ROLE"),
    ("# c\ntok admin\n", "line 2: expected TOKEN or TOKEN ROLE, ROLE one of read-write, "
     "read-only"),
    ("tok\nother\ntok read-only\n", "line 3: repeats the token of line 1"),
])
def test_malformed_token_files_are_refused_without_quoting_tokens(
        tmp_path: Path, text: str, error: str) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(text)
    with pytest.raises(ValueError, match=error) as raised:
        create_server(ServerConfig(host="127.0.0.1", port=0, token_file=tokens,
                                   checkpoint_dir=tmp_path / "ckpt"))
    assert "tok " not in str(raised.value) and "'tok'" not in str(raised.value)


def test_a_cluster_needs_a_read_write_token_for_its_shards(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("reader read-only\n")
    with pytest.raises(ValueError, match="shards of a cluster need a read-write token"):
        create_server(ServerConfig(host="127.0.0.1", port=0, token_file=tokens,
                                   checkpoint_dir=tmp_path / "ckpt",
                                   cluster=("127.0.0.1:1", "127.0.0.1:2"), task_index=0))
