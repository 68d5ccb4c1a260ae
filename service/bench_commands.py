"""`vad export` and `vad bench`: registered on the `vad` parser by `register(sub)`.

    vad export --format onnx --weights W.safetensors --output O.onnx [--opset 17] [--static-batch]
    vad bench [--config paper|lite | --weights W] [--backends torch,onnxruntime,openvino]
              [--precisions fp32,bf16,int8] [--batch-sizes 1,4,8] [--seconds 10] [--output bench/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_BENCH_OUTPUT = Path("bench") / "results"


def _fail(command: str, message: str) -> None:
    print(f"vad {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _names(valid: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in valid]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(valid)} (comma-separated), got {text!r}")
        return items

    return parse


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, comma-separated, got {text!r}")
    return sizes


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
        _fail("export", f"{exc}; pip install onnx (or pip install -e '.[fast]')")
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
        _fail("export", f"{output}: ONNX output differs from PyTorch by {diff:.3g}")


def cmd_bench(args: argparse.Namespace) -> None:
    from model.network import DESDnetConfig
    from service.bench import ModelBenchOptions, run_bench, write_report

    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        _fail("bench", f"{data}: no such dataset folder")
    options = ModelBenchOptions(
        config=DESDnetConfig.named(args.config),
        weights=Path(args.weights) if args.weights else None,
        backends=args.backends,
        precisions=args.precisions,
        batch_sizes=args.batch_sizes,
        seconds=args.seconds,
        warmup=args.warmup,
        threads=args.threads,
        data=data,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        pipeline=not args.no_pipeline,
        progress=not args.quiet,
        extra={"label": args.label} if args.label else {},
    )
    report = run_bench(options)
    json_path, md_path = write_report(report, Path(args.output))
    print(f"wrote {json_path} and {md_path}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `export` and `bench` to the `vad` sub-command parser."""
    from model.runtimes import VALID

    p = sub.add_parser("export", help="export the reconstruction path to ONNX (dynamic batch)")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--weights", required=True, help="weights file (.safetensors)")
    p.add_argument("--output", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch check")
    p.set_defaults(func=cmd_export)

    backends = tuple(VALID)
    precisions = tuple(sorted({p for ps in VALID.values() for p in ps}))
    p = sub.add_parser("bench", help="model throughput per backend / precision / batch, vs the paper pipeline")
    p.add_argument("--config", choices=["paper", "lite"], default="lite",
                   help="network to time with random weights (ignored with --weights)")
    p.add_argument("--weights", help="time this weights file instead of a random network")
    p.add_argument("--backends", type=_names(backends), default=("torch", "onnxruntime", "openvino"),
                   help=f"comma-separated subset of {','.join(backends)}")
    p.add_argument("--precisions", type=_names(precisions), default=("fp32", "bf16", "int8"),
                   help=f"comma-separated subset of {','.join(precisions)} (unsupported pairs are skipped)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 4, 8))
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = every core)")
    p.add_argument("--data", help="dataset root: real training clips as input and for int8 calibration "
                                  "(default: random clips)")
    p.add_argument("--cache-dir", help="exported/quantised model cache (default $VAD_CACHE_DIR or ~/.cache/vad)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the paper-pipeline baseline (c)")
    p.add_argument("--label", help="free text stored in the report (e.g. 'contended by training')")
    p.add_argument("--output", default=str(DEFAULT_BENCH_OUTPUT), help="folder for bench.json and bench.md")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)
