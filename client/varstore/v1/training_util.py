"""The global step: ``tf.train.get_global_step`` and ``get_or_create_global_step``, as
TensorFlow's ``training_util.py``."""

from __future__ import annotations

from varstore.common import dtypes
from varstore.v1.graph import Graph, GraphKeys, get_default_graph
from varstore.v1.init_ops import zeros_initializer
from varstore.v1.variable_scope import get_variable
from varstore.v1.variables import Variable


def get_global_step(graph: Graph | None = None) -> Variable | None:
    """The global step variable of ``graph`` (default: the default graph), or None."""
    found = (graph or get_default_graph()).get_collection(GraphKeys.GLOBAL_STEP)
    return found[0] if found else None


def get_or_create_global_step(graph: Graph | None = None) -> Variable:
    """The global step of ``graph``: a non-trainable int64 scalar ``global_step`` made with
    ``get_variable`` (under the current variable scope) when missing."""
    graph = graph or get_default_graph()
    existing = get_global_step(graph)
    if existing is not None:
        return existing
    with graph.as_default(), graph.name_scope(None):
        return get_variable(GraphKeys.GLOBAL_STEP, shape=[], dtype=dtypes.int64,
                            initializer=zeros_initializer(), trainable=False,
                            collections=[GraphKeys.GLOBAL_VARIABLES, GraphKeys.GLOBAL_STEP])
