"""Model cards: a JSON card beside every weights file (written by training, completed by evaluation)
and a Markdown rendering of it for people."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PAPER = {"micro_auc": 0.975, "eer": 0.067}


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_training_card(weights: Path, config_json: str, training: dict[str, object],
                        calibration: dict[str, object]) -> Path:
    """The card as training leaves it (`W.json`, rendered as `W.md`): configuration, command, epochs, time,
    what was trained on and held out, the initial weights, data hash."""
    card = {
        "weights": weights.name,
        "weights_sha256": sha256_of(weights),
        "config": json.loads(config_json),
        "training": {k: v for k, v in training.items() if k != "history"},
        "history": training.get("history", []),
        "calibration": calibration,
    }
    path = card_path(weights)
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    weights.with_suffix(".md").write_text(render_markdown(card))
    return path


def add_evaluation(weights: Path, report: dict[str, object]) -> Path:
    """Merge a `vad evaluate` report into the JSON card (keyed by backend/precision) and render
    the Markdown card."""
    path = card_path(weights)
    card = json.loads(path.read_text()) if path.is_file() else {"weights": weights.name}
    key = f"{report['backend']}-{report['precision']}"
    slim = {k: v for k, v in report.items() if k not in ("plots",)}
    card.setdefault("evaluation", {})[key] = slim
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    weights.with_suffix(".md").write_text(render_markdown(card))
    return path


def _pct(x: object) -> str:
    return f"{float(x):.2%}" if isinstance(x, (int, float)) else "–"  # noqa: UP038


def _num(x: object) -> str:
    """Undefined means (None in the JSON report: no normal or no anomalous frame) print as a dash."""
    return f"{float(x):.3f}" if isinstance(x, (int, float)) else "–"  # noqa: UP038


def _parts(ranges: object) -> list[str]:
    """{"scene.mp4": [3519, 4140]} -> ["scene.mp4[3519:4140]"]."""
    if not isinstance(ranges, dict):
        return []
    return [f"{name}[{start}:{'' if stop is None else stop}]" for name, (start, stop) in ranges.items()]


def _trained_on(training: dict) -> str:  # type: ignore[type-arg]
    """How the card's first sentence ends: fine-tuned or trained, on what."""
    init = training.get("init_weights")
    kind = training.get("data_kind")
    data = f"`{training.get('data')}` ({kind})" if kind and kind != "dataset" else (
        f"the training split of `{training.get('data')}`" if kind else "the UCSD Ped2 training split")
    if isinstance(init, dict):
        return f"fine-tuned from `{init.get('path')}` on {data}"
    return f"trained from scratch on {data}" if kind and kind != "dataset" else f"trained on {data}"


def _data_lines(training: dict) -> list[str]:  # type: ignore[type-arg]
    """The card's lines on what was trained on, what was held out, and where training started."""
    held = _parts(training.get("calibration_frames")) or list(training.get("calibration_videos", []))
    trained = _parts(training.get("training_frames")) or list(training.get("training_videos", []))
    lines = [f"- training videos: {', '.join(trained)}; calibration (held out): {', '.join(held) or 'none'}"]
    footage = training.get("footage")
    if isinstance(footage, list) and footage:
        total = sum(int(v.get("frames") or 0) for v in footage)
        share = training.get("holdout_share")
        lines.append(f"- footage: {total} frames in {len(footage)} video{'s' if len(footage) != 1 else ''}; "
                     f"the tail of each video is held out for calibration"
                     + (f" ({float(share):.0%} of its frames or more)" if share else ""))
    init = training.get("init_weights")
    if isinstance(init, dict):
        lines.append(f"- initial weights: `{init.get('path')}` (sha256 `{init.get('sha256')}`)")
    return lines


def render_markdown(card: dict) -> str:  # type: ignore[type-arg]
    training = card.get("training", {})
    erasure = training.get("train_config", {}).get("erasure", True)
    objective = "reverse erasure + Deep SVDD" if erasure else "Deep SVDD, without reverse erasure"
    lines = [
        f"# Model card: {card.get('weights')}",
        "",
        f"DESDnet ({objective}) {_trained_on(training)}.",
        "",
        "## Configuration",
        "",
        "```json",
        json.dumps(card.get("config", {}), indent=2),
        "```",
        "",
        "## Training",
        "",
        f"- command: `{training.get('command', '')}`",
        f"- epochs: {training.get('epochs')}, wall time: {float(training.get('wall_seconds', 0)) / 60:.1f} min "
        f"on {training.get('machine', 'this machine')}",
        *_data_lines(training),
        f"- sha256 of the training file list: `{training.get('file_list_sha256')}`",
        f"- sha256 of the weights file: `{card.get('weights_sha256')}`",
        *([f"- {training['note']}"] if training.get("note") else []),
        "",
    ]
    for key, report in card.get("evaluation", {}).items():
        lines += [
            f"## Evaluation on the Ped2 test split ({key})",
            "",
            f"`vad evaluate --weights weights/{card.get('weights')} --data ../shared/data/ped2`"
            f" — {report.get('frames_scored')} frames scored, {report.get('frames_anomalous')} anomalous.",
            "",
            "| protocol | micro AUC | macro AUC | EER | normal mean | abnormal mean | gap |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in ("paper", "causal", "causal_unsmoothed"):
            m = report.get(name, {})
            lines.append(
                f"| {name} | {_pct(m.get('micro_auc'))} | {_pct(m.get('macro_auc'))} | {_pct(m.get('eer'))} "
                f"| {_num(m.get('normal_mean'))} | {_num(m.get('abnormal_mean'))} | {_num(m.get('gap'))} |"
            )
        lines.append(f"| DESDnet paper (256×256 RGB, GPU) | {_pct(PAPER['micro_auc'])} | – | "
                     f"{_pct(PAPER['eer'])} | – | – | – |")
        secondary = report.get("secondary", {})
        if secondary:
            lines += ["", "Secondary scores, paper protocol, micro AUC: "
                      + ", ".join(f"{k.replace('_paper_micro_auc', '')} {_pct(v)}" for k, v in secondary.items())]
        loc = report.get("localization")
        if loc:
            lines += [
                "",
                "### Localisation",
                "",
                f"Over {loc['frames']} anomalous frames, {_pct(loc['heatmap_mass_in_mask'])} of the error "
                f"heatmap's mass falls inside the ground-truth pixel masks, which cover "
                f"{_pct(loc['mask_area_share'])} of the frame ({loc['mass_to_area_ratio']:.1f}× chance). "
                f"The top-scoring window touches the mask in {_pct(loc['top_window_hits_mask'])} of the frames "
                f"and {_pct(loc['top_window_share_in_mask'])} of its area lies inside the mask on average.",
            ]
        lines.append("")
    if card.get("notes"):
        lines += ["## Notes", "", *(f"- {note}" for note in card["notes"]), ""]
    return "\n".join(lines) + "\n"
