"""TF_CONFIG as TFJob sets it: one parser, clear errors naming TF_CONFIG for every malformed
value, the chief decided as TensorFlow decides it."""

from __future__ import annotations

import json

import pytest

from varstore.common.tf_config import TFConfig, parse_tf_config

CLUSTER = {"chief": ["c:1"], "worker": ["w0:1", "w1:1"], "ps": ["p0:1", "p1:1"]}


@pytest.mark.parametrize("text, error", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ("[1]", "TF_CONFIG must be a JSON object"),
    ('"worker"', "TF_CONFIG must be a JSON object"),
    ('{"cluster": ["p:1"]}', "TF_CONFIG cluster must map task types to lists of addresses"),
    ('{"cluster": {"ps": "p:1"}}', "TF_CONFIG cluster must map task types to lists"),
    ('{"cluster": {"ps": [1]}}', "TF_CONFIG cluster must map task types to lists"),
    ('{"task": "worker"}', "TF_CONFIG task must be a JSON object"),
    ('{"task": {"type": 3}}', "TF_CONFIG task.type must be a string, got 3"),
    ('{"task": {"type": "worker", "index": "x"}}', "task.index must be an integer >= 0, got 'x'"),
    ('{"task": {"type": "worker", "index": true}}', "task.index must be an integer >= 0"),
    ('{"task": {"type": "worker", "index": -1}}', "task.index must be an integer >= 0, got -1"),
    ('{"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": 1}}',
     "TF_CONFIG task.index 1 is past the 1 worker tasks of its cluster"),
])
def test_malformed_values_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_tf_config(text)


@pytest.mark.parametrize("task, chief", [
    (None, True),                                  # no task: a job of one process
    ({"type": "chief", "index": 0}, True),
    ({"type": "worker", "index": 0}, False),       # the cluster has a chief
    ({"type": "worker", "index": 1}, False),
    ({"type": "ps", "index": 0}, False),
])
def test_the_chief_is_the_chief_task(task: dict[str, object] | None, chief: bool) -> None:
    config = {"cluster": CLUSTER, **({"task": task} if task else {})}
    assert parse_tf_config(json.dumps(config)).is_chief() is chief


def test_without_a_chief_task_worker_0_is_the_chief() -> None:
    cluster = {k: v for k, v in CLUSTER.items() if k != "chief"}
    for index, chief in ((0, True), (1, False)):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index},
                  "environment": "cloud", "rpc_layer": "grpc"}  # other keys, ignored as TF does
        assert parse_tf_config(json.dumps(config)).is_chief() is chief


def test_empty_is_nothing() -> None:
    assert parse_tf_config("") == parse_tf_config("  ") == TFConfig()
