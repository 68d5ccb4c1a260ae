"""Trainer: L_int + λ_rgb·L_rgb + λ_compact·L_compact with reverse erasure, checkpoints, resume.

Schedule (paper): epoch 1 trains without L_compact and accumulates the SVDD centre c as the mean
mapping feature; from epoch 2 on, L_compact uses c and R (re-estimated every epoch as the (1 − ν)
quantile of the distances), and every input is multiplied by the erasure mask collected over the
last batches of the previous epoch.

`cfg.data` is anything `model.footage.find_footage` accepts (a dataset root, a video file, a folder of
videos, frames or frame folders); `cfg.init` starts from existing weights (fine-tuning: their tensors,
SVDD centre and radius) instead of random ones.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .card import card_path, render_markdown, sha256_of, write_training_card
from .data import FrameSet, TensorClips, file_list_hash
from .erasure import ErasureMaskCollector, apply_erasure
from .footage import HOLDOUT_SHARE, calibration_data, load_training_data
from .losses import (
    intensity_loss,
    svdd_distances,
    svdd_radius,
    svdd_soft_boundary_loss,
    weighted_rgb_loss,
)
from .network import DESDnet, DESDnetConfig
from .progress import Progress, bars, silent
from .scoring import background_level, error_map, patch_score_squared
from .weights import Calibration, LoadedWeights, load_weights, save_weights

#: Default epochs of a fine-tuning run (`init` set): measured in docs/training.md, "A scene model
#: from your own footage"; training from scratch uses the paper's 60.
FINE_TUNE_EPOCHS = 3


@dataclass
class TrainConfig:
    data: Path
    output: Path
    model: DESDnetConfig = field(default_factory=DESDnetConfig.lite)
    epochs: int = 60
    batch_size: int = 4
    lr: float = 2e-4
    seed: int = 0
    rgb_weight: float = 0.2
    compact_weight: float = 0.01
    nu: float = 0.1
    erasure: bool = True
    erasure_batches: int = 8  # "the last batches of the previous epoch" that build the mask
    calibration_videos: int = 1  # dataset layout: last N training videos held out to calibrate
    holdout_share: float = HOLDOUT_SHARE  # plain footage: share of each video's tail held out
    init: Path | None = None  # fine-tune from these weights (same network) instead of from scratch
    max_clips_per_epoch: int = 0  # 0 = all; for quick runs and tests
    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: bool = True
    command: str = ""
    device: str = "cpu"
    precision: str = "fp32"  # bf16: autocast on CUDA (losses and statistics stay in fp32)
    time_budget_s: float = 0.0  # > 0: plan the epoch count so the run ends within this many seconds

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"training precision must be fp32 or bf16, not {self.precision!r}")
        if self.precision == "bf16" and not self.device.startswith("cuda"):
            raise ValueError("bf16 training is for CUDA devices; on a CPU train in fp32")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device} was asked for but torch sees no CUDA GPU")

    def as_json(self) -> dict[str, object]:
        d = asdict(self)
        d["model"] = json.loads(self.model.to_json())
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    center: torch.Tensor | None = None
    radius: float = 0.0
    mask: torch.Tensor | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    wall_seconds: float = 0.0


class TrainError(ValueError):
    pass


def _checkpoint_path(cfg: TrainConfig) -> Path:
    folder = cfg.checkpoint_dir or cfg.output.with_suffix(".ckpt")
    return Path(folder) / "last.pt"


def cosine_schedule(optimizer: torch.optim.Optimizer, epochs: int, done: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine annealing to 0 over `epochs`, in closed form, positioned after `done` epochs.

    Closed form (not a stored recursion) so a resumed run may change its total number of epochs.
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])

    def factor(epoch: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=done - 1)


def save_checkpoint(path: Path, model: DESDnet, optimizer: torch.optim.Optimizer,
                    state: TrainState, cfg: TrainConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "center": None if state.center is None else state.center.cpu(),
        "radius": state.radius,
        "mask": None if state.mask is None else state.mask.cpu(),
        "history": json.dumps(state.history),
        "wall_seconds": state.wall_seconds,
        "config": cfg.model.to_json(),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model: DESDnet, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig) -> TrainState:
    # weights_only=True: the restricted unpickler that admits tensors and plain containers only.
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for damaged files
        raise TrainError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or "config" not in payload:
        raise TrainError(f"{path}: not a DESDnet training checkpoint")
    try:
        saved = DESDnetConfig.from_json(payload["config"])
    except (ValueError, TypeError) as exc:
        raise TrainError(f"{path}: invalid configuration in the checkpoint ({exc})") from exc
    # The score window does not enter training: a run may resume under another one.
    window = {"patch_size": cfg.model.patch_size, "patch_stride": cfg.model.patch_stride}
    if saved.with_(**window) != cfg.model:
        raise TrainError(f"{path}: checkpoint is for another configuration: {payload['config']}")
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        return TrainState(
            epoch=int(payload["epoch"]),
            center=payload["center"],
            radius=float(payload["radius"]),
            mask=payload["mask"],
            history=json.loads(payload["history"]),
            wall_seconds=float(payload["wall_seconds"]),
        )
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise TrainError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from exc


def patch_scores_of(model: DESDnet, frames: FrameSet, batch_size: int = 16,
                    progress: Progress = silent) -> torch.Tensor:
    """Raw patch scores (N,) of every clip of `frames` (eval mode, fp32, mapping encoder skipped)."""
    return scores_and_background(model, frames, batch_size, progress)[0]


def measure_calibration(model: DESDnet, frames: FrameSet, progress: Progress = silent) -> Calibration:
    """The calibration of the causal score on normal frames the model did not train on, with the
    statistics of their background level (the service's out-of-domain check)."""
    return Calibration.from_scores(*scores_and_background(model, frames, progress=progress))


@torch.no_grad()
def scores_and_background(model: DESDnet, frames: FrameSet, batch_size: int = 16,
                          progress: Progress = silent) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw patch scores (N,) and background levels (N,) (`model.scoring.background_level`) of every clip."""
    cfg = model.config
    model.eval()
    device = next(model.parameters()).device
    source = TensorClips(frames, cfg.frames, device)
    index = frames.clip_index(cfg.frames)
    scores, background = [], []
    # Strict fp32 on CUDA too (no TF32): the calibration must match what a CPU computes.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        starts = range(0, len(index), batch_size)
        for start in progress(starts, total=len(starts), desc="scoring calibration clips", unit="batch"):
            clip = source.clips(index[start : start + batch_size])
            out = model(clip, with_feature=False).image
            current = clip[:, -cfg.channels :]
            squared = error_map(out, current).square()
            scores.append(patch_score_squared(squared, cfg.patch_size, cfg.patch_stride).score.cpu())
            background.append(background_level(squared, cfg.patch_size, cfg.patch_stride).cpu())
    return torch.cat(scores), torch.cat(background)


def plan_epochs(cfg: TrainConfig, state: TrainState, run_seconds: float) -> int:
    """Total epochs for this run: cfg.epochs, or fewer so that it ends within cfg.time_budget_s."""
    if cfg.time_budget_s <= 0 or state.epoch == 0:
        return cfg.epochs
    recent = [h["seconds"] for h in state.history[-3:]]
    per_epoch = max(recent) if recent else run_seconds / state.epoch
    fits = int((cfg.time_budget_s - run_seconds) // max(per_epoch, 1e-6))
    return max(state.epoch, min(cfg.epochs, state.epoch + fits))


def _autocast(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    device_type = torch.device(cfg.device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")


def load_init(cfg: TrainConfig) -> LoadedWeights:
    """The weights `cfg.init` names, checked to be of `cfg.model`'s network (the score window may differ:
    it does not enter training)."""
    assert cfg.init is not None
    loaded = load_weights(cfg.init)
    window = {"patch_size": cfg.model.patch_size, "patch_stride": cfg.model.patch_stride}
    if loaded.config.with_(**window) != cfg.model:
        raise TrainError(f"{cfg.init}: the initial weights are for another network ({loaded.config.to_json()}); "
                         f"this run trains {cfg.model.to_json()}")
    return loaded


def train(cfg: TrainConfig, on_epoch: Callable[[TrainState], None] | None = None,
          progress: Progress | None = None) -> TrainState:
    """Train, checkpointing every epoch; write the weights and a model card at the end.

    `progress` wraps the long loops (reading footage, each epoch's batches, scoring the calibration
    clips); default: tqdm bars when `cfg.progress`, else none.
    """
    run_started = time.perf_counter()
    progress = progress if progress is not None else bars(cfg.progress)
    mcfg = cfg.model
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    ckpt = _checkpoint_path(cfg)
    if cfg.resume and not ckpt.is_file():  # before reading footage: fail fast
        raise TrainError(f"{ckpt}: no checkpoint to resume from")
    init = load_init(cfg) if cfg.init is not None else None
    data = load_training_data(cfg.data, mcfg, cfg.calibration_videos, cfg.holdout_share, progress)
    train_set = data.train
    index = train_set.clip_index(mcfg.frames)
    source = TensorClips(train_set, mcfg.frames, device)

    model = DESDnet(mcfg).to(device, memory_format=torch.channels_last)  # ~15 % faster on CPU
    state = TrainState()
    if init is not None:  # fine-tuning: the network, the SVDD centre and radius carry over
        model.load_state_dict(init.model.state_dict())
        state.center = None if init.center is None else init.center.to(device)
        state.radius = init.radius
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.resume:  # the checkpoint replaces the initial weights: it continues this very run
        state = load_checkpoint(ckpt, model, optimizer, cfg)
        state.center = None if state.center is None else state.center.to(device)
    planned = plan_epochs(cfg, state, 0.0)
    scheduler = cosine_schedule(optimizer, planned, state.epoch)

    steps = len(index) if cfg.max_clips_per_epoch <= 0 else min(len(index), cfg.max_clips_per_epoch)
    steps_per_epoch = math.ceil(steps / cfg.batch_size)
    c = mcfg.channels
    use_compact = cfg.compact_weight > 0
    first_epoch = state.epoch  # epochs before this run (resume): the ETA uses this run's epochs only

    while state.epoch < planned:
        epoch = state.epoch
        started = time.perf_counter()
        model.train()
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(index))[:steps]
        collector = ErasureMaskCollector(cfg.erasure_batches, mcfg.image_size, mcfg.image_size)
        mask = state.mask.to(device) if cfg.erasure and state.mask is not None else None
        feature_sum: torch.Tensor | None = None
        distances: list[torch.Tensor] = []
        # Running sums stay on the device: reading them every step would stall a GPU.
        totals = {k: torch.zeros((), device=device) for k in ("loss", "int", "rgb", "compact")}
        bar = progress(range(steps_per_epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{planned}",
                       unit="batch")
        show_losses = getattr(bar, "set_postfix", None)  # a tqdm bar shows the running losses
        for step in bar:
            rows = index[order[step * cfg.batch_size : (step + 1) * cfg.batch_size]]
            clip = source.clips(rows).contiguous(memory_format=torch.channels_last)
            current, previous = clip[:, -c:], clip[:, :-c]
            erased = apply_erasure(clip, mask)
            with _autocast(cfg):
                out = model(erased, with_feature=use_compact)
            image = out.image.float()
            l_int = intensity_loss(image, current)
            l_rgb = weighted_rgb_loss(image, previous, c)
            loss = l_int + cfg.rgb_weight * l_rgb
            l_compact = torch.zeros((), device=device)
            if use_compact:
                assert out.feature is not None
                feature = out.feature.float()
                if state.center is None:  # first epoch: accumulate the centre
                    batch_sum = feature.detach().sum(dim=0)
                    feature_sum = batch_sum if feature_sum is None else feature_sum + batch_sum
                else:
                    l_compact = svdd_soft_boundary_loss(feature, state.center, state.radius, cfg.nu)
                    loss = loss + cfg.compact_weight * l_compact
                    distances.append(svdd_distances(feature.detach(), state.center))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.erasure and step >= steps_per_epoch - cfg.erasure_batches:
                collector.add(image.detach(), current)
            for key, value in (("loss", loss), ("int", l_int), ("rgb", l_rgb), ("compact", l_compact)):
                totals[key] += value.detach()
            if show_losses is not None and step % 10 == 0:
                show_losses({k: f"{float(v) / (step + 1):.4f}" for k, v in totals.items()})
        if hasattr(bar, "close"):
            bar.close()
        scheduler.step()

        if use_compact and state.center is None and feature_sum is not None:
            state.center = feature_sum / steps
            # R from the first epoch's features is not kept; start from the distances next epoch.
            state.radius = 0.0
        elif distances:
            state.radius = svdd_radius(torch.cat(distances), cfg.nu)
        if cfg.erasure:
            state.mask = collector.mask()
        state.epoch = epoch + 1
        elapsed = time.perf_counter() - started
        state.wall_seconds += elapsed
        record = {k: float(v) / steps_per_epoch for k, v in totals.items()}
        record.update(epoch=epoch + 1, seconds=round(elapsed, 2), radius=state.radius,
                      erased_fraction=float(1 - state.mask.mean()) if state.mask is not None else 0.0,
                      lr=scheduler.get_last_lr()[0])
        state.history.append(record)
        save_checkpoint(ckpt, model, optimizer, state, cfg)
        if cfg.progress:
            run_epochs = [h["seconds"] for h in state.history[-(state.epoch - first_epoch):]]
            left = (planned - state.epoch) * sum(run_epochs) / max(len(run_epochs), 1)
            print(
                f"epoch {epoch + 1}/{planned}: loss {record['loss']:.5f} int {record['int']:.5f} "
                f"rgb {record['rgb']:.5f} compact {record['compact']:.4f} R {state.radius:.4f} "
                f"erased {record['erased_fraction']:.1%} ({elapsed:.0f} s"
                + (f"; about {_duration(left)} left)" if state.epoch < planned else ")"),
                flush=True,
            )
        replanned = plan_epochs(cfg, state, time.perf_counter() - run_started)
        if replanned != planned:  # the closed-form cosine follows the new total from here on
            planned = replanned
            scheduler = cosine_schedule(optimizer, planned, state.epoch)
        if on_epoch is not None:
            on_epoch(state)

    # Calibrate the causal score on held-out normal frames (or the training ones if none held out).
    calib_set = data.calibration if data.calibration is not None else train_set
    calibration = measure_calibration(model, calib_set, progress=progress)
    training = {
        "command": cfg.command,
        "train_config": cfg.as_json(),
        "epochs": state.epoch,
        "wall_seconds": round(state.wall_seconds, 1),
        **data.metadata(),
        "init_weights": None if cfg.init is None else {
            "path": str(cfg.init), "sha256": sha256_of(Path(cfg.init)),
            "calibration": asdict(init.calibration) if init is not None else None,
        },
        "history": state.history,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    save_weights(cfg.output, model.cpu(), state.center, state.radius, calibration, training)
    write_training_card(cfg.output, mcfg.to_json(), training, asdict(calibration))
    return state


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True)
class Recalibrated:
    old: Calibration
    new: Calibration
    scored: str  # which frames calibrated, for people

    def __iter__(self):  # type: ignore[no-untyped-def]  # `old, new = recalibrate(...)` keeps working
        return iter((self.old, self.new))


def recalibrate(
    weights_path: Path, data: Path, output: Path, patch_size: int | None = None,
    patch_stride: int | None = None, note: str = "", progress: Progress = silent,
) -> Recalibrated:
    """Rewrite a weights file with (another score window and) a calibration measured as training does.

    The window is a scoring choice, not a trained parameter: the tensors are copied unchanged. What is
    scored (`model.footage.calibration_data`): for a dataset root, the held-out calibration videos named
    in the file; for plain footage, the tail held out in training when the weights were trained on this
    footage, else all of it. Returns the old and new calibrations and which frames were scored. The
    change is recorded in the training metadata (`rescored`).
    """
    loaded = load_weights(weights_path)
    old_cfg = loaded.config
    changes = {k: v for k, v in (("patch_size", patch_size), ("patch_stride", patch_stride)) if v is not None}
    new_cfg = old_cfg.with_(**changes)
    footage, frames, scored = calibration_data(data, loaded.training, new_cfg, progress)
    model = DESDnet(new_cfg).to(memory_format=torch.channels_last)  # as training scored it
    model.load_state_dict(loaded.model.state_dict())
    calibration = measure_calibration(model, frames, progress=progress)
    training = dict(loaded.training)
    history = list(training.get("rescored", []))
    history.append({
        "from": {"patch_size": old_cfg.patch_size, "patch_stride": old_cfg.patch_stride},
        "to": {"patch_size": new_cfg.patch_size, "patch_stride": new_cfg.patch_stride},
        "data": str(data),
        "calibration_videos": [v.label for v in frames.videos],
        "scored": scored,
        "file_list_sha256": file_list_hash(list(footage.videos)),
        "note": note,
    })
    training["rescored"] = history
    old_card = card_path(Path(weights_path))
    notes = json.loads(old_card.read_text()).get("notes", []) if old_card.is_file() else []
    save_weights(Path(output), model, loaded.center, loaded.radius, calibration, training)
    card = write_training_card(Path(output), new_cfg.to_json(), training, asdict(calibration))
    if notes:  # hand-written notes survive; evaluation results do not (they were for the old window)
        kept = {**json.loads(card.read_text()), "notes": notes}
        card.write_text(json.dumps(kept, indent=2) + "\n")
        Path(output).with_suffix(".md").write_text(render_markdown(kept))
    return Recalibrated(loaded.calibration, calibration, scored)
