// Talking to /api/v1: the bearer token (kept in this browser), JSON, problem+json errors.
const BASE = new URL("../api/v1", document.baseURI).pathname.replace(/\/$/, "");

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.hint = body && body.hint;
  }
}

export function token() { return localStorage.getItem("granary.token") || ""; }
export function setToken(value) {
  if (value) localStorage.setItem("granary.token", value); else localStorage.removeItem("granary.token");
}

async function call(method, path, params) {
  const url = new URL(BASE + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, one);
  }
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const res = await fetch(url, { method, headers });
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, typeof body === "object" ? body : { detail: body });
  return body;
}

export const get = (path, params) => call("GET", path, params);
export const post = (path, params) => call("POST", path, params);
export const enc = (s) => encodeURIComponent(s).replace(/%40/g, "@").replace(/%2F/g, "/");
