// The live view of a stream: GET /v1/streams/{id}/preview.jpg (latest scored frame, heatmap, box)
// fetched one at a time. The next request goes out only once the previous image is decoded and
// shown, no sooner than `interval` ms later, and only when the stream scored a newer frame: the
// browser sets the pace, a slow one simply sees fewer frames, and scoring never waits for it.

import { ApiError, fetchBlob } from "./api.js";
import { sleep } from "./dom.js";
import { streamStats } from "./feeds.js";

export class Preview {
  constructor(img, streamId, { interval = 250, maxSide = 640, alpha = 0.5, onStatus = () => {} } = {}) {
    this.img = img;
    this.streamId = streamId;
    this.interval = interval;
    this.maxSide = maxSide;
    this.alpha = alpha;
    this.onStatus = onStatus;
    this.controller = new AbortController();
    this.url = null;
    this.shown = -1; // frame index on screen
    this.force = false;
    this.loop();
  }

  setAlpha(alpha) {
    this.alpha = alpha;
    this.force = true;
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
      const latest = streamStats(this.streamId).last?.frame_index;
      // Without live results for it (the feed saw none since the page opened), look every 2 s.
      const unknown = latest === undefined && performance.now() - (this.fetchedAt ?? -Infinity) > 2000;
      const stale = unknown || (latest !== undefined && latest !== this.shown) || this.force;
      if (document.hidden || !this.img.isConnected || !stale) {
        await sleep(this.interval, signal);
        continue;
      }
      this.force = false;
      this.fetchedAt = performance.now();
      try {
        const path = `/v1/streams/${encodeURIComponent(this.streamId)}/preview.jpg?alpha=${this.alpha}&max_side=${this.maxSide}`;
        const { blob, response } = await fetchBlob(path, { signal });
        if (blob === null) {
          this.onStatus(response.headers.get("X-Reason") || "no scored frame yet");
          await sleep(1000, signal);
          continue;
        }
        const url = URL.createObjectURL(blob);
        const next = new Image();
        next.src = url;
        await next.decode();
        if (signal.aborted) { URL.revokeObjectURL(url); break; }
        this.img.src = url;
        if (this.url) URL.revokeObjectURL(this.url);
        this.url = url;
        this.shown = Number(response.headers.get("X-Frame-Index"));
        this.img.dataset.frame = String(this.shown);
        this.onStatus(null);
      } catch (error) {
        if (signal.aborted) break;
        if (error instanceof ApiError && error.status === 404) { this.onStatus(error.detail); break; }
        this.onStatus(error.message);
        await sleep(2000, signal);
        continue;
      }
      await sleep(Math.max(0, this.interval - (performance.now() - started)), signal);
    }
  }
}
