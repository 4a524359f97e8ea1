// KPIs of the supervision centre: GET /api/kpis?from&to → cards, two bar charts, chattering list.

import {
  LEVEL_COLOURS, clear, fmtDuration, fmtNumber, fmtTime, get, h, initPage, levelOf, showError, t,
} from "./common.js";
import { has } from "./i18n.js";

const RANGES = { "24h": 24 * 3600e3, "7d": 7 * 24 * 3600e3, "30d": 30 * 24 * 3600e3 };
const STATE_ORDER = ["active_unack", "active_ack", "cleared_unack", "cleared", "closed"];
const STATE_COLOURS = {
  active_unack: "#ff5c5c", active_ack: "#ffb02e", cleared_unack: "#c58cff", cleared: "#5ccf8a", closed: "#7d8aa5",
};

const form = document.getElementById("range-form");
const els = {
  cards: document.getElementById("cards"),
  error: document.getElementById("error"),
  updated: document.getElementById("updated"),
  level: document.getElementById("chart-level"),
  state: document.getElementById("chart-state"),
  chattering: document.getElementById("chattering"),
  clock: document.getElementById("clock"),
};
let kpis = null;
let loadedAt = null;

function card(cls, labelKey, value, detail) {
  return h("div", { class: ["kpi-card", cls] },
    h("span", { class: "label", text: t(labelKey) }),
    h("span", { class: "value", text: value }),
    detail ? h("span", { class: "detail", text: detail }) : null);
}

function pct(x) {
  return `${fmtNumber(x * 100, 1)}%`;
}

function renderCards() {
  const k = kpis;
  const gw = k.gateways || {};
  const rate = gw.total ? gw.online / gw.total : gw.online_rate ?? null;
  const od = k.overdue || {};
  const ar = k.alarm_rate || {};
  const warnOpen = k.warnings?.open ?? 0;
  clear(els.cards).append(
    card(rate !== null && rate < 0.9 ? "bad" : "good", "kpi.online_rate", rate === null ? t("kpi.none") : pct(rate),
      t("kpi.online_of", { online: gw.online ?? 0, total: gw.total ?? 0 })),
    card(warnOpen ? "warn" : "good", "kpi.open", String(warnOpen)),
    card("", "kpi.mtta", fmtDuration(k.mtta_s)),
    card("", "kpi.mttc", fmtDuration(k.mttc_s)),
    card((od.ack || 0) + (od.dispose || 0) ? "bad" : "good", "kpi.overdue", String((od.ack || 0) + (od.dispose || 0)),
      t("kpi.overdue.detail", { ack: od.ack ?? 0, dispose: od.dispose ?? 0 })),
    card(ar.floods ? "bad" : "", "kpi.alarm_rate", t("kpi.per_hour", { n: fmtNumber(ar.avg_per_hour ?? 0, 1) }),
      t("kpi.alarm_rate.detail", { max: ar.max_per_10min ?? 0, avg: fmtNumber(ar.avg_per_hour ?? 0, 1), floods: ar.floods ?? 0 })),
  );
}

const LAYOUT = {
  margin: { l: 48, r: 12, t: 8, b: 64 },
  paper_bgcolor: "rgba(0,0,0,0)",
  plot_bgcolor: "rgba(0,0,0,0)",
  font: { color: "#dbe4f3", size: 14, family: "system-ui, 'Noto Sans CJK SC', 'Microsoft YaHei', sans-serif" },
  xaxis: { gridcolor: "#26324a", fixedrange: true, tickangle: 0, automargin: true },
  yaxis: { gridcolor: "#26324a", rangemode: "tozero", fixedrange: true, tickformat: "d" },
  showlegend: false,
  bargap: 0.3,
};

/** Break a long axis label at a space near its middle (plotly tick labels take <br>). */
function wrap(label) {
  if (label.length <= 12 || !label.includes(" ")) return label;
  const mid = label.length / 2;
  let best = -1;
  for (let i = label.indexOf(" "); i !== -1; i = label.indexOf(" ", i + 1)) {
    if (best === -1 || Math.abs(i - mid) < Math.abs(best - mid)) best = i;
  }
  return `${label.slice(0, best)}<br>${label.slice(best + 1)}`;
}

function bar(el, labels, values, colours) {
  if (!window.Plotly) return;
  const top = Math.max(1, ...values);
  const layout = { ...LAYOUT, yaxis: { ...LAYOUT.yaxis, range: [0, top * 1.12], dtick: top <= 10 ? 1 : undefined } };
  window.Plotly.react(el, [{
    type: "bar", x: labels.map(wrap), y: values, marker: { color: colours }, text: values.map(String),
    textposition: "auto", hovertemplate: "%{x}: %{y}<extra></extra>",
  }], layout, { displayModeBar: false, responsive: true });
}

function renderCharts() {
  const byLevel = kpis.warnings?.by_level || {};
  const levels = [4, 3, 2, 1];
  const lv = Object.fromEntries(levels.map((l) => [l, 0]));
  for (const [k, n] of Object.entries(byLevel)) lv[levelOf(k)] = (lv[levelOf(k)] || 0) + Number(n);
  bar(els.level, levels.map((l) => t(`level.${l}`)), levels.map((l) => lv[l] || 0), levels.map((l) => LEVEL_COLOURS[l]));

  const byState = kpis.warnings?.by_state || {};
  const states = [...STATE_ORDER, ...Object.keys(byState).filter((s) => !STATE_ORDER.includes(s))];
  bar(els.state, states.map((s) => (has(`state.${s}`) ? t(`state.${s}`) : s)),
    states.map((s) => Number(byState[s] || 0)), states.map((s) => STATE_COLOURS[s] || "#7fb2ff"));
}

// alerting/kpis.py: {sensor_id, tag, site, enterprise, condition, count, max_in_window}
const CHATTER_COLS = [
  ["tag", "ent.onboarding.tag"], ["site", "col.site"], ["enterprise", "col.enterprise"],
  ["condition", "alarm.condition"], ["count", "kpi.chattering.count"], ["max_in_window", "kpi.chattering.worst"],
];

function cell(key, v) {
  if (v === null || v === undefined) return "";
  if (key === "condition") return has(`cond.${v}`) ? `${t(`cond.${v}`)} (${v})` : String(v);
  if (typeof v === "object") return v.tag || v.code || v.name || JSON.stringify(v);
  if (typeof v === "string" && /^\d{4}-\d\d-\d\dT/.test(v)) return fmtTime(v);
  return typeof v === "number" ? fmtNumber(v) : String(v);
}

function renderChattering() {
  const list = kpis.chattering || [];
  clear(els.chattering);
  if (!list.length) {
    els.chattering.append(h("p", { class: "empty", text: t("kpi.chattering.none") }));
    return;
  }
  const known = new Set(["sensor_id", ...CHATTER_COLS.map(([k]) => k)]);
  const cols = [...CHATTER_COLS.filter(([k]) => list.some((r) => k in r)),
    ...[...new Set(list.flatMap((r) => Object.keys(r)))].filter((k) => !known.has(k)).map((k) => [k, null])];
  els.chattering.append(h("table", {},
    h("thead", {}, h("tr", {}, ...cols.map(([k, label]) => h("th", { text: label ? t(label) : k })))),
    h("tbody", {}, ...list.map((r) => h("tr", {}, ...cols.map(([k]) => h("td", { text: cell(k, r[k]) })))))));
}

function render() {
  if (!kpis) return;
  els.updated.textContent = t("board.updated", { time: fmtTime(loadedAt) });
  renderCards();
  renderCharts();
  renderChattering();
}

async function load() {
  const span = RANGES[form.range.value] || RANGES["24h"];
  const to = new Date();
  try {
    kpis = await get("/api/kpis", { from: new Date(to - span).toISOString(), to: to.toISOString() });
    els.error.hidden = true;
    loadedAt = to;
    render();
  } catch (err) {
    if (err.status !== 401) showError(els.error, err);
  }
}

form.range.value = new URLSearchParams(location.search).get("range") || "24h";
form.addEventListener("change", () => {
  history.replaceState(null, "", `?range=${form.range.value}`);
  load();
});
await initPage({ page: "kpi", rerender: render });
await load();
setInterval(load, 60_000);
setInterval(() => {
  els.clock.textContent = fmtTime(new Date());
}, 1000);
