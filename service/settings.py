"""Service settings: environment variables with the prefix VAD_ (e.g. VAD_PORT=9000), or `vad serve` flags.

Nothing is built at import time: `create_app(Settings(...))` receives an instance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cli import DEFAULT_WEIGHTS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAD_", extra="forbid", validate_default=True)

    # Server
    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")

    # Model
    weights: Path = Field(DEFAULT_WEIGHTS, description="weights file (.safetensors) written by `vad train`")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    backend: str = Field(
        "torch",
        description="inference backend: torch, or onnxruntime/openvino when installed; auto: the fastest "
        "backend and precision that passed parity on this machine (`vad calibrate-backends`), else torch fp32",
    )
    precision: str = Field("fp32", description="fp32, bf16 or fp16 (backend permitting)")
    threshold: float | None = Field(
        None, description="anomaly threshold on the smoothed normalised score; default: the weights' calibration"
    )

    # Inference worker
    max_batch: int = Field(8, ge=1, le=256, description="most clips scored in one forward pass")
    batch_wait_ms: float = Field(
        2.0, ge=0, le=1000,
        description="longest wait for more clips to fill a batch, only for clips an active producer is expected to send",
    )
    max_pending_per_stream: int = Field(
        2, ge=1, le=1000,
        description="frames of one stream waiting for the model; beyond it the oldest is dropped; also the "
        "ingest WebSocket's pipelining window",
    )
    max_pending_stateless: int = Field(
        16, ge=1, le=10000, description="POST /v1/score requests waiting for the model; beyond it 503"
    )
    result_timeout_seconds: float = Field(30.0, gt=0, description="longest a request waits for its score")
    extra_inference_latency_ms: float = Field(
        0.0, ge=0, description="test aid: sleep added to every batch to simulate a slower model"
    )

    # Streams and inputs
    max_streams: int = Field(16, ge=1, le=10000, description="most streams open at once (more: 429)")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest encoded image accepted (413)")
    max_pixels: int = Field(
        4096 * 4096, ge=64, description="largest width*height accepted, checked from the header before decoding"
    )
    upload_timeout_seconds: float = Field(30.0, gt=0, description="longest time to receive one request body (408)")
    heatmap_history: int = Field(16, ge=1, le=1000, description="scored frames per stream kept for /heatmap")

    # WebSocket publishing
    websocket_queue_size: int = Field(
        64, ge=1, le=100000, description="messages buffered per WebSocket client; beyond it the oldest is dropped"
    )
    websocket_stuck_seconds: float = Field(
        10.0, gt=0, description="a client that accepts no message for this long is disconnected"
    )

    # Security
    api_token: SecretStr | None = Field(
        None, description="when set, every endpoint but /healthz and the docs needs `Authorization: Bearer TOKEN`"
    )
    metrics_require_token: bool = Field(False, description="also protect /metrics with the token")

    torch_threads: int = Field(0, ge=0, description="intra-op threads for the model (0: torch's default)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")

    @field_validator("api_token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # VAD_API_TOKEN="" should mean "no token", not "the empty token".
        return value if value is not None and value.get_secret_value() else None
