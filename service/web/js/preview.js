// The live view of a stream: GET /v1/streams/{id}/preview.jpg (latest scored frame, heatmap, box)
// fetched one at a time. The next request goes out only once the previous image is decoded and
// shown, and no sooner than `interval` ms after the previous one; it carries the shown picture's
// ETag, so an unchanged stream answers 304 with no body and no rendering. The browser sets the
// pace: a slow one simply sees fewer frames, and scoring never waits for it. While the stream's
// model is busy (X-Model-Busy at or above BUSY_SHARE: frames queue for it) the pictures come no
// more often than every `busyInterval` ms, leaving the CPU to scoring when the browser shares it.

const BUSY_SHARE = 0.85;

import { ApiError, fetchBlob } from "./api.js";
import { sleep } from "./dom.js";

export class Preview {
  constructor(img, streamId, { interval = 500, busyInterval = 1000, maxSide = 640, alpha = 0.5,
    onStatus = () => {}, onBusy = () => {} } = {}) {
    this.img = img;
    this.streamId = streamId;
    this.interval = interval;
    this.busyInterval = busyInterval;
    this.busy = false; // the stream's model was busy at the last answer
    this.maxSide = maxSide;
    this.alpha = alpha;
    this.onStatus = onStatus;
    this.onBusy = onBusy;
    this.controller = new AbortController();
    this.url = null;
    this.etag = null; // of the picture shown
    this.loop();
  }

  setAlpha(alpha) {
    this.alpha = alpha;
    this.etag = null;
  }

  stop() {
    this.controller.abort();
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
  }

  async loop() {
    const signal = this.controller.signal;
    while (!signal.aborted) {
      const started = performance.now();
      if (document.hidden || !this.img.isConnected) {
        await sleep(this.interval, signal);
        continue;
      }
      try {
        const path = `/v1/streams/${encodeURIComponent(this.streamId)}/preview.jpg?alpha=${this.alpha}&max_side=${this.maxSide}`;
        const { blob, response } = await fetchBlob(path, { signal, headers: this.etag ? { "If-None-Match": this.etag } : {} });
        const busy = Number(response.headers.get("X-Model-Busy") ?? 0) >= BUSY_SHARE;
        if (busy !== this.busy) { this.busy = busy; this.onBusy(busy); }
        if (response.status === 204) {
          this.onStatus(response.headers.get("X-Reason") || "no scored frame yet");
          await sleep(1000, signal);
          continue;
        }
        if (blob !== null) {
          const url = URL.createObjectURL(blob);
          this.img.src = url; // the previous picture stays on screen until this one is decoded
          await this.img.decode().catch(() => {});
          if (this.url) URL.revokeObjectURL(this.url);
          if (signal.aborted) { URL.revokeObjectURL(url); break; }
          this.url = url;
          this.etag = response.headers.get("ETag");
          this.img.dataset.frame = response.headers.get("X-Frame-Index");
          this.onStatus(null);
        }
      } catch (error) {
        if (signal.aborted) break;
        if (error instanceof ApiError && error.status === 404) { this.onStatus(error.detail); break; }
        this.onStatus(error.message);
        await sleep(2000, signal);
        continue;
      }
      const pace = this.busy ? Math.max(this.interval, this.busyInterval) : this.interval;
      await sleep(Math.max(0, pace - (performance.now() - started)), signal);
    }
  }
}
