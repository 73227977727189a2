"""``tf.Session``: runs parts of a graph on a varstore server, one round trip per run.

A session holds a :class:`varstore.Client`. Each :meth:`Session.run` compiles what its
fetches need into one request, which also binds the variables it uses to the server the first
time they are seen (creating them uninitialized when missing, checking shape and dtype when
present), so the whole fetched graph is evaluated atomically on the server. When the server
has lost variables the session bound (it restarted empty, or they were deleted), the run
declares them again, uninitialized, as a new session would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import Any

import numpy as np

import varstore
from varstore.common import codec, dtypes
from varstore.common.errors import NotFoundError
from varstore.request import RequestBuilder
from varstore.v1.compiler import compile_run
from varstore.v1.fetches import FetchStructure
from varstore.v1.graph import Graph, Tensor, default_session, get_default_graph

# Bytes assumed for a fetch whose size is not known statically (or a string element): big
# enough that such responses are streamed rather than risk one oversized message.
_UNKNOWN_BYTES = codec.STREAM_THRESHOLD + 1
_STRING_BYTES = 64


class Session:
    """A connection that runs ``graph`` (default: the default graph) on a server.

    ``target`` is the server's address (``"host:port"``, optionally ``"grpc://host:port"``);
    None or "" uses ``VARSTORE_ADDRESS``, else ``localhost:7011``, as ``varstore.connect``.
    Raises ``UnavailableError`` naming the address when no server answers. As a context
    manager it is the default session (for ``eval()`` and ``run()``), makes its graph the
    default graph, and closes on exit.
    """

    def __init__(self, target: str | None = None, graph: Graph | None = None, *,
                 token: str | None = None, tls: Any = None,
                 timeout: float | None = None) -> None:
        self.graph = graph if graph is not None else get_default_graph()
        address = target.removeprefix("grpc://") if target else None
        self.client = varstore.connect(address, token=token, tls=tls, timeout=timeout)
        self._bound: set[str] = set()
        self._closed = False
        self._context: contextlib.ExitStack | None = None

    # --- running -------------------------------------------------------------------------

    def run(self, fetches: Any, feed_dict: Any = None) -> Any:
        """Evaluates ``fetches`` (tensors, variables, operations or their names, nested in
        lists, tuples, namedtuples and dicts) in one round trip; returns values in the same
        structure (numpy arrays, numpy scalars for 0-d values, None for operations).

        ``feed_dict`` maps tensors (or their names) to values that replace them. Raises
        ``FailedPreconditionError`` when an uninitialized variable is read,
        ``InvalidArgumentError`` for an unfed placeholder or a variable whose shape or dtype
        differs on the server, ``TypeError``/``ValueError`` for bad fetches or feeds, and
        ``RuntimeError`` once the session is closed.
        """
        if self._closed:
            raise RuntimeError("Attempted to use a closed Session.")
        structure = FetchStructure(self.graph, fetches)
        feeds = self._feeds(feed_dict)
        fetched = [e for e in structure.elements if isinstance(e, Tensor)]
        for retry in (False, True):
            builder = RequestBuilder()
            positions = compile_run(builder, structure.elements, feeds)
            binding = self._bind(builder, {n.variable for n in builder.nodes if n.variable})
            try:
                values, _ = self.client.run(builder, expect_bytes=_expected_bytes(fetched))
            except NotFoundError:
                if retry or not self._bound:
                    raise
                # The server lost variables this session bound (it restarted empty, or they
                # were deleted): declare them again, as a new session would.
                self._bound.clear()
                continue
            self._bound.update(binding)
            break
        return structure.build([None if p is None else _python_value(values[p])
                                for p in positions])

    def bind_variables(self, names: Collection[str] | None = None) -> None:
        """Creates or binds the graph's variables (those named ``names``, default all) not
        yet bound on the server (one round trip, none when all are bound); used before saving
        and restoring checkpoints."""
        builder = RequestBuilder()
        binding = self._bind(builder, names)
        if binding:
            self.client.run(builder)
            self._bound.update(binding)

    def _bind(self, builder: RequestBuilder, names: Collection[str] | None) -> list[str]:
        """Adds to ``builder`` the specs of the graph's variables named in ``names`` (all when
        None) that this session has not bound yet; returns their names. Only what a run uses
        is bound, so a variable the server refuses fails only the runs that use it."""
        bound = []
        for var in self.graph.variables:
            name = var.op.name
            if name not in self._bound and (names is None or name in names):
                part = var._get_save_slice_info()
                builder.variable(name, var.dtype.base_dtype, var.shape.as_list(), var.trainable,
                                 created_by=var.created_by,
                                 initializer_desc=var.initializer_description,
                                 device=var.op.device,
                                 save_slice=None if part is None else part.to_proto())
                bound.append(name)
        return bound

    def _feeds(self, feed_dict: Any) -> dict[Tensor, np.ndarray]:
        feeds: dict[Tensor, np.ndarray] = {}
        for key, value in (feed_dict or {}).items():
            try:
                tensor = self.graph.as_graph_element(key, allow_operation=False)
            except (TypeError, ValueError, KeyError) as e:
                raise TypeError(f"Cannot interpret feed_dict key as Tensor: {e.args[0]}") \
                    from None
            if isinstance(value, Tensor) or hasattr(value, "_as_graph_tensor"):
                raise TypeError(
                    "The value of a feed cannot be a tf.Tensor object. Acceptable feed values "
                    "include Python scalars, strings, lists, numpy ndarrays, or TensorHandles.")
            if isinstance(value, int) and not _int_fits(value, tensor.dtype):
                raise TypeError(
                    f"Type of feed value {value} with type {type(value)} is not compatible with "
                    f"Tensor type {tensor.dtype.as_numpy_dtype}. Try explicitly setting the "
                    f"type of the feed tensor to a larger type (e.g. int64).")
            array = dtypes.to_numpy(value, tensor.dtype)
            if not tensor.shape.is_compatible_with(array.shape):
                raise ValueError(f"Cannot feed value of shape {array.shape} for Tensor "
                                 f"{tensor.name}, which has shape {tensor.shape}")
            feeds[tensor] = array
        return feeds

    @staticmethod
    def reset(target: str, containers: Any = None, config: Any = None) -> None:
        """Removes every variable of the server at ``target``, as TF's ``Session.reset``
        clears a server's resource containers: sessions then see the graph's variables
        uninitialized and declare them again. ``containers`` and ``config`` are accepted
        for TF's signature (a server has one container)."""
        with varstore.connect(target.removeprefix("grpc://")) as client:
            client.reset()

    # --- lifetime ------------------------------------------------------------------------

    def as_default(self) -> contextlib.AbstractContextManager[Session]:
        """Makes this the default session inside the ``with`` block (does not close it)."""
        return default_session(self)

    def close(self) -> None:
        """Closes the connection; later runs raise ``RuntimeError``."""
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> Session:
        stack = contextlib.ExitStack()
        stack.enter_context(self.graph.as_default())
        stack.enter_context(self.as_default())
        self._context = stack
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        self.close()


def _expected_bytes(tensors: list[Tensor]) -> int:
    total = 0
    for t in tensors:
        n = t.shape.num_elements()
        if n is None:
            return _UNKNOWN_BYTES
        total += n * (t.dtype.itemsize or _STRING_BYTES)
    return total


def _python_value(value: np.ndarray) -> Any:
    """A fetched array as TF returns it: a numpy scalar (or bytes) for a 0-d value."""
    return value[()] if value.ndim == 0 else value


def _int_fits(value: int, dtype: dtypes.DType) -> bool:
    """TF's ``Session.run`` check of a Python int fed to ``dtype``: it must survive the
    conversion unchanged (2 for a bool, 2**40 for int32 do not; session.py). Other feed values
    are cast as numpy casts them, as TF's ``np.asarray(value, dtype)``."""
    if dtype.is_string:
        return False
    try:
        return bool(dtype.as_numpy_dtype(value) == value)
    except OverflowError:
        return False
