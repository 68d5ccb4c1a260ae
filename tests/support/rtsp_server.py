"""A looping RTSP camera for tests: GStreamer's RTSP server on 127.0.0.1 serving a folder of frames.

Runs under Debian's /usr/bin/python3 (python3-gi + gir1.2-gst-rtsp-server-1.0), not the venv, so the
tests start it as a subprocess (see tests/support/rtsp.py). Prints `READY <port>` on stdout once
it listens. SIGTERM/SIGINT: quit. SIGUSR1: drop every connected client (a network drop without a
restart). SIGSTOP/SIGCONT from the test freeze and thaw it (a stalled camera).

    /usr/bin/python3 tests/support/rtsp_server.py --frames DIR --port 0 --fps 10 [--codec jpeg|h264]
        [--user U --password P]
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def pipeline(frames: str, fps: int, codec: str, width: int, height: int) -> str:
    source = (
        f'multifilesrc location="{frames}/%03d.jpg" index=0 loop=true '
        f'caps="image/jpeg,framerate=(fraction){fps}/1" ! jpegdec ! videoconvert ! videoscale '
        f"! video/x-raw,width={width},height={height},format=I420 "
    )
    if codec == "h264":
        encode = (
            f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=500 threads=1 "
            "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    else:
        encode = "! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26"
    return f"( {source}{encode} )"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", required=True, help="folder of 000.jpg, 001.jpg, ...")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--codec", choices=["jpeg", "h264"], default="jpeg")
    parser.add_argument("--width", type=int, default=360)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(pipeline(args.frames, args.fps, args.codec, args.width, args.height))
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)

    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", "media.factory.access", True)
        permissions.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()

    def drop_clients() -> bool:
        server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
        return True

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, lambda: loop.quit() or False)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, drop_clients)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
