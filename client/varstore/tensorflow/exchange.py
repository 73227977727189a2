"""What a TensorFlow worker exchanges with the server, in numpy: no TensorFlow here.

:class:`Exchange` is one worker's link to the server for the variables of one model: it
declares them, lets the chief initialize or restore them and the other workers wait for
that (:meth:`Exchange.start`), and sends each step's gradients (:meth:`Exchange.push_pull`)
or locally computed changes (:meth:`Exchange.push_deltas`), getting the new values back in
the same round trip. The TensorFlow side (``tf.numpy_function`` callbacks) lives in
:mod:`varstore.tensorflow.graph` and :mod:`varstore.tensorflow.keras`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varstore import train
from varstore.client import Client, RemoteVariable
from varstore.cluster import connect
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.optimizers import Optimizer, read_after
from varstore.request import RequestBuilder


@dataclass(frozen=True)
class VariableSpec:
    """A TensorFlow variable as the server knows it: full name (no ``:0``), dtype, shape."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    trainable: bool = True

    @property
    def op_name(self) -> str:
        """The name, as :class:`varstore.optimizers.Trainable` calls it."""
        return self.name


class Exchange:
    """A worker's connection to the server and its handles on one model's variables.

    ``client`` is a :class:`varstore.Client`, an address, or None (``VARSTORE_ADDRESS``, else
    ``localhost:7011``); the connection is made on first use, so that building a graph
    contacts no server.
    """

    def __init__(self, client: Client | str | None = None) -> None:
        self._client = client if isinstance(client, Client) else None
        self._address = None if isinstance(client, Client) else client
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        """The connection, opened on first use."""
        with self._lock:
            if self._client is None:
                self._client = connect(self._address)
            return self._client

    def handles(self, specs: Sequence[VariableSpec]) -> list[RemoteVariable]:
        """Handles on the server variables named by ``specs`` (no round trip)."""
        return [RemoteVariable(self.client, s.name, s.dtype, s.shape, s.trainable)
                for s in specs]

    def start(self, specs: Sequence[VariableSpec], is_chief: bool,
              values: Sequence[np.ndarray] | None = None, checkpoint_dir: str | None = None,
              timeout: float = 600.0) -> list[np.ndarray]:
        """Declares the variables on the server (created uninitialized, or bound: another
        shape or dtype is ``InvalidArgumentError``), then as the chief restores the newest
        checkpoint of ``checkpoint_dir`` (see :func:`varstore.train.initialize_or_restore`)
        and initializes what is left with ``values``, or as another worker waits on the
        server until the chief did (``DeadlineExceededError`` after ``timeout`` seconds).
        Returns the variables' values on the server."""
        b = RequestBuilder()
        for s in specs:
            b.variable(s.name, s.dtype, s.shape, s.trainable, created_by="get_variable")
        self.client.run(b)
        handles = self.handles(specs)
        if is_chief:
            if values is None:
                raise ValueError("the chief needs the variables' initial values")
            initial = {s.name: v for s, v in zip(specs, values, strict=True)}
            train.initialize_or_restore(self.client, handles, checkpoint_dir, initial)
        else:
            train.wait_until_ready(self.client, handles, timeout)
        return self.client.pull(handles)

    def push_pull(self, optimizer: Optimizer, specs: Sequence[VariableSpec],
                  sparse: Sequence[bool], global_step: VariableSpec | None,
                  arrays: Sequence[np.ndarray], local_step: Any = None) -> list[np.ndarray]:
        """Applies one step of gradients with ``optimizer`` on the server and returns the
        variables' new values, then the global step (when given), from one round trip.

        ``arrays`` holds each variable's gradient, as ``indices, values`` where ``sparse``.
        """
        handles = self.handles(specs)
        grads: dict[Any, Any] = {}
        it = iter(arrays)
        for handle, is_sparse in zip(handles, sparse, strict=True):
            grads[handle] = (next(it), next(it)) if is_sparse else next(it)
        step_handle = None if global_step is None else self.handles([global_step])[0]
        step, values = train.apply_gradients(
            self.client, optimizer, grads, step_handle,
            None if local_step is None else int(local_step), fetch=handles)
        return _outputs(values, specs, step)

    def push_deltas(self, specs: Sequence[VariableSpec], global_step: VariableSpec | None,
                    deltas: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Adds ``deltas`` to the variables on the server (one atomic ``assign_add`` each, in
        one request that increments the global step) and returns their new values, then the
        global step (when given)."""
        b = RequestBuilder()
        updates = [b.node("assign_add", [b.const(dtypes.to_numpy(d, s.dtype), s.dtype)],
                          variable=s.name) for s, d in zip(specs, deltas, strict=True)]
        if global_step is None:
            last = b.node("no_op", control_inputs=updates)
        else:
            last = b.node("increment", updates, variable=global_step.name)
            b.fetch(last)
        values = self.client.run(b, read_after(b, last, specs))[0]
        step = None if global_step is None else values.pop(0)
        return _outputs(values, specs, step)


def _outputs(values: Sequence[np.ndarray], specs: Sequence[VariableSpec], step: Any
             ) -> list[np.ndarray]:
    """The values as the numpy function returns them: each in its variable's dtype, then
    the global step as int64 when there is one."""
    out = [np.asarray(v, s.dtype.np_dtype) for v, s in zip(values, specs, strict=True)]
    return out if step is None else [*out, np.asarray(step, np.int64)]
