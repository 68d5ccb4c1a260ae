"""The model's commands: `vad info`, `vad train`, `vad evaluate`, `vad recalibrate`, `vad export`.

`register(sub)` adds them to the root `vad` parser (service/cli.py). Heavy imports happen inside each
command so `vad --help` stays fast. Errors the user can fix raise `CliError` (or the model's own
DatasetError / WeightsError / TrainError), which the root parser prints as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .paths import DEFAULT_WEIGHTS


class CliError(Exception):
    """A problem with a command's arguments or files; the message names the file and the problem."""


NETWORK_FLAGS = (("config", "--config"), ("image_size", "--image-size"), ("width", "--width"),
                 ("channels", "--channels"), ("mode", "--mode"))


def _config_from_args(args: argparse.Namespace):  # -> DESDnetConfig
    from model import DESDnetConfig

    config = DESDnetConfig.named(getattr(args, "config", None) or "lite")
    changes = {}
    if getattr(args, "image_size", None):
        scale = args.image_size / config.image_size
        changes.update(
            image_size=args.image_size,
            patch_size=max(1, round(config.patch_size * scale)),
            patch_stride=max(1, round(config.patch_stride * scale)),
        )
    if getattr(args, "width", None):
        changes["base_width"] = args.width
    if getattr(args, "channels", None):
        changes["channels"] = args.channels
    if (getattr(args, "mode", None) or "both") != "both":
        changes["use_prediction"] = args.mode == "prediction"
        changes["use_reconstruction"] = args.mode == "reconstruction"
    return config.with_(**changes) if changes else config


def cmd_info(args: argparse.Namespace) -> None:
    from model.network import DESDnet, count_flops

    config = _config_from_args(args)
    net = DESDnet(config)
    print(f"configuration: {args.config}  {config.to_json()}")
    print(f"parameters: {net.num_parameters() / 1e6:.2f} M "
          f"({net.num_parameters(with_mapping=False) / 1e6:.2f} M without the mapping encoder)")
    print(f"GFLOP per frame: {count_flops(net) / 1e9:.1f} "
          f"({count_flops(net, with_feature=False) / 1e9:.1f} without the mapping encoder)")


def _init_weights(args: argparse.Namespace, plain: bool) -> Path | None:
    """--init: a weights file, `none`, or unset (plain footage: the shipped weights; a dataset: none)."""
    if args.init is None:
        return DEFAULT_WEIGHTS if plain else None
    return None if args.init.lower() == "none" else Path(args.init)


def _network_for(args: argparse.Namespace, init: Path | None):  # -> (DESDnetConfig, LoadedWeights | None)
    """The network to train: the initial weights' (network flags may only repeat it) or the flags'."""
    if init is None:
        return _config_from_args(args), None
    from model.weights import load_weights

    loaded = load_weights(init)
    given = [flag for key, flag in NETWORK_FLAGS if getattr(args, key, None) is not None]
    window = {"patch_size": loaded.config.patch_size, "patch_stride": loaded.config.patch_stride}
    wanted = _config_from_args(args).with_(**window)
    if given and wanted != loaded.config:
        differs = ", ".join(f"{k} ({getattr(wanted, k)} asked, {v} in the weights)"
                            for k, v in json.loads(loaded.config.to_json()).items() if getattr(wanted, k) != v)
        raise CliError(
            f"{' '.join(given)} conflict{'s' if len(given) == 1 else ''} with --init {init}: fine-tuning keeps "
            f"the network of the initial weights, which differs in {differs}; drop "
            f"{'it' if len(given) == 1 else 'them'}, or pass --init none to train from scratch"
        )
    return loaded.config, loaded


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from model.footage import find_footage
    from model.progress import bars
    from model.train import FINE_TUNE_EPOCHS, TrainConfig, train
    from model.weights import load_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    footage = find_footage(args.data)
    init = _init_weights(args, footage.plain)
    config, loaded = _network_for(args, init)
    # Fine-tuning keeps the objective the initial weights were trained with (the shipped ones: no
    # reverse erasure) unless --erasure / --no-erasure says otherwise.
    erasure = args.erasure
    if erasure is None:
        erasure = bool(loaded.training.get("train_config", {}).get("erasure", True)) if loaded else True
    epochs = args.epochs if args.epochs is not None else (FINE_TUNE_EPOCHS if init else 60)
    cfg = TrainConfig(
        data=Path(args.data),
        output=Path(args.output),
        model=config,
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        rgb_weight=args.rgb_weight,
        compact_weight=0.0 if args.no_compact else args.compact_weight,
        erasure=erasure,
        erasure_batches=args.erasure_batches,
        calibration_videos=args.calibration_videos,
        holdout_share=args.holdout_share,
        init=init,
        max_clips_per_epoch=args.max_clips,
        checkpoint_dir=Path(args.checkpoint_dir) if args.checkpoint_dir else None,
        resume=args.resume,
        progress=not args.quiet,
        command="vad " + shlex.join(sys.argv[1:]),
    )
    if not args.quiet:
        start = f"fine-tuning {init}" if init else "training from scratch"
        print(f"{start} on {footage.describe()} for {epochs} epoch{'s' if epochs != 1 else ''}", flush=True)
    state = train(cfg, progress=bars(not args.quiet))
    weights = load_weights(cfg.output)
    held = weights.training.get("calibration_frames") or weights.training.get("calibration_videos") or []
    cal = weights.calibration
    print(f"wrote {cfg.output} after {state.epoch} epochs ({state.wall_seconds / 60:.1f} min)")
    print(f"calibration on {cal.count} held-out clips ({', '.join(_labels(held)) or 'the training frames'}): "
          f"log-score mean {cal.log_mean:.4f}, sigma {cal.log_std:.4f}, threshold {cal.threshold:g}")


def _labels(held: object) -> list[str]:
    if isinstance(held, dict):
        return [f"{name}[{start}:{stop}]" for name, (start, stop) in held.items()]
    return [str(h) for h in held]  # type: ignore[attr-defined]


def cmd_evaluate(args: argparse.Namespace) -> None:
    from model.evaluate import EvaluateOptions, evaluate, format_report

    report = evaluate(
        EvaluateOptions(
            weights=Path(args.weights),
            data=Path(args.data),
            batch_size=args.batch_size,
            plots=Path(args.plots) if args.plots else None,
            localization=args.localization,
            backend=args.backend,
            precision=args.precision,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            progress=not args.quiet and not args.json,
        )
    )
    if args.update_card:
        from model.card import add_evaluation

        print(f"updated {add_evaluation(Path(args.weights), report)}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))


def cmd_recalibrate(args: argparse.Namespace) -> None:
    from model.progress import bars
    from model.train import recalibrate

    output = Path(args.output or args.weights)
    result = recalibrate(Path(args.weights), Path(args.data), output, args.patch_size, args.patch_stride,
                         args.note or "", progress=bars(not args.quiet))
    old, new = result
    print(f"scored {result.scored}")
    print(f"wrote {output}: log-score mean {old.log_mean:.4f} -> {new.log_mean:.4f}, "
          f"sigma {old.log_std:.4f} -> {new.log_std:.4f}, threshold {old.threshold:g} -> {new.threshold:g}")
    print(f"re-run `vad evaluate --weights {output} --data {args.data} --update-card` for its card's figures")


def cmd_export(args: argparse.Namespace) -> None:
    import torch

    from model.export import export_onnx
    from model.weights import load_weights

    loaded = load_weights(Path(args.weights))
    model = loaded.model.eval()
    output = Path(args.output)
    try:
        export_onnx(model, output, opset=args.opset, dynamic_batch=not args.static_batch)
    except ImportError as exc:
        raise CliError(f"{exc}; pip install onnx (or pip install -e '.[fast]')") from exc
    size_mb = output.stat().st_size / 1e6
    print(f"wrote {output} ({size_mb:.1f} MB, opset {args.opset}, "
          f"{'batch 1' if args.static_batch else 'dynamic batch'}; reconstruction path: clip -> image)")
    if args.no_check:
        return
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: output not checked against PyTorch")
        return
    cfg = loaded.config
    batch = 1 if args.static_batch else 2
    clips = torch.rand(batch, cfg.frames * cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (image,) = session.run(["image"], {"clip": clips.numpy()})
    with torch.no_grad():
        expected = model(clips, with_feature=False).image
    diff = float((torch.from_numpy(image) - expected).abs().max())
    print(f"check: onnxruntime vs PyTorch max abs difference {diff:.2e} on {batch} random clips")
    if diff > 1e-3:
        raise CliError(f"{output}: ONNX output differs from PyTorch by {diff:.3g}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def model_args(p: argparse.ArgumentParser, config_default: str | None = "lite") -> None:
        p.add_argument("--config", choices=["paper", "lite"], default=config_default,
                       help="network preset (default lite)")
        p.add_argument("--image-size", type=int, help="override the input size (score window scales with it)")
        p.add_argument("--width", type=int, help="override the base width (64 in the paper)")
        p.add_argument("--channels", type=int, choices=[1, 3], help="override the image channels")

    p = sub.add_parser("info", help="parameters and GFLOP per frame of a configuration")
    model_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "train", help="train (or fine-tune) on a dataset or plain footage, write weights + model card",
        description="Train on DATA: a dataset root holding training/, a video file, a folder of videos, a "
        "folder of frames or a folder of frame folders. Plain footage (anything but a dataset root) "
        "fine-tunes the shipped weights by default and holds each video's tail out for calibration.",
    )
    model_args(p, config_default=None)  # None: not given, so it cannot conflict with --init
    p.add_argument("--data", required=True,
                   help="dataset root holding training/, a video file, or a folder of videos, frames or frame folders")
    p.add_argument("--output", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="fine-tune from these weights, or `none` to train from scratch (default: the shipped "
                   f"{DEFAULT_WEIGHTS.name} for plain footage, none for a dataset root)")
    p.add_argument("--epochs", type=int, help="default: 60 from scratch, 3 when fine-tuning (--init)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rgb-weight", type=float, default=0.2, help="λ of the weighted RGB loss (Table E4)")
    p.add_argument("--compact-weight", type=float, default=0.01)
    p.add_argument("--no-compact", action="store_true", help="ablation: no Deep SVDD loss (Table D2)")
    p.add_argument("--erasure", action=argparse.BooleanOptionalAction, default=None,
                   help="reverse erasure (--no-erasure: the Table E2 ablation; default: on, or as the --init "
                   "weights were trained)")
    p.add_argument("--erasure-batches", type=int, default=8)
    p.add_argument("--mode", choices=["both", "prediction", "reconstruction"],
                   help="ablation: one stream only (Table D1); default both")
    p.add_argument("--calibration-videos", type=int, default=1,
                   help="dataset root: last N training videos held out to calibrate the causal score")
    p.add_argument("--holdout-share", type=float, default=0.15,
                   help="plain footage: share of each video's tail held out for calibration (at least 50 frames in all)")
    p.add_argument("--max-clips", type=int, default=0, help="clips per epoch (0 = all)")
    p.add_argument("--checkpoint-dir", help="default: OUTPUT with suffix .ckpt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="frame-level AUC / EER under the paper and causal protocols")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--data", required=True, help="dataset root holding testing/")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--plots", help="folder for one score-curve PNG per test video")
    p.add_argument("--localization", action="store_true",
                   help="also measure heatmap mass inside testing/masks")
    p.add_argument("--backend", default="torch")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--cache-dir", help="exported/quantised model cache (default $VAD_CACHE_DIR, else ~/.cache/vad)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--update-card", action="store_true",
                   help="merge the results into the model card beside the weights (.json and .md)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "recalibrate",
        help="change a weights file's score window and measure its calibration again (no training)",
    )
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True,
                   help="what to calibrate on: a dataset root (its held-out training videos), or footage as "
                   "vad train takes it (the tail held out in training if the weights were trained on it, else all)")
    p.add_argument("--patch-size", type=int, help="score window side in model pixels")
    p.add_argument("--patch-stride", type=int, help="score window stride in model pixels")
    p.add_argument("--output", help="weights file to write (default: overwrite --weights)")
    p.add_argument("--note", help="why, recorded in the weights' metadata and card")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_recalibrate)

    p = sub.add_parser("export", help="export the reconstruction path to ONNX (dynamic batch)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--weights", required=True, help="weights file (.safetensors)")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")
    p.set_defaults(func=cmd_export)
