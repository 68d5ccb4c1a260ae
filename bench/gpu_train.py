"""Train one configuration on a GPU machine with only torch and `model` installed (no `vad` CLI).

Same trainer as `vad train`; the card records this command. Example:
    python bench/gpu_train.py --config paper --data .gpu/ped2 --output /tmp/w/ped2-paper.safetensors \
        --device cuda --precision bf16 --time-budget 320
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.network import DESDnetConfig  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=["paper", "lite"], default="lite")
    p.add_argument("--base-width", type=int, help="override the configuration's base width")
    p.add_argument("--image-size", type=int, help="override the configuration's frame size")
    p.add_argument("--patch", type=int, nargs=2, metavar=("SIZE", "STRIDE"), help="override the score window")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds; plans the epoch count to fit")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-clips", type=int, default=0, help="clips per epoch (0 = all); for smoke tests")
    args = p.parse_args(argv)

    config = DESDnetConfig.named(args.config)
    changes: dict[str, object] = {}
    if args.base_width:
        changes["base_width"] = args.base_width
    if args.image_size:
        changes["image_size"] = args.image_size
    if args.patch:
        changes["patch_size"], changes["patch_stride"] = args.patch
    config = config.with_(**changes) if changes else config
    cfg = TrainConfig(
        data=args.data, output=args.output, model=config, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, max_clips_per_epoch=args.max_clips, device=args.device, precision=args.precision,
        time_budget_s=args.time_budget, progress=True,
        command="python bench/gpu_train.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
    )
    if args.device.startswith("cuda"):
        import torch

        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    state = train(cfg)
    print(f"done: {state.epoch} epochs, {state.wall_seconds:.0f} s of epochs -> {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
