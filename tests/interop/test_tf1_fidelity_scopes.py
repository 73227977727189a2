"""Variable and name scopes as TensorFlow 1.x keeps them (``ops/variable_scope.py``): default
names, their counters and resets, reuse values, re-entry, auxiliary name scopes and misuse
errors, compared with ``tf.compat.v1``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.interop.fidelity import Programs, check, reuse_name

PROGRAMS = Programs()
graph = PROGRAMS.graph


@graph
def default_name_scopes_get_variables(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(3):
        with tf.variable_scope(None, default_name="fc"):
            out.append(tf.get_variable("kernel", [2, 2]).name)
    return out


@graph
def default_name_scope_names(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(4):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    return out


@graph
def default_name_skips_explicit_names(tf: Any, env: Any) -> Any:
    with tf.variable_scope("fc"):
        pass
    with tf.variable_scope("fc_1"):
        pass
    with tf.variable_scope(None, default_name="fc") as s:
        return s.name


@graph
def default_name_counters_reset_when_parent_reentered_by_name(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(2):
        with tf.variable_scope("outer"):
            with tf.variable_scope(None, default_name="fc") as s:
                out.append(s.name)
    return out


@graph
def default_name_counters_restored_when_parent_reentered_by_object(tf: Any, env: Any) -> Any:
    out = []
    with tf.variable_scope("outer") as o:
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    with tf.variable_scope(o):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    with tf.variable_scope(o):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    return out


@graph
def nested_default_names(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(2):
        with tf.variable_scope(None, default_name="fc"):
            for _ in range(2):
                with tf.variable_scope(None, default_name="fc") as s:
                    out.append(s.name)
    return out


@graph
def default_names_under_reentered_default_scope(tf: Any, env: Any) -> Any:
    out = []
    with tf.variable_scope(None, default_name="blk") as b:
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    with tf.variable_scope(b):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    with tf.variable_scope("blk"):
        with tf.variable_scope(None, default_name="fc") as s:
            out.append(s.name)
    with tf.variable_scope(None, default_name="blk") as s:
        out.append(s.name)
    return out


@graph
def reuse_of_root_and_plain_scopes(tf: Any, env: Any) -> Any:
    out = [reuse_name(tf.get_variable_scope().reuse)]
    with tf.variable_scope("a") as a:
        out.append(reuse_name(a.reuse))
        out.append(reuse_name(tf.get_variable_scope().reuse))
        with tf.variable_scope("b") as b:
            out.append(reuse_name(b.reuse))
    with tf.variable_scope(None, default_name="d") as d:
        out.append(reuse_name(d.reuse))
    return out


@graph
def reuse_false_explicitly(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", reuse=False) as a:
        return reuse_name(a.reuse)


@graph
def reuse_true_inherited_and_not_undone_by_false(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", reuse=True):
        with tf.variable_scope("b") as b:
            with tf.variable_scope("c", reuse=False) as c:
                return [reuse_name(b.reuse), reuse_name(c.reuse)]


@graph
def auto_reuse_inherited(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", reuse=tf.AUTO_REUSE):
        with tf.variable_scope("b") as b:
            with tf.variable_scope("c", reuse=True) as c:
                with tf.variable_scope("d", reuse=False) as d:
                    return [reuse_name(b.reuse), reuse_name(c.reuse), reuse_name(d.reuse)]


@graph
def reentered_object_takes_its_own_reuse(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a") as a:
        pass
    with tf.variable_scope("x", reuse=True):
        with tf.variable_scope(a) as a2:
            r1 = reuse_name(a2.reuse)
    with tf.variable_scope(a, reuse=True) as a3:
        r2 = reuse_name(a3.reuse)
    with tf.variable_scope("r", reuse=True) as r:
        pass
    with tf.variable_scope(r, reuse=False) as r4:
        r3 = reuse_name(r4.reuse)
    return [r1, r2, r3]


@graph
def reuse_variables_then_child(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a") as a:
        v = tf.get_variable("v", [1])
        a.reuse_variables()
        same = tf.get_variable("v", [1]) is v
        with tf.variable_scope("b") as b:
            return [reuse_name(a.reuse), reuse_name(b.reuse), same]


@graph
def reentered_by_object_names(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a") as a:
        c1 = tf.constant(1.0).op.name
    with tf.variable_scope(a) as a2:
        c2 = tf.constant(1.0).op.name
        v = tf.get_variable("v", [1]).name
    return [a.name, a.original_name_scope, c1, a2.name, a2.original_name_scope, c2, v]


@graph
def reentered_by_name_opens_new_name_scope(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(2):
        with tf.variable_scope("a") as s:
            out += [s.original_name_scope, tf.constant(1.0).op.name]
    return out


@graph
def auxiliary_name_scope_false_with_name(tf: Any, env: Any) -> Any:
    with tf.name_scope("ns"):
        with tf.variable_scope("a", auxiliary_name_scope=False) as s:
            return [s.name, s.original_name_scope, tf.constant(1.0).op.name,
                    tf.get_variable("v", [1]).name]


@graph
def auxiliary_name_scope_false_at_root(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", auxiliary_name_scope=False) as s:
        return [s.name, s.original_name_scope, tf.constant(1.0).op.name]


@graph
def auxiliary_name_scope_false_with_object(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a") as a:
        pass
    with tf.name_scope("ns"):
        with tf.variable_scope(a, auxiliary_name_scope=False) as s:
            return [s.name, s.original_name_scope, tf.constant(1.0).op.name]


@graph
def original_name_scope_when_name_taken(tf: Any, env: Any) -> Any:
    with tf.name_scope("a"):
        pass
    with tf.variable_scope("a") as s:
        return [s.name, s.original_name_scope, tf.constant(1.0).op.name]


@graph
def default_name_scope_with_used_name_scope(tf: Any, env: Any) -> Any:
    with tf.name_scope("fc"):
        pass
    with tf.variable_scope(None, default_name="fc") as s:
        return [s.name, s.original_name_scope, tf.get_variable("k", [1]).name,
                tf.constant(0).op.name]


@graph
def absolute_name_scope_with_trailing_slash(tf: Any, env: Any) -> Any:
    with tf.variable_scope("vs"):
        with tf.name_scope("abs/path/") as n:
            c = tf.constant(1.0).op.name
            v = tf.get_variable("v", [1]).name
    with tf.name_scope("abs/path/") as again:
        c2 = tf.constant(1.0).op.name
    return [n, c, v, again, c2]


@graph
def reentering_name_scope_string(tf: Any, env: Any) -> Any:
    with tf.name_scope("outer") as outer:
        pass
    with tf.name_scope("x"):
        with tf.name_scope(outer) as again:
            return [outer, again, tf.constant(1.0).op.name]


@graph
def name_scope_none_and_empty_reset_to_root(tf: Any, env: Any) -> Any:
    with tf.variable_scope("vs"):
        with tf.name_scope(None) as n1:
            c1 = tf.constant(1.0).op.name
        with tf.name_scope("") as n2:
            c2 = tf.constant(1.0).op.name
    return [n1, c1, n2, c2]


@graph
def empty_variable_scope_keeps_name_scope(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a"):
        with tf.variable_scope("") as s:
            return [s.name, s.original_name_scope, tf.constant(1.0).op.name,
                    tf.get_variable("v", [1]).name]


@graph
def name_scope_with_default_name(tf: Any, env: Any) -> Any:
    out = []
    for _ in range(2):
        with tf.name_scope(None, "dflt") as n:
            out.append(n)
    with tf.name_scope("given", "dflt") as n:
        out.append(n)
    return out


@graph
def scope_attributes(tf: Any, env: Any) -> Any:
    root = tf.get_variable_scope()
    out = [root.name, root.original_name_scope, root.dtype.name,
           [getattr(root, k) is None for k in ("initializer", "regularizer", "partitioner",
                                               "custom_getter", "caching_device", "constraint",
                                               "use_resource")]]
    with tf.variable_scope("a", dtype=tf.float64, initializer=tf.zeros_initializer()) as a:
        with tf.variable_scope("b") as b:
            out += [a.dtype.name, b.dtype.name, b.initializer is a.initializer,
                    b.original_name_scope, tf.get_variable("v", [1]).dtype.base_dtype.name]
    return out


@graph
def variable_scope_needs_a_name(tf: Any, env: Any) -> Any:
    with tf.variable_scope(None):
        return "entered"


@graph
def variable_scope_name_type(tf: Any, env: Any) -> Any:
    with tf.variable_scope(123):
        return "entered"


@graph
def reuse_true_needs_a_name(tf: Any, env: Any) -> Any:
    with tf.variable_scope(None, default_name="fc", reuse=True):
        return "entered"


@graph
def reuse_value_checked(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", reuse="yes"):
        return "entered"


@graph
def auxiliary_name_scope_type(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", auxiliary_name_scope=1):
        return "entered"


@graph
def reuse_true_variable_missing(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a", reuse=True):
        return tf.get_variable("missing", [1]).name


@graph
def created_twice_without_reuse(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a"):
        tf.get_variable("v", [1])
    with tf.variable_scope("a"):
        try:
            tf.get_variable("v", [1])
        except ValueError as e:
            return str(e).split(" Originally defined at")[0]
    return "no error"


@graph
def variable_names_follow_name_scopes(tf: Any, env: Any) -> Any:
    with tf.variable_scope("v"):
        with tf.name_scope("n"):
            return [tf.Variable(1.0, name="x").name, tf.get_variable("y", [1]).name]


@graph
def scope_object_reentered_inside_another_scope(tf: Any, env: Any) -> Any:
    with tf.variable_scope("a") as a:
        pass
    with tf.variable_scope("b"):
        with tf.variable_scope(a) as s:
            with tf.variable_scope("c") as c:
                return [s.name, c.name, tf.get_variable("v", [1]).name,
                        tf.constant(1.0).op.name]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
