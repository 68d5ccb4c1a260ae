"""`vad record`: a video file re-encoded, a real RTSP camera recorded, and refusals as one line, exit 2."""

from __future__ import annotations

import socket
from pathlib import Path

import av
import pytest

from service.cli import main
from service.recorder import output_name
from tests.support.rtsp import RtspCamera
from tests.unit.model.test_footage import write_avi

# Short timeouts: a camera that cannot be reached fails the test in seconds, not in the default 10 s.
FAST = {"VAD_SOURCE_OPEN_TIMEOUT_S": "5", "VAD_SOURCE_STALL_TIMEOUT_S": "3"}


@pytest.fixture(autouse=True)
def source_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No allowed networks unless a test allows them: loopback cameras are refused by default."""
    monkeypatch.delenv("VAD_ALLOWED_SOURCE_NETWORKS", raising=False)
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def probe(path: Path) -> tuple[str, int, int, int]:
    """(codec, width, height, decoded frames) of a recording."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return stream.codec_context.name, stream.codec_context.width, stream.codec_context.height, frames


def one_recording(folder: Path) -> Path:
    (path,) = folder.iterdir()  # nothing else: no temporary file left behind
    assert path.suffix == ".mp4" and not path.name.startswith(".")
    return path


def test_a_video_file_is_re_encoded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_avi(tmp_path / "walkway.avi", 60)  # 25 fps, 180x120, MJPEG
    code, out, err = run(["record", str(source), "--output", str(tmp_path / "rec"), "--quiet"], capsys)
    assert code == 0, err
    path = one_recording(tmp_path / "rec")
    assert path.name.startswith("walkway-")
    assert probe(path) == ("h264", 180, 120, 60)
    assert out == f"wrote {path}: 60 frames, 2.4 s at 25 fps (180x120, H.264)\n"

    # --seconds: the first seconds of the file's media time (25 fps: 25 frames).
    code, out, err = run(["record", str(source), "--seconds", "1", "--output", str(tmp_path / "one"), "--quiet"],
                         capsys)
    assert code == 0, err
    assert probe(one_recording(tmp_path / "one"))[3] == 25 and "25 frames, 1.0 s" in out


def test_a_camera_is_recorded(camera_frames: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VAD_ALLOWED_SOURCE_NETWORKS", "127.0.0.0/8")
    with RtspCamera(camera_frames, fps=10, codec="h264", user="admin", password="s3cret-pw") as camera:
        url = camera.url_with_credentials("admin", "s3cret-pw")
        code, out, err = run(["record", url, "--seconds", "1.5", "--output", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    path = one_recording(tmp_path)
    codec, width, height, frames = probe(path)
    assert (codec, width, height) == ("h264", 360, 240) and frames >= 1
    assert path.name.startswith("127.0.0.1-cam-")
    assert out.startswith(f"wrote {path}: {frames} frames, ") and "(360x240, H.264)" in out
    assert "s3cret-pw" not in out + err + path.name


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert err.startswith("vad record: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_a_refused_url_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Loopback is not allowed by default: refused before any connection, credentials never shown."""
    code, out, err = run(["record", "rtsp://admin:hunter2@127.0.0.1:8554/cam", "--seconds", "5",
                          "--output", str(tmp_path / "rec")], capsys)
    err = one_line_error(code, err)
    assert "refused" in err and "loopback" in err and "VAD_ALLOWED_SOURCE_NETWORKS" in err
    assert "hunter2" not in err and "rtsp://***@127.0.0.1:8554/cam" in err and out == ""
    assert not (tmp_path / "rec").exists()

    code, _, err = run(["record", "file:///etc/passwd", "--seconds", "1", "--output", str(tmp_path)], capsys)
    assert "scheme 'file' is not allowed" in one_line_error(code, err)


def test_an_unreachable_camera_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VAD_ALLOWED_SOURCE_NETWORKS", "127.0.0.0/8")
    with socket.socket() as probe_socket:  # a port nobody listens on
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    code, _, err = run(["record", f"rtsp://127.0.0.1:{port}/cam", "--seconds", "1", "--output",
                        str(tmp_path / "rec")], capsys)
    assert f"cannot open rtsp://127.0.0.1:{port}/cam" in one_line_error(code, err)
    assert not (tmp_path / "rec").exists()


@pytest.mark.parametrize(("argv", "words"), [
    (["--seconds", "0"], "--seconds '0' must lie in (0, 86400]"),
    (["--seconds", "nan"], "--seconds 'nan' must lie in"),
    (["--seconds", "ten"], "--seconds 'ten' is not a number"),
])
def test_bad_seconds(argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_avi(tmp_path / "a.avi", 10)
    code, _, err = run(["record", str(source), "--output", str(tmp_path / "rec"), *argv], capsys)
    assert words in one_line_error(code, err)


def test_missing_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["record", str(tmp_path / "absent.mp4"), "--output", str(tmp_path)], capsys)
    assert f"{tmp_path / 'absent.mp4'}: no such video file" in one_line_error(code, err)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    code, _, err = run(["record", str(text), "--output", str(tmp_path / "rec")], capsys)
    assert f"{text}: cannot open this video file" in one_line_error(code, err)
    code, _, err = run(["record", "rtsp://example.com/cam", "--output", str(tmp_path)], capsys)
    assert "--seconds is required for a camera" in one_line_error(code, err)


def test_output_names() -> None:
    assert output_name("rtsp://user:pw@cam.local:554/stream1", 0).startswith("cam.local-stream1-19")
    assert output_name("/data/My Walkway.mov", 0).startswith("My-Walkway-19")
