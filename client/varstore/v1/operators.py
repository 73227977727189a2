"""The Python operators of tensors and variables (``+``, ``-``, ``@``, ``<``...), declared.

:class:`TensorOperators` declares each operator so that type checkers and readers see it;
``varstore.v1.math_ops`` builds the ops and hands them over with :func:`register` when it is
imported (``varstore.v1`` imports it), as TensorFlow's ``math_ops.py`` does with
``Tensor._override_operator``. This module imports nothing of the graph layer, so the graph
can use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

# The type operators return: the graph's Tensor (a parameter, so that this module need not
# import the graph).
T = TypeVar("T")

_IMPLEMENTATIONS: dict[str, Callable[..., Any]] = {}


def register(implementations: Mapping[str, Callable[..., Any]]) -> None:
    """Supplies the function behind each operator, keyed by method name (``"__add__"``).

    Raises ``ValueError`` when a name is not an operator :class:`TensorOperators` declares.
    """
    unknown = sorted(set(implementations) - _OPERATOR_NAMES)
    if unknown:
        raise ValueError(f"not operators of TensorOperators: {unknown}")
    _IMPLEMENTATIONS.update(implementations)


def _apply(method: str, *args: Any) -> Any:
    try:
        implementation = _IMPLEMENTATIONS[method]
    except KeyError:
        raise RuntimeError(f"{method} used before varstore.v1.math_ops was imported") from None
    return implementation(*args)


class TensorOperators(Generic[T]):
    """TF's Python operators for ``Tensor`` and ``Variable``; each builds an op on the default
    graph and returns its output tensor, raising what the op raises (``TypeError``,
    ``ValueError``). ``==`` stays identity, as in TF 1.x graph mode, so tensors and variables
    can be dict keys."""

    __array_priority__ = 100  # numpy defers to our reflected operators

    def __add__(self, other: Any) -> T:
        return _apply("__add__", self, other)

    def __radd__(self, other: Any) -> T:
        return _apply("__radd__", self, other)

    def __sub__(self, other: Any) -> T:
        return _apply("__sub__", self, other)

    def __rsub__(self, other: Any) -> T:
        return _apply("__rsub__", self, other)

    def __mul__(self, other: Any) -> T:
        return _apply("__mul__", self, other)

    def __rmul__(self, other: Any) -> T:
        return _apply("__rmul__", self, other)

    def __truediv__(self, other: Any) -> T:
        return _apply("__truediv__", self, other)

    def __rtruediv__(self, other: Any) -> T:
        return _apply("__rtruediv__", self, other)

    def __floordiv__(self, other: Any) -> T:
        return _apply("__floordiv__", self, other)

    def __rfloordiv__(self, other: Any) -> T:
        return _apply("__rfloordiv__", self, other)

    def __mod__(self, other: Any) -> T:
        return _apply("__mod__", self, other)

    def __rmod__(self, other: Any) -> T:
        return _apply("__rmod__", self, other)

    def __pow__(self, other: Any) -> T:
        return _apply("__pow__", self, other)

    def __rpow__(self, other: Any) -> T:
        return _apply("__rpow__", self, other)

    def __matmul__(self, other: Any) -> T:
        return _apply("__matmul__", self, other)

    def __rmatmul__(self, other: Any) -> T:
        return _apply("__rmatmul__", self, other)

    def __and__(self, other: Any) -> T:
        return _apply("__and__", self, other)

    def __rand__(self, other: Any) -> T:
        return _apply("__rand__", self, other)

    def __or__(self, other: Any) -> T:
        return _apply("__or__", self, other)

    def __ror__(self, other: Any) -> T:
        return _apply("__ror__", self, other)

    def __lt__(self, other: Any) -> T:
        return _apply("__lt__", self, other)

    def __le__(self, other: Any) -> T:
        return _apply("__le__", self, other)

    def __gt__(self, other: Any) -> T:
        return _apply("__gt__", self, other)

    def __ge__(self, other: Any) -> T:
        return _apply("__ge__", self, other)

    def __neg__(self) -> T:
        return _apply("__neg__", self)

    def __abs__(self) -> T:
        return _apply("__abs__", self)

    def __invert__(self) -> T:
        return _apply("__invert__", self)


_OPERATOR_NAMES = frozenset(name for name in vars(TensorOperators)
                            if name.startswith("__") and name.endswith("__")
                            and callable(vars(TensorOperators)[name]))
