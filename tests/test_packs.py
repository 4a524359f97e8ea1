"""Rule packs as data: loading, validation messages, layering with provenance, cause lookup,
and the `hazardwatch rules check` / `rules explain` commands."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dbutil import fresh_database
from harness import HAZARDWATCH

import rules.packs
from hazardwatch.registry import load_file
from rules.grading import ActiveCondition, grade
from rules.model import PARAM_FIELDS, Cond, Level, WarningKind
from rules.packs import (
    PCT_FIELDS,
    SITE_KINDS,
    PackError,
    SensorSpec,
    check_sensor,
    effective_rules,
    load_packs,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "registry.yaml"
E2E = ROOT / "tests" / "data" / "registry_e2e.yaml"
SHIPPED = Path(rules.packs.__file__).resolve().parent / "packs"


def run(args, env=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HW_")}
    full_env.update(env or {})
    return subprocess.run([HAZARDWATCH, *args], env=full_env, capture_output=True, text=True,
                          check=check, timeout=60)


def spec(tag="TK1.LT", kind="level", unit="m", lo=0.0, hi=20.0, ll=None, l=None, h=None,  # noqa: E741
         hh=None, interval_s=10.0, **rules) -> SensorSpec:
    return SensorSpec(tag=tag, kind=kind, unit=unit, range_lo=lo, range_hi=hi, ll=ll, l=l, h=h,
                      hh=hh, interval_s=interval_s, rules=rules)


@pytest.fixture(scope="module")
def packs():
    return load_packs()


def pack_dir(tmp_path: Path, **files: str) -> Path:
    """A copy of the shipped packs with some files replaced (name without .yaml → text)."""
    d = tmp_path / "packs"
    shutil.copytree(SHIPPED, d)
    for name, text in files.items():
        (d / f"{name}.yaml").write_text(text, encoding="utf-8")
    return d


def pack_errors(tmp_path: Path, text: str, name: str = "major_hazard") -> list[str]:
    with pytest.raises(PackError) as caught:
        load_packs(pack_dir(tmp_path, **{name: text}))
    assert caught.value.errors
    return caught.value.errors


# A small valid pack to break in the error tests.
SMALL = """\
site_kind: major_hazard
title: small
defaults:
  on_delay_s: 5
  off_delay_s: 20
  deadband_pct: 1
sensor_kinds:
  level:
    on_delay_s: 7
    deadband: 0.5
    h: 15
    hh: 19
    stuck_eps_pct: 0.5
  gas_lel: {unit: "%LEL", h: 25, hh: 50}
causes:
  - name: overfill
    title_zh: 高液位
    title_en: High level
    kind: process
    sensor_kinds: [level]
    base: {h: yellow, hh: orange}
  - name: toxic_gas
    title_zh: 有毒
    title_en: Toxic
    kind: process
    sensor_kinds: [gas_lel]
    base: {h: yellow, hh: orange}
    agree: {n: 2, min: yellow, bonus: 1, group: site}
  - name: sensor_fault
    title_zh: 故障
    title_en: Fault
    kind: sensor_fault
    sensor_kinds: ["*"]
    base: {stuck: blue, out_of_range: blue, bad_quality: blue}
"""


# ---------------------------------------------------------------------------- shipped packs


def test_shipped_packs_load_with_every_site_kind(packs):
    assert set(packs) == set(SITE_KINDS)
    names = {kind: [c.name for c in p.causes] for kind, p in packs.items()}
    assert {"overfill", "low_level", "over_temperature", "overpressure", "underpressure",
            "combustible_gas", "toxic_gas", "sensor_fault", "data_interruption"} <= set(
        names["major_hazard"])
    assert {"overpressure", "pressure_loss", "methane_adjacent", "abnormal_flow",
            "sensor_fault", "data_interruption"} <= set(names["gas_pipeline"])
    assert {"bag_break", "blockage", "hopper_over_temperature", "sparks", "discharge_fault",
            "sensor_fault", "data_interruption"} <= set(names["dust_explosion"])
    for pack in packs.values():
        fault = next(c for c in pack.causes if c.name == "sensor_fault")
        gone = next(c for c in pack.causes if c.name == "data_interruption")
        assert fault.kind == WarningKind.SENSOR_FAULT and fault.sensor_kinds == {"*"}
        assert fault.conditions == {Cond.STUCK, Cond.OUT_OF_RANGE, Cond.BAD_QUALITY}
        assert gone.kind == WarningKind.DATA_INTERRUPTION and gone.sensor_kinds == {"*"}
        assert gone.conditions == {Cond.NO_DATA, Cond.OFFLINE}


def test_installed_packs_are_inside_the_package():
    """A non-editable install must find the pack files inside site-packages/rules/packs."""
    assert {p.name for p in SHIPPED.glob("*.yaml")} >= {f"{k}.yaml" for k in SITE_KINDS}
    if "site-packages" in str(SHIPPED):
        assert SHIPPED.parent.parent.name == "site-packages"


def test_overfill_fits_the_end_to_end_expectations(packs):
    """tests/test_rules_e2e.py: TK1.LT 0-20 m, H 16, HH 18, 10 s, site grade 2."""
    pack = packs["major_hazard"]
    overfill = next(c for c in pack.causes if c.name == "overfill")
    assert overfill.base == {Cond.TREND_HH: Level.BLUE, Cond.H: Level.YELLOW,
                             Cond.HH: Level.ORANGE}
    assert overfill.grade_adjust[2] == 0
    r, _ = effective_rules(pack, spec(ll=0.5, l=1, h=16, hh=18))
    assert r.on_delay_s <= 30 and r.trend_lead_s == 900 and not math.isnan(r.trend_tau_s)
    ramp_per_min = 0.005 * 60  # the test's slow ramp, m/min
    assert math.isnan(r.rate_rise_per_min) or r.rate_rise_per_min >= 3 * ramp_per_min
    for cond in (Cond.RATE_RISE, Cond.DEVIATION, Cond.STUCK):
        assert overfill not in pack.cause_for("level", cond)

    def level(*conds):
        return grade(overfill, 2, [ActiveCondition(i, "TK1", c) for i, c in enumerate(conds)], 0)
    assert level(Cond.H) == Level.YELLOW
    assert level(Cond.HH) == Level.ORANGE
    assert level(Cond.TREND_HH) == Level.BLUE
    assert level(Cond.H, Cond.H) == Level.ORANGE   # two level instruments of one tank agree


def test_combustible_gas_two_detectors_over_25_lel_raise_a_level(packs):
    pack = packs["major_hazard"]
    gas = pack.cause_for("gas_lel", Cond.H)
    assert [c.name for c in gas] == ["combustible_gas"]
    r, prov = effective_rules(pack, spec("GT1.LEL", "gas_lel", "%LEL", 0, 100))
    assert (r.h, r.hh) == (25, 50) and prov["h"] == "pack major_hazard sensor kind gas_lel"
    one = [ActiveCondition(1, "GT1", Cond.H)]
    two = one + [ActiveCondition(2, "GT2", Cond.H)]
    assert grade(gas[0], 3, one, 0) == Level.YELLOW
    assert grade(gas[0], 3, two, 0) == Level.ORANGE
    pipeline, _ = effective_rules(packs["gas_pipeline"], spec("VW1.CH4", "gas_lel", "%LEL", 0, 100))
    assert (pipeline.h, pipeline.hh) == (20, 35)


@pytest.mark.parametrize("registry", [EXAMPLE, E2E], ids=["example", "e2e"])
def test_every_registered_sensor_kind_has_a_pack_section(packs, registry):
    reg = load_file(registry)
    for e in reg.enterprises:
        for site in e.sites:
            for x in site.sensors:
                assert x.kind in packs[site.kind].sensor_kinds, (site.kind, x.tag, x.kind)


def test_every_sensor_rules_field_is_validated():
    assert set(rules.packs.PARAMS) == set(PARAM_FIELDS) | set(PCT_FIELDS)


def test_digital_and_counter_kinds_have_no_slope_or_flat_line(packs):
    pack = packs["dust_explosion"]
    for kind, rng in (("fault", (0, 1)), ("running", (0, 1)), ("spark_count", (0, 1000))):
        r, _ = effective_rules(pack, spec("DC1.X", kind, "", *rng))
        assert math.isnan(r.stuck_window_s) and math.isnan(r.trend_tau_s), kind
        assert math.isnan(r.rate_rise_per_min) and math.isnan(r.rate_fall_per_min), kind


# ---------------------------------------------------------------------------- cause_for


def test_cause_for_by_kind_condition_and_wildcard(packs):
    mh = packs["major_hazard"]
    assert [c.name for c in mh.cause_for("level", Cond.H)] == ["overfill"]
    assert [c.name for c in mh.cause_for("level", Cond.LL)] == ["low_level"]
    assert [c.name for c in mh.cause_for("level", Cond.STUCK)] == ["sensor_fault"]
    assert [c.name for c in mh.cause_for("level", Cond.NO_DATA)] == ["data_interruption"]
    assert [c.name for c in mh.cause_for("pressure", Cond.LL)] == ["underpressure"]
    # a kind without a section still gets faults and interruptions, never process causes
    assert [c.name for c in mh.cause_for("humidity", Cond.BAD_QUALITY)] == ["sensor_fault"]
    assert mh.cause_for("humidity", Cond.H) == ()
    assert mh.cause_for("level", Cond.DEVIATION) == ()
    # per-kind conditions: ΔP low feeds bag_break, ΔP high feeds blockage, dust high bag_break
    dust = packs["dust_explosion"]
    assert [c.name for c in dust.cause_for("differential_pressure", Cond.LL)] == ["bag_break"]
    assert [c.name for c in dust.cause_for("differential_pressure", Cond.H)] == ["blockage"]
    assert [c.name for c in dust.cause_for("dust_concentration", Cond.H)] == ["bag_break"]
    assert dust.cause_for("dust_concentration", Cond.LL) == ()
    # offline goes to every cause that lists it (the engine applies it per gateway)
    for pack in packs.values():
        assert [c.name for c in pack.causes if Cond.OFFLINE in c.conditions] == [
            "data_interruption"]


# ---------------------------------------------------------------------------- layering


def test_layering_order_and_provenance(tmp_path):
    pack = load_packs(pack_dir(tmp_path, major_hazard=SMALL))["major_hazard"]
    r, prov = effective_rules(pack, SensorSpec(
        tag="TK1.LT", kind="level", unit="m", range_lo=0, range_hi=20, ll=0.5, l=1, h=None,
        hh=18, interval_s=10, rules={"on_delay_s": 3, "l": 2}))
    # built-in default (nothing sets it)
    assert (r.trend_lead_s, prov["trend_lead_s"]) == (900, "built-in default")
    # pack defaults
    assert (r.off_delay_s, prov["off_delay_s"]) == (20, "pack major_hazard defaults")
    # sensor kind section beats pack defaults (deadband 0.5 over 1 % of 20 = 0.2)
    assert (r.deadband, prov["deadband"]) == (0.5, "pack major_hazard sensor kind level")
    # a pack limit is a default: used where the registry has none ...
    assert (r.h, prov["h"]) == (15, "pack major_hazard sensor kind level")
    # ... and the registry's limit wins where it has one (hh 18 over the pack's 19)
    assert (r.hh, prov["hh"]) == (18, "registry limits")
    assert (r.ll, prov["ll"]) == (0.5, "registry limits")
    # the sensor's own rules beat everything: on_delay 3 over kind 7 over defaults 5; l 2 over 1
    assert (r.on_delay_s, prov["on_delay_s"]) == (3, "registry sensor rules")
    assert (r.l, prov["l"]) == (2, "registry sensor rules")
    assert (r.range_lo, r.range_hi, r.interval_s) == (0, 20, 10)
    assert prov["range_hi"] == "registry range" and prov["interval_s"] == "registry interval_s"


def test_pct_figures_become_absolute_on_the_sensor_span(tmp_path):
    text = SMALL.replace("  level:\n", "  level:\n    rate_fall_pct_per_min: 5\n"
                                       "    rate_rise_per_min: 2\n    rate_rise_pct_per_min: 50\n")
    pack = load_packs(pack_dir(tmp_path, major_hazard=text))["major_hazard"]
    # span 7 (range -1..6): stuck_eps_pct 0.5 → 0.035, rate_fall 5 %/min → 0.35 per min
    r, prov = effective_rules(pack, spec(kind="level", lo=-1, hi=6))
    assert r.stuck_eps == pytest.approx(0.035)
    assert r.rate_fall_per_min == pytest.approx(0.35)
    assert prov["rate_fall_per_min"] == ("pack major_hazard sensor kind level "
                                         "(rate_fall_pct_per_min 5 % of span 7)")
    # absolute beats _pct at the same layer
    assert (r.rate_rise_per_min, prov["rate_rise_per_min"]) == (2, "pack major_hazard sensor kind level")
    # pack defaults' deadband_pct 1 applies to a kind that sets no deadband: 1 % of 100
    gas, prov = effective_rules(pack, spec("GT1", "gas_lel", "%LEL", 0, 100))
    assert gas.deadband == pytest.approx(1.0) and "deadband_pct 1 % of span 100" in prov["deadband"]
    # a later layer's _pct beats an earlier absolute; null turns a rate off
    r, prov = effective_rules(pack, spec(lo=0, hi=20, deadband_pct=2, rate_fall_pct_per_min=None))
    assert r.deadband == pytest.approx(0.4)
    assert prov["deadband"] == "registry sensor rules (deadband_pct 2 % of span 20)"
    assert math.isnan(r.rate_fall_per_min) and prov["rate_fall_per_min"] == "registry sensor rules"


def test_invalid_sensor_overrides_are_skipped_not_raised(packs):
    pack = packs["major_hazard"]
    r, prov = effective_rules(pack, spec(on_delay_s=-5, deadbnad=1, off_delay_s="soon"))
    assert r.on_delay_s == 10 and prov["on_delay_s"] == "pack major_hazard defaults"
    assert r.off_delay_s == 30


# ---------------------------------------------------------------------------- pack errors


def test_small_pack_is_valid(tmp_path):
    packs = load_packs(pack_dir(tmp_path, major_hazard=SMALL))
    assert [c.name for c in packs["major_hazard"].causes] == ["overfill", "toxic_gas",
                                                              "sensor_fault"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    # unknown keys, top level, in a section, in a cause, in agree
    ("title: small", "title: small\ndefualts: {}",
     "major_hazard.yaml: defualts: unknown key (allowed: site_kind, title, defaults, "
     "sensor_kinds, causes); did you mean 'defaults'?"),
    ("    deadband: 0.5", "    deadbnad: 0.5",
     "major_hazard.yaml: sensor_kinds.level.deadbnad: unknown parameter; did you mean 'deadband'?"),
    ("    base: {h: yellow, hh: orange}\n  - name: toxic_gas",
     "    base: {h: yellow, hh: orange}\n    max_levle: red\n  - name: toxic_gas",
     "major_hazard.yaml: causes[0] (overfill).max_levle: unknown key"),
    ("group: site}", "group: site, bouns: 1}",
     "major_hazard.yaml: causes[1] (toxic_gas).agree.bouns: unknown key"),
    # levels are words
    ("kind: process\n    sensor_kinds: [gas_lel]\n    base: {h: yellow, hh: orange}",
     "kind: process\n    sensor_kinds: [gas_lel]\n    base: {h: yellow, hh: purple}",
     "major_hazard.yaml: causes[1] (toxic_gas).base.hh: 'purple' is not a level "
     "(blue, yellow, orange, red)"),
    ("min: yellow", "min: 2",
     "major_hazard.yaml: causes[1] (toxic_gas).agree.min: 2 is not a level"),
    # conditions
    ("base: {stuck: blue,", "base: {stuk: blue,",
     "major_hazard.yaml: causes[2] (sensor_fault).base.stuk: 'stuk' is not a condition (hh, h,"),
    # process cause with a fault condition, fault cause with a process condition
    ("    base: {h: yellow, hh: orange}\n  - name: toxic_gas",
     "    base: {h: yellow, hh: orange, stuck: blue}\n  - name: toxic_gas",
     "major_hazard.yaml: causes[0] (overfill).base.stuck: stuck is a sensor_fault condition; "
     "a process cause takes only hh, h, l, ll, rate_rise"),
    ("bad_quality: blue}", "bad_quality: blue, h: blue}",
     "major_hazard.yaml: causes[2] (sensor_fault).base.h: h is a process condition; "
     "a sensor_fault cause takes only stuck, out_of_range, bad_quality"),
    ("bad_quality: blue}", "bad_quality: blue, no_data: blue}",
     "causes[2] (sensor_fault).base.no_data: no_data is a data_interruption condition"),
    # wrong types and values
    ("  on_delay_s: 5", "  on_delay_s: ten",
     "major_hazard.yaml: defaults.on_delay_s: expected a number (got 'ten')"),
    ("  on_delay_s: 5", "  on_delay_s: -5",
     "major_hazard.yaml: defaults.on_delay_s: must be ≥ 0 (got -5)"),
    ("  on_delay_s: 5", "  on_delay_s: true",
     "major_hazard.yaml: defaults.on_delay_s: expected a number (got true)"),
    ("  on_delay_s: 5", "  on_delay_s: null",
     "major_hazard.yaml: defaults.on_delay_s: null is not allowed here"),
    ("  on_delay_s: 5", "  deviation: 1",
     "major_hazard.yaml: defaults.deviation: expected true or false (got 1)"),
    ("  on_delay_s: 5", "  interval_s: 5",
     "major_hazard.yaml: defaults.interval_s: is the sensor's own, set in the registry"),
    ("group: site}", "group: plant}",
     "major_hazard.yaml: causes[1] (toxic_gas).agree.group: 'plant' is not a group (site, equipment)"),
    ("n: 2,", "n: 2.5,",
     "major_hazard.yaml: causes[1] (toxic_gas).agree.n: expected a whole number (got 2.5)"),
    ("kind: sensor_fault", "kind: fault",
     "major_hazard.yaml: causes[2] (sensor_fault).kind: 'fault' is not a warning kind "
     "(process, sensor_fault, data_interruption)"),
    ("    h: 15\n    hh: 19", "    h: 20\n    hh: 19",
     "major_hazard.yaml: sensor_kinds.level.h: 20 must be ≤ hh (19)"),
    # references
    ("sensor_kinds: [level]", "sensor_kinds: [levle]",
     "major_hazard.yaml: causes[0] (overfill).sensor_kinds[0]: 'levle' has no section in "
     "sensor_kinds; did you mean 'level'?"),
    ("  - name: toxic_gas", "  - name: overfill",
     "major_hazard.yaml: causes[1] (overfill).name: duplicate cause name 'overfill', first used "
     "by causes[0]"),
    ("site_kind: major_hazard", "site_kind: gas_pipeline",
     "major_hazard.yaml: site_kind: 'gas_pipeline' does not match the file name"),
    ("    title_en: High level\n", "",
     "major_hazard.yaml: causes[0] (overfill).title_en: missing (required)"),
    ("  - name: sensor_fault", "  - name: sensor_fault\n    grade_adjust: {1: 1, 2: 0}",
     "major_hazard.yaml: causes[2] (sensor_fault).grade_adjust: missing grade 3, 4"),
])
def test_pack_errors_name_file_cause_and_field(tmp_path, old, new, expected):
    assert old in SMALL, old
    errors = pack_errors(tmp_path, SMALL.replace(old, new, 1))
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_at_once_with_lines(tmp_path):
    text = (SMALL.replace("hh: orange}\n  - name: toxic_gas", "hh: purple}\n  - name: toxic_gas")
            .replace("  on_delay_s: 5", "  on_delay_s: ten")
            .replace("base: {stuck: blue,", "base: {stuk: blue,"))
    errors = pack_errors(tmp_path, text)
    assert len(errors) == 3, errors
    assert all(e.startswith("major_hazard.yaml: ") and "(line " in e for e in errors)
    assert "defaults.on_delay_s" in errors[0] and errors[0].endswith("(line 4)")


def test_errors_of_several_files_and_missing_packs(tmp_path):
    d = pack_dir(tmp_path, gas_pipeline=SMALL.replace("site_kind: major_hazard",
                                                      "site_kind: gas_pipeline")
                 .replace("  on_delay_s: 5", "  on_delay_s: -1"),
                 major_hazard=SMALL.replace("deadband: 0.5", "deadband: 0.5\n    deadband: 1"))
    (d / "dust_explosion.yaml").unlink()
    with pytest.raises(PackError) as caught:
        load_packs(d)
    errors = caught.value.errors
    assert any(e.startswith("gas_pipeline.yaml: defaults.on_delay_s: must be ≥ 0") for e in errors)
    assert any(e.startswith("major_hazard.yaml: invalid YAML") and "duplicate key 'deadband'" in e
               for e in errors), errors
    assert any("no pack for site kind dust_explosion" in e for e in errors)


# ---------------------------------------------------------------------------- check_sensor


def test_check_sensor_reports_bad_overrides(packs):
    pack = packs["major_hazard"]
    issues = check_sensor(pack, spec(h=16, hh=18, on_delay_s=-5, deadbnad=1, trend_tau_s="5 min",
                                     deviation=True))
    by_field = {i.field: i for i in issues}
    assert by_field["rules.on_delay_s"].severity == "error"
    assert "must be ≥ 0 (got -5)" in by_field["rules.on_delay_s"].reason
    assert "unknown parameter; did you mean 'deadband'?" in by_field["rules.deadbnad"].reason
    assert "expected a number" in by_field["rules.trend_tau_s"].reason
    assert "rules.deviation" not in by_field


def test_check_sensor_warns_and_checks_effective_limits(packs):
    mh = packs["major_hazard"]
    # no section for this kind: a warning, defaults apply
    (issue,) = check_sensor(mh, spec(kind="humidity", unit="%", lo=0, hi=100, h=80))
    assert (issue.severity, issue.field) == ("warning", "kind") and "no section" in issue.reason
    # the pack's %LEL limits on a ppm detector: range 0-10 puts H 25 outside, and a warning
    issues = check_sensor(mh, spec("GT1", "gas_lel", "ppm", 0, 10))
    assert any(i.severity == "error" and i.field == "h" and "outside range [0, 10]" in i.reason
               and "pack major_hazard sensor kind gas_lel" in i.reason for i in issues)
    assert any(i.severity == "warning" and i.field == "unit" for i in issues)
    # a registry HH below the pack's H: the order is wrong once layered
    issues = check_sensor(mh, spec("GT1", "gas_lel", "%LEL", 0, 100, hh=20))
    assert [(i.field, i.severity) for i in issues] == [("h", "error")]
    # a deadband that stops a limit from ever clearing
    issues = check_sensor(packs["dust_explosion"],
                          spec("DC1.SPARK", "spark_count", "次", 0, 1000, h=1, hh=3, deadband=5))
    assert [i.field for i in issues] == ["limits.h", "limits.hh"]
    assert issues[0].reason == ("1 clears only below -4 (deadband 5 from registry sensor rules), "
                                "outside range [0, 1000]: it can never clear")


# ---------------------------------------------------------------------------- CLI


def test_rules_check_passes_on_the_example_registry():
    res = run(["rules", "check", "--registry", str(EXAMPLE)])
    assert res.stdout.strip().splitlines()[-1] == "3 packs, 23 causes, 26 sensors: ok"


def test_rules_check_fails_naming_sensor_and_field(tmp_path):
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    sensors = doc["enterprises"][0]["sites"][0]["sensors"]
    sensors[0]["rules"] = {"on_delay_s": -10, "dedband_pct": 2}
    sensors[1]["kind"] = "radar_level"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    res = run(["rules", "check", "--registry", str(bad)], check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    where = f"{bad}: enterprise 91370114MA3CK7LB5R site TF-1 sensor TK101.LT1"
    assert f"{where} rules.on_delay_s: must be ≥ 0 (got -10)" in out
    assert f"{where} rules.dedband_pct: unknown parameter; did you mean 'deadband_pct'?" in out
    assert "warning: " in out and "sensor TK101.LT2 kind: 'radar_level' has no section" in out
    assert out.strip().splitlines()[-1] == "3 packs, 23 causes, 26 sensors: 2 errors, 1 warning"


def test_rules_check_reports_bad_packs(tmp_path):
    d = pack_dir(tmp_path, major_hazard=SMALL.replace("min: yellow", "min: purple"))
    res = run(["rules", "check", "--packs", str(d), "--registry", str(EXAMPLE)], check=False)
    assert res.returncode == 1
    assert "major_hazard.yaml: causes[1] (toxic_gas).agree.min: 'purple' is not a level" in res.stdout


def test_rules_explain_prints_values_and_provenance():
    out = run(["rules", "explain", "TK101.LT1", "--registry", str(EXAMPLE)]).stdout
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()
            if line.startswith("  ") and len(line.split()) >= 3}
    assert rows["hh"] == ["18", "registry limits"]
    assert rows["h"] == ["16", "registry limits"]
    assert rows["on_delay_s"] == ["10", "pack major_hazard defaults"]
    assert rows["trend_tau_s"] == ["300", "pack major_hazard sensor kind level"]
    assert rows["deadband"] == ["0.2", "pack major_hazard defaults (deadband_pct 1 % of span 20)"]
    assert rows["rate_rise_per_min"] == ["off", "built-in default"]
    assert "overfill [process]" in out and "trend_hh → blue, h → yellow, hh → orange" in out
    assert "grade 2 → +0" in out
    assert "offline → yellow (of its gateway gw-dcs)" in out


def test_rules_explain_ambiguous_tag_lists_enterprises(tmp_path):
    text = E2E.read_text(encoding="utf-8").replace("tag: TK9.LT", "tag: TK1.LT")
    reg = tmp_path / "reg.yaml"
    reg.write_text(text, encoding="utf-8")
    res = run(["rules", "explain", "TK1.LT", "--registry", str(reg)], check=False)
    assert res.returncode == 1
    assert "TK1.LT is registered by 2 enterprises" in res.stderr
    assert "91370105MA3C000043" in res.stderr and "91370105MA3C000056" in res.stderr
    assert "--enterprise" in res.stderr
    ok = run(["rules", "explain", "TK1.LT", "--registry", str(reg), "--enterprise",
              "91370105MA3C000056"]).stdout
    assert "site T9" in ok and "(major_hazard, grade 3)" in ok
    missing = run(["rules", "explain", "TK1.LX", "--registry", str(reg)], check=False)
    assert missing.returncode == 1 and "no sensor TK1.LX" in missing.stderr
    assert "did you mean TK1.LT" in missing.stderr


def test_rules_check_and_explain_from_the_database(tmp_path):
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    sensors = doc["enterprises"][0]["sites"][0]["sensors"]
    sensors[0]["rules"] = {"on_delay_s": 20, "deadband_pct": 2}
    reg = tmp_path / "reg.yaml"
    reg.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    with fresh_database("hw_test_packs") as dsn:
        env = {"HW_DATABASE_URL": dsn}
        empty = run(["rules", "check"], env=env)
        assert empty.stdout.strip().endswith("3 packs, 23 causes, 0 sensors: ok")
        run(["registry", "import", str(reg)], env=env)
        assert run(["rules", "check"], env=env).stdout.strip().endswith(
            "3 packs, 23 causes, 26 sensors: ok")
        out = run(["rules", "explain", "TK101.LT1"], env=env).stdout
        assert "registry: database" in out
        rows = {line.split()[0]: line.split(None, 2)[1:] for line in out.splitlines()
                if line.startswith("  ") and len(line.split()) >= 3}
        assert rows["hh"] == ["18", "registry limits"]
        assert rows["on_delay_s"] == ["20", "registry sensor rules"]
        assert rows["deadband"] == ["0.4", "registry sensor rules (deadband_pct 2 % of span 20)"]
        # a bad override written straight into the database is caught by check
        import psycopg

        with psycopg.connect(dsn) as conn:
            conn.execute("""UPDATE sensors SET rules = '{"stuck_window_s": "1h"}' """
                         "WHERE tag = 'VW01.CH4'")
        res = run(["rules", "check"], env=env, check=False)
        assert res.returncode == 1
        assert ("database: enterprise 91370112163058725A site MPA-EAST sensor VW01.CH4 "
                "rules.stuck_window_s: expected a number or null for off (got '1h')") in res.stdout
        missing = run(["rules", "explain", "TK101.LTX"], env=env, check=False)
        assert missing.returncode == 1 and "no sensor TK101.LTX in database" in missing.stderr
