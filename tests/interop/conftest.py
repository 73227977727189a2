"""Fixtures of the TensorFlow interop tests."""

from __future__ import annotations

import os
from typing import Any

import pytest


@pytest.fixture(scope="module")
def tf() -> Any:
    """The ``tensorflow`` module (its C++ logging quiet); skips where it is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")
