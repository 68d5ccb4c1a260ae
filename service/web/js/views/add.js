// Add a stream: pushed frames (shows where to push and a command to copy) or a camera URL with its
// options. Each API message appears next to the field it is about; the URL (it may hold a password)
// is cleared from the form once sent, and only the API's redacted form is shown back.

import { api } from "../api.js";
import { copyText, h, setText } from "../dom.js";
import { clearErrors, field, showError } from "./stream.js";

function pushExample(id) {
  const origin = location.origin;
  const auth = document.documentElement.dataset.auth === "token" ? ` -H "Authorization: Bearer $VAD_API_TOKEN"` : "";
  return `for f in frames/*.jpg; do curl -s -o /dev/null${auth} -H 'Content-Type: image/jpeg' --data-binary @"$f" ${origin}/v1/streams/${id}/frames; done`;
}

function created(stream) {
  const ingest = new URL(`/v1/streams/${stream.id}/ingest`, location.href);
  ingest.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const parts = [h("h2", { text: `Stream “${stream.name}” created` })];
  if (stream.source === "push") {
    const command = h("code", { id: "push-command", text: pushExample(stream.id) });
    const status = h("span", { role: "status" });
    const copy = h("button", { type: "button", text: "Copy", onclick: async () => {
      setText(status, (await copyText(command.textContent, command)) ? "Copied." : "Selected: press Ctrl+C.");
    } });
    parts.push(
      h("p", {}, "Push JPEG or PNG frames in order to ", h("code", { text: `POST ${location.origin}/v1/streams/${stream.id}/frames` }),
        " (one image per request) or over the WebSocket ", h("code", { text: ingest.href.replace(/\?.*$/, "") }), "."),
      h("p", { text: "To push a folder of frames (000.jpg, 001.jpg, ...) in one command:" }),
      h("pre", { class: "copyable" }, command), h("div", { class: "toolbar" }, copy, status));
  } else {
    parts.push(h("p", { text: `Source: ${stream.source} (state: ${stream.state}).` }));
  }
  parts.push(h("p", {}, h("a", { class: "button primary", href: `#/streams/${stream.id}`, text: "Open the stream" })));
  return h("section", { class: "card success", id: "created", role: "status" }, parts);
}

export function mount(root) {
  const kindPush = h("input", { type: "radio", name: "kind", value: "push", id: "kind-push", checked: true });
  const kindCamera = h("input", { type: "radio", name: "kind", value: "camera", id: "kind-camera" });
  const name = h("input", { type: "text", maxlength: 200, autocomplete: "off" });
  const url = h("input", { type: "text", placeholder: "rtsp://user:password@camera.local/stream", autocomplete: "off",
    spellcheck: "false" });
  const maxFps = h("input", { type: "number", step: "any", min: 0 });
  const model = h("select", {}, h("option", { value: "", text: "the default model" }));
  const threshold = h("input", { type: "number", step: "any" });
  const calibration = h("select", {},
    h("option", { value: "", text: "the server's default" }), h("option", { value: "auto", text: "auto" }),
    h("option", { value: "learn", text: "learn this scene" }), h("option", { value: "model", text: "the model's" }));
  const cameraFields = h("div", { class: "camera-fields", hidden: true },
    field("source", "Camera URL (rtsp://, rtsps://, http://, https://)", url,
      "Credentials in the URL are used to connect and never shown back."),
    field("max_fps", "Score at most (frames per second, optional)", maxFps));
  const result = h("div", { id: "add-result" });
  const form = h("form", { id: "add-form", class: "card", novalidate: true },
    h("fieldset", { class: "kinds" }, h("legend", { text: "Frames come from" }),
      h("label", { for: "kind-push" }, kindPush, " pushed frames (HTTP or WebSocket)"),
      h("label", { for: "kind-camera" }, kindCamera, " a camera URL")),
    field("name", "Name", name, "A label for people, e.g. entrance; default: the stream's id."),
    cameraFields,
    h("details", {}, h("summary", { text: "Model, threshold, calibration" }),
      field("model", "Model", model), field("threshold", "Threshold (smoothed z; empty: the model's)", threshold),
      field("calibration", "Calibration", calibration)),
    h("p", { class: "form-error", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", text: "Add stream" })));
  root.append(h("div", { class: "page-head" }, h("h1", { text: "Add a stream" })), form, result);

  const toggle = () => { cameraFields.hidden = !kindCamera.checked; };
  kindPush.addEventListener("change", toggle);
  kindCamera.addEventListener("change", toggle);
  api("/v1/models").then((models) => {
    for (const m of models.data) if (m.status !== "removed") model.append(h("option", { value: m.name, text: `${m.name}${m.default ? " (default)" : ""}` }));
  }).catch(() => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    result.replaceChildren();
    const body = { source: kindCamera.checked ? url.value.trim() : "push" };
    if (name.value.trim()) body.name = name.value.trim();
    if (kindCamera.checked && maxFps.value !== "") body.max_fps = Number(maxFps.value);
    if (model.value) body.model = model.value;
    if (threshold.value !== "") body.threshold = Number(threshold.value);
    if (calibration.value) body.calibration = calibration.value;
    if (kindCamera.checked && !body.source) {
      showError(form, { detail: "body field 'source': enter the camera's URL" });
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const stream = await api("/v1/streams", { method: "POST", body });
      url.value = ""; // it may hold a password: not kept in the page
      result.replaceChildren(created(stream));
      result.querySelector("h2").focus?.();
    } catch (error) {
      showError(form, error);
    } finally {
      button.disabled = false;
    }
  });
  return () => {};
}
