"""Initializers in graph mode: ``tf.zeros_initializer()(shape)`` adds an op to the graph.

The classes are :mod:`varstore.initializers`' (which compute values on the server) with
TF's graph-mode call added; :func:`initializer_tensor` is also how ``tf.zeros``,
``tf.random_normal``... and ``get_variable`` build their values.
"""

from __future__ import annotations

from typing import Any

from varstore import initializers
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.v1.graph import Tensor, op_scope
from varstore.v1.shapes import as_shape

# The default op name and type TF gives the tensor each initializer produces.
_TF_OPS = {
    "zeros": ("zeros", "Fill"),
    "ones": ("ones", "Fill"),
    "fill": ("Const", "Fill"),
    "random_normal": ("random_normal", "RandomStandardNormal"),
    "truncated_normal": ("truncated_normal", "TruncatedNormal"),
    "random_uniform": ("random_uniform", "RandomUniform"),
    "glorot_uniform": ("random_uniform", "RandomUniform"),
}


def initializer_tensor(init: initializers.Initializer, shape: Any, dtype: DType,
                       name: str | None = None, default_name: str | None = None) -> Tensor:
    """A tensor of ``shape`` and ``dtype`` that ``init`` computes on the server.

    Raises ``ValueError`` unless ``shape`` is fully defined.
    """
    shape = as_shape(shape)
    if not shape.is_fully_defined():
        raise ValueError(f"Shape {shape} must be fully defined to initialize a tensor")
    init.validate(shape.as_list(), dtype)
    tf_name, op_type = _TF_OPS.get(init.op, (init.op, init.op))
    with op_scope(name, default_name or tf_name) as (graph, op_name):
        return graph.create_op(op_name, op_type, init.op, (), dtype, shape,
                               initializer=init).outputs[0]


class _GraphCall:
    """TF's graph-mode ``initializer(shape, dtype)``: returns a tensor."""

    dtype: DType | None

    def __call__(self, shape: Any, dtype: Any = None, partition_info: Any = None) -> Tensor:
        dtype = dtypes.as_dtype(dtype) if dtype is not None else self.dtype or dtypes.float32
        assert isinstance(self, initializers.Initializer)
        return initializer_tensor(self, shape, dtype)


class zeros_initializer(_GraphCall, initializers.zeros_initializer):  # noqa: N801
    """Fills with zeros."""


class ones_initializer(_GraphCall, initializers.ones_initializer):  # noqa: N801
    """Fills with ones."""


class constant_initializer(_GraphCall, initializers.constant_initializer):  # noqa: N801
    """Fills with a scalar, or reshapes a value with as many elements as the variable."""


class random_normal_initializer(_GraphCall, initializers.random_normal_initializer):  # noqa: N801
    """Normal distribution with ``mean`` and ``stddev``."""


class truncated_normal_initializer(  # noqa: N801
        _GraphCall, initializers.truncated_normal_initializer):
    """Normal distribution redrawn beyond two standard deviations."""


class random_uniform_initializer(  # noqa: N801
        _GraphCall, initializers.random_uniform_initializer):
    """Uniform distribution on [minval, maxval)."""


class glorot_uniform_initializer(  # noqa: N801
        _GraphCall, initializers.glorot_uniform_initializer):
    """Uniform on [-limit, limit], limit = sqrt(6 / (fan_in + fan_out)); TF's default."""
