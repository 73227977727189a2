"""Partitioned variables used as TF 1.x programs use them: ``tf.nn.embedding_lookup`` over the
parts with both partition strategies, ids out of range, ``max_norm``, lists of variables,
the whole variable in ``matmul`` and ``convert_to_tensor``, and ``tf.concat``; compared with
``tf.compat.v1``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.interop.fidelity import Programs, check, error

PROGRAMS = Programs()
FULL = np.arange(20, dtype=np.float32).reshape(10, 2)


def _embedding(tf: Any, env: Any, parts: int = 3) -> tuple[Any, Any]:
    """``emb`` [10, 2] in ``parts`` parts holding FULL, and a session that set it."""
    emb = tf.get_variable("emb", [10, 2], initializer=tf.zeros_initializer(),
                          partitioner=tf.fixed_size_partitioner(parts))
    sess = env.session()
    sess.run(tf.global_variables_initializer())
    offset = 0
    for part in emb:
        rows = part.shape.as_list()[0]
        sess.run(tf.assign(part, FULL[offset:offset + rows]))
        offset += rows
    return emb, sess


def lookup(label: str, strategy: str | None, id_values: Any, parts: int = 3,
           **kwargs: Any) -> None:
    """Registers a program fetching ``embedding_lookup(emb, ids)`` for ``id_values``."""
    def program(tf: Any, env: Any) -> Any:
        emb, sess = _embedding(tf, env, parts)
        with sess:
            ids = tf.placeholder(tf.int64, [None] * np.ndim(id_values))
            extra = {} if strategy is None else {"partition_strategy": strategy}
            out = tf.nn.embedding_lookup(emb, ids, **extra, **kwargs)
            # A failed run is compared by its class: TF's message names its own kernels.
            got = error(lambda: sess.run(out, {ids: id_values}))
            return [out.shape.as_list() if out.shape.dims is not None else None,
                    got[:2] if isinstance(got, list) and got[:1] == ["error"] else got]
    program.__name__ = f"embedding_lookup_{label}"
    PROGRAMS.graph(program)


for _args in [("mod_default", None, [[0, 9], [4, 3]]), ("mod", "mod", [1, 2, 5, 8, 9, 0]),
              ("div", "div", [[0, 9], [4, 3]]), ("div_every_row", "div", list(range(10))),
              ("mod_every_row", "mod", list(range(10))), ("repeated_ids", "div", [3, 3, 3, 7]),
              ("scalar_id", "mod", 7), ("no_ids", "div", np.zeros([0], np.int64)),
              ("div_out_of_range", "div", [10, 0]), ("mod_out_of_range", "mod", [10]),
              ("negative_id", "mod", [-1, 0])]:
    lookup(*_args)
lookup("one_part", "mod", [[9, 0]], parts=1)
lookup("four_parts_div", "div", [0, 2, 3, 5, 6, 8, 9], parts=4)
lookup("max_norm", "div", [0, 9, 5], max_norm=5.0)


@PROGRAMS.graph
def embedding_lookup_of_a_list_of_variables(tf: Any, env: Any) -> Any:
    a = tf.Variable(FULL[:5], name="a")
    b = tf.Variable(FULL[5:], name="b")
    mod = tf.nn.embedding_lookup([a, b], [0, 1, 2, 3, 9])
    div = tf.nn.embedding_lookup([a, b], [0, 1, 2, 3, 9], partition_strategy="div")
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        return [sess.run(mod), sess.run(div)]


@PROGRAMS.graph
def embedding_lookup_misuse(tf: Any, env: Any) -> Any:
    v = tf.Variable(FULL, name="v")
    return [error(lambda: tf.nn.embedding_lookup([], [0])),
            error(lambda: tf.nn.embedding_lookup([v, v], [0], partition_strategy="range")),
            error(lambda: tf.nn.embedding_lookup(v, [0.5]))]


@PROGRAMS.graph
def partitioned_variable_as_one_tensor(tf: Any, env: Any) -> Any:
    emb, sess = _embedding(tf, env)
    with sess:
        x = tf.constant(np.ones((1, 10), np.float32))
        whole = tf.convert_to_tensor(emb)
        return [whole.shape.as_list(), sess.run(whole), sess.run(tf.matmul(x, emb)),
                sess.run(emb.as_tensor()), sess.run(tf.reduce_sum(emb))]


@PROGRAMS.graph
def partitioned_along_axis_1_as_one_tensor(tf: Any, env: Any) -> Any:
    w = tf.get_variable("w", [2, 6], initializer=tf.ones_initializer(),
                        partitioner=lambda shape, dtype: [1, 3])
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        return [[p.shape.as_list() for p in w], tf.convert_to_tensor(w).shape.as_list(),
                sess.run(tf.reduce_sum(w, axis=0))]


@PROGRAMS.graph
def glorot_parts_use_the_full_shape(tf: Any, env: Any) -> Any:
    """Each part is drawn with the limit of the full [1000, 10] variable (TF's
    partition_info), not of its [500, 10] part."""
    v = tf.get_variable("g", [1000, 10], partitioner=tf.fixed_size_partitioner(2))
    with env.session() as sess:
        sess.run(tf.global_variables_initializer())
        biggest = float(np.abs(sess.run(tf.convert_to_tensor(v))).max())
    limit = (6.0 / (1000 + 10)) ** 0.5
    return [biggest <= limit, biggest > 0.95 * limit]


@PROGRAMS.graph
def concat_of_tensors(tf: Any, env: Any) -> Any:
    a = tf.constant([[1.0, 2.0]])
    b = tf.constant([[3.0, 4.0], [5.0, 6.0]])
    p = tf.placeholder(tf.float32, [None, 2])
    with env.session() as sess:
        return [sess.run(tf.concat([a, b], 0)), sess.run(tf.concat([a, a], 1)),
                sess.run(tf.concat([a, b], -2)), sess.run(tf.concat([a], 0)),
                tf.concat([a, p], 0).shape.as_list(), tf.concat([b, b], axis=1).shape.as_list(),
                error(lambda: tf.concat([a, b], 1)),
                error(lambda: tf.concat([a, tf.constant([[1, 2]])], 0)),
                sess.run(tf.concat([a, p], 0), {p: [[7.0, 8.0]]})]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(PROGRAMS))
def test_agrees_with_tensorflow(name: str, address: str, tmp_path: Path) -> None:
    check(PROGRAMS, __name__, name, address, tmp_path)
