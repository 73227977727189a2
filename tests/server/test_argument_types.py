"""Public methods given a plausible wrong type (a name for a variable, one variable for a
list, a number for a string, None) raise a ``TypeError`` naming the argument, never a raw
``AttributeError``/``KeyError`` from inside; where a method documents names (``delete``,
``wait_until_ready``) or TF takes a variable (``save``'s ``global_step``) they work.
Blocking and asyncio clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import varstore as vs
import varstore.aio


@pytest.fixture
def w(client: vs.Client) -> vs.RemoteVariable:
    with client.variable_scope("layer1"):
        return client.Variable(np.zeros((3, 2), np.float32), name="W")


# The client is Any here: these calls pass wrong types on purpose.
CALLS: dict[str, tuple[Callable[[Any, Any], Any], str]] = {
    "pull_names": (lambda c, w: c.pull(["layer1/W"]),
                   r"pull\(\) argument 'variables' must hold variables returned by Variable or "
                   r"get_variable, got str 'layer1/W'"),
    "pull_one_variable": (lambda c, w: c.pull(w), r"\(a list of one: \[v\]\), got the variable"),
    "pull_none": (lambda c, w: c.pull(None), "got NoneType None"),
    "push_pairs": (lambda c, w: c.push([(w, np.ones((3, 2)))]),
                   r"push\(\) argument 'values' must be a dict \{variable: value\}, got list"),
    "push_by_name": (lambda c, w: c.push({"layer1/W": np.ones((3, 2))}), "got str 'layer1/W'"),
    "delete_number": (lambda c, w: c.delete([1]),
                      r"delete\(\) argument 'variables' must be variables or their full names, "
                      r"got int 1"),
    "list_variables_number": (lambda c, w: c.list_variables(1),
                              "argument 'scope' must be a string, got int 1"),
    "wait_initialized_none": (lambda c, w: c.wait_initialized(None, 0.1), "got NoneType"),
    "apply_gradients_pairs": (
        lambda c, w: c.apply_gradients(vs.train.GradientDescentOptimizer(0.1), [(1, w)]),
        r"argument 'grads' must be a dict \{variable: gradient\}, got list"),
    "apply_gradients_no_optimizer": (
        lambda c, w: c.apply_gradients(None, {w: np.ones((3, 2))}),
        "argument 'optimizer' must be an Optimizer"),
    "apply_gradients_step_by_name": (
        lambda c, w: c.apply_gradients(vs.train.GradientDescentOptimizer(0.1),
                                       {w: np.ones((3, 2))}, global_step="global_step"),
        "argument 'global_step' must hold variables"),
    "initialize_or_restore_one": (lambda c, w: c.initialize_or_restore(w),
                                  "argument 'variables' must be a list of variables"),
    "save_prefix_number": (lambda c, w: c.save(5), "argument 'prefix' must be a string"),
    "save_one_variable": (lambda c, w: c.save("m", var_list=w),
                          "Variables to save should be passed in a dict or a list"),
    "save_name_string": (lambda c, w: c.save("m", var_list="layer1/W"),
                         "Variables to save should be passed in a dict or a list. Got "
                         "'layer1/W'"),
    "restore_numbers": (lambda c, w: c.restore("m", var_list=[1]),
                        "var_list must hold variables or their full names, got int"),
    "latest_checkpoint_number": (lambda c, w: c.latest_checkpoint(1),
                                 "argument 'directory' must be a string"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_wrong_types_raise_a_type_error_naming_the_argument(
        client: vs.Client, w: vs.RemoteVariable, name: str) -> None:
    call, message = CALLS[name]
    with pytest.raises(TypeError, match=message):
        call(client, w)
    assert w.numpy().sum() == 0 and [i.version for i in client.list_variables()] == [0]


def test_names_where_documented_and_a_step_variable(client: vs.Client,
                                                    w: vs.RemoteVariable) -> None:
    step = vs.train.get_or_create_global_step(client)
    step.assign(7)
    assert client.save("m", global_step=step) == "m-7"  # TF's Saver reads a step variable
    client.wait_until_ready("layer1/W", timeout=1.0)  # one name, not its characters
    assert client.wait_initialized("layer1/W", 0.1) == []
    assert client.delete("layer1/W") == ["layer1/W"]


def test_asyncio_client_names_the_argument_too(address: str) -> None:
    async def run() -> list[str]:
        async with await varstore.aio.connect(address) as aclient:
            v = await aclient.Variable(np.zeros(2, np.float32), name="v")
            out = []
            loose: Any = aclient  # wrong types on purpose
            for bad in (lambda: loose.pull(["v"]), lambda: loose.push([(v, 1.0)]),
                        lambda: loose.list_variables(v)):
                try:
                    await bad()
                except TypeError as e:
                    out.append(str(e).split(" must ")[0])
            return out
    assert asyncio.run(run()) == ["pull() argument 'variables'", "push() argument 'values'",
                                  "argument 'scope'"]
