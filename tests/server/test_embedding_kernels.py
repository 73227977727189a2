"""The server's lookups in partitioned variables and its concat, sent as raw requests: the
rows asked for, in the ids' order, and every malformed request refused with
InvalidArgumentError, the store unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import varstore as vs
from tests.server.test_memory_budget import settled
from varstore import dtypes
from varstore.errors import InvalidArgumentError, ResourceExhaustedError
from varstore.request import RequestBuilder

F32, I64 = dtypes.float32, dtypes.int64
FULL = np.arange(20, dtype=np.float32).reshape(10, 2)
# fixed_size_partitioner(3)'s parts of a [10, 2] variable: 4, 3 and 3 rows.
SIZES = [4, 3, 3]


@pytest.fixture
def parts(client: vs.Client) -> list[str]:
    b = RequestBuilder()
    names = []
    for p, (start, rows) in enumerate(zip([0, 4, 7], SIZES, strict=True)):
        name = f"emb/part_{p}"
        b.variable(name, F32, (rows, 2), initializer=b.const(FULL[start:start + rows], F32))
        names.append(name)
    client.run(b)
    return names


def _lookup(client: vs.Client, parts: list[str], ids: Any, strategy: str = "div",
            sizes: list[int] | None = None, **stitch: Any) -> np.ndarray:
    b = RequestBuilder()
    idx = b.const(np.asarray(ids, np.int64), I64)
    part_sizes = b.const(np.asarray(sizes or SIZES, np.int64), I64)
    rows = [b.node("partition_gather", [part_sizes, idx], variable=name, part=p,
                   strategy=strategy) for p, name in enumerate(parts)]
    b.fetch(b.node("partition_stitch", [idx, part_sizes, *rows], strategy=strategy, **stitch))
    return client.run(b)[0][0]


def test_lookups_give_the_rows_of_the_full_variable(client: vs.Client,
                                                    parts: list[str]) -> None:
    ids = [[9, 0], [4, 3], [7, 7]]
    np.testing.assert_array_equal(_lookup(client, parts, ids), FULL[np.asarray(ids)])
    # "mod": id i is row i // 3 of part i % 3.
    mod = _lookup(client, parts, [0, 1, 2, 9], "mod")
    np.testing.assert_array_equal(mod, [FULL[0], FULL[4], FULL[7], FULL[3]])
    assert _lookup(client, parts, np.zeros([0], np.int64)).shape == (0, 2)


@pytest.mark.parametrize("ids,strategy", [([10], "div"), ([-1], "div"), ([-1], "mod"),
                                          ([10], "mod"), ([2 ** 62], "div")])
def test_ids_out_of_range_are_refused(client: vs.Client, parts: list[str], ids: list[int],
                                      strategy: str) -> None:
    with pytest.raises(InvalidArgumentError, match="is not in|not in"):
        _lookup(client, parts, ids, strategy)


@pytest.mark.parametrize("layout,message", [
    ({"strategy": "range"}, "partition_strategy must be"),
    ({"sizes": [4, 3]}, r"part 2 is not in \[0, 2\)"),
    ({"sizes": [4, 3, -3]}, "part sizes must be 0 or more"),
    ({"sizes": [2 ** 61, 2 ** 61, 3]}, "summing to less than 2\\*\\*62"),
    ({"sizes": [5, 3, 2]}, "has shape"),
])
def test_malformed_layouts_are_refused(client: vs.Client, parts: list[str],
                                       layout: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        _lookup(client, parts, [0, 1], layout.get("strategy", "div"), layout.get("sizes"))
    np.testing.assert_array_equal(_lookup(client, parts, list(range(10))), FULL)


def test_a_part_index_outside_the_layout_is_refused(client: vs.Client,
                                                    parts: list[str]) -> None:
    b = RequestBuilder()
    idx = b.const(np.asarray([0], np.int64), I64)
    part_sizes = b.const(np.asarray(SIZES, np.int64), I64)
    b.fetch(b.node("partition_gather", [part_sizes, idx], variable=parts[0], part=3,
                   strategy="div"))
    with pytest.raises(InvalidArgumentError, match=r"part 3 is not in \[0, 3\)"):
        client.run(b)


def test_rows_that_do_not_match_their_ids_are_refused(client: vs.Client) -> None:
    b = RequestBuilder()
    idx = b.const(np.asarray([0, 2], np.int64), I64)  # both in part 0
    one_row = b.const(np.zeros((1, 2), np.float32), F32)
    part_sizes = b.const(np.asarray([2, 2], np.int64), I64)
    b.fetch(b.node("partition_stitch", [idx, part_sizes, one_row, one_row], strategy="mod"))
    with pytest.raises(InvalidArgumentError, match="gave 1 rows for"):
        client.run(b)


def test_many_large_parts_are_looked_up(client: vs.Client) -> None:
    # 40 parts of 2**40 rows each: a list of sizes, not an array shape.
    b = RequestBuilder()
    idx = b.const(np.asarray([5, 2 ** 40 + 3], np.int64), I64)
    sizes = b.const(np.full(40, 2 ** 40, np.int64), I64)
    params = b.const(np.arange(8, dtype=np.float32).reshape(4, 2), F32)
    b.fetch(b.node("partition_gather", [params, sizes, idx], part=0, strategy="div"))
    with pytest.raises(InvalidArgumentError, match="has shape"):
        client.run(b)


def test_the_scratch_of_a_lookup_is_charged(tmp_path: Path) -> None:
    from varstore.server import ServerConfig, create_server
    server = create_server(ServerConfig(host="127.0.0.1", port=0, max_memory=64 << 20,
                                        checkpoint_dir=tmp_path / "ckpt"))
    server.start()
    try:
        with vs.connect(f"127.0.0.1:{server.port}") as small:
            b = RequestBuilder()
            idx = b.const(np.zeros(4 << 20, np.int64), I64)  # 32 MB of ids, within the limit
            sizes = b.const(np.asarray([1, 1], np.int64), I64)
            params = b.const(np.zeros((1, 1), np.float32), F32)
            b.fetch(b.node("partition_gather", [params, sizes, idx], part=0, strategy="mod"))
            with pytest.raises(ResourceExhaustedError):
                small.run(b)
            assert settled(server, 0) == 0
    finally:
        server.stop(grace=1.0)


def test_max_norm_clips_rows(client: vs.Client, parts: list[str]) -> None:
    got = _lookup(client, parts, [0, 9], max_norm=5.0)
    norms = np.linalg.norm(FULL[[0, 9]], axis=1, keepdims=True)
    np.testing.assert_allclose(got, FULL[[0, 9]] * 5.0 / np.maximum(norms, 5.0), rtol=1e-6)


def test_concat(client: vs.Client) -> None:
    b = RequestBuilder()
    a, c = b.const(np.ones((1, 2), np.float32), F32), b.const(np.zeros((2, 2), np.float32), F32)
    b.fetch(b.node("concat", [a, c], axis=0))
    b.fetch(b.node("concat", [c, c], axis=-1))
    first, second = client.run(b)[0]
    assert first.tolist() == [[1, 1], [0, 0], [0, 0]] and second.shape == (2, 4)
    for inputs, axis, message in [([a, c], 1, "must be equal"), ([a, c], 2, "in the range"),
                                  ([], 0, "at least one input")]:
        b = RequestBuilder()
        a, c = b.const(np.ones((1, 2), np.float32), F32), b.const(np.zeros((2, 2), np.float32),
                                                                   F32)
        b.fetch(b.node("concat", [x for x in (a, c)][:len(inputs)], axis=axis))
        with pytest.raises(InvalidArgumentError, match=message):
            client.run(b)
