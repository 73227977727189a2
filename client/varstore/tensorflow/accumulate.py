"""Local gradient aggregation: ``backward_passes_per_step``, in numpy (no TensorFlow here).

As Horovod's ``LocalGradientAggregationHelper`` (horovod/tensorflow/gradient_aggregation.py
and gradient_aggregation_eager.py): a worker adds up its gradients over
``backward_passes_per_step`` backward passes and sends them once, on the last of them; the
passes in between contact no server and change no variable. With
``average_aggregated_gradients`` the sum is divided by ``backward_passes_per_step`` (Horovod's
default, kept here, is the sum). Dense gradients are summed in their own dtype, in the order
they came, as Horovod's ``assign_add`` into a zero variable does. Sparse gradients (rows) are
concatenated, as TensorFlow aggregates ``IndexedSlices``; the optimizers sum duplicate rows
before applying them (Horovod refuses ``IndexedSlices`` here unless ``sparse_as_dense``).
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np


def check_backward_passes(value: Any) -> int:
    """``backward_passes_per_step`` as an int. Raises ``TypeError`` for anything but an
    integer (Python or numpy; not a bool), ``ValueError`` when it is not > 0 (Horovod's
    message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"backward_passes_per_step must be an integer, not "
                        f"{type(value).__name__}")
    if value <= 0:
        raise ValueError(f"backward_passes_per_step must be > 0, got {int(value)}")
    return int(value)


class GradientAccumulator:
    """One worker's gradients summed over ``backward_passes_per_step`` passes, by variable
    name. :meth:`add` takes a pass and says whether it completed a step; :meth:`take` returns
    the aggregate and starts the next step. Thread-safe."""

    def __init__(self, backward_passes_per_step: int,
                 average_aggregated_gradients: bool = False) -> None:
        self.backward_passes_per_step = check_backward_passes(backward_passes_per_step)
        self.average_aggregated_gradients = bool(average_aggregated_gradients)
        self.passes = 0
        self._dense: dict[str, np.ndarray] = {}
        self._rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._lock = threading.Lock()

    def add(self, names: Sequence[str], sparse: Sequence[bool], arrays: Sequence[Any]
            ) -> bool:
        """Adds one backward pass: each variable's gradient, as ``indices, values`` where
        ``sparse``. Returns True when this pass is the ``backward_passes_per_step``-th since
        the last :meth:`take`. Raises ``ValueError`` when a variable's gradient changes
        between dense and sparse within a step."""
        with self._lock:
            it = iter(arrays)
            for name, is_sparse in zip(names, sparse, strict=True):
                if is_sparse:
                    if name in self._dense:
                        raise ValueError(f"the gradient of {name} became sparse within a step")
                    indices = np.array(next(it), np.int64)
                    self._rows.setdefault(name, []).append((indices, np.array(next(it))))
                elif name in self._rows:
                    raise ValueError(f"the gradient of {name} became dense within a step")
                elif name in self._dense:
                    self._dense[name] += np.asarray(next(it))
                else:
                    self._dense[name] = np.array(next(it))
            self.passes += 1
            return self.passes >= self.backward_passes_per_step

    def take(self, names: Sequence[str], sparse: Sequence[bool]) -> list[np.ndarray]:
        """The step's gradients of ``names`` (``indices, values`` where ``sparse``), summed
        or averaged, and a fresh start. Raises ``ValueError`` for a variable that had no
        gradient in this step."""
        with self._lock:
            dense, rows, self._dense, self._rows = self._dense, self._rows, {}, {}
            self.passes = 0
        out: list[np.ndarray] = []
        for name, is_sparse in zip(names, sparse, strict=True):
            if name not in (rows if is_sparse else dense):
                raise ValueError(f"no {'sparse' if is_sparse else 'dense'} gradient of "
                                 f"{name} was accumulated in this step")
            if is_sparse:
                out.append(np.concatenate([i for i, _ in rows[name]]))
                out.append(self._scale(np.concatenate([v for _, v in rows[name]])))
            else:
                out.append(self._scale(dense[name]))
        return out

    def _scale(self, total: np.ndarray) -> np.ndarray:
        # Horovod divides by backward_passes_per_step (tf.divide: in the gradient's dtype).
        if not self.average_aggregated_gradients:
            return total
        return np.asarray(total / total.dtype.type(self.backward_passes_per_step),
                          total.dtype)
