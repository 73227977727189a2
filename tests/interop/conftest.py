"""Fixtures of the TensorFlow interop tests."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.extras import require


@pytest.fixture(scope="module")
def tf() -> Any:
    """The ``tensorflow`` module (its C++ logging quiet); without it the test fails, saying
    what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return require("tensorflow")
