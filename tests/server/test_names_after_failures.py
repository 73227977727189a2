"""A variable the server refuses leaves the client's naming state as it was: the next,
correct ``Variable(name=...)`` binds to the server's variable of that name instead of making
``name_1``; a refused ``get_variable`` records nothing. Blocking and asyncio clients."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import varstore as vs
import varstore.aio
from varstore.errors import InvalidArgumentError


def test_a_refused_variable_gives_its_name_back(client: vs.Client, address: str) -> None:
    with vs.connect(address) as other:
        other.Variable([1.0, 2.0], name="zz")
        with other.variable_scope("s"):
            other.get_variable("b", initializer=np.int32(3))
    with pytest.raises(InvalidArgumentError, match="Trying to share variable zz"):
        client.Variable([1.0, 2.0, 3.0], name="zz")
    v = client.Variable([5.0, 6.0], name="zz")
    assert (v.name, v.numpy().tolist()) == ("zz:0", [1.0, 2.0])  # bound, not re-initialized
    assert client.Variable([0.0, 0.0], name="zz").name == "zz_1:0"  # zz is taken now
    with client.variable_scope("s"):
        with pytest.raises(InvalidArgumentError, match="Trying to share variable s/b"):
            client.get_variable("b", [2])
        assert client.get_variable("b", initializer=np.int32(7)).numpy() == 3
    assert sorted(i.name for i in client.list_variables()) == ["s/b", "zz", "zz_1"]


def test_a_refused_variable_gives_its_name_back_in_asyncio(client: vs.Client,
                                                         address: str) -> None:
    client.Variable([1.0, 2.0], name="zz")

    async def run() -> list[str]:
        async with await varstore.aio.connect(address) as aclient:
            failing = aclient.Variable([1.0, 2.0, 3.0], name="zz")  # takes zz
            other = aclient.Variable([1.0], name="zz")  # zz_1, while the first is in flight
            results = await asyncio.gather(failing, other, return_exceptions=True)
            assert isinstance(results[0], InvalidArgumentError)
            again = await aclient.Variable([3.0, 4.0], name="zz")
            after = await aclient.Variable([3.0], name="zz")
            assert not isinstance(results[1], BaseException)
            return [results[1].name, again.name, after.name]
    assert asyncio.run(run()) == ["zz_1:0", "zz:0", "zz_2:0"]
