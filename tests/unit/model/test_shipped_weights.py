"""The shipped Ped2 weights reproduce their model card on the real test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.evaluate import EvaluateOptions, evaluate
from model.weights import load_weights

WEIGHTS = Path(__file__).resolve().parents[3] / "weights"
SHIPPED = sorted(WEIGHTS.glob("ped2-*.safetensors"))


def test_lite_weights_are_shipped() -> None:
    assert (WEIGHTS / "ped2-lite.safetensors").is_file()
    assert (WEIGHTS / "ped2-lite.json").is_file() and (WEIGHTS / "ped2-lite.md").is_file()


@pytest.mark.parametrize("weights", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_card_figures_reproduce(weights: Path, ped2_root: Path) -> None:
    card = json.loads(weights.with_suffix(".json").read_text())
    pinned = card["evaluation"]["torch-fp32"]
    loaded = load_weights(weights)
    assert card["config"] == json.loads(loaded.config.to_json())
    report = evaluate(EvaluateOptions(weights=weights, data=ped2_root, batch_size=32))
    assert report["frames_scored"] == pinned["frames_scored"] == 1962
    for protocol in ("paper", "causal"):
        for metric in ("micro_auc", "macro_auc", "eer"):
            # The card promises reproduction within 0.2 points; CPU float order keeps it far closer.
            assert report[protocol][metric] == pytest.approx(pinned[protocol][metric], abs=0.002), (
                protocol, metric)
