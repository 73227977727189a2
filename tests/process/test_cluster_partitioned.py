"""Partitioned variables on clusters of real shard processes: their parts spread over the
shards, a save writes each part as a slice from its own shard into one tensor of the merged
checkpoint (which TensorFlow reads whole and re-slices), and the checkpoint restores onto
any shard count and into any partitioning; a restarted shard gets its own parts back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as tf
from tests.conftest import ServerProcess, start_server_process, stop_server_process
from tests.process.test_cluster import (
    connected,
    shard_contents,
    start_cluster,
    start_cluster_from,
)
from varstore.errors import NotFoundError
from varstore.server.bundle import TEMP_MARK, BundleReader

FULL = np.arange(120, dtype=np.float32).reshape(30, 4)
BIAS = np.array([0.5, -1.5], np.float32)


def _v1_model(address: str, parts: int | None, action: str, path: str) -> np.ndarray:
    """Builds ``emb`` [30, 4] (``parts`` parts, None: whole) and ``dense/b`` in a varstore.v1
    graph on ``address``, initialized to zeros unless the server has them; ``action`` "init"
    assigns FULL and BIAS and saves ``path``, "restore" restores ``path``; returns emb's
    full value."""
    with tf.Graph().as_default():
        partitioner = None if parts is None else tf.fixed_size_partitioner(parts)
        emb: Any = tf.get_variable("emb", [30, 4], initializer=tf.zeros_initializer(),
                                   partitioner=partitioner)
        bias = tf.get_variable("dense/b", [2], initializer=tf.zeros_initializer())
        pieces = list(emb) if parts is not None else [emb]
        saver = tf.train.Saver()
        with tf.Session(address) as sess:
            if action == "init":
                sess.run(tf.global_variables_initializer())
                starts = np.cumsum([0, *(p.shape.as_list()[0] for p in pieces)]).tolist()
                sess.run([tf.assign(p, FULL[a:b])
                          for p, a, b in zip(pieces, starts, starts[1:], strict=False)]
                         + [tf.assign(bias, BIAS)])
                assert saver.save(sess, path) == path
            else:
                saver.restore(sess, path)
                np.testing.assert_array_equal(sess.run(bias), BIAS)
            return np.concatenate(sess.run(pieces), axis=0)


def _tensorflow(program: str) -> str:
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def _tensorflow_reads(prefix: Path) -> None:
    """TensorFlow lists ``emb`` whole (no part keys), reads it, and restores it into its own
    partitioned variables of 2 parts with Saver.restore."""
    out = _tensorflow(f"""
import numpy as np, tensorflow as tf
v1 = tf.compat.v1
reader = tf.train.load_checkpoint({str(prefix)!r})
print(sorted(reader.get_variable_to_shape_map().items()))
print(reader.get_tensor("emb").sum())
with tf.Graph().as_default():
    emb = v1.get_variable("emb", [30, 4], partitioner=v1.fixed_size_partitioner(2))
    b = v1.get_variable("dense/b", [2])
    with v1.Session() as sess:
        v1.train.Saver().restore(sess, {str(prefix)!r})
        print(np.concatenate(sess.run(list(emb))).sum(), sess.run(b).tolist())
""")
    assert out.splitlines() == [
        "[('dense/b', [2]), ('emb', [30, 4])]", f"{FULL.sum()}",
        f"{FULL.sum()} {BIAS.tolist()}"]


def test_partitioned_variables_save_from_every_shard_and_reshard(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 3)
    folder = cluster.server.checkpoint_dir
    try:
        np.testing.assert_array_equal(_v1_model(cluster.address, 3, "init", "run/model"),
                                      FULL)
        contents = shard_contents(cluster)
        assert all(any(n.startswith("emb/part_") for n in names) for names in contents), \
            contents
        with connected(cluster.address) as client:  # a save of everything, as the timer's
            assert client.save("all/model") == "all/model"
    finally:
        stop_server_process(cluster.server)
    for prefix in ("run/model", "all/model"):
        assert sorted(f.name for f in (folder / prefix).parent.iterdir()) == [
            "checkpoint", *(f"model.data-0000{i}-of-00003" for i in range(3)), "model.index"]
        _tensorflow_reads(folder / prefix)
    for shards, parts in ((1, 3), (2, 2), (5, 5), (2, None)):
        cluster = start_cluster(folder, shards)
        try:
            # A whole restore recreates TF's parts wherever the placement puts them.
            with connected(cluster.address) if shards > 1 else vs.connect(
                    cluster.address) as client:
                assert client.restore("run/model") == "run/model"
                infos = {v.name: v for v in client.list_variables()}
                assert sorted(infos) == ["dense/b", "emb/part_0", "emb/part_1", "emb/part_2"]
                slices = [infos[f"emb/part_{i}"].save_slice for i in range(3)]
                assert [list(s.offset) for s in slices if s is not None] == [
                    [0, 0], [10, 0], [20, 0]]
                client.reset()
            # A v1 program with another partitioning restores it re-sliced.
            np.testing.assert_array_equal(
                _v1_model(cluster.address, parts, "restore", "run/model"), FULL)
            if shards > 1 and parts is not None:
                assert all(shard_contents(cluster)), "every shard got parts"
        finally:
            stop_server_process(cluster.server)


def test_a_restarted_shard_gets_its_own_parts_back(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        _v1_model(cluster.address, 2, "init", "model")
        with connected(cluster.address, timeout=5) as client:
            handles = {v.name: vs.RemoteVariable(client, v.name, v.dtype, v.shape)
                       for v in client.list_variables()}
            assert client.save("model") == "model"
            for handle in handles.values():
                handle.assign_add(np.full(handle.shape, 1000.0, np.float32))
            on_1 = [n for n in handles if client.shard_of(n) == 1]
            assert any(n.startswith("emb/part_") for n in on_1), on_1
            os.kill(cluster.pids[1], signal.SIGKILL)
            port = cluster.addresses[1].rpartition(":")[2]
            replacement = start_server_process(
                cluster.server.checkpoint_dir, "--cluster", ",".join(cluster.addresses),
                "--task-index", "1", "--port", port, "--restore", "latest")
            saved = {"emb/part_0": FULL[:15], "emb/part_1": FULL[15:], "dense/b": BIAS}
            for name, handle in handles.items():
                want = saved[name] + (0 if name in on_1 else 1000)  # saved, else kept
                np.testing.assert_array_equal(handle.numpy(), want)
            with vs.Client(replacement.address) as alone:
                restored = alone.list_variables()
                assert sorted(v.name for v in restored) == sorted(on_1)
                assert all(v.save_slice is not None and v.save_slice.full_name == "emb"
                           for v in restored if v.name.startswith("emb/"))
        np.testing.assert_array_equal(_v1_model(cluster.address, 2, "restore", "model"), FULL)
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_the_cluster_timer_saves_parts_as_one_tensor(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    server = start_server_process(folder, "--shards", "2", "--save-every", "0.2")
    cluster = start_cluster_from(server, 2)
    try:
        _v1_model(cluster.address, 2, "init", "mine")
        assert all(any(n.startswith("emb/part_") for n in names)
                   for names in shard_contents(cluster))
        # A change since that save of every variable ("mine"), for the timer to save.
        with connected(cluster.address) as client, client.variable_scope("", reuse=True):
            client.get_variable("dense/b", [2]).assign(BIAS)
        deadline = time.monotonic() + 120
        while not _holds_emb_whole(folder):  # a timer's save after both parts had values
            assert time.monotonic() < deadline, "no timer checkpoint holds emb whole"
            time.sleep(0.1)
    finally:
        stop_server_process(server)


def _holds_emb_whole(folder: Path) -> bool:
    """Whether the newest finished timer checkpoint holds ``emb`` as two slices of FULL."""
    found = [p for p in folder.glob("model.ckpt-*.index") if TEMP_MARK not in p.name]
    if not found:
        return False
    try:
        with BundleReader(str(max(found, key=os.path.getmtime))[:-len(".index")]) as reader:
            return reader.keys() == ["dense/b", "emb"] and np.array_equal(
                reader.read("emb"), FULL) and reader.entry("emb").slices == (
                ((0, 0), (15, 4)), ((15, 0), (15, 4)))
    except (OSError, NotFoundError):  # deleted by retention meanwhile
        return False


def test_a_shard_stopped_alone_snapshots_its_parts_which_go_only_together(
        tmp_path: Path) -> None:
    # A shard holding a part of a partitioned variable could not write its snapshot ("the
    # parts saved under 'emb' do not cover its full shape") and came back with all its
    # variables rolled back (attack5 10); deleting one part alone made every later save fail
    # (attack5 11).
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None

    def restart_1() -> ServerProcess:
        return start_server_process(
            cluster.server.checkpoint_dir, "--cluster", ",".join(cluster.addresses),
            "--task-index", "1", "--port", cluster.addresses[1].rpartition(":")[2],
            "--restore", "latest")
    try:
        _v1_model(cluster.address, 2, "init", "model")
        os.kill(cluster.pids[1], signal.SIGKILL)
        replacement = restart_1()
        with connected(cluster.address, timeout=5) as client:
            handles = {v.name: vs.RemoteVariable(client, v.name, v.dtype, v.shape)
                       for v in client.list_variables()}
            on_1 = sorted(n for n in handles if client.shard_of(n) == 1)
            part = next(n for n in on_1 if n.startswith("emb/part_"))
            for handle in handles.values():
                handle.assign_add(np.full(handle.shape, 1000.0, np.float32))
            stop_server_process(replacement)
            _, err = replacement.process.communicate(timeout=60)
            assert "wrote this shard's own snapshot" in err, err[-2000:]
            replacement = restart_1()
            saved = {"emb/part_0": FULL[:15], "emb/part_1": FULL[15:], "dense/b": BIAS}
            for name, handle in handles.items():
                np.testing.assert_array_equal(handle.numpy(), saved[name] + 1000)
            with vs.Client(replacement.address) as alone:
                restored = alone.list_variables()
                assert sorted(v.name for v in restored) == on_1
                assert all(v.save_slice is not None and v.save_slice.full_name == "emb"
                           for v in restored if v.name.startswith("emb/"))
            with pytest.raises(vs.errors.InvalidArgumentError,
                               match=f"^cannot delete {part} alone: it is a part of the "
                                     "partitioned variable 'emb', whose part emb/part_"):
                client.delete([part])
            assert sorted(v.name for v in client.list_variables()) == sorted(handles)
            assert client.save("after") == "after"
            assert client.delete(["emb"]) == ["emb/part_0", "emb/part_1"]
            assert [v.name for v in client.list_variables()] == ["dense/b"]
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)
