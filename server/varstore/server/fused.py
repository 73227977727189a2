"""Optimizer arithmetic fused by hand: numpy evaluates an expression one operation at a time
over whole arrays, each into a fresh temporary, so a step on a 100 MB variable streams several
hundred MB through memory; these run the same operations, in the same order (the same bits),
a cache-sized block at a time into scratch blocks."""

from __future__ import annotations

import numpy as np

# Elements per block of the dense Adam step: its six blocks stay in the core's cache.
ADAM_BLOCK = 1 << 15


def adam_step(var: np.ndarray, m: np.ndarray, v: np.ndarray, grad: np.ndarray,
              lr_t: np.ndarray, one_beta1: np.ndarray, one_beta2: np.ndarray,
              epsilon: np.ndarray) -> None:
    """TF's dense Adam operations in TF's order (``m += (g - m) * (1 - beta1)``,
    ``v += (g * g - v) * (1 - beta2)``, ``var -= m * lr_t / (sqrt(v) + epsilon)``), in place,
    through two scratch arrays: the same bits as whole-array expressions without their nine
    full-size temporaries. C-contiguous arrays (as variables' values are) go a cache-sized
    block at a time, which halves the CPU of a step on 25M floats."""
    arrays = [var, m, v, grad]
    if all(x.flags.c_contiguous for x in arrays):
        arrays = [x.reshape(-1) for x in arrays]
        blocks = [slice(i, i + ADAM_BLOCK) for i in range(0, var.size, ADAM_BLOCK)]
        shape: tuple[int, ...] = (min(ADAM_BLOCK, var.size),)
    else:  # views that do not flatten without a copy: the whole arrays as one block
        blocks, shape = [slice(None)], var.shape
    a, b = np.empty(shape, var.dtype), np.empty(shape, var.dtype)
    for block in blocks:
        x, m_, v_, g = (array[block] for array in arrays)
        t, u = a[:len(x)], b[:len(x)]
        np.subtract(g, m_, out=t)
        t *= one_beta1
        m_ += t
        np.multiply(g, g, out=t)
        t -= v_
        t *= one_beta2
        v_ += t
        np.multiply(m_, lr_t, out=u)
        np.sqrt(v_, out=t)
        t += epsilon
        u /= t
        x -= u
