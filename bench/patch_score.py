"""Patch score (Algorithm A1) on a 256×256 error map: vectorised `patch_score` vs the published
pipeline's Python double loop `patch_score_loop`.

    .venv/bin/python bench/patch_score.py [--size 256] [--patch 16] [--stride 4] [--batch 1]

Prints the median milliseconds per frame of each and their ratio. One intra-op thread by default,
so the numbers do not depend on what else the machine is running on its other cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import time_call  # noqa: E402
from model.scoring import patch_score, patch_score_loop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200, help="of the vectorised version")
    parser.add_argument("--loop-repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    errors = torch.randn(args.batch, args.size, args.size, generator=torch.Generator().manual_seed(0))
    fast = patch_score(errors, args.patch, args.stride).score
    loop = patch_score_loop(errors, args.patch, args.stride)
    torch.testing.assert_close(fast, loop, rtol=1e-5, atol=1e-7)

    fast_timing = time_call(lambda: patch_score(errors, args.patch, args.stride), 0.0, warmup=3, min_runs=args.repeats)
    loop_timing = time_call(lambda: patch_score_loop(errors, args.patch, args.stride), 0.0, warmup=1,
                            min_runs=args.loop_repeats)
    fast_ms, loop_ms = fast_timing.median_s * 1e3 / args.batch, loop_timing.median_s * 1e3 / args.batch
    print(f"patch score, {args.size}x{args.size} map, {args.patch}x{args.patch} window, stride {args.stride}, "
          f"batch {args.batch}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"  patch_score       {fast_ms:9.3f} ms/frame (median of {args.repeats})")
    print(f"  patch_score_loop  {loop_ms:9.3f} ms/frame (median of {args.loop_repeats})")
    print(f"  ratio             {loop_ms / fast_ms:9.0f}x")


if __name__ == "__main__":
    main()
