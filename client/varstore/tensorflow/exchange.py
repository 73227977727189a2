"""What a TensorFlow worker exchanges with the server, in numpy: no TensorFlow here.

:class:`Exchange` is one worker's link to the server for the variables of one model: it
declares them, lets the chief initialize or restore them and the other workers wait for
that (:meth:`Exchange.start`), and sends each step's gradients (:meth:`Exchange.push_pull`)
or locally computed changes (:meth:`Exchange.push_deltas`), getting the new values back in
the same round trip. A :class:`Mirror` carries, in that same round trip, what the step
changed in the model's other variables (batch normalization's moving statistics). The
TensorFlow side (``tf.numpy_function`` callbacks) lives in
:mod:`varstore.tensorflow.graph` and :mod:`varstore.tensorflow.keras`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from varstore import train
from varstore.client import Client, RemoteVariable
from varstore.cluster import connect
from varstore.common import dtypes
from varstore.common.dtypes import DType
from varstore.common.errors import FailedPreconditionError, clip
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
                  arrays: Sequence[np.ndarray], local_step: Any = None,
                  mirror: Mirror | None = None, current: Sequence[np.ndarray] = ()
                  ) -> list[np.ndarray]:
        """Applies one step of gradients with ``optimizer`` on the server and returns the
        variables' new values, then the mirrored ones' (see :meth:`Mirror.send`; ``current``
        holds their local values), then the global step (when given), from one round trip.

        ``arrays`` holds each variable's gradient, as ``indices, values`` where ``sparse``.
        """
        handles = self.handles(specs)
        grads: dict[Any, Any] = {}
        it = iter(arrays)
        for handle, is_sparse in zip(handles, sparse, strict=True):
            grads[handle] = (next(it), next(it)) if is_sparse else next(it)
        step_handle = None if global_step is None else self.handles([global_step])[0]
        b = RequestBuilder()
        changed = [] if mirror is None else mirror.send(b, current)
        step, values = train.apply_gradients(
            self.client, optimizer, grads, step_handle,
            None if local_step is None else int(local_step),
            fetch=handles + self.handles(changed), builder=b)
        return self._outputs(values, specs, step, mirror, current, changed)

    def push_deltas(self, specs: Sequence[VariableSpec], global_step: VariableSpec | None,
                    deltas: Sequence[np.ndarray], mirror: Mirror | None = None,
                    current: Sequence[np.ndarray] = ()) -> list[np.ndarray]:
        """Adds ``deltas`` to the variables on the server (one atomic ``assign_add`` each, in
        one request that increments the global step, with the mirrored variables' changes)
        and returns their new values, then the mirrored ones', then the global step (when
        given)."""
        b = RequestBuilder()
        changed = [] if mirror is None else mirror.send(b, current)
        updates = [b.node("assign_add", [b.const(dtypes.to_numpy(d, s.dtype), s.dtype)],
                          variable=s.name) for s, d in zip(specs, deltas, strict=True)]
        if global_step is None:
            last = b.node("no_op", control_inputs=updates)
        else:
            last = b.node("increment", updates, variable=global_step.name)
            b.fetch(last)
        values = self.client.run(b, read_after(b, last, [*specs, *changed]))[0]
        step = None if global_step is None else values.pop(0)
        return self._outputs(values, specs, step, mirror, current, changed)

    @staticmethod
    def _outputs(values: Sequence[np.ndarray], specs: Sequence[VariableSpec], step: Any,
                 mirror: Mirror | None, current: Sequence[np.ndarray],
                 changed: Sequence[VariableSpec]) -> list[np.ndarray]:
        """What a step's numpy function returns: the trained variables' values, each in its
        variable's dtype, then the mirrored ones' (see :meth:`Mirror.received`), then the
        global step as int64 when there is one."""
        out = [np.asarray(v, s.dtype.np_dtype) for v, s in zip(values, specs, strict=False)]
        if mirror is not None:
            out += mirror.received(current, changed, values[len(specs):])
        return out if step is None else [*out, np.asarray(step, np.int64)]


class Mirror:
    """The variables of a model that a worker keeps on the server besides those it sends
    gradients (or optimizer changes) for: state changed outside the optimizer, as batch
    normalization's moving statistics, which ``tf.compat.v1`` updates by ``assign`` ops in
    ``UPDATE_OPS`` and Keras in the layer's call.

    It remembers each one's value as last synchronized with the server (:meth:`reset` once
    loaded, then every step). A step sends what it changed since then as an ``assign_add``
    of ``value - synchronized`` in the request that carries the gradients, so that the
    changes of workers stepping concurrently add up and none is lost; the value after it
    comes back in that reply and replaces the local one. A variable the step did not change
    is neither sent nor read back. Under TensorFlow's parameter server the ``assign`` runs
    on the ps on the ps's current value, ``0.9 * current + 0.1 * batch_mean``; here it ran
    on the worker's copy, so a concurrent worker's change since the last synchronization
    reaches the result unscaled (``+ (v' - v)`` instead of ``0.9 * (v' - v)``); with one
    worker the two agree. Booleans and strings, which have no difference, are assigned
    (the last writer wins, as under TensorFlow's ps). A failed request leaves the
    synchronized values as they were, so the next step sends its change again. The
    bookkeeping is thread-safe, but a worker that runs steps in several threads at once can
    send a concurrent step's local change twice (each sends what changed since the last
    reply).
    """

    def __init__(self, specs: Sequence[VariableSpec]) -> None:
        self.specs = list(specs)
        self._synchronized: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def reset(self, values: Mapping[str, np.ndarray]) -> None:
        """Records the values loaded from the server (by name; others are ignored)."""
        with self._lock:
            for spec in self.specs:
                if spec.name in values:
                    self._synchronized[spec.name] = np.array(values[spec.name],
                                                             spec.dtype.np_dtype)

    def send(self, b: RequestBuilder, current: Sequence[np.ndarray]) -> list[VariableSpec]:
        """Adds to ``b`` (as targets) the update of each variable whose ``current`` value
        differs from the synchronized one; returns their specs. Raises
        ``FailedPreconditionError`` for a variable that was never loaded from the server."""
        changed = []
        with self._lock:
            for spec, value in zip(self.specs, current, strict=True):
                last = self._synchronized.get(spec.name)
                if last is None:
                    raise FailedPreconditionError(
                        f"{clip(spec.name)} was not loaded from the server: start the worker "
                        f"with SyncHook (its var_list must hold it)")
                value = np.asarray(value, spec.dtype.np_dtype)
                if np.array_equal(value, last):
                    continue
                if spec.dtype.is_string or spec.dtype.is_bool:
                    op, arg = "assign", dtypes.to_numpy(value, spec.dtype)
                else:
                    with np.errstate(over="ignore"):
                        op, arg = "assign_add", np.subtract(value, last)
                b.target(b.node(op, [b.const(arg, spec.dtype)], variable=spec.name))
                changed.append(spec)
        return changed

    def received(self, current: Sequence[np.ndarray], changed: Sequence[VariableSpec],
                 values: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The mirrored variables' values after the step, to assign locally: the server's
        ``values`` for the ``changed`` ones (as :meth:`send` returned them), the local
        ``current`` ones for the others; records the server's as synchronized."""
        after = {s.name: np.asarray(v, s.dtype.np_dtype)
                 for s, v in zip(changed, values, strict=True)}
        with self._lock:
            self._synchronized.update(after)
        return [after[s.name] if s.name in after else np.array(v, s.dtype.np_dtype)
                for s, v in zip(self.specs, current, strict=True)]

