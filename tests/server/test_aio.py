"""The asyncio client against a real server on localhost:0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

import varstore as vs
import varstore.aio
from varstore.common import codec
from varstore.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError


@pytest.fixture
async def aclient(address: str) -> AsyncIterator[varstore.aio.Client]:
    async with await varstore.aio.connect(address) as c:
        yield c


async def test_names_scopes_and_values_match_the_eager_client(
        aclient: varstore.aio.Client) -> None:
    with aclient.variable_scope("layer1"):
        w = await aclient.get_variable("W", [2, 3], initializer=vs.ones_initializer)
        with aclient.name_scope("inner"):
            b = await aclient.get_variable("b", [3], initializer=vs.zeros_initializer)
            v = await aclient.Variable(7, name="v")
    again = await aclient.Variable(8, name="v")
    assert [x.name for x in (w, b, v, again)] == ["layer1/W:0", "layer1/b:0",
                                                  "layer1/inner/v:0", "v:0"]
    with aclient.variable_scope("layer1", reuse=True):
        assert await aclient.get_variable("W") is w
    with pytest.raises(ValueError, match=r"^Variable layer1/W already exists, disallowed"):
        with aclient.variable_scope("layer1"):
            await aclient.get_variable("W", [2, 3])
    assert (await w.numpy()).tolist() == [[1, 1, 1], [1, 1, 1]]
    assert int(await v.numpy()) == 7 and v.dtype == vs.int32
    assert [i.name for i in await aclient.list_variables("layer1")] == [
        "layer1/W", "layer1/b", "layer1/inner/v"]


async def test_names_resolve_when_the_call_is_made(aclient: varstore.aio.Client) -> None:
    with aclient.variable_scope("outer"):
        pending = aclient.get_variable("late", [1])
    assert (await pending).name == "outer/late:0"


async def test_concurrent_assign_add_loses_nothing(address: str,
                                                   aclient: varstore.aio.Client) -> None:
    counter = await aclient.get_variable("counter", [], dtype=vs.int64,
                                         initializer=vs.zeros_initializer)
    async with await varstore.aio.connect(address) as other:
        with other.variable_scope("", reuse=True):
            same = await other.get_variable("counter", [], dtype=vs.int64)
        await asyncio.gather(*(counter.assign_add(1) for _ in range(300)),
                             *(same.assign_add(2) for _ in range(200)))
    assert int(await counter.numpy()) == 300 + 400


async def test_pipelined_ops_of_every_kind(aclient: varstore.aio.Client) -> None:
    table = await aclient.get_variable("table", [6, 2], initializer=vs.zeros_initializer)
    vec = await aclient.get_variable("vec", [4], initializer=vs.zeros_initializer)
    other = await aclient.get_variable("other", [4], initializer=vs.zeros_initializer)
    flag = await aclient.get_variable("flag", [], dtype=vs.bool_, initializer=vs.zeros_initializer)
    results = await asyncio.gather(
        table.scatter_add([0, 0, 5], np.ones((3, 2))),
        flag.assign(True),
        aclient.push({other: [1, 2, 3, 4]}),
        *(vec.assign_add(np.ones(4)) for _ in range(10)),
        *(vec.assign_sub(np.full(4, 0.5)) for _ in range(4)),
    )
    assert results[0] is table and results[1] is flag and results[2] is None
    rows, full, (value, pushed), final = await asyncio.gather(
        table.gather([0, 5, 1]), table.numpy(), aclient.pull([flag, other]), vec.numpy())
    assert rows.tolist() == [[2, 2], [1, 1], [0, 0]]
    assert full.tolist() == [[2, 2], [0, 0], [0, 0], [0, 0], [0, 0], [1, 1]]
    assert bool(value) is True and pushed.tolist() == [1, 2, 3, 4]
    assert final.tolist() == [8, 8, 8, 8]
    assert await flag.is_initialized()


@pytest.mark.parametrize("dtype", [vs.float32, vs.int8, vs.float64, vs.bfloat16])
async def test_big_tensors_stream_both_ways(aclient: varstore.aio.Client,
                                            dtype: vs.DType) -> None:
    n = (3 * codec.STREAM_THRESHOLD) // max(dtype.itemsize, 1) + 5
    value = (np.arange(n) % 101).astype(dtype.np_dtype)
    big = await aclient.get_variable(f"big_{dtype.name}", [n], dtype=dtype,
                                     initializer=vs.zeros_initializer)
    other = await aclient.get_variable(f"other_{dtype.name}", [n], dtype=dtype,
                                       initializer=vs.zeros_initializer)
    await asyncio.gather(big.assign(value), aclient.push({other: value[::-1].copy()}))
    pulled, (a, b) = await asyncio.gather(big.numpy(), aclient.pull([big, other]))
    assert pulled.dtype == dtype.np_dtype and np.array_equal(pulled, value)
    assert np.array_equal(a, value) and np.array_equal(b, value[::-1])


async def test_errors_are_varstore_errors(aclient: varstore.aio.Client) -> None:
    with aclient.deferred_initialization():
        lazy = await aclient.get_variable("lazy", [2])
    with pytest.raises(FailedPreconditionError, match="uninitialized value lazy"):
        await lazy.numpy()
    v = await aclient.get_variable("v", [3], initializer=vs.zeros_initializer)
    with pytest.raises(InvalidArgumentError, match=r"index 7 is not in \[0, 3\)"):
        await v.scatter_add([7], np.ones(1))
    with pytest.raises(ValueError, match=r"^Variable nowhere does not exist"):
        with aclient.variable_scope("", reuse=True):
            await aclient.get_variable("nowhere", [1])
    assert (await v.numpy()).tolist() == [0, 0, 0]


async def test_unreachable_server_names_the_address() -> None:
    with pytest.raises(UnavailableError, match="no varstore server at 127.0.0.1:1"):
        await varstore.aio.connect("127.0.0.1:1", timeout=0.5)


async def test_eager_and_asyncio_clients_share_variables(client: vs.Client,
                                                         aclient: varstore.aio.Client) -> None:
    w = client.get_variable("shared", [3], initializer=vs.constant_initializer(2.0))
    with aclient.variable_scope("", reuse=True):
        aw = await aclient.get_variable("shared", [3])
    await aw.assign_add(np.ones(3))
    assert w.numpy().tolist() == [3, 3, 3]
