"""Seconds per training epoch of a configuration on this machine, from the median of timed steps.

    python bench/train_epoch.py --config paper --steps 3
    python bench/train_epoch.py --config lite --steps 10

One step is what `vad train` does per batch: forward with the mapping encoder, the three losses,
backward and an Adam update, channels_last. Ped2's training split gives 2340 clips per epoch
(15 videos; the 16th is held out for calibration), i.e. 585 steps at batch 4.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model import DESDnet, DESDnetConfig
from model.losses import intensity_loss, svdd_soft_boundary_loss, weighted_rgb_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["paper", "lite"], default="lite")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clips-per-epoch", type=int, default=2340)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DESDnetConfig.named(args.config)
    model = DESDnet(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    c, s = config.channels, config.image_size
    clip = torch.rand(args.batch_size, config.frames * c, s, s).mul(2).sub(1)
    clip = clip.contiguous(memory_format=torch.channels_last)
    center = torch.zeros(config.widths[3])
    times = []
    for step in range(args.steps + 1):
        began = time.perf_counter()
        out = model(clip)
        assert out.feature is not None
        loss = (intensity_loss(out.image, clip[:, -c:]) + 0.2 * weighted_rgb_loss(out.image, clip[:, :-c], c)
                + 0.01 * svdd_soft_boundary_loss(out.feature, center, 0.1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - began)
    per_step = statistics.median(times)
    steps = -(-args.clips_per_epoch // args.batch_size)
    print(f"{args.config}: {per_step:.3f} s per step of {args.batch_size} clips (median of {len(times)}), "
          f"{steps} steps per Ped2 epoch -> {per_step * steps / 60:.1f} min per epoch "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
