"""A real RTSP camera for tests: tests/support/rtsp_server.py run by Debian's python3 (GStreamer).

    with RtspCamera(frames_dir, fps=10) as camera:
        camera.url            # rtsp://127.0.0.1:PORT/cam
        camera.kill(); camera.start()   # restart on the same port
        camera.freeze(); camera.thaw()  # SIGSTOP / SIGCONT: a stalled camera
        camera.drop_clients()           # SIGUSR1: server closes every client connection

`rtsp_available()` says whether this machine can run it (python3-gi, gir1.2-gst-rtsp-server-1.0).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"
PED2_FRAMES = Path(__file__).resolve().parents[3] / "shared" / "data" / "ped2" / "testing" / "frames" / "01"


def rtsp_available() -> str | None:
    """None when the GStreamer RTSP server can run here, else why not."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} missing"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0');"
                              "from gi.repository import GstRtspServer"],
        capture_output=True, text=True, timeout=30,
    )
    if probe.returncode:
        return "GStreamer RTSP server not installed (python3-gi, gir1.2-gst-rtsp-server-1.0): " + probe.stderr[-200:]
    return None


def write_frames(folder: Path, count: int = 30, width: int = 360, height: int = 240) -> Path:
    """A small looping clip as 000.jpg ... when the Ped2 copy is absent (a moving bright square)."""
    import cv2
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.full((height, width, 3), 90, np.uint8)
        x = (i * 7) % (width - 40)
        image[100:140, x:x + 40] = 230
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), image)
    return folder


class RtspCamera:
    def __init__(self, frames: Path, *, fps: int = 10, codec: str = "jpeg", port: int = 0,
                 user: str | None = None, password: str | None = None, mount: str = "/cam") -> None:
        self.frames = Path(frames)
        self.fps = fps
        self.codec = codec
        self.port = port
        self.user = user
        self.password = password
        self.mount = mount
        self.process: subprocess.Popen[str] | None = None
        self.ready_at = 0.0  # time.monotonic() the last start printed READY

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def url_with_credentials(self, user: str, password: str) -> str:
        from urllib.parse import quote

        return f"rtsp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> RtspCamera:
        command = [SYSTEM_PYTHON, str(SERVER), "--frames", str(self.frames), "--port", str(self.port),
                   "--fps", str(self.fps), "--codec", self.codec, "--mount", self.mount]
        if self.user:
            command += ["--user", self.user, "--password", self.password or ""]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            line = self.process.stdout.readline() if self.process.stdout else ""
            if line.startswith("READY"):
                self.port = int(line.split()[1])
                self.ready_at = time.monotonic()
                return self
            self.process.wait(5)
            error = self.process.stderr.read() if self.process.stderr else ""
            self._close_pipes()
            # The port of a killed server can take a moment to be free again.
            if "cannot listen" not in error or time.monotonic() > deadline:
                raise RuntimeError(f"RTSP test server did not start: {error[-500:]}")
            time.sleep(0.1)

    def _close_pipes(self) -> None:
        if self.process is not None:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None:
                    pipe.close()

    def kill(self) -> None:
        """SIGKILL: the camera vanishes; the kernel closes its connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close_pipes()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._close_pipes()
        self.process = None

    def _signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def drop_clients(self) -> None:
        self._signal(signal.SIGUSR1)

    def __enter__(self) -> RtspCamera:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; its last value decides."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
