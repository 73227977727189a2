"""``tf.nn``: activation functions."""

from __future__ import annotations

from varstore.v1.math_ops import relu, sigmoid, tanh

__all__ = ["relu", "sigmoid", "tanh"]
