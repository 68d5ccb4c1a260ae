// Models: the models folder, each with its card summary (training data, AUCs where its card has
// them, calibration, backend and measured fps), and a button to read the folder again.

import { api } from "../api.js";
import { fmt, fmtBytes, h, setText } from "../dom.js";

const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(2)} %`);

function facts(rows) {
  return h("dl", { class: "facts" }, rows.filter(Boolean).map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
}

function card(model, evaluation) {
  const t = model.training || {};
  const c = model.config || {};
  const cal = model.calibration;
  const runs = evaluation?.evaluations ?? [];
  const status = h("span", { class: `badge state-${model.status}`, text: model.status });
  return h("li", { class: "card model", dataset: { name: model.name } },
    h("h2", {}, model.name, " ", model.default ? h("span", { class: "badge", text: "default" }) : null, " ", status),
    model.error ? h("p", { class: "banner error", text: model.error }) : null,
    model.note ? h("p", { class: "muted", text: model.note }) : null,
    facts([
      ["file", `${model.path} (${fmtBytes(model.size_bytes)})`],
      c.image_size && ["input", `${c.frames} frames of ${c.image_size}×${c.image_size}, ${c.channels === 1 ? "grey" : `${c.channels} channels`}, width ${c.base_width}`],
      model.backend && ["running on", `${model.backend} ${model.precision ?? ""}`.trim()],
      model.threshold !== null && model.threshold !== undefined && ["threshold", fmt(model.threshold, 3)],
      (t.data || t.footage) && ["trained on", String(t.footage ?? t.data)],
      t.epochs && ["epochs", `${t.epochs}${t.wall_seconds ? ` (${(t.wall_seconds / 60).toFixed(0)} min)` : ""}`],
      t.training_videos && ["training videos", Array.isArray(t.training_videos) ? String(t.training_videos.length) : String(t.training_videos)],
      cal && ["calibration", `${cal.count ?? "?"} normal frames: log μ ${fmt(cal.log_mean, 3)}, σ ${fmt(cal.log_std, 3)}`],
    ]),
    runs.length
      ? h("table", { class: "evaluation" },
        h("caption", { text: `Measured (${evaluation.card})` }),
        h("thead", {}, h("tr", {}, ["backend", "AUC (paper)", "AUC (causal)", "EER (causal)", "fps"].map((x) => h("th", { scope: "col", text: x })))),
        h("tbody", {}, runs.map((r) => h("tr", {},
          h("th", { scope: "row", text: `${r.backend ?? "?"} ${r.precision ?? ""}`.trim() }),
          h("td", { text: pct(r.paper_micro_auc) }), h("td", { text: pct(r.causal_micro_auc) }),
          h("td", { text: pct(r.causal_eer) }), h("td", { text: fmt(r.scoring_fps, 1) })))))
      : h("p", { class: "muted", text: "No evaluation on its card." }));
}

export function mount(root) {
  const list = h("ul", { class: "model-list", id: "model-list", "aria-label": "Models" });
  const status = h("p", { role: "status", class: "muted" });
  const reload = h("button", { type: "button", id: "reload-models", text: "Reload the models folder" });
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Models" }), reload), status, list);

  async function show(models) {
    const evaluations = await Promise.all(models.data.map((m) =>
      api(`/v1/models/${encodeURIComponent(m.name)}/evaluation`).catch(() => null)));
    list.replaceChildren(...models.data.map((m, i) => card(m, evaluations[i])));
  }

  reload.addEventListener("click", async () => {
    reload.disabled = true;
    try {
      const changes = await api("/v1/models/reload", { method: "POST" });
      const said = ["added", "changed", "removed"].filter((k) => changes[k].length).map((k) => `${k}: ${changes[k].join(", ")}`);
      setText(status, said.length ? `Reloaded; ${said.join("; ")}.` : "Reloaded; nothing changed.");
      await show(changes.models);
    } catch (error) {
      setText(status, error.detail ?? error.message);
    } finally {
      reload.disabled = false;
    }
  });
  api("/v1/models").then(show).catch((error) => setText(status, error.detail ?? error.message));
  return () => {};
}
