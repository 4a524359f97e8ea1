// The live board: open warnings sorted by level (red first) then age, counters, filters,
// updated over server-sent events (GET /api/events/stream, event "warning") without reload.

import {
  ageSeconds, badges, clear, escChip, fmtDuration, fmtTime, fmtValue, get, h, initPage,
  levelChip, showError, stateChip, t, title,
} from "./common.js";

const STATES = ["active_unack", "active_ack", "cleared_unack", "cleared"];
const SITE_KINDS = ["major_hazard", "gas_pipeline", "dust_explosion"];
const LEVELS = [4, 3, 2, 1];

const els = {
  cards: document.getElementById("cards"),
  empty: document.getElementById("empty"),
  error: document.getElementById("error"),
  total: document.getElementById("total"),
  filters: document.getElementById("filters"),
  levels: document.getElementById("level-counters"),
  states: document.getElementById("state-counters"),
  live: document.getElementById("live"),
  clock: document.getElementById("clock"),
};

const warnings = new Map();          // id -> WarningOut, only those matching the filters
const fresh = new Map();             // id -> time it last changed (highlight)
const streamed = new Map();          // id -> [time received, WarningOut] from the stream
const regions = new Map();           // code -> name
const enterprises = new Map();       // code -> {name, region}
let filters = readFilters();
let total = 0;
let live = false;

// ------------------------------------------------------------------ filters

function readFilters() {
  const q = new URLSearchParams(location.search);
  return {
    region: q.get("region") || "",
    enterprise: q.get("enterprise") || "",
    site_kind: q.get("site_kind") || "",
    state: q.get("state") || "",
  };
}

function writeFilters() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  const qs = q.toString();
  history.replaceState(null, "", qs ? `?${qs}` : location.pathname);
}

/** Client-side check for a warning that arrives over SSE (the list itself is filtered by the API). */
function matches(w) {
  if (filters.state ? w.state !== filters.state : w.state === "closed") return false;
  if (filters.enterprise && w.enterprise?.code !== filters.enterprise) return false;
  if (filters.site_kind && w.site?.kind !== filters.site_kind) return false;
  if (filters.region) {
    const code = w.region?.code || "";
    // an officer's region includes its children: 370100 covers 3701xx
    const stem = filters.region.replace(/0+$/, "");
    if (code !== filters.region && !(stem && code.startsWith(stem))) return false;
  }
  return true;
}

function option(value, label, selected) {
  return h("option", { value, selected: value === selected }, label);
}

function renderFilterOptions() {
  const f = els.filters;
  const all = t("board.filter.all");
  clear(f.region).append(option("", all, filters.region),
    ...[...regions].sort().map(([code, name]) => option(code, name || code, filters.region)));
  clear(f.enterprise).append(option("", all, filters.enterprise),
    ...[...enterprises].sort((a, b) => a[1].name.localeCompare(b[1].name, "zh-CN"))
      .map(([code, e]) => option(code, e.name || code, filters.enterprise)));
  clear(f.site_kind).append(option("", all, filters.site_kind),
    ...SITE_KINDS.map((k) => option(k, t(`site_kind.${k}`), filters.site_kind)));
  clear(f.state).append(option("", t("state.open"), filters.state),
    ...[...STATES, "closed"].map((s) => option(s, t(`state.${s}`), filters.state)));
}

function learn(w) {
  if (w.region?.code) regions.set(w.region.code, w.region.name || regions.get(w.region.code) || "");
  if (w.enterprise?.code && !enterprises.has(w.enterprise.code)) {
    enterprises.set(w.enterprise.code, { name: w.enterprise.name || w.enterprise.code });
  }
}

async function loadRegistry() {
  try {
    const list = await get("/api/registry/enterprises");
    for (const e of list || []) {
      const region = typeof e.region === "object" && e.region ? e.region : { code: e.region };
      enterprises.set(e.code, { name: e.name || e.code, region: region.code });
      if (region.code && !regions.has(region.code)) regions.set(region.code, region.name || "");
    }
  } catch {
    /* options then come from the warnings alone */
  }
  renderFilterOptions();
}

// ------------------------------------------------------------------ data

async function load() {
  const started = Date.now();
  const query = { limit: 500, state: filters.state || "open" };
  for (const k of ["region", "enterprise", "site_kind"]) if (filters[k]) query[k] = filters[k];
  try {
    const data = await get("/api/warnings", query);
    warnings.clear();
    for (const w of data.items || []) {
      warnings.set(w.id, w);
      learn(w);
    }
    total = data.total ?? warnings.size;
    // what the stream said while the list was being fetched is at least as new as the list
    for (const [at, w] of streamed.values()) if (at >= started) apply(w);
    els.error.hidden = true;
  } catch (err) {
    if (err.status !== 401) showError(els.error, err);
  }
  renderFilterOptions();
  render();
}

function upsert(w) {
  streamed.set(w.id, [Date.now(), w]);
  if (streamed.size > 2000) streamed.clear();
  apply(w);
  render();
}

function apply(w) {
  learn(w);
  const had = warnings.has(w.id);
  if (matches(w)) {
    if (!had) total += 1;
    warnings.set(w.id, w);
    fresh.set(w.id, Date.now());
  } else if (had) {
    warnings.delete(w.id);
    total = Math.max(0, total - 1);
  }
}

// ------------------------------------------------------------------ rendering

function sorted() {
  return [...warnings.values()].sort((a, b) =>
    b.level - a.level || new Date(a.raised_at) - new Date(b.raised_at) || a.id - b.id);
}

function counter(cls, label, n, active) {
  return h("div", { class: ["counter", cls, n ? "" : "zero", active ? "active" : ""] },
    h("span", { class: "n", text: String(n) }), h("span", { class: "label", text: label }));
}

function card(w, now) {
  const peakUnit = w.peak_sensor?.unit;
  const peak = w.peak_value !== null && w.peak_value !== undefined
    ? t("board.peak", { value: fmtValue(w.peak_value, peakUnit) }) +
      (w.peak_sensor?.tag ? ` · ${w.peak_sensor.tag}` : "")
    : "";
  const isFresh = now - (fresh.get(w.id) || 0) < 4000;
  return h("a", {
    class: ["card", `lvl-${w.level}`, `state-${w.state}`, isFresh ? "fresh" : "",
      w.suppressed_by ? "is-suppressed" : ""],
    href: `warning.html?id=${w.id}`,
    dataset: { id: w.id, level: w.level, state: w.state },
  },
  h("div", { class: "card-head" },
    levelChip(w.level), stateChip(w.state), escChip(w.escalation), ...badges(w),
    h("span", { class: "spacer" }),
    h("span", { class: "age", dataset: { since: w.raised_at }, title: t("board.raised", { time: fmtTime(w.raised_at) }),
      text: fmtDuration(ageSeconds(w.raised_at, now)) })),
  h("div", { class: "card-title", text: title(w) }),
  h("div", { class: "card-site" },
    h("span", { class: "site", text: w.site?.name || w.site?.code || "" }),
    h("span", { class: "ent", text: w.enterprise?.name || w.enterprise?.code || "" })),
  h("div", { class: "card-foot" },
    h("span", { class: "peak", text: peak }),
    w.count > 1 ? h("span", { class: "count", text: t("badge.count", { n: w.count }) }) : null,
    h("span", { class: "spacer" }),
    h("span", { class: "wid", text: `#${w.id}` })));
}

function render() {
  const now = Date.now();
  const list = sorted();
  const byLevel = Object.fromEntries(LEVELS.map((l) => [l, 0]));
  const byState = Object.fromEntries([...STATES, "closed"].map((s) => [s, 0]));
  for (const w of list) {
    byLevel[w.level] = (byLevel[w.level] || 0) + 1;
    byState[w.state] = (byState[w.state] || 0) + 1;
  }
  clear(els.levels).append(...LEVELS.map((l) => counter(`lvl-${l}`, t(`level.${l}`), byLevel[l])));
  const shownStates = filters.state === "closed" ? ["closed"] : STATES;
  clear(els.states).append(...shownStates.map((s) =>
    counter(`state-${s}`, t(`state.${s}`), byState[s], filters.state === s)));
  clear(els.cards).append(...list.map((w) => card(w, now)));
  els.empty.hidden = list.length > 0;
  els.total.textContent = t("board.total", { n: Math.max(total, list.length) });
  document.title = `${list.length ? `(${list.length}) ` : ""}${t("board.title")} · ${t("app.short")}`;
}

function tick() {
  const now = Date.now();
  for (const el of els.cards.querySelectorAll(".age[data-since]")) {
    el.textContent = fmtDuration(ageSeconds(el.dataset.since, now));
  }
  for (const el of els.cards.querySelectorAll(".card.fresh")) {
    if (now - (fresh.get(Number(el.dataset.id)) || 0) >= 4000) el.classList.remove("fresh");
  }
  els.clock.textContent = fmtTime(new Date());
}

function setLive(on) {
  live = on;
  els.live.hidden = false;
  els.live.className = on ? "live on" : "live off";
  els.live.textContent = on ? t("board.live") : t("board.offline");
}

// ------------------------------------------------------------------ live updates

function connect() {
  const source = new EventSource("/api/events/stream");
  let wasDown = false;
  source.addEventListener("open", () => {
    setLive(true);
    if (wasDown) load();            // the stream resumes by Last-Event-ID; a reload is belt and braces
    wasDown = false;
  });
  source.addEventListener("error", () => {
    wasDown = true;
    setLive(false);
    if (source.readyState === EventSource.CLOSED) {
      // closed for good (e.g. 401): check the session, then try again
      get("/api/me").then(() => setTimeout(connect, 3000), () => {});
    }
  });
  source.addEventListener("warning", (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg && msg.warning) upsert(msg.warning);
  });
}

// ------------------------------------------------------------------ start

els.filters.addEventListener("change", () => {
  const f = els.filters;
  filters = { region: f.region.value, enterprise: f.enterprise.value, site_kind: f.site_kind.value,
    state: f.state.value };
  writeFilters();
  load();
});
els.filters.addEventListener("reset", (ev) => {
  ev.preventDefault();
  filters = { region: "", enterprise: "", site_kind: "", state: "" };
  writeFilters();
  load();
});

await initPage({
  page: "board",
  rerender: () => {
    renderFilterOptions();
    render();
    setLive(live);
    tick();
  },
});
tick();
setInterval(tick, 1000);
renderFilterOptions();
connect();                           // first, so nothing raised during the first load is missed
await Promise.all([loadRegistry(), load()]);
