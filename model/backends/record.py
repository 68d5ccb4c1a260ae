"""The backend record: which backend and precision to run for a weights file on this machine.

`vad calibrate-backends` (bench/calibrate_backends.py) times every backend/precision and checks
that its scores agree with torch fp32; so does the service itself, in the background, when it starts
with backend "auto" and finds no usable record (service/autotune.py). Both write a record (JSON, made
by parity.py, which holds the parity rules) to `record_path(...)`:

    <cache dir>/backends/<weights digest[:16]>-<device>.json   unless an explicit path is given
                                                              (the service's VAD_BACKEND_RECORD)

`--backend auto` reads it here: the entry with the highest batch-1 fps among those that passed
parity and whose library versions match the installed ones, on the machine the record describes
(CPU model, core count, instruction sets are stored and checked). Without a usable record it runs
torch fp32 (`Choice.measured` False: the service then measures the others while serving). A backend other than torch fp32 also takes its own causal-score
calibration from the record (`backend_calibration`), so a uniform bias of a quantised backend does
not shift the z-score.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..network import DESDnet
from ..weights import Calibration
from .artefacts import default_cache_dir, library_versions, weights_digest
from .cpu import machine_fingerprint

RECORD_FORMAT = "vad-backend-record/1"
REFERENCE = ("torch", "fp32")
HOW_TO_RECORD = (
    "on a CPU `vad serve` measures the other backends in the background and writes the record (unless "
    "VAD_AUTOTUNE=false); `vad calibrate-backends --weights WEIGHTS --data DATASET` does it offline"
)

log = logging.getLogger("vad.backends")


def record_path(digest: str, device: str = "cpu", cache_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """Where the record of weights `digest` on `device` lives (`explicit` wins when given)."""
    if explicit is not None:
        return Path(explicit)
    return Path(cache_dir or default_cache_dir()) / "backends" / f"{digest[:16]}-{device}.json"


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    reason: str
    record: Path | None = None
    #: True when a usable record chose it (also when that choice then failed to build); False when
    #: there was none (missing, unreadable, another machine, other library versions): nothing measured.
    measured: bool = False


def record_mismatch(record: dict[str, Any], device: str) -> str | None:
    """Why a loaded record does not describe this machine and device (None when it does)."""
    if record.get("format") != RECORD_FORMAT:
        return f"unknown record format {record.get('format')!r}"
    if record.get("device") != device:
        return f"the record is for device {record.get('device')!r}, not {device!r}"
    here = machine_fingerprint()
    there = record.get("machine", {})
    differs = [k for k in here if there.get(k) != here[k]]
    if differs:
        return f"the record was made on another machine ({', '.join(differs)} differ)"
    return None


def choose(record: dict[str, Any], device: str) -> tuple[dict[str, Any] | None, str]:
    """The fastest usable passing entry of a loaded record (None and why not when there is none)."""
    mismatch = record_mismatch(record, device)
    if mismatch is not None:
        return None, mismatch
    usable = []
    for entry in record.get("entries", []):
        if entry.get("error") or not entry.get("passed") or not entry.get("fps"):
            continue
        if entry.get("effective_precision", entry["precision"]) != entry["precision"]:
            continue  # e.g. openvino "bf16" that runs fp32 on a CPU without bf16: the fp32 entry says it plainly
        if entry.get("versions") and entry["versions"] != library_versions(entry["backend"], entry["precision"]):
            continue  # measured with other library versions
        usable.append(entry)
    if not usable:
        return None, "no entry passed parity with the installed library versions"
    return max(usable, key=lambda e: e["fps"]), "fastest passing entry"


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        return json.loads(path.read_text()), ""
    except FileNotFoundError:
        return None, f"no backend record at {path}"
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"backend record {path} is unreadable ({exc})"


def resolve_auto(model: DESDnet, device: str, cache_dir: Path | None = None, explicit: Path | None = None) -> Choice:
    """backend="auto" -> the record's choice for these weights on this machine, else torch fp32."""
    path = record_path(weights_digest(model), device, cache_dir, explicit)
    record, why = _read(path)
    if record is not None:
        entry, why = choose(record, device)
        if entry is not None:
            reason = f"{path}: {why}, {entry['fps']:.1f} fps at batch 1 (record of {record.get('created', '?')})"
            log.info("backend auto: %s/%s; %s", entry["backend"], entry["precision"], reason)
            return Choice(entry["backend"], entry["precision"], reason, path, measured=True)
        why = f"{path}: {why}"
    reason = f"{why}; using torch fp32 ({HOW_TO_RECORD})"
    log.warning("backend auto: %s", reason)
    return Choice(*REFERENCE, reason, path if path.is_file() else None)


def backend_calibration(
    model: DESDnet, backend: str, precision: str, device: str,
    cache_dir: Path | None = None, explicit: Path | None = None,
) -> tuple[Calibration | None, str]:
    """(Calibration, source) for a backend other than torch fp32: its own, from this machine's
    record, else (None, why not). torch fp32 always uses the weights' calibration."""
    path = record_path(weights_digest(model), device, cache_dir, explicit)
    record, why = _read(path)
    if record is None:
        return None, why
    mismatch = record_mismatch(record, device)
    if mismatch is not None:
        return None, f"{path}: {mismatch}"
    for entry in record.get("entries", []):
        if (entry.get("backend"), entry.get("precision")) == (backend, precision) and entry.get("calibration"):
            if entry.get("versions") and entry["versions"] != library_versions(backend, precision):
                return None, f"{path}: {backend}/{precision} was calibrated with other library versions"
            try:
                return Calibration(**entry["calibration"]), f"{path} ({backend}/{precision})"
            except TypeError as exc:
                return None, f"{path}: malformed calibration for {backend}/{precision} ({exc})"
    return None, f"{path} has no calibration for {backend}/{precision}"
