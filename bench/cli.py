"""`vad bench` and `vad calibrate-backends`: registered on the `vad` parser by `register(sub)`.

    vad bench [--config paper|lite | --weights W] [--backends torch,onnxruntime,openvino]
              [--precisions fp32,bf16,int8 | --pairs torch/fp32,openvino/int8] [--batch-sizes 1,4,8]
              [--seconds 10] [--output bench/results]
              [--no-end-to-end | --streams 1,2,4 --e2e-seconds S --e2e-fps F --e2e-backend fastest|auto|B
               --e2e-precision P --frames DIR]
    vad calibrate-backends --weights W --data DATASET [--backends ...] [--precisions ...] [--seconds 3]
                           [--clips 240] [--output RECORD.json]   (the record `vad serve --backend auto` reads)

Heavy work happens inside each command; registering imports model.backends (for the valid names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.load_generator import E2E_TRANSPORTS

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


def _transports(text: str) -> tuple[str, ...]:
    chosen = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in chosen if x not in E2E_TRANSPORTS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(E2E_TRANSPORTS)}, got {text!r}"
        )
    return chosen


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    from model.backends import check_backend

    pairs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        backend, _, precision = item.partition("/")
        try:
            check_backend(backend, precision)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from exc
        pairs.append((backend, precision))
    if not pairs:
        raise argparse.ArgumentTypeError(f"expected BACKEND/PRECISION pairs, comma-separated, got {text!r}")
    return tuple(pairs)


def cmd_bench(args: argparse.Namespace) -> None:
    from bench.model_bench import ModelBenchOptions
    from bench.report import write_report
    from bench.run import run_bench
    from model.network import DESDnetConfig

    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        _fail("bench", f"{data}: no such dataset folder")
    frames = Path(args.frames) if args.frames else None
    if frames is not None and not frames.is_dir():
        _fail("bench", f"{frames}: no such folder")
    if args.weights and not Path(args.weights).is_file():
        _fail("bench", f"{args.weights}: no such weights file")
    if args.e2e_backend == "auto" and not args.weights:
        _fail("bench", "--e2e-backend auto needs --weights (the backend record belongs to a weights file)")
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
        pairs=args.pairs,
        end_to_end=not args.no_end_to_end,
        streams=args.streams,
        e2e_seconds=args.e2e_seconds,
        e2e_fps=args.e2e_fps,
        e2e_transports=args.e2e_transports,
        e2e_backend=args.e2e_backend,
        e2e_precision=args.e2e_precision,
        frames=frames,
        progress=not args.quiet,
        extra={"label": args.label} if args.label else {},
    )
    report = run_bench(options)
    json_path, md_path = write_report(report, Path(args.output))
    print(f"wrote {json_path} and {md_path}")


def cmd_calibrate_backends(args: argparse.Namespace) -> None:
    from bench.calibrate_backends import calibrate_backends

    weights, data = Path(args.weights), Path(args.data)
    if not weights.is_file():
        _fail("calibrate-backends", f"{weights}: no such weights file")
    if not data.is_dir():
        _fail("calibrate-backends", f"{data}: no such dataset folder")
    _, path = calibrate_backends(
        weights, data, args.backends, args.precisions, args.seconds, args.clips, args.threads,
        Path(args.cache_dir) if args.cache_dir else None, Path(args.output) if args.output else None,
        progress=not args.quiet,
    )
    if args.quiet:
        print(f"wrote {path}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `bench` and `calibrate-backends` to the `vad` sub-command parser."""
    from bench.calibrate_backends import DEFAULT_PARITY_CLIPS
    from bench.model_bench import DEFAULT_BACKENDS, DEFAULT_BATCH_SIZES, DEFAULT_PRECISIONS, DEFAULT_STREAMS
    from model.backends import VALID

    backends = tuple(VALID)
    precisions = tuple(sorted({p for ps in VALID.values() for p in ps}))
    p = sub.add_parser("bench", help="throughput per backend / precision / batch, end to end through the "
                                     "server, vs the paper pipeline")
    p.add_argument("--config", choices=["paper", "lite"], default="lite",
                   help="network to time with random weights (ignored with --weights)")
    p.add_argument("--weights", help="time this weights file instead of a random network")
    p.add_argument("--backends", type=_names(backends), default=DEFAULT_BACKENDS,
                   help=f"comma-separated subset of {','.join(backends)}")
    p.add_argument("--precisions", type=_names(precisions), default=DEFAULT_PRECISIONS,
                   help=f"comma-separated subset of {','.join(precisions)} (unsupported pairs are skipped)")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=DEFAULT_BATCH_SIZES)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = every core)")
    p.add_argument("--data", help="dataset root: real training clips as input and for int8 calibration "
                                  "(default: random clips)")
    p.add_argument("--cache-dir", help="exported/quantised model cache (default $VAD_CACHE_DIR, else ~/.cache/vad)")
    p.add_argument("--pairs", type=_pairs,
                   help="exact BACKEND/PRECISION pairs for (a), comma-separated (instead of backends x precisions)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the paper-pipeline baseline (c)")
    p.add_argument("--no-end-to-end", action="store_true", help="skip (b), end to end through a real server")
    p.add_argument("--streams", type=_batch_sizes, default=DEFAULT_STREAMS,
                   help="(b): concurrent push streams per run, comma-separated")
    p.add_argument("--e2e-seconds", type=float, help="(b): timed seconds per run (default --seconds)")
    p.add_argument("--e2e-fps", type=float,
                   help="(b): frames per second per stream (default: closed loop, each frame once answered)")
    p.add_argument("--e2e-transports", type=_transports, default=E2E_TRANSPORTS,
                   help="(b): http (one POST per frame), websocket (/ingest, pipelined), comma-separated")
    p.add_argument("--e2e-backend", default="fastest", choices=("fastest", "auto", *backends),
                   help="(b): server backend; fastest: the fastest (a) row at batch 1; auto: the service's "
                        "choice from the `vad calibrate-backends` record")
    p.add_argument("--e2e-precision", default="fp32", choices=precisions,
                   help="(b): precision with an explicit --e2e-backend")
    p.add_argument("--frames", help="(b): dataset root or folder of frame folders (NN/*.jpg), one video per "
                                    "stream (default: --data's testing/frames, else synthetic frames)")
    p.add_argument("--label", help="free text stored in the report (e.g. 'contended by training')")
    p.add_argument("--output", default=str(DEFAULT_BENCH_OUTPUT), help="folder for bench.json and bench.md")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "calibrate-backends",
        help="time every backend/precision and check parity with torch fp32: the record --backend auto reads",
    )
    p.add_argument("--weights", required=True, help="weights file (.safetensors)")
    p.add_argument("--data", required=True, help="dataset root: parity on its testing/ clips, int8 calibrates "
                                                 "on its training/ clips")
    p.add_argument("--backends", type=_names(backends), default=DEFAULT_BACKENDS)
    p.add_argument("--precisions", type=_names(precisions), default=DEFAULT_PRECISIONS)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per speed measurement")
    p.add_argument("--clips", type=int, default=DEFAULT_PARITY_CLIPS, help="parity clips, spread over the test videos")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = every core)")
    p.add_argument("--cache-dir", help="artefact cache and record folder (default $VAD_CACHE_DIR, else ~/.cache/vad)")
    p.add_argument("--output", help="record file (default: $VAD_BACKEND_RECORD, else "
                                    "CACHE/backends/<weights digest>-cpu.json, where --backend auto looks)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate_backends)
