"""Placement of variables on a cluster's shards, the cluster settings, and request splitting
(no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from varstore.common import dtypes
from varstore.common.errors import InvalidArgumentError
from varstore.request import RequestBuilder
from varstore.routing import Plan
from varstore.server.budget import MemoryBudget
from varstore.server.cluster import (
    ClusterSpec,
    PlacementTable,
    cluster_settings,
    greedy_placement,
    spec_from_tf_config,
)
from varstore.server.store import VARIABLE_BYTES

F32 = 4


def bert_base(parts: int) -> list[tuple[str, int]]:
    """BERT-base's variables and bytes in creation order, the word embeddings split in
    ``parts`` as TensorFlow's fixed_size_partitioner splits rows (the first ones get one more)."""
    rows, hidden, ff = 30522, 768, 3072
    sizes = [(f"bert/embeddings/word_embeddings/part_{p}",
              (rows // parts + (p < rows % parts)) * hidden * F32) for p in range(parts)]
    sizes += [("bert/embeddings/position_embeddings", 512 * hidden * F32),
              ("bert/embeddings/token_type_embeddings", 2 * hidden * F32),
              ("bert/embeddings/LayerNorm/gamma", hidden * F32),
              ("bert/embeddings/LayerNorm/beta", hidden * F32)]
    for layer in range(12):
        pre = f"bert/encoder/layer_{layer}"
        for name in ("query", "key", "value"):
            sizes += [(f"{pre}/attention/self/{name}/kernel", hidden * hidden * F32),
                      (f"{pre}/attention/self/{name}/bias", hidden * F32)]
        sizes += [(f"{pre}/attention/output/dense/kernel", hidden * hidden * F32),
                  (f"{pre}/attention/output/dense/bias", hidden * F32),
                  (f"{pre}/attention/output/LayerNorm/gamma", hidden * F32),
                  (f"{pre}/attention/output/LayerNorm/beta", hidden * F32),
                  (f"{pre}/intermediate/dense/kernel", hidden * ff * F32),
                  (f"{pre}/intermediate/dense/bias", ff * F32),
                  (f"{pre}/output/dense/kernel", ff * hidden * F32),
                  (f"{pre}/output/dense/bias", hidden * F32),
                  (f"{pre}/output/LayerNorm/gamma", hidden * F32),
                  (f"{pre}/output/LayerNorm/beta", hidden * F32)]
    return sizes + [("bert/pooler/dense/kernel", hidden * hidden * F32),
                    ("bert/pooler/dense/bias", hidden * F32)]


def resnet50() -> list[tuple[str, int]]:
    """Keras ResNet50's variables (convolutions with biases, batch norm's four per layer) and
    bytes."""
    sizes: list[tuple[str, int]] = []

    def conv(name: str, k: int, cin: int, cout: int) -> None:
        sizes.extend([(f"{name}/kernel", k * k * cin * cout * F32), (f"{name}/bias", cout * F32)])
        sizes.extend((f"{name}_bn/{s}", cout * F32)
                     for s in ("gamma", "beta", "moving_mean", "moving_variance"))

    conv("conv1", 7, 3, 64)
    cin = 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512],
                                                strict=True)):
        for block in range(blocks):
            pre = f"conv{stage + 2}_block{block + 1}"
            if block == 0:
                conv(f"{pre}_0", 1, cin, 4 * width)
            conv(f"{pre}_1", 1, cin, width)
            conv(f"{pre}_2", 3, width, width)
            conv(f"{pre}_3", 1, width, 4 * width)
            cin = 4 * width
    return sizes + [("predictions/kernel", 2048 * 1000 * F32), ("predictions/bias", 1000 * F32)]


def fullest_over_mean(sizes: list[tuple[str, int]], shards: int) -> float:
    load = [0] * shards
    for (_, nbytes), shard in zip(sizes, greedy_placement(sizes, shards), strict=True):
        load[shard] += nbytes
    return max(load) / (sum(load) / shards)


@pytest.mark.parametrize("shards", [2, 3, 4, 5])
def test_bert_base_with_partitioned_embeddings_is_balanced(shards: int) -> None:
    sizes = bert_base(shards)
    assert sum(n for _, n in sizes) == 109_482_240 * F32
    assert fullest_over_mean(sizes, shards) <= 1.25


@pytest.mark.parametrize("shards", [2, 3, 4, 5])
def test_resnet50_is_balanced(shards: int) -> None:
    sizes = resnet50()
    assert sum(n for _, n in sizes) == 25_636_712 * F32
    assert fullest_over_mean(sizes, shards) <= 1.25


def test_unpartitioned_embedding_alone_cannot_be_balanced() -> None:
    # Why big embeddings are partitioned: whole, BERT's word embeddings outweigh an eighth.
    assert fullest_over_mean(bert_base(1), 8) > 1.25
    assert fullest_over_mean(bert_base(8), 8) <= 1.25


def test_table_places_by_bytes_and_first_answer_is_final() -> None:
    table = PlacementTable(3)
    assert [table.place(n, b) for n, b in [("a", 100), ("b", 10), ("c", 10), ("d", 5)]] == \
        [0, 1, 2, 1]
    assert table.place("a", 1) == 0
    assert table.bytes_per_shard() == [100, 15, 10]


def test_table_colocates_slots_and_honours_pins() -> None:
    table = PlacementTable(3)
    assert table.place("n/W", 100, shard=2) == 2
    assert table.place("n/W/Adam", 100) == 2
    assert table.place("n/W/Adam_1", 100) == 2
    assert table.place("beta1_power", 4, colocate_with="n/W") == 2
    assert table.place("other", 1) == 0
    assert table.place("unknown", lookup_only=True) == -1
    with pytest.raises(InvalidArgumentError, match="shard 3 of variable x is not in a cluster "
                       "of 3 shards"):
        table.place("x", 1, shard=3)


def test_tf_config_for_a_ps_task() -> None:
    config = {"cluster": {"ps": ["ps-0:7011", "ps-1:7011"], "worker": ["w-0:2222"]},
              "task": {"type": "ps", "index": 1}}
    assert spec_from_tf_config(json.dumps(config)) == \
        ClusterSpec(("ps-0:7011", "ps-1:7011"), 1)
    values: dict[str, object] = {}
    cluster_settings(values, {"TF_CONFIG": json.dumps(config)})
    assert values == {"cluster": ("ps-0:7011", "ps-1:7011"), "task_index": 1, "port": 7011}


@pytest.mark.parametrize(("config", "message"), [
    ("{", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["w:1"]}}', "TF_CONFIG has no cluster.ps"),
    ('{"cluster": {"ps": ["ps0"]}, "task": {"type": "ps", "index": 0}}',
     "^TF_CONFIG: cluster address 'ps0' is not HOST:PORT"),
    ('{"cluster": {"ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}',
     "names task type 'worker': varstore serve runs the ps tasks"),
    ('{"cluster": {"ps": ["p:1"]}, "task": {"type": "ps", "index": 3}}',
     "TF_CONFIG task.index 3 is past the 1 ps tasks of its cluster"),
])
def test_bad_tf_config_is_refused(config: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_from_tf_config(config)


def test_bad_cluster_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="'nohost' is not HOST:PORT"):
        cluster_settings({"cluster": "a:1,nohost"})
    with pytest.raises(ValueError, match="distinct"):
        cluster_settings({"cluster": "a:1,a:1"})


def _cross_shard_request() -> RequestBuilder:
    """``y += x + 1; fetch x + 1`` with x on shard 1 and y on shard 2."""
    b = RequestBuilder()
    plus = b.node("add", [b.node("read", variable="x"),
                          b.const(np.float32(1), dtypes.float32)])
    b.fetch(plus)
    b.target(b.node("assign_add", [plus], variable="y"))
    return b


def test_one_shard_request_is_sent_unchanged() -> None:
    plan = Plan(_cross_shard_request(), lambda name: 1)
    assert plan.single_shard() == 1


def test_value_crossing_shards_runs_in_two_stages() -> None:
    plan = Plan(_cross_shard_request(), {"x": 1, "y": 2}.__getitem__)
    assert plan.single_shard() is None and plan.stages == 2
    (first,) = plan.parts(0, {})
    assert first.shard == 1 and [n.op for n in first.builder.nodes] == ["read", "const", "add"]
    assert first.fetched == [2]
    (second,) = plan.parts(1, {2: np.float32(11)})
    assert second.shard == 2
    assert [n.op for n in second.builder.nodes] == ["const", "assign_add"]
    assert second.builder.arrays[0][0] == np.float32(11)
    assert second.builder.targets == [1] and second.fetched == []


def test_independent_parts_run_in_one_stage() -> None:
    b = RequestBuilder()
    for name in ("a", "b", "c"):
        b.fetch(b.node("read", variable=name))
    plan = Plan(b, {"a": 0, "b": 1, "c": 0}.__getitem__)
    assert plan.stages == 1
    assert [(p.shard, p.fetched) for p in plan.parts(0, {})] == [(0, [0, 2]), (1, [1])]


def test_slot_reference_on_another_shard_is_refused() -> None:
    b = RequestBuilder()
    slot = b.node("ref", variable="W/Momentum")
    lr, grad, mom = (b.const(np.float32(v), dtypes.float32) for v in (0.1, 1.0, 0.9))
    b.target(b.node("apply_momentum", [slot, lr, grad, mom], variable="W"))
    plan_error = "apply_momentum of W \\(shard 0\\) takes a reference to W/Momentum on shard 1"
    with pytest.raises(InvalidArgumentError, match=plan_error):
        Plan(b, {"W": 0, "W/Momentum": 1}.__getitem__)


def test_greedy_load_balancing_strategy_by_bytes() -> None:
    import varstore.v1 as tf
    from varstore.v1.device_setter import GreedyLoadBalancingStrategy, byte_size_load_fn
    graph = tf.Graph()
    with graph.as_default():
        strategy = GreedyLoadBalancingStrategy(2, byte_size_load_fn)
        with tf.device(tf.train.replica_device_setter(ps_tasks=2, ps_strategy=strategy)):
            variables = [tf.get_variable(f"w{i}", shape=shape) for i, shape in
                         enumerate([(1000, 10), (10, 10), (10, 10), (500, 10), (5, 5)])]
    assert [v.op.device for v in variables] == [
        "/job:ps/task:0", "/job:ps/task:1", "/job:ps/task:1", "/job:ps/task:1",
        "/job:ps/task:1"]


def test_workers_find_the_first_ps_task_in_tf_config() -> None:
    from varstore.placement import task_of
    from varstore.transport import tf_config_address
    config = {"cluster": {"ps": ["ps-0:2222", "ps-1:2222"], "worker": ["w-0:2222"]},
              "task": {"type": "worker", "index": 0}}
    assert tf_config_address({"TF_CONFIG": json.dumps(config)}) == "ps-0:2222"
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        tf_config_address({"TF_CONFIG": "{not json"})
    assert tf_config_address({}) is None
    # Where a client's address came from, which its errors name.
    from varstore.transport import resolve_address
    assert resolve_address("h:1", {"VARSTORE_ADDRESS": "e:2"}) == ("h:1", "")
    assert resolve_address(None, {"VARSTORE_ADDRESS": "e:2", "TF_CONFIG": json.dumps(config)}
                           ) == ("e:2", "$VARSTORE_ADDRESS")
    assert resolve_address("", {"TF_CONFIG": json.dumps(config)}) == \
        ("ps-0:2222", "TF_CONFIG's cluster.ps[0]")
    assert resolve_address(None, {}) == \
        ("localhost:7011", "the default; no address given, $VARSTORE_ADDRESS unset")
    assert [task_of("/job:ps/task:2"), task_of("/job:ps"), task_of("")] == [2, None, None]
    with pytest.raises(ValueError, match="the task must be a number"):
        task_of("/job:ps/task:x")


def test_a_shard_owns_its_own_parts_and_shard_0_the_rest() -> None:
    from varstore.server.cluster import ClusterSpec
    shards = ("h:1", "h:2", "h:3")
    part = "m-3.tempstate0123abcd_part-{:05d}-of-{:05d}.index"
    commit = "m-3.tempstate-commit.index"
    owners = {k: [n for n in (part.format(0, 3), part.format(1, 3), part.format(2, 3),
                              part.format(1, 2) + ".tempstate-vs9", commit)
                  if ClusterSpec(shards, k).owns_leftover(n)] for k in range(3)}
    assert owners == {0: [part.format(0, 3), part.format(1, 2) + ".tempstate-vs9", commit],
                      1: [part.format(1, 3), part.format(1, 2) + ".tempstate-vs9"],
                      2: [part.format(2, 3)]}
    assert ClusterSpec(("h:1",), 0).owns_leftover(part.format(1, 3))


def test_a_shard_owns_the_leftovers_of_its_own_snapshot() -> None:
    from varstore.server.cluster import ClusterSpec
    shards = ("h:1", "h:2", "h:3")
    assert ClusterSpec(shards, 1).snapshot == ".shard-00001-of-00003.snapshot"
    leftover = ".shard-00001-of-00003.snapshot.tempstate-commit.data-00000-of-00001"
    assert [k for k in range(3) if ClusterSpec(shards, k).owns_leftover(leftover)] == [1]


def test_forgetting_names_gives_their_charge_and_bytes_back() -> None:
    budget = MemoryBudget(limit=1 << 20)
    table = PlacementTable(2, budget)
    assert [table.place(n, b) for n, b in [("a", 100), ("b", 10), ("b/Adam", 10)]] == [0, 1, 1]
    epoch, used = table.epoch, budget.used
    assert table.forget(["b", "b", "unknown"]) == 1
    assert table.epoch != epoch  # a client that looked b up before must look again
    assert budget.used == used - (VARIABLE_BYTES + 1)
    assert table.bytes_per_shard() == [100, 10]
    assert table.place("b", lookup_only=True) == -1
    epoch = table.epoch
    assert table.forget(["unknown"]) == 0 and table.epoch == epoch
    assert table.forget(["a", "b/Adam"]) == 2
    assert budget.used == 0 and table.size() == 0 and table.bytes_per_shard() == [0, 0]
    for i in range(5000):  # placing and forgetting forever stays within the budget
        table.place(f"tmp/{i}" + "x" * 1000)
        table.forget([f"tmp/{i}" + "x" * 1000])
    assert budget.used == 0
