"""The models folder: several weights files, each loaded on first use, one pipeline per loaded model.

`VAD_MODELS_DIR` (default `weights/`) holds `NAME.safetensors` files; a stream names its model with
`"model": "NAME"` (default: the configured default model, `VAD_WEIGHTS`, which may lie elsewhere). The
folder is read at start-up and again on `POST /v1/models/reload`; only the header of each file is read
until a stream uses it (`ModelRegistry.acquire`), when it is loaded with the service's backend settings
and gets its own queue, inference worker and score stage (`ModelSlot`): streams of one model share its
batches. A file that cannot be read is listed with its error and refused to streams; the other models
are not affected.

Reload: new files appear; a file gone is dropped unless streams use it (they keep it, listed as
"removed"); a changed file that is loaded is loaded again and swapped in between two batches when its
configuration is unchanged (its streams' learned calibrations are learned again: they belonged to the old
weights); with another configuration the old version keeps serving its streams and the entry says so.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.network import DESDnetConfig
from model.weights import WeightsError, read_metadata

from .calibration import weights_digest
from .domain import ModelUnavailable, UnknownModel
from .infer import FrameQueue, InferenceWorker
from .runtime import ModelRuntime
from .score import Scorer

log = logging.getLogger("vad.models")

SUFFIX = ".safetensors"


@dataclass(eq=False)
class ModelSlot:
    """A loaded model and its pipeline stages."""

    name: str
    path: Path
    runtime: ModelRuntime
    queue: FrameQueue
    scorer: Scorer
    weights_sha256: str
    worker: InferenceWorker | None = None  # set once the slot exists (its sink needs the slot)

    @property
    def config(self) -> DESDnetConfig:
        return self.runtime.config


@dataclass(eq=False)
class _Entry:
    name: str
    path: Path
    mtime_ns: int = 0
    size: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    removed: bool = False
    note: str | None = None  # e.g. a changed file that could not be swapped in
    slot: ModelSlot | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class ModelInfo:
    """One model for GET /v1/models."""

    name: str
    path: str
    default: bool
    status: str  # "available" (not loaded yet), "loaded", "error", "removed"
    error: str | None
    note: str | None
    size_bytes: int
    config: dict[str, Any] | None
    training: dict[str, Any]
    calibration: dict[str, Any] | None
    backend: str | None
    precision: str | None
    threshold: float | None


def _summary(metadata: dict[str, str]) -> tuple[dict[str, Any] | None, dict[str, Any], dict[str, Any] | None]:
    """(config, training summary, calibration summary) from a weights file's metadata."""
    config = json.loads(metadata["config"]) if "config" in metadata else None
    training_full = json.loads(metadata.get("training", "{}") or "{}")
    keys = ("command", "epochs", "wall_seconds", "training_videos", "calibration_videos", "data", "footage",
            "init", "device")
    training = {k: training_full[k] for k in keys if k in training_full}
    if "train_config" in training_full and isinstance(training_full["train_config"], dict):
        data = training_full["train_config"].get("data")
        if data is not None:
            training.setdefault("data", data)
    calibration_full = json.loads(metadata.get("calibration", "{}") or "{}")
    calibration = {k: calibration_full[k] for k in ("count", "log_mean", "log_std", "threshold",
                                                     "background_log_mean", "background_log_std")
                   if k in calibration_full} or None
    return config, training, calibration


class ModelRegistry:
    """See the module docstring. Thread-safe; `acquire` and `reload` block (call them off the event loop)."""

    def __init__(
        self,
        folder: Path,
        default_path: Path,
        load: Callable[[Path], ModelRuntime],
        build_slot: Callable[[str, Path, ModelRuntime, str], ModelSlot],
        swap: Callable[[ModelSlot, ModelRuntime, str], None],
    ) -> None:
        self.folder = Path(folder)
        self.default_path = Path(default_path)
        self.default_name = self.default_path.name.removesuffix(SUFFIX)
        self._load = load
        self._build_slot = build_slot
        self._swap = swap
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.scan()

    # --- the folder ------------------------------------------------------------------------------
    def _files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.glob(f"*{SUFFIX}")):
                if path.is_file():
                    files[path.name.removesuffix(SUFFIX)] = path
        # The default model is always listed under its name, wherever it lies (it wins over a namesake here).
        files[self.default_name] = self.default_path
        return files

    @staticmethod
    def _read(entry: _Entry) -> None:
        try:
            stat = entry.path.stat()
            entry.mtime_ns, entry.size = stat.st_mtime_ns, stat.st_size
            metadata = read_metadata(entry.path)
            if "config" not in metadata:
                raise WeightsError(f"{entry.path}: not a DESDnet weights file (no configuration in its metadata)")
            DESDnetConfig.from_json(metadata["config"])
            _summary(metadata)
            entry.metadata, entry.error = metadata, None
        except (WeightsError, OSError, ValueError, TypeError, KeyError) as exc:
            entry.metadata, entry.error = {}, str(exc) if isinstance(exc, WeightsError) else f"{entry.path}: {exc}"

    def scan(self) -> dict[str, list[str]]:
        """Read the folder; returns the names added, changed and removed."""
        changes: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
        files = self._files()
        swaps: list[tuple[_Entry, ModelRuntime]] = []
        with self._lock:
            for name, path in files.items():
                entry = self._entries.get(name)
                if entry is None:
                    entry = self._entries[name] = _Entry(name, path)
                    self._read(entry)
                    changes["added"].append(name)
                    continue
                entry.removed = False
                try:
                    stat = path.stat()
                    same = (stat.st_mtime_ns, stat.st_size) == (entry.mtime_ns, entry.size) and path == entry.path
                except OSError:
                    same = False
                if same and entry.error is None:
                    continue
                entry.path = path
                changes["changed"].append(name)
                if entry.slot is None:
                    self._read(entry)
                    continue
                swaps.append((entry, entry.slot.runtime))
            for name in [n for n in self._entries if n not in files]:
                entry = self._entries[name]
                if entry.slot is None:
                    del self._entries[name]
                else:
                    entry.removed = True
                changes["removed"].append(name)
        for entry, _ in swaps:
            self._reload_loaded(entry)
        return changes

    def _reload_loaded(self, entry: _Entry) -> None:
        """A loaded model whose file changed: load it again and swap it in when its configuration is the same."""
        with entry.lock:
            slot = entry.slot
            assert slot is not None
            try:
                runtime = self._load(entry.path)
            except (WeightsError, ValueError, RuntimeError, OSError, ImportError) as exc:
                entry.note = f"the file changed but cannot be loaded ({exc}); the previous version keeps serving"
                log.error("model %s: %s", entry.name, entry.note)
                return
            if runtime.config != slot.runtime.config:
                entry.note = ("the file changed to another configuration; the previous version keeps serving its "
                              "streams (delete them, then reload, to use the new one)")
                log.warning("model %s: %s", entry.name, entry.note)
                return
            self._read(entry)
            self._swap(slot, runtime, weights_digest(entry.path))
            entry.note = None
            log.info("model %s reloaded from %s", entry.name, entry.path)

    # --- use ----------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def adopt(self, runtime: ModelRuntime) -> ModelSlot:
        """The default model, loaded at start-up by the lifespan."""
        with self._lock:
            entry = self._entries[self.default_name]
        with entry.lock:
            entry.slot = self._build_slot(entry.name, entry.path, runtime, weights_digest(entry.path))
            entry.error = None
            return entry.slot

    def mark_error(self, name: str, error: str) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                entry.error = error

    def acquire(self, name: str | None) -> ModelSlot:
        """The loaded pipeline of `name` (default: the default model), loading it on first use.
        Raises UnknownModel (not in the folder) or ModelUnavailable (cannot be loaded)."""
        name = name or self.default_name
        with self._lock:
            entry = self._entries.get(name)
            known = sorted(n for n, e in self._entries.items() if not e.removed)
        if entry is None or (entry.removed and entry.slot is None):
            raise UnknownModel(f"no model {name!r}; models in {self.folder}: {', '.join(known) or 'none'}")
        if entry.removed:
            raise UnknownModel(f"model {name!r} was removed from {self.folder}; models: {', '.join(known)}")
        with entry.lock:
            if entry.slot is not None:
                return entry.slot
            if entry.error is not None:
                raise ModelUnavailable(f"model {name!r} cannot be used: {entry.error}")
            try:
                runtime = self._load(entry.path)
            except (WeightsError, ValueError, RuntimeError, OSError, ImportError) as exc:
                entry.error = str(exc)
                log.error("model %s cannot be loaded: %s", name, exc)
                raise ModelUnavailable(f"model {name!r} cannot be used: {exc}") from exc
            entry.slot = self._build_slot(name, entry.path, runtime, weights_digest(entry.path))
            log.info("model %s loaded from %s (%s/%s)", name, entry.path, runtime.backend_name, runtime.precision)
            return entry.slot

    def slots(self) -> list[ModelSlot]:
        with self._lock:
            return [e.slot for e in self._entries.values() if e.slot is not None]

    def errors(self) -> dict[str, str]:
        with self._lock:
            return {n: e.error for n, e in self._entries.items() if e.error is not None}

    def infos(self) -> list[ModelInfo]:
        with self._lock:
            entries = list(self._entries.values())
        result = []
        for e in sorted(entries, key=lambda e: e.name):
            config = training = calibration = None
            if e.metadata:
                config, training, calibration = _summary(e.metadata)
            rt = e.slot.runtime if e.slot is not None else None
            status = "removed" if e.removed else "error" if e.error and e.slot is None else \
                "loaded" if e.slot is not None else "available"
            result.append(ModelInfo(
                name=e.name, path=str(e.path), default=e.name == self.default_name, status=status, error=e.error,
                note=e.note, size_bytes=e.size, config=config, training=training or {}, calibration=calibration,
                backend=rt.backend_name if rt else None, precision=rt.precision if rt else None,
                threshold=rt.threshold if rt else None,
            ))
        return result
