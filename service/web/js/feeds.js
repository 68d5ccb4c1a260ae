// Live feeds over WebSockets, reconnecting with backoff: /v1/events (event changes; one per tab,
// for the toasts and the events page) and, on a stream's page only, /v1/streams/{id}/scores (that
// stream's frame results, for its chart), batched: one array every SCORE_BATCH_MS rather than a
// message per frame, as the chart redraws no faster. The overview reads the stream list instead: a
// feed of every frame of every stream would cost each open tab CPU for nothing it shows.

import { wsUrl } from "./api.js";

const SCORE_BATCH_MS = 500;

export class Feed {
  constructor(path) {
    this.path = path;
    this.listeners = new Set();
    this.stateListeners = new Set();
    this.socket = null;
    this.retryMs = 500;
    this.state = "closed";
    this.enabled = false; // set once the page knows its token works (a refused upgrade logs an error)
    this.closed = false;
  }

  start() {
    this.enabled = true;
    if (this.listeners.size) this.open();
    return this;
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
    if (this.socket || !this.enabled || this.closed) return;
    const socket = new WebSocket(wsUrl(this.path));
    this.socket = socket;
    this.setState("connecting");
    socket.addEventListener("open", () => { this.retryMs = 500; this.setState("open"); });
    socket.addEventListener("message", (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch { return; }
      for (const item of Array.isArray(data) ? data : [data]) {
        for (const listener of this.listeners) listener(item);
      }
    });
    socket.addEventListener("close", (event) => {
      this.socket = null;
      this.setState("closed");
      if (this.closed || event.code === 1000) return; // closed by us, or the stream was deleted
      setTimeout(() => this.open(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 10000);
    });
  }

  // After the token changed: connect again with it.
  restart() {
    if (this.socket) this.socket.close(4000, "token changed");
    else this.open();
  }

  close() {
    this.closed = true;
    this.listeners.clear();
    this.socket?.close(1000, "page closed");
  }
}

export const eventFeed = new Feed("/v1/events");

export function streamFeed(id) {
  return new Feed(`/v1/streams/${encodeURIComponent(id)}/scores?batch_ms=${SCORE_BATCH_MS}`).start();
}
