"""Rule packs: per site kind, the rule defaults and the causes, as data (`rules/packs/*.yaml`).

Pure: reads YAML files, never a database. A pack gives

* `defaults` and `sensor_kinds.<kind>`: SensorRules fields (rules/model.py) for the sensors
  of its site kind, optionally as relative figures in percent of the sensor's span
  (`deadband_pct`, `rate_rise_pct_per_min`, `rate_fall_pct_per_min`, `stuck_eps_pct`);
* `causes`: how conditions of one site combine into one graded warning (CauseSpec).

The effective rules of one sensor are layered, each layer overriding the one before:

    SensorRules defaults < pack defaults < pack sensor_kinds[kind]
        < registry (range, limits that are set, interval_s) < the sensor's own `rules`

Within one layer an absolute field wins over its `_pct` form; across layers the later
layer wins whichever form it uses. `null` (None) means "off" (NaN) where a check can be
off (limits, rates, trend, stuck); elsewhere it is an error.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hazardwatch import yamlfile
from rules.model import (
    FAULT_CONDS,
    INTERRUPTION_CONDS,
    PARAM_FIELDS,
    PROCESS_CONDS,
    CauseSpec,
    Cond,
    Level,
    SensorRules,
    WarningKind,
)

PACKS_DIR = Path(__file__).resolve().parent / "packs"
SITE_KINDS = ("major_hazard", "gas_pipeline", "dust_explosion")
WILDCARD = "*"
BUILTIN = "built-in default"
REGISTRY_RULES = "registry sensor rules"

LEVEL_WORDS: dict[str, Level] = {lv.name.lower(): lv for lv in Level}
LIMITS = ("ll", "l", "h", "hh")
# relative figure → the absolute SensorRules field it becomes (percent of the span)
PCT_FIELDS: dict[str, str] = {
    "deadband_pct": "deadband",
    "rate_rise_pct_per_min": "rate_rise_per_min",
    "rate_fall_pct_per_min": "rate_fall_per_min",
    "stuck_eps_pct": "stuck_eps",
}
# The sensor's own properties in the registry: a pack cannot set them (they would always
# be overridden), a sensor's `rules` can.
REGISTRY_OWN = ("range_lo", "range_hi", "interval_s")
KIND_CONDS: dict[WarningKind, frozenset[Cond]] = {
    WarningKind.PROCESS: PROCESS_CONDS,
    WarningKind.SENSOR_FAULT: FAULT_CONDS,
    WarningKind.DATA_INTERRUPTION: INTERRUPTION_CONDS,
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


# ---------------------------------------------------------------------------- parameter values


class _Bad(ValueError):
    """A value that is not acceptable; the message is the reason, in the pack's words."""


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _num(value)
    if isinstance(value, str):
        return repr(value)
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) \
        else type(value).__name__


def format_value(value: Any) -> str:
    """A parameter value for people: off for NaN, true/false, numbers without noise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _num(value)
    return str(value)


def _num(x: float) -> str:
    x = float(x)
    if math.isnan(x):
        return "off"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"expected a number (got {_show(value)})")
    if not math.isfinite(value):
        raise _Bad(f"expected a finite number (got {_show(value)}); write null to turn it off")
    return float(value)


def _checker(*, off: bool = False, minimum: float | None = None, above: float | None = None,
             maximum: float | None = None) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if value is None:
            if off:
                return math.nan
            raise _Bad("null is not allowed here (this check cannot be turned off)")
        if off and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _Bad(f"expected a number or null for off (got {_show(value)})")
        x = _number(value)
        if minimum is not None and x < minimum:
            raise _Bad(f"must be ≥ {_num(minimum)} (got {_num(x)})")
        if above is not None and x <= above:
            raise _Bad(f"must be > {_num(above)} (got {_num(x)})")
        if maximum is not None and x > maximum:
            raise _Bad(f"must be ≤ {_num(maximum)} (got {_num(x)})")
        return x
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false (got {_show(value)})")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"expected a whole number (got {_show(value)})")
    if value < 0:
        raise _Bad(f"must be ≥ 0 (got {value})")
    return value


_LIMIT = _checker(off=True)
_NONNEG = _checker(minimum=0)
_POS = _checker(above=0)
_POS_OFF = _checker(off=True, above=0)

# What each parameter accepts. Covers every SensorRules field (tests check) and the _pct forms.
PARAMS: dict[str, Callable[[Any], Any]] = {
    "hh": _LIMIT, "h": _LIMIT, "l": _LIMIT, "ll": _LIMIT,
    "deadband": _NONNEG,
    "on_delay_s": _NONNEG,
    "off_delay_s": _NONNEG,
    "rate_rise_per_min": _POS_OFF,
    "rate_fall_per_min": _POS_OFF,
    "rate_tau_s": _POS,
    "trend_tau_s": _POS_OFF,
    "trend_lead_s": _POS,
    "deviation": _bool,
    "deviation_alpha": _checker(above=0, maximum=1),
    "deviation_k": _NONNEG,
    "deviation_h": _POS,
    "deviation_warmup": _count,
    "stuck_window_s": _POS_OFF,
    "stuck_eps": _NONNEG,
    "range_lo": _number,
    "range_hi": _number,
    "interval_s": _POS,
    "nodata_k": _POS,
    "deadband_pct": _NONNEG,
    "rate_rise_pct_per_min": _POS_OFF,
    "rate_fall_pct_per_min": _POS_OFF,
    "stuck_eps_pct": _NONNEG,
}
SENSOR_RULE_KEYS: tuple[str, ...] = (*PARAM_FIELDS, *PCT_FIELDS)
PACK_SECTION_KEYS: tuple[str, ...] = tuple(k for k in SENSOR_RULE_KEYS if k not in REGISTRY_OWN)
# Figures in the sensor's own unit (the rest are seconds, counts, percent or flags).
UNIT_FIELDS = frozenset({*LIMITS, "deadband", "rate_rise_per_min", "rate_fall_per_min", "stuck_eps"})


def _did_you_mean(key: Any, allowed: tuple[str, ...] | list[str]) -> str:
    guess = difflib.get_close_matches(str(key), list(allowed), n=1)
    return f"; did you mean {guess[0]!r}?" if guess else ""


def _limit_order(values: Mapping[str, float]) -> list[tuple[str, str]]:
    """(limit, reason) where limits that are on break ll ≤ l < h ≤ hh."""
    present = [(n, values[n]) for n in LIMITS if n in values and not math.isnan(values[n])]
    issues = []
    for (a, va), (b, vb) in zip(present, present[1:], strict=False):
        strict = a in ("ll", "l") and b in ("h", "hh")
        if va > vb or (strict and va == vb):
            issues.append((a, f"{_num(va)} must be {'<' if strict else '≤'} {b} ({_num(vb)}); "
                              "limits run ll ≤ l < h ≤ hh"))
    return issues


# ---------------------------------------------------------------------------- the pack


@dataclass(frozen=True)
class SensorSpec:
    """The registry's view of one sensor."""

    tag: str
    kind: str
    unit: str
    range_lo: float
    range_hi: float
    ll: float | None
    l: float | None  # noqa: E741 - the standard's name
    h: float | None
    hh: float | None
    interval_s: float
    rules: dict = field(default_factory=dict)   # the sensor's own overrides (sensors.rules)


@dataclass(frozen=True)
class Section:
    """Rule parameters of one pack section, validated (None → NaN already done)."""

    values: Mapping[str, Any] = field(default_factory=dict)
    unit: str | None = None     # the unit the section's absolute figures are in, when given


@dataclass(frozen=True, eq=False)
class Pack:
    """One site kind's pack. `feeds` maps a cause name to {sensor kind: conditions} when the
    cause takes different conditions from different kinds; otherwise every kind of
    `cause.sensor_kinds` feeds every condition of `cause.conditions`."""

    site_kind: str
    title: str
    causes: list[CauseSpec]
    defaults: Section = field(default_factory=Section)
    sensor_kinds: Mapping[str, Section] = field(default_factory=dict)
    feeds: Mapping[str, Mapping[str, frozenset[Cond]]] = field(default_factory=dict)
    source: str = ""
    _index: dict[str, dict[Cond, tuple[CauseSpec, ...]]] = field(
        init=False, repr=False, default_factory=dict)
    _wild: dict[Cond, tuple[CauseSpec, ...]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        kinds = {k for c in self.causes for k in self.feeds_of(c)} - {WILDCARD}
        index: dict[str, dict[Cond, list[CauseSpec]]] = {k: {} for k in kinds}
        wild: dict[Cond, list[CauseSpec]] = {}
        for cause in self.causes:  # pack order is kept within each (kind, cond)
            feeds = self.feeds_of(cause)
            for cond in feeds.get(WILDCARD, ()):
                wild.setdefault(cond, []).append(cause)
            for kind in kinds:
                for cond in feeds.get(kind, frozenset()) | feeds.get(WILDCARD, frozenset()):
                    index[kind].setdefault(cond, []).append(cause)
        object.__setattr__(self, "_index", {k: {c: tuple(v) for c, v in d.items()}
                                            for k, d in index.items()})
        object.__setattr__(self, "_wild", {c: tuple(v) for c, v in wild.items()})

    def feeds_of(self, cause: CauseSpec) -> Mapping[str, frozenset[Cond]]:
        """Sensor kind (or "*") → the conditions of that kind that feed `cause`."""
        explicit = self.feeds.get(cause.name)
        if explicit is not None:
            return explicit
        return {kind: cause.conditions for kind in cause.sensor_kinds}

    def cause_for(self, sensor_kind: str, cond: Cond) -> tuple[CauseSpec, ...]:
        """The causes a condition of a sensor of this kind feeds, in pack order."""
        return self._index.get(sensor_kind, self._wild).get(cond, ())

    def label(self, kind: str | None = None) -> str:
        """Provenance label of a layer of this pack."""
        if kind is None:
            return f"pack {self.site_kind} defaults"
        return f"pack {self.site_kind} sensor kind {kind}"


class PackError(Exception):
    """The pack files are wrong; `errors` lists every reason, each naming file and field."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# ---------------------------------------------------------------------------- effective rules


def _layer(values: dict[str, Any], prov: dict[str, str] | None, entries: Mapping[str, Any],
           label: str, span: Any) -> None:
    """Lay one layer's (validated) entries over `values`; _pct forms become absolute.

    `span` is a float, or an array when many sensors are resolved at once (then `prov`,
    which names one sensor's span, is None)."""
    for name, value in entries.items():
        if name in PCT_FIELDS:
            target = PCT_FIELDS[name]
            if target in entries:  # the absolute form of the same layer wins
                continue
            if isinstance(value, float) and math.isnan(value):
                values[target] = math.nan
                if prov is not None:
                    prov[target] = label
            else:
                values[target] = value / 100.0 * span
                if prov is not None:
                    prov[target] = f"{label} ({name} {_num(value)} % of span {_num(span)})"
        elif name in PARAMS:
            values[name] = value
            if prov is not None:
                prov[name] = label


def _valid_overrides(rules: Any) -> dict[str, Any]:
    """The sensor's `rules` entries that are valid; the rest is skipped (rules check says why)."""
    out: dict[str, Any] = {}
    if not isinstance(rules, Mapping):
        return out
    for name, value in rules.items():
        if name in SENSOR_RULE_KEYS:
            try:
                out[name] = PARAMS[name](value)
            except _Bad:
                continue
    return out


def effective_rules(pack: Pack, spec: SensorSpec) -> tuple[SensorRules, dict[str, str]]:
    """The effective SensorRules of one sensor and, per field, where its value came from.

    Layers: built-in < pack defaults < pack sensor kind < registry < sensor `rules`.
    Never raises on a sensor's own overrides: an invalid entry is skipped (the layer below
    stays in force) and `rules check` reports it.
    """
    defaults = SensorRules()
    values: dict[str, Any] = {name: getattr(defaults, name) for name in PARAM_FIELDS}
    prov = dict.fromkeys(PARAM_FIELDS, BUILTIN)
    overrides = _valid_overrides(spec.rules)
    lo = overrides.get("range_lo", float(spec.range_lo))
    hi = overrides.get("range_hi", float(spec.range_hi))
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        span = float(spec.range_hi) - float(spec.range_lo)
    _layer(values, prov, pack.defaults.values, pack.label(), span)
    section = pack.sensor_kinds.get(spec.kind)
    if section is not None:
        _layer(values, prov, section.values, pack.label(spec.kind), span)
    values["range_lo"], values["range_hi"] = float(spec.range_lo), float(spec.range_hi)
    prov["range_lo"] = prov["range_hi"] = "registry range"
    values["interval_s"], prov["interval_s"] = float(spec.interval_s), "registry interval_s"
    for name in LIMITS:
        limit = getattr(spec, name)
        if limit is not None:
            values[name], prov[name] = float(limit), "registry limits"
    _layer(values, prov, overrides, REGISTRY_RULES, span)
    return SensorRules(**values), prov


def effective_arrays(pack: Pack, kind: str, rules: Any, range_lo: np.ndarray,
                     range_hi: np.ndarray, interval_s: np.ndarray,
                     limits: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`effective_rules` for many sensors of one rule group at once (same pack, sensor kind
    and `rules` overrides), as one float64 array per SensorRules field.

    The same layers in the same order, with the span an array: a million sensors resolve in
    a few hundred group calls instead of a million sensor calls. `limits` maps ll, l, h, hh
    to arrays where NaN means "not set in the registry". tests/test_registry_load.py
    checks it against effective_rules sensor by sensor."""
    n = len(range_lo)
    defaults = SensorRules()
    values: dict[str, Any] = {name: getattr(defaults, name) for name in PARAM_FIELDS}
    overrides = _valid_overrides(rules)
    lo = overrides.get("range_lo", range_lo)
    hi = overrides.get("range_hi", range_hi)
    with np.errstate(invalid="ignore", over="ignore"):
        span = np.broadcast_to(np.asarray(hi, dtype=np.float64) - lo, (n,))
        span = np.where(np.isfinite(span) & (span > 0), span, range_hi - range_lo)
    _layer(values, None, pack.defaults.values, pack.label(), span)
    section = pack.sensor_kinds.get(kind)
    if section is not None:
        _layer(values, None, section.values, pack.label(kind), span)
    values["range_lo"], values["range_hi"] = range_lo, range_hi
    values["interval_s"] = interval_s
    for name in LIMITS:
        column = limits[name]
        values[name] = np.where(np.isnan(column), values[name], column)
    _layer(values, None, overrides, REGISTRY_RULES, span)
    return {name: np.broadcast_to(np.asarray(values[name], dtype=np.float64), (n,))
            for name in PARAM_FIELDS}


# ---------------------------------------------------------------------------- checking a sensor


@dataclass(frozen=True)
class Issue:
    """One finding of `check_sensor`: an error fails `rules check`, a warning does not."""

    severity: str    # "error" | "warning"
    field: str       # e.g. "rules.deadband", "limits.h", "kind"
    reason: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.field}: {self.reason}"


def _is_on(x: float) -> bool:
    return not math.isnan(x)


def fed_conditions(pack: Pack, cause: CauseSpec, sensor_kind: str) -> frozenset[Cond]:
    """The conditions of a sensor of this kind that feed `cause` (none when it does not)."""
    feeds = pack.feeds_of(cause)
    return feeds.get(sensor_kind, frozenset()) | feeds.get(WILDCARD, frozenset())


def cond_off_reason(rules: SensorRules, cond: Cond) -> str | None:
    """Why `cond` can never raise for a sensor with these rules, or None when it can."""
    if cond.value in LIMITS:
        return None if _is_on(getattr(rules, cond.value)) else f"no {cond.value} limit"
    if cond == Cond.RATE_RISE:
        return None if _is_on(rules.rate_rise_per_min) else "no rate_rise_per_min"
    if cond == Cond.RATE_FALL:
        return None if _is_on(rules.rate_fall_per_min) else "no rate_fall_per_min"
    if cond in (Cond.TREND_HH, Cond.TREND_LL):
        if not _is_on(rules.trend_tau_s):
            return "trend off (no trend_tau_s)"
        limit = "hh" if cond == Cond.TREND_HH else "ll"
        return None if _is_on(getattr(rules, limit)) else f"no {limit} limit to project to"
    if cond == Cond.DEVIATION:
        return None if rules.deviation else "deviation off"
    if cond == Cond.STUCK:
        return None if _is_on(rules.stuck_window_s) else "stuck check off (no stuck_window_s)"
    return None


def check_sensor(pack: Pack, spec: SensorSpec) -> list[Issue]:
    """Check one registry sensor against its site kind's pack: its `rules` overrides
    (unknown parameter, wrong type or sign), the effective limits (order, inside the range,
    able to clear), and warn where the pack has no section for its kind."""
    issues: list[Issue] = []
    rules = spec.rules
    if not isinstance(rules, Mapping):
        issues.append(Issue("error", "rules", f"expected a mapping of parameter to value "
                                              f"(got {_show(rules)})"))
        rules = {}
    for name, value in rules.items():
        if name not in SENSOR_RULE_KEYS:
            issues.append(Issue("error", f"rules.{name}", "unknown parameter"
                                + _did_you_mean(name, SENSOR_RULE_KEYS)
                                + f" (known: {', '.join(SENSOR_RULE_KEYS)})"))
            continue
        try:
            PARAMS[name](value)
        except _Bad as exc:
            issues.append(Issue("error", f"rules.{name}", str(exc)))
    section = pack.sensor_kinds.get(spec.kind)
    if section is None:
        known = ", ".join(sorted(pack.sensor_kinds)) or "none"
        issues.append(Issue("warning", "kind", f"{spec.kind!r} has no section in the "
                            f"{pack.site_kind} pack (has: {known}); defaults apply"))
    eff, prov = effective_rules(pack, spec)
    where = {n: {"registry limits": f"limits.{n}", REGISTRY_RULES: f"rules.{n}"}.get(prov[n], n)
             for n in LIMITS}
    values = {n: getattr(eff, n) for n in LIMITS}
    for name, reason in _limit_order(values):
        issues.append(Issue("error", where[name], f"{reason} (from {prov[name]})"))
    lo, hi = eff.range_lo, eff.range_hi
    for name in LIMITS:
        v = values[name]
        if not _is_on(v):
            continue
        if not lo <= v <= hi:
            issues.append(Issue("error", where[name],
                                f"{_num(v)} (from {prov[name]}) is outside range "
                                f"[{_num(lo)}, {_num(hi)}]: it can never raise"))
            continue
        high = name in ("h", "hh")
        clear = v - eff.deadband if high else v + eff.deadband
        if (high and clear <= lo) or (not high and clear >= hi):
            issues.append(Issue("error", where[name],
                                f"{_num(v)} clears only {'below' if high else 'above'} "
                                f"{_num(clear)} (deadband {_num(eff.deadband)} from "
                                f"{prov['deadband']}), outside range [{_num(lo)}, {_num(hi)}]: "
                                "it can never clear"))
    if section is not None and section.unit is not None and spec.unit != section.unit:
        used = sorted(n for n in UNIT_FIELDS if prov[n] == pack.label(spec.kind))
        if used:
            issues.append(Issue("warning", "unit", f"{spec.unit!r}, but the pack's "
                                f"{', '.join(used)} for {spec.kind} are in {section.unit!r}; "
                                "set them in the registry"))
    process = [(c, cond) for c in pack.causes if c.kind == WarningKind.PROCESS
               for cond in fed_conditions(pack, c, spec.kind)]
    if process and all(cond_off_reason(eff, cond) is not None for _, cond in process):
        names = ", ".join(dict.fromkeys(c.name for c, _ in process))
        issues.append(Issue("warning", "limits", f"feeds {names} but none of its conditions "
                            "can raise (no limits, rates or trend set): only faults and "
                            "interruptions are watched"))
    return issues


# ---------------------------------------------------------------------------- loading


_Map = yamlfile.Map


class _File:
    """Collects the errors of one pack file, each as `file: path: reason (line n)`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors: list[str] = []

    def error(self, path: str, reason: str, node: Any = None, key: Any = None) -> None:
        line = None
        if isinstance(node, _Map):
            line = node.key_lines.get(key, node.line) if key is not None else node.line
        self.errors.append(f"{self.name}: {path}: {reason}" + (f" (line {line})" if line else ""))


def _keys(f: _File, node: _Map, path: str, allowed: tuple[str, ...],
          required: tuple[str, ...] = ()) -> None:
    for key in node:
        if key not in allowed:
            f.error(f"{path}.{key}" if path else str(key),
                    f"unknown key (allowed: {', '.join(allowed)}){_did_you_mean(key, allowed)}",
                    node, key)
    for key in required:
        if key not in node:
            f.error(f"{path}.{key}" if path else key, "missing (required)", node)


def _mapping(f: _File, node: Any, path: str, parent: Any = None, key: Any = None,
             empty_ok: bool = True) -> _Map | None:
    if node is None and empty_ok:
        return _Map()
    if not isinstance(node, _Map):
        f.error(path, f"expected a mapping of keys to values (got {_show(node)})", parent, key)
        return None
    return node


def _text(f: _File, node: _Map, key: str, path: str) -> str | None:
    value = node.get(key)
    if key in node and not (isinstance(value, str) and value.strip()):
        f.error(f"{path}.{key}" if path else key, f"expected text (got {_show(value)})", node, key)
        return None
    return value


def _level(f: _File, value: Any, path: str, node: _Map, key: Any) -> Level | None:
    if isinstance(value, str) and value in LEVEL_WORDS:
        return LEVEL_WORDS[value]
    f.error(path, f"{_show(value)} is not a level ({', '.join(LEVEL_WORDS)})", node, key)
    return None


def _int(f: _File, value: Any, path: str, node: _Map, key: Any, minimum: int | None = None) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        f.error(path, f"expected a whole number (got {_show(value)})", node, key)
        return None
    if minimum is not None and value < minimum:
        f.error(path, f"must be ≥ {minimum} (got {value})", node, key)
        return None
    return value


def _section(f: _File, node: Any, path: str, parent: _Map, key: str, allow_unit: bool) -> Section:
    m = _mapping(f, node, path, parent, key)
    if m is None:
        return Section()
    allowed = (*PACK_SECTION_KEYS, "unit") if allow_unit else PACK_SECTION_KEYS
    values: dict[str, Any] = {}
    unit = None
    for name, value in m.items():
        here = f"{path}.{name}"
        if name == "unit" and allow_unit:
            if isinstance(value, str):
                unit = value
            else:
                f.error(here, f"expected text such as \"%LEL\" (got {_show(value)})", m, name)
        elif name in REGISTRY_OWN:
            f.error(here, "is the sensor's own, set in the registry (range / interval_s); "
                          "a pack cannot set it", m, name)
        elif name in PARAMS:
            try:
                values[name] = PARAMS[name](value)
            except _Bad as exc:
                f.error(here, str(exc), m, name)
        else:
            f.error(here, f"unknown parameter{_did_you_mean(name, allowed)} "
                          f"(known: {', '.join(allowed)})", m, name)
    for name, reason in _limit_order(values):
        f.error(f"{path}.{name}", reason, m, name)
    return Section(values, unit)


_CAUSE_KEYS = ("name", "title_zh", "title_en", "kind", "sensor_kinds", "base", "agree",
               "duration", "grade_adjust", "max_level")
_CAUSE_REQUIRED = ("name", "title_zh", "title_en", "kind", "sensor_kinds", "base")


def _cause(f: _File, i: int, node: Any, kinds: Mapping[str, Section],
           seen: dict[str, int]) -> tuple[CauseSpec, dict[str, frozenset[Cond]]] | None:
    raw_name = node.get("name") if isinstance(node, _Map) else None
    where = f"causes[{i}]" + (f" ({raw_name})" if isinstance(raw_name, str) and raw_name else "")
    m = _mapping(f, node, where, empty_ok=False)
    if m is None:
        return None
    before = len(f.errors)
    _keys(f, m, where, _CAUSE_KEYS, _CAUSE_REQUIRED)
    name = _text(f, m, "name", where)
    if name is not None and not _NAME.match(name):
        f.error(f"{where}.name", f"{name!r} must be a lower-case identifier such as overfill", m,
                "name")
    elif name is not None and name in seen:
        f.error(f"{where}.name", f"duplicate cause name {name!r}, first used by causes[{seen[name]}]",
                m, "name")
    elif name is not None:
        seen[name] = i
    title_zh, title_en = _text(f, m, "title_zh", where), _text(f, m, "title_en", where)

    kind = None
    if "kind" in m:
        try:
            kind = WarningKind(m["kind"])
        except ValueError:
            f.error(f"{where}.kind", f"{_show(m['kind'])} is not a warning kind "
                    f"({', '.join(k.value for k in WarningKind)})", m, "kind")

    base: dict[Cond, Level] = {}
    bmap = _mapping(f, m.get("base"), f"{where}.base", m, "base", empty_ok=False) \
        if "base" in m else None
    if bmap is not None:
        if not bmap:
            f.error(f"{where}.base", "names no condition", m, "base")
        for key, value in bmap.items():
            here = f"{where}.base.{key}"
            try:
                cond = Cond(key)
            except ValueError:
                f.error(here, f"{_show(key)} is not a condition "
                        f"({', '.join(c.value for c in Cond)})", bmap, key)
                continue
            level = _level(f, value, here, bmap, key)
            if kind is not None and cond not in KIND_CONDS[kind]:
                owner = next(k for k, conds in KIND_CONDS.items() if cond in conds)
                allowed = ", ".join(c.value for c in Cond if c in KIND_CONDS[kind])
                f.error(here, f"{cond.value} is a {owner.value} condition; a {kind.value} cause "
                              f"takes only {allowed}", bmap, key)
            if level is not None:
                base[cond] = level

    feeds: dict[str, frozenset[Cond]] = {}
    explicit = False
    if "sensor_kinds" in m:
        here = f"{where}.sensor_kinds"
        sk = m["sensor_kinds"]
        entries: list[tuple[Any, Any]] = []
        if isinstance(sk, list):
            entries = [(k, None) for k in sk]
        elif isinstance(sk, _Map):
            explicit = True
            entries = list(sk.items())
        else:
            f.error(here, "expected a list of sensor kinds, or a mapping of sensor kind to "
                          f"its conditions (got {_show(sk)})", m, "sensor_kinds")
        if not entries and isinstance(sk, list | _Map):
            f.error(here, "names no sensor kind", m, "sensor_kinds")
        entry_errors = len(f.errors)
        for j, (sensor_kind, conds) in enumerate(entries):
            at = f"{here}[{j}]" if not explicit else f"{here}.{sensor_kind}"
            if not isinstance(sensor_kind, str):
                f.error(at, f"expected a sensor kind (got {_show(sensor_kind)})", m, "sensor_kinds")
                continue
            if sensor_kind != WILDCARD and sensor_kind not in kinds:
                hint = _did_you_mean(sensor_kind, sorted(kinds))
                f.error(at, f"{sensor_kind!r} has no section in sensor_kinds{hint} "
                            f"(sections: {', '.join(sorted(kinds)) or 'none'}); add one, or use "
                            "\"*\" for every kind", m, "sensor_kinds")
                continue
            if sensor_kind in feeds:
                f.error(at, f"{sensor_kind!r} is listed twice", m, "sensor_kinds")
                continue
            if not explicit:
                feeds[sensor_kind] = frozenset(base)
                continue
            if not isinstance(conds, list) or not conds:
                f.error(at, f"expected a list of conditions from base (got {_show(conds)})",
                        sk, sensor_kind)
                continue
            chosen = set()
            for cond_name in conds:
                try:
                    cond = Cond(cond_name)
                except ValueError:
                    f.error(at, f"{_show(cond_name)} is not a condition "
                                f"({', '.join(c.value for c in Cond)})", sk, sensor_kind)
                    continue
                if cond not in base and bmap is not None and cond.value not in bmap:
                    f.error(at, f"{cond.value} has no level in base", sk, sensor_kind)
                    continue
                chosen.add(cond)
            feeds[sensor_kind] = frozenset(chosen)
        if explicit and bmap is not None and len(f.errors) == entry_errors:
            used = set().union(*feeds.values()) if feeds else set()
            for cond in base:
                if cond not in used:
                    f.error(f"{where}.base.{cond.value}", "is fed by no sensor kind of "
                                                         "sensor_kinds", bmap, cond.value)

    agree: dict[str, Any] = {}
    if "agree" in m:
        here = f"{where}.agree"
        a = _mapping(f, m["agree"], here, m, "agree")
        if a is not None:
            _keys(f, a, here, ("n", "min", "bonus", "group"))
            if "n" in a:
                agree["agree_n"] = _int(f, a["n"], f"{here}.n", a, "n", minimum=1)
            if "min" in a:
                agree["agree_min"] = _level(f, a["min"], f"{here}.min", a, "min")
            if "bonus" in a:
                agree["agree_bonus"] = _int(f, a["bonus"], f"{here}.bonus", a, "bonus")
            if "group" in a:
                if a["group"] in ("site", "equipment"):
                    agree["agree_group"] = a["group"]
                else:
                    f.error(f"{here}.group", f"{_show(a['group'])} is not a group (site, equipment)",
                            a, "group")
    if "duration" in m:
        here = f"{where}.duration"
        d = _mapping(f, m["duration"], here, m, "duration")
        if d is not None:
            _keys(f, d, here, ("s", "bonus"))
            if "s" in d:
                try:
                    agree["duration_s"] = _POS(d["s"])
                except _Bad as exc:
                    f.error(f"{here}.s", str(exc), d, "s")
            if "bonus" in d:
                agree["duration_bonus"] = _int(f, d["bonus"], f"{here}.bonus", d, "bonus")
    if "grade_adjust" in m:
        here = f"{where}.grade_adjust"
        g = _mapping(f, m["grade_adjust"], here, m, "grade_adjust", empty_ok=False)
        if g is not None:
            adjust = {}
            for grade, value in g.items():
                if isinstance(grade, bool) or grade not in (1, 2, 3, 4):
                    f.error(f"{here}.{grade}", f"{_show(grade)} is not a hazard source grade "
                            "(1, 2, 3, 4)", g, grade)
                    continue
                adjust[grade] = _int(f, value, f"{here}.{grade}", g, grade)
            missing = [str(x) for x in (1, 2, 3, 4) if x not in g]
            if missing:
                f.error(here, f"missing grade {', '.join(missing)} (give all four, 1-4)", m,
                        "grade_adjust")
            agree["grade_adjust"] = adjust
    if "max_level" in m:
        agree["max_level"] = _level(f, m["max_level"], f"{where}.max_level", m, "max_level")

    if len(f.errors) > before or None in (name, title_zh, title_en, kind) or not base or not feeds:
        return None
    kinds_fed = frozenset(feeds)
    conds = frozenset().union(*feeds.values())
    spec = CauseSpec(name=name, title_zh=title_zh, title_en=title_en, kind=kind,
                     sensor_kinds=kinds_fed, conditions=conds, base=base, **agree)
    return spec, feeds if explicit else {}


def parse_pack(path: Path) -> tuple[Pack | None, list[str]]:
    """One pack file → (the pack or None, its errors)."""
    f = _File(path.name)
    try:
        data = yamlfile.load(path.read_bytes())
    except OSError as exc:
        return None, [f"{path.name}: cannot read: {exc.strerror or exc}"]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return None, [f"{path.name}: invalid YAML{at}: {exc.problem}"]
    except yaml.YAMLError as exc:
        return None, [f"{path.name}: invalid YAML: {exc}"]
    top = _mapping(f, data, "file", empty_ok=False)
    if top is None:
        return None, f.errors
    _keys(f, top, "", ("site_kind", "title", "defaults", "sensor_kinds", "causes"),
          ("site_kind", "title", "causes"))
    site_kind = _text(f, top, "site_kind", "")
    if site_kind is not None and site_kind not in SITE_KINDS:
        f.error("site_kind", f"{site_kind!r} is not a site kind ({', '.join(SITE_KINDS)})",
                top, "site_kind")
    elif site_kind is not None and site_kind != path.stem:
        f.error("site_kind", f"{site_kind!r} does not match the file name (expected "
                             f"{site_kind}.yaml)", top, "site_kind")
    title = _text(f, top, "title", "")
    defaults = _section(f, top.get("defaults"), "defaults", top, "defaults", allow_unit=False)
    kinds: dict[str, Section] = {}
    km = _mapping(f, top.get("sensor_kinds"), "sensor_kinds", top, "sensor_kinds")
    for kind, section in (km or {}).items():
        if not isinstance(kind, str) or not _NAME.match(kind):
            f.error(f"sensor_kinds.{kind}", f"{_show(kind)} must be a lower-case sensor kind such "
                                            "as level or gas_lel", km, kind)
            continue
        kinds[kind] = _section(f, section, f"sensor_kinds.{kind}", km, kind, allow_unit=True)
    causes: list[CauseSpec] = []
    feeds: dict[str, dict[str, frozenset[Cond]]] = {}
    raw = top.get("causes")
    if "causes" in top and not isinstance(raw, list):
        f.error("causes", f"expected a list of causes (got {_show(raw)})", top, "causes")
    elif isinstance(raw, list):
        if not raw:
            f.error("causes", "names no cause", top, "causes")
        seen: dict[str, int] = {}
        for i, node in enumerate(raw):
            parsed = _cause(f, i, node, kinds, seen)
            if parsed is not None:
                causes.append(parsed[0])
                if parsed[1]:
                    feeds[parsed[0].name] = parsed[1]
    if f.errors:
        return None, f.errors
    return Pack(site_kind=site_kind, title=title, causes=causes, defaults=defaults,
                sensor_kinds=kinds, feeds=feeds, source=str(path)), []


def load_packs(directory: Path | None = None) -> dict[str, Pack]:
    """Every `*.yaml` pack of the directory (default: the packs shipped next to this module),
    keyed by site kind. Raises PackError with every problem of every file."""
    directory = Path(directory) if directory is not None else PACKS_DIR
    if not directory.is_dir():
        raise PackError([f"{directory}: no such directory of rule packs"])
    packs: dict[str, Pack] = {}
    errors: list[str] = []
    for path in sorted(directory.glob("*.yaml")):
        pack, problems = parse_pack(path)
        errors.extend(problems)
        if pack is not None:
            packs[pack.site_kind] = pack
    for kind in SITE_KINDS:
        if kind not in packs and not any(e.startswith(f"{kind}.yaml:") for e in errors):
            errors.append(f"{directory}: no pack for site kind {kind} (expected {kind}.yaml)")
    if errors:
        raise PackError(errors)
    return packs
