// Overview: every stream as a tile with its live view (frame, heatmap, top window), state, fps,
// latency and open event; filter by name. The list is polled every POLL_MS (fps: scored frames
// between two polls); a running stream that receives no frame for STALL_MS shows "stalled".

import { api } from "../api.js";
import { fmt, h, setText } from "../dom.js";
import { Preview } from "../preview.js";

const POLL_MS = 1000;
const STALL_MS = 4000;
const FILTER_KEY = "vad-overview-filter";

export function stateLabel(stream) {
  const cal = stream.calibration;
  if (stream.state === "learning" && cal) return `learning ${Math.round(cal.progress * 100)} %`;
  return stream.state;
}

export function mount(root) {
  const filter = h("input", { type: "search", id: "stream-filter", placeholder: "Filter by name",
    value: sessionStorage.getItem(FILTER_KEY) || "", "aria-label": "Filter streams by name" });
  const grid = h("ul", { class: "grid", id: "stream-grid", "aria-label": "Streams" });
  const empty = h("div", { class: "empty", hidden: true },
    h("p", { text: "No streams yet." }),
    h("p", {}, h("a", { class: "button primary", href: "#/add", text: "Add a stream" }),
      " then push frames to it, or give it a camera URL."));
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  root.append(
    h("div", { class: "page-head" }, h("h1", { text: "Streams" }), filter,
      h("a", { class: "button", href: "#/add", text: "+ Add stream" })),
    error, empty, grid);

  const tiles = new Map(); // id -> {el, parts, preview, stream, receivedAt, received}
  let streams = [];
  let stopped = false;

  function tile(stream) {
    const img = h("img", { class: "live", alt: `live view of ${stream.name}`, width: 360, height: 240 });
    const placeholder = h("span", { class: "placeholder", text: "waiting for a scored frame" });
    const parts = {
      state: h("span", { class: "badge" }),
      event: h("span", { class: "badge alarm", hidden: true, text: "● event" }),
      stall: h("span", { class: "badge warn", hidden: true }),
      reason: h("p", { class: "reason", hidden: true }),
      fps: h("span"), latency: h("span"), z: h("span"), scored: h("span"),
      progress: h("progress", { max: 1, hidden: true, "aria-label": "calibration progress" }),
      title: h("a", { href: `#/streams/${encodeURIComponent(stream.id)}` }),
      placeholder,
    };
    const el = h("li", { class: "tile", dataset: { id: stream.id } },
      h("div", { class: "frame" }, img, placeholder),
      h("div", { class: "tile-body" },
        h("h2", {}, parts.title),
        h("div", { class: "badges" }, parts.state, parts.event, parts.stall),
        parts.progress, parts.reason,
        h("dl", { class: "stats" },
          h("div", {}, h("dt", { text: "fps" }), h("dd", {}, parts.fps)),
          h("div", {}, h("dt", { text: "latency" }), h("dd", {}, parts.latency)),
          h("div", {}, h("dt", { text: "z" }), h("dd", {}, parts.z)),
          h("div", {}, h("dt", { text: "scored" }), h("dd", {}, parts.scored)))));
    const preview = new Preview(img, stream.id, {
      interval: 1000, busyInterval: 3000, maxSide: 360,
      onStatus: (why) => { placeholder.hidden = why === null; if (why) setText(placeholder, why); },
    });
    const now = performance.now();
    return { el, parts, preview, stream, receivedAt: now, fps: null, counted: { scored: stream.frames_scored, at: now } };
  }

  function update(entry) {
    const { parts, stream } = entry;
    setText(parts.title, stream.name);
    setText(parts.state, stateLabel(stream));
    parts.state.className = `badge state-${stream.state}`;
    parts.event.hidden = !stream.open_event;
    const learning = stream.state === "learning" && stream.calibration;
    parts.progress.hidden = !learning;
    if (learning) parts.progress.value = stream.calibration.progress;
    const reason = stream.state_reason || stream.warnings?.[0];
    parts.reason.hidden = !reason;
    setText(parts.reason, reason || "");
    const last = stream.last_result;
    setText(parts.fps, entry.fps === null ? "–" : fmt(entry.fps, 1));
    setText(parts.latency, last ? `${fmt(last.latency_ms, 0)} ms` : "–");
    setText(parts.z, last ? fmt(last.smoothed_score) : "–");
    setText(parts.scored, String(stream.frames_scored));
    // Stalled: a stream that should be scoring has had no frame for a few seconds.
    const idleMs = performance.now() - entry.receivedAt;
    const active = ["running", "learning", "warming"].includes(stream.state);
    const stalled = active && stream.frames_received > 0 && idleMs > STALL_MS;
    parts.stall.hidden = !stalled;
    if (stalled) setText(parts.stall, `stalled: no frame for ${Math.round(idleMs / 1000)} s`);
    entry.el.classList.toggle("stalled", stalled);
    entry.el.classList.toggle("alarm", Boolean(last?.is_anomaly));
  }

  function render() {
    const needle = filter.value.trim().toLowerCase();
    const shown = streams.filter((s) => s.name.toLowerCase().includes(needle) || s.id.includes(needle));
    empty.hidden = streams.length > 0;
    const ids = new Set(streams.map((s) => s.id));
    for (const [id, entry] of tiles) {
      if (!ids.has(id)) { entry.preview.stop(); entry.el.remove(); tiles.delete(id); }
    }
    for (const stream of streams) {
      let entry = tiles.get(stream.id);
      if (!entry) { entry = tile(stream); tiles.set(stream.id, entry); }
      const now = performance.now();
      if (stream.frames_received !== entry.stream.frames_received) entry.receivedAt = now;
      if (now - entry.counted.at >= 900) {
        entry.fps = ((stream.frames_scored - entry.counted.scored) * 1000) / (now - entry.counted.at);
        entry.counted = { scored: stream.frames_scored, at: now };
      }
      entry.stream = stream;
    }
    const wanted = shown.map((s) => tiles.get(s.id).el);
    if (wanted.length !== grid.children.length || wanted.some((el, i) => grid.children[i] !== el)) grid.replaceChildren(...wanted);
    for (const [id, entry] of tiles) if (!shown.some((s) => s.id === id)) entry.el.remove();
    for (const s of shown) update(tiles.get(s.id));
  }

  async function poll() {
    while (!stopped) {
      try {
        streams = (await api("/v1/streams")).data;
        error.hidden = true;
        render();
      } catch (failure) {
        if (failure.status !== 401) { error.hidden = false; setText(error, `Cannot list the streams: ${failure.message}`); }
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  filter.addEventListener("input", () => { sessionStorage.setItem(FILTER_KEY, filter.value); render(); });
  poll();
  return () => {
    stopped = true;
    for (const entry of tiles.values()) entry.preview.stop();
  };
}
