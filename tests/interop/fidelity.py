"""Paired programs: the same TF1 program under TensorFlow's ``tf.compat.v1`` (with v2
behaviour disabled, so TF 1.x's reference variables) and under varstore.

A program is ``fn(tf, env)``. For a *graph* program ``tf`` is ``tensorflow.compat.v1`` or
``varstore.v1`` and ``env.session()`` opens a session on the run's server; for an *eager*
program ``tf`` is ``tensorflow.compat.v1`` or a connected ``varstore.Client`` (both have
``Variable``, ``get_variable``, ``variable_scope``, ``name_scope``...) and ``env.read(var)``
gives a variable's value (TF: in a session, after the initializers ran); ``env.lib`` is the
module with the dtypes and initializers (``tensorflow.compat.v1``, ``varstore`` or
``varstore.v1``). The observation is
the program's return value as JSON data, or ``["error", class name, message]`` for what it
raised.

TensorFlow runs once per test session, every registered module at once, in a subprocess
(``disable_v2_behavior`` stays out of the test process); each test then runs one program
under varstore against a fresh in-process server and compares the observations exactly.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.extras import require_installed
from tests.interop.test_v1_semantics import _NODE_DEF as NODE_DEF

ROOT = Path(__file__).resolve().parents[2]
# Every module holding fidelity programs; TensorFlow runs them all in one subprocess.
MODULES = (
    "tests.interop.test_tf1_fidelity_scopes",
    "tests.interop.test_tf1_fidelity_names",
    "tests.interop.test_tf1_fidelity_dtypes",
    "tests.interop.test_tf1_fidelity_signatures",
    "tests.interop.test_tf1_fidelity_devices",
    "tests.interop.test_tf1_fidelity_partitioned",
    "tests.interop.test_tf1_fidelity_failures",
    "tests.server.test_eager_fidelity",
)

Program = Callable[[Any, Any], Any]


@dataclass
class Entry:
    """One registered program: how it runs and how its observations are compared."""

    fn: Program
    eager: bool
    # "exact": same value, or same exception class and message; "type": same value or
    # exception class (for TF messages that carry TF-only context, e.g. graph execution).
    compare: str


class Programs(dict[str, Entry]):
    """The programs of one test module, by name."""

    def graph(self, fn: Program | None = None, *, compare: str = "exact") -> Any:
        """Registers a graph-mode program (``fn(tf, env)``)."""
        return self._register(fn, False, compare)

    def eager(self, fn: Program | None = None, *, compare: str = "exact") -> Any:
        """Registers an eager-client program (``fn(api, env)``)."""
        return self._register(fn, True, compare)

    def _register(self, fn: Program | None, eager: bool, compare: str) -> Any:
        def add(f: Program) -> Program:
            self[f.__name__] = Entry(f, eager, compare)
            return f
        return add(fn) if fn is not None else add


def jsonable(value: Any) -> Any:
    """An observation as plain JSON data (numpy values as lists and Python scalars)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return jsonable(value.tolist())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return repr(value)


def error(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result, or ``["error", class name, message]`` for what it raises."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the class is the observation
        return ["error", type(e).__name__, str(e)]


def observe(fn: Callable[[], Any]) -> Any:
    """What a program shows: its JSON result or the error it raised."""
    return jsonable(error(fn))


def reuse_name(value: Any) -> Any:
    """A scope's ``reuse`` as data: True, False, None or ``"AUTO_REUSE"``."""
    return value if value is None or isinstance(value, bool) else "AUTO_REUSE"


def describe(var: Any) -> list[Any]:
    """A variable as ``[name, base dtype name, shape]`` (TF's or varstore's, graph or eager)."""
    shape = var.shape.as_list() if hasattr(var.shape, "as_list") else list(var.shape)
    return [var.name, var.dtype.base_dtype.name, [int(d) for d in shape]]


# --- TensorFlow's side ---------------------------------------------------------------------

class _TFEnv:
    """``env`` for TensorFlow: sessions are local; ``read`` initializes, then fetches."""

    def __init__(self, tf: Any) -> None:
        self.tf = tf
        self.lib = tf
        self.tmp = tempfile.mkdtemp(prefix="tf1-fidelity-")

    def session(self) -> Any:
        return self.tf.Session()

    def read(self, var: Any) -> Any:
        with self.tf.Session() as sess:
            sess.run(self.tf.global_variables_initializer())
            return sess.run(var)


def run_tensorflow() -> dict[str, Any]:
    """Every registered program's observation under ``tf.compat.v1`` (call in a subprocess)."""
    import tensorflow as real

    tf = real.compat.v1
    tf.disable_v2_behavior()  # TF 1.x: graph mode and reference variables
    out: dict[str, Any] = {}
    for module in MODULES:
        for name, entry in importlib.import_module(module).PROGRAMS.items():
            with tf.Graph().as_default():
                out[f"{module}:{name}"] = observe(
                    functools.partial(lambda e: e.fn(tf, _TFEnv(tf)), entry))
    return out


_RUNNER = """
import json
from tests.interop import fidelity
print("RESULTS " + json.dumps(fidelity.run_tensorflow()))
"""


@functools.cache
def tensorflow_results() -> dict[str, Any]:
    """Every program's observation under TensorFlow, computed once per test session in a
    subprocess; fails the calling test, saying what to install, without TensorFlow."""
    require_installed("tensorflow")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _RUNNER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


# --- varstore's side -----------------------------------------------------------------------

class _VarstoreEnv:
    """``env`` for varstore: sessions and eager reads go to the test's server."""

    def __init__(self, address: str, tmp: Path, lib: Any) -> None:
        self.address = address
        self.lib = lib
        self.tmp = str(tmp)

    def session(self) -> Any:
        import varstore.v1 as vtf
        return vtf.Session(self.address)

    def read(self, var: Any) -> Any:
        return var.numpy()


def run_varstore(programs: Programs, name: str, address: str, tmp: Path) -> Any:
    """One program's observation under varstore (a new graph, or a new eager client)."""
    import varstore as vs
    import varstore.v1 as vtf

    entry = programs[name]
    env = _VarstoreEnv(address, tmp, vs if entry.eager else vtf)
    if entry.eager:
        with vs.connect(address) as client:
            return observe(lambda: entry.fn(client, env))
    with vtf.Graph().as_default():
        return observe(lambda: entry.fn(vtf, env))


def check(programs: Programs, module: str, name: str, address: str, tmp: Path) -> None:
    """Asserts that varstore observes what TensorFlow observed for program ``name``."""
    theirs = _as_tf1_prints(tensorflow_results()[f"{module}:{name}"])
    ours = run_varstore(programs, name, address, tmp)
    if programs[name].compare == "type" and _is_error(ours) and _is_error(theirs):
        assert ours[:2] == theirs[:2], (ours, theirs)
    else:
        assert ours == theirs, (ours, theirs)


def _as_tf1_prints(value: Any) -> Any:
    """TF 2's shape errors name the node as ``'{{node add}} = AddV2[...](x, y)'``; TF 1.x,
    and varstore, as ``'add' (op: 'AddV2')``."""
    if isinstance(value, str):
        return NODE_DEF.sub(r"'\1' (op: '\2')", value)
    if isinstance(value, list):
        return [_as_tf1_prints(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_tf1_prints(v) for k, v in value.items()}
    return value


def _is_error(value: Any) -> bool:
    return isinstance(value, list) and value[:1] == ["error"] and len(value) == 3
