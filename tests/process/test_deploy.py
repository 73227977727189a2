"""The deployment files in deploy/: what can be checked without systemd running the unit, a
Docker engine or a cluster. Every command line they contain must be one `varstore serve`
accepts, with the ports, paths and probes the files advertise."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from varstore.cli import build_parser
from varstore.server.app import ServerConfig, check_exposure
from varstore.server.main import config_from_args

DEPLOY = Path(__file__).parents[2] / "deploy"
UNIT = DEPLOY / "systemd" / "varstore.service"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFEST = DEPLOY / "kubernetes" / "varstore.yaml"
GRPC_PORT = 7011
METRICS_PORT = 9464


def serve_config(argv: list[str]) -> ServerConfig:
    """The configuration `varstore serve ARGV` runs with (argparse exits on a bad flag)."""
    args = build_parser().parse_args(["serve", *argv])
    return config_from_args(args)


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined and comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if not pending and raw.lstrip().startswith("#"):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        out.append(pending + raw)
        pending = ""
    return [line.strip() for line in out if line.strip()]


# --- systemd ---------------------------------------------------------------------------------

def unit_settings() -> dict[str, str]:
    settings = {}
    for line in logical_lines(UNIT.read_text()):
        if "=" in line and not line.startswith("["):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def test_unit_runs_the_server_as_a_dedicated_user_with_state_directory() -> None:
    unit = unit_settings()
    assert unit["Type"] == "simple"
    assert unit["User"] == unit["Group"] == "varstore"
    assert unit["Restart"] == "on-failure"
    assert unit["StateDirectory"] == "varstore"
    assert unit["KillSignal"] == "SIGTERM"
    command = shlex.split(unit["ExecStart"])
    assert command[:2] == ["/usr/local/bin/varstore", "serve"]
    assert "--daemon" not in command
    config = serve_config(command[2:])
    assert (config.port, config.metrics_port) == (GRPC_PORT, METRICS_PORT)
    assert config.checkpoint_dir == Path("/var/lib/varstore/checkpoints")
    assert config.restore == "latest" and config.save_every > 0
    # Reachable from other hosts, so protected by tokens (start-up refuses otherwise).
    assert config.host == "0.0.0.0" and config.token_file == Path("/etc/varstore/tokens")
    check_exposure(config)
    sysusers = (DEPLOY / "systemd" / "varstore.sysusers.conf").read_text()
    assert 'u varstore - "varstore parameter server" /var/lib/varstore' in sysusers


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # The unit names /usr/local/bin/varstore, which verify requires to exist: check a copy
    # that runs the varstore command installed here instead.
    installed = shutil.which("varstore") or sys.executable
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/local/bin/varstore ") == 1
    copy = tmp_path / "varstore.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/varstore ",
                                 f"ExecStart={installed} "))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "varstore.service" not in result.stderr, result.stderr


# --- Docker ----------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in logical_lines(DOCKERFILE.read_text())]


def instruction(name: str) -> list[str]:
    return [args for kind, args in dockerfile() if kind == name]


def test_dockerfile_runs_unprivileged_and_exposes_the_ports() -> None:
    assert instruction("FROM")[0].startswith("python:") and "slim" in instruction("FROM")[0]
    assert any("pip install" in run for run in instruction("RUN"))
    user = instruction("USER")[-1].split(":")[0]
    assert user not in ("root", "0")
    assert {int(p) for expose in instruction("EXPOSE") for p in expose.split()} \
        == {GRPC_PORT, METRICS_PORT}
    command = json.loads(instruction("ENTRYPOINT")[0]) + json.loads(instruction("CMD")[0])
    assert command[:2] == ["varstore", "serve"]
    config = serve_config(command[2:])
    assert (config.port, config.metrics_port, config.restore) == (GRPC_PORT, METRICS_PORT,
                                                                  "latest")
    assert str(config.checkpoint_dir) in instruction("VOLUME")
    # The published port is the boundary: the image says so explicitly.
    assert config.host == "0.0.0.0" and config.allow_insecure_remote
    check_exposure(config)


def _healthcheck() -> list[str]:
    (check,) = instruction("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    assert "--timeout=" in options and "--interval=" in options
    return json.loads(command)


def test_dockerfile_healthcheck_probes_a_live_server(address: str) -> None:
    command = _healthcheck()
    assert command[0] == "python"
    command[0] = sys.executable
    probe = subprocess.run(command, env={**os.environ, "VARSTORE_ADDRESS": address},
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    down = subprocess.run(command, env={**os.environ, "VARSTORE_ADDRESS": "127.0.0.1:1"},
                          capture_output=True, text=True, timeout=60)
    assert down.returncode != 0


# --- Kubernetes ------------------------------------------------------------------------------

def manifests() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_statefulset_keeps_checkpoints_on_a_claimed_volume() -> None:
    sts = manifests()["StatefulSet"]
    assert sts["apiVersion"] == "apps/v1" and sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = serve_config(container["args"])
    assert (config.port, config.metrics_port, config.restore) == (GRPC_PORT, METRICS_PORT,
                                                                  "latest")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == str(config.checkpoint_dir)
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert {p["containerPort"] for p in container["ports"]} == {GRPC_PORT, METRICS_PORT}
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["terminationGracePeriodSeconds"] >= 60
    # Other pods reach it: tokens from a mounted Secret (start-up refuses otherwise).
    check_exposure(config)
    assert config.token_file is not None and not config.allow_insecure_remote
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] in secrets]
    assert config.token_file.parent == Path(mount["mountPath"]) and mount["readOnly"]


def test_probes_use_grpc_health_on_the_server_port() -> None:
    (container,) = manifests()["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT, probe
    assert container["readinessProbe"]["grpc"]["service"] == "varstore.v1.VariableService"


def test_service_selects_the_pods_and_names_the_ports() -> None:
    docs = manifests()
    service, sts = docs["Service"], docs["StatefulSet"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for p in service["spec"]["ports"]} == {GRPC_PORT, METRICS_PORT}
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"

