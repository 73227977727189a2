"""Which TensorFlow optimizers the server runs, and with which arguments.

TF1's ``tf.compat.v1.train`` optimizers map to :mod:`varstore.optimizers` (the same kernels,
slot names and non-slot variables); Keras optimizers map where their update is the same
arithmetic (SGD with or without momentum, Adam without amsgrad; Keras's Adagrad adds an
epsilon and its RMSprop starts its average at zero, so those run locally). Any other
optimizer, or one whose hyperparameters are tensors, schedules or callables, is run locally
by the worker (see :mod:`varstore.tensorflow`).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from varstore import optimizers as vo

Factory = Callable[[Any], vo.Optimizer]

# TF1 optimizers by class name: what to build from the optimizer's attributes (as TF 1.x's
# training/*.py store them).
_TF1: dict[str, tuple[tuple[str, ...], Factory]] = {
    "GradientDescentOptimizer": (("_learning_rate",), lambda o: vo.GradientDescentOptimizer(
        o._learning_rate, name=o.get_name())),
    "MomentumOptimizer": (("_learning_rate", "_momentum"), lambda o: vo.MomentumOptimizer(
        o._learning_rate, o._momentum, name=o.get_name(), use_nesterov=o._use_nesterov)),
    "AdagradOptimizer": (("_learning_rate", "_initial_accumulator_value"),
                         lambda o: vo.AdagradOptimizer(
                             o._learning_rate, o._initial_accumulator_value,
                             name=o.get_name())),
    "AdamOptimizer": (("_lr", "_beta1", "_beta2", "_epsilon"), lambda o: vo.AdamOptimizer(
        o._lr, o._beta1, o._beta2, o._epsilon, name=o.get_name())),
    "RMSPropOptimizer": (("_learning_rate", "_decay", "_momentum", "_epsilon"),
                         lambda o: vo.RMSPropOptimizer(
                             o._learning_rate, o._decay, o._momentum, o._epsilon,
                             centered=o._centered, name=o.get_name())),
    "FtrlOptimizer": (("_learning_rate", "_learning_rate_power", "_initial_accumulator_value",
                       "_l1_regularization_strength", "_l2_regularization_strength",
                       "_l2_shrinkage_regularization_strength"),
                      lambda o: vo.FtrlOptimizer(
                          o._learning_rate, o._learning_rate_power,
                          o._initial_accumulator_value, o._l1_regularization_strength,
                          o._l2_regularization_strength, name=o.get_name(),
                          accum_name=o._accum_name, linear_name=o._linear_name,
                          l2_shrinkage_regularization_strength=(
                              o._l2_shrinkage_regularization_strength),
                          beta=o._beta)),
}


def tf1_server_optimizer(optimizer: Any) -> vo.Optimizer | None:
    """The server-side twin of a ``tf.compat.v1.train`` optimizer, or None when the server
    does not run it (another class, a subclass, or hyperparameters that are not numbers)."""
    entry = _TF1.get(type(optimizer).__name__)
    if entry is None or type(optimizer).__module__.split(".")[0] != "tensorflow":
        return None
    fields, make = entry
    if not all(_number(getattr(optimizer, f, None)) for f in fields):
        return None
    if getattr(optimizer, "_beta", None) is not None and not _number(optimizer._beta):
        return None
    return make(optimizer)


def keras_server_optimizer(optimizer: Any) -> vo.Optimizer | None:
    """The server-side twin of a Keras optimizer (``keras.optimizers.SGD`` or ``Adam`` with
    constant hyperparameters and no weight decay, clipping or EMA), or None."""
    config = optimizer.get_config()
    if any(config.get(k) for k in ("weight_decay", "clipnorm", "clipvalue",
                                   "global_clipnorm", "use_ema", "amsgrad")):
        return None
    if config.get("loss_scale_factor") not in (None, 1.0) or \
            config.get("gradient_accumulation_steps"):
        return None
    lr = config.get("learning_rate")
    if not _number(lr):
        return None
    name = type(optimizer).__name__
    if name == "SGD" and _number(config["momentum"]):
        if config["momentum"] == 0.0:
            return vo.GradientDescentOptimizer(lr, name=name)
        return vo.MomentumOptimizer(lr, config["momentum"], name=name,
                                    use_nesterov=bool(config["nesterov"]))
    if name == "Adam":
        return vo.AdamOptimizer(lr, config["beta_1"], config["beta_2"], config["epsilon"],
                                name=name)
    return None


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
