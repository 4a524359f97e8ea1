"""The console in a real browser, end to end: Debian's chromium (driven by Playwright) against
`hazardwatch serve`, readings published over MQTT by a gateway.

A duty officer signs in through the login page; a reading series crossing HH raises a warning
that appears on the open board without a reload (server-sent events); the warning page shows
the readings chart with its limits; the officer acknowledges, the readings fall back so the
warning clears, the officer reports the disposal and closes it. The database then holds the
closed warning with both notes and every step in the append-only event trail.

Screenshots of the board and the warning page go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest
from dbutil import fresh_database
from harness import HAZARDWATCH, Site

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
REGISTRY = Path(__file__).parent / "data" / "registry_e2e.yaml"
ENT = "91370105MA3C000043"
TOPIC = f"hw/v1/{ENT}/gw-e2e/readings"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OFFICER, REGION = "duty-e2e", "370100"   # the city: its child 370105 holds the enterprise
ENTERPRISE_USER = "ent-e2e"
DISPOSAL = "已关闭进料阀，液位回落至正常范围。"
CLOSING = "现场复核无异常，闭环。"


def add_user(env: dict[str, str], password: str, username: str, *scope: str) -> None:
    """`hazardwatch user add` with the password on standard input (never in argv)."""
    result = subprocess.run([HAZARDWATCH, "user", "add", username, *scope, "--password-stdin"],
                            input=password + "\n", env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr + result.stdout


def publish(site: Site, points: list[tuple[float, float]]) -> None:
    gw = site.gateway(ENT, "gw-e2e", client_id=f"console-{time.monotonic_ns()}")
    try:
        for ts_s, value in points:
            gw.publish(TOPIC, orjson.dumps({"ts": int(ts_s * 1000), "values": {"TK1.LT": value}}))
    finally:
        gw.close()


def one(dsn: str, sql: str, params=()):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchone()


@pytest.fixture
def site(project_broker, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium; .ci/run installs it)")
    with fresh_database("hw_test_console") as dsn:
        s = Site(dsn, project_broker, tmp_path, f"hw-ingest-console-{time.monotonic_ns()}",
                 REGISTRY, [(ENT, "gw-e2e")])
        s.password = secrets.token_urlsafe(12)
        add_user(s.serve.env, s.password, OFFICER, "--role", "officer", "--region", REGION,
                 "--name", "值班员甲")
        add_user(s.serve.env, s.password, ENTERPRISE_USER, "--role", "enterprise",
                 "--enterprise", ENT, "--name", "一厂安全员")
        s.serve.start()
        try:
            yield s
        finally:
            s.serve.stop()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_officer_sees_a_warning_live_and_closes_the_loop(site, browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    base = f"http://127.0.0.1:{site.serve.http_port}"
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "console-failure.png").unlink(missing_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000}, locale="zh-CN")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        _walk_through(page, base, site)
    except BaseException:
        page.screenshot(path=ARTIFACTS / "console-failure.png", full_page=True)
        raise
    assert errors == [], errors


def _walk_through(page, base: str, site: Site) -> None:
    from playwright.sync_api import expect

    # --- sign in: the board redirects to the login page, which comes back to the board
    page.goto(base + "/")
    page.wait_for_url("**/login.html**")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")
    page.fill("#username", OFFICER)
    page.fill("#password", "wrong-password")
    page.click("#login-submit")
    expect(page.locator("#error")).to_be_visible()
    page.fill("#password", site.password)
    page.click("#login-submit")
    page.wait_for_url(base + "/")
    expect(page.locator("#user")).to_contain_text("值班员甲")
    expect(page.locator("#live.on")).to_be_visible()   # the event stream is open
    expect(page.locator(".card")).to_have_count(0)

    # --- readings over HH, spaced 10 s in event time (the on-delay is met): a warning
    # appears on the open board, with no reload
    page.evaluate("window.__noReload = true")
    t0 = time.time() - 1500
    publish(site, [(t0 + 10 * i, 18.6) for i in range(6)])
    card = page.locator(".card")
    expect(card).to_have_count(1)
    assert page.evaluate("window.__noReload === true"), "the board reloaded"
    expect(card).to_have_class(re.compile(r"\blvl-3\b"))  # orange: HH on a grade-2 site
    expect(card.locator(".chip.level")).to_have_text("橙色预警")
    expect(card.locator(".chip.state")).to_have_text("未确认")
    expect(card.locator(".chip.esc")).to_have_text("提示")
    expect(card.locator(".card-title")).to_have_text("储罐高液位(溢罐风险)")
    expect(card.locator(".card-site")).to_contain_text("测试化工一厂")
    expect(page.locator("#level-counters .lvl-3 .n")).to_have_text("1")
    expect(page.locator("#state-counters .state-active_unack .n")).to_have_text("1")
    expect(page.locator("#error")).to_be_hidden()
    wid = int(card.get_attribute("data-id"))
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "console-board.png", full_page=True)

    # --- the warning page: header, a chart with the readings and its limits, alarms, timeline
    card.click()
    page.wait_for_url(f"**/warning.html?id={wid}")
    head = page.locator("#head")
    expect(head).to_have_attribute("data-state", "active_unack")
    chart = page.locator(".chart").first
    expect(chart.locator("svg.main-svg").first).to_be_visible()
    points = page.evaluate("""() => {
        const gd = document.querySelector('.chart');
        return (gd.data || []).reduce((n, tr) => n + (tr.y || []).filter(v => v !== null).length, 0);
    }""")
    assert points >= 6, points
    expect(chart.locator(".scatterlayer .trace path.js-line")).not_to_have_count(0)
    shapes = page.evaluate("document.querySelector('.chart').layout.shapes.map(s => [s.type, s.y0])")
    assert ["line", 18] in shapes and ["line", 16] in shapes, shapes   # HH and H drawn
    assert any(kind == "rect" for kind, _ in shapes), shapes           # the warning's span
    expect(page.locator("#alarms tbody tr")).not_to_have_count(0)
    expect(page.locator("#events li[data-action=raised]")).to_have_count(1)
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "console-warning.png", full_page=True)

    # --- a refused action shows the API's reason: shelving beyond the maximum
    page.click("button[data-action=shelve]")
    form = page.locator("#action-form")
    form.locator("input[name=reason]").fill("检修")
    too_late = datetime.now() + timedelta(days=30)
    form.locator("input[name=until]").fill(too_late.strftime("%Y-%m-%dT%H:%M"))
    form.locator("button[type=submit]").click()
    expect(page.locator("#action-error")).to_be_visible()
    expect(page.locator("#action-error")).not_to_be_empty()
    page.click("button[data-action=shelve]")        # fold the form away again

    # --- acknowledge
    page.click("button[data-action=acknowledge]")
    expect(head).to_have_attribute("data-state", "active_ack")
    expect(page.locator("button[data-action=acknowledge]")).to_have_count(0)
    expect(page.locator("#events li[data-action=acknowledged]")).to_have_count(1)

    # --- readings back to normal: the warning clears, the open page follows the stream
    # (gently: 0.3 m a minute, far below the rate_fall of a rupture, which would raise
    # a low_level warning of its own; then steady while the off-delay runs)
    fall = [(t0 + 50 + 60 * k, round(18.6 - 0.3 * k, 1)) for k in range(1, 13)]
    publish(site, fall + [(fall[-1][0] + 10 * j, 15.0) for j in range(1, 7)])
    expect(head).to_have_attribute("data-state", "cleared")
    expect(page.locator("#events li[data-action=cleared]")).to_have_count(1)

    # --- dispose (处置反馈) with a note, then close (闭环) with a note
    page.click("button[data-action=dispose]")
    form.locator("textarea[name=note]").fill(DISPOSAL)
    form.locator("button[type=submit]").click()
    expect(page.locator("#events li[data-action=disposed]")).to_have_count(1)
    expect(head).to_contain_text(DISPOSAL)

    page.click("button[data-action=close]")
    form.locator("textarea[name=note]").fill(CLOSING)
    form.locator("button[type=submit]").click()
    expect(head).to_have_attribute("data-state", "closed")
    expect(head).to_contain_text(CLOSING)
    expect(page.locator("#actions button")).to_have_count(0)
    page.wait_for_timeout(300)
    page.screenshot(path=ARTIFACTS / "console-warning-closed.png", full_page=True)

    # --- the database: closed, with both notes, and every step in the event trail
    state, disposal, closing, ack_by, disposed_by, closed_by = one(
        site.dsn, "SELECT state, disposal, closing_note, acknowledged_by, disposed_by, closed_by "
        "FROM warnings WHERE id = %s", (wid,))
    assert (state, disposal, closing) == ("closed", DISPOSAL, CLOSING)
    assert ack_by == disposed_by == closed_by == OFFICER
    with psycopg.connect(site.dsn) as conn:
        events = conn.execute("SELECT action, actor, detail FROM warning_events "
                              "WHERE warning_id = %s ORDER BY id", (wid,)).fetchall()
    actions = [a for a, _, _ in events]
    for action in ("raised", "acknowledged", "cleared", "disposed", "closed"):
        assert action in actions, actions
    assert actions.index("raised") < actions.index("acknowledged") < actions.index("cleared") \
        < actions.index("disposed") < actions.index("closed"), actions
    by_action = {a: (actor, detail) for a, actor, detail in events}
    assert by_action["acknowledged"][0] == by_action["closed"][0] == OFFICER
    assert DISPOSAL in orjson.dumps(by_action["disposed"][1]).decode()
    assert "shelved" not in actions                     # the refused shelve left no trace

    # --- the board drops the closed warning; English by the toggle, remembered
    page.goto(base + "/")
    expect(page.locator("#live.on")).to_be_visible()
    expect(page.locator(".card")).to_have_count(0)
    page.click("#lang-toggle")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator(".nav a[data-page=board]")).to_have_text("Board")
    page.goto(base + "/kpi.html")
    expect(page.locator(".nav a[data-page=kpi]")).to_have_text("KPIs")
    expect(page.locator("#chart-level svg.main-svg").first).to_be_visible()
    expect(page.locator(".kpi-card")).not_to_have_count(0)
    page.screenshot(path=ARTIFACTS / "console-kpi.png", full_page=True)
    page.goto(base + "/enterprise.html")
    expect(page.locator("#warnings tbody tr")).to_have_count(1)
    page.screenshot(path=ARTIFACTS / "console-enterprise.png", full_page=True)
    page.click("#lang-toggle")
    expect(page.locator("html")).to_have_attribute("lang", "zh-CN")

    # --- an enterprise user: sign out, sign in, their own page (no enterprise picker)
    page.click("#logout")
    page.wait_for_url("**/login.html**")
    page.goto(base + "/login.html?next=/enterprise.html")
    page.fill("#username", ENTERPRISE_USER)
    page.fill("#password", site.password)
    page.click("#login-submit")
    page.wait_for_url(base + "/enterprise.html")
    expect(page.locator("#user")).to_contain_text("一厂安全员")
    expect(page.locator("#ent-form")).to_be_hidden()
    expect(page.locator("#ent-info")).to_contain_text("测试化工一厂")
    expect(page.locator("#warnings tbody tr")).to_have_count(1)
    expect(page.locator("#warnings")).to_contain_text(DISPOSAL)
    expect(page.locator("#onboarding")).not_to_be_empty()
    expect(page.locator("#dead")).not_to_be_empty()
    expect(page.locator("#error")).to_be_hidden()
    page.screenshot(path=ARTIFACTS / "console-enterprise-user.png", full_page=True)


def test_console_pages_send_no_inline_code():
    """CSP default-src 'self': no inline <script>, no on* handlers, no style attributes."""
    console = REPO / "alerting" / "console"
    pages = sorted(console.glob("*.html"))
    assert {p.name for p in pages} >= {"index.html", "login.html", "warning.html", "kpi.html",
                                       "enterprise.html"}
    for p in pages:
        html = p.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{p.name}: inline script"
        assert not re.search(r"\son[a-z]+\s*=", html), f"{p.name}: inline event handler"
        assert not re.search(r"\sstyle\s*=", html), f"{p.name}: style attribute"
        assert "<style" not in html, f"{p.name}: <style> element"
    for js in console.glob("*.js"):
        text = js.read_text()
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|\beval\(|new Function\(", text), js.name

