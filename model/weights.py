"""Weights files: safetensors holding the network, the SVDD centre, and JSON metadata.

Metadata keys: "format" ("desdnet-weights/1"), "config" (DESDnetConfig JSON), "svdd_radius",
"calibration" (score statistics on normal frames, see `Calibration`), "training" (free-form JSON).
The SVDD centre is the tensor "svdd.center". Nothing is ever unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .files import write_atomically
from .network import DESDnet, DESDnetConfig
from .scoring import zscore, zscore_inverse

FORMAT = "desdnet-weights/1"
CENTER_KEY = "svdd.center"


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Calibration:
    """Statistics of the raw patch score on normal frames the model did not train on.

    The causal score normalises with these: z = (log(score) - log_mean) / log_std.
    `threshold` is the default anomaly threshold on the normalised score.
    `background_log_mean`/`background_log_std`: the same statistics of `model.scoring.background_level`
    (None in files written before they were measured): a scene far outside them is not the one the
    model was trained on.
    """

    count: int = 0
    mean: float = 0.0
    std: float = 1.0
    log_mean: float = 0.0
    log_std: float = 1.0
    quantiles: dict[str, float] = field(default_factory=dict)
    threshold: float = 3.0
    background_log_mean: float | None = None
    background_log_std: float | None = None

    def normalize(self, score: float) -> float:
        """The causal z-score of a raw patch score (`model.scoring.zscore`)."""
        return zscore(score, self.log_mean, self.log_std)

    def raw_score(self, normalized: float) -> float:
        """The raw patch score whose z-score is `normalized` (e.g. the threshold's, for heatmap colours)."""
        return zscore_inverse(normalized, self.log_mean, self.log_std)

    def background_z(self, level: float) -> float | None:
        """z of a frame's background level under these statistics; None when they were not measured."""
        if self.background_log_mean is None or self.background_log_std is None:
            return None
        return zscore(level, self.background_log_mean, self.background_log_std)

    @classmethod
    def from_scores(cls, scores: torch.Tensor, background: torch.Tensor | None = None) -> Calibration:
        """scores: (N,) raw patch scores of normal frames; background: (N,) their background levels."""
        s = scores.double().clamp_min(1e-12)
        logs = s.log()
        qs = {f"p{q:g}": float(torch.quantile(s, q / 100)) for q in (50, 90, 95, 99, 99.9)}
        qs["max"] = float(s.max())
        log_std = float(logs.std()) if len(s) > 1 else 1.0
        log_mean = float(logs.mean())
        # Default threshold: the normalised score of the largest normal score seen, plus a margin.
        top = zscore(float(s.max()), log_mean, log_std)
        return cls(
            count=len(s),
            mean=float(s.mean()),
            std=float(s.std()) if len(s) > 1 else 0.0,
            log_mean=log_mean,
            log_std=log_std,
            quantiles=qs,
            threshold=round(top + 0.5, 3),
            **_background_statistics(background),
        )


def _background_statistics(background: torch.Tensor | None) -> dict[str, float]:
    if background is None or len(background) < 2:
        return {}
    logs = background.double().clamp_min(1e-12).log()
    return {"background_log_mean": float(logs.mean()), "background_log_std": float(logs.std())}


@dataclass
class LoadedWeights:
    model: DESDnet
    config: DESDnetConfig
    center: torch.Tensor | None
    radius: float
    calibration: Calibration
    training: dict[str, object]
    path: Path


def save_weights(
    path: Path,
    model: DESDnet,
    center: torch.Tensor | None,
    radius: float,
    calibration: Calibration,
    training: dict[str, object],
) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if center is not None:
        tensors[CENTER_KEY] = center.detach().cpu().float().contiguous()
    metadata = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "svdd_radius": repr(float(radius)),
        "calibration": json.dumps(asdict(calibration)),
        "training": json.dumps(training, default=str),
    }
    _write(Path(path), tensors, metadata)


def _write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, readable like any file the process writes (`write_atomically`)."""
    write_atomically(path, save(tensors, metadata=metadata))


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from exc


def load_weights(
    path: Path | str, expect: DESDnetConfig | None = None, device: str | torch.device = "cpu"
) -> LoadedWeights:
    """Load and check a weights file. `expect` refuses a file of another configuration."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    metadata = read_metadata(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise WeightsError(f"{path}: not a DESDnet weights file (metadata format is {metadata.get('format')!r})")
    try:
        config = DESDnetConfig.from_json(metadata["config"])
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: invalid configuration in metadata ({exc})") from exc
    if expect is not None and expect != config:
        diff = {
            k: (v, getattr(config, k))
            for k, v in json.loads(expect.to_json()).items()
            if getattr(config, k) != v
        }
        raise WeightsError(
            f"{path}: weights are for another configuration; differs in "
            + ", ".join(f"{k} (expected {a}, file has {b})" for k, (a, b) in diff.items())
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read tensors ({exc})") from exc
    center = tensors.pop(CENTER_KEY, None)
    center = None if center is None else center.float()
    model = DESDnet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k} (expected {tuple(expected[k].shape)}, file has {tuple(tensors[k].shape)})"
        for k in set(expected) & set(tensors)
        if expected[k].shape != tensors[k].shape
    )
    if center is not None and tuple(center.shape) != (config.widths[3],):
        wrong.append(f"{CENTER_KEY} (expected {(config.widths[3],)}, file has {tuple(center.shape)})")
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of other shapes (e.g. {', '.join(wrong[:3])})")
        raise WeightsError(f"{path}: tensors do not match its configuration: " + "; ".join(parts))
    model.load_state_dict(tensors)
    model.eval().to(device)
    try:
        calibration = Calibration(**json.loads(metadata.get("calibration", "{}")))
        radius = float(metadata.get("svdd_radius", "0"))
        training = json.loads(metadata.get("training", "{}"))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: invalid metadata ({exc})") from exc
    return LoadedWeights(model, config, center, radius, calibration, training, path)


def store_as(source: Path | str, target: Path | str, dtype: torch.dtype = torch.float16) -> None:
    """Copy a weights file with its floating-point tensors stored as `dtype` (fp16 halves the file).

    Loading casts them back to fp32; the metadata (config, calibration, training) is kept and the
    storage type is recorded in it.
    """
    metadata = read_metadata(Path(source))
    tensors = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(source)).items()
    }
    metadata["storage_dtype"] = str(dtype).removeprefix("torch.")
    _write(Path(target), tensors, metadata)
