// The dashboard's entry point: theme, token prompt, live feeds, toasts and a hash router
// (#/ overview, #/streams/ID, #/add, #/events, #/models). Each view is a module whose mount(root,
// params) returns a function that stops it (timers, sockets, object URLs).

import { api, ApiError, hasToken, setToken, whenUnauthorized } from "./api.js";
import { h } from "./dom.js";
import { eventFeed } from "./feeds.js";
import * as addView from "./views/add.js";
import * as eventsView from "./views/events.js";
import * as modelsView from "./views/models.js";
import * as overview from "./views/overview.js";
import * as streamView from "./views/stream.js";

const THEME_KEY = "vad-theme";
const main = document.getElementById("main");
let unmount = () => {};

// --- theme ------------------------------------------------------------------------------------

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  window.dispatchEvent(new Event("themechange"));
}

function currentTheme() {
  return document.documentElement.dataset.theme
    || (matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark");
}

applyTheme(localStorage.getItem(THEME_KEY));
document.getElementById("theme-toggle").addEventListener("click", () => {
  const next = currentTheme() === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_KEY, next);
  applyTheme(next);
});

// --- toasts -----------------------------------------------------------------------------------

// A toast with the same key replaces the previous one (one per stream: the latest event).
export function toast(message, { href, kind = "info", timeout = 8000, key } = {}) {
  const box = document.getElementById("toasts");
  const close = h("button", { type: "button", class: "icon-button", "aria-label": "Dismiss", text: "×" });
  const item = h("div", { class: `toast ${kind}`, dataset: key ? { key } : {} },
    href ? h("a", { href, text: message }) : h("span", { text: message }), close);
  close.addEventListener("click", () => item.remove());
  if (key) for (const old of box.querySelectorAll(".toast")) if (old.dataset.key === key) old.remove();
  box.append(item);
  while (box.children.length > 3) box.firstElementChild.remove();
  setTimeout(() => item.remove(), timeout);
}

eventFeed.subscribe((change) => {
  if (change.type !== "start") return;
  const e = change.event;
  toast(`Event started on ${e.stream_name}: z ${Number(e.peak_score).toFixed(2)}`,
    { href: `#/streams/${encodeURIComponent(e.stream_id)}`, kind: "alarm", key: e.stream_id });
});

const feedState = document.getElementById("feed-state");
eventFeed.onState((state) => {
  feedState.textContent = state === "open" ? "● live" : state === "connecting" ? "○ connecting" : "○ offline";
  feedState.className = `feed-state ${state}`;
});

// --- token ------------------------------------------------------------------------------------

const dialog = document.getElementById("token-dialog");
let asking = null;

function askToken(message = "") {
  if (asking) return asking;
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.textContent = message;
  asking = new Promise((resolve) => {
    const submit = async (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      try {
        await api("/v1/streams");
      } catch (failure) {
        error.textContent = failure instanceof ApiError && failure.status === 401
          ? "That token is not accepted." : `Cannot reach the service: ${failure.message}`;
        input.select();
        return;
      }
      form.removeEventListener("submit", submit);
      input.value = "";
      dialog.close();
      asking = null;
      eventFeed.restart();
      resolve();
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener("cancel", (event) => event.preventDefault());
    dialog.showModal();
    input.focus();
  });
  return asking;
}

let started = false;
whenUnauthorized(() => {
  if (started) askToken("The token was refused: enter it again.").then(route);
});

// --- router -----------------------------------------------------------------------------------

const routes = [
  [/^#?\/?$/, overview, "overview"],
  [/^#\/streams\/([^/]+)$/, streamView, "overview"],
  [/^#\/add$/, addView, "add"],
  [/^#\/events$/, eventsView, "events"],
  [/^#\/models$/, modelsView, "models"],
];

function route() {
  unmount();
  const hash = location.hash || "#/";
  const [, view, nav] = routes.find(([pattern]) => pattern.test(hash)) ?? [null, null, null];
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  main.replaceChildren();
  if (!view) {
    main.append(h("h1", { text: "Not found" }), h("p", {}, h("a", { href: "#/", text: "Back to the streams" })));
    unmount = () => {};
    return;
  }
  const params = hash.match(routes.find(([pattern]) => pattern.test(hash))[0]).slice(1).map(decodeURIComponent);
  unmount = view.mount(main, ...params) || (() => {});
}

async function start() {
  // The page says whether the service wants a token (<html data-auth="token">): ask before any
  // request rather than after a refused one.
  if (document.documentElement.dataset.auth === "token") {
    if (!hasToken()) await askToken();
    else {
      try {
        await api("/v1/streams");
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 401)) throw error;
        await askToken("The stored token was refused: enter it again.");
      }
    }
  }
  started = true;
  eventFeed.start();
  window.addEventListener("hashchange", () => {
    route();
    main.focus({ preventScroll: true });
  });
  route();
}

start();
