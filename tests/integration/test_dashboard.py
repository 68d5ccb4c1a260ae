"""The dashboard at `/`, in a real browser against a real server.

Chromium is Debian's (`apt-get install chromium`, which .ci/run does), driven by Playwright through
`executable_path`: nothing is downloaded at run time. Every page is watched: each request it makes
(HTTP and WebSocket) must go to 127.0.0.1 (anything else is aborted and fails the test), and no
console error or uncaught exception may appear. The Ped2 test takes the screenshots of
docs/dashboard.md and the README: into docs/assets/dashboard-*.png when they are missing or with
VAD_UPDATE_SCREENSHOTS=1, else into the test's temporary folder (so a test run leaves the
committed pictures alone).

Without Playwright or Chromium the browser tests skip on a user's machine and fail in CI.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from model.paths import DEFAULT_WEIGHTS
from tests.support.serving import RunningServer, encode, metric_value

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "docs" / "assets"
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 20_000


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    """A page and what it did: every URL it asked for, console errors, uncaught exceptions."""

    page: Any
    context: Any
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def check(self, allowed_errors: tuple[str, ...] = ()) -> None:
        assert self.requests, "the page made no request"
        assert not self.outside, f"requests that left 127.0.0.1: {self.outside}"
        for url in self.requests:
            parts = urlsplit(url)
            assert parts.scheme in ("blob", "data") or parts.hostname == "127.0.0.1", url
        errors = [e for e in self.console_errors if not any(a in e for a in allowed_errors)]
        assert not errors, f"console errors: {errors}"
        assert not self.page_errors, f"uncaught errors: {self.page_errors}"


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Watched]]:
    contexts: list[Any] = []

    def open_(server: RunningServer, path: str = "/", **options: Any) -> Watched:
        context = browser.new_context(viewport=VIEWPORT, base_url=server.base, **options)
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        watched = Watched(context.new_page(), context)

        def route(route: Any) -> None:
            url = route.request.url
            if urlsplit(url).scheme in ("http", "https") and urlsplit(url).hostname != "127.0.0.1":
                watched.outside.append(url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", route)
        page = watched.page
        page.on("request", lambda r: watched.requests.append(r.url))
        page.on("websocket", lambda ws: watched.requests.append(ws.url))
        page.on("console", lambda m: watched.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: watched.page_errors.append(str(e)))
        page.goto(path)
        return watched

    yield open_
    for context in contexts:
        context.close()


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def too_wide(page: Any, settle_s: float = 5.0) -> list[str]:
    """The elements wider than a phone's screen (after the layout settled), [] when none."""
    script = """() => document.documentElement.scrollWidth <= innerWidth + 1 ? [] :
        [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1)
        .slice(0, 10).map(e => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""
    deadline = time.monotonic() + settle_s
    while (found := page.evaluate(script)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return found


def screenshot_path(name: str, tmp_path: Path) -> str:
    target = ASSETS / f"dashboard-{name}.png"
    if os.environ.get("VAD_UPDATE_SCREENSHOTS") == "1" or not target.exists():
        return str(target)
    return str(tmp_path / target.name)


def chart_points(page: Any) -> int:
    return int(page.locator("#score-chart").get_attribute("data-points") or 0)


# --- without a browser: what the page relies on ------------------------------------------------------


def test_page_assets_docs_and_preview(start_server, video) -> None:
    server = start_server(api_token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    page = httpx.get(server.url("/"))
    assert page.status_code == 200 and 'data-auth="token"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for asset in ("/ui/js/app.js", "/ui/styles.css", "/ui/vendor/uplot/uPlot.iife.min.js", "/favicon.ico"):
        assert httpx.get(server.url(asset)).status_code == 200, asset  # no token: the files hold no data
    assert httpx.get(server.url("/ui/nope.js")).status_code == 404
    docs = httpx.get(server.url("/docs"))
    assert docs.status_code == 200 and "/ui/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert not re.search(r"(src|href)=['\"]https?://", docs.text), "the docs page loads something from outside"
    assert httpx.get(server.url("/v1/streams")).status_code == 401  # the API still needs the token
    assert httpx.get(server.url("/v1/streams/nope/preview.jpg")).status_code == 401
    with server.client(headers=auth) as client:
        assert client.get("/v1/streams/nope/preview.jpg").status_code == 404
        stream_id = client.post("/v1/streams", json={"name": "p"}).json()["id"]
        empty = client.get(f"/v1/streams/{stream_id}/preview.jpg")
        assert empty.status_code == 204 and "no scored frame" in empty.headers["x-reason"]
        for frame in video[:8]:
            client.post(f"/v1/streams/{stream_id}/frames", content=encode(frame), headers={"content-type": "image/jpeg"})
        shown = client.get(f"/v1/streams/{stream_id}/preview.jpg", params={"max_side": 90, "alpha": 0.3})
        assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
        assert int(shown.headers["x-frame-index"]) == 7
        assert 0.0 <= float(shown.headers["x-model-busy"]) < 0.85  # a few frames: far from busy
        same = client.get(f"/v1/streams/{stream_id}/preview.jpg", params={"max_side": 90, "alpha": 0.3},
                          headers={"If-None-Match": shown.headers["etag"]})
        assert same.status_code == 304 and not same.content  # nothing newer: no rendering, no body
        assert Image.open(io.BytesIO(shown.content)).size == (90, 60)  # 180x120 frames, longer side 90
        assert client.get(f"/v1/streams/{stream_id}/preview.jpg", params={"alpha": 2}).status_code == 422
        card = client.get("/v1/models/tiny/evaluation").json()
        assert card == {"name": "tiny", "card": None, "evaluations": []}
        assert client.get("/v1/models/nope/evaluation").status_code == 404


# --- in the browser -----------------------------------------------------------------------------------


def push_clip(server: RunningServer, stream_id: str, frames: list[Path], fps: float = 10.0) -> None:
    """Push a clip's frames in order, with capture times `fps` apart (so its events and clip have them)."""
    start = time.time()
    with server.client() as client:
        for i, path in enumerate(frames):
            r = client.post(f"/v1/streams/{stream_id}/frames", params={"timestamp": start + i / fps},
                            content=path.read_bytes(), headers={"content-type": "image/jpeg"})
            assert r.status_code == 200, r.text


def test_ped2_clip_from_the_form_to_a_labelled_event(start_server, open_page, ped2_root: Path, tmp_path: Path) -> None:
    """A new user's path: add a push stream from the form, push Ped2 test video 04, watch the overview,
    the chart and the event toast, draw an ignore region, find the event with its snapshot and clip, and
    label it; the models page and /docs work offline too."""
    server = start_server(weights=DEFAULT_WEIGHTS, models_dir=DEFAULT_WEIGHTS.parent)
    api = server.client()
    frames = sorted((ped2_root / "testing" / "frames" / "04").glob("*.jpg"))
    assert len(frames) >= 150
    watched = open_page(server, color_scheme="dark")
    page = watched.page
    page.get_by_text("No streams yet.").wait_for()

    # Add a push stream from the form; the page shows where and how to push.
    page.locator("nav").get_by_role("link", name="Add stream").click()
    page.fill("#field-name", "entrance")
    page.click("#add-form button[type=submit]")
    command = page.locator("#push-command").inner_text()
    (stream,) = api.get("/v1/streams").json()["data"]
    assert stream["name"] == "entrance" and f"/v1/streams/{stream['id']}/frames" in command
    stream_id = stream["id"]

    # Event parameters from the stream page: events of at most 4 s, so the clip closes some.
    page.get_by_role("link", name="Open the stream").click()
    page.locator("#settings-form[data-loaded]").wait_for()
    page.fill('[name="events.max_seconds"]', "4")
    page.click("#settings-form button[type=submit]")
    page.get_by_text("Saved.").wait_for()
    assert api.get(f"/v1/streams/{stream_id}").json()["events"]["max_seconds"] == 4

    # Push the clip; the overview shows the live view, the state and the event as it happens.
    page.goto("/#/")
    pusher = threading.Thread(target=push_clip, args=(server, stream_id, frames), daemon=True)
    pusher.start()
    tile = page.locator(f'li.tile[data-id="{stream_id}"]')
    page.wait_for_function(
        f"() => Number(document.querySelector('li.tile[data-id=\"{stream_id}\"] img.live')?.dataset.frame) > 60")
    page.locator(".toast.alarm").first.wait_for()  # the live toast of the event's start
    tile.locator(".badge.alarm").wait_for()
    assert tile.locator(".badge.warn").is_hidden()  # frames arrive: not stalled
    page.screenshot(path=screenshot_path("overview", tmp_path))

    # The stream page's chart advances while frames come in.
    tile.locator("h2 a").click()
    page.wait_for_function("() => Number(document.querySelector('#score-chart').dataset.points) > 0")
    first = chart_points(page)
    wait_for(lambda: chart_points(page) > first)
    pusher.join(60)
    assert not pusher.is_alive()
    wait_for(lambda: chart_points(page) > first + 20)

    # Draw an ignore region (a triangle) on the frame; the stream's configuration follows.
    page.wait_for_selector("#draw-region:not([disabled])")
    page.click("#draw-region")
    overlay = page.locator("svg.regions")
    # The live picture may still be settling its size under load: click once the overlay's box is stable,
    # so the clicks land inside the frame.
    box = overlay.bounding_box()
    for _ in range(50):
        time.sleep(0.1)
        again = overlay.bounding_box()
        if again == box:
            break
        box = again
    clicks = [(0.1, 0.1), (0.4, 0.1), (0.1, 0.5)]
    for fx, fy in clicks:
        overlay.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
    page.click("#finish-region")
    page.click("#save-regions")
    regions = wait_for(lambda: api.get(f"/v1/streams/{stream_id}").json()["ignore_regions"], timeout=40.0)
    assert len(regions) == 1 and len(regions[0]) == 3
    width, height = stream_size = (360, 240)  # Ped2 frames
    for (x, y), (fx, fy) in zip(regions[0], clicks, strict=True):
        assert abs(x - fx * width) < 4 and abs(y - fy * height) < 4, (regions, stream_size)
    page.locator("svg.regions polygon.region").wait_for()
    page.wait_for_selector("img.live[data-frame]")
    for button in page.locator(".toast button").all():
        button.click()
    page.screenshot(path=screenshot_path("stream", tmp_path))

    # A phone's width: one column, nothing wider than the screen; the other theme.
    page.set_viewport_size({"width": 390, "height": 844})
    assert not too_wide(page)
    page.click("#theme-toggle")
    assert page.evaluate("() => document.documentElement.dataset.theme") == "light"
    page.set_viewport_size(VIEWPORT)

    # A stream whose frames stop shows it within seconds.
    page.goto("/#/")
    tile.locator(".badge.warn", has_text="stalled").wait_for(timeout=10_000)

    # The events: listed with their snapshot; play the clip and seek; label one.
    page.locator("nav").get_by_role("link", name="Events").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#event-list img.snapshot')].some(i => i.complete && i.naturalWidth > 0)")
    ended = next(e for e in api.get("/v1/events").json()["data"] if e["snapshot_url"])
    item = page.locator(f'li.event[data-id="{ended["id"]}"]')
    item.get_by_role("button", name="True alarm").click()
    wait_for(lambda: api.get(f"/v1/events/{ended['id']}").json()["label"] == "true_alarm")
    item.locator("button[data-label=true_alarm][aria-pressed=true]").wait_for()
    item.get_by_role("button", name="▶ Play clip").click()
    video = item.locator("video")
    video.wait_for()
    page.wait_for_function("v => v.readyState >= 1 && v.duration > 0", arg=video.element_handle())
    seeked = video.evaluate("""v => new Promise(ok => { v.pause(); v.addEventListener('seeked', () => ok(v.currentTime),
        {once: true}); v.currentTime = v.duration / 2; })""")
    assert seeked > 0
    page.select_option("#filter-label", "true_alarm")
    page.wait_for_function("() => document.querySelectorAll('#event-list li.event').length === 1")
    page.select_option("#filter-label", "")
    page.wait_for_function("() => document.querySelectorAll('#event-list li.event').length > 1")
    page.screenshot(path=screenshot_path("events", tmp_path))

    # The models folder with the card's numbers, and a reload.
    page.locator("nav").get_by_role("link", name="Models").click()
    page.get_by_text("96.35 %").first.wait_for()
    page.set_viewport_size({"width": 390, "height": 844})
    assert not too_wide(page)
    page.set_viewport_size(VIEWPORT)
    page.click("#reload-models")
    page.get_by_text("Reloaded;").wait_for()

    # /docs: Swagger UI from the service's own files.
    page.goto("/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    api.close()
    watched.check()


def test_bad_camera_url_shows_the_api_message(start_server, open_page) -> None:
    server = start_server(source_factory="auto")
    bad = "rtsp://admin:hunter2@127.0.0.1:554/cam"  # loopback: refused by the default allowed networks
    expected = httpx.post(server.url("/v1/streams"), json={"source": bad}).json()["detail"]
    watched = open_page(server, "/#/add", color_scheme="light")
    page = watched.page
    page.check("#kind-camera")
    page.fill("#field-source", bad)
    page.click("#add-form button[type=submit]")
    error = page.locator("#error-source")
    error.wait_for()
    assert error.inner_text() == expected
    assert page.locator("#field-source").get_attribute("aria-invalid") == "true"
    assert "hunter2" not in page.content().replace(page.input_value("#field-source"), "")
    # A bad option value is shown next to its own field.
    page.fill("#field-max_fps", "-1")
    page.click("#add-form button[type=submit]")
    page.locator("#error-max_fps").filter(has_text="max_fps").wait_for()
    assert httpx.get(server.url("/v1/streams")).json()["count"] == 0
    watched.check(allowed_errors=("422",))  # the refused POSTs, as Chromium logs them


def test_token_is_asked_once_and_used_for_rest_and_websockets(start_server, open_page, video) -> None:
    server = start_server(api_token="s3cret")
    watched = open_page(server)
    page = watched.page
    dialog = page.locator("#token-dialog")
    dialog.wait_for()
    page.fill("#token-input", "wrong")
    page.click("#token-form button[type=submit]")
    page.locator("#token-error").filter(has_text="not accepted").wait_for()
    page.fill("#token-input", "s3cret")
    page.click("#token-form button[type=submit]")
    dialog.wait_for(state="hidden")
    page.get_by_text("No streams yet.").wait_for()
    # Results arrive over the WebSocket (with ?token=): the tile counts them.
    with server.client(headers={"Authorization": "Bearer s3cret"}) as client:
        stream_id = client.post("/v1/streams", json={"name": "lobby"}).json()["id"]
        tile = page.locator(f'li.tile[data-id="{stream_id}"]')
        tile.wait_for()
        for frame in video[:12]:
            client.post(f"/v1/streams/{stream_id}/frames", content=encode(frame), headers={"content-type": "image/jpeg"})
    page.wait_for_function(
        f"() => Number(document.querySelector('li.tile[data-id=\"{stream_id}\"] img.live')?.dataset.frame) === 11")
    assert page.locator("#feed-state").inner_text() == "● live"
    # Asked once: a reload uses the stored token without asking again.
    page.reload()
    page.locator(f'li.tile[data-id="{stream_id}"]').wait_for()
    assert dialog.is_hidden()
    assert any("token=s3cret" in url and url.startswith("ws://") for url in watched.requests)
    watched.check(allowed_errors=("401",))  # the wrong token's refused request, as Chromium logs it
    # Without a token configured there is no prompt.
    plain = start_server()
    other = open_page(plain)
    other.page.get_by_text("No streams yet.").wait_for()
    assert other.page.locator("#token-dialog").is_hidden()
    other.check()


def test_live_view_slows_while_the_model_is_busy(start_server, open_page, video) -> None:
    """A model that is the bottleneck (here: 300 ms per batch of one, fed without pause) makes the
    stream page ask for at most one picture a second instead of two; it speeds up again after."""
    server = start_server(extra_inference_latency_ms=300, max_batch=1, batch_wait_ms=0)
    api = server.client()
    stream_id = api.post("/v1/streams", json={"name": "busy"}).json()["id"]
    for frame in video[:5]:
        api.post(f"/v1/streams/{stream_id}/frames", content=encode(frame), headers={"content-type": "image/jpeg"})
    watched = open_page(server, f"/#/streams/{stream_id}")
    page = watched.page
    page.wait_for_function("() => Number(document.querySelector('img.live')?.dataset.frame) >= 4")
    assert page.locator("#live-rate").input_value() == "2"
    assert page.locator("#live-paced").is_hidden()

    def previews() -> int:
        return sum("preview.jpg" in url for url in watched.requests)

    pushing = threading.Event()
    pushing.set()

    def push(start: int) -> None:  # two of these: a clip always waits for the worker
        with server.client() as client:
            i = start
            while pushing.is_set():
                client.post(f"/v1/streams/{stream_id}/frames", content=encode(video[i % len(video)]),
                            headers={"content-type": "image/jpeg"})
                i += 2

    pushers = [threading.Thread(target=push, args=(start,), daemon=True) for start in (5, 6)]
    for pusher in pushers:
        pusher.start()
    try:
        page.locator("#live-paced").wait_for()  # "at most 1 per second while the model is busy"
        busy = metric_value(api.get("/metrics").text, "vad_inference_busy_ratio", {"model": "tiny"})
        assert busy >= 0.85, busy
        before, began = previews(), time.monotonic()
        page.wait_for_timeout(4000)
        paced_rate = (previews() - before) / (time.monotonic() - began)
        assert paced_rate <= 1.3, paced_rate  # 1 per second (2 per second unpaced)
    finally:
        pushing.clear()
        for pusher in pushers:
            pusher.join(10)
    page.locator("#live-paced").wait_for(state="hidden")  # idle again: the busy share decays
    # Drops by reason come with the stream (no /metrics scrape).
    by_reason = api.get(f"/v1/streams/{stream_id}").json()["frames_dropped_by_reason"]
    drops = page.locator("#drops")
    for reason, count in by_reason.items() or [("none", 0)]:
        drops.locator("div").filter(has_text=reason).filter(has_text=str(count)).first.wait_for()
    assert not any(url.endswith("/metrics") for url in watched.requests)
    before, began = previews(), time.monotonic()
    page.wait_for_timeout(3000)
    assert (previews() - before) / (time.monotonic() - began) >= 1.5  # back to 2 per second (304s count)
    watched.check()
