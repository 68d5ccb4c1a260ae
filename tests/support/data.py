"""Constants shared by the tests: the tiny network and where the real Ped2 copy lies."""

from __future__ import annotations

from pathlib import Path

from model.network import DESDnetConfig

PED2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "ped2"
TINY = DESDnetConfig(channels=1, image_size=32, base_width=4, patch_size=4, patch_stride=2)
