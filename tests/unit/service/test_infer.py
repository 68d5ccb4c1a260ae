"""The inference queue's batching rule: wait for more clips only when an active producer will send them."""

from __future__ import annotations

import threading
import time

import numpy as np

from service.infer import BusyMeter, FrameQueue, Job

WAIT_S = 1.0  # far above a thread switch: waiting or not is unambiguous


def job(stream: str | None, index: int = 0) -> Job:
    return Job(stream_id=stream, frame_index=index, clip=np.zeros(1, np.float32), frame=np.zeros((2, 2, 3), np.uint8),
               timestamp=0.0, received_at=0.0, epoch=0, frames_buffered=0)


def take_timed(queue: FrameQueue, max_batch: int = 8) -> tuple[list[Job], float]:
    began = time.monotonic()
    batch = queue.take_batch(max_batch, WAIT_S)
    return batch, time.monotonic() - began


def put_later(queue: FrameQueue, item: Job, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), queue.put(item)), daemon=True)
    thread.start()
    return thread


def test_a_lone_sequential_stream_is_never_held_back() -> None:
    queue = FrameQueue(max_pending_per_stream=2, max_pending_stateless=4)
    for i in range(3):
        queue.put(job("a", i))
        batch, waited = take_timed(queue)
        assert [j.frame_index for j in batch] == [i]
        assert waited < WAIT_S / 2  # nobody else sends: no batch-fill wait
        queue.finished(batch)  # scored and answered: then the client sends its next frame


def test_two_active_streams_are_gathered_into_one_batch() -> None:
    queue = FrameQueue(max_pending_per_stream=2, max_pending_stateless=4)
    queue.put(job("a"))
    queue.put(job("b"))
    queue.finished(queue.take_batch(8, 0.0))  # both producers are now active
    queue.put(job("a", 1))
    late = put_later(queue, job("b", 1), 0.2)
    batch, waited = take_timed(queue)
    late.join()
    assert [(j.stream_id, j.frame_index) for j in batch] == [("a", 1), ("b", 1)]
    assert waited < WAIT_S  # it stopped waiting as soon as the expected clip came


def test_a_pipelining_stream_counts_with_its_depth() -> None:
    queue = FrameQueue(max_pending_per_stream=2, max_pending_stateless=4)
    queue.put(job("a", 0))
    queue.put(job("a", 1))  # two clips of one stream under way at once
    first = queue.take_batch(1, 0.0)
    queue.finished(first)
    queue.put(job("a", 2))  # while clip 1 is scored: depth 2 again
    second = queue.take_batch(1, 0.0)
    assert [j.frame_index for j in second] == [1]
    queue.finished(second)
    late = put_later(queue, job("a", 3), 0.2)
    batch, _ = take_timed(queue)
    late.join()
    assert [j.frame_index for j in batch] == [2, 3]


def test_a_producer_gone_quiet_stops_counting() -> None:
    queue = FrameQueue(max_pending_per_stream=2, max_pending_stateless=4)
    queue.put(job("a"))
    queue.put(job("b"))
    queue.finished(queue.take_batch(8, 0.0))
    queue.remove_stream("b")  # deleted: no longer expected
    queue.put(job("a", 1))
    batch, waited = take_timed(queue)
    assert len(batch) == 1 and waited < WAIT_S / 2


def test_busy_meter_follows_the_share_of_time_spent_on_batches() -> None:
    meter = BusyMeter(tau=3.0)
    t = 1000.0
    meter._state = (0.0, t)
    for _ in range(300):  # 90 ms batches with 10 ms gaps for 30 s (10 time constants): 90 % busy
        meter.begin(t + 0.01)
        meter.end(t + 0.1)
        t += 0.1
    assert abs(meter.share(t) - 0.9) < 0.01
    # A batch under way counts as busy while it runs (not as idle until it ends).
    meter.begin(t)
    assert meter.share(t + 1.0) > 0.9
    meter.end(t + 1.0)
    t += 1.0
    # Idle: the share decays with the time constant.
    assert abs(meter.share(t + 3.0) - meter.share(t) / 2.718281828) < 0.01
    assert meter.share(t + 30.0) < 0.001
