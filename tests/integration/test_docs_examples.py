"""The documented examples work as written, against a real server, and the README stays a front door.

Where the examples live:
- README.md's tour, between the lines holding `--8<-- [start:tour]` and `--8<-- [end:tour]` (the
  quick start page includes that section): exactly one `bash` block (create a stream, push frames,
  heatmap, stateless score, counters, metrics, delete) and one `python` block (the /v1/scores feed);
- docs/api.md: the `python` block that uses the ingest WebSocket (`/ingest`).
Shell examples that are not meant to run use `console` blocks.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.support.serving import encode, metric_value

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
API_PAGE = DOCS / "api.md"
CONFIGURATION_PAGE = DOCS / "configuration.md"
README_LIMIT_BYTES = 10240
TOUR_START, TOUR_END = "--8<-- [start:tour]", "--8<-- [end:tour]"


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks of a Markdown text, in order."""
    return re.findall(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", text, flags=re.S | re.M)


def tour() -> str:
    """README.md's tour: the lines between its two snippet markers."""
    text = README.read_text()
    start, end = text.find(TOUR_START), text.find(TOUR_END)
    assert 0 <= start < end, f"README.md needs the lines {TOUR_START!r} and {TOUR_END!r} around its tour"
    return text[text.index("\n", start) + 1 : text.rindex("\n", 0, end)]


def ingest_example() -> str:
    found = [b for b in fenced_blocks(API_PAGE.read_text(), "python") if "/ingest" in b]
    assert len(found) == 1, f"docs/api.md should have exactly one python ingest example, found {len(found)}"
    return found[0]


def test_readme_fits_in_10_kb() -> None:
    size = len(README.read_text().encode())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; the limit is {README_LIMIT_BYTES}"


def test_readme_links_resolve() -> None:
    """Relative links and images of the README point at files that exist (GitHub renders them)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert local, "the README links into the documentation"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_tour_blocks() -> None:
    """Checked without a server, so extraction problems show even where the server cannot start."""
    bash, python = fenced_blocks(tour(), "bash"), fenced_blocks(tour(), "python")
    assert len(bash) == 1 and len(python) == 1
    assert "/v1/scores" in python[0]
    assert "localhost:8000" in bash[0] and "localhost:8000" in python[0]
    assert "localhost:8000" in ingest_example()


def test_configuration_page_has_the_table_markers() -> None:
    """The settings table generator writes between these two lines; each must be there once, in order."""
    lines = CONFIGURATION_PAGE.read_text().splitlines()
    start = [i for i, line in enumerate(lines) if line.strip() == "<!-- settings-table:start -->"]
    end = [i for i, line in enumerate(lines) if line.strip() == "<!-- settings-table:end -->"]
    assert len(start) == 1 and len(end) == 1 and start[0] < end[0]


def test_documented_examples_run(vad_server, video, tmp_path: Path) -> None:
    if shutil.which("curl") is None:  # .ci/run installs curl: missing there is a failure, not a skip
        if os.environ.get("CI"):
            pytest.fail("curl is not installed")
        pytest.skip("curl is not installed")
    (bash,) = fenced_blocks(tour(), "bash")
    (feed,) = fenced_blocks(tour(), "python")
    ingest = ingest_example()
    here = f"127.0.0.1:{vad_server.port}"
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(video[:9]):
        (frames / f"{i:03d}.jpg").write_bytes(encode(frame))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    # The WebSocket example first: it waits for five scores while the curl examples push frames.
    listener = subprocess.Popen(
        [sys.executable, "-c", feed.replace("localhost:8000", here)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while metric_value(vad_server.metrics(), "vad_websocket_clients") < 1:
            assert listener.poll() is None, listener.communicate()
            assert time.monotonic() < deadline, "the WebSocket example did not connect"
            time.sleep(0.1)
        script = "set -euo pipefail\n" + bash.replace("localhost:8000", here)
        run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        out, err = listener.communicate(timeout=60)
    finally:
        listener.kill()
    assert listener.returncode == 0, err

    lines = run.stdout.splitlines()
    pushed = [line for line in lines if line.startswith('{"stream_id":"')]  # frame results of the loop
    assert [('"status":"warming"' in p, '"status":"scored"' in p) for p in pushed] == [(True, False)] * 4 + [
        (False, True)] * 5
    assert any(line.startswith('{"stream_id":null') and '"status":"scored"' in line for line in lines)  # /v1/score
    assert any(line.startswith("vad_frames_scored_total{") and line.endswith(" 5.0") for line in lines)
    assert any('"state":"stopped"' in line for line in lines)
    assert Image.open(io.BytesIO((tmp_path / "heatmap.png").read_bytes())).size == (180, 120)
    printed = out.splitlines()
    assert len(printed) == 5 and all(p.split()[-1] in ("True", "False") for p in printed)

    # The ingest example: every frame answered in order, the first four warming.
    answered = subprocess.run([sys.executable, "-c", ingest.replace("localhost:8000", here)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
    assert answered.returncode == 0, answered.stderr
    answers = [line.split() for line in answered.stdout.splitlines()]
    assert [(name, int(index), status) for name, index, status, _ in answers] == [
        (f"frames/{i:03d}.jpg", i, "warming" if i < 4 else "scored") for i in range(9)]
    assert all(float(score) > -1e9 for *_, score in answers[4:])
