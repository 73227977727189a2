"""Clusters of real shard processes (`varstore serve --shards N --port 0`): one store across
shards, exact concurrent updates, runs crossing shards, sharded checkpoints that TensorFlow
reads and that restore onto any number of shards, and a shard killed with SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as tf
from tests.conftest import ServerProcess, start_server_process, stop_server_process
from varstore.cluster import ClusterClient
from varstore.errors import UnavailableError
from varstore.request import RequestBuilder

SHARD_LINE = re.compile(r"shard (\d+) \(([^,]+), pid (\d+)\)")


@dataclass
class Cluster:
    """A `varstore serve --shards N` parent, its shards' addresses and pids."""

    server: ServerProcess
    addresses: list[str]
    pids: list[int]

    @property
    def address(self) -> str:
        return self.addresses[0]


def start_cluster(checkpoint_dir: Path, shards: int) -> Cluster:
    return start_cluster_from(start_server_process(checkpoint_dir, "--shards", str(shards)),
                              shards)


def start_cluster_from(server: ServerProcess, shards: int) -> Cluster:
    """The cluster a started ``varstore serve --shards N`` process runs."""
    assert server.process.stdout is not None
    found: dict[int, tuple[str, int]] = {}
    while len(found) < shards:
        line = server.process.stdout.readline()
        assert line, "the cluster stopped before naming its shards"
        m = SHARD_LINE.search(line)
        if m is not None:
            found[int(m.group(1))] = (m.group(2), int(m.group(3)))
    return Cluster(server, [found[i][0] for i in range(shards)],
                   [found[i][1] for i in range(shards)])


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "ckpt", 3)
    yield cluster
    stop_server_process(cluster.server)


@contextlib.contextmanager
def connected(address: str, timeout: float | None = None) -> Iterator[ClusterClient]:
    """``vs.connect(address)``, which must give a cluster client."""
    client = vs.connect(address, timeout=timeout)
    try:
        assert isinstance(client, ClusterClient)
        yield client
    finally:
        client.close()


def shard_contents(cluster: Cluster) -> list[list[str]]:
    """The variable names each shard holds, asked of each shard alone."""
    out = []
    for address in cluster.addresses:
        with vs.Client(address) as alone:
            out.append([v.name for v in alone.list_variables()])
    return out


def test_any_shard_gives_the_whole_cluster(cluster3: Cluster) -> None:
    with vs.connect(cluster3.addresses[2]) as a, vs.connect(cluster3.address) as b:
        assert isinstance(a, ClusterClient) and a.shard_addresses == cluster3.addresses
        made = [a.get_variable(f"layer{i}/W", shape=[64, 64 * (i % 3 + 1)],
                               initializer=vs.constant_initializer(float(i)))
                for i in range(9)]
        with b.variable_scope("", reuse=True):
            found = [b.get_variable(f"layer{i}/W", shape=v.shape) for i, v in enumerate(made)]
        for i, v in enumerate(found):
            np.testing.assert_array_equal(v.numpy(), np.full(v.shape, float(i), np.float32))
        assert [v.name for v in b.list_variables()] == sorted(f"layer{i}/W" for i in range(9))
    contents = shard_contents(cluster3)
    assert sorted(sum(contents, [])) == sorted(f"layer{i}/W" for i in range(9))
    assert all(contents), contents  # every shard holds some


def test_single_server_is_no_cluster(server_process: ServerProcess) -> None:
    with vs.connect(server_process.address) as client:
        assert type(client) is vs.Client


def test_workers_adding_across_shards_lose_nothing(cluster3: Cluster) -> None:
    workers, steps = 4, 40
    with connected(cluster3.address) as setup:
        counters = []
        for shard in range(3):
            with setup.device(f"/job:ps/task:{shard}"):
                counters.append(setup.Variable(0, name=f"count{shard}", dtype=vs.int64))

    def work() -> None:
        with vs.connect(cluster3.address) as client:
            with client.variable_scope("", reuse=True):
                handle = client.get_variable("count1", shape=(), dtype=vs.int64)
            for _ in range(steps):
                b = RequestBuilder()
                for c in counters:  # one request: one part per shard, sent in parallel
                    b.target(b.node("assign_add", [b.const(np.int64(1), vs.int64)],
                                    variable=c.op_name))
                client.run(b)
                handle.assign_add(2)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with vs.connect(cluster3.address) as client:
        assert [int(v) for v in client.pull(counters)] == \
            [workers * steps, 3 * workers * steps, workers * steps]


def test_a_session_run_crossing_shards(cluster3: Cluster) -> None:
    with connected(cluster3.address) as setup:
        with setup.device("/job:ps/task:1"):
            setup.Variable(10.0, name="x")
        with setup.device("/job:ps/task:2"):
            setup.Variable(1.0, name="y")
        assert [setup.shard_of("x"), setup.shard_of("y")] == [1, 2]
    tf.reset_default_graph()
    x = tf.get_variable("x", shape=(), dtype=tf.float32)
    y = tf.get_variable("y", shape=(), dtype=tf.float32)
    c = tf.Variable(0.0, name="c")
    # a read on shard 1 feeding an update on shard 2, and y + 1 on y's own shard
    step = tf.assign(y, y + 1.0)
    cross = tf.assign_add(y, x * 2.0)
    with tf.Session(cluster3.address) as sess:
        sess.run(c.initializer)
        for _ in range(5):
            sess.run(step)
        assert sess.run(cross) == 26.0
        assert sess.run([x, y]) == [10.0, 26.0]


def test_adam_on_variables_of_several_shards(cluster3: Cluster) -> None:
    with connected(cluster3.address) as client:
        variables = []
        for shard in range(3):
            with client.device(f"/job:ps/task:{shard}"):
                variables.append(client.Variable(np.ones(4, np.float32) * shard, name=f"w{shard}"))
        opt = vs.train.AdamOptimizer(0.1)
        for _ in range(3):
            client.apply_gradients(opt, {v: np.full(4, 1.0, np.float32) for v in variables})
        # Each Adam step with a constant gradient moves by the rate: TensorFlow's numbers.
        for shard, value in enumerate(client.pull(variables)):
            np.testing.assert_allclose(value, np.full(4, shard - 0.3, np.float32), rtol=1e-5)
        assert {client.shard_of(f"w{s}/Adam") for s in range(3)} == {0, 1, 2}


def _model(client: vs.Client) -> dict[str, np.ndarray]:
    """Variables of several dtypes and shapes with distinct values; returns name -> value."""
    rng = np.random.default_rng(7)
    values = {f"model/dense{i}/kernel": rng.standard_normal((16 + i, 8)).astype(np.float32)
              for i in range(8)}
    values["model/embedding"] = rng.standard_normal((300, 16)).astype(np.float32)
    values["model/steps"] = np.array([3, 1, 4], np.int64)
    values["model/scale"] = np.array(2.5, np.float64)
    for name, value in values.items():
        client.Variable(value, name=name)
    return values


def test_save_writes_tensorflows_sharded_layout_and_reshards(tmp_path: Path,
                                                             cluster3: Cluster) -> None:
    folder = cluster3.server.checkpoint_dir
    with vs.connect(cluster3.address) as client:
        values = _model(client)
        path = client.save("run/model", global_step=7)
        assert path == "run/model-7"
        assert sorted(os.listdir(folder / "run")) == [
            "checkpoint", *(f"model-7.data-0000{i}-of-00003" for i in range(3)),
            "model-7.index"]
        assert client.latest_checkpoint("run") == "run/model-7"
    stop_server_process(cluster3.server)
    arrays: dict[str, Any] = {k.replace("/", "|"): v for k, v in values.items()}
    np.savez(tmp_path / "expected.npz", **arrays)
    _check_with_tensorflow(folder / "run" / "model-7", tmp_path / "expected.npz")
    for shards in (1, 2, 5):
        cluster = start_cluster(folder, shards)
        try:
            with vs.connect(cluster.address) as client:
                assert client.restore("run/model-7") == "run/model-7"
                restored = {v.name: v for v in client.list_variables()}
                assert sorted(restored) == sorted(values)
                for name, value in values.items():
                    got = client.get_variable(name, shape=value.shape,
                                              dtype=vs.as_dtype(value.dtype))
                    np.testing.assert_array_equal(got.numpy(), value)
            if shards > 1:
                assert all(shard_contents(cluster)), "every shard got variables"
        finally:
            stop_server_process(cluster.server)


def _check_with_tensorflow(prefix: Path, expected: Path) -> None:
    """TensorFlow's load_checkpoint reads every tensor of the merged checkpoint."""
    program = f"""
import numpy as np, tensorflow as tf
reader = tf.train.load_checkpoint({str(prefix)!r})
expected = np.load({str(expected)!r})
names = sorted(reader.get_variable_to_shape_map())
assert names == sorted(k.replace("|", "/") for k in expected.files), names
for key in expected.files:
    np.testing.assert_array_equal(reader.get_tensor(key.replace("|", "/")), expected[key])
print("ok", len(names))
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert result.stdout.strip() == "ok 11", result.stderr[-2000:]


def test_killed_shard_fails_its_requests_and_the_others_serve(cluster3: Cluster) -> None:
    with connected(cluster3.address, timeout=5) as client:
        handles = []
        for shard in range(3):
            with client.device(f"/job:ps/task:{shard}"):
                handles.append(client.Variable(float(shard), name=f"v{shard}"))
        before = client.save("ck/model", global_step=1)
        os.kill(cluster3.pids[1], signal.SIGKILL)
        gone = (f"shard 1 of 3: the varstore server at {cluster3.addresses[1]} is not "
                "reachable: connection refused, so nothing listens there now")
        with pytest.raises(UnavailableError, match=f"^{re.escape(gone)}") as caught:
            handles[1].numpy()
        assert "last error" not in str(caught.value)
        with pytest.raises(UnavailableError, match="shard 1 of 3"):
            client.pull(handles)
        handles[2].assign_add(5.0)
        assert [float(handles[0].numpy()), float(handles[2].numpy())] == [0.0, 7.0]
        with pytest.raises(UnavailableError, match="shard 1 of 3"):
            client.save("ck/model", global_step=2)
        assert client.latest_checkpoint("ck") == before
        assert not [f for f in os.listdir(cluster3.server.checkpoint_dir / "ck")
                    if "model-2" in f]
    listed = subprocess.run([sys.executable, "-m", "varstore.cli", "ls", "--address",
                             cluster3.address], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 1
    assert listed.stderr.startswith(f"varstore ls: UnavailableError: {gone}"), listed.stderr
    status = subprocess.run([sys.executable, "-m", "varstore.cli", "status", "--address",
                             cluster3.address], capture_output=True, text=True, timeout=120)
    assert status.returncode == 1
    assert "shards:           3 (2 serving)" in status.stdout
    assert re.search(rf"shard 1 {re.escape(cluster3.addresses[1])}: UNAVAILABLE",
                     status.stdout), status.stdout
    assert re.search(r"shard 2 \S+: serving, 1 variables", status.stdout), status.stdout
    cluster3.server.process.send_signal(signal.SIGTERM)
    _, err = cluster3.server.process.communicate(timeout=60)
    assert f"shard 1 ({cluster3.addresses[1]}, pid {cluster3.pids[1]}) exited with code -9" in err
    assert cluster3.server.process.returncode == 1


def test_sigterm_to_the_parent_stops_every_shard(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    cluster.server.process.send_signal(signal.SIGTERM)
    assert cluster.server.process.wait(timeout=60) == 0
    for pid in cluster.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _changed_cluster(tmp_path: Path, *flags: str) -> ServerProcess:
    server = start_server_process(tmp_path / "ckpt", "--shards", "2", *flags)
    cluster = start_cluster_from(server, 2)
    with connected(cluster.address) as client:
        variables = []
        for i in range(4):
            with client.device(f"/job:ps/task:{i % 2}"):
                variables.append(client.Variable(float(i), name=f"v{i}"))
        client.save("kept", global_step=1)
        for v in variables:
            v.assign_add(1.0)
    server.process.send_signal(signal.SIGINT)
    return server


def test_ctrl_c_of_a_cluster_saves_it_whole_once(tmp_path: Path) -> None:
    # Each shard saving on exit into the shared folder made one-shard "model.ckpt-1"s that
    # overwrote each other and became the `latest` checkpoint: the parent saves the cluster.
    from varstore.server.bundle import BundleReader
    server = _changed_cluster(tmp_path)
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 0
    folder = tmp_path / "ckpt"
    assert sorted(p.name for p in folder.iterdir() if "model" in p.name) == [
        "model.ckpt-1.data-00000-of-00002", "model.ckpt-1.data-00001-of-00002",
        "model.ckpt-1.index"]
    assert (folder / "checkpoint").read_text().splitlines()[0] == \
        'model_checkpoint_path: "model.ckpt-1"'
    with BundleReader(folder / "model.ckpt-1") as reader:
        assert {k: float(reader.read(k)) for k in reader.keys()} == {
            "v0": 1.0, "v1": 2.0, "v2": 3.0, "v3": 4.0}
    assert "final checkpoint of the whole cluster written: model.ckpt-1" in err
    assert "discarding" not in err  # shard 1 knows its part is saved


def test_ctrl_c_of_a_cluster_with_no_save_on_exit_writes_nothing(tmp_path: Path) -> None:
    server = _changed_cluster(tmp_path, "--no-save-on-exit")
    _, err = server.process.communicate(timeout=120)
    assert server.process.returncode == 0
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if "model" in p.name) == []
    state = (tmp_path / "ckpt" / "checkpoint").read_text().splitlines()
    assert state[0] == 'model_checkpoint_path: "kept-1"'
    assert "discarding the changes of" in err


def test_a_shard_started_from_tf_config(tmp_path: Path) -> None:
    config = {"cluster": {"ps": ["127.0.0.1:1", "127.0.0.1:2"], "worker": ["w:1"]},
              "task": {"type": "ps", "index": 1}}
    server = start_server_process(tmp_path / "ckpt", env={"TF_CONFIG": json.dumps(config)})
    try:
        with vs.Client(server.address) as alone:
            from varstore.cluster import cluster_addresses
            assert cluster_addresses(alone) == ["127.0.0.1:1", "127.0.0.1:2"]
    finally:
        stop_server_process(server)


def test_a_restarted_shard_gets_its_own_variables_back(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address, timeout=5) as client:
            handles = []
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    handles.append(client.Variable(np.arange(3.0) + shard, name=f"v{shard}"))
            client.save("model")
            for h in handles:
                h.assign_add(np.full(3, 10.0))
            os.kill(cluster.pids[1], signal.SIGKILL)
            port = cluster.addresses[1].rpartition(":")[2]
            replacement = start_server_process(
                cluster.server.checkpoint_dir, "--cluster", ",".join(cluster.addresses),
                "--task-index", "1", "--port", port, "--restore", "latest")
            np.testing.assert_array_equal(handles[1].numpy(), [1.0, 2.0, 3.0])  # saved
            np.testing.assert_array_equal(handles[0].numpy(), [10.0, 11.0, 12.0])  # kept
            with vs.Client(replacement.address) as alone:
                assert [v.name for v in alone.list_variables()] == ["v1"]
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)


def test_shards_that_do_not_share_the_checkpoint_folder_are_refused(tmp_path: Path) -> None:
    from varstore.server.shards import free_ports
    addresses = ",".join(f"127.0.0.1:{p}" for p in free_ports("127.0.0.1", 2))
    shards = [start_server_process(tmp_path / f"own{i}", "--cluster", addresses,
                                   "--task-index", str(i), "--port", addresses.split(",")[i]
                                   .rpartition(":")[2]) for i in range(2)]
    try:
        with connected(shards[0].address) as client:
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    client.Variable(1.0, name=f"v{shard}")
            with pytest.raises(vs.errors.FailedPreconditionError,
                               match="is not visible in this shard's checkpoint folder .*own0: "
                                     "the shards of a cluster must share one checkpoint folder"):
                client.save("model")
            assert client.latest_checkpoint() is None
    finally:
        for process in shards:
            stop_server_process(process)


def test_replica_device_setter_places_graph_variables_on_its_tasks(cluster3: Cluster) -> None:
    tf.reset_default_graph()
    with tf.device(tf.train.replica_device_setter(ps_tasks=3)):
        variables = [tf.Variable(np.full(4, float(i), np.float32), name=f"rr{i}")
                     for i in range(6)]
        with tf.device("/job:ps/task:0"):
            pinned = tf.Variable(7.0, name="pinned")
    # Partitioned variables spread their parts (placed by bytes, not pinned here).
    tf.get_variable("emb", shape=[30, 4], partitioner=tf.fixed_size_partitioner(3))
    with tf.Session(cluster3.address) as sess:
        sess.run(tf.global_variables_initializer())
        assert float(sess.run(pinned)) == 7.0
        np.testing.assert_array_equal(sess.run(variables[5]), np.full(4, 5.0, np.float32))
    contents = [sorted(names) for names in shard_contents(cluster3)]
    assert [[n for n in names if n.startswith("rr") or n == "pinned"] for names in contents] == [
        ["pinned", "rr0", "rr3"], ["rr1", "rr4"], ["rr2", "rr5"]]
    assert sorted(sum(([n for n in names if n.startswith("emb/")] for names in contents), [])) \
        == ["emb/part_0", "emb/part_1", "emb/part_2"]
    assert all(any(n.startswith("emb/") for n in names) for names in contents)


def test_a_shard_dying_mid_save_fails_the_save_and_keeps_the_last_checkpoint(
        cluster3: Cluster) -> None:
    folder = cluster3.server.checkpoint_dir
    with connected(cluster3.address, timeout=30) as client:
        handles = []
        for shard in range(3):
            with client.device(f"/job:ps/task:{shard}"):
                handles.append(client.Variable(np.full(1000, float(shard)), name=f"v{shard}"))
        assert client.save("ck/model", handles, global_step=1) == "ck/model-1"
        for h in handles:
            h.assign_add(np.ones(1000))
        # Shard 1 stops answering, then dies while the save waits for its part.
        os.kill(cluster3.pids[1], signal.SIGSTOP)
        while Path(f"/proc/{cluster3.pids[1]}/stat").read_text().rsplit(")", 1)[1].split()[0] \
                != "T":
            time.sleep(0.01)
        outcome: list[BaseException] = []

        def save() -> None:
            try:
                client.save("ck/model", handles, global_step=2)
            except BaseException as e:  # noqa: BLE001 - the test looks at it
                outcome.append(e)
        saving = threading.Thread(target=save)
        saving.start()
        saving.join(1.0)
        os.kill(cluster3.pids[1], signal.SIGKILL)
        saving.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], UnavailableError), outcome
        assert "shard 1 of 3" in str(outcome[0])
        assert client.latest_checkpoint("ck") == "ck/model-1"
        assert sorted(os.listdir(folder / "ck")) == [
            "checkpoint", *(f"model-1.data-0000{i}-of-00003" for i in range(3)),
            "model-1.index"]
        client.restore("ck/model-1", [handles[0], handles[2]])
        assert [float(h.numpy()[0]) for h in (handles[0], handles[2])] == [0.0, 2.0]


def test_workers_wait_for_variables_the_chief_creates_on_any_shard(cluster3: Cluster) -> None:
    with connected(cluster3.address) as worker, connected(cluster3.address) as chief:
        waited: list[BaseException | None] = []

        def wait() -> None:
            try:
                worker.wait_until_ready(["late/w", "late/b"], timeout=120)
                waited.append(None)
            except BaseException as e:  # noqa: BLE001 - the test looks at it
                waited.append(e)
        waiting = threading.Thread(target=wait)
        waiting.start()
        waiting.join(1.0)
        assert not waited  # nothing exists yet
        with chief.device("/job:ps/task:2"):
            w = chief.Variable(np.ones(3), name="late/w")
        with chief.device("/job:ps/task:1"):
            b = chief.Variable(2.0, name="late/b")
        waiting.join(120)
        assert waited == [None]
        # One request reading both shards and fetching a constant.
        request = RequestBuilder()
        for v in (w, b):
            request.fetch(request.node("read", variable=v.op_name))
        request.fetch(request.const(np.int32(7), vs.int32))
        values, _ = worker.run(request)
        assert [v.tolist() for v in values] == [[1.0, 1.0, 1.0], 2.0, 7]


def test_tensorflows_own_checkpoints_restore_onto_a_cluster(tmp_path: Path) -> None:
    data = Path(__file__).parents[1] / "data" / "tf_checkpoints"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("golden", "sharded"):
        for f in data.glob(f"{name}.*"):
            (folder / f.name).write_bytes(f.read_bytes())
    expected = np.load(data / "expected.npz")
    cluster = start_cluster(folder, 2)
    try:
        with connected(cluster.address) as client:
            for name in ("golden", "sharded"):
                assert client.restore(name) == name
                for key in expected.files:
                    checkpoint, _, variable = key.partition("::")
                    if checkpoint != name:
                        continue
                    # Partitioned part/P comes back as TF's parts, spread over the shards.
                    pieces = [f"{variable}/part_{i}" for i in range(3)] \
                        if variable == "part/P" else [variable]
                    with client.variable_scope("", reuse=True):
                        got = [client.get_variable(p, shape=None,
                                                   dtype=vs.as_dtype(expected[key].dtype))
                               for p in pieces]
                    np.testing.assert_array_equal(
                        np.concatenate(client.pull(got)) if len(got) > 1 else got[0].numpy(),
                        expected[key])
        assert all(shard_contents(cluster))
    finally:
        stop_server_process(cluster.server)


def test_a_restarted_shard_0_relearns_where_variables_are(tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path / "ckpt", 2)
    replacement = None
    try:
        with connected(cluster.address) as client:
            for shard in range(2):
                with client.device(f"/job:ps/task:{shard}"):
                    client.Variable(np.full(100, float(shard)), name=f"w{shard}")
            client.save("model")
        os.kill(cluster.pids[0], signal.SIGKILL)
        replacement = start_server_process(
            cluster.server.checkpoint_dir, "--cluster", ",".join(cluster.addresses),
            "--task-index", "0", "--port", cluster.addresses[0].rpartition(":")[2],
            "--restore", "latest")
        with connected(cluster.address) as client:  # a new client: nothing cached
            assert client.shard_of("w0") == 0
            # w0's 800 bytes are on the new table: a new variable goes to the emptier shard 1.
            client.Variable(np.zeros(10), name="small")
            assert client.shard_of("small") == 1
            with client.variable_scope("", reuse=True):
                w1 = client.get_variable("w1", shape=(100,), dtype=vs.float64)
            np.testing.assert_array_equal(w1.numpy(), np.full(100, 1.0))
            assert client.shard_of("w1") == 1
    finally:
        if replacement is not None:
            stop_server_process(replacement)
        stop_server_process(cluster.server)
