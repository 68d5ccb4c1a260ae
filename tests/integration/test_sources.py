"""Live sources against a real GStreamer RTSP server on 127.0.0.1, and the URL safety checks."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from service import netguard
from service.domain import StreamState
from service.metrics import ServiceMetrics
from service.netguard import SourceRefused, check_source_url, parse_networks, redact_text, redact_url
from service.settings import SourceSettings
from service.sources import LiveSource, ffmpeg_options
from tests.support.rtsp import PED2_FRAMES, RtspCamera, rtsp_available, wait_for, write_frames

LOOPBACK = parse_networks("127.0.0.0/8")
FAST = SourceSettings(
    open_timeout_s=3.0, stall_timeout_s=2.0, backoff_initial_s=0.2, backoff_max_s=1.0,
    allowed_networks=LOOPBACK, stop_timeout_s=3.0,
)


class RecordingSink:
    """A FrameSink that records everything; `delay` makes it a slow consumer."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.frames: list[tuple[float, float, tuple[int, ...]]] = []  # (handed over at, timestamp, shape)
        self.states: list[str] = []
        self.resets = 0
        self.lock = threading.Lock()
        self.last: np.ndarray | None = None

    def submit_frame(self, frame: np.ndarray, timestamp: float) -> None:
        with self.lock:
            self.frames.append((time.time(), timestamp, frame.shape))
            self.last = frame
        if self.delay:
            time.sleep(self.delay)

    def reset(self) -> None:
        self.resets += 1

    def set_state(self, state: str, reason: str | None = None) -> None:
        self.states.append(state)

    def count(self) -> int:
        with self.lock:
            return len(self.frames)

    def wait_frames(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= n:
                return True
            time.sleep(0.02)
        return False




def counts() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (PED2_FRAMES / "000.jpg").is_file():
        return PED2_FRAMES
    return write_frames(tmp_path_factory.mktemp("camera"))


@pytest.fixture(scope="module")
def gst() -> None:
    why = rtsp_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def camera(gst, frames_dir):
    with RtspCamera(frames_dir, fps=10) as cam:
        yield cam


@pytest.fixture
def fast_camera(gst, frames_dir):
    with RtspCamera(frames_dir, fps=25) as cam:
        yield cam


@pytest.fixture
def sources():
    """Every LiveSource a test makes is stopped at the end, even when the test fails."""
    made: list[LiveSource] = []

    def make(url: str, sink, **kwargs) -> LiveSource:
        kwargs.setdefault("settings", FAST)
        source = LiveSource(url, sink, **kwargs)
        made.append(source)
        return source.start()

    yield make
    for source in made:
        source.stop()


# --------------------------------------------------------------------------- URL safety


@pytest.fixture
def listener():
    """A loopback TCP listener: the refused URLs point at it, and it must never see a connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


LOOPBACK_FORMS = [
    "rtsp://127.0.0.1:{port}/cam",
    "rtsp://localhost:{port}/cam",
    "rtsp://127.1:{port}/cam",
    "rtsp://2130706433:{port}/cam",
    "rtsp://0x7f000001:{port}/cam",
    "rtsp://0x7f.1:{port}/cam",
    "rtsp://017700000001:{port}/cam",
    "rtsp://[::1]:{port}/cam",
    "rtsp://[::ffff:127.0.0.1]:{port}/cam",
    "rtsp://[::ffff:7f00:1]:{port}/cam",
    "http://127.0.0.1:{port}/video.mjpg",
    "https://user:pw@localhost:{port}/",
    "rtsp://0.0.0.0:{port}/cam",
]


@pytest.mark.parametrize("form", LOOPBACK_FORMS)
def test_loopback_forms_are_refused_and_never_connected(form, listener, monkeypatch):
    url = form.format(port=listener.getsockname()[1])

    def no_open(*args, **kwargs):
        raise AssertionError("opened a refused URL")

    with pytest.raises(SourceRefused):
        LiveSource(url, RecordingSink(), opener=no_open)
    time.sleep(0.05)
    assert_no_connection(listener)


NEVER_ALLOWED = [
    "file:///etc/passwd",
    "concat:rtsp://example.com/a|file:///etc/passwd",
    "subfile,,start,0,end,100,,:/etc/passwd",
    "ftp://example.com/video.mp4",
    "gopher://example.com/",
    "data:video/mp4;base64,AAAA",
    "pipe:0",
    "/etc/passwd",
    "rtmp://example.com/live",
    "http://10.1.2.3/video.mjpg",
    "rtsp://10.0.0.1:554/stream",
    "rtsp://192.168.1.10/stream",
    "rtsp://172.16.5.4/stream",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "rtsp://[fe80::1]/stream",
    "rtsp://[fc00::1]/stream",
    "rtsp://[::ffff:10.0.0.1]/stream",
    "rtsp://[::ffff:a9fe:a9fe]/stream",
    "rtsp://[64:ff9b::a00:1]/stream",
    "rtsp://[2002:c0a8:0101::1]/stream",
    "rtsp://224.0.0.1/stream",
    "rtsp://2130706433/",
    "rtsp://0x7f.1/",
    "rtsp:///no-host",
    "rtsp://cam.example.com|file:/etc/passwd/",
    "rtsp://cam example.com/",
]


@pytest.mark.parametrize("url", NEVER_ALLOWED)
def test_refused_even_with_loopback_allowed(url):
    """None of these opens, with or without 127.0.0.0/8 allowed; the resolver is never asked."""

    def no_resolve(*args):
        raise AssertionError("resolved a host that the URL checks should have refused")

    def no_open(*args, **kwargs):
        raise AssertionError("opened a refused URL")

    for networks in ((), LOOPBACK):
        with pytest.raises(SourceRefused):
            check_source_url(url, networks, resolver=no_resolve)
        with pytest.raises(SourceRefused):
            LiveSource(url, RecordingSink(), settings=SourceSettings(allowed_networks=networks),
                       opener=no_open, resolver=no_resolve)


def test_every_resolved_address_is_checked():
    public = ipaddress.ip_address("93.184.216.34")
    assert check_source_url("rtsp://cam.example.com/s", resolver=lambda h, p, t: [public]).addresses == (public,)
    for bad in ("10.0.0.5", "127.0.0.1", "169.254.169.254", "::1", "::ffff:192.168.0.1"):
        with pytest.raises(SourceRefused, match="allowed_source_networks"):
            check_source_url(
                "rtsp://cam.example.com/s",
                resolver=lambda h, p, t, bad=bad: [public, ipaddress.ip_address(bad)],
            )


def test_resolution_has_a_timeout():
    started = time.monotonic()
    with pytest.raises(SourceRefused, match="resolve"):
        netguard.check_source_url("rtsp://slow.example/s", resolver=lambda h, p, t: _slow_resolve(t))
    assert time.monotonic() - started < 1.0
    # The real resolver path: getaddrinfo in a helper thread, abandoned after the timeout.
    gate = threading.Event()
    real = socket.getaddrinfo
    try:
        socket.getaddrinfo = lambda *a, **k: (gate.wait(5), real(*a, **k))[1]  # type: ignore[assignment]
        started = time.monotonic()
        with pytest.raises(SourceRefused, match="within"):
            check_source_url("rtsp://localhost/s", resolve_timeout=0.2)
        assert time.monotonic() - started < 1.0
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]
        gate.set()


def _slow_resolve(timeout: float):
    raise SourceRefused(f"cannot resolve 'slow.example' within {timeout:g} s")


def test_allowed_networks_from_env(monkeypatch):
    monkeypatch.setenv("VAD_ALLOWED_SOURCE_NETWORKS", "127.0.0.0/8, 10.20.0.0/16")
    settings = SourceSettings()
    assert [str(n) for n in settings.allowed_networks] == ["127.0.0.0/8", "10.20.0.0/16"]
    check_source_url("rtsp://10.20.3.4/s", settings.allowed_networks)
    check_source_url("rtsp://localhost/s", settings.allowed_networks)
    with pytest.raises(SourceRefused):
        check_source_url("rtsp://10.21.3.4/s", settings.allowed_networks)
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_networks("127.0.0.0/8,banana")


def test_ffmpeg_itself_refuses_protocols_off_the_whitelist(tmp_path):
    """Defence in depth: even a URL that slipped past the checks cannot reach file:, concat:, ..."""
    import av

    from service.sources import _open_pyav

    secret = tmp_path / "secret.jpg"
    secret.write_bytes((PED2_FRAMES / "000.jpg").read_bytes() if (PED2_FRAMES / "000.jpg").exists() else b"x")
    options = ffmpeg_options(SourceSettings(), "rtsp")
    for url in (f"file:{secret}", str(secret), f"concat:{secret}|{secret}", f"subfile,,start,0,end,10,,:{secret}"):
        with pytest.raises(av.error.FFmpegError):
            _open_pyav(url, dict(options), (2.0, 2.0)).close()


# --------------------------------------------------------------------------- credentials


def test_redact_url():
    assert redact_url("rtsp://admin:hunter2@cam.example.com:554/s?x=1") == "rtsp://***@cam.example.com:554/s?x=1"
    assert redact_url("https://cam/api?token=abc&channel=2") == "https://cam/api?token=***&channel=2"
    assert redact_url("rtsp://user@cam/") == "rtsp://***@cam/"
    assert "p%40ss" not in redact_url("rtsp://u:p%40ss@cam/")
    text = redact_text("Connection refused: 'rtsp://u:p%40ss@127.0.0.1:9/x' (p@ss)", "rtsp://u:p%40ss@127.0.0.1:9/x")
    assert "p%40ss" not in text and "p@ss" not in text


def test_password_never_logged_or_shown(caplog, sources):
    """A camera that refuses the connection: PyAV's error names the URL, ours must not."""
    password = "Sup3r-s3cret"
    with socket.socket() as probe:  # a closed port on loopback: connection refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"rtsp://admin:{password}@127.0.0.1:{port}/cam?token=tok-{password}"
    caplog.set_level(logging.DEBUG)
    sink = RecordingSink()
    source = sources(url, sink, stream_id="cam1")
    assert wait_for(lambda: source.reconnects >= 2, 10)
    source.stop()
    shown = [repr(source), str(source), str(source.stats()), caplog.text]
    shown += [str(r.args) for r in caplog.records] + [r.getMessage() for r in caplog.records]
    assert "cannot open" in caplog.text
    for text in shown:
        assert password not in text
    assert "***@127.0.0.1" in source.source


def test_credentials_reach_the_camera_but_not_the_logs(gst, frames_dir, caplog, sources):
    caplog.set_level(logging.DEBUG)
    password = "pa:ss@w/rd"
    with RtspCamera(frames_dir, fps=10, user="admin", password=password) as cam:
        good = RecordingSink()
        sources(cam.url_with_credentials("admin", password), good, stream_id="auth-ok")
        bad = RecordingSink()
        bad_source = sources(cam.url_with_credentials("admin", "wrong-" + password), bad, stream_id="auth-bad")
        assert good.wait_frames(3, 15), "frames with the right password"
        assert wait_for(lambda: bad_source.reconnects >= 1, 10)
        assert bad.count() == 0
        assert "401" in (bad_source.last_error or "")
    from urllib.parse import quote

    for secret in (password, quote(password, safe=""), "wrong-"):
        assert secret not in caplog.text
        assert secret not in str(bad_source.stats())


# --------------------------------------------------------------------------- live RTSP


def test_rtsp_frames_reach_the_sink(camera, sources):
    sink = RecordingSink()
    source = sources(camera.url, sink, stream_id="cam")
    assert sink.wait_frames(10, 15), source.stats()
    assert source.state is StreamState.RUNNING
    assert sink.states[:2] == ["starting", "running"]
    assert {shape for _, _, shape in sink.frames} == {(240, 360, 3)}
    assert sink.last is not None and sink.last.dtype == np.uint8 and sink.last.std() > 5
    stamps = [ts for _, ts, _ in sink.frames]
    assert stamps == sorted(stamps)


def test_h264_camera(gst, frames_dir, sources):
    with RtspCamera(frames_dir, fps=15, codec="h264") as cam:
        sink = RecordingSink()
        sources(cam.url, sink, stream_id="h264")
        assert sink.wait_frames(10, 15)
        assert sink.frames[-1][2] == (240, 360, 3)


def test_camera_restart_reconnects_without_leaks(camera, sources):
    """Kill the camera and start it again ten times: frames resume each time within the backoff cap + a
    few seconds, reconnects are counted, and threads and file descriptors end where they started."""
    metrics = ServiceMetrics()
    registry = metrics.registry
    before = counts()
    sink = RecordingSink()
    source = sources(camera.url, sink, stream_id="cam", metrics=metrics)
    assert sink.wait_frames(3, 15)
    resume_times = []
    connected = None
    for cycle in range(10):
        camera.kill()
        assert wait_for(lambda: source.state is StreamState.RECONNECTING, 5), f"cycle {cycle}: {source.stats()}"
        seen = sink.count()
        camera.start()
        assert wait_for(lambda seen=seen: sink.count() > seen, FAST.backoff_max_s + 6), f"cycle {cycle}"
        resume_times.append(time.monotonic() - camera.ready_at)
        # The deliverer hands the reset to the sink before the first new frame, so it is counted by now.
        assert sink.resets >= cycle + 1, f"cycle {cycle}: {sink.resets} resets"
        if cycle == 0:
            connected = counts()
    assert "reconnecting" in sink.states and sink.states[-1] == "running"
    assert source.reconnects >= 10
    assert registry.get_sample_value("vad_source_reconnects_total", {"stream": "cam"}) == source.reconnects
    # Same state (connected, running) as after the first cycle: nothing accumulated.
    assert wait_for(lambda: counts() == connected, 3), (counts(), connected)
    print(f"\nresume after camera restart: max {max(resume_times):.2f} s, "
          f"mean {sum(resume_times) / len(resume_times):.2f} s over {len(resume_times)} restarts")
    assert max(resume_times) < FAST.backoff_max_s + 4
    assert source.stop()
    assert not source.alive()
    assert wait_for(lambda: counts() == before, 3), (counts(), before)
    assert sink.states[-1] == "stopped"


def test_network_drop_reconnects(camera, sources):
    sink = RecordingSink()
    source = sources(camera.url, sink, stream_id="cam")
    assert sink.wait_frames(3, 15)
    seen = sink.count()
    camera.drop_clients()
    assert wait_for(lambda: source.reconnects >= 1, 5)
    assert sink.wait_frames(seen + 3, FAST.backoff_max_s + 6)
    assert sink.resets >= 1


def test_frozen_camera_is_a_stall(camera, sources):
    metrics = ServiceMetrics()
    registry = metrics.registry
    sink = RecordingSink()
    source = sources(camera.url, sink, stream_id="cam", metrics=metrics)
    assert sink.wait_frames(3, 15)
    camera.freeze()
    frozen_at = time.monotonic()
    try:
        assert wait_for(lambda: source.stalls >= 1, FAST.stall_timeout_s + 2), source.stats()
        detected = time.monotonic() - frozen_at
        assert source.state is StreamState.RECONNECTING
        assert detected >= FAST.stall_timeout_s * 0.9
        assert wait_for(lambda: sink.resets >= 1 and sink.states[-1] == "reconnecting", 2)
        assert registry.get_sample_value("vad_source_stalls_total", {"stream": "cam"}) == 1
    finally:
        camera.thaw()
    thawed_at = time.monotonic()
    seen = sink.count()
    assert sink.wait_frames(seen + 3, FAST.open_timeout_s + FAST.backoff_max_s + 6), source.stats()
    print(f"\nstall detected after {detected:.2f} s; frames resumed {time.monotonic() - thawed_at:.2f} s after SIGCONT")
    assert source.state is StreamState.RUNNING


def test_silent_server_fails_the_open_within_its_timeout(sources):
    """A listener that accepts and never answers: the open gives up after open_timeout_s."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        settings = FAST.model_copy(update={"open_timeout_s": 1.0, "max_attempts": 1})
        started = time.monotonic()
        source = sources(f"rtsp://127.0.0.1:{server.getsockname()[1]}/cam", RecordingSink(), settings=settings)
        assert wait_for(lambda: source.state is StreamState.FAILED, 5)
        elapsed = time.monotonic() - started
        assert accepted, "the source never connected"
        assert 0.9 <= elapsed < 2.5, elapsed
        assert wait_for(lambda: not source.alive(), 2)
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_slow_consumer_gets_only_fresh_frames(fast_camera, sources):
    """25 fps camera, a sink that takes 0.3 s a frame: every frame handed over is at most a couple of frame
    intervals old, and the rest are counted as dropped (stale)."""
    sink = RecordingSink(delay=0.3)
    source = sources(fast_camera.url, sink, stream_id="slow")
    assert sink.wait_frames(10, 20)
    ages = [handed - stamp for handed, stamp, _ in sink.frames[2:]]
    interval = 1 / fast_camera.fps
    print(f"\nslow consumer: frame age at handover max {max(ages) * 1000:.0f} ms, "
          f"median {sorted(ages)[len(ages) // 2] * 1000:.0f} ms; dropped {source.dropped}")
    assert max(ages) <= 3 * interval, ages
    assert source.dropped.get("stale", 0) >= 20
    assert source.frames_decoded >= source.frames_delivered + source.dropped["stale"] - 1


def test_max_fps_thins_evenly(fast_camera, sources):
    sink = RecordingSink()
    source = sources(fast_camera.url, sink, stream_id="thin", max_fps=5)
    assert sink.wait_frames(4, 15)
    start, seen = time.monotonic(), sink.count()
    time.sleep(3.0)
    rate = (sink.count() - seen) / (time.monotonic() - start)
    handed = [h for h, _, _ in sink.frames[seen:]]
    gaps = np.diff(handed)
    print(f"\nmax_fps=5 of a 25 fps camera: {rate:.2f} fps, gaps {gaps.min():.3f}..{gaps.max():.3f} s")
    assert 4.0 <= rate <= 6.0
    assert gaps.max() < 0.35
    assert source.dropped.get("max_fps", 0) >= 30


def test_stop_is_prompt_and_clean(camera, sources):
    before = counts()
    sink = RecordingSink()
    source = sources(camera.url, sink, stream_id="cam")
    assert sink.wait_frames(3, 15)
    started = time.monotonic()
    assert source.stop()
    assert time.monotonic() - started < 2.0
    assert source.state is StreamState.STOPPED
    delivered = sink.count()
    time.sleep(0.3)
    assert sink.count() == delivered
    assert wait_for(lambda: counts() == before, 3), (counts(), before)
