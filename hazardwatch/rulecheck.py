"""`hazardwatch rules check` and `rules explain`: the rule packs against the registry.

The registry comes from a YAML file (hazardwatch.registry.load_file) or from the database;
the packs from rules/packs (or another directory). Pure formatting lives here so the CLI
stays a thin shell.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rules.model import PARAM_FIELDS, Cond, SensorRules
from rules.packs import (
    Pack,
    SensorSpec,
    check_sensor,
    cond_off_reason,
    effective_rules,
    fed_conditions,
    format_value,
)


@dataclass(frozen=True)
class RegisteredSensor:
    """One sensor with the registry context `rules check` and `rules explain` name."""

    enterprise_code: str
    enterprise_name: str
    site_code: str
    site_name: str
    site_kind: str
    site_grade: int
    gateway: str | None
    spec: SensorSpec

    @property
    def where(self) -> str:
        return f"enterprise {self.enterprise_code} site {self.site_code} sensor {self.spec.tag}"


def sensors_from_file(path: Path) -> list[RegisteredSensor]:
    """The sensors of a registry file; raises RegistryError when the file is wrong."""
    from hazardwatch.registry import load_file

    reg = load_file(path)
    return [
        RegisteredSensor(
            e.code, e.name, s.id, s.name, s.kind, s.grade, x.gateway,
            SensorSpec(tag=x.tag, kind=x.kind, unit=x.unit, range_lo=x.range[0],
                       range_hi=x.range[1], ll=x.limits.ll, l=x.limits.l, h=x.limits.h,
                       hh=x.limits.hh, interval_s=x.interval_s, rules=dict(x.rules)))
        for e in reg.enterprises for s in e.sites for x in s.sensors
    ]


_SENSORS_SQL = """
    SELECT e.code, e.name, st.code, st.name, st.kind::text, st.grade, g.code,
           s.tag, s.kind, s.unit, s.range_lo, s.range_hi, s.ll, s.l, s.h, s.hh, s.interval_s,
           s.rules
    FROM sensors s
    JOIN sites st ON st.id = s.site_id
    JOIN enterprises e ON e.id = s.enterprise_id
    LEFT JOIN gateways g ON g.id = s.gateway_id
    WHERE %(tag)s::text IS NULL OR s.tag = %(tag)s
    ORDER BY e.code, st.code, s.tag"""


def sensors_from_database(dsn: str, tag: str | None = None) -> list[RegisteredSensor]:
    from hazardwatch.db import connect_sync

    with connect_sync(dsn) as conn:
        rows = conn.execute(_SENSORS_SQL, {"tag": tag}).fetchall()
    return [
        RegisteredSensor(ecode, ename, scode, sname, skind, grade, gw,
                         SensorSpec(tag=t, kind=kind, unit=unit, range_lo=lo, range_hi=hi, ll=ll,
                                    l=low, h=high, hh=hh, interval_s=float(interval),
                                    rules=rules if rules is not None else {}))
        for (ecode, ename, scode, sname, skind, grade, gw, t, kind, unit, lo, hi, ll, low, high,
             hh, interval, rules) in rows
    ]


def all_tags_from_database(dsn: str) -> list[str]:
    from hazardwatch.db import connect_sync

    with connect_sync(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT tag FROM sensors ORDER BY tag")]


# ---------------------------------------------------------------------------- check


@dataclass
class CheckReport:
    packs: int
    causes: int
    sensors: int
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = f"{self.packs} packs, {self.causes} causes, {self.sensors} sensors"
        warned = (f"{len(self.warnings)} warning{'s' if len(self.warnings) != 1 else ''}"
                  if self.warnings else "")
        if self.ok:
            return f"{head}: ok" + (f" ({warned})" if warned else "")
        errs = f"{len(self.errors)} error{'s' if len(self.errors) != 1 else ''}"
        return f"{head}: {errs}" + (f", {warned}" if warned else "")


def check(packs: Mapping[str, Pack], sensors: Sequence[RegisteredSensor], source: str) -> CheckReport:
    report = CheckReport(len(packs), sum(len(p.causes) for p in packs.values()), len(sensors))
    for sensor in sensors:
        pack = packs.get(sensor.site_kind)
        if pack is None:
            report.errors.append(f"{source}: {sensor.where} site kind: no rule pack for "
                                 f"{sensor.site_kind!r}")
            continue
        for issue in check_sensor(pack, sensor.spec):
            line = f"{source}: {sensor.where} {issue.field}: {issue.reason}"
            if issue.severity == "error":
                report.errors.append(line)
            else:
                report.warnings.append(f"warning: {line}")
    return report


# ---------------------------------------------------------------------------- explain


class ExplainError(Exception):
    pass


def pick(sensors: Sequence[RegisteredSensor], tag: str, enterprise: str | None, source: str,
         known_tags: Sequence[str] = ()) -> RegisteredSensor:
    """The one sensor `tag` names (within `enterprise` when given)."""
    found = [s for s in sensors if s.spec.tag == tag]
    if enterprise is not None:
        mine = [s for s in found if s.enterprise_code == enterprise]
        if not mine:
            others = ", ".join(sorted({s.enterprise_code for s in found}))
            raise ExplainError(f"no sensor {tag} of enterprise {enterprise} in {source}"
                               + (f" (it is registered by: {others})" if others else ""))
        found = mine
    if not found:
        guess = difflib.get_close_matches(tag, list(known_tags), n=3)
        hint = f"; did you mean {', '.join(guess)}?" if guess else ""
        raise ExplainError(f"no sensor {tag} in {source}{hint}")
    if len(found) > 1:
        listed = "; ".join(f"{s.enterprise_code} ({s.enterprise_name})" for s in found)
        raise ExplainError(f"tag {tag} is registered by {len(found)} enterprises: {listed}; "
                           "choose one with --enterprise CODE")
    return found[0]


def _levels(cause_base: Mapping[Cond, object], conds: frozenset[Cond], rules: SensorRules,
            gateway: str | None) -> list[str]:
    out = []
    for cond, level in cause_base.items():
        if cond not in conds:
            continue
        text = f"{cond.value} → {level.name.lower()}"
        if cond == Cond.OFFLINE:
            text += f" (of its gateway{' ' + gateway if gateway else ''})"
        else:
            off = cond_off_reason(rules, cond)
            if off:
                text += f" (off here: {off})"
        out.append(text)
    return out


def explain(packs: Mapping[str, Pack], sensor: RegisteredSensor, source: str) -> list[str]:
    """The lines `rules explain` prints for one sensor."""
    spec = sensor.spec
    pack = packs[sensor.site_kind]
    rules, prov = effective_rules(pack, spec)
    lines = [
        f"{spec.tag}: {spec.kind}, unit {spec.unit or '-'}, range "
        f"[{format_value(spec.range_lo)}, {format_value(spec.range_hi)}], every "
        f"{format_value(spec.interval_s)} s, gateway {sensor.gateway or '-'}",
        f"  enterprise {sensor.enterprise_code} {sensor.enterprise_name}",
        f"  site {sensor.site_code} {sensor.site_name} ({sensor.site_kind}, grade {sensor.site_grade})",
        f"  registry: {source}; rule pack: {pack.source or pack.site_kind}",
    ]
    issues = check_sensor(pack, spec)
    if issues:
        lines.append("")
        lines.extend(f"{i.severity}: {i.field}: {i.reason}" for i in issues)
    lines += ["", "effective rules:", f"  {'field':<20} {'value':>12}  from"]
    for name in PARAM_FIELDS:
        lines.append(f"  {name:<20} {format_value(getattr(rules, name)):>12}  {prov[name]}")
    lines += ["", "feeds:"]
    fed = 0
    for cause in pack.causes:
        conds = fed_conditions(pack, cause, spec.kind)
        if not conds:
            continue
        fed += 1
        lines.append(f"  {cause.name} [{cause.kind.value}]: {cause.title_zh} / {cause.title_en}")
        lines.append("    " + ", ".join(_levels(cause.base, conds, rules, sensor.gateway)))
        adjust = cause.grade_adjust.get(sensor.site_grade, 0)
        lines.append(
            f"    agree: {cause.agree_n} sources per {cause.agree_group} at ≥ "
            f"{cause.agree_min.name.lower()} → {cause.agree_bonus:+d}; active ≥ "
            f"{format_value(cause.duration_s)} s → {cause.duration_bonus:+d}; grade "
            f"{sensor.site_grade} → {adjust:+d}; max {cause.max_level.name.lower()}")
    if not fed:
        lines.append("  (no cause: this sensor raises nothing)")
    return lines
