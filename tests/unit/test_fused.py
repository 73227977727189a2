"""The fused optimizer steps give the same bits as numpy's whole-array expressions."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from varstore.server.fused import ADAM_BLOCK, adam_step

F = np.float32


def _expression(var: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray) -> None:
    one = F(1)
    beta1, beta2, lr_t, eps = np.asarray(F(0.9)), np.asarray(F(0.999)), np.asarray(
        F(0.01)), np.asarray(F(1e-7))
    m += (g - m) * (one - beta1)
    v += (g * g - v) * (one - beta2)
    var[...] -= (m * lr_t) / (np.sqrt(v) + eps)


def _fused(var: np.ndarray, m: np.ndarray, v: np.ndarray, g: np.ndarray) -> None:
    one = F(1)
    adam_step(var, m, v, g, np.asarray(F(0.01)), one - np.asarray(F(0.9)),
              one - np.asarray(F(0.999)), np.asarray(F(1e-7)))


@pytest.mark.parametrize("make", [
    lambda r: r.standard_normal((3, 5, ADAM_BLOCK // 7 + 1)).astype(F),  # several blocks
    lambda r: r.standard_normal((ADAM_BLOCK // 3, 4)).astype(F).T,  # a view that won't flatten
    lambda r: np.asarray(r.standard_normal(), F),  # a scalar
    lambda r: np.zeros((0, 3), F),
], ids=["blocks", "transposed", "scalar", "empty"])
def test_adam_step_matches_the_whole_array_expressions(
        make: Callable[[np.random.Generator], np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    var, m, v = make(rng), make(rng), np.abs(make(rng))  # the second moment is never negative
    ours = [x.copy(order="K") for x in (var, m, v)]
    theirs = [x.copy(order="K") for x in (var, m, v)]
    for step in range(3):
        grad = make(rng)
        _fused(ours[0], ours[1], ours[2], grad)
        _expression(theirs[0], theirs[1], theirs[2], grad)
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), f"step {step}"
