"""Op, scope and variable names checked when the graph is built, with TensorFlow's patterns and
messages (``framework/ops.py``), names TensorFlow's runtime accepts accepted by the server,
and one refused name never poisoning a session; compared with ``tf.compat.v1``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.interop.fidelity import Programs, check, error

PROGRAMS = Programs()


def build_and_run(tf: Any, env: Any, build: Callable[[], Any]) -> Any:
    """What ``build()`` names, then whether the graph's initializers run."""
    out = {"built": build()}
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        out["run"] = "ok"
    return out


def variable_named(label: str, name: str, compare: str = "exact") -> None:
    """Registers a program making ``tf.Variable(1.0, name=name)`` at the top level."""
    def program(tf: Any, env: Any) -> Any:
        return build_and_run(tf, env, lambda: tf.Variable(1.0, name=name).name)
    program.__name__ = f"variable_named_{label}"
    PROGRAMS.graph(program, compare=compare)


for _label, _name in {"colon": "a:b", "space": "a b", "underscore_first": "_x",
                      "dash_first": "-x", "non_ascii": "é", "dot_first": ".a",
                      "angle": "a>b", "angle_dot": "a>.b", "double_slash": "a//b",
                      "long": "x" * 2000, "digit_first": "0a", "trailing_slash": "a/",
                      "nested_trailing_slash": "a/b/", "punctuation": "a-b_c.d",
                      "newline": "a\n"}.items():
    variable_named(_label, _name)
# TF's Python pattern lets these through; its runtime refuses them when the session runs
# (TF's message adds "Graph execution error", hence compared by class).
for _label, _name in {"backslash": "a\\b", "angle_last": "a>", "angle_underscore": "a>_b",
                      "double_angle": "a>>b"}.items():
    variable_named(_label, _name, compare="type")


@PROGRAMS.graph
def nested_names_may_start_with_underscore_or_dash(tf: Any, env: Any) -> Any:
    def build() -> Any:
        with tf.name_scope("s"):
            return [tf.Variable(1.0, name="_x").name, tf.Variable(1.0, name="-x").name]
    return build_and_run(tf, env, build)


@PROGRAMS.graph
def get_variable_names_checked(tf: Any, env: Any) -> Any:
    def created(name: str) -> str:
        return tf.get_variable(name, [1]).name
    return [error(functools.partial(created, n)) for n in ["a:b", "_v", "v w", "ok"]]


@PROGRAMS.graph
def variable_scope_names_checked(tf: Any, env: Any) -> Any:
    out = []
    for n in ["a b", "_a", "a:b", "ok"]:
        def build(n: str = n) -> Any:
            with tf.variable_scope(n):
                return tf.get_variable("v", [1]).name
        out.append(error(build))
    return out


@PROGRAMS.graph
def variable_scope_names_checked_when_nested(tf: Any, env: Any) -> Any:
    out = []
    with tf.variable_scope("outer"):
        for n in ["_a", "-a", "a b", "a:b"]:
            def build(n: str = n) -> Any:
                with tf.variable_scope(n):
                    return tf.get_variable("v", [1]).name
            out.append(error(build))
    return out


@PROGRAMS.graph
def name_scope_names_checked(tf: Any, env: Any) -> Any:
    def enter(name: str) -> Any:
        with tf.name_scope(name) as s:
            return s
    out = [error(functools.partial(enter, n)) for n in ["a b", "_a", "a:b", "ok/", "/abs"]]
    with tf.name_scope("s"):
        out += [error(functools.partial(enter, n)) for n in ["-x", "_y", "a:b", "a b", "é"]]
    return out


@PROGRAMS.graph
def op_names_checked(tf: Any, env: Any) -> Any:
    return [error(lambda: tf.constant(1.0, name="c d").name),
            error(lambda: tf.constant(1.0, name="_c").name),
            error(lambda: tf.add(tf.constant(1.0), 2.0, name="x:y").name),
            error(lambda: tf.placeholder(tf.float32, name="p q").name),
            error(lambda: tf.identity(tf.constant(1.0), name="i d").name),
            error(lambda: tf.constant(1.0, name="ok").name)]


@PROGRAMS.graph
def refused_names_consume_no_name(tf: Any, env: Any) -> Any:
    error(lambda: tf.Variable(1.0, name="q:r"))
    error(lambda: tf.Variable(1.0, name="q r"))
    return [tf.Variable(1.0, name="q").name, tf.Variable(1.0, name="q").name]


@PROGRAMS.graph
def bad_name_does_not_poison_session(tf: Any, env: Any) -> Any:
    out = [error(lambda: tf.Variable(1.0, name="bad:name").name)]
    good = tf.Variable(2.0, name="good")
    with env.session() as sess:
        for _ in range(2):
            out.append(error(lambda: (sess.run(good.initializer), float(sess.run(good)))[1]))
    return out


@PROGRAMS.graph
def names_tf_accepts_run(tf: Any, env: Any) -> Any:
    names = ["a>b", "a//b", ".a", "x" * 2000, "s/_x"]
    made = [tf.Variable(float(i), name=n) for i, n in enumerate(names)]
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        return [[len(v.name), float(sess.run(v))] for v in made]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
