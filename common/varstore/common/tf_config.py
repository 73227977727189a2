"""TensorFlow's ``TF_CONFIG`` environment variable, as Kubeflow's TFJob and ``tf.distribute``
set it: ``{"cluster": {"ps": [...], "worker": [...], "chief": [...]}, "task": {"type":
"worker", "index": 0}}`` (TensorFlow's ``TFConfigClusterResolver`` reads the same keys and
ignores others, such as ``environment`` and ``rpc_layer``). One parser for the server (a ps
task's cluster) and the clients (the ps addresses; whether this task is the chief).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from varstore.common.errors import clip

TF_CONFIG = "TF_CONFIG"


@dataclass(frozen=True)
class TFConfig:
    """A parsed ``TF_CONFIG``: the cluster's addresses by task type, and this task's type
    (None when it names no task) and index."""

    cluster: dict[str, list[str]] = field(default_factory=dict)
    task_type: str | None = None
    task_index: int = 0

    def is_chief(self) -> bool:
        """Whether this task is the chief, as TensorFlow's ``MultiWorkerMirroredStrategy`` and
        TFJob decide: the ``chief`` task, or worker 0 of a cluster without one; a
        ``TF_CONFIG`` naming no task is a job of one process, its own chief."""
        if self.task_type is None or self.task_type == "chief":
            return True
        return (not self.cluster.get("chief") and self.task_type == "worker"
                and self.task_index == 0)


def parse_tf_config(text: str) -> TFConfig:
    """``TF_CONFIG``'s value ``text`` (empty: a TFConfig of nothing).

    Raises ``ValueError`` naming ``TF_CONFIG`` for malformed JSON, a value that is not an
    object, a ``cluster`` that is not an object of lists of addresses, a ``task`` that is not
    an object, a ``task.type`` that is not a string, a ``task.index`` that is not a
    non-negative integer or is past the addresses of its type.
    """
    if not text.strip():
        return TFConfig()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{TF_CONFIG} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{TF_CONFIG} must be a JSON object")
    cluster = config.get("cluster", {})
    if not isinstance(cluster, dict) or not all(
            isinstance(addresses, list) and all(isinstance(a, str) for a in addresses)
            for addresses in cluster.values()):
        raise ValueError(f"{TF_CONFIG} cluster must map task types to lists of addresses")
    task = config.get("task", {})
    if not isinstance(task, dict):
        raise ValueError(f"{TF_CONFIG} task must be a JSON object")
    kind = task.get("type")
    if kind is not None and not isinstance(kind, str):
        raise ValueError(f"{TF_CONFIG} task.type must be a string, got {clip(repr(kind))}")
    index = task.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValueError(f"{TF_CONFIG} task.index must be an integer >= 0, got "
                         f"{clip(repr(index))}")
    if kind in cluster and index >= len(cluster[kind]):
        raise ValueError(f"{TF_CONFIG} task.index {index} is past the {len(cluster[kind])} "
                         f"{clip(kind)} tasks of its cluster")
    return TFConfig(dict(cluster), kind, index)


def tf_config_of(environ: Mapping[str, str]) -> TFConfig:
    """``environ``'s ``TF_CONFIG`` parsed (see :func:`parse_tf_config`; unset: empty)."""
    return parse_tf_config(environ.get(TF_CONFIG, ""))
