"""The deployment files: compose validated by docker-compose itself, Prometheus config and alert rules by promtool.

Both tools are optional (scripts/setup.sh installs them where apt is available); without one, its test skips and
says why. Nothing here starts containers.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


COMPOSE = _compose_cmd()
PROMTOOL = shutil.which("promtool")
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="neither docker-compose nor the docker compose plugin is "
                                                           "installed (scripts/setup.sh installs docker-compose)")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not on PATH (scripts/setup.sh installs the "
                                                             "Debian package prometheus)")


def compose_config(*files: str, profiles: tuple[str, ...] = ()) -> dict:
    assert COMPOSE is not None
    args = [*COMPOSE, "--project-directory", str(REPO)]
    for f in files:
        args += ["-f", str(REPO / f)]
    for p in profiles:
        args += ["--profile", p]
    res = subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


@needs_compose
def test_compose_is_valid_and_safe_by_default():
    cfg = compose_config("docker-compose.yml", profiles=("serve", "train"))
    services = cfg["services"]
    assert {"kafka", "topics", "redis", "detector", "serve", "fluent-bit", "prometheus", "trainer"} <= set(services)
    for name in ("kafka", "redis", "detector", "serve"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # published ports bind the host's loopback only
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    det = services["detector"]
    assert det["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert det["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert det["environment"]["LOGAD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert det["command"][:1] == ["run"] and services["serve"]["command"][:1] == ["serve"]
    assert "noeviction" in services["redis"]["command"] and "--appendonly" in services["redis"]["command"]
    # the config and the model named in the commands are in the repository (the image copies them)
    for arg in det["command"] + services["serve"]["command"]:
        if arg.startswith(("config/", "models/")):
            assert (REPO / arg).exists(), arg


@needs_compose
def test_compose_profiles_keep_the_api_and_trainer_opt_in():
    services = compose_config("docker-compose.yml", profiles=("serve", "train"))["services"]
    default = {name for name, svc in services.items() if not svc.get("profiles")}  # what a plain `up` starts
    assert default == {"kafka", "topics", "redis", "detector", "fluent-bit", "prometheus"}
    assert services["serve"]["profiles"] == ["serve"] and services["trainer"]["profiles"] == ["train"]


@needs_compose
def test_gpu_override_merges():
    services = compose_config("docker-compose.yml", "docker-compose.gpu.yml", profiles=("train",))["services"]
    for name in ("detector", "trainer"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert services["detector"]["environment"]["LOGAD_DETECTOR__DEVICE"] == "cuda"
    assert services["detector"]["environment"]["LOGAD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"  # base kept
    assert "cu" in services["detector"]["build"]["args"]["TORCH_INDEX_URL"]


@needs_promtool
def test_prometheus_config_and_alert_rules():
    for args in (["check", "config", str(REPO / "deploy" / "prometheus.yml")],
                 ["check", "rules", str(REPO / "deploy" / "alerts.yml")]):
        res = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_alert_rules_use_metrics_the_detector_exports():
    import re

    from prometheus_client import REGISTRY

    import streamer.metrics  # noqa: F401  (registers the collectors)

    families = list(REGISTRY.collect())
    exported = {s.name for f in families for s in f.samples} | {f.name for f in families} | {"up"}
    rules = yaml.safe_load((REPO / "deploy" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = set(re.findall(r"\b((?:logad_|up\b)[a-z_]*)", rule["expr"]))
            assert names and names <= exported, (rule["alert"], names - exported)
