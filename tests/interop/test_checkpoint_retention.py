"""Checkpoint retention and ``tf.train.Saver``'s signature, compared with TensorFlow 1.x.

Each program runs twice: under ``tf.compat.v1`` (graph mode, in a subprocess, all programs at
once) and under ``varstore.v1`` against a fresh in-process server. Both runs return what the
program observed plus the files left on disk (checkpoint names, and each state file's
``model_checkpoint_path`` and ``all_model_checkpoint_paths`` as base names); they must be
equal. Programs for savers TensorFlow has no exact counterpart of (the eager client, the
server's timer, ``varstore save``, ``CheckpointSaver``) run as a TF ``Saver`` per prefix,
which is the rule those follow (issue #11), against the varstore code in ``VARSTORE_SIDE``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as vtf
from tests.extras import require_installed
from varstore.server.app import Server

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Env:
    """What a program gets: the TF module, a session factory, the folder to save into (a
    path under TF, a path inside the server's checkpoint folder under varstore), the
    folder's real location, and MonitoredTrainingSession's connection arguments."""

    tf: Any
    session: Callable[[], Any]
    dir: str
    real_dir: Path
    mts_kwargs: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def checkpoints(self) -> list[str]:
        return listing(self.real_dir)["checkpoints"]


Program = Callable[[Env], Any]
PROGRAMS: dict[str, Program] = {}


def program(fn: Program) -> Program:
    PROGRAMS[fn.__name__] = fn
    return fn


def listing(folder: Path) -> dict[str, Any]:
    """The checkpoints in ``folder`` and what each state file there lists (base names)."""
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    states = {}
    for name in names:
        if "." in name or not (folder / name).is_file():
            continue
        text = (folder / name).read_text()
        states[name] = {
            "model": [os.path.basename(p) for p in
                      re.findall(r'^model_checkpoint_path: "(.*)"', text, re.M)],
            "all": [os.path.basename(p) for p in
                    re.findall(r'^all_model_checkpoint_paths: "(.*)"', text, re.M)]}
    return {"checkpoints": [n[:-len(".index")] for n in names if n.endswith(".index")],
            "states": states}


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the class and message are the observation
        return ["error", type(e).__name__, str(e)]


def base(path: Any) -> Any:
    return None if path is None else os.path.basename(path)


def _w(env: Env) -> tuple[Any, Any]:
    w = env.tf.Variable(1.0, name="w")
    sess = env.session()
    sess.run(w.initializer)
    return w, sess


# --- retention: a saver deletes only what it wrote -----------------------------------------

@program
def two_savers_in_one_folder(env: Env) -> Any:
    w, sess = _w(env)
    gen = env.tf.train.Saver([w], max_to_keep=1)
    disc = env.tf.train.Saver([w], max_to_keep=1)
    for step in (1, 2):
        gen.save(sess, env.path("gen"), global_step=step)
        disc.save(sess, env.path("disc"), global_step=step)
    return [base(env.tf.train.latest_checkpoint(env.dir)),
            [base(p) for p in gen.last_checkpoints], [base(p) for p in disc.last_checkpoints]]


@program
def new_saver_keeps_older_checkpoints(env: Env) -> Any:
    w, sess = _w(env)
    old = env.tf.train.Saver([w], max_to_keep=5)
    old.save(sess, env.path("m"), global_step=1)
    old.save(sess, env.path("m"), global_step=2)
    env.tf.train.Saver([w], max_to_keep=1).save(sess, env.path("m"), global_step=3)
    env.tf.train.Saver([w], max_to_keep=1).save(sess, env.path("m"), global_step=4)


@program
def one_saver_keeps_its_newest(env: Env) -> Any:
    w, sess = _w(env)
    saver = env.tf.train.Saver([w], max_to_keep=2)
    for step in range(1, 5):
        saver.save(sess, env.path("m"), global_step=step)
    saver.save(sess, env.path("m"), global_step=3)  # the same name again: moved to the end
    return [base(p) for p in saver.last_checkpoints]


@program
def max_to_keep_zero_deletes_nothing(env: Env) -> Any:
    w, sess = _w(env)
    saver = env.tf.train.Saver([w], max_to_keep=0)
    for step in range(1, 4):
        saver.save(sess, env.path("m"), global_step=step)
    return saver.last_checkpoints


@program
def max_to_keep_none_deletes_nothing(env: Env) -> Any:
    w, sess = _w(env)
    saver = env.tf.train.Saver([w], max_to_keep=None)
    for step in range(1, 4):
        saver.save(sess, env.path("n"), global_step=step)
    return saver.last_checkpoints


@program
def savers_with_their_own_state_files(env: Env) -> Any:
    w, sess = _w(env)
    gen = env.tf.train.Saver([w], max_to_keep=1)
    disc = env.tf.train.Saver([w], max_to_keep=1)
    for step in (1, 2):
        gen.save(sess, env.path("gen"), global_step=step, latest_filename="gen_ckpt")
        disc.save(sess, env.path("disc"), global_step=step, latest_filename="disc_ckpt")
    return [base(env.tf.train.latest_checkpoint(env.dir, "gen_ckpt")),
            base(env.tf.train.latest_checkpoint(env.dir, "disc_ckpt")),
            base(env.tf.train.latest_checkpoint(env.dir))]


@program
def write_state_false(env: Env) -> Any:
    w, sess = _w(env)
    saver = env.tf.train.Saver([w], max_to_keep=1)
    saver.save(sess, env.path("m"), global_step=1)
    paths = [base(saver.save(sess, env.path("m"), global_step=s, write_state=False,
                             write_meta_graph=False)) for s in (2, 3)]
    return [paths, [base(p) for p in saver.last_checkpoints]]


@program
def keep_checkpoint_every_n_hours_within_the_first_period(env: Env) -> Any:
    w, sess = _w(env)
    saver = env.tf.train.Saver([w], max_to_keep=1, keep_checkpoint_every_n_hours=1.0)
    for step in range(1, 4):
        saver.save(sess, env.path("h"), global_step=step)


# --- Saver's signature ---------------------------------------------------------------------

@program
def saver_arguments_tensorflow_accepts(env: Env) -> Any:
    w, sess = _w(env)
    env.real_dir.mkdir(parents=True)  # TF's sharded save does not make the folder
    saver = env.tf.train.Saver(
        [w], reshape=False, sharded=True, max_to_keep=3, keep_checkpoint_every_n_hours=2.0,
        name="my_saver", restore_sequentially=True, allow_empty=False, write_version=2,
        pad_step_number=False, save_relative_paths=True, filename="x")
    return base(saver.save(sess, env.path("s"), global_step=7, latest_filename="other",
                           meta_graph_suffix="meta", write_meta_graph=False,
                           write_state=True, strip_default_attrs=True))


@program
def pad_step_number(env: Env) -> Any:
    w, sess = _w(env)
    return base(env.tf.train.Saver([w], pad_step_number=True).save(
        sess, env.path("p"), global_step=3))


@program
def global_step_as_numpy_tensor_and_variable(env: Env) -> Any:
    w, sess = _w(env)
    step = env.tf.Variable(41, dtype=env.tf.int64, name="step")
    sess.run(step.initializer)
    saver = env.tf.train.Saver([w, step], max_to_keep=10)
    return [base(saver.save(sess, env.path("g"), global_step=np.int64(5))),
            base(saver.save(sess, env.path("g"), global_step=np.int32(6))),
            base(saver.save(sess, env.path("g"), global_step=step)),
            base(saver.save(sess, env.path("g"), global_step=step + 1))]


@program
def latest_filename_errors(env: Env) -> Any:
    w, sess = _w(env)
    saver = env.tf.train.Saver([w])
    found = [outcome(lambda: saver.save(sess, env.path("m"), latest_filename="a/b")),
             outcome(lambda: saver.save(sess, env.path("checkpoint")))]
    return [[part.replace(env.dir + "/", "<dir>/") for part in item] for item in found]


@program
def allow_empty_saves_nothing(env: Env) -> Any:
    saver = env.tf.train.Saver(allow_empty=True)
    return saver.save(env.session(), env.path("e"))


@program
def defer_build(env: Env) -> Any:
    w, sess = _w(env)
    refused = outcome(lambda: env.tf.train.Saver([w], defer_build=True))
    saver = env.tf.train.Saver(defer_build=True)
    unbuilt = outcome(lambda: saver.save(sess, env.path("d")))
    saver.build()
    return [refused, unbuilt, base(saver.save(sess, env.path("d")))]


@program
def chief_writes_the_initial_checkpoint(env: Env) -> Any:
    gs = env.tf.train.get_or_create_global_step()
    inc = env.tf.assign_add(gs, 1)
    sess = env.tf.train.MonitoredTrainingSession(checkpoint_dir=env.dir,
                                                 save_checkpoint_secs=600, **env.mts_kwargs)
    at_start = env.checkpoints()
    sess.run(inc)
    sess.close()
    return at_start


# --- savers with no TF class of their own, each a TF Saver per prefix ------------------------

def _tf_savers(env: Env, saves: list[tuple[str, int, int]]) -> None:
    w, sess = _w(env)
    savers: dict[str, Any] = {}
    for prefix, step, keep in saves:
        saver = savers.setdefault(prefix, env.tf.train.Saver([w], max_to_keep=keep))
        saver.save(sess, env.path(prefix), global_step=step)


_EAGER_SAVES = [("gen", 1, 1), ("disc", 1, 1), ("gen", 2, 1), ("disc", 2, 1), ("gen", 3, 1)]


@program
def eager_client_saves(env: Env) -> Any:
    _tf_savers(env, _EAGER_SAVES)


@program
def checkpoint_saver_next_to_a_users_checkpoint(env: Env) -> Any:
    _tf_savers(env, [("user", 1, 5), ("model.ckpt", 1, 1), ("model.ckpt", 2, 1)])


@program
def cli_save_next_to_a_users_checkpoint(env: Env) -> Any:
    _tf_savers(env, [("user", 1, 5), ("other", 1, 1), ("other", 2, 1)])


@program
def timer_next_to_a_users_checkpoint(env: Env) -> Any:
    _tf_savers(env, [("user", 1, 5), ("model.ckpt", 1, 1), ("model.ckpt", 2, 1)])


def _vs_eager(env: Env, address: str) -> None:
    with vs.connect(address) as c:
        c.Variable(1.0, name="w")
        for prefix, step, keep in _EAGER_SAVES:
            c.save(env.path(prefix), global_step=step, max_to_keep=keep)


def _vs_checkpoint_saver(env: Env, address: str) -> None:
    with vs.connect(address) as c:
        c.Variable(1.0, name="w")
        c.save(env.path("user"), global_step=1, max_to_keep=5)
        saver = vs.train.CheckpointSaver(c, env.dir, max_to_keep=1)
        saver.save(1)
        saver.save(2)


def _vs_cli(env: Env, address: str) -> None:
    with vs.connect(address) as c:
        c.Variable(1.0, name="w")
        c.save(env.path("user"), global_step=1, max_to_keep=5)
    for step in (1, 2):
        done = subprocess.run(
            [sys.executable, "-m", "varstore.cli", "save", env.path("other"), "--step",
             str(step), "--keep", "1", "--quiet", "--address", address],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr


def _vs_timer(env: Env, address: str, server: Server) -> None:
    server.timer.keep = 1  # as --keep 1; the timer saves at its folder's root
    with vs.connect(address) as c:
        w = c.Variable(1.0, name="w")
        c.save(env.path("user"), global_step=1, max_to_keep=5)
        for _ in range(2):  # the timer writes only what --restore latest would not restore
            w.assign_add(1.0)
            server.timer.save_periodic()


VARSTORE_SIDE: dict[str, Callable[..., None]] = {
    "eager_client_saves": _vs_eager,
    "checkpoint_saver_next_to_a_users_checkpoint": _vs_checkpoint_saver,
    "cli_save_next_to_a_users_checkpoint": _vs_cli,
}


def run_varstore(name: str, server: Server) -> Any:
    address = f"127.0.0.1:{server.port}"
    real = Path(server.checkpoints.directory) / "d"
    with vtf.Graph().as_default():
        env = Env(vtf, lambda: vtf.Session(address), "d", real, {"master": address})
        if name == "timer_next_to_a_users_checkpoint":
            env.dir = ""
            env.real_dir = Path(server.checkpoints.directory)
            _vs_timer(env, address, server)
            result = None
        elif name in VARSTORE_SIDE:
            VARSTORE_SIDE[name](env, address)
            result = None
        else:
            result = outcome(lambda: PROGRAMS[name](env))
    return json.loads(json.dumps({"result": result, "files": listing(env.real_dir)},
                                 default=str))


_RUNNER = """
import json, os, tempfile
from pathlib import Path
import tensorflow.compat.v1 as tf
tf.disable_v2_behavior()
tf.logging.set_verbosity(tf.logging.ERROR)
import tests.interop.test_checkpoint_retention as m
out = {}
for name in m.PROGRAMS:
    root = Path(tempfile.mkdtemp())
    real = root if name == "timer_next_to_a_users_checkpoint" else root / "d"
    with tf.Graph().as_default():
        env = m.Env(tf, tf.Session, str(real), real)
        result = m.outcome(lambda: m.PROGRAMS[name](env))
    if name in m.VARSTORE_SIDE or name == "timer_next_to_a_users_checkpoint":
        result = None
    out[name] = json.loads(json.dumps({"result": result, "files": m.listing(real)},
                                      default=str))
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def tensorflow_results() -> dict[str, Any]:
    """Every program's outcome under TensorFlow, computed once in a subprocess."""
    require_installed("tensorflow")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-c", _RUNNER], cwd=ROOT,
                              env={**env, "TMPDIR": tmp}, capture_output=True, text=True,
                              timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, done.stderr[-3000:]
    return dict(json.loads(lines[-1][len("RESULTS "):]))


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_checkpoints_on_disk_match_tensorflow(name: str, server: Server,
                                              tensorflow_results: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # tf.train.latest_checkpoint outside a session asks the server varstore.connect() finds.
    monkeypatch.setenv("VARSTORE_ADDRESS", f"127.0.0.1:{server.port}")
    assert run_varstore(name, server) == tensorflow_results[name]
