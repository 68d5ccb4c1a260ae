"""What this CPU can do, read once from /proc/cpuinfo (Linux): the one place that parses it."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model_name, flags = platform.processor(), frozenset[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
            elif line.startswith("model name") and model_name in ("", platform.processor()):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model_name, flags


def cpu_model_name() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> set[str]:
    return set(_cpuinfo()[1])


def cpu_isa() -> dict[str, bool]:
    """The instruction sets that decide which backend and precision is fastest here."""
    flags = cpu_flags()
    return {
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512_vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_tile" in flags,
    }


def cpu_has_bf16() -> bool:
    """AVX-512 bf16 or AMX: what makes bf16 faster than fp32 on a CPU."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_fingerprint() -> dict[str, Any]:
    """What makes a speed ranking specific to a machine: CPU model, core count, instruction sets."""
    return {"cpu": cpu_model_name(), "cores": os.cpu_count(), "isa": cpu_isa()}
