"""Registry import against a real PostgreSQL: messages, upserts, atomicity, onboarding."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql

from hazardwatch.db import with_database
from hazardwatch.migrate import migrate
from hazardwatch.registry import (
    RegistryError,
    credit_code_check_character,
    credit_code_problem,
    import_file,
    load_file,
    pending,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "registry.yaml"
SERVER = os.environ.get("HW_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = ("regions", "enterprises", "sites", "gateways", "sensors", "unregistered_tags")

ENT = "91370105MA3D2N8P36"  # valid check characters (GB 32100-2015)
OTHER = "91370112163058725A"
E0 = f"enterprises[0] ({ENT})"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"hw_test_registry_{secrets.token_hex(4)}"
    admin = with_database(SERVER, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = with_database(SERVER, name)
        migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture
def dsn(database: str) -> str:
    """The module's database with an empty registry, so tests do not depend on each other."""
    with psycopg.connect(database, autocommit=True) as conn:
        # warning_events refuses TRUNCATE (append-only audit trail); wiping a test database
        # is the one place that may bypass triggers.
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    return database


# ---------------------------------------------------------------------------- helpers


def level(tag: str, gateway: str = "gw-01", **limits: float) -> dict:
    return {"tag": tag, "kind": "level", "unit": "m", "range": [0, 20],
            "limits": limits or {"ll": 0.5, "l": 1, "h": 16, "hh": 18},
            "interval_s": 10, "gateway": gateway}


def base() -> dict:
    """A small valid registry: one enterprise, two sites, five sensors."""
    return {
        "regions": [
            {"code": "370000", "name": "山东省"},
            {"code": "370100", "name": "济南市", "parent": "370000"},
            {"code": "370105", "name": "天桥区", "parent": "370100"},
        ],
        "enterprises": [{
            "code": ENT, "name": "济南测试化工有限公司", "region": "370105",
            "gateways": [{"id": "gw-01"}, {"id": "gw-02", "name": "GDS"}],
            "sites": [
                {"id": "TF-1", "name": "罐区一", "kind": "major_hazard", "grade": 2, "sensors": [
                    level("TK101.LT1"), level("TK101.LT2"),
                    {"tag": "GT101.LEL", "kind": "gas_lel", "unit": "%LEL", "range": [0, 100],
                     "limits": {"h": 25, "hh": 50}, "interval_s": 5, "gateway": "gw-02",
                     "rules": {"on_delay_s": 10}},
                ]},
                {"id": "TF-2", "name": "罐区二", "kind": "major_hazard", "grade": 3, "sensors": [
                    level("TK201.LT1"), level("TK201.LT2"),
                ]},
            ],
        }],
    }


def write(tmp_path: Path, doc: dict, name: str = "registry.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def errors_of(dsn: str, path: Path) -> list[str]:
    with pytest.raises(RegistryError) as caught:
        import_file(dsn, path)
    assert caught.value.errors, "a RegistryError always lists its reasons"
    return caught.value.errors


def snapshot(dsn: str) -> dict[str, list[tuple]]:
    """Every registry row (minus serial ids and timestamps' noise), to prove nothing changed."""
    queries = {
        "regions": "SELECT code, name, parent FROM regions ORDER BY code",
        "enterprises": "SELECT code, name, region, updated_at FROM enterprises ORDER BY code",
        "sites": "SELECT code, name, kind::text, grade, updated_at FROM sites ORDER BY code",
        "gateways": "SELECT username, name, updated_at FROM gateways ORDER BY username",
        "sensors": "SELECT tag, kind, ll, l, h, hh, interval_s, rules, updated_at "
                   "FROM sensors ORDER BY tag",
        "unregistered_tags": "SELECT * FROM unregistered_tags ORDER BY 1, 2, 3",
    }
    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(q).fetchall() for table, q in queries.items()}


def sensor_row(dsn: str, tag: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT ll, l, h, hh, updated_at FROM sensors WHERE tag = %s",
                            (tag,)).fetchone()


def strip_line(error: str) -> str:
    assert re.search(r" \(line \d+\)$", error), f"no line number in {error!r}"
    return re.sub(r" \(line \d+\)$", "", error)


# ---------------------------------------------------------------------------- credit codes


@pytest.mark.parametrize("code", [
    "914403001922038216",  # 华为技术有限公司 (published)
    "91440300708461136T",  # 深圳市腾讯计算机系统有限公司 (published)
    "91330100799655058B",  # 阿里巴巴(中国)有限公司 (published)
    "91350100M000100Y43",  # the usual worked example of GB 32100-2015
    "91370105MA3D2N80K0",  # weighted sum divisible by 31: 31 - 0 wraps to check character 0
])
def test_check_character_matches_published_codes(code: str) -> None:
    assert credit_code_check_character(code) == code[17]
    assert credit_code_problem(code) is None


def test_credit_code_problems_name_the_reason() -> None:
    assert "check character X" in credit_code_problem("91370105MA3C00001X")
    assert "give R" in credit_code_problem("91370105MA3C00001X")
    assert "got 17 characters" in credit_code_problem("91370105MA3C0001R")
    assert "not a unified social credit code" in credit_code_problem("91370105ma3d2n8p36")
    assert "not a unified social credit code" in credit_code_problem("91370105MA3D2N8PI6")  # I


# ---------------------------------------------------------------------------- the example


def test_example_imports_with_the_right_counts(dsn: str) -> None:
    plain = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))  # an independent reading
    enterprises = plain["enterprises"]
    expected = {
        "regions": len(plain["regions"]),
        "enterprises": len(enterprises),
        "sites": sum(len(e["sites"]) for e in enterprises),
        "gateways": sum(len(e["gateways"]) for e in enterprises),
        "sensors": sum(len(s["sensors"]) for e in enterprises for s in e["sites"]),
    }
    assert expected == {"regions": 5, "enterprises": 3, "sites": 3, "gateways": 5,
                        "sensors": 26}

    summary = import_file(dsn, EXAMPLE)

    for table, count in expected.items():
        counts = getattr(summary, table)
        assert (counts.total, counts.new, counts.updated) == (count, count, 0), table
    assert summary.describe() == (
        "regions 5 (5 new, 0 updated), enterprises 3 (3 new, 0 updated), "
        "sites 3 (3 new, 0 updated), gateways 5 (5 new, 0 updated), "
        "sensors 26 (26 new, 0 updated)")
    with psycopg.connect(dsn) as conn:
        for table, count in expected.items():
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == count, table
        kinds = conn.execute("SELECT kind::text, grade FROM sites ORDER BY kind").fetchall()
        assert kinds == [("dust_explosion", 3), ("gas_pipeline", 3), ("major_hazard", 2)]
        usernames = {r[0] for r in conn.execute("SELECT username FROM gateways")}
        assert "91370114MA3CK7LB5R/gw-dcs" in usernames
        # Every sensor landed on the gateway the file names, inside its own enterprise.
        wrong = conn.execute(
            "SELECT count(*) FROM sensors s JOIN gateways g ON g.id = s.gateway_id "
            "WHERE g.enterprise_id <> s.enterprise_id").fetchone()[0]
        assert wrong == 0
        rows = dict(conn.execute(
            "SELECT tag, (unit, range_lo, range_hi, ll, l, h, hh)::text FROM sensors"))
    assert rows["TK101.LT1"] == "(m,0,20,0.5,1,16,18)"
    assert rows["AT201.H2S"] == "(mg/m³,0,100,,,10,20)"  # 100 % / 200 % of the 10 mg/m³ MAC
    assert rows["RS01.PT"] == "(MPa,0,0.6,0.15,0.2,0.38,0.4)"
    assert rows["VW01.CH4"] == "(%LEL,0,100,,,20,35)"
    assert rows["DC1.RV.FAULT"] == '("",0,1,,,0.5,)'


def test_example_has_what_grading_needs() -> None:
    reg = load_file(EXAMPLE)
    assert {s.kind for e in reg.enterprises for s in e.sites} == {
        "major_hazard", "gas_pipeline", "dust_explosion"}
    tank_farm = next(s for e in reg.enterprises for s in e.sites if s.kind == "major_hazard")
    levels = [x.tag for x in tank_farm.sensors if x.kind == "level"]
    for tank in ("TK101", "TK102"):  # GB 17681-2024: >= 2 continuous level instruments
        assert len([t for t in levels if t.startswith(tank + ".")]) >= 2
    lel = [x for x in tank_farm.sensors if x.kind == "gas_lel"]
    assert len(lel) >= 2 and all((x.limits.h, x.limits.hh) == (25, 50) for x in lel)
    for e in reg.enterprises:
        assert 1 <= len(e.gateways) <= 2
        assert all(5 <= x.interval_s <= 60 for s in e.sites for x in s.sensors)


# ---------------------------------------------------------------------------- upsert


def test_reimport_changes_nothing_and_a_changed_limit_is_updated(dsn: str, tmp_path: Path) -> None:
    doc = base()
    path = write(tmp_path, doc)
    first = import_file(dsn, path)
    assert (first.sensors.new, first.gateways.new, first.regions.new) == (5, 2, 3)
    before = snapshot(dsn)

    again = import_file(dsn, path)

    for table in ("regions", "enterprises", "sites", "gateways", "sensors"):
        counts = getattr(again, table)
        assert (counts.new, counts.updated) == (0, 0), table
        assert counts.total == getattr(first, table).total
    assert snapshot(dsn) == before  # not even updated_at moved

    doc["enterprises"][0]["sites"][1]["sensors"][0]["limits"]["hh"] = 19
    changed = import_file(dsn, write(tmp_path, doc))

    assert (changed.sensors.total, changed.sensors.new, changed.sensors.updated) == (5, 0, 1)
    assert (changed.sites.updated, changed.gateways.updated, changed.regions.updated) == (0, 0, 0)
    *limits, updated_at = sensor_row(dsn, "TK201.LT1")
    assert limits == [0.5, 1, 16, 19]
    assert updated_at > sensor_row(dsn, "TK201.LT2")[4]  # only the changed row was rewritten
    after = snapshot(dsn)
    assert [r for r in after["sensors"] if r[0] != "TK201.LT1"] == \
        [r for r in before["sensors"] if r[0] != "TK201.LT1"]
    assert {k: v for k, v in after.items() if k != "sensors"} == \
        {k: v for k, v in before.items() if k != "sensors"}


def test_rows_absent_from_the_file_are_kept(dsn: str, tmp_path: Path) -> None:
    import_file(dsn, write(tmp_path, base()))
    doc = base()
    del doc["enterprises"][0]["sites"][1]  # TF-2 and its sensors are no longer listed
    doc["regions"] = doc["regions"][2:]  # 370105 only; its parent is already in the database

    summary = import_file(dsn, write(tmp_path, doc))

    assert (summary.sites.total, summary.sensors.total, summary.regions.total) == (1, 3, 1)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM sensors").fetchone()[0] == 5
        assert conn.execute("SELECT count(*) FROM regions").fetchone()[0] == 3


def test_a_sensor_can_move_to_another_site(dsn: str, tmp_path: Path) -> None:
    import_file(dsn, write(tmp_path, base()))
    doc = base()
    sites = doc["enterprises"][0]["sites"]
    sites[1]["sensors"].append(sites[0]["sensors"].pop(2))  # GT101.LEL: TF-1 → TF-2

    summary = import_file(dsn, write(tmp_path, doc))

    assert (summary.sensors.new, summary.sensors.updated) == (0, 1)
    with psycopg.connect(dsn) as conn:
        site = conn.execute("SELECT st.code FROM sensors s JOIN sites st ON st.id = s.site_id "
                            "WHERE s.tag = 'GT101.LEL'").fetchone()[0]
        rules = conn.execute("SELECT rules FROM sensors WHERE tag = 'GT101.LEL'").fetchone()[0]
    assert site == "TF-2"
    assert rules == {"on_delay_s": 10}


# ---------------------------------------------------------------------------- wrong input

Mutation = Callable[[dict], None]


def _ent(doc: dict) -> dict:
    return doc["enterprises"][0]


def _sensor(doc: dict, site: int, index: int) -> dict:
    return _ent(doc)["sites"][site]["sensors"][index]


def _set_limits(**limits: float) -> Mutation:
    return lambda doc: _sensor(doc, 1, 1)["limits"].update(limits)


S11 = f"{E0} sites[1] (TF-2) sensors[1] (TK201.LT2)"

WRONG: list[tuple[str, Mutation, str, str]] = [
    # (case, mutation, the error's path and field, a fragment of the reason)
    ("credit code format", lambda d: _ent(d).update(code="91370105MA3D2N8P3"),
     "enterprises[0] (91370105MA3D2N8P3) code", "not a unified social credit code"),
    ("credit code check character", lambda d: _ent(d).update(code=ENT[:17] + "7"),
     f"enterprises[0] ({ENT[:17]}7) code", "has check character 7 but its first 17 characters give 6"),
    ("unknown region", lambda d: _ent(d).update(region="370199"),
     f"{E0} region", "unknown region 370199"),
    ("unknown parent region", lambda d: d["regions"][1].update(parent="379900"),
     "regions[1] (370100) parent", "unknown region 379900"),
    ("region code read as a number", lambda d: d["regions"][2].update(parent=370100),
     "regions[2] (370105) parent", "YAML read 370100 as a number; put it in quotes"),
    ("limits out of order", _set_limits(l=17),
     f"{S11} limits.l", "17 must be < h (16); limits run ll ≤ l < h ≤ hh"),
    ("low limits out of order", _set_limits(ll=2),
     f"{S11} limits.ll", "2 must be ≤ l (1)"),
    ("limit outside range", _set_limits(hh=25),
     f"{S11} limits.hh", "25 is outside range [0, 20]"),
    ("range upside down", lambda d: _sensor(d, 1, 1).update(range=[20, 0]),
     f"{S11} range", "[20, 0]: the low end must be below the high end"),
    ("interval not positive", lambda d: _sensor(d, 1, 1).update(interval_s=0),
     f"{S11} interval_s", "greater than 0 (got 0)"),
    ("undeclared gateway", lambda d: _sensor(d, 1, 1).update(gateway="gw-03"),
     f"{S11} gateway", "'gw-03' is not among this enterprise's gateways (declared: gw-01, gw-02)"),
    ("duplicate tag across sites", lambda d: _sensor(d, 1, 1).update(tag="TK101.LT1"),
     f"{E0} sites[1] (TF-2) sensors[1] (TK101.LT1) tag",
     "duplicate tag 'TK101.LT1', first used by sites[0] (TF-1) sensors[0] (TK101.LT1)"),
    ("duplicate site id", lambda d: _ent(d)["sites"][1].update(id="TF-1"),
     f"{E0} sites[1] (TF-1) id", "duplicate site id 'TF-1'"),
    ("duplicate gateway id", lambda d: _ent(d)["gateways"].append({"id": "gw-02"}),
     f"{E0} gateways[2] (gw-02) id", "duplicate gateway id 'gw-02'"),
    ("duplicate region", lambda d: d["regions"].append({"code": "370100", "name": "又一个"}),
     "regions[3] (370100) code", "duplicate region code '370100'"),
    ("bad gateway id", lambda d: _ent(d)["gateways"].append({"id": "gw 03"}),
     f"{E0} gateways[2] (gw 03) id", "'gw 03' must be 1-64 characters"),
    ("unknown key typo", lambda d: _sensor(d, 1, 1).update(limts=_sensor(d, 1, 1).pop("limits")),
     f"{S11} limts", "unknown key (allowed: tag, kind, unit, range, limits"),
    ("unknown limit name", _set_limits(hhh=19),
     f"{S11} limits.hhh", "unknown key (allowed: ll, l, h, hh); did you mean 'hh'?"),
    ("wrong site kind", lambda d: _ent(d)["sites"][0].update(kind="major-hazard"),
     f"{E0} sites[0] (TF-1) kind",
     "'major_hazard', 'gas_pipeline' or 'dust_explosion' (got 'major-hazard')"),
    ("grade out of 1-4", lambda d: _ent(d)["sites"][0].update(grade=5),
     f"{E0} sites[0] (TF-1) grade", "less than or equal to 4 (got 5)"),
    ("missing field", lambda d: _sensor(d, 1, 1).pop("unit"),
     f"{S11} unit", "missing (required)"),
    ("number given as text", _set_limits(h="16"),
     f"{S11} limits.h", "valid number (got '16')"),
]


@pytest.mark.parametrize(("mutate", "where", "reason"), [w[1:] for w in WRONG],
                         ids=[w[0] for w in WRONG])
def test_wrong_input_is_named_by_entry_and_field(dsn: str, tmp_path: Path, mutate: Mutation,
                                                where: str, reason: str) -> None:
    doc = base()
    mutate(doc)

    errors = errors_of(dsn, write(tmp_path, doc))

    assert len(errors) == 1, errors
    message = strip_line(errors[0])
    assert message.startswith(where + ": "), message
    assert reason in message, message


def test_every_error_is_reported_in_file_order(dsn: str, tmp_path: Path) -> None:
    doc = base()
    _ent(doc)["region"] = "370199"
    _sensor(doc, 0, 1).update(interval_s="often", gateway="gw-09")  # type and reference
    _sensor(doc, 0, 1)["limits"].update(hh=25)                     # same sensor, semantic
    _sensor(doc, 1, 0)["tag"] = "TK101.LT1"

    errors = [strip_line(e) for e in errors_of(dsn, write(tmp_path, doc))]

    s01 = f"{E0} sites[0] (TF-1) sensors[1] (TK101.LT2)"
    assert sorted(errors) == sorted([
        f"{E0} region: unknown region 370199 (not in this file nor in the database)",
        f"{s01} limits.hh: 25 is outside range [0, 20]",
        f"{s01} interval_s: Input should be a valid number (got 'often')",
        f"{s01} gateway: 'gw-09' is not among this enterprise's gateways (declared: gw-01, gw-02)",
        f"{E0} sites[1] (TF-2) sensors[0] (TK101.LT1) tag: duplicate tag 'TK101.LT1', "
        "first used by sites[0] (TF-1) sensors[0] (TK101.LT1)",
    ])
    assert errors[0].startswith(f"{E0} region")  # sorted by line, as a reader scans the file
    assert errors[-1].startswith(f"{E0} sites[1]")


def test_line_numbers_point_into_the_file(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "hand.yaml"
    path.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        "{tag: TK102.PT, kind: pressure", "{tag: TK102.PT, kind: pressure, colour: red"),
        encoding="utf-8")
    line = next(i for i, text in enumerate(path.read_text("utf-8").splitlines(), 1)
                if "colour: red" in text)

    errors = errors_of(dsn, path)

    assert errors == [
        "enterprises[0] (91370114MA3CK7LB5R) sites[0] (TF-1) sensors[7] (TK102.PT) colour: "
        "unknown key (allowed: tag, kind, unit, range, limits, interval_s, gateway, rules) "
        f"(line {line})"]


def test_yaml_syntax_error_names_line_and_column(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text('regions:\n  - {code: "370000", name: 山东省\nenterprises: []\n',
                    encoding="utf-8")

    errors = errors_of(dsn, path)

    assert len(errors) == 1
    assert errors[0].startswith("invalid YAML at line 3, column ")
    assert "flow mapping started at line 2, column 5" in errors[0]


def test_duplicate_yaml_key_is_an_error(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    text = yaml.safe_dump(base(), allow_unicode=True, sort_keys=False)
    path.write_text(text.replace("  grade: 2\n", "  grade: 2\n    grade: 1\n", 1),
                    encoding="utf-8")

    errors = errors_of(dsn, path)

    assert len(errors) == 1 and "duplicate key 'grade'" in errors[0], errors


def test_not_a_mapping_and_empty_files(dsn: str, tmp_path: Path) -> None:
    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    (tmp_path / "empty.yaml").write_text("# nothing yet\n", encoding="utf-8")

    assert errors_of(dsn, tmp_path / "list.yaml") == [
        "file: expected a mapping of keys to values (got a list)"]
    assert "empty" in errors_of(dsn, tmp_path / "empty.yaml")[0]


def test_one_bad_sensor_among_good_ones_changes_nothing(dsn: str, tmp_path: Path) -> None:
    import_file(dsn, write(tmp_path, base()))
    before = snapshot(dsn)
    doc = base()
    doc["regions"].append({"code": "370112", "name": "历城区", "parent": "370100"})
    _ent(doc)["name"] = "济南测试化工股份有限公司"
    _sensor(doc, 0, 0)["limits"]["hh"] = 17.5                      # a good change
    _ent(doc)["sites"][1]["sensors"].append(level("TK201.LT3"))    # a good new sensor
    _ent(doc)["sites"][1]["sensors"].append(level("TK201.LT4", hh=21))  # the bad one

    errors = errors_of(dsn, write(tmp_path, doc))

    assert [strip_line(e) for e in errors] == [
        f"{E0} sites[1] (TF-2) sensors[3] (TK201.LT4) limits.hh: 21 is outside range [0, 20]"]
    assert snapshot(dsn) == before


def test_a_database_error_rolls_everything_back(dsn: str, tmp_path: Path) -> None:
    """A failure on the last table written (sensors) must undo regions, sites, gateways."""
    import_file(dsn, write(tmp_path, base()))
    before = snapshot(dsn)
    doc = base()
    doc["regions"].append({"code": "370112", "name": "历城区", "parent": "370100"})
    _ent(doc)["gateways"].append({"id": "gw-03"})
    _ent(doc)["sites"].append({"id": "TF-3", "name": "罐区三", "kind": "major_hazard",
                               "grade": 4, "sensors": [level("BOOM.LT", "gw-03")]})
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE FUNCTION test_refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.tag = 'BOOM.LT' THEN RAISE EXCEPTION 'refused by test trigger'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_boom BEFORE INSERT ON sensors
                FOR EACH ROW EXECUTE FUNCTION test_refuse_boom();""")
    try:
        errors = errors_of(dsn, write(tmp_path, doc))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER test_refuse_boom ON sensors; "
                         "DROP FUNCTION test_refuse_boom()")

    assert len(errors) == 1
    assert errors[0].startswith("database: ") and "refused by test trigger" in errors[0]
    assert snapshot(dsn) == before


def test_unreachable_database_is_a_registry_error(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    missing = with_database(SERVER, f"hw_test_registry_missing_{secrets.token_hex(4)}")

    with pytest.raises(RegistryError) as caught:
        import_file(missing, path)

    assert caught.value.errors[0].startswith("database: ")
    assert "does not exist" in caught.value.errors[0]


def test_regions_already_in_the_database_count_as_known(dsn: str, tmp_path: Path) -> None:
    import_file(dsn, write(tmp_path, base()))
    doc = base()
    doc["regions"] = [{"code": "370112", "name": "历城区", "parent": "370100"}]  # parent in DB
    _ent(doc).update(region="370112")

    summary = import_file(dsn, write(tmp_path, doc))

    assert (summary.regions.new, summary.enterprises.updated) == (1, 1)


def test_load_file_checks_outside_regions_only_when_told_them(tmp_path: Path) -> None:
    doc = base()
    doc["regions"] = []  # every region reference now points outside the file
    path = write(tmp_path, doc)

    assert load_file(path).enterprises[0].region == "370105"  # no database: not checkable
    with pytest.raises(RegistryError) as caught:
        load_file(path, known_regions={"370000": None})
    assert [strip_line(e) for e in caught.value.errors] == [
        f"{E0} region: unknown region 370105 (not in this file nor in the database)"]
    assert load_file(path, known_regions={"370105": None}).regions == []


# ---------------------------------------------------------------------------- onboarding


def _add_unregistered(dsn: str, rows: list[tuple[str, str, str, int, float | None]]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with psycopg.connect(dsn) as conn:
        conn.cursor().executemany(
            "INSERT INTO unregistered_tags VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(ent, gw, tag, now - timedelta(hours=1), now, count, value)
             for ent, gw, tag, count, value in rows])


def test_pending_lists_unregistered_tags_and_import_resolves_them(dsn: str, tmp_path: Path) -> None:
    import_file(dsn, write(tmp_path, base()))
    _add_unregistered(dsn, [
        (OTHER, "gw-01", "X.PT", 3, 0.31),
        (ENT, "gw-02", "GT102.LEL", 7, 1.5),        # registered gateway, new tag
        (ENT, "gw-01", "TK301.LT1", 12, None),     # registered gateway, new tag
        (ENT, "gw-09", "TK301.LT1", 2, 4.0),       # the gateway itself is unregistered
    ])

    rows = pending(dsn, None)

    assert [(r.enterprise_code, r.gateway_code, r.tag) for r in rows] == [
        (ENT, "gw-01", "TK301.LT1"), (ENT, "gw-02", "GT102.LEL"), (ENT, "gw-09", "TK301.LT1"),
        (OTHER, "gw-01", "X.PT")]
    assert (rows[0].count, rows[0].last_value, rows[1].last_value) == (12, None, 1.5)
    assert rows[0].last_seen - rows[0].first_seen == timedelta(hours=1)
    assert [r.tag for r in pending(dsn, OTHER)] == ["X.PT"]
    assert pending(dsn, "91370000000000000X") == []

    doc = base()
    _ent(doc)["sites"][0]["sensors"].append(level("TK301.LT1"))  # on gw-01
    summary = import_file(dsn, write(tmp_path, doc))

    assert summary.pending_resolved == 1
    assert summary.describe().endswith("; 1 pending tag(s) now registered")
    left = [(r.enterprise_code, r.gateway_code, r.tag) for r in pending(dsn, None)]
    # ingest accepts a registered tag from any registered gateway of its enterprise, so only
    # the row from the unregistered gateway gw-09 is still waiting.
    assert left == [(ENT, "gw-02", "GT102.LEL"), (ENT, "gw-09", "TK301.LT1"),
                    (OTHER, "gw-01", "X.PT")]
