"""Parity table: micro AUC per backend/precision from `vad evaluate --json` reports, and its delta
against torch fp32, as markdown.

    .venv/bin/python bench/parity_table.py bench/results/final > bench/results/final/parity.md

Reads FOLDER/parity-*.json (written by bench/run_all.sh, one `vad evaluate --json` per backend).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REFERENCE = ("torch", "fp32")
ORDER = {"torch": 0, "onnxruntime": 1, "openvino": 2}


def _pct(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "–"


def _delta(value: Any, reference: Any) -> str:
    if not isinstance(value, int | float) or not isinstance(reference, int | float):
        return "–"
    return f"{(value - reference) * 100:+.2f} pp"


def load_reports(folder: Path) -> list[dict[str, Any]]:
    reports = []
    for path in sorted(folder.glob("parity-*.json")):
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}: not JSON ({exc})") from exc
        report["_file"] = path.name
        reports.append(report)
    reports.sort(key=lambda r: (ORDER.get(r["backend"], 9), r["backend"], r["precision"]))
    return reports


def render(reports: list[dict[str, Any]]) -> str:
    ref = next((r for r in reports if (r["backend"], r["precision"]) == REFERENCE), None)

    def metric(report: dict[str, Any] | None, protocol: str, key: str = "micro_auc") -> Any:
        return None if report is None else (report.get(protocol) or {}).get(key)

    lines = [
        "| backend | precision | micro AUC (paper protocol) | Δ vs torch fp32 | micro AUC (causal) | Δ vs torch fp32 "
        "| EER (paper) | frames | scoring fps |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        lines.append(
            f"| {r['backend']} | {r['precision']} "
            f"| {_pct(metric(r, 'paper'))} | {_delta(metric(r, 'paper'), metric(ref, 'paper'))} "
            f"| {_pct(metric(r, 'causal'))} | {_delta(metric(r, 'causal'), metric(ref, 'causal'))} "
            f"| {_pct(metric(r, 'paper', 'eer'))} | {r.get('frames_scored', '–')} | {r.get('scoring_fps', '–')} |"
        )
    weights = sorted({str(r.get("weights")) for r in reports})
    lines += [
        "",
        f"Weights: {', '.join(weights)}. `vad evaluate` on the Ped2 test split, batch 16; Δ in percentage points "
        "against torch fp32" + ("" if ref else " (no torch fp32 report found: no deltas)") + ". "
        "Scoring fps are measured while evaluating (model and patch score), not a benchmark.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="bench/results/final", help="folder holding parity-*.json")
    args = parser.parse_args(argv)
    reports = load_reports(Path(args.folder))
    if not reports:
        print(f"{args.folder}: no parity-*.json files", file=sys.stderr)
        return 1
    sys.stdout.write(render(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
