"""Nested fetches of ``Session.run``: flattened to graph elements, rebuilt around the values.

Lists, tuples, namedtuples and dicts nest to any depth; leaves are tensors, variables,
operations or their names. The result has the structure of the fetches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from varstore.v1.graph import Graph, Operation, Tensor

Rebuild = Callable[[list[Any]], Any]


class FetchStructure:
    """The graph elements of ``fetches`` in order, and how to nest their values again.

    Raises TF's ``TypeError`` for None or unconvertible fetches and ``ValueError`` for
    elements of another graph or unknown names.
    """

    def __init__(self, graph: Graph, fetches: Any) -> None:
        self.graph = graph
        self.elements: list[Tensor | Operation] = []
        self._rebuild = self._flatten(fetches)

    def build(self, values: list[Any]) -> Any:
        """The fetched ``values`` (one per element) nested like the fetches."""
        return self._rebuild(values)

    def _flatten(self, fetch: Any) -> Rebuild:
        kind: Any = type(fetch)
        if isinstance(fetch, Mapping):
            keys = list(fetch)
            parts = [self._flatten(fetch[k]) for k in keys]
            return lambda values: kind((k, p(values)) for k, p in zip(keys, parts, strict=True))
        if isinstance(fetch, list | tuple):
            parts = [self._flatten(f) for f in fetch]
            if hasattr(fetch, "_fields"):
                return lambda values: kind(*(p(values) for p in parts))
            return lambda values: kind(p(values) for p in parts)
        index = len(self.elements)
        self.elements.append(self._element(fetch))
        return lambda values: values[index]

    def _element(self, fetch: Any) -> Tensor | Operation:
        if fetch is None:
            raise TypeError('Argument `fetch` = None has invalid type "NoneType". '
                            'Cannot be None')
        try:
            element = self.graph.as_graph_element(fetch)
        except TypeError as e:
            raise TypeError(f'Argument `fetch` = {fetch} has invalid type '
                            f'"{type(fetch).__name__}" must be a string or Tensor. ({e})') \
                from None
        except (ValueError, KeyError) as e:
            raise ValueError(f"Argument `fetch` = {fetch} cannot be interpreted as a Tensor. "
                             f"({e.args[0]})") from None
        assert isinstance(element, Tensor | Operation)
        return element
