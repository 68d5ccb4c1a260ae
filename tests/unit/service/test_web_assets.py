"""The dashboard's files (service/web/): vendored libraries unchanged, nothing loaded from outside, all shipped.

- service/web/vendor/ holds npm packages' files as published (VERSIONS.md says which and how to
  update them); SHA256SUMS records each, so a hand edit or a partial update fails here.
- The page, its modules and styles name no external URL (no CDN: the dashboard works offline).
- pyproject.toml's package data covers every file under service/web/, so `pip install .` and the
  Docker image ship them all.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
WEB = ROOT / "service" / "web"
VENDOR = WEB / "vendor"
NOT_HASHED = {"SHA256SUMS", "VERSIONS.md"}


def recorded() -> dict[str, str]:
    sums = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_vendored_files_match_their_recorded_sha256() -> None:
    sums = recorded()
    present = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()} - NOT_HASHED
    assert present == set(sums), f"files not in SHA256SUMS: {present - set(sums)}; missing: {set(sums) - present}"
    for name, digest in sums.items():
        actual = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert actual == digest, f"{name} differs from the published file: update it as VERSIONS.md says"


def test_every_vendored_library_has_its_licence_and_version() -> None:
    versions = (VENDOR / "VERSIONS.md").read_text()
    for folder in (p for p in VENDOR.iterdir() if p.is_dir()):
        assert (folder / "LICENSE").is_file(), folder
        assert f"`{folder.name}/`" in versions, f"VERSIONS.md does not say where {folder.name}/ came from"


def test_the_page_names_no_external_url() -> None:
    own = [p for p in WEB.rglob("*") if p.is_file() and VENDOR not in p.parents and p.suffix in (".html", ".js", ".css")]
    assert {"index.html", "app.js", "styles.css"} <= {p.name for p in own}
    for path in own:
        text = path.read_text()
        # XML namespaces are names, not requests; everything else that looks like a URL with a host is refused.
        hosts = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s'\"]*", text) if "www.w3.org" not in u]
        assert not hosts, f"{path.relative_to(ROOT)} names {hosts}"


def test_package_data_ships_every_web_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    for path in WEB.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            relative = path.relative_to(ROOT / "service").as_posix()
            # setuptools' globs: '*' does not cross a '/'.
            assert any(fnmatch(relative, p) and relative.count("/") == p.count("/") for p in patterns), relative


def test_preview_cache_is_bounded_in_entries_and_bytes() -> None:
    from service.api.web import PreviewCache

    cache = PreviewCache(entries=3, max_bytes=100)
    for i in range(3):
        cache.put(("s", i), b"x" * 30)
    assert cache.get(("s", 0)) is not None  # now the most recently used
    cache.put(("s", 3), b"x" * 30)  # 4 entries, 120 bytes: the least recently used (1) goes
    assert cache.get(("s", 1)) is None and cache.get(("s", 0)) is not None
    assert cache.bytes == 90 and cache.evicted == 1
    cache.put(("s", 4), b"x" * 80)  # over the byte budget: older ones go until it fits
    assert cache.bytes <= 100 and cache.get(("s", 4)) is not None
    cache.put(("s", 5), b"x" * 101)  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.get(("s", 5)) is None and cache.get(("s", 4)) is not None
    cache.put(("s", 4), b"y" * 10)  # replacing an entry counts its bytes once
    assert cache.bytes == 10 + sum(len(v) for k, v in cache._items.items() if k != ("s", 4))
