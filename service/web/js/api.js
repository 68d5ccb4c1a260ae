// The API client: the token (asked once, kept in localStorage), JSON requests with it as a bearer
// header, images and clips fetched as blobs (an <img> cannot send the header), WebSocket URLs with
// ?token= (browsers cannot set headers there), and API messages mapped to the form field they name.

const TOKEN_KEY = "vad-api-token";
let token = localStorage.getItem(TOKEN_KEY) || null;
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

export function setToken(value) {
  token = value || null;
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

export const hasToken = () => token !== null;
export const whenUnauthorized = (handler) => { onUnauthorized = handler; };

function headers(extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

async function failure(response) {
  let detail = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (typeof body.detail === "string") detail = body.detail;
  } catch { /* not JSON */ }
  if (response.status === 401) onUnauthorized();
  return new ApiError(response.status, detail);
}

// JSON in, JSON out; throws ApiError with the API's message.
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, cache: "no-store", headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return (response.headers.get("content-type") || "").includes("json") ? response.json() : response.text();
}

// A binary resource as a Blob (null for 204 No Content and 304 Not Modified).
export async function fetchBlob(path, { signal, headers: extra = {} } = {}) {
  const response = await fetch(path, { signal, cache: "no-store", headers: headers(extra) });
  if (response.status === 204 || response.status === 304) return { blob: null, response };
  if (!response.ok) throw await failure(response);
  return { blob: await response.blob(), response };
}

// A URL an <img> or <video> can load: the path itself without a token (so clips stream with range
// requests), else a blob: URL of the fetched file. Call release() when done with it.
export async function mediaUrl(path, { signal } = {}) {
  if (!token) return { url: path, release() {} };
  const { blob } = await fetchBlob(path, { signal });
  const url = URL.createObjectURL(blob);
  return { url, release: () => URL.revokeObjectURL(url) };
}

export function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (token) url.searchParams.set("token", token);
  return url.href;
}

// Which form field an API message is about: "body field 'events.min_frames': ..." names it;
// other messages are matched by what they talk about (e.g. the source URL). null: the form itself.
export function fieldOf(detail, fields) {
  const named = /body field '([\w.]+)'/.exec(detail);
  if (named) {
    const path = named[1];
    if (fields.includes(path)) return path;
    const first = path.split(".")[0];
    if (fields.includes(first)) return first;
  }
  const topics = [
    [/max_fps/i, "max_fps"],
    [/ignore region|polygon|region/i, "ignore_regions"],
    [/source|url|scheme|host|address|network|camera/i, "source"],
    [/calibration/i, "calibration"],
    [/threshold/i, "threshold"],
    [/model/i, "model"],
    [/\bname\b/i, "name"],
  ];
  for (const [pattern, field] of topics) if (fields.includes(field) && pattern.test(detail)) return field;
  return null;
}
