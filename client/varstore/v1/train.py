"""``tf.train``: the optimizers (:mod:`varstore.v1.optimizers`), ``Saver`` and
``latest_checkpoint``, ``list_variables`` (:mod:`varstore.v1.saver`), the global step
(:mod:`varstore.v1.training_util`), ``MonitoredTrainingSession``
(:mod:`varstore.v1.monitored_session`) and ``replica_device_setter``
(:mod:`varstore.v1.device_setter`).
"""

from __future__ import annotations

from varstore.v1.device_setter import replica_device_setter
from varstore.v1.monitored_session import (
    MonitoredSession,
    MonitoredTrainingSession,
    StopAtStepHook,
)
from varstore.v1.optimizers import (
    AdagradOptimizer,
    AdamOptimizer,
    FtrlOptimizer,
    GradientDescentOptimizer,
    MomentumOptimizer,
    RMSPropOptimizer,
)
from varstore.v1.saver import Saver, latest_checkpoint, list_variables
from varstore.v1.training_util import (
    create_global_step,
    get_global_step,
    get_or_create_global_step,
    global_step,
)

__all__ = [
    "AdagradOptimizer", "AdamOptimizer", "FtrlOptimizer", "GradientDescentOptimizer",
    "MomentumOptimizer", "MonitoredSession", "MonitoredTrainingSession", "RMSPropOptimizer",
    "Saver", "StopAtStepHook", "create_global_step", "get_global_step",
    "get_or_create_global_step", "global_step", "latest_checkpoint", "list_variables",
    "replica_device_setter",
]


def __dir__() -> list[str]:
    """The public names only, as ``dir()`` of TensorFlow's namespace shows them (not the
    imports this module is written with)."""
    return sorted(__all__)
