// Events: newest first, filtered by stream, time and label; a timeline strip of the shown events,
// each with its snapshot, clip (seekable), and true / false alarm buttons. New events appear live.

import { api, mediaUrl } from "../api.js";
import { fmt, fmtDuration, fmtTime, h, setText } from "../dom.js";
import { eventFeed } from "../feeds.js";

const PAGE = 25;
const LABELS = { true_alarm: "true alarm", false_alarm: "false alarm" };

export function mount(root) {
  const stream = h("select", { id: "filter-stream" }, h("option", { value: "", text: "all streams" }));
  const since = h("input", { type: "datetime-local", id: "filter-since" });
  const until = h("input", { type: "datetime-local", id: "filter-until" });
  const label = h("select", { id: "filter-label" },
    h("option", { value: "", text: "any label" }), h("option", { value: "true_alarm", text: "true alarm" }),
    h("option", { value: "false_alarm", text: "false alarm" }), h("option", { value: "none", text: "not labelled" }));
  const filters = h("form", { class: "filters card", id: "event-filters" },
    h("label", { for: "filter-stream", text: "Stream" }), stream,
    h("label", { for: "filter-since", text: "From" }), since,
    h("label", { for: "filter-until", text: "To" }), until,
    h("label", { for: "filter-label", text: "Label" }), label);
  const error = h("p", { class: "banner error", role: "alert", hidden: true });
  const timeline = h("div", { class: "timeline", id: "timeline", role: "img", "aria-label": "timeline of the events shown" });
  const list = h("ul", { class: "event-list", id: "event-list", "aria-label": "Events" });
  const more = h("button", { type: "button", text: "Older events", hidden: true });
  const empty = h("p", { class: "empty", text: "No events match.", hidden: true });
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Events" })), filters, error, timeline, empty, list, more);

  const releases = new Set(); // object URLs of this page's images and clips
  const items = new Map(); // event id -> {el, event}
  const waiting = new Map(); // event id -> times its media were looked for
  let closed = false;
  let cursor = null;
  let generation = 0;

  const knownStreams = new Set();
  function addStreamOption(id, name) {
    if (knownStreams.has(id)) return;
    knownStreams.add(id);
    stream.append(h("option", { value: id, text: name === id ? id : `${name} (${id})` }));
  }
  api("/v1/streams").then((r) => r.data.forEach((s) => addStreamOption(s.id, s.name))).catch(() => {});

  function query() {
    const params = new URLSearchParams({ limit: PAGE });
    if (stream.value) params.set("stream", stream.value);
    if (since.value) params.set("since", new Date(since.value).toISOString());
    if (until.value) params.set("until", new Date(until.value).toISOString());
    if (label.value) params.set("label", label.value);
    return params;
  }

  function matches(event) {
    if (stream.value && event.stream_id !== stream.value) return false;
    if (label.value === "none" && event.label) return false;
    if (label.value && label.value !== "none" && event.label !== label.value) return false;
    const start = Date.parse(event.started_at);
    if (since.value && start < new Date(since.value).getTime()) return false;
    return !(until.value && start >= new Date(until.value).getTime());
  }

  async function load(append = false) {
    const mine = ++generation;
    const params = query();
    if (append && cursor) params.set("cursor", cursor);
    try {
      const page = await api(`/v1/events?${params}`);
      if (mine !== generation) return;
      error.hidden = true;
      if (!append) { list.replaceChildren(); items.clear(); for (const url of releases) url(); releases.clear(); }
      for (const event of page.data) place(event, false);
      cursor = page.next_cursor;
      more.hidden = !cursor;
      drawTimeline();
    } catch (failure) {
      error.hidden = false;
      setText(error, failure.detail ?? failure.message);
    }
  }

  async function media(el, path, kind) {
    try {
      const { url, release } = await mediaUrl(path);
      releases.add(release);
      el.src = url;
    } catch (failure) {
      el.replaceWith(h("p", { class: "muted", text: `${kind} unavailable: ${failure.detail ?? failure.message}` }));
    }
  }

  function card(event) {
    const labelText = h("span", { class: "badge", text: event.label ? LABELS[event.label] : "not labelled" });
    labelText.classList.toggle("alarm", event.label === "true_alarm");
    const status = h("span", { class: "form-error", role: "alert" });
    const labelButton = (value, text) => h("button", {
      type: "button", text, "aria-pressed": String(event.label === value), dataset: { label: value },
      onclick: async () => {
        try {
          const updated = await api(`/v1/events/${event.id}`, { method: "PATCH", body: { label: event.label === value ? null : value } });
          place(updated, false, true);
        } catch (failure) {
          setText(status, failure.detail ?? failure.message);
        }
      },
    });
    const snapshot = event.snapshot_url
      ? h("img", { class: "snapshot", alt: `snapshot of the event on ${event.stream_name} at its peak`, width: 240, height: 160 })
      : h("div", { class: "snapshot none", text: event.open ? "open: the snapshot comes at its end" : (event.media_error || "no snapshot") });
    if (event.snapshot_url) media(snapshot, event.snapshot_url, "snapshot");
    const clip = h("div", { class: "clip" });
    if (event.clip_url) {
      clip.append(h("button", { type: "button", text: "▶ Play clip", onclick: () => {
        const video = h("video", { controls: true, preload: "auto", playsinline: true, width: 360 });
        clip.replaceChildren(video);
        media(video, event.clip_url, "clip").then(() => video.play?.().catch(() => {}));
      } }));
    }
    return h("li", { class: `event card${event.open ? " open" : ""}`, dataset: { id: event.id } },
      snapshot,
      h("div", { class: "event-body" },
        h("h2", {}, h("a", { href: `#/streams/${encodeURIComponent(event.stream_id)}`, text: event.stream_name }),
          " ", event.open ? h("span", { class: "badge alarm", text: "● open" }) : null),
        h("p", { class: "muted", text: `${fmtTime(event.started_at)} · ${fmtDuration(event.duration_s)} · peak z ${fmt(event.peak_score)} (threshold ${fmt(event.threshold)})${event.end_reason ? ` · ${event.end_reason.replace("_", " ")}` : ""}` }),
        h("div", { class: "toolbar" }, labelText, labelButton("true_alarm", "True alarm"), labelButton("false_alarm", "False alarm"), status),
        clip));
  }

  function place(event, live, replaceOnly = false) {
    addStreamOption(event.stream_id, event.stream_name);
    const existing = items.get(event.id);
    if (!existing && (replaceOnly || !matches(event))) return;
    if (existing && JSON.stringify(existing.event) === JSON.stringify(event)) return;
    const el = card(event);
    if (existing) existing.el.replaceWith(el);
    else if (live) list.prepend(el);
    else list.append(el);
    items.set(event.id, { el, event });
    empty.hidden = items.size > 0;
    drawTimeline();
    // Media are written just after an event ends: look again shortly for its snapshot and clip.
    const tries = waiting.get(event.id) ?? 0;
    if (!event.open && !event.snapshot_url && !event.media_error && tries < 6) {
      waiting.set(event.id, tries + 1);
      setTimeout(() => {
        if (closed) return;
        api(`/v1/events/${event.id}`).then((e) => place(e, false, true)).catch(() => {});
      }, 500 * 2 ** tries);
    }
  }

  function drawTimeline() {
    empty.hidden = items.size > 0;
    const events = [...items.values()].map((i) => i.event);
    timeline.replaceChildren();
    if (!events.length) return;
    const starts = events.map((e) => Date.parse(e.started_at));
    const ends = events.map((e) => (e.ended_at ? Date.parse(e.ended_at) : Date.now()));
    const t0 = Math.min(...starts);
    const t1 = Math.max(...ends, t0 + 1000);
    events.forEach((event, i) => {
      const mark = h("a", { href: `#event-${event.id}`, class: `mark${event.label ? ` ${event.label}` : ""}`,
        title: `${event.stream_name}: ${fmtTime(event.started_at)}`, "aria-label": `event on ${event.stream_name} at ${fmtTime(event.started_at)}` });
      mark.style.left = `${((starts[i] - t0) / (t1 - t0)) * 100}%`;
      mark.style.width = `${Math.max(((ends[i] - starts[i]) / (t1 - t0)) * 100, 0.6)}%`;
      mark.addEventListener("click", (e) => { e.preventDefault(); items.get(event.id)?.el.scrollIntoView({ behavior: "smooth", block: "center" }); });
      timeline.append(mark);
    });
    timeline.append(h("span", { class: "from", text: fmtTime(t0 / 1000) }), h("span", { class: "to", text: fmtTime(t1 / 1000) }));
  }

  filters.addEventListener("change", () => load());
  filters.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  more.addEventListener("click", () => load(true));
  const unsubscribe = eventFeed.subscribe(async (change) => {
    // The feed carries the event's core fields; read the full event (media URLs, open flag).
    try {
      place(await api(`/v1/events/${change.event.id}`), true);
    } catch { /* deleted meanwhile */ }
  });
  load();
  return () => {
    closed = true;
    unsubscribe();
    generation += 1;
    for (const release of releases) release();
    releases.clear();
  };
}
