"""The OpenVINO backend: fp32, bf16 (INFERENCE_PRECISION_HINT; fp32 on a CPU without bf16) and int8
by NNCF post-training quantisation.

What really runs is read from the compiled model's execution graph (`runtime_precisions`): the
plugin may accept the bf16 hint and still run every layer in f32, or run bf16 although the hint
reads back in another spelling ("bfloat16"); only the layers' runtimePrecision tells.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..network import DESDnetConfig
from .base import Backend

PRECISIONS = ("fp32", "bf16", "int8")
INT8_FILE = "model.int8.xml"


class OpenVinoBackend(Backend):
    def __init__(
        self, config: DESDnetConfig, path: Path, precision: str, device: str = "cpu",
        threads: int | None = None, cached: bool = False, compile_cache: Path | None = None,
    ) -> None:
        import openvino as ov

        self.config, self.artefact, self.precision, self.cached = config, path, precision, cached
        self.name = f"openvino-{precision}"
        core = ov.Core()
        target = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}.get(device.lower(), device.upper())
        if target != "AUTO" and target.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise ValueError(
                f"openvino backend: device {device!r} is not available "
                f"(available: {', '.join(core.available_devices)})"
            )
        properties: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if target == "CPU":
            properties["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bf16" else "f32"
            properties["INFERENCE_NUM_THREADS"] = threads or torch.get_num_threads()
        elif precision == "bf16":
            properties["INFERENCE_PRECISION_HINT"] = "bf16"
        if compile_cache is not None:
            core.set_property({"CACHE_DIR": str(compile_cache)})
        self.compiled = core.compile_model(core.read_model(str(path)), target, properties)
        # What the plugin really runs: a CPU without bf16 instructions silently keeps f32.
        self.effective_precision = precision
        self.runtime_precisions: dict[str, int] = {}  # compute layers per runtime precision (bf16 only)
        if precision == "bf16":
            self.runtime_precisions = runtime_precisions(self.compiled)
            if self.runtime_precisions:  # the execution graph says it
                runs_bf16 = self.runtime_precisions.get("bf16", 0) > 0
                why = ", ".join(f"{n} {p}" for p, n in sorted(self.runtime_precisions.items())) + " layers"
            else:  # no execution graph (another device): the hint, in either spelling
                hint = str(self.compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
                runs_bf16 = "bf16" in hint or "bfloat16" in hint
                why = f"inference precision {hint}"
            if not runs_bf16:
                self.effective_precision = "fp32"
                warnings.warn(
                    f"openvino: {target} runs no layer in bf16 ({why}); the 'bf16' backend runs in fp32 here",
                    RuntimeWarning,
                    stacklevel=3,
                )
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()

    def reconstruct(self, clips: torch.Tensor) -> torch.Tensor:
        array = self._as_input_array(clips)
        if not len(array):
            return self._empty_output()
        with self.lock:  # one infer request: serialise callers from several threads
            self.request.infer({0: array})
            image = self.request.get_output_tensor(0).data.copy()
        return torch.from_numpy(image)


#: Layers of the execution graph that compute (not constants, inputs, reshapes or layout reorders).
_PLUMBING = {"Const", "Input", "Parameter", "Output", "Result", "Reshape", "Reorder"}


def runtime_precisions(compiled: Any) -> dict[str, int]:
    """{precision: number of compute layers} of a compiled model's execution graph, from each layer's
    runtimePrecision ({} when the plugin gives no execution graph). e.g. {"bf16": 41} on a CPU with
    bf16 instructions, {"f32": 41} without them."""
    try:
        ops = compiled.get_runtime_model().get_ordered_ops()
    except Exception:  # a plugin without an execution graph
        return {}
    counts: Counter[str] = Counter()
    for op in ops:
        info = op.get_rt_info()
        if "runtimePrecision" not in info or ("layerType" in info and str(info["layerType"].astype(str)) in _PLUMBING):
            continue
        counts[str(info["runtimePrecision"].astype(str)).lower()] += 1
    return dict(counts)


def quantize(fp32: Path, out: Path, clips: list[np.ndarray]) -> None:
    """NNCF post-training int8 quantisation of the fp32 ONNX file `fp32` into OpenVINO IR `out`."""
    import logging

    import nncf
    import openvino as ov

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)  # NNCF prints progress bars and INFO lines otherwise
    try:
        model = ov.Core().read_model(str(fp32))
        quantized = nncf.quantize(
            model,
            nncf.Dataset(clips),
            subset_size=len(clips),
            preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations: tanh/concat ranges
        )
    finally:
        nncf_logger.setLevel(level)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
