"""``tf.nn``: activation functions and embedding lookups."""

from __future__ import annotations

from varstore.v1.embedding_ops import embedding_lookup
from varstore.v1.math_ops import relu, sigmoid, tanh

__all__ = ["embedding_lookup", "relu", "sigmoid", "tanh"]


def __dir__() -> list[str]:
    """The public names only, as ``dir()`` of TensorFlow's namespace shows them (not the
    imports this module is written with)."""
    return sorted(__all__)
