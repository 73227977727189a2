"""The cluster deployment files in deploy/: the Kubernetes StatefulSet of shards, the TFJob
example and the systemd template unit. Every command line must be one `varstore serve`
accepts and must describe the cluster the files advertise."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.process.test_deploy import logical_lines, serve_config
from varstore.cli import build_parser
from varstore.server.main import config_from_args

DEPLOY = Path(__file__).parents[2] / "deploy"
GRPC_PORT = 7011


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def test_statefulset_shards_name_each_other_and_share_the_checkpoint_volume() -> None:
    docs = documents("varstore-cluster.yaml")
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    replicas = sts["spec"]["replicas"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (env,) = container["env"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    for ordinal in range(replicas):
        args = [a.replace(f"$({env['name']})", str(ordinal)) for a in container["args"]]
        config = serve_config(args)
        assert config.cluster == tuple(
            f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:{GRPC_PORT}"
            for i in range(replicas))
        assert (config.task_index, config.port, config.restore) == (ordinal, GRPC_PORT,
                                                                    "latest")
        assert (config.save_every, config.keep) == (600, 5)  # shard 0's timer saves all
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (shared,) = [n for n, v in volumes.items() if "persistentVolumeClaim" in v]
    assert volumes[shared]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert mounts[shared] == str(config.checkpoint_dir)
    assert container["readinessProbe"]["grpc"] == {"port": GRPC_PORT,
                                                   "service": "varstore.v1.VariableService"}


def test_tfjob_ps_tasks_serve_the_cluster_from_tf_config(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    (job,) = documents("tfjob-example.yaml")
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    specs = job["spec"]["tfReplicaSpecs"]
    ps = specs["PS"]
    (container,) = ps["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the operator finds the port on this container
    (port,) = container["ports"]
    addresses = [f"train-ps-{i}.default.svc:{port['containerPort']}"
                 for i in range(ps["replicas"])]
    for index in range(ps["replicas"]):
        monkeypatch.setenv("TF_CONFIG", json.dumps({
            "cluster": {"ps": addresses, "worker": ["train-worker-0.default.svc:2222"]},
            "task": {"type": "ps", "index": index}}))
        config = serve_config(container["args"])
        assert (config.cluster, config.task_index, config.port) == \
            (tuple(addresses), index, port["containerPort"])
    assert specs["Worker"]["replicas"] >= 1


def test_systemd_template_runs_shard_i_of_the_cluster_file() -> None:
    unit = {}
    for line in logical_lines((DEPLOY / "systemd" / "varstore-shard@.service").read_text()):
        if "=" in line and not line.startswith("["):
            key, value = line.split("=", 1)
            unit[key] = value
    env = dict(line.split("=", 1)
               for line in logical_lines((DEPLOY / "systemd" / "cluster.env").read_text()))
    assert unit["EnvironmentFile"] == "/etc/varstore/cluster.env"
    assert unit["User"] == "varstore" and unit["KillSignal"] == "SIGTERM"
    assert unit["WantedBy"] == "varstore-cluster.target"
    addresses = env["VARSTORE_CLUSTER"].split(",")
    for index in range(len(addresses)):
        command = shlex.split(unit["ExecStart"].replace("%i", str(index)).replace(
            "${VARSTORE_CLUSTER}", env["VARSTORE_CLUSTER"]))
        assert command[:2] == ["/usr/local/bin/varstore", "serve"]
        config = config_from_args(build_parser().parse_args(["serve", *command[2:]]))
        assert config.task_index == index
        assert config.port == int(addresses[index].rpartition(":")[2])
        assert config.checkpoint_dir == Path("/var/lib/varstore/checkpoints")
        assert config.restore == "latest"
