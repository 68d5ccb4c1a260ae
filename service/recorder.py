"""`vad record SOURCE --seconds N --output DIR`: record normal footage of a scene to train a scene model on.

SOURCE is a camera URL or a local video file:

- A **camera URL** (rtsp, rtsps, http, https) passes the guard every live source passes before anything
  connects (`service.netguard.check_source_url` with the sources settings: VAD_ALLOWED_SOURCE_NETWORKS,
  VAD_SOURCE_RESOLVE_TIMEOUT_S), then opens with the live sources' FFmpeg options (protocol and format
  whitelists, RTSP transport, socket timeout; `service.sources.ffmpeg_options`) and their (open, read)
  timeouts (VAD_SOURCE_OPEN_TIMEOUT_S, VAD_SOURCE_STALL_TIMEOUT_S); rtsp:// connects to the address that
  was checked (VAD_SOURCE_PIN_ADDRESS). `--seconds` is required: seconds of wall-clock time from the first
  frame. A camera that stops sending for the stall timeout ends the recording with an error; the frames
  recorded until then are kept.
- A **video file** is opened with FFmpeg restricted to the `file` protocol and ordinary video containers
  (no playlists that could reach the network) and re-encoded: its first `--seconds` of media time, or all.

The output is `DIR/<source>-<YYYYmmdd-HHMMSS>.mp4`: H.264 (libx264, CRF 18, yuv420p), every decoded frame
at its size (rounded down to even sides), timed at the source's frame rate. It is written under a hidden
temporary name and renamed once complete. Errors a user can fix raise `RecordError` (a `CliError`): the
CLI prints one line, `vad record: error: ...`, with credentials redacted, and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from model.cli import CliError

from .netguard import SourceRefused, check_source_url, redact_text, redact_url
from .settings import SourceSettings

URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
#: Demuxers a local file may use: ordinary video containers, nothing that names other files or URLs.
FILE_FORMAT_WHITELIST = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv,h264,hevc,mpeg,mjpeg"
MAX_SECONDS = 24 * 3600.0
DEFAULT_RATE = Fraction(25)
ENCODER_OPTIONS = {"crf": "18", "preset": "veryfast"}  # near-transparent: the model trains on these pixels


class RecordError(CliError):
    """A recording that cannot be made; the message is one line, safe to show (no credentials)."""


@dataclass(frozen=True)
class Recording:
    path: Path
    frames: int
    seconds: float  # frames / rate: the length of the file
    width: int
    height: int
    rate: Fraction


def parse_seconds(text: str | None) -> float | None:
    """--seconds: a positive, finite number of seconds up to a day (None: not given)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise RecordError(f"--seconds {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0 or value > MAX_SECONDS:
        raise RecordError(f"--seconds {text!r} must lie in (0, {MAX_SECONDS:g}]")
    return value


def is_url(source: str) -> bool:
    return "://" in source


def output_name(source: str, now: float | None = None) -> str:
    """`rtsp://user:pw@cam.local:554/stream1` -> `cam.local-stream1-20250101-120000.mp4`; a file: its stem."""
    if is_url(source):
        from urllib.parse import urlsplit

        parts = urlsplit(source)
        base = f"{parts.hostname or 'camera'}-{parts.path}"
    else:
        base = Path(source).stem
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", base).strip("-.")[:60] or "recording"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.mp4"


def _free_path(folder: Path, name: str) -> Path:
    path = folder / name
    count = 2
    while path.exists():
        path = folder / f"{Path(name).stem}-{count}.mp4"
        count += 1
    return path


def _open_camera(source: str, settings: SourceSettings) -> Any:
    import av

    from .sources import ffmpeg_options

    try:
        checked = check_source_url(source, settings.allowed_networks, resolve_timeout=settings.resolve_timeout_s)
    except SourceRefused as exc:
        raise RecordError(f"{redact_url(source)}: refused: {exc}") from None
    target = checked.pinned_url() if settings.pin_address and checked.scheme == "rtsp" else source
    try:
        return av.open(target, mode="r", options=ffmpeg_options(settings, checked.scheme),
                       timeout=(settings.open_timeout_s, settings.stall_timeout_s))
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, 401, timeout, not a stream: all one line
        raise RecordError(
            f"cannot open {redact_url(source)}: {redact_text(str(exc), source, target)}"
        ) from None


def _open_file(source: str, settings: SourceSettings) -> Any:
    import av

    path = Path(source)
    if not path.is_file():
        raise RecordError(f"{source}: no such video file (a camera is an rtsp://, rtsps://, http:// or https:// URL)")
    options = {"protocol_whitelist": "file", "format_whitelist": FILE_FORMAT_WHITELIST}
    try:
        return av.open(str(path), mode="r", options=options,
                       timeout=(settings.open_timeout_s, settings.stall_timeout_s))
    except Exception as exc:  # noqa: BLE001 - not a video, unsupported container, unreadable
        raise RecordError(f"{source}: cannot open this video file ({exc})") from None


def _rate_of(stream: Any) -> Fraction:
    """The source's frame rate, or 25 when it does not say or says something implausible."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 1 <= float(rate) <= 240:
            return Fraction(rate).limit_denominator(1001)
    return DEFAULT_RATE


def _bar(total: float | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=None if total is None else round(total, 1), desc=desc, unit="s", file=sys.stderr,
                dynamic_ncols=True, leave=False, disable=None if enabled else True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} s [{elapsed}<{remaining}]"
                if total else "{desc}: {n:.1f} s [{elapsed}]")


class _Writer:
    """An H.264 MP4 under a temporary name; `finish()` renames it, `discard()` removes it."""

    def __init__(self, path: Path, width: int, height: int, rate: Fraction) -> None:
        import av

        self.path = path
        self.temp = path.with_name(f".{path.name}.part")
        self.width, self.height, self.rate = width - width % 2, height - height % 2, rate
        if self.width < 2 or self.height < 2:
            raise RecordError(f"frames of {width}x{height} pixels are too small to encode")
        try:
            self.container = av.open(str(self.temp), mode="w", format="mp4")
        except Exception as exc:  # noqa: BLE001 - unwritable folder, full disk: one line, not "read error"
            raise RecordError(f"{self.temp}: cannot write the recording ({exc})") from None
        self.stream = self.container.add_stream("libx264", rate=rate, options=dict(ENCODER_OPTIONS))
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.frames = 0

    def write(self, frame: Any) -> None:
        out = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        out.pts = self.frames  # constant frame rate: the model sees frames, not their timing
        out.time_base = 1 / self.rate
        for packet in self.stream.encode(out):
            self.container.mux(packet)
        self.frames += 1

    def finish(self) -> Path:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        self.temp.replace(self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()
        self.temp.unlink(missing_ok=True)


def record(
    source: str,
    output_dir: Path,
    seconds: float | None = None,
    settings: SourceSettings | None = None,
    progress: bool = True,
) -> Recording:
    """Record `seconds` of a camera (wall clock) or re-encode a file (its first `seconds`, or all of it)."""
    settings = settings or SourceSettings()
    camera = is_url(source)
    if camera and seconds is None:
        raise RecordError("--seconds is required for a camera")
    output_dir = Path(output_dir)
    container = _open_camera(source, settings) if camera else _open_file(source, settings)
    shown = redact_url(source) if camera else source
    session = _Session(source, shown, camera, seconds, settings, output_dir)
    try:
        try:  # after the source opened: a refused or missing source leaves no folder behind
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordError(f"{output_dir}: cannot create the output folder ({exc.strerror or exc})") from None
        session.run(container, progress)
    except KeyboardInterrupt:
        if session.writer is not None and session.writer.frames:  # Ctrl-C: keep what was recorded
            print(f"kept {session.keep()}", file=sys.stderr)
        elif session.writer is not None:
            session.writer.discard()
        raise
    except BaseException:
        if session.writer is not None and session.writer.temp.exists():
            session.writer.discard()
        raise
    finally:
        with contextlib.suppress(Exception):
            container.close()
    writer = session.writer
    assert writer is not None
    return Recording(writer.path, writer.frames, writer.frames / float(writer.rate), writer.width,
                     writer.height, writer.rate)


class _Session:
    """One recording: reads a container until `seconds`, the end of a file, or a camera's loss."""

    def __init__(self, source: str, shown: str, camera: bool, seconds: float | None,
                 settings: SourceSettings, output_dir: Path) -> None:
        self.source, self.shown, self.camera, self.seconds = source, shown, camera, seconds
        self.settings, self.output_dir = settings, output_dir
        self.writer: _Writer | None = None

    def keep(self) -> str:
        """Finish a partial recording (a lost camera, Ctrl-C) so that what was recorded stays usable."""
        assert self.writer is not None
        try:
            return f"the {self.writer.frames} frames recorded in {self.writer.finish()}"
        except Exception:  # noqa: BLE001 - the encoder could not be flushed: nothing usable to keep
            self.writer.discard()
            return "nothing (the partial recording could not be finished)"

    def lost(self, why: str) -> RecordError:
        return RecordError(f"{self.shown}: {why}" + (f"; kept {self.keep()}" if self.writer else ""))

    def run(self, container: Any, progress: bool) -> None:
        import av

        if not container.streams.video:
            raise RecordError(f"{self.shown}: has no video stream")
        stream = container.streams.video[0]
        total = self.seconds
        if total is None and container.duration:
            total = container.duration / 1e6  # microseconds (AV_TIME_BASE)
        bar = _bar(total, f"{'recording' if self.camera else 're-encoding'} {self.shown}", progress)
        stall = self.settings.stall_timeout_s
        try:
            reached = self._read(container, stream, bar)
        except av.error.ExitError:  # FFmpeg's read timeout (VAD_SOURCE_STALL_TIMEOUT_S) fired
            raise self.lost(f"no data for {stall:g} s") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise self.lost(f"read error ({redact_text(str(exc), self.source)})") from None
        finally:
            bar.close()
        if self.writer is None:
            raise RecordError(f"{self.shown}: no frame could be decoded")
        if self.camera and not reached:
            raise self.lost("the camera ended the stream")
        self.writer.finish()

    def _read(self, container: Any, stream: Any, bar: Any) -> bool:
        """Decode and encode until `seconds` (True) or the end of the stream (False)."""
        import av

        rate = _rate_of(stream)
        stall = self.settings.stall_timeout_s
        first_time: float | None = None
        started = last_frame = time.monotonic()
        done = 0.0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except (av.error.InvalidDataError, av.error.UndefinedError):
                frames = []  # a damaged packet: skip it, as live sources do
            now = time.monotonic()
            for frame in frames:
                if first_time is None:
                    first_time, started = frame.time or 0.0, now
                # A camera records wall-clock seconds; a file its own media time.
                at = now - started if self.camera else (frame.time or 0.0) - first_time
                if self.seconds is not None and at >= self.seconds:
                    return True
                if self.writer is None:
                    self.writer = _Writer(_free_path(self.output_dir, output_name(self.source)),
                                          frame.width, frame.height, rate)
                self.writer.write(frame)
                last_frame = now
                bar.update(max(0.0, round(at - done, 3)))
                done = max(done, at)
            if self.camera and now - last_frame > stall:
                raise self.lost(f"packets but no decodable frame for {stall:g} s")
        return False


def cmd_record(args: argparse.Namespace) -> None:
    from .settings import Settings, SettingsError

    seconds = parse_seconds(args.seconds)
    try:
        settings = Settings.load().sources
    except SettingsError as exc:
        raise RecordError(str(exc)) from None
    result = record(args.source, Path(args.output), seconds, settings, progress=not args.quiet)
    print(f"wrote {result.path}: {result.frames} frames, {result.seconds:.1f} s at {float(result.rate):g} fps "
          f"({result.width}x{result.height}, H.264)")


def add_record_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "record",
        help="record normal footage from a camera (or re-encode a video file) to train a scene model on",
        description="Record SOURCE (a camera URL, checked like a live source: VAD_ALLOWED_SOURCE_NETWORKS, "
        "VAD_SOURCE_* timeouts; or a video file, re-encoded) to DIR/<source>-<time>.mp4 (H.264).",
    )
    p.add_argument("source", help="rtsp://, rtsps://, http:// or https:// camera URL, or a video file")
    p.add_argument("--seconds", help="seconds to record (required for a camera; a file: default all of it)")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write the recording into")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_record)
