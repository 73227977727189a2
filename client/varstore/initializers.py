"""Variable initializers, as TensorFlow names them; they run on the server.

Each initializer adds the node that computes a variable's initial value to a request
(:meth:`Initializer.build`). ``get_variable`` accepts them as classes or instances, as TF does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.request import RequestBuilder


class Initializer:
    """Base class: computes a value of a given shape and dtype on the server."""

    op = ""

    def __init__(self, dtype: Any = None) -> None:
        self.dtype = dtypes.as_dtype(dtype) if dtype is not None else None

    def attrs(self) -> dict[str, Any]:
        """The op attributes besides shape and dtype."""
        return {}

    def build(self, builder: RequestBuilder, shape: Sequence[int], dtype: DType) -> int:
        """Adds the node computing the value; returns its index."""
        return builder.node(self.op, shape=list(shape), dtype=dtype, **self.attrs())

    def validate(self, shape: Sequence[int], dtype: DType) -> None:
        """Raises TF's ``ValueError``/``TypeError`` when this initializer cannot fill
        ``shape`` with ``dtype`` (checked when a graph is built, as TF does, rather than when
        it runs)."""

    def describe(self) -> str:
        """A short description kept in the variable's server metadata."""
        args = ", ".join(f"{k}={v}" for k, v in self.attrs().items())
        return f"{type(self).__name__}({args})"

    def __call__(self, shape: Sequence[int], dtype: Any = None, partition_info: Any = None
                 ) -> Any:
        """Graph-mode use (``init(shape)``) is provided by ``varstore.v1``."""
        raise TypeError(f"{type(self).__name__} runs on the server; pass it as initializer=")


class zeros_initializer(Initializer):  # noqa: N801 - TensorFlow's name
    """Fills with zeros."""

    op = "zeros"


class ones_initializer(Initializer):  # noqa: N801 - TensorFlow's name
    """Fills with ones."""

    op = "ones"


class constant_initializer(Initializer):  # noqa: N801 - TensorFlow's name
    """Fills with ``value``: a scalar everywhere, or a list or array of up to as many
    elements as the variable, in row-major order, the last one repeated to fill the rest (TF
    1.x's ``constant_initializer``, ``constant_op.constant_v1(verify_shape=False)``)."""

    op = "fill"

    def __init__(self, value: Any = 0, dtype: Any = None, verify_shape: bool = False) -> None:
        super().__init__(dtype)
        self.value = value
        self.verify_shape = verify_shape

    def validate(self, shape: Sequence[int], dtype: DType) -> None:
        dtypes.check_convertible(self.value, dtype)
        size = int(np.asarray(self.value, dtype=object).size)
        count = math.prod(int(d) for d in shape)
        if size > count:
            raise ValueError(f"Too many elements provided. Takes at most {count}, but got "
                             f"{size}.")

    def build(self, builder: RequestBuilder, shape: Sequence[int], dtype: DType) -> int:
        self.validate(shape, dtype)
        value = dtypes.to_numpy(self.value, dtype)
        count = math.prod(int(d) for d in shape)
        if 1 < value.size < count:
            flat = value.reshape(-1)
            value = np.concatenate([flat, np.repeat(flat[-1:], count - flat.size)])
        return builder.node("fill", [builder.const(value, dtype)], shape=list(shape),
                            dtype=dtype)

    def describe(self) -> str:
        value = np.asarray(self.value)
        return f"constant_initializer({value.tolist() if value.size <= 8 else '...'})"


class random_normal_initializer(Initializer):  # noqa: N801 - TensorFlow's name
    """Normal distribution with ``mean`` and ``stddev``."""

    op = "random_normal"

    def __init__(self, mean: float = 0.0, stddev: float = 1.0, seed: int | None = None,
                 dtype: Any = None) -> None:
        super().__init__(dtype)
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def attrs(self) -> dict[str, Any]:
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class truncated_normal_initializer(random_normal_initializer):  # noqa: N801
    """Normal distribution redrawn beyond two standard deviations."""

    op = "truncated_normal"


class random_uniform_initializer(Initializer):  # noqa: N801 - TensorFlow's name
    """Uniform distribution on [minval, maxval)."""

    op = "random_uniform"

    def __init__(self, minval: float = 0.0, maxval: float | None = None,
                 seed: int | None = None, dtype: Any = None) -> None:
        super().__init__(dtype)
        self.minval, self.maxval, self.seed = minval, maxval, seed

    def attrs(self) -> dict[str, Any]:
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class glorot_uniform_initializer(Initializer):  # noqa: N801 - TensorFlow's name
    """Uniform on [-limit, limit], limit = sqrt(6 / (fan_in + fan_out)); TF's default.

    The fans are the variable's, or for a part of a partitioned variable the full
    variable's (``fan_shape``, set by :func:`for_part`), as TF computes them from its
    ``partition_info``."""

    op = "glorot_uniform"

    def __init__(self, seed: int | None = None, dtype: Any = None) -> None:
        super().__init__(dtype)
        self.seed = seed
        self.fan_shape: list[int] | None = None

    def attrs(self) -> dict[str, Any]:
        if self.fan_shape is None:
            return {"seed": self.seed}
        return {"seed": self.seed, "fan_shape": self.fan_shape}


def for_part(initializer: Any, dtype: DType, full_shape: Sequence[int]) -> Any:
    """The initializer of each part of a partitioned variable of shape ``full_shape``
    (``initializer``: what ``get_variable`` was given; None is the default): glorot's fans
    come from the full shape, as TF's ``partition_info`` gives them. Others are returned
    as they are."""
    if initializer is None or isinstance(initializer, Initializer) or (
            isinstance(initializer, type) and issubclass(initializer, Initializer)):
        resolved = resolve(initializer, dtype)
        if isinstance(resolved, glorot_uniform_initializer):
            resolved = copy.copy(resolved)
            resolved.fan_shape = [int(d) for d in full_shape]
        return resolved
    return initializer


def resolve(initializer: Any, dtype: DType) -> Initializer:
    """An initializer instance for ``initializer`` (class, instance, value or None).

    None gives TF's default: glorot_uniform for floating dtypes, zeros otherwise. A plain
    value (number, list, array) becomes a constant initializer.
    """
    if initializer is None:
        return glorot_uniform_initializer() if dtype.is_floating else zeros_initializer()
    if isinstance(initializer, type) and issubclass(initializer, Initializer):
        return initializer()
    if isinstance(initializer, Initializer):
        return initializer
    return constant_initializer(initializer)
