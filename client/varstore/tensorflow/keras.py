"""TF2: Keras optimizers that train through the server, in ``model.fit`` and in custom
``GradientTape`` loops (eager or inside ``tf.function``).

:func:`distributed` returns an optimizer of the wrapped one's own class (so Keras accepts it
everywhere), as Horovod's Keras plugin does, whose gradient step goes through the server: the
first step starts the worker on the server (the chief initializes or restores the variables,
the others wait for that, and everyone loads the server's values; done eagerly, at trace time
under ``tf.function``), and every step pushes the gradients and assigns the values that come
back in the same round trip. The optimizer's ``iterations`` follows the server's global step.
Given the ``model``, its non-trainable variables (batch normalization's moving statistics,
updated in the layers' calls) are kept on the server too, their changes carried by that
round trip (see :class:`varstore.tensorflow.exchange.Mirror`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from varstore.client import Client
from varstore.common import dtypes
from varstore.optimizers import Optimizer
from varstore.tensorflow.accumulate import GradientAccumulator
from varstore.tensorflow.exchange import Exchange, Mirror, VariableSpec
from varstore.tensorflow.graph import (
    accumulate,
    accumulator,
    aggregated,
    default_is_chief,
    flatten,
    numpy_push_deltas,
    numpy_push_pull,
)
from varstore.tensorflow.server_side import keras_server_optimizer
from varstore.train import GLOBAL_STEP, SyncReplicasOptimizer

STEP = VariableSpec(GLOBAL_STEP, dtypes.int64, (), trainable=False)

log = logging.getLogger(__name__)


def spec_of(variable: Any) -> VariableSpec:
    """A Keras variable as the server knows it: its path (``sequential/dense/kernel``)."""
    return VariableSpec(variable.path, dtypes.as_dtype(str(variable.dtype)),
                        tuple(int(d) for d in variable.shape), bool(variable.trainable))


# The Keras optimizer class _Distributed is mixed into, known only when distributed() runs:
# Any for type checkers (its iterations, its _backend_apply_gradients), object at run time.
_KerasOptimizer: Any = object


class _Distributed(_KerasOptimizer):
    """The methods mixed into the wrapped optimizer's class (see :func:`distributed`)."""

    _varstore: Exchange
    _varstore_server: Optimizer | None
    _varstore_chief: bool
    _varstore_start: dict[str, Any]
    _varstore_started: bool
    _varstore_accumulator: GradientAccumulator | None
    _varstore_model: Any
    _varstore_mirrored: list[Any]
    _varstore_mirror: Mirror

    def _backend_apply_gradients(self, grads: Sequence[Any],
                                 trainable_variables: Sequence[Any]) -> None:
        variables = list(trainable_variables)
        specs = [spec_of(v) for v in variables]
        if not self._varstore_started:
            with tf.init_scope():
                self._varstore_begin(variables, specs)
        acc = self._varstore_accumulator
        if acc is None:
            self._varstore_apply(list(grads), variables, specs)
            return
        due, sparse = accumulate(acc, specs, list(grads))

        def push() -> Any:
            self._varstore_apply(aggregated(acc, specs, sparse), variables, specs)
            return tf.constant(True)

        def local() -> Any:
            # Keras adds one to iterations after this method: it stays the server's step.
            self.iterations.assign_sub(1)
            return tf.constant(False)

        tf.cond(due, push, local, name="every_nth")

    def _varstore_apply(self, grads: list[Any], variables: list[Any],
                        specs: list[VariableSpec]) -> None:
        """Pushes one step's gradients (or the local optimizer's changes) with the mirrored
        variables' changes, and assigns the values and the global step that come back."""
        iterations = self.iterations
        mirror, mirrored = self._varstore_mirror, self._varstore_mirrored
        # Read after the step's forward pass: tf.function orders a resource's ops as written.
        current = [tf.identity(v.value) for v in mirrored]
        types = _types([*specs, *mirror.specs])
        if self._varstore_server is None:
            before = [tf.identity(v.value) for v in variables]
            super()._backend_apply_gradients(grads, variables)
            deltas = [v.value - b for v, b in zip(variables, before, strict=True)]
            call = functools.partial(numpy_push_deltas, self._varstore, specs, STEP, mirror)
            outputs = tf.numpy_function(call, [*deltas, *current], types, stateful=True,
                                        name="PushDeltas")
            # Keras adds one to iterations after this method; the server's step already did.
            _assign([*variables, *mirrored], iterations, outputs, 1)
            return
        inputs, sparse = flatten(grads)
        synchronous = isinstance(self._varstore_server, SyncReplicasOptimizer)
        extra = [tf.convert_to_tensor(iterations)] if synchronous else []
        call = functools.partial(numpy_push_pull, self._varstore, self._varstore_server,
                                 specs, sparse, STEP, synchronous, mirror, len(inputs))
        outputs = tf.numpy_function(call, [*inputs, *current, *extra], types, stateful=True,
                                    name="PushPull")
        _assign([*variables, *mirrored], iterations, outputs, 1)

    def _varstore_begin(self, variables: list[Any], specs: list[VariableSpec]) -> None:
        """The worker's start, run eagerly once (see :meth:`Exchange.start`): the trained
        variables, the model's non-trainable ones (mirrored) and the global step."""
        trained = {id(v) for v in variables}
        model = self._varstore_model
        if model is None:
            log.warning("varstore: DistributedOptimizer was given no model=: only the "
                        "variables it trains are on the server, not the model's "
                        "non-trainable ones (batch normalization's moving statistics)")
        mirrored = [] if model is None else [v for v in model.variables
                                             if not v.trainable and id(v) not in trained]
        mirror = Mirror([spec_of(v) for v in mirrored])
        every = [*variables, *mirrored]
        iterations = self.iterations
        local = [np.asarray(v) for v in every] + [np.int64(int(iterations))]
        all_specs = [*specs, *mirror.specs, STEP]
        values = self._varstore.start(all_specs, self._varstore_chief,
                                      local if self._varstore_chief else None,
                                      **self._varstore_start)
        for var, value in zip(every, values, strict=False):
            var.assign(value)
        iterations.assign(values[-1])
        mirror.reset({s.name: v for s, v in zip(all_specs, values, strict=True)})
        self._varstore_mirror, self._varstore_mirrored = mirror, mirrored
        self._varstore_started = True


def _types(specs: Sequence[VariableSpec]) -> list[Any]:
    return [tf.as_dtype(s.dtype.name) for s in specs] + [tf.int64]


def _assign(variables: list[Any], iterations: Any, outputs: list[Any], ahead: int) -> None:
    for var, value in zip(variables, outputs, strict=False):
        value.set_shape(var.shape)
        var.assign(value)
    step = outputs[-1]
    step.set_shape(())
    iterations.assign(tf.cast(step, iterations.dtype) - ahead)


def distributed(optimizer: Any, client: Client | str | None = None,
                is_chief: bool | None = None, checkpoint_dir: str | None = None,
                timeout: float = 600.0, replicas_to_aggregate: int | None = None,
                backward_passes_per_step: int = 1,
                average_aggregated_gradients: bool = False, model: Any = None) -> Any:
    """A Keras optimizer of ``optimizer``'s class and configuration that trains through the
    server (see the module docstring). ``is_chief`` defaults as in
    :func:`varstore.tensorflow.graph.default_is_chief`; the chief restores the newest
    checkpoint of ``checkpoint_dir`` on the server. Keras's SGD and Adam run on the server;
    other optimizers run locally and push their changes. ``backward_passes_per_step`` and
    ``average_aggregated_gradients`` aggregate gradients locally as Horovod's (see
    :class:`varstore.tensorflow.graph.DistributedOptimizer`); ``iterations`` then counts the
    server's updates, not the passes. ``model`` (a Keras model or layer, whose ``variables``
    are Keras variables) puts its non-trainable variables on the server too, mirrored
    as :class:`varstore.tensorflow.graph.DistributedOptimizer` mirrors a graph's (without
    it, only the variables that get gradients are). Raises ``ValueError`` for
    ``replicas_to_aggregate``
    with an optimizer the server does not run, ``TypeError``/``ValueError`` for a
    ``backward_passes_per_step`` that is not an integer > 0."""
    acc = accumulator(backward_passes_per_step, average_aggregated_gradients)
    base = type(optimizer)
    cls: Any = type(base.__name__, (_Distributed, base), {"__doc__": base.__doc__})
    wrapped = cls.from_config(optimizer.get_config())
    server = keras_server_optimizer(optimizer)
    if replicas_to_aggregate is not None:
        if server is None:
            raise ValueError(f"synchronous training needs an optimizer the server runs, not "
                             f"{base.__name__}")
        server = SyncReplicasOptimizer(server, replicas_to_aggregate, timeout)
    wrapped._varstore = Exchange(client)
    wrapped._varstore_server = server
    wrapped._varstore_chief = default_is_chief() if is_chief is None else bool(is_chief)
    wrapped._varstore_start = {"checkpoint_dir": checkpoint_dir, "timeout": timeout}
    wrapped._varstore_started = False
    wrapped._varstore_accumulator = acc
    wrapped._varstore_model = model
    return wrapped
