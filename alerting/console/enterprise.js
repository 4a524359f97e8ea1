// An enterprise's page: its warnings (with disposal feedback, 处置反馈), onboarding status
// (unregistered tags) and dead letters. Enterprise users see their own; officers pick one.

import {
  clear, fmtTime, get, h, initPage, levelChip, post, showError, stateChip, t, title,
} from "./common.js";

const form = document.getElementById("ent-form");
const els = {
  error: document.getElementById("error"),
  info: document.getElementById("ent-info"),
  warnings: document.getElementById("warnings"),
  onboarding: document.getElementById("onboarding"),
  dead: document.getElementById("dead"),
  clock: document.getElementById("clock"),
};

let user = null;
let code = "";
let data = { info: null, warnings: [], onboarding: [], dead: [] };
let feedbackFor = null;     // warning id whose feedback form is open
let feedbackError = "";

function table(head, rows, empty) {
  if (!rows.length) return h("p", { class: "empty", text: t(empty) });
  return h("table", {},
    h("thead", {}, h("tr", {}, ...head.map((k) => h("th", { text: t(k) })))),
    h("tbody", {}, ...rows));
}

function renderInfo() {
  clear(els.info);
  const e = data.info;
  if (!e) {
    els.info.hidden = true;
    return;
  }
  els.info.hidden = false;
  els.info.append(
    h("h1", { class: "ent-name" }, e.name || e.code, h("span", { class: "muted", text: ` ${e.code}` })),
    h("div", { class: "gateways" },
      h("span", { class: "label", text: t("ent.gateways") }),
      ...(e.gateways || []).map((g) => h("span", {
        class: ["chip", "gw", g.online === true ? "on" : g.online === false ? "off" : "unknown"],
        title: g.last_seen ? fmtTime(g.last_seen) : "",
        text: `${g.code} · ${t(g.online === true ? "ent.gateway.online"
          : g.online === false ? "ent.gateway.offline" : "ent.gateway.unknown")}`,
      }))));
}

function renderWarnings() {
  const rows = [];
  for (const w of data.warnings) {
    const open = w.state !== "closed";
    rows.push(h("tr", { class: `lvl-row lvl-${w.level}`, dataset: { id: w.id } },
      h("td", {}, levelChip(w.level)),
      h("td", {}, h("a", { href: `warning.html?id=${w.id}`, text: title(w) }),
        w.disposal ? h("div", { class: "muted small", text: `${t("warning.disposal")}: ${w.disposal}` }) : null),
      h("td", { text: w.site?.name || w.site?.code || "" }),
      h("td", {}, stateChip(w.state)),
      h("td", { class: "nowrap", text: fmtTime(w.raised_at) }),
      h("td", {}, h("div", { class: "row-actions" },
        h("a", { class: "btn ghost small", href: `warning.html?id=${w.id}`, text: t("ent.open") }),
        open ? h("button", {
          type: "button", class: "btn small", dataset: { action: "dispose" }, text: t("ent.feedback"),
          on: { click: () => { feedbackFor = feedbackFor === w.id ? null : w.id; feedbackError = ""; renderWarnings(); } },
        }) : null))));
    if (feedbackFor === w.id) {
      const note = h("textarea", { name: "note", rows: 2, required: true });
      rows.push(h("tr", { class: "feedback-row" }, h("td", { colSpan: 6 },
        h("form", {
          class: "action-form inline",
          on: {
            submit: async (ev) => {
              ev.preventDefault();
              try {
                await post(`/api/warnings/${w.id}/dispose`, { note: note.value.trim() });
                feedbackFor = null;
                await load();
              } catch (err) {
                feedbackError = err.message;
                renderWarnings();
              }
            },
          },
        },
        h("label", {}, h("span", { text: t("action.note") }), note),
        h("button", { class: "btn primary", type: "submit", text: t("action.submit") }),
        feedbackError ? h("p", { class: "error", role: "alert", text: feedbackError }) : null))));
    }
  }
  clear(els.warnings).append(table(
    ["col.level", "col.title", "col.site", "col.state", "col.raised", "col.actions"], rows, "ent.warnings.none"));
}

function renderOnboarding() {
  clear(els.onboarding).append(table(
    ["ent.onboarding.gateway", "ent.onboarding.tag", "ent.onboarding.count", "ent.onboarding.first_seen",
      "ent.onboarding.last_seen", "ent.onboarding.last_value"],
    data.onboarding.map((r) => h("tr", {},
      h("td", { text: r.gateway }), h("td", {}, h("code", { text: r.tag })), h("td", { text: String(r.count) }),
      h("td", { text: fmtTime(r.first_seen) }), h("td", { text: fmtTime(r.last_seen) }),
      h("td", { text: r.last_value ?? "" }))),
    "ent.onboarding.none"));
}

function errorList(errors) {
  if (!errors) return [];
  if (Array.isArray(errors)) return errors;
  return typeof errors === "object" && Object.keys(errors).length ? [errors] : [];
}

function errorText(e) {
  if (typeof e === "string") return e;
  const where = e.tag || e.field || (Array.isArray(e.loc) ? e.loc.join(".") : e.loc) || "";
  const what = e.msg || e.message || e.error || e.reason || JSON.stringify(e);
  return where ? `${where}: ${what}` : what;
}

function renderDead() {
  clear(els.dead).append(table(
    ["ent.dead.received_at", "ent.dead.topic", "ent.dead.reason", "ent.dead.counts", "ent.dead.payload"],
    data.dead.map((r) => h("tr", {},
      h("td", { class: "nowrap", text: fmtTime(r.received_at) }),
      h("td", {}, h("code", { text: r.topic })),
      h("td", {}, r.reason, errorList(r.errors).length
        ? h("div", { class: "muted small", text: errorList(r.errors).map(errorText).join("; ") }) : null),
      h("td", { text: `${r.accepted ?? 0} / ${r.rejected ?? 0}` }),
      h("td", {}, h("details", {}, h("summary", { text: (r.payload_text || "").slice(0, 40) }),
        h("pre", { text: r.payload_text || "" }))))),
    "ent.dead.none"));
}

function render() {
  renderInfo();
  renderWarnings();
  renderOnboarding();
  renderDead();
}

async function load() {
  const q = code ? { enterprise: code } : {};
  const settle = async (p, fallback) => {
    try {
      return await p;
    } catch (err) {
      if (err.status !== 401 && err.status !== 404) showError(els.error, err);
      return fallback;
    }
  };
  els.error.hidden = true;
  const [info, warnings, onboarding, dead] = await Promise.all([
    code ? settle(get(`/api/registry/enterprises/${encodeURIComponent(code)}`), null) : null,
    settle(get("/api/warnings", { ...q, limit: 200 }), { items: [] }),
    settle(get("/api/onboarding", q), []),
    settle(get("/api/dead-letters", { ...q, limit: 50 }), []),
  ]);
  data = { info, warnings: warnings.items || [], onboarding: onboarding || [], dead: dead || [] };
  render();
}

user = await initPage({ page: "enterprise", rerender: render });
const mine = user?.enterprise;
if (user?.role === "enterprise") {
  code = typeof mine === "object" && mine ? mine.code : mine || "";
} else {
  form.hidden = false;
  let list = [];
  try {
    list = await get("/api/registry/enterprises");
  } catch (err) {
    showError(els.error, err);
  }
  code = new URLSearchParams(location.search).get("enterprise") || list[0]?.code || "";
  clear(form.enterprise).append(...list.map((e) =>
    h("option", { value: e.code, selected: e.code === code }, `${e.name || e.code} (${e.code})`)));
  form.addEventListener("change", () => {
    code = form.enterprise.value;
    history.replaceState(null, "", `?enterprise=${encodeURIComponent(code)}`);
    load();
  });
}
await load();
setInterval(() => {
  els.clock.textContent = fmtTime(new Date());
}, 1000);
