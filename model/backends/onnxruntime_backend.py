"""The ONNX Runtime backend: fp32, and int8 by static QDQ quantisation (per-channel weights,
MinMax calibration on normal clips)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..export import INPUT_NAME, OUTPUT_NAME
from ..network import DESDnetConfig
from .base import Backend

PRECISIONS = ("fp32", "int8")
INT8_FILE = "model.int8.onnx"


class OnnxRuntimeBackend(Backend):
    def __init__(
        self, config: DESDnetConfig, path: Path, precision: str, device: str = "cpu",
        threads: int | None = None, cached: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.config, self.artefact, self.cached = config, path, cached
        self.precision = self.effective_precision = precision
        self.name = f"onnxruntime-{precision}"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        if device == "cpu":
            providers: list = ["CPUExecutionProvider"]
        elif device.startswith("cuda"):
            if "CUDAExecutionProvider" not in available:
                raise ValueError(
                    f"device {device!r}: this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(available)}); install onnxruntime-gpu or use device='cpu'"
                )
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise ValueError(f"onnxruntime backend: unknown device {device!r}; use 'cpu' or 'cuda[:N]'")
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        array = self._as_input_array(clips)
        if not len(array):
            return self._empty_output()
        (image,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(image)


def quantize(fp32: Path, out: Path, clips: list[np.ndarray]) -> None:
    """Static int8 QDQ quantisation of the fp32 ONNX file `fp32` into `out`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(clips)

        def get_next(self) -> dict[str, np.ndarray] | None:
            clip = next(self.items, None)
            return None if clip is None else {INPUT_NAME: clip}

        def rewind(self) -> None:
            self.items = iter(clips)

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    prepared.unlink(missing_ok=True)
