"""Key figures for the duty centre (GET /api/kpis), over a period [since, until).

What each figure counts (all within the enterprises of `enterprise_ids`; None = all):

- gateways: {total, online, online_rate} — now (gateways.online; never reported = offline);
  online_rate is online / total, null without gateways.
- warnings.by_level ({blue, yellow, orange, red}) and warnings.by_state (the five ISA-18.2
  states, current state): warnings raised (raised_at) in the period.
  warnings.open: warnings not closed *now*, whenever raised (the officers' queue).
- mtta_s / mttc_s: mean seconds from raised_at to acknowledged_at / closed_at, over the
  warnings raised in the period that have been acknowledged / closed; null if none.
- overdue: {ack, dispose}: open warnings now past raised_at + ack_s[level] unacknowledged /
  past raised_at + dispose_s[level] without disposal (the escalation settings), not counting
  shelved or suppressed ones (they do not escalate either).
- alarm_rate (EEMUA 191), counting warnings by raised_at in the period:
  max_per_10min — most raised in any 10-minute window [t, t + 10 min) (sliding);
  avg_per_hour — raised / hours in the period;
  floods — 10-minute periods aligned on the clock (:00, :10, …) with more than 10 raised;
  also raised (the total) and periods (10-minute periods touching the range).
- chattering: a sensor and condition raised >= chatter_n times within chatter_window_s
  (first to last, inclusive) by alarms raised in the period; an activation feeding two
  causes counts once. Listed as {sensor_id, tag, site, enterprise, condition, count (in the
  period), max_in_window}, worst first.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from alerting.escalation import limits
from alerting.events import LEVEL_NAMES
from hazardwatch.settings import EscalationSettings

STATES = ("active_unack", "active_ack", "cleared_unack", "cleared", "closed")
FLOOD = 10            # EEMUA 191: more than 10 in 10 minutes is a flood
WINDOW_S = 600.0

# scope: %(ents)s is NULL (everything) or an array of enterprise ids
_SCOPE = "(%(ents)s::int[] IS NULL OR s.enterprise_id = ANY(%(ents)s::int[]))"


async def kpis(conn: psycopg.AsyncConnection, *, enterprise_ids: list[int] | None,
               since: datetime, until: datetime, chatter_n: int, chatter_window_s: float,
               escalation: EscalationSettings | None = None,
               now: datetime | None = None) -> dict[str, Any]:
    """The KPI document of docs/alerting.md for the period [since, until) (aware datetimes).
    `escalation` gives the overdue deadlines (default: EscalationSettings()); `now` the
    moment for the live figures (default: the current time)."""
    if since.tzinfo is None or until.tzinfo is None:
        raise ValueError("since and until must be timezone-aware")
    if until <= since:
        raise ValueError("until must be after since")
    now = now or datetime.now(UTC)
    ack, dispose = limits(escalation or EscalationSettings())
    p = {"ents": None if enterprise_ids is None else list(enterprise_ids), "since": since,
         "until": until, "now": now, "ack": ack, "dispose": dispose,
         "chatter_n": chatter_n, "chatter_s": float(chatter_window_s)}

    async with conn.cursor(row_factory=tuple_row) as cur:  # whatever the connection's default
        return await _kpis(cur, p, since, until)


async def _kpis(cur, p: dict[str, Any], since: datetime, until: datetime) -> dict[str, Any]:
    await cur.execute(
        "SELECT count(*), count(*) FILTER (WHERE g.online) FROM gateways g "
        "WHERE %(ents)s::int[] IS NULL OR g.enterprise_id = ANY(%(ents)s::int[])", p)
    total, online = await cur.fetchone()

    await cur.execute(
        "SELECT w.level, w.state, count(*), "
        "  sum(extract(epoch FROM w.acknowledged_at - w.raised_at)), count(w.acknowledged_at), "
        "  sum(extract(epoch FROM w.closed_at - w.raised_at)), count(w.closed_at) "
        "FROM warnings w JOIN sites s ON s.id = w.site_id "
        f"WHERE {_SCOPE} AND w.raised_at >= %(since)s AND w.raised_at < %(until)s "
        "GROUP BY 1, 2", p)
    by_level = {name: 0 for name in ("blue", "yellow", "orange", "red")}
    by_state = dict.fromkeys(STATES, 0)
    ack_sum = close_sum = 0.0
    ack_n = close_n = 0
    for level, state, n, a_sum, a_n, c_sum, c_n in await cur.fetchall():
        by_level[LEVEL_NAMES[level]] += n
        by_state[state] += n
        ack_sum += float(a_sum or 0)
        ack_n += a_n
        close_sum += float(c_sum or 0)
        close_n += c_n

    await cur.execute(
        "SELECT count(*), "
        "  count(*) FILTER (WHERE NOT w.acknowledged AND w.raised_at "
        "       + make_interval(secs => (%(ack)s::float8[])[w.level]) <= %(now)s "
        "       AND w.suppressed_by IS NULL "
        "       AND (w.shelved_until IS NULL OR w.shelved_until <= %(now)s)), "
        "  count(*) FILTER (WHERE w.disposed_at IS NULL AND w.raised_at "
        "       + make_interval(secs => (%(dispose)s::float8[])[w.level]) <= %(now)s "
        "       AND w.suppressed_by IS NULL "
        "       AND (w.shelved_until IS NULL OR w.shelved_until <= %(now)s)) "
        "FROM warnings w JOIN sites s ON s.id = w.site_id "
        f"WHERE {_SCOPE} AND w.closed_at IS NULL", p)
    open_n, overdue_ack, overdue_dispose = await cur.fetchone()

    await cur.execute(
        "WITH r AS (SELECT w.raised_at FROM warnings w JOIN sites s ON s.id = w.site_id "
        f"          WHERE {_SCOPE} AND w.raised_at >= %(since)s AND w.raised_at < %(until)s), "
        "sliding AS (SELECT count(*) OVER (ORDER BY raised_at RANGE BETWEEN CURRENT ROW AND "
        "            interval '599.999999 seconds' FOLLOWING) AS n FROM r), "
        "periods AS (SELECT count(*) AS n FROM r "
        "            GROUP BY floor(extract(epoch FROM raised_at) / 600)) "
        "SELECT (SELECT count(*) FROM r), (SELECT coalesce(max(n), 0) FROM sliding), "
        f"       (SELECT count(*) FROM periods WHERE n > {FLOOD})", p)
    raised, max_10, floods = await cur.fetchone()
    hours = (until - since).total_seconds() / 3600.0
    first = math.floor(since.timestamp() / WINDOW_S)
    last = math.ceil(until.timestamp() / WINDOW_S)

    await cur.execute(
        "WITH a AS (SELECT DISTINCT a.sensor_id, a.condition, a.raised_at FROM alarms a "
        "           JOIN sensors s ON s.id = a.sensor_id "
        f"          WHERE {_SCOPE} AND a.raised_at >= %(since)s AND a.raised_at < %(until)s), "
        "w AS (SELECT sensor_id, condition, count(*) OVER (PARTITION BY sensor_id, condition "
        "      ORDER BY raised_at RANGE BETWEEN CURRENT ROW AND "
        "      make_interval(secs => %(chatter_s)s) FOLLOWING) AS n FROM a), "
        "c AS (SELECT sensor_id, condition, count(*) AS total, max(n) AS worst FROM w "
        "      GROUP BY 1, 2 HAVING max(n) >= %(chatter_n)s) "
        "SELECT c.sensor_id, se.tag, st.code, e.code, c.condition, c.total, c.worst FROM c "
        "JOIN sensors se ON se.id = c.sensor_id JOIN sites st ON st.id = se.site_id "
        "JOIN enterprises e ON e.id = se.enterprise_id "
        "ORDER BY c.worst DESC, c.total DESC, c.sensor_id, c.condition", p)
    chattering = [{"sensor_id": sid, "tag": tag, "site": site, "enterprise": ent,
                   "condition": cond, "count": n, "max_in_window": worst}
                  for sid, tag, site, ent, cond, n, worst in await cur.fetchall()]

    return {
        "gateways": {"total": total, "online": online,
                     "online_rate": round(online / total, 4) if total else None},
        "warnings": {"by_level": by_level, "by_state": by_state, "open": open_n},
        "mtta_s": round(ack_sum / ack_n, 3) if ack_n else None,
        "mttc_s": round(close_sum / close_n, 3) if close_n else None,
        "overdue": {"ack": overdue_ack, "dispose": overdue_dispose},
        "alarm_rate": {"max_per_10min": max_10, "avg_per_hour": round(raised / hours, 3),
                       "floods": floods, "raised": raised, "periods": last - first},
        "chattering": chattering,
    }
