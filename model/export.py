"""ONNX export of the reconstruction path: clip (B, T*C, H, W) -> image (B, C, H, W).

The mapping encoder is left out (the frame score never needs it): 106 instead of 133 GFLOP per
frame at the paper configuration. The batch axis is dynamic unless asked otherwise.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .network import DESDnet

INPUT_NAME = "clip"
OUTPUT_NAME = "image"
DEFAULT_OPSET = 17


class ReconstructionOnly(nn.Module):
    """`model(clip, with_feature=False).image` as a single-output module (what gets exported)."""

    def __init__(self, model: DESDnet) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.model(clip, with_feature=False).image


def export_onnx(
    model: DESDnet, path: Path | str, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True
) -> Path:
    """Write the reconstruction path of `model` (eval mode, on CPU, fp32) to `path` as ONNX.

    Input "clip" (B, T*C, H, W) in [-1, 1], output "image" (B, C, H, W); B is the symbolic
    dimension "batch" when `dynamic_batch`, else 1. Writes atomically; returns the path.
    The model's device and train/eval mode are left as they were.
    """
    import onnx  # optional dependency: only needed to check the written file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    was_training = model.training
    device = next(model.parameters()).device
    wrapper = ReconstructionOnly(model).eval()
    example = torch.zeros(1, cfg.frames * cfg.channels, cfg.image_size, cfg.image_size)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    tmp = path.with_name(path.name + ".tmp")
    try:
        model.to("cpu")
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated in favour of the torch.export one, which needs
            # onnxscript; the network is a plain static graph, which the tracer handles exactly.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        model.to(device)
        model.train(was_training)
    return path
