// Shared by every page: API calls (cookie session + CSRF), the top bar, language toggle,
// DOM building from text nodes (no HTML strings), and formatting of times, ages and values.

import { lang, locale, setLang, t, translate } from "./i18n.js";

export { t };

// ------------------------------------------------------------------ API

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || t("err.http", { status }));
    this.status = status;
    this.detail = detail;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("="));
  }
  return "";
}

/** FastAPI's {detail}: a string, or a list of validation errors. */
function detailText(body) {
  if (!body || body.detail === undefined) return "";
  const d = body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) {
    return d.map((e) => (e && e.msg ? `${(e.loc || []).slice(1).join(".")}: ${e.msg}` : String(e)))
      .join("; ");
  }
  return JSON.stringify(d);
}

export function loginUrl() {
  const next = location.pathname + location.search;
  return `/login.html?next=${encodeURIComponent(next)}`;
}

export async function api(method, path, { query, body, redirect = true } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v === undefined || v === null || v === "") continue;
      for (const item of Array.isArray(v) ? v : [v]) params.append(k, item);
    }
    const qs = params.toString();
    if (qs) url += `?${qs}`;
  }
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = cookie("hw_csrf");
    if (body !== undefined) headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(url, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, t("err.network"));
  }
  if (res.status === 401 && redirect) {
    // signed out (or the session expired): off to the login page; the caller never resumes
    location.assign(loginUrl());
    return new Promise(() => {});
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    let detail = detailText(data);
    if (!detail && res.status === 403) detail = t("err.forbidden");
    throw new ApiError(res.status, detail || t("err.http", { status: res.status }));
  }
  return data;
}

export const get = (path, query) => api("GET", path, { query });
export const post = (path, body) => api("POST", path, { body: body === undefined ? {} : body });

let meCache = null;
/** The signed-in user ({username, role, ...}); redirects to the login page when there is none. */
export async function me() {
  if (!meCache) {
    const data = await get("/api/me");
    meCache = data && data.user ? data.user : data;
  }
  return meCache;
}

// ------------------------------------------------------------------ DOM

/** h("div", {class: "x", text: "y", dataset: {id: 1}, on: {click: f}}, child, ...) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = Array.isArray(v) ? v.filter(Boolean).join(" ") : v;
    else if (k === "text") el.textContent = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function show(el, visible) {
  el.hidden = !visible;
}

// ------------------------------------------------------------------ formatting

/** National warning colours (red / orange / yellow / blue), as in console.css. */
export const LEVEL_COLOURS = { 1: "#1f6fff", 2: "#ffd400", 3: "#ff7a00", 4: "#e8202a" };

export function levelName(level) {
  return { 1: "blue", 2: "yellow", 3: "orange", 4: "red" }[level] || "blue";
}

export function levelOf(nameOrNumber) {
  if (typeof nameOrNumber === "number") return nameOrNumber;
  const n = Number(nameOrNumber);
  if (Number.isInteger(n) && n >= 1 && n <= 4) return n;
  return { blue: 1, yellow: 2, orange: 3, red: 4 }[nameOrNumber] || 0;
}

export function title(w) {
  return (lang() === "en" ? w.title_en || w.title_zh : w.title_zh || w.title_en) || w.cause;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** Local date-time "YYYY-MM-DD HH:MM:SS" (unambiguous on a wall screen and in both languages). */
export function fmtTime(iso, { seconds = true, date = true } = {}) {
  if (!iso) return "";
  const d = iso instanceof Date ? iso : new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}${seconds ? `:${pad(d.getSeconds())}` : ""}`;
  return date ? `${day} ${time}` : time;
}

/** Local time for plotly axes: "YYYY-MM-DD HH:MM:SS.mmm" without a zone. */
export function plotTime(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return t("kpi.none");
  const s = Math.max(0, Math.round(Number(seconds)));
  if (s < 60) return t("age.s", { n: s });
  if (s < 3600) return t("age.m", { n: Math.floor(s / 60) });
  if (s < 86400) return t("age.h", { h: Math.floor(s / 3600), m: Math.floor((s % 3600) / 60) });
  return t("age.d", { d: Math.floor(s / 86400), h: Math.floor((s % 86400) / 3600) });
}

export function ageSeconds(iso, now = Date.now()) {
  return iso ? (now - new Date(iso).getTime()) / 1000 : 0;
}

export function fmtNumber(v, digits = 2) {
  if (v === null || v === undefined || v === "") return "";
  const n = Number(v);
  if (!Number.isFinite(n)) return String(v);
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(n);
}

export function fmtValue(v, unit) {
  const n = fmtNumber(v);
  return n === "" ? "" : unit ? `${n} ${unit}` : n;
}

export function isShelved(w, now = Date.now()) {
  return Boolean(w.shelved_until) && new Date(w.shelved_until).getTime() > now;
}

/** "label" chips for a warning: state, escalation, shelved, suppressed. */
export function stateChip(state) {
  return h("span", { class: ["chip", "state", `state-${state}`], text: t(`state.${state}`) });
}

export function escChip(step) {
  return h("span", { class: ["chip", "esc", `esc-${step || 0}`], text: t(`esc.${step || 0}`) });
}

export function levelChip(level, { short = false } = {}) {
  return h("span", {
    class: ["chip", "level", `lvl-${level}`],
    text: t(short ? `level.short.${level}` : `level.${level}`),
  });
}

export function badges(w) {
  const out = [];
  if (isShelved(w)) {
    out.push(h("span", {
      class: "chip badge shelved",
      title: t("badge.shelved_until", { until: fmtTime(w.shelved_until) }) +
        (w.shelved_reason ? ` — ${w.shelved_reason}` : ""),
      text: t("badge.shelved"),
    }));
  }
  if (w.suppressed_by) {
    out.push(h("span", {
      class: "chip badge suppressed",
      title: t("badge.suppressed_by", { id: w.suppressed_by }),
      text: t("badge.suppressed"),
    }));
  }
  return out;
}

// ------------------------------------------------------------------ page frame

const rerenders = [];

/** Translate the page, wire the top bar (user, language toggle, logout) and mark the nav. */
export async function initPage({ page, rerender, needUser = true } = {}) {
  if (rerender) rerenders.push(rerender);
  translate();
  const langBtn = document.getElementById("lang-toggle");
  if (langBtn) {
    langBtn.addEventListener("click", () => {
      setLang(lang() === "en" ? "zh" : "en");
      translate();
      renderUser();
      for (const fn of rerenders) fn();
    });
  }
  for (const a of document.querySelectorAll(".nav a[data-page]")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
  }
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try {
        await api("POST", "/api/logout", { body: {}, redirect: false });
      } catch {
        /* the session may be gone already */
      }
      location.assign("/login.html");
    });
  }
  if (!needUser) return null;
  const user = await me();
  renderUser();
  if (user && user.role === "enterprise") document.body.classList.add("role-enterprise");
  return user;
}

function renderUser() {
  const el = document.getElementById("user");
  if (!el || !meCache) return;
  const name = meCache.display_name || meCache.username || "";
  el.textContent = `${name} · ${t(`role.${meCache.role}`)}`;
}

export function showError(el, err) {
  el.textContent = err instanceof Error ? err.message : String(err);
  el.hidden = false;
}
