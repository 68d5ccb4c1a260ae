// The two live feeds of the page, one WebSocket each, shared by every view: /v1/scores (every
// stream's frame results) and /v1/events (event changes). They reconnect with backoff, and keep
// per-stream statistics (received rate, last result, when the last frame came) for the views.

import { wsUrl } from "./api.js";

const FPS_WINDOW_MS = 5000;

class Feed {
  constructor(path) {
    this.path = path;
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.socket = null;
    this.retryMs = 500;
    this.state = "closed";
    this.enabled = false; // set once the page knows its token works (a refused upgrade logs an error)
  }

  start() {
    this.enabled = true;
    if (this.listeners.size) this.open();
  }

  subscribe(listener) {
    this.listeners.add(listener);
    this.open();
    return () => this.listeners.delete(listener);
  }

  onState(listener) {
    this.stateListeners.add(listener);
    listener(this.state);
    return () => this.stateListeners.delete(listener);
  }

  setState(state) {
    this.state = state;
    for (const listener of this.stateListeners) listener(state);
  }

  open() {
    if (this.socket || !this.enabled) return;
    const socket = new WebSocket(wsUrl(this.path));
    this.socket = socket;
    this.setState("connecting");
    socket.addEventListener("open", () => { this.retryMs = 500; this.setState("open"); });
    socket.addEventListener("message", (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch { return; }
      for (const listener of this.listeners) listener(data);
    });
    socket.addEventListener("close", () => {
      this.socket = null;
      this.setState("closed");
      setTimeout(() => this.open(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 10000);
    });
  }

  // After the token changed: connect again with it.
  restart() {
    if (this.socket) this.socket.close();
    else this.open();
  }
}

export const scoreFeed = new Feed("/v1/scores");
export const eventFeed = new Feed("/v1/events");

// Per stream: arrival times of the last FPS_WINDOW_MS (for fps), the last result, when it came.
const stats = new Map();

scoreFeed.subscribe((result) => {
  if (!result.stream_id) return;
  let entry = stats.get(result.stream_id);
  if (!entry) {
    entry = { times: [], last: null, lastAt: 0 };
    stats.set(result.stream_id, entry);
  }
  const now = performance.now();
  entry.times.push(now);
  while (entry.times.length && (entry.times[0] < now - FPS_WINDOW_MS || entry.times.length > 2000)) entry.times.shift();
  entry.last = result;
  entry.lastAt = now;
});

export function streamStats(id) {
  const entry = stats.get(id);
  if (!entry) return { fps: 0, last: null, ageMs: Infinity };
  const now = performance.now();
  const recent = entry.times.filter((t) => t >= now - FPS_WINDOW_MS);
  const span = recent.length > 1 ? Math.max(now - recent[0], 1000) : FPS_WINDOW_MS;
  return { fps: recent.length > 1 ? (recent.length * 1000) / span : 0, last: entry.last, ageMs: now - entry.lastAt };
}

export function forgetStats(keep) {
  for (const id of stats.keys()) if (!keep.has(id)) stats.delete(id);
}
