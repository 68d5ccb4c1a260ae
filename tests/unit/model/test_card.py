"""Model card rendering: the Markdown says how the weights were trained."""

from __future__ import annotations

from model.card import render_markdown


def _card(erasure: bool) -> dict:  # type: ignore[type-arg]
    return {"weights": "w.safetensors", "config": {"image_size": 128},
            "training": {"command": "vad train --config lite", "epochs": 2, "wall_seconds": 60.0,
                         "train_config": {"erasure": erasure}}}


def test_markdown_names_the_training_objective() -> None:
    assert "DESDnet (reverse erasure + Deep SVDD)" in render_markdown(_card(erasure=True))
    without = render_markdown(_card(erasure=False))
    assert "without reverse erasure" in without and "reverse erasure + Deep SVDD" not in without


def test_markdown_keeps_hand_written_notes() -> None:
    card = {**_card(erasure=True), "notes": ["**Targets missed.** by 0.1 points"]}
    assert "- **Targets missed.** by 0.1 points" in render_markdown(card)
