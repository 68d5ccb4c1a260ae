"""The package layout holds: no import cycle in model/ or service/, and the serve path loads no
benchmark, CLI, training or evaluation module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "service", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `name` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
            submodules = {f"{target}.{alias.name}" for alias in node.names} & known  # `from . import x`: module x
            found.update(submodules)
            # `from . import db` in a module of the same package only loads the submodule: the package is
            # already being imported (it is the importer's parent), so it is no edge back to it.
            if not (submodules and len(submodules) == len(node.names) and name.startswith(target + ".")):
                found.add(target)
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_model_imports_no_web_framework_and_no_service() -> None:
    found = modules()
    for name, path in found.items():
        if name.split(".")[0] != "model":
            continue
        tree = ast.parse(path.read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert not roots & {"service", "bench", "fastapi", "starlette", "uvicorn", "logging.config"}, (
            name, roots & {"service", "bench", "fastapi", "starlette", "uvicorn"})


def test_the_serve_path_loads_no_benchmark_cli_or_evaluator() -> None:
    """Building the app (what `vad serve` runs) imports none of the offline modules."""
    code = (
        "import sys\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "create_app(Settings.from_flat(device='cpu'))\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True, timeout=120).stdout.split())
    assert "service.app" in loaded and "model.backends" in loaded
    offline = {m for m in loaded if m == "bench" or m.startswith("bench.")}
    offline |= loaded & {"service.cli", "model.cli", "model.evaluate", "model.train", "model.card", "model.losses",
                         "model.erasure", "matplotlib"}
    assert not offline, sorted(offline)


def test_vad_serve_loads_no_benchmark_module() -> None:
    """The `vad serve` process (its parser included) never imports the bench package."""
    code = (
        "import sys\n"
        "from service.cli import main\n"
        "try:\n"
        "    main(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120)
    assert "--source-stall-timeout-s" in run.stdout
    loaded = set(run.stderr.split())
    assert "service.cli" in loaded and not {m for m in loaded if m == "bench" or m.startswith("bench.")}
    everything = subprocess.run([sys.executable, "-m", "service.cli", "--help"], cwd=ROOT, capture_output=True,
                                text=True, check=True, timeout=120).stdout
    assert "calibrate-backends" in everything and "serve" in everything
