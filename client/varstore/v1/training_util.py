"""The global step: ``tf.train.get_global_step``, ``create_global_step``,
``get_or_create_global_step`` and ``global_step``, as TensorFlow's ``training_util.py``."""

from __future__ import annotations

from typing import Any

from varstore.common import dtypes
from varstore.v1.graph import Graph, GraphKeys, get_default_graph
from varstore.v1.init_ops import zeros_initializer
from varstore.v1.variable_scope import get_variable
from varstore.v1.variables import Variable


def get_global_step(graph: Graph | None = None) -> Variable | None:
    """The global step variable of ``graph`` (default: the default graph), or None."""
    found = (graph or get_default_graph()).get_collection(GraphKeys.GLOBAL_STEP)
    return found[0] if found else None


def create_global_step(graph: Graph | None = None) -> Variable:
    """Creates the global step of ``graph``: a non-trainable int64 scalar ``global_step``
    made with ``get_variable`` (under the current variable scope).

    Raises ``ValueError('"global_step" already exists.')`` when the graph has one.
    """
    graph = graph or get_default_graph()
    if get_global_step(graph) is not None:
        raise ValueError('"global_step" already exists.')
    with graph.as_default(), graph.name_scope(None):
        return get_variable(GraphKeys.GLOBAL_STEP, shape=[], dtype=dtypes.int64,
                            initializer=zeros_initializer(), trainable=False,
                            collections=[GraphKeys.GLOBAL_VARIABLES, GraphKeys.GLOBAL_STEP])


def get_or_create_global_step(graph: Graph | None = None) -> Variable:
    """The global step of ``graph``, created (:func:`create_global_step`) when missing."""
    graph = graph or get_default_graph()
    existing = get_global_step(graph)
    return existing if existing is not None else create_global_step(graph)


def global_step(sess: Any, global_step_tensor: Any) -> int:
    """The global step's value as a Python int, read in ``sess``."""
    return int(sess.run(global_step_tensor))
