"""Offline benchmarks of DESDnet and of the `vad serve` service: never imported by the serve path.

`vad bench` (model-only throughput per backend/precision/batch, the paper-pipeline baseline, end to
end through a real server) and `vad calibrate-backends` (speed and parity per backend, the record
`--backend auto` reads) are registered on the `vad` parser by `bench.cli.register`. The scripts next
to these modules (gpu_bench.py, score_ablation.py, ...) are run on their own; see their docstrings.
"""
