"""One dtype inference for both sides, with TensorFlow's rules (as ``tf.constant`` infers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from varstore import dtypes


@pytest.mark.parametrize("value, expected", [
    ([1, 2.5], dtypes.float32),
    (1, dtypes.int32),
    (2**31 - 1, dtypes.int32),
    (2**31, dtypes.int64),
    (-(2**31) - 1, dtypes.int64),
    (2**40, dtypes.int64),
    ([1, 2**40], dtypes.int64),
    (1.0, dtypes.float32),
    (True, dtypes.bool_),
    ([[True, False]], dtypes.bool_),
    (1 + 2j, dtypes.complex128),
    ("a", dtypes.string),
    ([b"a", "b"], dtypes.string),
    ([], dtypes.float32),
    (np.array([1, 2, 3]), dtypes.int64),
    (np.float64(1.0), dtypes.float64),
    (np.array([1.0], np.float16), dtypes.float16),
])
def test_infer_follows_tensorflow(value: Any, expected: dtypes.DType) -> None:
    assert dtypes.infer(value) == expected


@pytest.mark.parametrize("value", [2**63, [1, 2**64], -(2**63) - 1])
def test_integers_beyond_int64_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="out-of-range integer"):
        dtypes.infer(value)


def test_ragged_lists_are_refused() -> None:
    with pytest.raises(ValueError):
        dtypes.infer([[1, 2], [3]])


@pytest.mark.parametrize("value, dtype", [(1.5, dtypes.int32), ([1, 2.5], dtypes.int64),
                                          (1, dtypes.bool_), ("a", dtypes.float32)])
def test_python_values_that_do_not_fit_the_dtype_are_refused(value: Any,
                                                             dtype: dtypes.DType) -> None:
    with pytest.raises(TypeError, match=f"Expected {dtype.name}"):
        dtypes.check_convertible(value, dtype)


def test_messages_quote_long_input_only_in_part() -> None:
    with pytest.raises(TypeError) as info:
        dtypes.check_convertible(["x" * 10_000], dtypes.float32)
    assert len(str(info.value)) < 200
