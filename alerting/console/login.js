// Sign in: POST /api/login sets the hw_session (HttpOnly) and hw_csrf cookies; then go on.

import { api, initPage, t } from "./common.js";

/** Only a local path may follow a login (no open redirect). */
function nextUrl() {
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/login.html") ? next : "/";
}

await initPage({ page: "login", needUser: false });

const form = document.getElementById("login-form");
const error = document.getElementById("error");
const submit = document.getElementById("login-submit");

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  error.hidden = true;
  submit.disabled = true;
  submit.textContent = t("login.busy");
  try {
    await api("POST", "/api/login", {
      body: { username: form.username.value.trim(), password: form.password.value },
      redirect: false,
    });
    location.assign(nextUrl());
  } catch (err) {
    error.textContent = err.status === 401 || err.status === 400 ? t("login.failed")
      : err.status === 429 ? t("login.locked") : err.message;
    error.hidden = false;
    form.password.select();
  } finally {
    submit.disabled = false;
    submit.textContent = t("login.submit");
  }
});
