"""Where the shipped files lie (no imports: the CLI and the settings read it cheaply)."""

from __future__ import annotations

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPOSITORY / "weights" / "ped2-lite.safetensors"
