"""Values the eager clients' updates accept and refuse, as TensorFlow's eager variables do:
``assign`` (exact shape, else ``ValueError``), ``assign_add``/``assign_sub`` (exact shape, no
broadcasting even of a scalar, else ``InvalidArgumentError``), ``scatter_*`` (updates of
``indices.shape + shape[1:]`` or a scalar), a Python float for an integer variable or an int
for a bool one (``TypeError``), numpy arrays cast; and a refused update changes nothing.

Each case runs under TensorFlow 2 eager (``tf.Variable``, ``tf.compat.v1.scatter_*``, in a
subprocess, once per session) and under varstore's blocking and asyncio clients."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.aio
from tests.extras import require
from tests.interop.fidelity import ROOT, jsonable

# name: (variable dtype, variable shape, method, arguments)
CASES: dict[str, tuple[str, tuple[int, ...], str, Callable[[], tuple[Any, ...]]]] = {
    "add_row_to_matrix": ("float32", (4, 3), "assign_add", lambda: (np.arange(3.0),)),
    "sub_row_to_matrix": ("float32", (4, 3), "assign_sub", lambda: (np.arange(3.0),)),
    "add_scalar_to_matrix": ("float32", (4, 3), "assign_add", lambda: (1.0,)),
    "add_list_of_one": ("float32", (), "assign_add", lambda: ([1.0],)),
    "add_float_to_int": ("int32", (), "assign_add", lambda: (0.5,)),
    "add_whole_float_to_int": ("int64", (), "assign_add", lambda: (2.0,)),
    "add_float_list_to_int": ("int32", (2,), "assign_add", lambda: ([1.0, 2.0],)),
    "add_int_to_float": ("float32", (), "assign_add", lambda: (3,)),
    "add_float64_array_to_float32": ("float32", (2,), "assign_add",
                                     lambda: (np.array([0.25, 0.5]),)),
    "add_float_array_to_int": ("int32", (2,), "assign_add", lambda: (np.array([1.7, 2.2]),)),
    "add_numpy_float_scalar_to_int": ("int32", (), "assign_add", lambda: (np.float64(2.5),)),
    "add_bool_to_int": ("int32", (), "assign_add", lambda: (True,)),
    "add_to_bool": ("bool", (2,), "assign_add", lambda: (np.array([True, False]),)),
    "add_none": ("float32", (2,), "assign_add", lambda: (None,)),
    "add_string_to_float": ("float32", (), "assign_add", lambda: ("a",)),
    "assign_row_to_matrix": ("float32", (4, 3), "assign", lambda: (np.arange(3.0),)),
    "assign_float_to_int": ("int32", (2,), "assign", lambda: ([1.5, 2.0],)),
    "assign_int_to_bool": ("bool", (), "assign", lambda: (1,)),
    "assign_int_list_to_float": ("float32", (2,), "assign", lambda: ([1, 2],)),
    "assign_bool_array_to_float": ("float32", (2,), "assign",
                                   lambda: (np.array([True, False]),)),
    "scatter_rows": ("float32", (4, 3), "scatter_add", lambda: ([0, 2], np.ones((2, 3)))),
    "scatter_scalar_update": ("float32", (4, 3), "scatter_add", lambda: ([0, 2], 2.0)),
    "scatter_row_for_two_indices": ("float32", (4, 3), "scatter_add",
                                    lambda: ([0, 2], np.ones(3))),
    "scatter_one_index_one_row": ("float32", (4, 3), "scatter_update",
                                  lambda: (1, np.ones(3))),
    "scatter_one_index_row_matrix": ("float32", (4, 3), "scatter_update",
                                     lambda: (1, np.ones((1, 3)))),
    "scatter_too_many_rows": ("float32", (4, 3), "scatter_sub",
                              lambda: ([0], np.ones((2, 3)))),
    "scatter_float_to_int": ("int32", (4,), "scatter_add", lambda: ([1], [0.5])),
    "scatter_index_out_of_range": ("float32", (4,), "scatter_update", lambda: ([4], [1.0])),
}


def _tensorflow_observation(tf: Any, name: str) -> Any:
    dtype, shape, method, args = CASES[name]
    v = tf.Variable(tf.zeros(shape, dtype))
    try:
        if method.startswith("scatter"):
            getattr(tf.compat.v1, method)(v, *args())
        else:
            getattr(v, method)(*args())
    except Exception as e:  # noqa: BLE001 - the class is the observation
        return ["error", type(e).__name__, str(e), v.numpy().tolist()]
    return v.numpy().tolist()


def run_tensorflow() -> dict[str, Any]:
    """Every case's observation under TensorFlow 2 eager (call in a subprocess)."""
    import tensorflow as tf
    return {name: jsonable(_tensorflow_observation(tf, name)) for name in CASES}


@functools.cache
def tensorflow_results() -> dict[str, Any]:
    """The cases under TensorFlow, once per test session, in a subprocess."""
    require("tensorflow")
    code = ("import json; from tests.interop import test_update_values as t; "
            "print('RESULTS ' + json.dumps(t.run_tensorflow()))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


def _same_error(ours: list[Any], theirs: list[Any]) -> bool:
    """Same class, and the message says what TF's says: TF's shape messages (without the
    kernel's context), the offending value and the dtype of a conversion refusal."""
    if ours[1] != theirs[1] or ours[3] != theirs[3]:
        return False
    mine, tf_message = ours[2], theirs[2]
    if "shapes must be equal" in tf_message or "Must have updates.shape" in tf_message:
        return mine in tf_message
    if "Shape mismatch." in tf_message:
        return mine.split("Shape mismatch.")[1].strip() == \
            tf_message.split("Shape mismatch.")[1].strip()
    if tf_message.startswith("Cannot convert "):  # "Cannot convert 0.5 to EagerTensor of dtype"
        value, dtype = tf_message[len("Cannot convert "):].split(" to EagerTensor of dtype ")
        dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)
        first = value.strip("[]").split(",")[0].split()[0]
        return first in mine and dtype in mine
    return True  # indices' dtype and range, no kernel for bool: class and value suffice


def _observe(call: Callable[[], Any], read: Callable[[], Any]) -> Any:
    try:
        call()
    except Exception as e:  # noqa: BLE001
        return jsonable(["error", type(e).__name__, str(e), read()])
    return jsonable(read())


def test_float_indices_are_refused_as_tf1_refuses_them(client: vs.Client) -> None:
    # TF 1.x graph mode's TypeError (TF 2 eager raises InvalidArgumentError for the same).
    v = client.Variable(np.zeros(4, np.float32), name="v")
    with pytest.raises(TypeError, match="Value passed to parameter 'indices' has DataType "
                                        "float64 not in list of allowed values: int32, int64"):
        v.scatter_add([1.0], [1.0])
    assert v.numpy().tolist() == [0, 0, 0, 0]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(CASES))
def test_blocking_client_agrees_with_tensorflow_eager(name: str, client: vs.Client) -> None:
    dtype, shape, method, args = CASES[name]
    v = client.Variable(np.zeros(shape, dtype), name="v")
    ours = _observe(lambda: getattr(v, method)(*args()), v.numpy)
    _compare(ours, tensorflow_results()[name])
    refused = isinstance(ours, list) and ours[:1] == ["error"]
    assert [i.version for i in client.list_variables()] == [0 if refused else 1]


@pytest.mark.tensorflow
@pytest.mark.parametrize("name", list(CASES))
def test_asyncio_client_agrees_with_tensorflow_eager(name: str, address: str) -> None:
    dtype, shape, method, args = CASES[name]

    async def run() -> Any:
        async with await varstore.aio.connect(address) as aclient:
            v = await aclient.Variable(np.zeros(shape, dtype), name="v")
            try:
                await getattr(v, method)(*args())
            except Exception as e:  # noqa: BLE001
                return jsonable(["error", type(e).__name__, str(e), await v.numpy()])
            return jsonable(await v.numpy())
    _compare(asyncio.run(run()), tensorflow_results()[name])


def _compare(ours: Any, theirs: Any) -> None:
    if isinstance(theirs, list) and theirs[:1] == ["error"]:
        assert isinstance(ours, list) and ours[:1] == ["error"], (ours, theirs)
        assert _same_error(ours, theirs), (ours, theirs)
    else:
        assert ours == theirs
