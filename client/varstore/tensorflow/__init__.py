"""varstore.tensorflow: TensorFlow programs train with their variables on a varstore server.

The pattern of Horovod's and BytePS's TensorFlow plugins: wrap the optimizer, keep the
model code. In TF1 graph mode (``tf.compat.v1``)::

    import varstore.tensorflow as vst

    opt = vst.DistributedOptimizer(tf.compat.v1.train.AdamOptimizer(1e-3))
    train_op = opt.minimize(loss, global_step=tf.compat.v1.train.get_or_create_global_step())
    with tf.compat.v1.train.MonitoredTrainingSession(hooks=[vst.SyncHook(is_chief=task == 0)]
                                                     ) as sess:
        while not sess.should_stop():
            sess.run(train_op)

Gradients are computed locally by TensorFlow; each ``train_op`` run pushes them to the
server in one round trip, where the same optimizer (TF's math, slot and non-slot names, so
the server's checkpoint is what TensorFlow's ``Saver`` would write) updates the variables
atomically, and the new values come back in that round trip into the local variables.
Variables keep their TensorFlow names. ``SyncHook`` lets the chief initialize or restore
them on the server while the other workers wait there. The server's address comes from
``client=`` (a ``varstore.Client`` or ``"host:port"``) or ``VARSTORE_ADDRESS``.

Every other global variable of the graph is on the server too (as on TensorFlow's ps): the
non-trainable ones changed outside the optimizer (batch normalization's moving statistics,
updated by ``UPDATE_OPS``) are mirrored, each push carrying what the step changed in them as
an ``assign_add`` (see :class:`varstore.tensorflow.exchange.Mirror`).

Optimizers the server does not run are run by each worker, which pushes the change they made
as one atomic ``assign_add`` per variable: updates stay atomic, and their slot variables
(momenta, moments) are mirrored, so a worker's step uses its copy of them.

``backward_passes_per_step=N`` (and ``average_aggregated_gradients``) aggregates gradients
locally over N steps and pushes them on every N-th, as Horovod's (see
:mod:`varstore.tensorflow.accumulate`).

In TF2, :func:`DistributedOptimizer` also wraps Keras optimizers (see
:mod:`varstore.tensorflow.keras`). Importing this package imports TensorFlow; ``import
varstore`` alone does not.
"""

from __future__ import annotations

from typing import Any

from varstore.client import Client
from varstore.tensorflow.graph import DistributedOptimizer as GraphDistributedOptimizer
from varstore.tensorflow.graph import SyncHook

__all__ = ["DistributedOptimizer", "GraphDistributedOptimizer", "SyncHook"]


def DistributedOptimizer(optimizer: Any, client: Client | str | None = None,  # noqa: N802
                         **kwargs: Any) -> Any:
    """Wraps a TensorFlow optimizer to train through the server: a ``tf.compat.v1.train``
    optimizer gives a :class:`GraphDistributedOptimizer`, a Keras optimizer a Keras
    optimizer of the same class (:func:`varstore.tensorflow.keras.distributed`). Raises
    ``TypeError`` for anything else."""
    import tensorflow as tf
    if isinstance(optimizer, tf.compat.v1.train.Optimizer):
        return GraphDistributedOptimizer(optimizer, client, **kwargs)
    import keras
    if isinstance(optimizer, keras.optimizers.Optimizer):
        from varstore.tensorflow.keras import distributed
        return distributed(optimizer, client, **kwargs)
    raise TypeError(f"DistributedOptimizer wraps a tf.compat.v1.train or Keras optimizer, "
                    f"not {type(optimizer).__name__}")
