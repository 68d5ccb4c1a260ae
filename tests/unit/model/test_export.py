"""ONNX export of the reconstruction path: same numbers as PyTorch, dynamic batch, `vad export`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model import DESDnet, DESDnetConfig
from model.export import export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def realistic_model(config: DESDnetConfig, seed: int = 0) -> DESDnet:
    """A seeded network whose BatchNorm statistics are not the identity (as after training)."""
    torch.manual_seed(seed)
    model = DESDnet(config)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def fixed_clips(config: DESDnetConfig, batch: int, seed: int = 1) -> torch.Tensor:
    """A still background with noise: random but fixed, and shaped like a clip of video."""
    g = torch.Generator().manual_seed(seed)
    size, c, t = config.image_size, config.channels, config.frames
    base = torch.rand(batch, c, size, size, generator=g) * 2 - 1
    noise = 0.2 * torch.randn(batch, t * c, size, size, generator=g)
    return (base.repeat(1, t, 1, 1) + noise).clamp(-1, 1)


def run_onnx(path: Path, clips: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["image"], {"clip": clips.numpy()})[0]


def test_onnx_matches_torch_with_dynamic_batch(tmp_path: Path, tiny_config: DESDnetConfig) -> None:
    model = realistic_model(tiny_config)
    path = export_onnx(model, tmp_path / "tiny.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["clip"] and [o.name for o in graph.output] == ["image"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 3):
        clips = fixed_clips(tiny_config, batch)
        with torch.no_grad():
            expected = model(clips, with_feature=False).image.numpy()
        got = run_onnx(path, clips)
        assert got.shape == (batch, tiny_config.channels, tiny_config.image_size, tiny_config.image_size)
        assert np.abs(got - expected).max() < 1e-4


def test_static_batch_export(tmp_path: Path, tiny_config: DESDnetConfig) -> None:
    path = export_onnx(realistic_model(tiny_config), tmp_path / "static.onnx", dynamic_batch=False)
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 1


def test_export_leaves_the_model_as_it_was(tmp_path: Path, tiny_config: DESDnetConfig) -> None:
    model = realistic_model(tiny_config).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not list(tmp_path.glob("*.tmp"))


def test_export_leaves_out_the_mapping_encoder(tmp_path: Path, tiny_config: DESDnetConfig) -> None:
    model = realistic_model(tiny_config)
    path = export_onnx(model, tmp_path / "m.onnx")
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type in ("Conv", "ConvTranspose")]
    expected = sum(
        isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
        for name, m in model.named_modules()
        if not name.startswith("mapping_encoder")
    )
    assert len(convs) == expected


def test_vad_export_command(tmp_path: Path, tiny_weights: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model import cli

    parser = argparse.ArgumentParser(prog="vad")
    cli.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "out" / "tiny.onnx"
    args = parser.parse_args(["export", "--format", "onnx", "--weights", str(tiny_weights), "--output", str(out)])
    args.func(args)
    printed = capsys.readouterr().out
    assert out.is_file() and "dynamic batch" in printed and "max abs difference" in printed
