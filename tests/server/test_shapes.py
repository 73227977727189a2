"""One shape check for every input channel: a shape no array can have (rank over MAX_RANK,
or non-zero dimensions whose product times the item size passes numpy's 2**63, even with a
zero dimension) is a clear error on the wire (InvalidArgument) and in a checkpoint file
(DataLoss), never numpy's ValueError surfacing as INTERNAL."""

from __future__ import annotations

from pathlib import Path

import pytest

import varstore as vs
from varstore.common import dtypes
from varstore.common.codec import MAX_RANK, check_shape
from varstore.common.errors import DataLossError, InvalidArgumentError
from varstore.errors import DataLossError as ClientDataLoss
from varstore.proto import tensor_bundle_pb2 as pb
from varstore.server.app import Server
from varstore.server.bundle import BundleReader, data_path, index_path
from varstore.server.bundle.table import TableBuilder

CRAFTED = {
    "rank_over_max": ([1] * (MAX_RANK + 8), dtypes.float32, 4),
    "rank_65_of_zeros": ([0] * 65, dtypes.float32, 0),
    "zero_by_2_to_62": ([0, 2 ** 62], dtypes.float32, 0),
    "strings_2_to_62_by_zero": ([2 ** 62, 0], dtypes.string, 0),
}


@pytest.mark.parametrize("shape, dtype", [
    ([1] * (MAX_RANK + 1), dtypes.float32), ([0, 2 ** 61], dtypes.float32),
    ([2 ** 60, 0], dtypes.string), ([0, -1], dtypes.int8), ([2 ** 64], dtypes.int8)])
def test_impossible_shapes_are_refused_with_the_callers_error(shape: list[int],
                                                              dtype: dtypes.DType) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^shape \["):
        check_shape(shape, dtype)
    with pytest.raises(DataLossError, match=r"^tensor x: shape \["):
        check_shape(shape, dtype, DataLossError, "tensor x: shape")


def test_the_largest_shapes_numpy_accepts_pass() -> None:
    assert check_shape([0, 2 ** 60], dtypes.float32) == (0, 2 ** 60)
    assert check_shape([0, 2 ** 63 - 1], dtypes.int8) == (0, 2 ** 63 - 1)
    assert check_shape([0] * MAX_RANK, dtypes.string) == (0,) * MAX_RANK


def _crafted(prefix: Path, shape: list[int], dtype: dtypes.DType, size: int) -> None:
    entry = pb.BundleEntryProto(dtype=dtype.enum, offset=0, size=size)
    entry.shape.SetInParent()
    for d in shape:
        entry.shape.dim.add(size=d)
    header = pb.BundleHeaderProto(num_shards=1, version=pb.VersionDef(producer=1))
    builder = TableBuilder()
    builder.add(b"", header.SerializeToString())
    builder.add(b"x", entry.SerializeToString())
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(index_path(prefix)).write_bytes(builder.finish())
    Path(data_path(prefix, 0, 1)).write_bytes(b"\0" * size)


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_a_crafted_checkpoint_shape_is_data_loss(tmp_path: Path, name: str) -> None:
    _crafted(tmp_path / name, *CRAFTED[name])
    with BundleReader(str(tmp_path / name)) as reader, \
            pytest.raises(DataLossError, match=r"tensor x in .*: shape \["):
        reader.read("x")


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_restoring_a_crafted_shape_is_data_loss_and_changes_nothing(
        server: Server, client: vs.Client, name: str) -> None:
    _crafted(Path(server.checkpoints.folder.root) / name / "ck", *CRAFTED[name])
    with pytest.raises(ClientDataLoss, match=r"tensor x in .*: shape \["):
        client.restore(f"{name}/ck")
    assert client.list_variables() == []


def test_a_request_of_an_impossible_shape_is_invalid_argument(client: vs.Client) -> None:
    with pytest.raises(vs.errors.InvalidArgumentError, match=r"\[0, 2305843009\d+\] is too large"):
        client.get_variable("v", shape=[0, 2 ** 61], dtype=vs.float32,
                            initializer=vs.zeros_initializer())
    assert client.list_variables() == []
