// One stream: live score chart, live view with an opacity slider and ignore regions drawn on it,
// counters (drops by reason), model and calibration, warnings, and its settings.

import { api, fieldOf } from "../api.js";
import { ScoreChart } from "../chart.js";
import { fmt, fmtTime, h, setText } from "../dom.js";
import { eventFeed, streamFeed } from "../feeds.js";
import { Preview } from "../preview.js";
import { RegionEditor } from "../regions.js";
import { stateLabel } from "./overview.js";

const POLL_MS = 2000;
const EVENT_FIELDS = [
  ["min_frames", "Frames to open", 1], ["hysteresis", "Hysteresis (z)", 0.1],
  ["release_frames", "Frames to close", 1], ["cooldown_seconds", "Cooldown (s)", 1],
  ["max_seconds", "Longest event (s)", 1], ["pre_roll_seconds", "Clip pre-roll (s)", 0.5],
];
const ALPHA_KEY = "vad-heatmap-alpha";
const RATE_KEY = "vad-live-rate";
// Pictures per second of the live view. Each costs the browser's machine ~15 ms of CPU (fetch,
// decode, paint; bench/dashboard_load.py), so the default stays low; a viewer elsewhere can ask for more.
const RATES = [1, 2, 4, 8];
const DEFAULT_RATE = 2;

export function field(name, label, input, hint) {
  input.id ||= `field-${name}`;
  input.name ||= name;
  const error = h("p", { class: "field-error", id: `error-${name}`, role: "alert", dataset: { field: name } });
  input.setAttribute("aria-describedby", error.id);
  return h("div", { class: "field" }, h("label", { for: input.id, text: label }), input,
    hint ? h("p", { class: "hint", text: hint }) : null, error);
}

// Show an API error next to the field it names (else in the form's own error line).
export function showError(form, error) {
  const fields = [...form.querySelectorAll(".field-error[data-field]")].map((el) => el.dataset.field);
  const name = fieldOf(error.detail ?? error.message, fields);
  const target = name ? form.querySelector(`.field-error[data-field="${name}"]`) : form.querySelector(".form-error");
  target.textContent = error.detail ?? error.message;
  const input = name && form.querySelector(`[name="${name}"]`);
  input?.setAttribute("aria-invalid", "true");
  (input ?? target).focus?.();
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field-error, .form-error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

export function mount(root, id) {
  const base = `/v1/streams/${encodeURIComponent(id)}`;
  let stream = null;
  let stopped = false;
  let formFilled = false;

  // --- layout ---
  const title = h("h1", { text: id });
  const state = h("span", { class: "badge" });
  const eventBadge = h("span", { class: "badge alarm", hidden: true, text: "● event open" });
  const source = h("p", { class: "muted" });
  const banner = h("p", { class: "banner error", role: "alert", hidden: true });
  const remove = h("button", { type: "button", class: "danger", text: "Delete stream" });

  const img = h("img", { class: "live", alt: "live view: frame, heatmap and the top-scoring window", width: 360, height: 240 });
  const overlay = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  overlay.setAttribute("class", "regions");
  overlay.setAttribute("tabindex", "0");
  overlay.setAttribute("aria-label", "ignore regions over the frame");
  overlay.setAttribute("preserveAspectRatio", "none");
  const placeholder = h("span", { class: "placeholder", text: "waiting for a scored frame" });
  const alpha = h("input", { type: "range", id: "alpha", min: 0, max: 1, step: 0.05,
    value: localStorage.getItem(ALPHA_KEY) ?? 0.5 });
  const alphaValue = h("output", { for: "alpha" });
  const paced = h("span", { class: "hint", id: "live-paced", role: "status", hidden: true,
    text: "at most 1 per second while the model is busy" });
  const storedRate = Number(localStorage.getItem(RATE_KEY));
  const rate = h("select", { id: "live-rate" }, RATES.map((r) =>
    h("option", { value: r, text: `${r} per second`, selected: r === (RATES.includes(storedRate) ? storedRate : DEFAULT_RATE) })));

  const drawButton = h("button", { type: "button", id: "draw-region", text: "Draw ignore region" });
  const finishButton = h("button", { type: "button", id: "finish-region", text: "Finish polygon", disabled: true });
  const cancelButton = h("button", { type: "button", text: "Cancel", disabled: true });
  const saveRegions = h("button", { type: "button", id: "save-regions", class: "primary", text: "Save regions", disabled: true });
  const regionList = h("ol", { class: "region-list" });
  const regionJson = h("textarea", { id: "regions-json", rows: 3, spellcheck: false });
  const regionForm = h("form", { class: "regions-form", novalidate: true },
    h("div", { class: "toolbar" }, drawButton, finishButton, cancelButton, saveRegions),
    h("p", { class: "hint", text: "Click on the frame to add points; click the first point or press Enter to close the polygon, Backspace removes the last point, Escape stops." }),
    regionList,
    h("details", {}, h("summary", { text: "Edit as JSON" }),
      field("ignore_regions", "Polygons [[[x, y], ...], ...] in frame pixels", regionJson)),
    h("p", { class: "form-error", role: "alert" }));

  const chartEl = h("div", { class: "chart", id: "score-chart" });
  const counters = h("dl", { class: "stats wide", id: "counters" });
  const drops = h("dl", { class: "stats wide", id: "drops" });
  const modelBox = h("dl", { class: "facts", id: "model-facts" });
  const relearn = h("button", { type: "button", id: "relearn", text: "Relearn calibration" });
  const forget = h("button", { type: "button", text: "Use the model's calibration" });
  const calError = h("p", { class: "form-error", role: "alert" });
  const warnings = h("ul", { class: "warnings", id: "warnings" });

  const threshold = h("input", { type: "number", step: "any", inputmode: "decimal" });
  const settings = h("form", { id: "settings-form", novalidate: true },
    field("threshold", "Threshold (smoothed z; empty: the model's)", threshold),
    h("fieldset", {}, h("legend", { text: "Events" }),
      h("div", { class: "field-grid" }, EVENT_FIELDS.map(([name, label, step]) =>
        field(`events.${name}`, label, h("input", { type: "number", step, min: 0, name: `events.${name}` }))))),
    h("p", { class: "form-error", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", text: "Save settings" }),
      h("span", { class: "saved", role: "status" })));

  root.append(
    h("div", { class: "page-head" }, h("a", { href: "#/", class: "back", text: "← Streams" }), title, state, eventBadge, remove),
    source, banner,
    h("div", { class: "stream-layout" },
      h("section", { class: "card view-col", "aria-labelledby": "live-title" },
        h("h2", { id: "live-title", text: "Live view" }),
        h("div", { class: "frame editable" }, img, overlay, placeholder),
        h("div", { class: "slider" }, h("label", { for: "alpha", text: "Heatmap opacity" }), alpha, alphaValue),
        h("div", { class: "slider" }, h("label", { for: "live-rate", text: "Live view" }), rate, paced),
        h("h3", { text: "Ignore regions" }), regionForm),
      h("div", { class: "side-col" },
        h("section", { class: "card", "aria-labelledby": "chart-title" },
          h("h2", { id: "chart-title", text: "Score" }),
          h("p", { class: "hint", text: "Smoothed z-score (line), threshold (dashed), events (shaded); last 5 minutes." }),
          chartEl),
        h("section", { class: "card", "aria-labelledby": "counters-title" },
          h("h2", { id: "counters-title", text: "Frames" }), counters,
          h("h3", { text: "Dropped, by reason" }), drops),
        h("section", { class: "card", "aria-labelledby": "model-title" },
          h("h2", { id: "model-title", text: "Model and calibration" }), modelBox,
          h("div", { class: "toolbar" }, relearn, forget), calError),
        h("section", { class: "card", "aria-labelledby": "warn-title" },
          h("h2", { id: "warn-title", text: "Warnings" }), warnings),
        h("section", { class: "card", "aria-labelledby": "settings-title" },
          h("h2", { id: "settings-title", text: "Settings" }), settings))));

  // --- live parts ---
  const chart = new ScoreChart(chartEl);
  const setAlphaText = () => setText(alphaValue, `${Math.round(alpha.value * 100)} %`);
  setAlphaText();
  const preview = new Preview(img, id, {
    interval: 1000 / Number(rate.value), busyInterval: 1000, alpha: Number(alpha.value),
    onBusy: (busy) => { paced.hidden = !busy; },
    onStatus: (why) => { placeholder.hidden = why === null; if (why) setText(placeholder, why); },
  });
  alpha.addEventListener("input", () => {
    localStorage.setItem(ALPHA_KEY, alpha.value);
    preview.setAlpha(Number(alpha.value));
    setAlphaText();
  });
  rate.addEventListener("change", () => {
    localStorage.setItem(RATE_KEY, rate.value);
    preview.interval = 1000 / Number(rate.value);
  });
  const onTheme = () => { chart.build(); chart.dirty = true; };
  window.addEventListener("themechange", onTheme);

  const editor = new RegionEditor(overlay, { onChange: regionsChanged });
  let savedRegions = "[]";
  function regionsChanged() {
    finishButton.disabled = !(editor.drawing && editor.points.length >= 3);
    cancelButton.disabled = !editor.drawing;
    drawButton.disabled = editor.drawing || !editor.size;
    const current = JSON.stringify(editor.regions);
    saveRegions.disabled = editor.drawing || current === savedRegions;
    if (document.activeElement !== regionJson) regionJson.value = current;
    regionList.replaceChildren(...editor.regions.map((polygon, index) =>
      h("li", {}, `${polygon.length} points`, " ",
        h("button", { type: "button", class: "link", text: "remove", "aria-label": `remove ignore region ${index + 1}`,
          onclick: () => editor.remove(index) }))));
  }
  drawButton.addEventListener("click", () => editor.start());
  finishButton.addEventListener("click", () => editor.finish());
  cancelButton.addEventListener("click", () => editor.stop());
  regionJson.addEventListener("change", () => {
    clearErrors(regionForm);
    try {
      editor.setRegions(JSON.parse(regionJson.value || "[]"));
      regionsChanged();
    } catch (error) {
      showError(regionForm, { detail: `body field 'ignore_regions': not JSON: ${error.message}` });
    }
  });
  saveRegions.addEventListener("click", async () => {
    clearErrors(regionForm);
    try {
      stream = await api(base, { method: "PATCH", body: { ignore_regions: editor.regions } });
      savedRegions = JSON.stringify(stream.ignore_regions);
      editor.setRegions(stream.ignore_regions);
      regionsChanged();
      render();
    } catch (error) {
      showError(regionForm, error);
    }
  });

  const scores = streamFeed(id);
  scores.subscribe((result) => chart.add(result));
  const unsubscribeEvents = eventFeed.subscribe((change) => {
    if (change.event.stream_id === id) chart.setEvent(change.event);
  });
  api(`${base}/events?limit=50`).then((list) => list.data.forEach((e) => chart.setEvent(e))).catch(() => {});

  // --- settings ---
  // The form shows the stream's values, except in fields being edited (typed in since the last save).
  const edited = new Set();
  settings.addEventListener("input", (event) => edited.add(event.target.name));
  function fillForm() {
    if (!edited.has("threshold")) threshold.value = stream.threshold_is_default ? "" : stream.threshold ?? "";
    threshold.placeholder = stream.threshold_is_default && stream.threshold !== null ? `${stream.threshold} (model)` : "";
    for (const [name] of EVENT_FIELDS) {
      if (!edited.has(`events.${name}`)) settings.elements[`events.${name}`].value = stream.events?.[name] ?? "";
    }
    formFilled = true;
    settings.dataset.loaded = "true";
  }

  settings.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(settings);
    const body = { threshold: threshold.value === "" ? null : Number(threshold.value), events: {} };
    for (const [name] of EVENT_FIELDS) {
      const value = settings.elements[`events.${name}`].value;
      if (value !== "" && Number(value) !== stream.events?.[name]) body.events[name] = Number(value);
    }
    if (!Object.keys(body.events).length) delete body.events;
    try {
      stream = await api(base, { method: "PATCH", body });
      edited.clear();
      fillForm();
      render();
      setText(settings.querySelector(".saved"), "Saved.");
      setTimeout(() => setText(settings.querySelector(".saved"), ""), 3000);
    } catch (error) {
      showError(settings, error);
    }
  });

  async function calibration(method) {
    calError.textContent = "";
    try {
      await api(`${base}/calibration`, { method });
      await refresh();
    } catch (error) {
      calError.textContent = error.detail ?? error.message;
    }
  }
  relearn.addEventListener("click", () => calibration("POST"));
  forget.addEventListener("click", () => calibration("DELETE"));
  remove.addEventListener("click", async () => {
    if (!confirm(`Delete stream ${stream?.name ?? id}? Its events stay.`)) return;
    try {
      await api(base, { method: "DELETE" });
      location.hash = "#/";
    } catch (error) {
      banner.hidden = false;
      setText(banner, error.detail ?? error.message);
    }
  });

  // --- render ---
  function facts(dl, rows) {
    dl.replaceChildren(...rows.filter(Boolean).map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
  }

  function render() {
    if (!stream) return;
    setText(title, stream.name);
    setText(state, stateLabel(stream));
    state.className = `badge state-${stream.state}`;
    eventBadge.hidden = !stream.open_event;
    setText(source, `source: ${stream.source}${stream.state_reason ? ` · ${stream.state_reason}` : ""}`);
    facts(counters, [["received", stream.frames_received], ["scored", stream.frames_scored],
      ["dropped", stream.frames_dropped], ["warming", stream.frames_warming], ["pending", stream.frames_pending]]);
    const byReason = Object.entries(stream.frames_dropped_by_reason ?? {});
    facts(drops, byReason.length ? byReason : [["none", 0]]);
    const cal = stream.calibration;
    facts(modelBox, [
      ["model", stream.model],
      ["threshold", `${fmt(stream.threshold)}${stream.threshold_is_default ? " (the model's)" : " (this stream's)"}`],
      cal && ["calibration", `${cal.mode}: ${cal.status}${cal.status === "learning" ? ` ${Math.round(cal.progress * 100)} % (${cal.frames_learned} of ${cal.frames_needed})` : ""}`],
      cal && ["statistics", `μ ${fmt(cal.statistics.mu, 3)}, σ ${fmt(cal.statistics.sigma, 3)}`],
      cal?.learned_at && ["learned", fmtTime(cal.learned_at)],
      cal?.reason && ["why", cal.reason],
      stream.domain_z !== null && stream.domain_z !== undefined && ["domain z", fmt(stream.domain_z)],
    ]);
    warnings.replaceChildren(...(stream.warnings.length ? stream.warnings.map((w) => h("li", { class: "warn", text: w }))
      : [h("li", { class: "muted", text: "none" })]));
    const last = stream.last_result;
    if (last) editor.setSize(last.frame_width, last.frame_height);
    if (!editor.drawing && JSON.stringify(stream.ignore_regions) !== savedRegions) {
      savedRegions = JSON.stringify(stream.ignore_regions);
      editor.setRegions(stream.ignore_regions);
    }
    regionsChanged();
    if (!formFilled) fillForm();
  }

  async function refresh() {
    stream = await api(base);
    banner.hidden = true;
    render();
  }

  (async () => {
    while (!stopped) {
      try {
        await refresh();
      } catch (error) {
        banner.hidden = false;
        setText(banner, error.detail ?? error.message);
        if (error.status === 404) break;
      }
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  })();

  return () => {
    stopped = true;
    preview.stop();
    chart.destroy();
    scores.close();
    unsubscribeEvents();
    window.removeEventListener("themechange", onTheme);
  };
}
