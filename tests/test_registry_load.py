"""The fast registry load (columns, rules resolved per group) says exactly what the
per-sensor path says: effective_rules sensor by sensor, one SensorRow per database row.

bench/registry_load.py measures the speed; these tests pin the behaviour."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import psycopg
import pytest
from dbutil import fresh_database
from psycopg.types.json import Jsonb

from hazardwatch.pipeline import load_sensor_rows
from hazardwatch.registry import credit_code_check_character
from ingest.registry_cache import RegistryCache
from rules.conditions import Params
from rules.engine import Engine, SensorRow
from rules.model import PARAM_FIELDS, Cond
from rules.packs import SITE_KINDS, SensorSpec, effective_arrays, effective_rules, load_packs
from rules.sensor_table import SensorTable

PACKS = load_packs()
# Overrides of every shape effective_rules meets: absolute, percent of span, off (null),
# range overrides (valid and not), wrong types and unknown keys (skipped).
OVERRIDES = [
    {}, {"deadband": 0.5}, {"deadband_pct": 3}, {"deadband_pct": 3, "deadband": 0.1},
    {"h": None, "hh": 95.0}, {"rate_rise_pct_per_min": None}, {"rate_fall_pct_per_min": 7},
    {"range_lo": -10.0, "deadband_pct": 2}, {"range_lo": 500.0, "stuck_eps_pct": 1},
    {"trend_tau_s": None, "on_delay_s": 30}, {"deviation": True, "deviation_warmup": 5},
    {"deadband": "wide"}, {"not_a_rule": 1}, {"interval_s": 2.5, "nodata_k": 4},
]


def random_specs(n: int, seed: int) -> list[tuple[str, SensorSpec]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        site_kind = rng.choice(SITE_KINDS)
        kinds = sorted(PACKS[site_kind].sensor_kinds) + ["unknown_kind"]
        lo = rng.choice([0.0, -50.0, 100.0])
        hi = lo + rng.choice([1.0, 20.0, 100.0, 1600.0])

        def limit(frac: float, lo: float = lo, hi: float = hi) -> float | None:
            return None if rng.random() < 0.4 else lo + frac * (hi - lo)

        out.append((site_kind, SensorSpec(
            tag=f"EQ{i % 7}.T{i}", kind=rng.choice(kinds), unit=rng.choice(["m", "%LEL", "kPa"]),
            range_lo=lo, range_hi=hi, ll=limit(0.05), l=limit(0.1), h=limit(0.8), hh=limit(0.9),
            interval_s=rng.choice([1.0, 5.0, 10.0]), rules=dict(rng.choice(OVERRIDES)))))
    return out


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def test_effective_arrays_equal_effective_rules_sensor_by_sensor():
    specs = random_specs(3000, seed=11)
    groups: dict[tuple, list[SensorSpec]] = {}
    for site_kind, spec in specs:
        key = (site_kind, spec.kind, repr(sorted(spec.rules.items())))
        groups.setdefault(key, []).append(spec)
    assert len(groups) > 100
    for (site_kind, kind, _), members in groups.items():
        pack = PACKS[site_kind]
        col = {name: np.array([np.nan if getattr(s, name) is None else getattr(s, name)
                               for s in members]) for name in ("ll", "l", "h", "hh")}
        got = effective_arrays(pack, kind, members[0].rules,
                               np.array([s.range_lo for s in members]),
                               np.array([s.range_hi for s in members]),
                               np.array([s.interval_s for s in members]), col)
        for i, spec in enumerate(members):
            want = effective_rules(pack, spec)[0]
            for name in PARAM_FIELDS:
                assert same(got[name][i], np.float64(getattr(want, name))), (site_kind, spec, name)


def reference(rows: list[SensorRow]):
    """What Engine.load computed before it went columnar: per sensor, in slot order."""
    params = Params.from_rules([effective_rules(PACKS[r.site_kind], r.spec)[0] for r in rows])
    causes = [{c: list(f) for c in Cond if (f := PACKS[r.site_kind].cause_for(r.spec.kind, c))}
              for r in rows]
    gateway_sites: dict[int, set] = {}
    for r in rows:
        if r.gateway_id is not None:
            gateway_sites.setdefault(r.gateway_id, set()).add((r.site_id, r.site_grade, r.site_kind))
    return params, causes, gateway_sites


def assert_engine_matches(engine: Engine, rows: list[SensorRow]) -> None:
    params, causes, gateway_sites = reference(rows)
    assert [engine.rows[i] for i in range(len(rows))] == rows
    assert list(engine.rows) == rows
    for name in PARAM_FIELDS:
        assert same(getattr(engine.params, name), getattr(params, name)), name
    assert engine.causes == causes
    assert engine.gateway_sites == gateway_sites
    assert engine.slot_gateway.tolist() == [-1 if r.gateway_id is None else r.gateway_id for r in rows]
    assert engine.slot_of == {r.sensor_id: i for i, r in enumerate(rows)}
    ids = np.array([r.sensor_id for r in rows])
    assert engine.slots(ids)[0].tolist() == list(range(len(rows)))
    assert engine.state.n == len(rows)


def engine_rows(seed: int, ids: list[int]) -> list[SensorRow]:
    rng = random.Random(seed)
    return [SensorRow(sid, 1 + sid % 13, None if sid % 5 == 0 else 1 + sid % 4, site_kind,
                      1 + sid % 13 % 4, spec)
            for sid, (site_kind, spec) in zip(ids, random_specs(len(ids), rng.randrange(1000)),
                                              strict=True)]


def test_engine_load_equals_the_per_sensor_reference_and_keeps_slots_on_reload():
    # site kind must follow the site: sites 1..13, each with one kind
    rows = [SensorRow(r.sensor_id, r.site_id, r.gateway_id, SITE_KINDS[r.site_id % 3], r.site_grade,
                      SensorSpec(**{**r.spec.__dict__,
                                    "kind": sorted(PACKS[SITE_KINDS[r.site_id % 3]].sensor_kinds)[
                                        r.sensor_id % 3]}))
            for r in engine_rows(5, list(range(3, 2000, 3)))]
    e = Engine(PACKS)
    e.load(rows)
    assert_engine_matches(e, rows)

    # condition state of a known sensor survives a reload; changed rows update in place and
    # new sensors are appended after the known ones
    slot = e.slot_of[rows[10].sensor_id]
    e.state.set_active(slot, Cond.H, True)
    e.state.last_ts[slot] = 123.0
    changed = [SensorRow(r.sensor_id, r.site_id, r.gateway_id, r.site_kind, r.site_grade,
                         SensorSpec(**{**r.spec.__dict__, "h": 77.0, "hh": None}))
               for r in rows[::2]]
    fresh = [SensorRow(sid, 14 + sid % 3, 9, "gas_pipeline", 2,
                       SensorSpec(tag=f"N.{sid}", kind="pressure", unit="MPa", range_lo=0.0,
                                  range_hi=1.6, ll=None, l=0.2, h=None, hh=None, interval_s=5.0,
                                  rules={"deadband_pct": 4}))
             for sid in (1, 2, 4, 5000)]
    e.load(changed + fresh)
    expected = list(rows)
    for r in changed:
        expected[e.slot_of[r.sensor_id]] = r
    expected += fresh
    assert_engine_matches(e, expected)
    assert e.state.active(Cond.H)[slot] and e.state.last_ts[slot] == 123.0


def test_engine_load_repeated_sensor_last_row_wins_and_empty_load():
    e = Engine(PACKS)
    e.load([])
    assert len(e.rows) == 0 and e.params.n == 0
    a, b = engine_rows(1, [7, 7])
    e.load([a, SensorRow(7, b.site_id, b.gateway_id, a.site_kind, b.site_grade, b.spec)])
    assert len(e.rows) == 1 and e.rows[0].spec == b.spec


# ---------------------------------------------------------------------------- from the database


def credit_code(n: int) -> str:
    first17 = f"91370100MA{n:07d}"
    return first17 + credit_code_check_character(first17)


def fill(dsn: str) -> None:
    """A registry with every column shape the load reads: NULL gateway and limits, overrides."""
    specs = random_specs(600, seed=3)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO regions (code, name) VALUES ('370100', '济南市')")
        for e in range(1, 4):
            conn.execute("INSERT INTO enterprises (id, code, name, region) VALUES (%s, %s, %s, '370100')",
                         (e, credit_code(e), f"企业{e}"))
            conn.execute("INSERT INTO gateways (id, enterprise_id, code, username) VALUES (%s, %s, 'gw', %s)",
                         (e, e, f"{credit_code(e)}/gw"))
            for k in range(3):
                conn.execute("INSERT INTO sites (id, enterprise_id, code, name, kind, grade) "
                             "VALUES (%s, %s, %s, 'x', %s, %s)",
                             (e * 10 + k, e, f"S{k}", SITE_KINDS[k], 1 + (e + k) % 4))
        with conn.cursor().copy("COPY sensors (id, enterprise_id, site_id, gateway_id, tag, kind, "
                                "unit, range_lo, range_hi, ll, l, h, hh, interval_s, rules) "
                                "FROM STDIN") as cp:
            for i, (_, spec) in enumerate(specs):
                e, k = 1 + i % 3, i % 3
                cp.write_row((1000 - i, e, e * 10 + k, None if i % 4 == 0 else e, spec.tag, spec.kind,
                              spec.unit, spec.range_lo, spec.range_hi, spec.ll, spec.l, spec.h,
                              spec.hh, spec.interval_s, Jsonb(spec.rules)))
        conn.commit()


async def reference_rows(conn, enterprises=None) -> list[SensorRow]:
    """The row-by-row read load_sensor_rows replaced."""
    cur = await conn.execute(
        "SELECT s.id, s.site_id, s.gateway_id, st.kind::text, st.grade, s.tag, s.kind, s.unit, "
        "s.range_lo, s.range_hi, s.ll, s.l, s.h, s.hh, s.interval_s, s.rules "
        "FROM sensors s JOIN sites st ON st.id = s.site_id "
        "WHERE %(e)s::int[] IS NULL OR s.enterprise_id = ANY(%(e)s) ORDER BY s.id",
        {"e": enterprises})
    return [SensorRow(sid, site, gw, sk, grade, SensorSpec(tag=tag, kind=kind, unit=unit, range_lo=lo,
                                                          range_hi=hi, ll=ll, l=low, h=high, hh=hh,
                                                          interval_s=iv, rules=rules or {}))
            for sid, site, gw, sk, grade, tag, kind, unit, lo, hi, ll, low, high, hh, iv, rules
            in await cur.fetchall()]


@pytest.fixture(scope="module")
def registry_dsn():
    with fresh_database("hw_test_regload") as dsn:
        fill(dsn)
        yield dsn


def test_load_sensor_rows_equals_the_row_by_row_read(registry_dsn):
    async def run():
        async with await psycopg.AsyncConnection.connect(registry_dsn, autocommit=True) as conn:
            for enterprises in (None, [2], [1, 3], []):
                table = await load_sensor_rows(conn, enterprises)
                want = await reference_rows(conn, enterprises)
                assert isinstance(table, SensorTable)
                assert list(table) == want, enterprises
                assert len(want) == {None: 600, (2,): 200, (1, 3): 400, (): 0}[
                    tuple(enterprises) if enterprises is not None else None]
                e = Engine(PACKS)
                e.load(table)
                assert_engine_matches(e, want)
        # inside a caller's transaction (a non-autocommit connection that already read)
        async with await psycopg.AsyncConnection.connect(registry_dsn) as conn:
            await conn.execute("SELECT 1")
            assert list(await load_sensor_rows(conn)) == await reference_rows(conn)

    asyncio.run(run())


def test_registry_cache_equals_the_row_by_row_read(registry_dsn):
    async def run():
        async with await psycopg.AsyncConnection.connect(registry_dsn, autocommit=True) as conn:
            cache = RegistryCache()
            assert await cache.refresh(conn) is True
            assert await cache.refresh(conn) is False
            cur = await conn.execute(
                "SELECT s.id, e.code, s.tag, s.range_lo, s.range_hi FROM sensors s "
                "JOIN enterprises e ON e.id = s.enterprise_id ORDER BY s.id")
            rows = await cur.fetchall()
            tags: dict[str, dict[str, int]] = {}
            for sid, ent, tag, lo, hi in rows:
                tags.setdefault(ent, {})[tag] = sid
                assert cache.range_lo[sid] == lo and cache.range_hi[sid] == hi
            assert cache.tags == tags
            assert set(cache.tag_owner) == {r[2] for r in rows}
            assert all(tag in tags[ent] for tag, ent in cache.tag_owner.items())
            assert len(cache.range_lo) == max(r[0] for r in rows) + 1
            unused = np.setdiff1d(np.arange(len(cache.range_lo)), [r[0] for r in rows])
            assert np.isneginf(cache.range_lo[unused]).all() and np.isposinf(cache.range_hi[unused]).all()
            cur = await conn.execute("SELECT e.code, g.code, g.id FROM gateways g "
                                     "JOIN enterprises e ON e.id = g.enterprise_id")
            assert cache.gateways == {(e, g): i for e, g, i in await cur.fetchall()}

    asyncio.run(run())
