// One warning: header, readings chart per sensor (limits drawn, the warning's span shaded),
// contributing alarms, the event timeline and the actions the user's role and the state allow.

import {
  LEVEL_COLOURS, badges, clear, escChip, fmtDuration, fmtNumber, fmtTime, fmtValue, get, h, initPage,
  isShelved, levelChip, plotTime, post, showError, stateChip, t, title,
} from "./common.js";
import { has } from "./i18n.js";

const id = Number(new URLSearchParams(location.search).get("id"));
const els = {
  head: document.getElementById("head"),
  error: document.getElementById("error"),
  charts: document.getElementById("charts"),
  alarms: document.getElementById("alarms"),
  events: document.getElementById("events"),
  actions: document.getElementById("actions"),
  form: document.getElementById("action-form"),
  actionError: document.getElementById("action-error"),
  actionMsg: document.getElementById("action-msg"),
  clock: document.getElementById("clock"),
};

const LIMIT_STYLE = {
  hh: { color: "#ff4d4f", dash: "dash" },
  h: { color: "#ffa940", dash: "dot" },
  l: { color: "#ffa940", dash: "dot" },
  ll: { color: "#ff4d4f", dash: "dash" },
};

let user = null;
let warning = null;              // WarningOut + alarms + events
let openForm = null;             // the action whose form is open
let readings = new Map();        // sensor id -> readings answer (kept across language switches)

// ------------------------------------------------------------------ header

function field(labelKey, value) {
  if (value === null || value === undefined || value === "") return null;
  return h("div", { class: "field" }, h("dt", { text: t(labelKey) }), h("dd", {}, value));
}

function renderHead() {
  const w = warning;
  document.title = `#${w.id} ${title(w)} · ${t("app.short")}`;
  const peak = w.peak_value !== null && w.peak_value !== undefined
    ? `${fmtValue(w.peak_value, w.peak_sensor?.unit)}${w.peak_sensor ? ` (${w.peak_sensor.tag})` : ""}` : "";
  clear(els.head);
  els.head.className = `detail-head lvl-${w.level} state-${w.state}`;
  els.head.dataset.state = w.state;
  els.head.append(
    h("div", { class: "detail-chips" },
      levelChip(w.level), stateChip(w.state), escChip(w.escalation), ...badges(w),
      h("span", { class: "chip kind", text: t(`kind.${w.kind}`) }),
      h("span", { class: "wid", text: `#${w.id}` })),
    h("h1", { class: "detail-title", text: title(w) }),
    h("dl", { class: "fields" },
      field("warning.site", [w.site?.name, w.site?.kind ? t(`site_kind.${w.site.kind}`) : ""].filter(Boolean).join(" · ")),
      field("warning.enterprise", w.enterprise?.name || w.enterprise?.code),
      field("warning.region", w.region?.name || w.region?.code),
      field("warning.opened_at", fmtTime(w.opened_at)),
      field("warning.raised_at", fmtTime(w.raised_at)),
      field("warning.acknowledged_at", fmtTime(w.acknowledged_at)),
      field("warning.cleared_at", fmtTime(w.cleared_at)),
      field("warning.disposed_at", fmtTime(w.disposed_at)),
      field("warning.closed_at", fmtTime(w.closed_at)),
      field("warning.count", w.count > 1 ? String(w.count) : ""),
      field("warning.peak", peak),
      field("warning.disposal", w.disposal),
      field("warning.closing_note", w.closing_note),
      isShelved(w) ? field("warning.shelved_reason",
        `${w.shelved_reason || ""} (${t("badge.shelved_until", { until: fmtTime(w.shelved_until) })})`) : null));
}

// ------------------------------------------------------------------ chart

function sensorsOf(w) {
  const seen = new Map();
  for (const a of w.alarms || []) if (a.sensor && !seen.has(a.sensor.id)) seen.set(a.sensor.id, a.sensor);
  if (w.peak_sensor && !seen.has(w.peak_sensor.id)) seen.set(w.peak_sensor.id, w.peak_sensor);
  return [...seen.values()];
}

/** The period to chart: the warning's span with some context either side. */
function period(w) {
  const start = new Date(w.opened_at).getTime();
  const end = w.active || !w.cleared_at ? Date.now() : new Date(w.cleared_at).getTime();
  const margin = Math.max(10 * 60 * 1000, (end - start) * 0.5);
  return { start, end, from: start - margin, to: Math.min(Date.now(), end + margin) };
}

async function loadReadings(w) {
  const { from, to } = period(w);
  const out = new Map();
  await Promise.all(sensorsOf(w).map(async (s) => {
    try {
      out.set(s.id, await get(`/api/sensors/${s.id}/readings`, {
        from: new Date(from).toISOString(), to: new Date(to).toISOString(), resolution: "auto",
      }));
    } catch (err) {
      out.set(s.id, { error: err.message, sensor: s, points: [] });
    }
  }));
  readings = out;
}

/** Limits this warning's alarms on the sensor are about (always drawn). */
function alarmLimits(sensor, w) {
  const keys = new Set();
  for (const a of w.alarms || []) {
    if (a.sensor?.id !== sensor.id) continue;
    const key = { hh: "hh", h: "h", l: "l", ll: "ll", trend_hh: "hh", trend_ll: "ll" }[a.condition];
    if (key) keys.add(key);
  }
  return keys;
}

function plotLayout(sensor, w, points) {
  const { start, end, from, to } = period(w);
  const limits = sensor.limits || {};
  const values = points.flatMap((p) => [p[1], p[2], p[3]]).filter((v) => v !== null && Number.isFinite(v));
  const marks = Object.entries(limits).filter(([, v]) => v !== null && v !== undefined);
  // The y range: the readings, the limits the alarms are about, and any other limit close by
  // (a 0..20 m axis would flatten a level hovering at HH just to show LL).
  const must = alarmLimits(sensor, w);
  let lo = Math.min(...values, ...marks.filter(([k]) => must.has(k)).map(([, v]) => v));
  let hi = Math.max(...values, ...marks.filter(([k]) => must.has(k)).map(([, v]) => v));
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) {
    [lo, hi] = marks.length ? [Math.min(...marks.map(([, v]) => v)), Math.max(...marks.map(([, v]) => v))]
      : sensor.range || [0, 1];
  }
  const span = sensor.range ? Math.abs(sensor.range[1] - sensor.range[0]) : hi - lo;
  const reach = Math.max(span * 0.25, (hi - lo) * 0.5);
  const near = marks.filter(([, v]) => v >= lo - reach && v <= hi + reach).map(([, v]) => v);
  lo = Math.min(lo, ...near);
  hi = Math.max(hi, ...near);
  const pad = (hi - lo || Math.abs(hi) || 1) * 0.08;
  const colour = LEVEL_COLOURS[w.level];
  const shapes = [{
    type: "rect", xref: "x", yref: "paper", x0: plotTime(start), x1: plotTime(end), y0: 0, y1: 1,
    fillcolor: colour, opacity: 0.16, line: { width: 0 }, layer: "below",
  }];
  const annotations = [{
    xref: "x", yref: "paper", x: plotTime(start), y: 1, xanchor: "left", yanchor: "bottom",
    text: t("warning.chart.span"), showarrow: false, font: { color: colour, size: 13 },
  }];
  for (const key of ["hh", "h", "l", "ll"]) {
    const v = limits[key];
    if (v === null || v === undefined || v < lo - pad || v > hi + pad) continue;
    // HH/LL labelled on the right, H/L on the left: close limits never overlap
    const right = key === "hh" || key === "ll";
    shapes.push({
      type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: v, y1: v,
      line: { color: LIMIT_STYLE[key].color, width: 2, dash: LIMIT_STYLE[key].dash },
    });
    annotations.push({
      xref: "paper", x: right ? 1 : 0, xanchor: right ? "right" : "left", yref: "y", y: v,
      yanchor: key === "hh" || key === "h" ? "bottom" : "top",
      text: `${t(`limit.${key}`)} ${fmtNumber(v)}`, showarrow: false,
      font: { color: LIMIT_STYLE[key].color, size: 13 },
    });
  }
  return {
    margin: { l: 56, r: 16, t: 28, b: 44 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "#0d1526",
    font: { color: "#dbe4f3", size: 13, family: "system-ui, 'Noto Sans CJK SC', 'Microsoft YaHei', sans-serif" },
    showlegend: false,
    hovermode: "x unified",
    xaxis: {
      type: "date", range: [plotTime(from), plotTime(to)], gridcolor: "#26324a", linecolor: "#3a4763",
      hoverformat: "%Y-%m-%d %H:%M:%S",
      tickformatstops: [   // numeric dates: the same in both languages, no locale file needed
        { dtickrange: [null, 60_000], value: "%H:%M:%S" },
        { dtickrange: [60_000, 86_400_000], value: "%H:%M" },
        { dtickrange: [86_400_000, null], value: "%Y-%m-%d" },
      ],
    },
    yaxis: {
      range: [lo - pad, hi + pad], gridcolor: "#26324a", zeroline: false, linecolor: "#3a4763",
      title: { text: sensor.unit || "" },
    },
    shapes,
    annotations,
  };
}

function plotTraces(sensor, points) {
  const x = points.map((p) => plotTime(p[0]));
  const traces = [];
  if (points.some((p) => p[2] !== p[3])) {
    traces.push({
      x, y: points.map((p) => p[3]), type: "scatter", mode: "lines", line: { width: 0 },
      hoverinfo: "skip", name: t("warning.chart.band"),
    }, {
      x, y: points.map((p) => p[2]), type: "scatter", mode: "lines", line: { width: 0 },
      fill: "tonexty", fillcolor: "rgba(120,170,255,0.22)", hoverinfo: "skip", name: t("warning.chart.band"),
    });
  }
  traces.push({
    x, y: points.map((p) => p[1]), type: "scatter",
    mode: points.length <= 120 ? "lines+markers" : "lines",
    line: { color: "#7fb2ff", width: 2.5 }, marker: { size: 6, color: "#a9cbff" },
    name: `${sensor.tag}`, hovertemplate: `%{y} ${sensor.unit || ""}<extra>${sensor.tag}</extra>`,
  });
  return traces;
}

function renderCharts() {
  clear(els.charts);
  const sensors = sensorsOf(warning);
  if (!sensors.length) {
    els.charts.append(h("p", { class: "empty", text: t("warning.chart.none") }));
    return;
  }
  for (const s of sensors) {
    const data = readings.get(s.id) || { points: [] };
    const sensor = { ...s, ...(data.sensor || {}) };
    const points = data.points || [];
    const box = h("div", { class: "chart", id: `chart-${s.id}`, dataset: { sensor: s.id, points: points.length } });
    els.charts.append(h("figure", { class: "chart-figure" },
      h("figcaption", {},
        h("strong", { text: sensor.tag }),
        h("span", { text: [sensor.kind, sensor.unit].filter(Boolean).join(" · ") }),
        data.resolution ? h("span", { class: "muted", text: t("warning.chart.resolution", { r: data.resolution }) }) : null,
        data.capped ? h("span", { class: "muted", text: t("warning.chart.capped", { n: data.limit ?? points.length }) }) : null,
        data.error ? h("span", { class: "error-inline", text: data.error }) : null),
      box,
      points.length ? null : h("p", { class: "empty", text: t("warning.chart.empty") })));
    if (window.Plotly) {
      window.Plotly.newPlot(box, plotTraces(sensor, points), plotLayout(sensor, warning, points), {
        displayModeBar: false, responsive: true, locale: "en",
      });
    }
  }
}

// ------------------------------------------------------------------ alarms and events

function table(head, rows, nowrap = []) {
  return h("table", {},
    h("thead", {}, h("tr", {}, ...head.map((k) => h("th", { text: t(k) })))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {},
      ...cells.map((c, i) => h("td", { class: nowrap.includes(i) ? "nowrap" : "" }, c))))));
}

function condLabel(c) {
  return has(`cond.${c}`) ? `${t(`cond.${c}`)} (${c})` : c;
}

function renderAlarms() {
  clear(els.alarms);
  const alarms = warning.alarms || [];
  if (!alarms.length) {
    els.alarms.append(h("p", { class: "empty", text: t("warning.alarms.none") }));
    return;
  }
  els.alarms.append(table(
    ["alarm.condition", "alarm.source", "alarm.active", "alarm.raised_at", "alarm.cleared_at", "alarm.value", "alarm.peak"],
    alarms.map((a) => [
      condLabel(a.condition),
      a.sensor ? a.sensor.tag : a.gateway ? a.gateway.code : "",
      h("span", { class: ["dot", a.active ? "on" : "off"], text: t(a.active ? "alarm.active.yes" : "alarm.active.no") }),
      fmtTime(a.raised_at),
      fmtTime(a.cleared_at),
      fmtValue(a.value, a.sensor?.unit),
      fmtValue(a.peak_value, a.sensor?.unit),
    ]), [2, 3, 4, 5, 6]));
}

function eventDetail(e) {
  const d = e.detail || {};
  const parts = [];
  for (const k of ["note", "text", "reason"]) if (d[k]) parts.push(String(d[k]));
  if (d.step) parts.push(`${d.step}${d.overdue_s ? ` (+${fmtDuration(d.overdue_s)})` : ""}`);
  if (d.until) parts.push(t("badge.shelved_until", { until: fmtTime(d.until) }));
  if (d.condition) parts.push(condLabel(d.condition));
  if (d.tag || d.sensor) parts.push(String(d.tag || d.sensor?.tag || d.sensor));
  if (d.value !== undefined && d.value !== null) parts.push(fmtNumber(d.value));
  if (d.parent || d.suppressed_by) parts.push(t("badge.suppressed_by", { id: d.parent || d.suppressed_by }));
  return parts.join(" · ");
}

function renderEvents() {
  clear(els.events);
  const events = [...(warning.events || [])].sort((a, b) => a.id - b.id);
  if (!events.length) {
    els.events.append(h("li", { class: "empty", text: t("warning.events.none") }));
    return;
  }
  for (const e of events) {
    const label = has(`event.${e.action}`) ? t(`event.${e.action}`) : e.action;
    els.events.append(h("li", { class: ["event", `ev-${e.action}`], dataset: { action: e.action } },
      h("time", { text: fmtTime(e.at) }),
      h("span", { class: "ev-action", text: label }),
      e.level ? levelChip(e.level, { short: true }) : null,
      h("span", { class: "ev-actor", text: e.actor === "system" ? t("event.system") : e.actor }),
      h("span", { class: "ev-detail", text: eventDetail(e) })));
  }
}

// ------------------------------------------------------------------ actions

const OFFICER = ["officer", "admin"];

/** The actions this user may take now, per docs/alerting.md's table. */
function allowed(w, role) {
  const officer = OFFICER.includes(role);
  const open = w.state !== "closed";
  const out = [];
  if (officer && (w.state === "active_unack" || w.state === "cleared_unack")) out.push("acknowledge");
  if (open) out.push("comment", "dispose");
  if (officer && w.state === "cleared") out.push("close");
  if (officer && open && !isShelved(w)) out.push("shelve");
  if (officer && open && isShelved(w)) out.push("unshelve");
  return out;
}

const FORMS = {
  comment: [{ name: "text", key: "action.text", kind: "textarea", required: true }],
  dispose: [{ name: "note", key: "action.note", kind: "textarea", required: true }],
  close: [{ name: "note", key: "action.note", kind: "textarea", required: false }],
  shelve: [
    { name: "reason", key: "action.reason", kind: "input", required: true },
    { name: "until", key: "action.until", kind: "datetime", required: true },
  ],
};

function localInput(ms) {
  return plotTime(ms).slice(0, 16).replace(" ", "T");
}

function renderActions() {
  clear(els.actions);
  const acts = allowed(warning, user?.role);
  if (!acts.length) {
    els.actions.append(h("p", { class: "empty", text: t("warning.actions.none") }));
  }
  for (const a of acts) {
    els.actions.append(h("button", {
      type: "button", class: ["btn", a === "acknowledge" || a === "close" ? "primary" : "", openForm === a ? "open" : ""],
      dataset: { action: a }, text: t(`action.${a}`),
      on: { click: () => (FORMS[a] ? toggleForm(a) : act(a, {})) },
    }));
  }
  if (openForm && !acts.includes(openForm)) openForm = null;
  renderForm();
}

function toggleForm(action) {
  openForm = openForm === action ? null : action;
  els.actionError.hidden = true;
  els.actionMsg.hidden = true;
  renderActions();
  const first = els.form.querySelector("textarea, input");
  if (first) first.focus();
}

/** The open action's form. Kept as it is while the same form stays open, so a note being
 *  typed survives the re-render that each streamed event of this warning causes. */
function renderForm({ rebuild = false } = {}) {
  if (!openForm) {
    clear(els.form);
    els.form.hidden = true;
    delete els.form.dataset.action;
    return;
  }
  els.form.hidden = false;
  if (!rebuild && els.form.dataset.action === openForm && els.form.firstChild) return;
  clear(els.form);
  els.form.dataset.action = openForm;
  const needsNote = openForm === "close" && !warning.disposal;
  for (const f of FORMS[openForm]) {
    const required = f.required || needsNote;
    let input;
    if (f.kind === "textarea") input = h("textarea", { name: f.name, rows: 3, required });
    else if (f.kind === "datetime") {
      input = h("input", { name: f.name, type: "datetime-local", required,
        value: localInput(Date.now() + 4 * 3600 * 1000), min: localInput(Date.now()) });
    } else input = h("input", { name: f.name, required });
    els.form.append(h("label", {},
      h("span", { text: t(required || f.kind !== "textarea" ? f.key : "action.note.optional") }), input));
  }
  if (needsNote) els.form.append(h("p", { class: "hint", text: t("action.close.needs_note") }));
  els.form.append(h("button", { class: "btn primary", type: "submit", text: `${t(`action.${openForm}`)} · ${t("action.submit")}` }));
}

els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const action = els.form.dataset.action;
  const body = {};
  for (const f of FORMS[action] || []) {
    const value = els.form.elements[f.name].value;
    if (f.kind === "datetime") body[f.name] = value ? new Date(value).toISOString() : "";
    else if (value.trim()) body[f.name] = value.trim();
  }
  act(action, body);
});

async function act(action, body) {
  els.actionError.hidden = true;
  els.actionMsg.hidden = true;
  const buttons = [...els.actions.querySelectorAll("button"), ...els.form.querySelectorAll("button")];
  for (const b of buttons) b.disabled = true;
  try {
    await post(`/api/warnings/${id}/${action}`, body);
    openForm = null;
    els.actionMsg.textContent = t("action.done", { action: t(`action.${action}`) });
    els.actionMsg.hidden = false;
    await refresh();
  } catch (err) {
    showError(els.actionError, err);
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

// ------------------------------------------------------------------ load

function renderAll() {
  renderHead();
  renderCharts();
  renderAlarms();
  renderEvents();
  renderActions();
}

async function refresh({ charts = true } = {}) {
  try {
    warning = await get(`/api/warnings/${id}`);
  } catch (err) {
    if (err.status === 404) {
      clear(els.head).append(h("h1", { class: "detail-title", text: t("warning.missing") }));
    } else if (err.status !== 401) showError(els.error, err);
    return;
  }
  els.error.hidden = true;
  if (charts) await loadReadings(warning);
  renderAll();
}

let pending = null;
function onStream(ev) {
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    return;
  }
  const wid = msg?.warning?.id ?? msg?.event?.warning_id;
  if (wid !== id) return;
  clearTimeout(pending);
  pending = setTimeout(() => refresh(), 400);
}

user = await initPage({
  page: "board",
  rerender: () => {
    if (!warning) return;
    renderAll();
    renderForm({ rebuild: true });   // labels in the new language
  },
});
if (!Number.isInteger(id) || id <= 0) {
  clear(els.head).append(h("h1", { class: "detail-title", text: t("warning.missing") }));
} else {
  await refresh();
  new EventSource("/api/events/stream").addEventListener("warning", onStream);
}
setInterval(() => {
  els.clock.textContent = fmtTime(new Date());
}, 1000);
