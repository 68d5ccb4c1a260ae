"""Publish stage: ScoreHub fans results out to WebSocket subscribers through bounded per-client queues.

Most tests drive the hub with `FakeWebSocket` on a real asyncio loop (`asyncio.run`). A fake is fine
here: this is a unit test of the hub's queueing, filtering and closing, and the fake lets a test hold
a send open (a slow or stuck client) deterministically. The last tests use a real Starlette WebSocket
through `starlette.testclient.TestClient`, publishing from the test's own thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from service.domain import FrameResult
from service.metrics import ServiceMetrics
from service.publish import ScoreHub

WAIT_S = 5.0  # upper bound for a condition that normally holds within a few loop iterations


def result(stream_id: str | None, index: int) -> FrameResult:
    return FrameResult(stream_id=stream_id, frame_index=index, status="scored", timestamp=0.0, latency_ms=1.0,
                       frame_width=180, frame_height=120)


def serialize(r: FrameResult) -> str:
    return f"{r.stream_id}:{r.frame_index}"


def counter(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    """A counter's value as exposed by the app's prometheus registry (0 before its first increment)."""
    value = metrics.registry.get_sample_value(f"{name}_total", labels)
    return 0.0 if value is None else value


def make_hub(queue_size: int = 16, stuck_seconds: float = 5.0,
             serializer: Callable[[FrameResult], str] = serialize) -> tuple[ScoreHub, ServiceMetrics]:
    metrics = ServiceMetrics()
    return ScoreHub(queue_size, stuck_seconds, serializer, metrics), metrics


class FakeWebSocket:
    """What ScoreHub uses of starlette's WebSocket: send_text, receive, close, application_state."""

    def __init__(self, hold_sends: bool = False) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.sent: list[str] = []
        self.closes: list[tuple[int, str | None]] = []
        self.send_fails_with: BaseException | None = None
        self.release = asyncio.Event()  # sends complete only once set
        if not hold_sends:
            self.release.set()
        self.sending = asyncio.Event()  # set once a send has started
        self._left = asyncio.Event()
        self.lost = False  # the connection ends without a close frame
        self.empty_close = False  # a close frame without a status code (a browser's ws.close())

    async def send_text(self, text: str) -> None:
        self.sending.set()
        if self.send_fails_with is not None:
            raise self.send_fails_with
        await self.release.wait()
        self.sent.append(text)

    async def receive(self) -> dict[str, Any]:
        await self._left.wait()
        # As uvicorn reports it: a close frame's code and reason, or only 1005 when the connection was lost.
        if self.lost:
            return {"type": "websocket.disconnect", "code": 1005}
        return {"type": "websocket.disconnect", "code": 1005 if self.empty_close else 1000, "reason": ""}

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append((code, reason))
        self.application_state = WebSocketState.DISCONNECTED

    def leave(self) -> None:
        """The client closes its side."""
        self._left.set()


async def until(condition: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let every callback and task that is ready run (call_soon_threadsafe callbacks included)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def subscribe(hub: ScoreHub, ws: FakeWebSocket, stream_id: str | None) -> asyncio.Task[None]:
    before = hub.client_count
    task = asyncio.create_task(hub.serve(ws, stream_id))  # type: ignore[arg-type]
    await until(lambda: hub.client_count == before + 1)
    return task


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), WAIT_S * 2))


# --- fan-out ------------------------------------------------------------------------------------


def test_each_subscriber_gets_its_stream_and_all_streams_subscribers_get_everything() -> None:
    async def scenario() -> None:
        hub, metrics = make_hub()
        hub.bind(asyncio.get_running_loop())
        a, b, every = FakeWebSocket(), FakeWebSocket(), FakeWebSocket()
        tasks = [await subscribe(hub, ws, sid) for ws, sid in ((a, "a"), (b, "b"), (every, None))]
        assert hub.client_count == 3

        for r in (result("a", 0), result("b", 1), result("c", 2), result("a", 3)):
            hub.publish(r)
        await until(lambda: (len(a.sent), len(b.sent), len(every.sent)) == (2, 1, 4))
        await settle()  # nothing more arrives
        assert a.sent == ["a:0", "a:3"]
        assert b.sent == ["b:1"]
        assert every.sent == ["a:0", "b:1", "c:2", "a:3"]
        assert counter(metrics, "vad_websocket_messages_sent") == 7
        assert counter(metrics, "vad_websocket_messages_dropped") == 0

        await hub.close_all_and_wait(WAIT_S)
        await asyncio.gather(*tasks)

    run(scenario)


def test_a_result_is_serialised_once_however_many_subscribers_get_it() -> None:
    calls: list[int] = []

    def counting(r: FrameResult) -> str:
        calls.append(r.frame_index)
        return serialize(r)

    async def scenario() -> None:
        hub, _ = make_hub(serializer=counting)
        hub.bind(asyncio.get_running_loop())
        hub.publish(result("a", 0))  # nobody listens yet: nothing is serialised
        await settle()
        assert calls == []

        sockets = [FakeWebSocket() for _ in range(3)]
        tasks = [await subscribe(hub, ws, sid) for ws, sid in zip(sockets, ["a", None, None], strict=True)]
        hub.publish(result("a", 1))
        hub.publish(result("b", 2))  # only the two all-streams subscribers
        await until(lambda: all(len(ws.sent) == n for ws, n in zip(sockets, [1, 2, 2], strict=True)))
        assert calls == [1, 2]

        await hub.close_all_and_wait(WAIT_S)
        await asyncio.gather(*tasks)

    run(scenario)


def test_publish_from_another_thread_is_delivered_in_order_on_the_loop_thread() -> None:
    serialised_on: set[int] = set()

    def recording(r: FrameResult) -> str:
        serialised_on.add(threading.get_ident())
        return serialize(r)

    async def scenario() -> None:
        hub, metrics = make_hub(queue_size=100, serializer=recording)
        hub.bind(asyncio.get_running_loop())
        ws = FakeWebSocket()
        task = await subscribe(hub, ws, "a")

        def producer() -> int:
            for i in range(50):
                hub.publish(result("a", i))
            return threading.get_ident()

        producer_thread = await asyncio.to_thread(producer)
        await until(lambda: len(ws.sent) == 50)
        assert ws.sent == [f"a:{i}" for i in range(50)]
        assert producer_thread != threading.get_ident()
        assert serialised_on == {threading.get_ident()}  # publish only schedules; the loop does the work
        # Counted once each send returned: on Python 3.11 wait_for runs the send in its own task, so
        # the last append can be seen an iteration before its count.
        await until(lambda: counter(metrics, "vad_websocket_messages_sent") == 50)

        ws.leave()
        await task

    run(scenario)


# --- slow and stuck clients ---------------------------------------------------------------------


def test_a_slow_client_loses_its_oldest_messages_and_does_not_delay_others() -> None:
    async def scenario() -> None:
        hub, metrics = make_hub(queue_size=2)
        hub.bind(asyncio.get_running_loop())
        slow, fast = FakeWebSocket(hold_sends=True), FakeWebSocket()
        tasks = [await subscribe(hub, slow, "a"), await subscribe(hub, fast, "a")]

        hub.publish(result("a", 0))
        await until(slow.sending.is_set)  # message 0 is being sent; the slow socket does not take it
        for i in range(1, 6):
            hub.publish(result("a", i))
            await until(lambda: len(fast.sent) == i + 1)  # noqa: B023 - awaited before i changes
        assert fast.sent == [f"a:{i}" for i in range(6)]
        assert slow.sent == []
        # Queue of 2: messages 1, 2, 3 were pushed out by 3, 4, 5.
        assert counter(metrics, "vad_websocket_messages_dropped") == 3

        slow.release.set()
        await until(lambda: len(slow.sent) == 3)
        await settle()
        assert slow.sent == ["a:0", "a:4", "a:5"]
        assert counter(metrics, "vad_websocket_messages_sent") == 9
        assert counter(metrics, "vad_websocket_messages_dropped") == 3
        assert slow.closes == []  # slow is not stuck: it stays connected

        await hub.close_all_and_wait(WAIT_S)
        await asyncio.gather(*tasks)

    run(scenario)


def test_a_stuck_client_is_closed_with_1008_and_counted() -> None:
    async def scenario() -> None:
        hub, metrics = make_hub(queue_size=4, stuck_seconds=0.05)
        hub.bind(asyncio.get_running_loop())
        stuck, healthy = FakeWebSocket(hold_sends=True), FakeWebSocket()
        stuck_task = await subscribe(hub, stuck, "a")
        healthy_task = await subscribe(hub, healthy, "a")

        hub.publish(result("a", 0))
        await stuck_task  # the hub gives up on it after stuck_seconds
        assert stuck.closes == [(1008, "client too slow: no message accepted for 0.05 s")]
        assert stuck.sent == []
        assert counter(metrics, "vad_websocket_disconnects", reason="stuck") == 1
        assert hub.client_count == 1

        hub.publish(result("a", 1))
        await until(lambda: len(healthy.sent) == 2)
        assert healthy.sent == ["a:0", "a:1"]
        assert healthy.closes == []

        healthy.leave()
        await healthy_task

    run(scenario)


# --- closing ------------------------------------------------------------------------------------


def test_deleting_a_stream_closes_only_its_subscribers_with_1000() -> None:
    async def scenario() -> None:
        hub, metrics = make_hub()
        hub.bind(asyncio.get_running_loop())
        a1, a2, b, every = FakeWebSocket(), FakeWebSocket(), FakeWebSocket(), FakeWebSocket()
        a_tasks = [await subscribe(hub, a1, "a"), await subscribe(hub, a2, "a")]
        others = [await subscribe(hub, b, "b"), await subscribe(hub, every, None)]

        hub.close_stream("a")
        await asyncio.gather(*a_tasks)
        assert a1.closes == [(1000, "stream deleted")]
        assert a2.closes == [(1000, "stream deleted")]
        assert b.closes == [] and every.closes == []
        assert hub.client_count == 2
        assert counter(metrics, "vad_websocket_disconnects", reason="stream_deleted") == 2

        hub.publish(result("b", 7))  # the remaining subscribers still get their results
        await until(lambda: b.sent == ["b:7"] and every.sent == ["b:7"])
        assert a1.sent == [] and a2.sent == []

        await hub.close_all_and_wait(WAIT_S)
        await asyncio.gather(*others)

    run(scenario)


def test_shutdown_closes_every_subscriber_with_1001_and_waits_for_them() -> None:
    async def scenario() -> None:
        hub, metrics = make_hub()
        hub.bind(asyncio.get_running_loop())
        sockets = [FakeWebSocket(), FakeWebSocket(), FakeWebSocket()]
        tasks = [await subscribe(hub, ws, sid) for ws, sid in zip(sockets, ["a", "b", None], strict=True)]

        await hub.close_all_and_wait(WAIT_S)
        assert all(task.done() for task in tasks)  # returned once their close frames were sent
        assert [ws.closes for ws in sockets] == [[(1001, "server shutting down")]] * 3
        assert hub.client_count == 0
        assert counter(metrics, "vad_websocket_disconnects", reason="shutdown") == 3
        assert b'vad_websocket_disconnects_total{reason="shutdown"} 3.0' in metrics.render()

    run(scenario)


@pytest.mark.parametrize(("lost", "empty_close", "reason"), [
    (False, True, "client_closed"),  # a browser's ws.close(): a close frame, no status code (1005)
    (True, False, "connection_lost"),  # no close frame at all (network drop, keep-alive timeout)
])
def test_a_close_frame_without_a_code_is_a_close_a_lost_connection_is_not(lost: bool, empty_close: bool,
                                                                          reason: str) -> None:
    async def scenario() -> None:
        hub, metrics = make_hub()
        hub.bind(asyncio.get_running_loop())
        ws = FakeWebSocket()
        ws.lost, ws.empty_close = lost, empty_close
        task = await subscribe(hub, ws, "a")
        ws.leave()
        await task
        assert counter(metrics, "vad_websocket_disconnects", reason=reason) == 1
        assert counter(metrics, "vad_websocket_disconnects", reason="client_closed" if lost else "connection_lost") == 0

    asyncio.run(scenario())


def test_a_client_that_leaves_is_not_closed_again_and_is_counted() -> None:
    async def scenario() -> None:
        hub, metrics = make_hub()
        hub.bind(asyncio.get_running_loop())
        ws = FakeWebSocket()
        task = await subscribe(hub, ws, "a")
        ws.leave()
        await task
        assert ws.closes == []
        assert hub.client_count == 0
        assert counter(metrics, "vad_websocket_disconnects", reason="client_closed") == 1
        hub.publish(result("a", 0))
        await settle()
        assert ws.sent == []

    run(scenario)


@pytest.mark.parametrize("error", [WebSocketDisconnect(1006), RuntimeError("closed"), OSError("reset")],
                         ids=["disconnect", "runtime", "oserror"])
def test_a_send_that_fails_ends_the_subscription_as_client_closed(error: BaseException) -> None:
    async def scenario() -> None:
        hub, metrics = make_hub()
        hub.bind(asyncio.get_running_loop())
        ws = FakeWebSocket()
        ws.send_fails_with = error
        task = await subscribe(hub, ws, "a")
        hub.publish(result("a", 0))
        await task
        assert hub.client_count == 0
        assert counter(metrics, "vad_websocket_disconnects", reason="client_closed") == 1
        assert counter(metrics, "vad_websocket_messages_sent") == 0

    run(scenario)


def test_publish_and_close_stream_without_a_live_loop_do_nothing() -> None:
    calls: list[FrameResult] = []
    hub, _ = make_hub(serializer=lambda r: calls.append(r) or "")
    hub.publish(result("a", 0))  # never bound
    hub.close_stream("a")
    loop = asyncio.new_event_loop()
    hub.bind(loop)
    loop.close()
    hub.publish(result("a", 1))  # bound to a closed loop (after shutdown)
    hub.close_stream("a")
    assert calls == []


# --- through a real Starlette WebSocket ---------------------------------------------------------


def wait_for_clients(hub: ScoreHub, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while hub.client_count != count:
        assert time.monotonic() < deadline, f"{hub.client_count} clients, expected {count}"
        time.sleep(0.001)


def test_real_websockets_receive_results_and_close_codes() -> None:
    hub, metrics = make_hub()

    async def endpoint(websocket: WebSocket) -> None:
        hub.bind(asyncio.get_running_loop())
        await websocket.accept()
        await hub.serve(websocket, websocket.path_params.get("stream_id"))

    app = Starlette(routes=[WebSocketRoute("/streams/{stream_id}/scores", endpoint),
                            WebSocketRoute("/scores", endpoint)])
    with TestClient(app) as client, client.websocket_connect("/streams/a/scores") as a, \
            client.websocket_connect("/scores") as every:
        wait_for_clients(hub, 2)
        hub.publish(result("a", 0))  # from this thread; the app runs on the TestClient's loop thread
        hub.publish(result("b", 1))
        assert a.receive_text() == "a:0"
        assert every.receive_text() == "a:0"
        assert every.receive_text() == "b:1"

        hub.close_stream("a")
        with pytest.raises(WebSocketDisconnect) as closed:
            a.receive_text()
        assert (closed.value.code, closed.value.reason) == (1000, "stream deleted")

        hub.publish(result("b", 2))
        assert every.receive_text() == "b:2"
        assert client.portal is not None
        client.portal.call(hub.close_all_and_wait, WAIT_S)  # on the app's loop, as the lifespan does
        with pytest.raises(WebSocketDisconnect) as closed:
            every.receive_text()
        assert (closed.value.code, closed.value.reason) == (1001, "server shutting down")

    assert counter(metrics, "vad_websocket_messages_sent") == 4
    assert counter(metrics, "vad_websocket_disconnects", reason="stream_deleted") == 1
    assert counter(metrics, "vad_websocket_disconnects", reason="shutdown") == 1
