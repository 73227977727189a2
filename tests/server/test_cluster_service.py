"""``varstore.v1.ClusterService`` on a single server: it is no cluster, and the checkpoint
steps a cluster's save uses never touch a finished checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

import varstore as vs
from varstore.proto import cluster_pb2 as cpb
from varstore.proto import cluster_pb2_grpc as cpb_grpc
from varstore.server.app import Server


def stub(client: vs.Client) -> cpb_grpc.ClusterServiceStub:
    return cpb_grpc.ClusterServiceStub(client.transport.channel)


def test_a_single_server_is_no_cluster(client: vs.Client) -> None:
    assert list(stub(client).ClusterInfo(cpb.ClusterInfoRequest()).shards) == []
    with pytest.raises(grpc.RpcError) as e:
        stub(client).Place(cpb.PlaceRequest(variables=[cpb.Placement(name="v", shard=-1)]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "the placement table is kept by shard 0 of a cluster"


@pytest.mark.parametrize("request_", [
    cpb.CommitPartsRequest(part_prefixes=["model"], abort=True),
    cpb.CommitPartsRequest(part_prefixes=["model"], prefix="other"),
    cpb.SavePartRequest(part_prefix="model"),
], ids=["abort", "commit", "save"])
def test_parts_must_be_marked_temporary(client: vs.Client, server: Server,
                                        request_: object) -> None:
    client.Variable(1.0, name="v")
    client.save("model")
    folder = Path(server.checkpoints.directory)
    before = sorted(os.listdir(folder))
    method = stub(client).SavePart if isinstance(request_, cpb.SavePartRequest) \
        else stub(client).CommitParts
    with pytest.raises(grpc.RpcError) as e:
        method(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == \
        "checkpoint part 'model' is not named PREFIX.tempstateTOKEN_part-0000I-of-0000N"
    assert sorted(os.listdir(folder)) == before
    assert client.latest_checkpoint() == "model"
