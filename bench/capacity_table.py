"""The capacity/erasure ablation table (bench/capacity_ablation.sh) from its evaluation reports.

    python bench/capacity_table.py runs/abl > bench/results/capacity-ablation/capacity.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = (
    ("base", "128 px, width 16 (the lite preset), 3 epochs"),
    ("r192", "192 px, width 16, 3 epochs"),
    ("w24", "128 px, width 24, 3 epochs"),
    ("noerase", "128 px, width 16, no reverse erasure, 3 epochs"),
    ("noerase-e6", "the same resumed to 6 epochs (warm restart of the cosine)"),
)


def main(folder: Path) -> str:
    lines = [
        "| run | window | paper micro | paper macro | paper EER | causal micro | causal macro "
        "| top window hits mask | training wall time (shared cores) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, what in RUNS:
        report_path = folder / f"{name}-eval.json"
        if not report_path.is_file():
            lines.append(f"| {what} | not run | | | | | | | |")
            continue
        report = json.loads(report_path.read_text())
        config = report["config"] if isinstance(report["config"], dict) else json.loads(report["config"])
        card = json.loads((folder / f"{name}.json").read_text())
        paper, causal = report["paper"], report["causal"]
        hits = (report.get("localization") or {}).get("top_window_hits_mask")
        lines.append(
            f"| {what} | {config['patch_size']}×{config['patch_size']} / {config['patch_stride']} "
            f"| {paper['micro_auc']:.2%} | {paper['macro_auc']:.2%} | {paper['eer']:.2%} "
            f"| {causal['micro_auc']:.2%} | {causal['macro_auc']:.2%} "
            f"| {'–' if hits is None else f'{hits:.1%}'} | {card['training']['wall_seconds'] / 60:.0f} min |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(Path(sys.argv[1])), end="")
