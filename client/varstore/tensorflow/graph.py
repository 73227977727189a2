"""TF1 graph mode: the optimizer wrapper and the session hook, as Horovod's and BytePS's
TensorFlow plugins shape them (a ``tf.compat.v1.train.Optimizer`` that delegates gradient
computation to the wrapped one, and a ``SessionRunHook`` that synchronizes the start).
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from varstore.client import Client
from varstore.common import dtypes
from varstore.common.tf_config import tf_config_of
from varstore.optimizers import Optimizer
from varstore.tensorflow.accumulate import GradientAccumulator, check_backward_passes
from varstore.tensorflow.exchange import Exchange, Mirror, VariableSpec
from varstore.tensorflow.server_side import tf1_server_optimizer
from varstore.train import SyncReplicasOptimizer

tf1 = tf.compat.v1

# The graph collection of the variables DistributedOptimizers keep on the server (those they
# train, the non-trainable ones they mirror, the global step); SyncHook warns about the
# global variables outside it.
VARIABLES = "varstore_variables"

# Each graph's Mirrors (one per apply_gradients), which SyncHook tells the loaded values.
_MIRRORS: weakref.WeakKeyDictionary[Any, list[Mirror]] = weakref.WeakKeyDictionary()

log = logging.getLogger(__name__)


def spec_of(variable: Any) -> VariableSpec:
    """The server's view of a TensorFlow variable: its name without ``:0``, dtype, shape.
    Raises ``ValueError`` when the shape is not fully defined."""
    shape = variable.shape
    if not shape.is_fully_defined():
        raise ValueError(f"varstore needs fully defined shapes: {variable.name} has {shape}")
    name = variable.name[:-2] if variable.name.endswith(":0") else variable.name
    return VariableSpec(name, dtypes.as_dtype(variable.dtype.base_dtype.name),
                        tuple(int(d) for d in shape), bool(getattr(variable, "trainable",
                                                                    True)))


class DistributedOptimizer(tf.compat.v1.train.Optimizer):
    """Wraps a ``tf.compat.v1.train`` optimizer: gradients are computed locally by it, and
    :meth:`apply_gradients` pushes them to the server in one round trip, where the same
    algorithm updates the variables and their slots atomically; the new values come back in
    that round trip and are assigned to the local variables (and the global step to the
    local global step).

    Optimizers the server does not run (see :mod:`varstore.tensorflow.server_side`) are run
    locally, and the change they made is pushed as one atomic ``assign_add`` per variable;
    their slots are mirrored as below. With ``replicas_to_aggregate``, the server
    averages that many workers' gradients per global step before applying them, as
    ``SyncReplicasOptimizer``; it needs ``global_step``.

    With ``backward_passes_per_step`` N > 1, as Horovod's ``DistributedOptimizer``, the
    worker sums its gradients locally over N runs of the op and pushes them on every N-th
    (divided by N with ``average_aggregated_gradients``); the runs in between contact no
    server and change no variable, nor the global step, which counts the server's updates.
    Sparse gradients are aggregated as concatenated rows (see
    :mod:`varstore.tensorflow.accumulate`). Raises ``TypeError``/``ValueError`` for a
    ``backward_passes_per_step`` that is not an integer > 0.

    The graph's other global variables that are not trainable (batch normalization's moving
    statistics, updated by ``UPDATE_OPS``; a local optimizer's slots), minus the
    ``LOCAL_VARIABLES``, those another ``DistributedOptimizer`` keeps and the global step,
    are kept on the server too: each push carries what the step changed in them, read after
    the ops the step depends on (``control_dependencies(UPDATE_OPS)``, as TensorFlow
    documents), as an ``assign_add`` of the change (see :class:`exchange.Mirror`), and their
    values after it come back and are assigned locally. Variables created after
    ``apply_gradients`` are not among them.
    """

    def __init__(self, optimizer: Any, client: Client | str | None = None,
                 replicas_to_aggregate: int | None = None, timeout: float = 600.0,
                 name: str | None = None, use_locking: bool = False,
                 backward_passes_per_step: int = 1,
                 average_aggregated_gradients: bool = False) -> None:
        super().__init__(use_locking, name or f"Distributed{type(optimizer).__name__}")
        self._optimizer = optimizer
        self._exchange = Exchange(client)
        self._accumulator = accumulator(backward_passes_per_step,
                                        average_aggregated_gradients)
        self._server: Optimizer | None = tf1_server_optimizer(optimizer)
        if replicas_to_aggregate is not None:
            if self._server is None:
                raise ValueError(f"synchronous training needs an optimizer the server runs, "
                                 f"not {type(optimizer).__name__}")
            self._server = SyncReplicasOptimizer(self._server, replicas_to_aggregate, timeout)

    @property
    def runs_on_server(self) -> bool:
        """Whether the server applies the updates (else the worker, pushing deltas)."""
        return self._server is not None

    def compute_gradients(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped optimizer's ``compute_gradients``: computed locally."""
        return self._optimizer.compute_gradients(*args, **kwargs)

    def get_slot(self, var: Any, name: str) -> Any:
        """The wrapped optimizer's slot (local optimizers only; server slots live there)."""
        return self._optimizer.get_slot(var, name)

    def get_slot_names(self) -> list[str]:
        """The wrapped optimizer's slot names."""
        return self._optimizer.get_slot_names()

    def variables(self) -> list[Any]:
        """The wrapped optimizer's local variables."""
        return self._optimizer.variables()

    def apply_gradients(self, grads_and_vars: Any, global_step: Any = None,
                        name: str | None = None) -> Any:
        """An op that applies ``(gradient, variable)`` pairs through the server and assigns
        the new values locally, then the global step. Gradients may be ``IndexedSlices``
        (sent as rows) or None (variable skipped). Raises ``ValueError`` when no variable has
        a gradient, or for a synchronous optimizer without ``global_step``."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        if not pairs:
            raise ValueError(f"No gradients provided for any variable: "
                             f"{[v.name for _, v in grads_and_vars]}.")
        if isinstance(self._server, SyncReplicasOptimizer) and global_step is None:
            raise ValueError("synchronous training needs global_step")
        variables = [v for _, v in pairs]
        graph = tf1.get_default_graph()
        for var in [*variables, *([global_step] if global_step is not None else [])]:
            # By identity: == on variables may compare their values.
            if not any(known is var for known in graph.get_collection(VARIABLES)):
                graph.add_to_collection(VARIABLES, var)
        specs = [spec_of(v) for v in variables]
        step_spec = None if global_step is None else spec_of(global_step)
        with tf1.name_scope(name, self.get_name()) as scope:
            op_name = scope[:-1] if scope else self.get_name()
            acc = self._accumulator
            if acc is None:
                return self._apply(graph, pairs, specs, step_spec, global_step, op_name)
            due, sparse = accumulate(acc, specs, [g for g, _ in pairs])

            def push() -> Any:
                grads = aggregated(acc, specs, sparse)
                applied = self._apply(graph, list(zip(grads, variables, strict=True)),
                                      specs, step_spec, global_step, "push")
                with tf1.control_dependencies([applied]):
                    return tf.constant(True)

            pushed = tf.cond(due, push, lambda: tf.constant(False), name="every_nth")
            return tf.group(pushed, name=op_name)

    def _apply(self, graph: Any, pairs: list[tuple[Any, Any]], specs: list[VariableSpec],
               step_spec: VariableSpec | None, global_step: Any, name: str) -> Any:
        """The op pushing ``pairs`` (at once: no accumulation) with the mirrored variables'
        changes, and assigning what comes back."""
        variables = [v for _, v in pairs]
        if self._server is None:
            # A copy: the Identity a reference variable's read_value() makes (under
            # disable_v2_behavior) shares the variable's buffer, which the update changes.
            before = [tf.raw_ops.DeepCopy(x=v.read_value()) for v in variables]
            with tf1.control_dependencies(before):
                update = self._optimizer.apply_gradients(pairs)
            with tf1.control_dependencies([update]):
                inputs = [v.read_value() - b for v, b in zip(variables, before, strict=True)]
                mirrored, current = mirror_of(graph, [*variables, global_step])
        else:
            inputs, sparse = flatten([g for g, _ in pairs])
            mirrored, current = mirror_of(graph, [*variables, global_step])
        mirror = Mirror([spec_of(v) for v in mirrored])
        _MIRRORS.setdefault(graph, []).append(mirror)
        types = _types([*specs, *mirror.specs], step_spec)
        if self._server is None:
            call = functools.partial(numpy_push_deltas, self._exchange, specs, step_spec, mirror)
            outputs = tf1.numpy_function(call, [*inputs, *current], types, stateful=True,
                                         name="PushDeltas")
        else:
            synchronous = isinstance(self._server, SyncReplicasOptimizer)
            extra = [tf1.convert_to_tensor(global_step)] if synchronous else []
            call = functools.partial(numpy_push_pull, self._exchange, self._server, specs, sparse,
                                     step_spec, synchronous, mirror, len(inputs))
            outputs = tf1.numpy_function(call, [*inputs, *current, *extra], types,
                                         stateful=True, name="PushPull")
        return self._assign([*variables, *mirrored], global_step, outputs, name)

    @staticmethod
    def _assign(variables: list[Any], global_step: Any, outputs: list[Any], name: str
                ) -> Any:
        assigns = []
        for var, value in zip(variables, outputs, strict=False):
            value.set_shape(var.shape)
            assigns.append(tf1.assign(var, value, use_locking=False).op)
        if global_step is not None:
            step = outputs[-1]
            step.set_shape(())
            assigns.append(tf1.assign(global_step, tf.cast(step, global_step.dtype.base_dtype)
                                      ).op)
        return tf.group(*assigns, name=name)


def mirror_of(graph: Any, exclude: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The global variables of ``graph`` a new push mirrors (not trainable, not local, not
    kept by another push, not in ``exclude``), added to :data:`VARIABLES`, and their values
    read now (under the control dependencies in force)."""
    skip = {id(v) for v in [*exclude, *graph.get_collection(VARIABLES),
                            *graph.get_collection(tf1.GraphKeys.LOCAL_VARIABLES)]}
    mirrored = [v for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)
                if id(v) not in skip and not v.trainable]
    for var in mirrored:
        graph.add_to_collection(VARIABLES, var)
    return mirrored, [v.read_value() for v in mirrored]


def flatten(grads: Sequence[Any]) -> tuple[list[Any], list[bool]]:
    """Gradients as ``numpy_function`` inputs (``IndexedSlices`` as indices, values) and
    which of them are sparse."""
    inputs: list[Any] = []
    sparse = []
    for grad in grads:
        if isinstance(grad, tf.IndexedSlices):
            inputs += [grad.indices, grad.values]
        else:
            inputs.append(tf.convert_to_tensor(grad))
        sparse.append(isinstance(grad, tf.IndexedSlices))
    return inputs, sparse


def accumulator(backward_passes_per_step: int, average_aggregated_gradients: bool
                ) -> GradientAccumulator | None:
    """A wrapper's local aggregation, None for one pass per step (Horovod's default).
    Raises ``TypeError``/``ValueError`` as :func:`accumulate.check_backward_passes`."""
    passes = check_backward_passes(backward_passes_per_step)
    return None if passes == 1 else GradientAccumulator(passes,
                                                        average_aggregated_gradients)


def accumulate(acc: GradientAccumulator, specs: Sequence[VariableSpec], grads: Sequence[Any]
               ) -> tuple[Any, list[bool]]:
    """A boolean tensor that adds ``grads`` to ``acc`` and says whether the pass completed a
    step; and which gradients are sparse."""
    inputs, sparse = flatten(grads)
    names = [s.name for s in specs]
    due = tf1.numpy_function(lambda *arrays: np.bool_(acc.add(names, sparse, arrays)), inputs,
                             tf.bool, stateful=True, name="Accumulate")
    due.set_shape(())
    return due, sparse


def aggregated(acc: GradientAccumulator, specs: Sequence[VariableSpec], sparse: list[bool]
               ) -> list[Any]:
    """The step's aggregated gradients taken from ``acc``, as tensors (``IndexedSlices``
    where ``sparse``)."""
    names = [s.name for s in specs]
    types: list[Any] = []
    for spec, is_sparse in zip(specs, sparse, strict=True):
        types += [tf.int64] if is_sparse else []
        types.append(tf.as_dtype(spec.dtype.name))
    out = tf1.numpy_function(lambda: acc.take(names, sparse), [], types, stateful=True,
                             name="Aggregated")
    # Executed eagerly, a function of one output returns that tensor, not a list.
    flat = iter(out if isinstance(out, list | tuple) else [out])
    grads = []
    for spec, is_sparse in zip(specs, sparse, strict=True):
        if is_sparse:
            indices, values = next(flat), next(flat)
            indices.set_shape([None])
            values.set_shape([None, *spec.shape[1:]])
            grads.append(tf.IndexedSlices(values, indices, tf.constant(spec.shape, tf.int64)))
        else:
            grad = next(flat)
            grad.set_shape(spec.shape)
            grads.append(grad)
    return grads


def _types(specs: Sequence[VariableSpec], step: VariableSpec | None) -> list[Any]:
    types = [tf.as_dtype(s.dtype.name) for s in specs]
    return types + [tf.int64] if step is not None else types


def numpy_push_pull(exchange: Exchange, optimizer: Optimizer, specs: list[VariableSpec],
                    sparse: list[bool], step: VariableSpec | None, synchronous: bool,
                    mirror: Mirror, flat: int, *arrays: Any) -> list[Any]:
    """The numpy side of ``PushPull``: ``flat`` gradient arrays and the mirrored variables'
    values in, new values (and global step) out; a synchronous step's last input is the
    global step the gradients were computed at."""
    local_step = arrays[-1] if synchronous else None
    current = arrays[flat:len(arrays) - 1 if synchronous else len(arrays)]
    return exchange.push_pull(optimizer, specs, sparse, step, arrays[:flat], local_step,
                              mirror, current)


def numpy_push_deltas(exchange: Exchange, specs: list[VariableSpec],
                      step: VariableSpec | None, mirror: Mirror, *arrays: Any) -> list[Any]:
    """The numpy side of ``PushDeltas``: the trained variables' changes, then the mirrored
    variables' values, in; new values (and global step) out."""
    return exchange.push_deltas(specs, step, arrays[:len(specs)], mirror,
                                arrays[len(specs):])


def default_is_chief() -> bool:
    """Whether this process is varstore's chief when ``SyncHook`` is not told: from
    ``TF_CONFIG`` (the ``chief`` task, or worker 0 when there is none), else True.

    Raises ``ValueError`` naming ``TF_CONFIG`` when it is malformed."""
    return tf_config_of(os.environ).is_chief()


class SyncHook(tf.compat.v1.train.SessionRunHook):
    """Starts a worker on the server, for ``MonitoredTrainingSession(hooks=[...])``.

    Once the session exists, the chief (``is_chief``; by default from ``TF_CONFIG``, see
    :func:`default_is_chief`) declares the variables on the server (``var_list``: by default
    every global variable of the graph that is not in ``LOCAL_VARIABLES``, as TensorFlow's
    ``Saver`` saves them, and the global step), restores the newest checkpoint of
    ``checkpoint_dir`` on the server or initializes them with its own initial values; other
    workers wait on the server until that is done (``DeadlineExceededError`` after
    ``timeout`` seconds). Then every worker loads the server's values into its local
    variables. A warning names the global variables that no ``DistributedOptimizer`` step
    sends the changes of (created after ``minimize``, or trainable without a gradient).
    Raises ``InvalidArgumentError`` when the server has a variable of another shape or
    dtype.
    """

    def __init__(self, client: Client | str | None = None, is_chief: bool | None = None,
                 checkpoint_dir: str | None = None, timeout: float = 600.0,
                 var_list: Sequence[Any] | None = None) -> None:
        self._exchange = Exchange(client)
        self._is_chief = default_is_chief() if is_chief is None else bool(is_chief)
        self._checkpoint_dir = checkpoint_dir
        self._timeout = timeout
        self._var_list = var_list
        self._variables: list[Any] = []
        self._load: Any = None
        self._feeds: list[Any] = []
        self._graph: Any = None

    def begin(self) -> None:
        """Builds the ops that load the server's values (the graph is still open here)."""
        graph = self._graph = tf1.get_default_graph()
        kept = graph.get_collection(VARIABLES)
        variables = list(self._var_list or _saved(graph, kept))
        step = tf1.train.get_global_step(graph)
        if step is not None and not any(v is step for v in variables):
            variables.append(step)
        outside = [v.op.name for v in variables if not any(k is v for k in kept)]
        if kept and outside:
            log.warning("varstore: no DistributedOptimizer step sends the changes of %s "
                        "(created after minimize, or trainable without a gradient); the "
                        "server keeps them as loaded", ", ".join(outside)[:1000])
        self._variables = variables
        self._feeds = [tf1.placeholder(v.dtype.base_dtype, v.shape) for v in variables]
        with tf1.name_scope("varstore_load"):
            self._load = tf.group(*[tf1.assign(v, p).op for v, p in
                                    zip(variables, self._feeds, strict=True)])

    def after_create_session(self, session: Any, coord: Any) -> None:
        """Initializes or restores (chief) or waits (other workers), then loads the values."""
        specs = [spec_of(v) for v in self._variables]
        local = session.run(self._variables) if self._is_chief else None
        values = self._exchange.start(specs, self._is_chief, local, self._checkpoint_dir,
                                      self._timeout)
        session.run(self._load, dict(zip(self._feeds, values, strict=True)))
        loaded = {s.name: v for s, v in zip(specs, values, strict=True)}
        for mirror in _MIRRORS.get(self._graph, []):
            mirror.reset(loaded)


def _saved(graph: Any, kept: Sequence[Any]) -> list[Any]:
    """What ``SyncHook`` declares by default: the variables the graph's pushes keep, then
    the other global variables but the ``LOCAL_VARIABLES`` (TensorFlow's ``Saver`` saves the
    global ones)."""
    local = {id(v) for v in graph.get_collection(tf1.GraphKeys.LOCAL_VARIABLES)}
    seen = {id(v) for v in kept}
    return [*kept, *(v for v in graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)
                     if id(v) not in seen and id(v) not in local)]
