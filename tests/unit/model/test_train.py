from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import model.train as train_module
from model.data import DatasetError, file_list_hash, list_videos
from model.network import DESDnet
from model.train import TrainError, TrainState, train
from model.weights import load_weights
from tests.support.data import TINY
from tests.support.training import EPOCHS, TrainedRun, tiny_train_config


def test_loss_falls(trained: TrainedRun) -> None:
    history = trained.state.history
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["int"] < 0.6 * history[0]["int"]
    assert history[0]["compact"] == 0.0  # no compactness loss before the centre exists
    assert all(h["compact"] > 0 for h in history[1:])


def test_weights_file_holds_config_centre_radius_calibration_and_metadata(trained: TrainedRun) -> None:
    weights = load_weights(trained.weights, expect=TINY)
    assert weights.center is not None and weights.center.shape == (TINY.widths[3],)
    assert torch.equal(weights.center, trained.state.center)
    assert weights.radius == trained.state.radius > 0
    cal = weights.calibration
    assert cal.count == 40 - 4  # every clip of the held-out video 03
    assert math.isfinite(cal.log_mean) and cal.log_std > 0 and math.isfinite(cal.threshold)
    assert set(cal.quantiles) >= {"p50", "p99", "max"}
    meta = weights.training
    videos = list_videos(trained.data / "training")
    assert meta["file_list_sha256"] == file_list_hash(videos)
    assert meta["training_videos"] == ["01", "02"] and meta["calibration_videos"] == ["03"]
    assert meta["epochs"] == EPOCHS and len(meta["history"]) == EPOCHS
    assert meta["train_config"]["lr"] == 1e-3 and meta["train_config"]["model"]["base_width"] == 4
    assert meta["torch"] == torch.__version__
    assert meta["wall_seconds"] >= 0


def test_centre_after_epoch_1_and_erasure_mask_used_from_epoch_2(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epoch = 0  # epochs completed, advanced by on_epoch
    snapshots: list[dict[str, object]] = []
    masks_used: list[tuple[int, torch.Tensor | None]] = []
    centres_used: list[tuple[int, torch.Tensor]] = []
    epoch1_features: list[torch.Tensor] = []

    real_apply, real_svdd, real_forward = (
        train_module.apply_erasure, train_module.svdd_soft_boundary_loss, DESDnet.forward)

    def apply_erasure(clip: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        masks_used.append((epoch, None if mask is None else mask.clone()))
        return real_apply(clip, mask)

    def svdd(feature: torch.Tensor, center: torch.Tensor, radius: float, nu: float = 0.1) -> torch.Tensor:
        centres_used.append((epoch, center.clone()))
        return real_svdd(feature, center, radius, nu)

    def forward(self: DESDnet, clip: torch.Tensor, with_feature: bool = True):  # noqa: ANN202
        out = real_forward(self, clip, with_feature)
        if epoch == 0 and self.training and out.feature is not None:
            epoch1_features.append(out.feature.detach().clone())
        return out

    def on_epoch(state: TrainState) -> None:
        nonlocal epoch
        epoch = state.epoch
        snapshots.append({
            "epoch": state.epoch,
            "center": None if state.center is None else state.center.clone(),
            "mask": None if state.mask is None else state.mask.clone(),
            "radius": state.radius,
        })

    monkeypatch.setattr(train_module, "apply_erasure", apply_erasure)
    monkeypatch.setattr(train_module, "svdd_soft_boundary_loss", svdd)
    monkeypatch.setattr(DESDnet, "forward", forward)
    train(tiny_train_config(synthetic_root, tmp_path, epochs=3), on_epoch=on_epoch)

    assert [s["epoch"] for s in snapshots] == [1, 2, 3]
    steps = math.ceil(16 / 4)
    assert [e for e, _ in masks_used] == [0] * steps + [1] * steps + [2] * steps
    # Epoch 1: no mask and no compactness loss; the centre and the mask appear when it ends.
    assert all(mask is None for e, mask in masks_used if e == 0)
    assert all(e >= 1 for e, _ in centres_used) and len(centres_used) == 2 * steps
    first = snapshots[0]
    assert isinstance(first["center"], torch.Tensor) and first["center"].shape == (TINY.widths[3],)
    torch.testing.assert_close(first["center"], torch.cat(epoch1_features).mean(dim=0), rtol=1e-5, atol=1e-6)
    assert first["radius"] == 0.0
    mask1 = first["mask"]
    assert isinstance(mask1, torch.Tensor) and mask1.shape == (32, 32)
    assert set(mask1.unique().tolist()) <= {0.0, 1.0} and 0 < mask1.mean() < 1
    # Epoch 2 uses the mask and centre of epoch 1; epoch 3 the mask of epoch 2, the same centre.
    for e, mask in masks_used:
        if e >= 1:
            assert mask is not None and torch.equal(mask, snapshots[e - 1]["mask"])
    for _, center in centres_used:
        assert torch.equal(center, first["center"])
    assert snapshots[1]["radius"] > 0


def test_ablation_switches_leave_no_centre_and_no_mask(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(synthetic_root, tmp_path, epochs=2, max_clips_per_epoch=8,
                            compact_weight=0.0, erasure=False)
    state = train(cfg)
    assert state.center is None and state.mask is None and state.radius == 0.0
    assert all(h["compact"] == 0 and h["erased_fraction"] == 0 for h in state.history)
    assert load_weights(cfg.output).center is None


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_continues_identically(synthetic_root: Path, tmp_path: Path) -> None:
    straight_cfg = tiny_train_config(synthetic_root, tmp_path / "straight", epochs=3)
    straight = train(straight_cfg)

    def stop_after_2(state: TrainState) -> None:
        if state.epoch == 2:
            raise Interrupted

    first_cfg = tiny_train_config(synthetic_root, tmp_path / "resumed", epochs=3)
    with pytest.raises(Interrupted):
        train(first_cfg, on_epoch=stop_after_2)
    assert not first_cfg.output.exists()  # interrupted before the end: only the checkpoint
    resumed_cfg = tiny_train_config(synthetic_root, tmp_path / "resumed", epochs=3, resume=True)
    resumed = train(resumed_cfg)

    assert resumed.epoch == straight.epoch == 3
    a, b = load_file(str(straight_cfg.output)), load_file(str(resumed_cfg.output))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    assert resumed.radius == pytest.approx(straight.radius, rel=1e-6)
    assert torch.equal(resumed.mask, straight.mask)
    for h_straight, h_resumed in zip(straight.history, resumed.history, strict=True):
        assert h_resumed["loss"] == pytest.approx(h_straight["loss"], rel=1e-6)
    wa, wb = load_weights(straight_cfg.output), load_weights(resumed_cfg.output)
    assert wb.calibration.log_mean == pytest.approx(wa.calibration.log_mean, rel=1e-6)


def test_resume_errors(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = tiny_train_config(synthetic_root, tmp_path, epochs=1, max_clips_per_epoch=4, resume=True)
    ckpt = cfg.checkpoint_dir / "last.pt"
    with pytest.raises(TrainError, match="no checkpoint to resume from") as info:
        train(cfg)
    assert str(ckpt) in str(info.value)

    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(TrainError, match="not a readable checkpoint") as info:
        train(cfg)
    assert str(ckpt) in str(info.value)

    ckpt.unlink()
    train(tiny_train_config(synthetic_root, tmp_path, epochs=1, max_clips_per_epoch=4))
    other = tiny_train_config(synthetic_root, tmp_path, epochs=2, max_clips_per_epoch=4, resume=True,
                              model=TINY.with_(base_width=8))
    with pytest.raises(TrainError, match="checkpoint is for another configuration") as info:
        train(other)
    assert str(ckpt) in str(info.value)


def test_training_on_a_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such dataset folder") as info:
        train(tiny_train_config(tmp_path / "absent", tmp_path))
    assert str(tmp_path / "absent") in str(info.value)


def test_time_budget_plans_fewer_epochs_and_anneals_to_the_planned_end(synthetic_root: Path, tmp_path: Path) -> None:
    """With a budget, the epoch count is re-planned after every epoch from the slowest recent one;
    the closed-form cosine then follows the new total, so the last epoch still ends at lr 0."""
    cfg = tiny_train_config(synthetic_root, tmp_path, epochs=50, time_budget_s=1e-3)
    state = train(cfg)
    assert state.epoch == 1  # the budget is spent by the first epoch: stop there, weights written
    assert load_weights(cfg.output).training["train_config"]["time_budget_s"] == 1e-3

    planned = TrainState(epoch=2, history=[{"seconds": 1.0}, {"seconds": 3.0}])
    assert train_module.plan_epochs(tiny_train_config(synthetic_root, tmp_path, epochs=50, time_budget_s=20.0),
                                    planned, 6.0) == 2 + 4  # (20 - 6) // 3
    assert train_module.plan_epochs(tiny_train_config(synthetic_root, tmp_path, epochs=3, time_budget_s=1e6),
                                    planned, 6.0) == 3  # never more than asked for
    assert train_module.plan_epochs(tiny_train_config(synthetic_root, tmp_path, epochs=50), planned, 6.0) == 50


def test_training_options_are_checked(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bf16 training is for CUDA"):
        tiny_train_config(synthetic_root, tmp_path, precision="bf16")
    with pytest.raises(ValueError, match="fp32 or bf16"):
        tiny_train_config(synthetic_root, tmp_path, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            tiny_train_config(synthetic_root, tmp_path, device="cuda")


def test_recalibrate_changes_only_the_score_window_and_its_calibration(trained: TrainedRun, tmp_path: Path) -> None:
    same = tmp_path / "same.safetensors"
    train_module.recalibrate(trained.weights, trained.data, same)
    original, again = load_weights(trained.weights), load_weights(same)
    # Same window: the calibration training measured is measured again, to the last digit.
    assert again.calibration == original.calibration

    wider = tmp_path / "wider.safetensors"
    old, new = train_module.recalibrate(trained.weights, trained.data, wider, patch_size=8, patch_stride=4,
                                        note="a test")
    rescored = load_weights(wider)
    assert rescored.config == trained.config.with_(patch_size=8, patch_stride=4)
    assert old == original.calibration and new == rescored.calibration != original.calibration
    a, b = load_file(str(trained.weights)), load_file(str(wider))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (entry,) = rescored.training["rescored"]
    assert entry["from"] == {"patch_size": trained.config.patch_size, "patch_stride": trained.config.patch_stride}
    assert entry["to"] == {"patch_size": 8, "patch_stride": 4} and entry["note"] == "a test"
    assert rescored.training["epochs"] == original.training["epochs"]
    with pytest.raises(ValueError, match="patch_size must lie"):
        train_module.recalibrate(trained.weights, trained.data, tmp_path / "x.safetensors", patch_size=999)


def test_a_run_resumes_under_another_score_window(synthetic_root: Path, tmp_path: Path) -> None:
    """The score window does not enter training: a checkpoint resumes with another one, and the
    weights carry (and are calibrated with) the window of the resumed run."""
    train(tiny_train_config(synthetic_root, tmp_path, epochs=1, max_clips_per_epoch=4))
    wider = TINY.with_(patch_size=8, patch_stride=4)
    cfg = tiny_train_config(synthetic_root, tmp_path, epochs=2, max_clips_per_epoch=4, resume=True, model=wider)
    assert train(cfg).epoch == 2
    assert load_weights(cfg.output).config == wider


# ---- fine-tuning on plain footage (--init) -----------------------------------------------------------


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 frames of one synthetic scene as a video file: 70 to train on, the last 50 held out."""
    from tests.unit.model.test_footage import write_avi

    return write_avi(tmp_path_factory.mktemp("scene") / "scene.avi", 120, seed=5)


def test_fine_tuning_starts_from_the_initial_weights(trained: TrainedRun, scene_video: Path, tmp_path: Path) -> None:
    """At lr 0 a fine-tuning run leaves the initial parameters and SVDD centre exactly as they were
    (batch-norm statistics follow the footage), and calibrates them on the footage's held-out tail;
    the metadata and the card say so."""
    from model.card import sha256_of

    cfg = tiny_train_config(scene_video, tmp_path, init=trained.weights, lr=0.0, epochs=1, max_clips_per_epoch=8)
    train(cfg)
    initial, tuned = load_weights(trained.weights), load_weights(cfg.output)
    a, b = load_file(str(trained.weights)), load_file(str(cfg.output))
    buffers = {name for name, _ in DESDnet(TINY).named_buffers()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k not in buffers)
    assert any(not torch.equal(a[k], b[k]) for k in buffers)
    assert torch.equal(tuned.center, initial.center)
    meta = tuned.training
    assert meta["init_weights"]["sha256"] == sha256_of(trained.weights)
    assert meta["init_weights"]["path"] == str(trained.weights)
    assert meta["calibration_videos"] == ["scene.avi"] and meta["calibration_frames"] == {"scene.avi": [70, 120]}
    assert meta["training_frames"] == {"scene.avi": [0, 70]} and meta["data_kind"] == "video file"
    assert tuned.calibration.count == 50 - 4 and tuned.calibration != initial.calibration
    card = cfg.output.with_suffix(".md").read_text()
    assert f"fine-tuned from `{trained.weights}`" in card and "scene.avi[70:120]" in card


def test_fine_tuning_learns_the_scene_and_reports_progress(trained: TrainedRun, scene_video: Path,
                                                           tmp_path: Path) -> None:
    steps: list[tuple[str, int | None, str]] = []

    def progress(items, *, total=None, desc="", unit="it"):  # noqa: ANN001, ANN202 - a Progress
        steps.append((desc, total, unit))
        return iter(items)

    cfg = tiny_train_config(scene_video, tmp_path, init=trained.weights, epochs=2, max_clips_per_epoch=16)
    state = train(cfg, progress=progress)
    assert all(math.isfinite(h["loss"]) for h in state.history)
    a, b = load_file(str(trained.weights)), load_file(str(cfg.output))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert steps == [("reading scene.avi", 120, "frame"), ("epoch 1/2", 4, "batch"), ("epoch 2/2", 4, "batch"),
                     ("scoring calibration clips", 3, "batch")]


def test_fine_tuning_refuses_weights_of_another_network(trained: TrainedRun, scene_video: Path,
                                                        tmp_path: Path) -> None:
    cfg = tiny_train_config(scene_video, tmp_path, init=trained.weights, model=TINY.with_(base_width=8))
    with pytest.raises(TrainError, match="the initial weights are for another network") as info:
        train(cfg)
    assert str(info.value).startswith(f"{trained.weights}: ")


def test_recalibrate_on_plain_footage(trained: TrainedRun, scene_video: Path, tmp_path: Path) -> None:
    """On the footage trained on: its held-out tail again (the same calibration to the last digit);
    weights trained elsewhere calibrate on every frame of it."""
    cfg = tiny_train_config(scene_video, tmp_path, init=trained.weights, epochs=1, max_clips_per_epoch=8)
    train(cfg)
    result = train_module.recalibrate(cfg.output, scene_video, tmp_path / "again.safetensors")
    assert result.new == load_weights(cfg.output).calibration and "the tail held out in training" in result.scored
    (entry,) = load_weights(tmp_path / "again.safetensors").training["rescored"]
    assert entry["calibration_videos"] == ["scene.avi[70:120]"] and entry["data"] == str(scene_video)

    elsewhere = train_module.recalibrate(trained.weights, scene_video, tmp_path / "scene-cal.safetensors")
    assert elsewhere.new.count == 120 - 4 and "not trained on this footage" in elsewhere.scored
    assert load_weights(tmp_path / "scene-cal.safetensors").training["calibration_videos"] == ["03"]
