"""What a benchmark ran on: CPU, cores, instruction sets, library versions, load (stored in reports)."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch

from model.backends.cpu import machine_fingerprint

PACKAGES = ("torch", "onnxruntime", "openvino", "nncf", "onnx")


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages; None where the platform has none."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def machine_info(threads: int) -> dict[str, Any]:
    """The machine as a report stores it: the backend record's fingerprint (CPU model, cores,
    instruction sets, from model/backends/cpu.py), `threads` (intra-op threads of the run), torch's
    CPU capability, the versions of PACKAGES (None: not installed) and the load average."""
    fingerprint = machine_fingerprint()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": fingerprint["cpu"],
        "cores": fingerprint["cores"],
        "threads": threads,
        "isa": fingerprint["isa"],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "versions": versions,
        "load_average": load_average(),
    }
