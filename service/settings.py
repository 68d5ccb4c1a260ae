"""The one configuration tree of the service: every `VAD_*` environment variable is defined here, once.

    settings = Settings.load()                       # environment only; SettingsError on a bad value
    settings = Settings.load({"port": 9000})         # flags override the environment
    settings.server.port, settings.model.weights, settings.sources.stall_timeout_s, ...

Each section is a pydantic-settings model with its own environment prefix, so the variables keep
short flat names (VAD_PORT, VAD_MAX_BATCH, VAD_SOURCE_STALL_TIMEOUT_S). A setting's *key* is its
variable without the prefix, lower case (`port`, `source_stall_timeout_s`); `vad serve` has one flag
per key (`--port`, `--source-stall-timeout-s`) and `Settings.from_flat(**keys)` builds a tree from
keys. New sections (events, storage, ...) are added to `SECTIONS` and appear in `vad serve --help`
and the generated table of docs/configuration.md (`python -m service.settings --write-docs FILE`).

Nothing is built at import time: `create_app(settings)` receives an instance.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.paths import DEFAULT_WEIGHTS, REPOSITORY

ENV_PREFIX = "VAD_"

AnyNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# PIL refuses to read a header above 2 * Image.MAX_IMAGE_PIXELS (its decompression-bomb error), so a
# larger pixel cap could not be honoured.
PIL_HEADER_LIMIT = 2 * 89_478_485

log = logging.getLogger("vad.settings")


class SettingsError(ValueError):
    """A setting with a bad value; the message is one line naming the variable (or flag) and why."""


class _Section(BaseSettings):
    # An empty variable means "the default" (VAD_API_TOKEN= is no token, VAD_SOURCE_STALL_TIMEOUT_S= is 5 s).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True,
                                      env_ignore_empty=True)


class ServerSettings(_Section):
    """Where the service listens, who may call it, how much it logs."""

    host: str = Field("127.0.0.1", description="interface to bind (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_token: SecretStr | None = Field(
        None, description="when set, every endpoint but /healthz and the docs needs `Authorization: Bearer TOKEN`"
    )
    metrics_require_token: bool = Field(False, description="also protect /metrics with the token")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line (time, level, logger, message, exception)"
    )

    @field_validator("api_token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # VAD_API_TOKEN="" should mean "no token", not "the empty token".
        return value if value is not None and value.get_secret_value() else None


class ModelSettings(_Section):
    """Which weights run, on which backend, and where exported models are cached."""

    weights: Path = Field(DEFAULT_WEIGHTS, description="weights file (.safetensors) written by `vad train`")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = Field(
        "auto",
        description="inference backend: auto (the fastest backend and precision that passed parity on this "
        "machine, from the backend record; without one, torch fp32 while the autotune measures the others), "
        "or torch, onnxruntime, openvino",
    )
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32", description="fp32, bf16, fp16 or int8 (backend permitting; ignored with backend auto)"
    )
    threshold: float | None = Field(
        None, description="anomaly threshold on the smoothed normalised score; default: the weights' calibration"
    )
    torch_threads: int = Field(0, ge=0, description="intra-op threads for the model (0: torch's default)")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "vad", description="folder for exported and quantised models (onnxruntime, openvino)"
    )
    backend_record: Path | None = Field(
        None,
        description="backend record read by backend auto (default: CACHE_DIR/backends/<weights digest>-<device>.json, "
        "where `vad calibrate-backends` writes it)",
    )
    calibration_data: Path | None = Field(
        None, description="dataset root whose training/ clips calibrate an int8 backend the first time it is built"
    )
    autotune: bool = Field(
        True,
        description="backend auto without a usable record: serve with torch fp32 at once, measure the other "
        "backends in the background on the first clips of the streams (or CALIBRATION_DATA's), write the record "
        "and switch to the fastest that passed parity",
    )
    autotune_candidates: str = Field(
        "onnxruntime/fp32,onnxruntime/int8,openvino/fp32,openvino/int8,openvino/bf16",
        description="comma-separated BACKEND/PRECISION pairs the autotune measures against torch fp32 "
        "(bf16 only on a CPU with bf16 instructions)",
    )
    autotune_clips: int = Field(
        64, ge=8, le=1024,
        description="clips the autotune collects from the first scored frames (at most 64 MiB; as many again "
        "with a synthetic anomaly for the parity check)",
    )
    autotune_seconds: float = Field(2.0, gt=0, le=60, description="timed seconds of batch-1 inference per backend")
    autotune_threads: int = Field(
        1, ge=1, le=256, description="intra-op threads of the background measurement (it competes with serving "
        "while it runs)"
    )
    autotune_timeout_s: float = Field(
        600.0, gt=0, description="longest the measurement may take once the clips are there; when a backend "
        "is not measured by then, no record is written and the next start measures again",
    )

    @field_validator("autotune_candidates")
    @classmethod
    def _known_pairs(cls, value: str) -> str:
        from model.backends import VALID

        pairs = [p.strip().lower() for p in value.split(",") if p.strip()]
        for pair in pairs:
            backend, _, precision = pair.partition("/")
            if backend not in VALID or backend == "torch" or precision not in VALID[backend]:
                choices = ", ".join(f"{b}/{p}" for b in VALID if b != "torch" for p in VALID[b])
                raise ValueError(f"{pair!r} is not a backend/precision pair to measure ({choices})")
        return ",".join(dict.fromkeys(pairs))

    @field_validator("precision")
    @classmethod
    def _backend_supports_precision(cls, value: str, info: Any) -> str:
        backend = info.data.get("backend")
        if backend not in (None, "auto"):
            from model.backends import VALID  # torch: imported only when a tree is built, not for --help

            if value not in VALID[backend]:
                raise ValueError(f"backend {backend!r} supports {', '.join(VALID[backend])}, not {value!r}")
        return value

    @model_validator(mode="after")
    def _a_precision_alone_means_torch(self) -> ModelSettings:
        # backend auto (the default) picks its own precision: a precision given without a backend
        # (VAD_PRECISION=fp16 on a GPU, as before auto was the default) asks for torch at it.
        if self.backend == "auto" and "precision" in self.model_fields_set and "backend" not in self.model_fields_set:
            if self.precision not in ("fp32", "bf16", "fp16"):
                raise ValueError(f"precision {self.precision!r} needs a backend that supports it: set "
                                 "VAD_BACKEND=onnxruntime or openvino")
            self.backend = "torch"
        return self


class InferenceSettings(_Section):
    """The batched inference worker and its bounded queue."""

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


class LimitSettings(_Section):
    """Bounds on what clients may open and send."""

    max_streams: int = Field(16, ge=1, le=10000, description="most streams open at once (more: 429)")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest encoded image accepted (413)")
    max_pixels: int = Field(
        3840 * 2160, ge=64, le=PIL_HEADER_LIMIT,
        description="largest width*height accepted (default: 4K UHD), checked from the header before decoding",
    )
    upload_timeout_seconds: float = Field(30.0, gt=0, description="longest time to receive one request body (408)")
    heatmap_history: int = Field(16, ge=1, le=1000, description="scored frames per stream kept for /heatmap")
    heatmap_history_bytes_per_stream: int = Field(
        8 * 1024 * 1024, ge=64 * 1024,
        description="bytes of kept /heatmap frames per stream; beyond it the stream's oldest are evicted "
        "(the latest is always kept)",
    )
    heatmap_history_bytes_total: int = Field(
        128 * 1024 * 1024, ge=64 * 1024,
        description="bytes of kept /heatmap frames of all streams; beyond it the oldest of any stream are evicted",
    )
    heatmap_frame_max_side: int = Field(
        1280, ge=0, le=65535,
        description="longer side of a frame kept for /heatmap overlays (larger frames are downscaled and kept "
        "as JPEG; 0: full size, still JPEG)",
    )


class StreamSettings(_Section):
    """How frames of one stream make a clip."""

    max_gap_seconds: float = Field(
        5.0, gt=0,
        description="a frame whose capture timestamp goes back, or whose timestamp (capture time, or receipt "
        "time when none is sent) jumps forward by more than this, starts the clip again (the ring buffer is "
        "reset: T-1 frames warm up)",
    )


class SceneSettings(_Section):
    """Each camera's own normal: models per stream, per-stream calibration, where learned state is kept."""

    models_dir: Path = Field(
        DEFAULT_WEIGHTS.parent,
        description="folder of weights files (NAME.safetensors) that streams choose with \"model\": \"NAME\"; "
        "loaded on first use, read again by POST /v1/models/reload",
    )
    data_dir: Path = Field(
        Path.home() / ".local" / "share" / "vad",
        description="folder for the service's state (learned per-stream calibrations under calibrations/)",
    )
    calibration: Literal["auto", "learn", "model"] = Field(
        "auto",
        description="default calibration of a new stream: auto (the model's, switching to learning when the "
        "first frames are out of the model's domain), learn (learn its own first) or model (the model's always)",
    )
    calibration_frames: int = Field(
        1500, ge=25, le=1_000_000,
        description="scored frames a stream learns its calibration from (no alarm meanwhile; 1500 = a minute "
        "at 25 fps)",
    )
    calibration_check_frames: int = Field(
        5, ge=1, le=1000,
        description="calibration auto: the first scored frames that decide whether the scene is the model's "
        "(no alarm meanwhile)",
    )
    out_of_domain_z: float = Field(
        8.0, gt=0,
        description="median background z (under the model's calibration) above which a stream's scene is not "
        "the model's: auto switches to learning, and the stream warns",
    )
    out_of_domain_window: int = Field(
        250, ge=1, le=100_000, description="recent scored frames the out-of-domain warning looks at"
    )


class EventSettings(_Section):
    """Anomaly events: when one opens and closes (defaults; each stream may override them), their media,
    where they are stored and for how long."""

    event_min_frames: int = Field(
        5, ge=1, le=10_000, description="scored frames in a row at or above the threshold that open an event"
    )
    event_hysteresis: float = Field(
        1.0, ge=0, le=100, description="an open event stays open while the smoothed z is above threshold minus this"
    )
    event_release_frames: int = Field(
        25, ge=1, le=100_000, description="scored frames in a row below the exit threshold that close an event"
    )
    event_cooldown_seconds: float = Field(
        10.0, ge=0, le=86_400, description="after an event closes, no new event of the same stream for this long"
    )
    event_max_seconds: float = Field(
        300.0, gt=0, le=86_400, description="a longer event is closed (reason max_duration) and a new one opened"
    )
    event_pre_roll_seconds: float = Field(
        3.0, ge=0, le=60, description="seconds of video before an event's start kept in its clip"
    )
    event_frame_memory_bytes: int = Field(
        32 * 1024 * 1024, ge=0,
        description="per stream: bytes of recent frames (JPEG) kept for clips; beyond it the oldest are dropped "
        "(0: no clips)",
    )
    event_clip_max_seconds: float = Field(
        120.0, gt=0, le=3600, description="longest clip written for an event (the frames after it are not kept)"
    )
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the event database, e.g. postgresql+psycopg://user:pass@host/vad "
        "(default: SQLite in DATA_DIR/vad.db)",
    )
    event_retention_days: float = Field(30.0, gt=0, description="events (and their media) older than this are deleted")
    event_retention_bytes: int = Field(
        10 * 1024**3, ge=0, description="media of all events at most this many bytes: the oldest events go first"
    )
    event_write_queue: int = Field(
        10_000, ge=10, le=10_000_000,
        description="event changes waiting for the database (e.g. while it is down); beyond it the oldest are "
        "dropped and counted",
    )


class NotifySettings(_Section):
    """Who is told about events: webhooks and MQTT."""

    webhook_urls: str = Field(
        "", description="comma-separated URLs that receive every event change as JSON (POST); checked like camera "
        "URLs (VAD_ALLOWED_SOURCE_NETWORKS)"
    )
    webhook_secret: SecretStr | None = Field(
        None, description="shared secret: each webhook carries X-VAD-Signature: sha256=HMAC-SHA256(secret, body)"
    )
    webhook_timeout_s: float = Field(5.0, gt=0, le=120, description="longest wait for a webhook receiver's answer")
    webhook_max_attempts: int = Field(12, ge=1, le=1000, description="attempts per notification before giving up")
    webhook_backoff_initial_s: float = Field(1.0, gt=0, description="first delay after a failed delivery")
    webhook_backoff_max_s: float = Field(600.0, gt=0, description="longest delay between delivery attempts")
    mqtt_url: str = Field(
        "", description="MQTT broker, mqtt://host:1883 or mqtts://host:8883 (empty: no MQTT)"
    )
    mqtt_username: str = Field("", description="MQTT user name (empty: anonymous)")
    mqtt_password: SecretStr | None = Field(None, description="MQTT password")
    mqtt_topic_prefix: str = Field("vad", description="topics: PREFIX/events and PREFIX/<stream>/anomaly")
    mqtt_tls_ca: Path | None = Field(None, description="mqtts: CA certificate file (default: the system's)")
    mqtt_home_assistant: bool = Field(
        False, description="publish Home Assistant discovery for each stream's anomaly binary sensor"
    )
    mqtt_timeout_s: float = Field(5.0, gt=0, le=120, description="connect and publish-acknowledge timeout")


class PublishSettings(_Section):
    """WebSocket score feeds."""

    websocket_queue_size: int = Field(
        64, ge=1, le=100000, description="messages buffered per WebSocket client; beyond it the oldest is dropped"
    )
    websocket_stuck_seconds: float = Field(
        10.0, gt=0, description="a subscriber whose messages pile up unsent for this long is closed with 1008"
    )
    websocket_ping_interval_seconds: float = Field(
        20.0, gt=0, description="keep-alive: the server pings every WebSocket client this often"
    )
    websocket_ping_timeout_seconds: float = Field(
        20.0, gt=0, description="keep-alive: a client that answers no ping within this long is disconnected"
    )
    websocket_max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024,
        description="largest WebSocket message read at all (a larger one ends the connection with 1009); "
        "frames above max_upload_bytes but within it are answered 413 on an open connection",
    )


class SourceSettings(_Section):
    """Live RTSP/HTTP cameras: timeouts, reconnect policy and which networks they may be on."""

    open_timeout_s: float = Field(10.0, gt=0, description="connect + handshake + stream probing")
    stall_timeout_s: float = Field(
        5.0, gt=0, description="no frame for this long while connected: reopen (also the read timeout)"
    )
    backoff_initial_s: float = Field(0.5, gt=0, description="first delay before reopening a lost camera")
    backoff_max_s: float = Field(30.0, gt=0, description="longest delay between reopen attempts")
    backoff_factor: float = Field(2.0, ge=1, description="each failed attempt multiplies the delay by this")
    backoff_jitter: float = Field(0.1, ge=0, le=1, description="+- this fraction of each delay, at random")
    max_attempts: int | None = Field(
        None, ge=1, description="consecutive failed opens before the stream is failed (unset: retry for ever)"
    )
    gap_reset_s: float = Field(
        2.0, gt=0, description="frames further apart than this (receipt or presentation time): reset the ring"
    )
    max_frame_age_s: float = Field(1.0, gt=0, description="older decoded frames are never handed to the model")
    rtsp_transport: Literal["tcp", "udp", "http", "https"] = Field(
        "tcp", description="RTSP transport (tcp: one connection, firewall/NAT friendly, no UDP ports to other hosts)"
    )
    decoder_threads: int = Field(1, ge=1, le=64, description="FFmpeg decoder threads per camera")
    allowed_networks: Annotated[tuple[AnyNetwork, ...], NoDecode] = Field(
        (),
        # The one variable outside the VAD_SOURCE_ prefix (its name predates the section). A plain
        # string alias: AliasChoices would also read an unprefixed ALLOWED_NETWORKS variable.
        validation_alias="VAD_ALLOWED_SOURCE_NETWORKS",
        description="comma-separated networks cameras may be on (e.g. 10.0.0.0/8,192.168.1.0/24); "
        "empty: public addresses only (loopback, private and link-local refused)",
    )
    resolve_timeout_s: float = Field(3.0, gt=0, description="longest DNS lookup of a camera's host")
    pin_address: bool = Field(
        True, description="rtsp://: connect to the address that was checked, not a second DNS answer"
    )
    tls_verify: bool = Field(
        False, description="rtsps/https: verify the camera's certificate (most cameras are self-signed)"
    )
    stop_timeout_s: float = Field(2.0, gt=0, description="longest wait for a camera's threads when it is stopped")
    extra_options: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="more FFmpeg options, as a JSON object (tuning)"
    )

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX + "SOURCE_", extra="forbid", validate_default=True, populate_by_name=True,
        env_ignore_empty=True,
    )

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> tuple[AnyNetwork, ...]:
        from .netguard import parse_networks

        return parse_networks(value)

    @field_validator("extra_options", mode="before")
    @classmethod
    def _parse_options(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected a JSON object of FFmpeg options ({exc.msg})") from None
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        raise ValueError("expected a JSON object of FFmpeg options")

    @field_validator("backoff_max_s")
    @classmethod
    def _max_at_least_initial(cls, value: float, info: Any) -> float:
        initial = info.data.get("backoff_initial_s")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least backoff_initial_s ({initial:g})")
        return value


#: The sections of the tree, in the order of `vad serve --help` and the docs.
SECTIONS: dict[str, type[_Section]] = {
    "server": ServerSettings,
    "model": ModelSettings,
    "inference": InferenceSettings,
    "limits": LimitSettings,
    "streams": StreamSettings,
    "scenes": SceneSettings,
    "events": EventSettings,
    "notify": NotifySettings,
    "publish": PublishSettings,
    "sources": SourceSettings,
}


@dataclass(frozen=True)
class SettingInfo:
    """One setting: where it lives in the tree and how it is spelled outside."""

    section: str
    field: str
    env: str  # VAD_PORT
    key: str  # port: the env name without the prefix, lower case; the flag is --port
    annotation: Any
    default: Any
    description: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def _env_name(section: type[_Section], name: str) -> str:
    field = section.model_fields[name]
    if isinstance(field.validation_alias, str):
        return field.validation_alias
    return f"{section.model_config.get('env_prefix', '')}{name}".upper()


def all_settings() -> list[SettingInfo]:
    out = []
    for section_name, section in SECTIONS.items():
        for name, field in section.model_fields.items():
            env = _env_name(section, name)
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            out.append(SettingInfo(section_name, name, env, env[len(ENV_PREFIX):].lower(), field.annotation,
                                   default, field.description or ""))
    return out


class Settings(BaseModel):
    """The whole configuration: one section per concern (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    scenes: SceneSettings = Field(default_factory=SceneSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    publish: PublishSettings = Field(default_factory=PublishSettings)
    sources: SourceSettings = Field(default_factory=SourceSettings)

    @model_validator(mode="after")
    def _websocket_messages_hold_a_frame(self) -> Settings:
        if self.publish.websocket_max_message_bytes < self.limits.max_upload_bytes:
            raise ValueError(
                f"VAD_WEBSOCKET_MAX_MESSAGE_BYTES ({self.publish.websocket_max_message_bytes}) must be at least "
                f"VAD_MAX_UPLOAD_BYTES ({self.limits.max_upload_bytes}): the ingest WebSocket carries one frame "
                "per message"
            )
        return self

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> Settings:
        """The environment with `overrides` (keys, e.g. from flags) on top.

        Raises SettingsError: one line naming every bad variable or flag and why."""
        overrides = dict(overrides or {})
        infos = {info.key: info for info in all_settings()}
        unknown = sorted(set(overrides) - set(infos))
        if unknown:
            raise SettingsError("unknown setting(s): " + ", ".join(_suggest(k, infos) for k in unknown))
        env = dict(os.environ)
        sections: dict[str, Any] = {}
        problems: list[str] = []
        for section_name, section in SECTIONS.items():
            given = {i.field: overrides[k] for k, i in infos.items() if i.section == section_name and k in overrides}
            try:
                sections[section_name] = section(**given)
            except ValidationError as exc:
                problems.extend(_describe(exc, section, given, env))
        if problems:
            raise SettingsError("; ".join(problems))
        _warn_unknown_variables(env, infos)
        try:
            return cls(**sections)
        except ValidationError as exc:  # a rule across sections
            raise SettingsError("; ".join(str(e.get("msg", "")).removeprefix("Value error, ")
                                          for e in exc.errors())) from None

    @classmethod
    def from_flat(cls, **values: Any) -> Settings:
        """`Settings.load(values)`: keys as in `vad serve --help` without the dashes (port, max_batch, ...)."""
        return cls.load(values)

    def flat(self) -> dict[str, Any]:
        """Every setting by key (secrets stay SecretStr)."""
        return {i.key: getattr(getattr(self, i.section), i.field) for i in all_settings()}


def environment_value(section: str, field: str) -> str | None:
    """The raw value of one setting's variable (None when unset or empty), for the offline commands
    that share it with `vad serve` (service/cli.py)."""
    return os.environ.get(_env_name(SECTIONS[section], field)) or None


def _suggest(key: str, infos: Mapping[str, SettingInfo]) -> str:
    close = difflib.get_close_matches(key, list(infos), n=1)
    return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _describe(exc: ValidationError, section: type[_Section], given: Mapping[str, Any],
              env: Mapping[str, str]) -> Iterator[str]:
    """One phrase per error: which variable or flag, its value (never a secret's), and why."""
    for error in exc.errors():
        if not error.get("loc"):  # a rule across fields of the section
            yield str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            continue
        name = str(error["loc"][0])
        if name not in section.model_fields:  # an alias (VAD_ALLOWED_SOURCE_NETWORKS)
            name = next((n for n in section.model_fields if _env_name(section, n) == name), name)
        env_name = _env_name(section, name) if name in section.model_fields else name
        secret = name in section.model_fields and "SecretStr" in str(section.model_fields[name].annotation)
        if name in given:
            where, value = "--" + env_name[len(ENV_PREFIX):].lower().replace("_", "-"), given[name]
        else:
            where, value = env_name, env.get(env_name)
        shown = "" if secret or value is None else f"={str(value)!r}"
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        yield f"{where}{shown}: {message}"


def _warn_unknown_variables(env: Mapping[str, str], infos: Mapping[str, SettingInfo]) -> None:
    known = {i.env for i in infos.values()}
    for name in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        log.warning("environment variable %s is not a setting%s; it is ignored", name,
                    f" (did you mean {close[0]}?)" if close else "")


# ---------------------------------------------------------------------------------------------
# Documentation: the table in docs/configuration.md, generated from the tree.

TABLE_START = "<!-- settings-table:start -->"
TABLE_END = "<!-- settings-table:end -->"


def type_name(annotation: Any) -> str:
    """A short, readable type for the docs and --help."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        if len(args) == 1:
            return type_name(args[0]) + " (optional)"
        return " or ".join(type_name(a) for a in args)
    if origin is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return "list of networks"
    if origin is dict:
        return "JSON object"
    return {int: "integer", float: "number", bool: "boolean", str: "text", Path: "path",
            SecretStr: "secret"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(info: SettingInfo) -> str:
    value = info.default
    if value is None or value == () or value == {}:
        return "unset"
    if isinstance(value, Path):
        home = Path.home()
        if value.is_relative_to(REPOSITORY):
            return str(value.relative_to(REPOSITORY))
        if value.is_relative_to(home):
            return "~/" + str(value.relative_to(home))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def markdown_table() -> str:
    """Every setting, grouped by section: variable, flag, type, default, description."""
    lines = []
    for section_name, section in SECTIONS.items():
        lines += [f"### {section_name}", "", (section.__doc__ or "").strip(), "",
                  "| variable | `vad serve` flag | type | default | description |", "|---|---|---|---|---|"]
        for info in (i for i in all_settings() if i.section == section_name):
            description = info.description.replace("|", "\\|")
            lines.append(f"| `{info.env}` | `{info.flag}` | {type_name(info.annotation)} | "
                         f"`{_default_text(info)}` | {description} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_docs(text: str) -> str:
    """`text` (docs/configuration.md) with the generated table between its two marker lines."""
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"the page needs the marker lines {TABLE_START} and {TABLE_END}")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{markdown_table()}{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """python -m service.settings [--write-docs FILE]: print the table, or rewrite FILE's table."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write-docs"] and len(args) == 2:
        path = Path(args[1])
        path.write_text(render_docs(path.read_text()))
        print(f"wrote the settings table into {path}")
        return 0
    if args:
        print("usage: python -m service.settings [--write-docs docs/configuration.md]", file=sys.stderr)
        return 2
    print(markdown_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
