"""Scenarios: a fleet, a duration, a seed, a speed and timed incidents and faults (YAML in
scenarios/), expanded to a registry (examples/registry.yaml format), ground truth, readings
and per-gateway MQTT message plans (native contract v1).

    name: tank_overfill
    seed: 7
    start: "2024-06-03T00:00:00+08:00"  # the scenario clock (daily cycles); publish shifts it
    duration: 6h                         # seconds or 90s / 30m / 6h / 1d
    speed: 60                            # default for `hazardwatch simulate`
    fleet: {enterprises: 1, major_hazard: 1, gas_pipeline: 0, dust_explosion: 0}
    incidents:
      - {at: 2h, site: TF1, kind: tank_overfill, duration: 40m, tank: 1}
    faults:
      - {at: 1h, site: TF1, kind: stuck, sensor: TK101.TT, duration: 7h}
      - {at: 3h, site: TF1, kind: gateway_offline, gateway: gds, duration: 10m}

Sites are named by kind and number (TF1, TF2… tank farms; GP1… gas pipelines; DS1… dust
workshops) and dealt round-robin to the enterprises.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from rules.model import Cond, Level, SensorRules
from simulators.faults import (
    FAULT_TRUTH,
    GATEWAY_FAULTS,
    SENSOR_FAULTS,
    Fault,
    Message,
    apply_gateway_faults,
    apply_sensor_fault,
)
from simulators.models import (
    INCIDENT_CONDITIONAL,
    INCIDENTS,
    SITE_KINDS,
    Incident,
    SensorDef,
    SiteSpec,
    make_site,
    simulate_site,
)

BATCH_READINGS = 50
# A gateway publishes each scan as it takes it: a message closes at 50 readings or when the
# next instant is this much later (batching by count alone would hold a small gateway's
# readings for minutes and trip no_data, which runs on processing time).
BATCH_SECONDS = 1.0
_DUR = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|s|min|m|h|d))+$")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|min|m|h|d)")
_UNIT = {None: 1, "ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_REGIONS = [
    {"code": "370000", "name": "山东省"},
    {"code": "370100", "name": "济南市", "parent": "370000"},
    {"code": "370105", "name": "天桥区", "parent": "370100"},
    {"code": "370112", "name": "历城区", "parent": "370100"},
    {"code": "370114", "name": "章丘区", "parent": "370100"},
]
_ENT_KEYS = {"at", "site", "kind", "duration"}


class ScenarioError(ValueError):
    pass


def seconds(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ScenarioError(f"{what}: {value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).replace(" ", "")
    if re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    if not _DUR.match(text):
        raise ScenarioError(f"{what}: {value!r} is not a duration (e.g. 90, 90s, 30m, 6h, 8h10m, 1d)")
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(text))


def credit_code(rng: np.random.Generator, region: str) -> str:
    from hazardwatch.registry import credit_code_check_character

    body = "91" + region + "MA" + "".join(_CREDIT_CHARS[i] for i in rng.integers(0, 31, 7))
    return body + credit_code_check_character(body)


@dataclass(frozen=True)
class EnterpriseSpec:
    code: str
    name: str
    region: str
    sites: tuple[SiteSpec, ...]


@dataclass(frozen=True)
class TruthEntry:
    site: str
    enterprise: str
    cause: str
    level: str
    start_s: float
    end_s: float
    source: str        # the incident or fault kind

    def as_dict(self, base_epoch: float | None = None) -> dict:
        d = {"site": self.site, "enterprise": self.enterprise, "cause": self.cause,
             "level": self.level, "start_s": self.start_s, "end_s": self.end_s,
             "source": self.source}
        if base_epoch is not None:
            d["start_ms"] = int(round((base_epoch + self.start_s) * 1000))
            d["end_ms"] = int(round((base_epoch + self.end_s) * 1000))
        return d


@dataclass
class Scenario:
    name: str
    seed: int
    start: datetime
    duration: float
    speed: float
    enterprises: list[EnterpriseSpec]
    incidents: list[tuple[str, Incident]] = field(default_factory=list)   # (site id, incident)
    faults: list[tuple[str, Fault]] = field(default_factory=list)         # (site id, fault)
    description: str = ""

    # -------------------------------------------------------------- lookups
    @property
    def sites(self) -> list[SiteSpec]:
        return [s for e in self.enterprises for s in e.sites]

    def site(self, site_id: str) -> SiteSpec:
        for s in self.sites:
            if s.id == site_id:
                return s
        raise ScenarioError(f"no site {site_id} in the fleet (has {', '.join(s.id for s in self.sites)})")

    def enterprise_of(self, site_id: str) -> EnterpriseSpec:
        return next(e for e in self.enterprises if any(s.id == site_id for s in e.sites))

    @property
    def tod0(self) -> float:
        midnight = self.start.replace(hour=0, minute=0, second=0, microsecond=0)
        return (self.start - midnight).total_seconds()

    # -------------------------------------------------------------- registry and truth
    def registry(self) -> dict:
        ents = []
        for e in self.enterprises:
            gateways, sites = [], []
            for s in e.sites:
                names = SITE_KINDS[s.kind][2]
                gateways += [{"id": gid, "name": f"{s.id} {names[role]}"} for role, gid in s.gateways.items()]
                sites.append({"id": s.id, "name": s.name, "kind": s.kind, "grade": s.grade,
                              "sensors": [x.registry_entry(s.gateways[x.gateway]) for x in s.sensors]})
            ents.append({"code": e.code, "name": e.name, "region": e.region,
                         "gateways": gateways, "sites": sites})
        return {"regions": [dict(r) for r in _REGIONS], "enterprises": ents}

    def registry_yaml(self) -> str:
        head = (f"# Registry of scenario {self.name} (generated by hazardwatch simulate; fictitious\n"
                "# enterprises with valid GB 32100-2015 check characters).\n")
        return head + yaml.safe_dump(self.registry(), allow_unicode=True, sort_keys=False)

    def truth(self, packs: dict | None = None) -> list[TruthEntry]:
        """What a correct centre should see: per incident the causes its signature feeds,
        per fault the warning it legitimately opens (a dropout is a data interruption, a
        frozen transmitter a sensor fault), with the level the rule packs' policy gives it
        (see models.INCIDENTS and `_fault_truth`). `packs`: default the shipped ones."""
        from rules.packs import load_packs

        packs = load_packs() if packs is None else packs
        out = []
        for sid, inc in self.incidents:
            pack = packs[self.site(sid).kind]
            for cause, level, sustained in INCIDENTS[inc.kind][1]:
                test = INCIDENT_CONDITIONAL.get((inc.kind, cause))
                if test is not None and not test(inc.params):
                    continue
                level = _escalated(pack, cause, level, inc.duration if sustained else 0.0)
                out.append(TruthEntry(sid, self.enterprise_of(sid).code, cause, level,
                                      inc.at, inc.at + inc.duration, inc.kind))
        for sid, f in self.faults:
            out += self._fault_truth(sid, f, packs[self.site(sid).kind])
        return sorted(out, key=lambda x: (x.start_s, x.site))

    def _fault_truth(self, sid: str, f: Fault, pack) -> list[TruthEntry]:
        """The warning a fault legitimately opens, when the engine can see it at all:
        - gateway_offline: the last-will at once -> data_interruption (offline: yellow);
        - stuck: after the sensor's flat-line window -> sensor_fault (blue);
        - dropout: after nodata_k x interval of silence -> data_interruption (no_data: blue);
        - clock_skew: when the gateway's clock steps back by |offset| (at the end of a skew
          ahead, at the start of one behind) its next readings are older than ones already
          evaluated, and the rule engine ignores late readings (they never rewind state or
          refresh the no-data clock): for |offset| no new reading arrives, so every sensor of
          that gateway whose no-data time is shorter goes no_data (blue; the cause's
          agreement bonus when enough of them do).
        Spike, drift, noise, duplicates, out-of-order and malformed payloads open nothing
        by design (on-delays, de-duplication; no sensor-disagreement rule)."""
        site, ent = self.site(sid), self.enterprise_of(sid).code
        cause = next((c for c in pack.causes if c.name == FAULT_TRUTH.get(f.kind, "")), None)
        if cause is None:
            return []

        def entry(level: str, start: float, end: float, hold: float) -> list[TruthEntry]:
            return [TruthEntry(sid, ent, cause.name, _escalated(pack, cause.name, level, hold),
                               start, end, f.kind)]

        if f.kind == "gateway_offline":
            return entry(cause.base[Cond.OFFLINE].name.lower(), f.at, f.at + f.duration, f.duration)
        if f.kind in ("stuck", "dropout"):
            rules = sensor_rules(pack, site.sensor(f.target))
            seen = (rules.stuck_window_s if f.kind == "stuck"
                    else rules.nodata_k * rules.interval_s)
            cond = Cond.STUCK if f.kind == "stuck" else Cond.NO_DATA
            if seen != seen or f.duration <= seen:      # off (NaN) or too short to see
                return []
            return entry(cause.base[cond].name.lower(), f.at, f.at + f.duration, f.duration - seen)
        if f.kind == "clock_skew":
            offset = float(f.params.get("offset_s", 120))
            role = next(r for r, g in site.gateways.items() if g == f.target)
            silent = [r.nodata_k * r.interval_s for r in
                      (sensor_rules(pack, x) for x in site.sensors if x.gateway == role)]
            seen = [s for s in silent if s < abs(offset)]
            if not seen:
                return []
            level = int(cause.base[Cond.NO_DATA])
            if len(seen) >= cause.agree_n and cause.base[Cond.NO_DATA] >= cause.agree_min:
                level += cause.agree_bonus
            level = min(level, int(cause.max_level))
            start = f.at + f.duration if offset > 0 else f.at
            return entry(Level(level).name.lower(), start, start + abs(offset), 0.0)
        return []

    def truth_json(self, base_epoch: float | None = None) -> bytes:
        doc = {"scenario": self.name, "seed": self.seed, "scenario_start": self.start.isoformat(),
               "duration_s": self.duration,
               "time_base_ms": None if base_epoch is None else int(round(base_epoch * 1000)),
               "entries": [t.as_dict(base_epoch) for t in self.truth()]}
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    # -------------------------------------------------------------- readings
    def readings(self, site_id: str, t0: float = 0.0, t1: float | None = None,
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The site's readings in [t0, t1) with its incidents and sensor faults applied."""
        site = self.site(site_id)
        t1 = self.duration if t1 is None else t1
        incs = [i for sid, i in self.incidents if sid == site_id]
        series = simulate_site(site, self.seed, 0.0, t1, tod0=self.tod0, incidents=incs)
        rng = np.random.default_rng([self.seed, 7, len(site_id), *site_id.encode()])
        for sid, f in self.faults:
            if sid == site_id and f.kind in SENSOR_FAULTS:
                sensor = site.sensor(f.target)
                t, v = series[f.target]
                t, v = apply_sensor_fault(t, v, f, sensor.range[1] - sensor.range[0], rng)
                series[f.target] = (t, np.round(v, sensor.decimals))
        return {tag: (t[(t >= t0) & (t < t1)], v[(t >= t0) & (t < t1)])
                for tag, (t, v) in series.items()}

    def gateways(self) -> list[tuple[str, str, SiteSpec]]:
        """(enterprise code, gateway id, site) of every gateway."""
        return [(e.code, gid, s) for e in self.enterprises for s in e.sites for gid in s.gateways.values()]

    def messages(self, enterprise: str, gateway: str, base_epoch: float) -> list[Message]:
        """The gateway's plan: native reading batches (all tags of an instant in one group;
        a message closes at BATCH_READINGS readings or BATCH_SECONDS after its first instant),
        with gateway faults applied; `ts` is base_epoch + scenario time."""
        site = next(s for e, g, s in self.gateways() if e == enterprise and g == gateway)
        role = next(r for r, g in site.gateways.items() if g == gateway)
        tags = [x.tag for x in site.sensors if x.gateway == role]
        data = self.readings(site.id)
        faults = [f for sid, f in self.faults if sid == site.id and f.kind in GATEWAY_FAULTS
                  and f.target == gateway]
        skews = [f for f in faults if f.kind == "clock_skew"]
        all_t = np.unique(np.concatenate([data[tag][0] for tag in tags])) if tags else np.array([])
        index = {tag: dict(zip(data[tag][0].tolist(), data[tag][1].tolist(), strict=True)) for tag in tags}
        messages: list[Message] = []
        batch: list[dict] = []
        count, first, last = 0, 0.0, 0.0
        for ts in all_t.tolist():
            if batch and ts - first >= BATCH_SECONDS:
                messages.append(Message(last, orjson.dumps(batch), count))
                batch, count = [], 0
            if not batch:
                first = ts
            last = ts
            values = {tag: index[tag][ts] for tag in tags if ts in index[tag]}
            stamp = ts + sum(float(f.params.get("offset_s", 120)) for f in skews
                             if f.at <= ts < f.at + f.duration)
            batch.append({"ts": int(round((base_epoch + stamp) * 1000)), "values": values})
            count += len(values)
            if count >= BATCH_READINGS:
                messages.append(Message(ts, orjson.dumps(batch), count))
                batch, count = [], 0
        if batch:
            messages.append(Message(float(all_t[-1]), orjson.dumps(batch), count))
        rng = np.random.default_rng([self.seed, 11, *gateway.encode()])
        return apply_gateway_faults(messages, faults, rng)


def sensor_spec(x: SensorDef):
    """A simulated sensor as the rule engine's registry slice sees it."""
    from rules.packs import SensorSpec

    lim = x.limits
    return SensorSpec(tag=x.tag, kind=x.kind, unit=x.unit, range_lo=float(x.range[0]),
                      range_hi=float(x.range[1]), ll=lim.get("ll"), l=lim.get("l"), h=lim.get("h"),
                      hh=lim.get("hh"), interval_s=float(x.interval_s))


def sensor_rules(pack, x: SensorDef) -> SensorRules:
    from rules.packs import effective_rules

    return effective_rules(pack, sensor_spec(x))[0]


def _escalated(pack, cause_name: str, level: str, hold_s: float) -> str:
    """`level` with the cause's duration bonus when its condition holds for hold_s or more
    (the pack's own escalation policy: the level rises with the duration)."""
    cause = next(c for c in pack.causes if c.name == cause_name)
    lv = Level[level.upper()]
    if cause.duration_bonus and hold_s >= cause.duration_s:
        lv = Level(max(int(Level.BLUE), min(int(cause.max_level), int(lv) + cause.duration_bonus)))
    return lv.name.lower()


# ---------------------------------------------------------------------------- loading


def _fleet(seed: int, fleet: dict) -> list[EnterpriseSpec]:
    unknown = set(fleet) - {"enterprises", *SITE_KINDS}
    if unknown:
        raise ScenarioError(f"fleet: unknown keys {sorted(unknown)} (enterprises, {', '.join(SITE_KINDS)})")
    n_ent = int(fleet.get("enterprises", 1))
    sites = [make_site(kind, n) for kind in SITE_KINDS for n in range(1, int(fleet.get(kind, 0)) + 1)]
    if n_ent < 1 or not sites:
        raise ScenarioError("fleet: needs at least one enterprise and one site")
    rng = np.random.default_rng([seed, 1])
    regions = ["370105", "370112", "370114"]
    ents = []
    for i in range(min(n_ent, len(sites))):
        region = regions[i % len(regions)]
        mine = tuple(sites[i::n_ent])
        kinds = {s.kind for s in mine}
        label = "化工储运" if "major_hazard" in kinds else "燃气" if "gas_pipeline" in kinds else "面粉"
        ents.append(EnterpriseSpec(credit_code(rng, region), f"济南模拟{label}有限公司{i + 1}",
                                   region, mine))
    return ents


def _event(raw: Any, i: int, what: str) -> dict:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{what}[{i}]: expected a mapping with at, site, kind, duration")
    missing = _ENT_KEYS - set(raw)
    if missing:
        raise ScenarioError(f"{what}[{i}]: missing {sorted(missing)}")
    return raw


def parse(doc: dict, name: str = "scenario") -> Scenario:
    if not isinstance(doc, dict):
        raise ScenarioError(f"{name}: expected a mapping")
    seed = int(doc.get("seed", 0))
    start = doc.get("start", "2024-06-03T00:00:00+08:00")
    start = start if isinstance(start, datetime) else datetime.fromisoformat(str(start))
    if start.tzinfo is None:
        raise ScenarioError("start: give an offset, e.g. 2024-06-03T00:00:00+08:00")
    duration = seconds(doc.get("duration", "1d"), "duration")
    sc = Scenario(name=str(doc.get("name", name)), seed=seed, start=start, duration=duration,
                  speed=float(doc.get("speed", 60)), enterprises=_fleet(seed, doc.get("fleet", {})),
                  description=str(doc.get("description", "")).strip())
    for i, raw in enumerate(doc.get("incidents") or []):
        ev = _event(raw, i, "incidents")
        if ev["kind"] not in INCIDENTS:
            raise ScenarioError(f"incidents[{i}]: kind {ev['kind']!r} is not one of {', '.join(INCIDENTS)}")
        site = sc.site(str(ev["site"]))
        if INCIDENTS[ev["kind"]][0] != site.kind:
            raise ScenarioError(f"incidents[{i}]: {ev['kind']} needs a {INCIDENTS[ev['kind']][0]} site, "
                                f"{site.id} is {site.kind}")
        params = {k: v for k, v in ev.items() if k not in _ENT_KEYS}
        sc.incidents.append((site.id, Incident(ev["kind"], seconds(ev["at"], f"incidents[{i}].at"),
                                               seconds(ev["duration"], f"incidents[{i}].duration"),
                                               params)))
    for i, raw in enumerate(doc.get("faults") or []):
        ev = _event(raw, i, "faults")
        site = sc.site(str(ev["site"]))
        kind = ev["kind"]
        if kind in SENSOR_FAULTS:
            target = str(ev.get("sensor", ""))
            site.sensor(target)
        elif kind in GATEWAY_FAULTS:
            gw = str(ev.get("gateway", next(iter(site.gateways))))
            target = site.gateways.get(gw, gw)
            if target not in site.gateways.values():
                raise ScenarioError(f"faults[{i}]: {site.id} has no gateway {gw} "
                                    f"(has {', '.join(site.gateways)})")
        else:
            raise ScenarioError(f"faults[{i}]: kind {kind!r} is not one of "
                                f"{', '.join(SENSOR_FAULTS + GATEWAY_FAULTS)}")
        params = {k: v for k, v in ev.items() if k not in _ENT_KEYS | {"sensor", "gateway"}}
        sc.faults.append((site.id, Fault(kind, seconds(ev["at"], f"faults[{i}].at"),
                                         seconds(ev["duration"], f"faults[{i}].duration"),
                                         target, params)))
    for sid, ev in [*sc.incidents, *sc.faults]:
        if ev.at >= duration:
            raise ScenarioError(f"{ev.kind} on {sid} at {ev.at:g} s is after the end ({duration:g} s)")
    return sc


SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"


def resolve(name_or_path: str | Path) -> Path:
    """A scenario file by path, or by name in ./scenarios or the checkout's scenarios/."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for d in (Path.cwd() / "scenarios", SCENARIO_DIR):
        for cand in (d / f"{name_or_path}.yaml", d / str(name_or_path)):
            if cand.is_file():
                return cand
    raise ScenarioError(f"{name_or_path}: no such scenario file (looked in ./scenarios)")


def load(name_or_path: str | Path) -> Scenario:
    path = resolve(name_or_path)
    with open(path, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    try:
        return parse(doc, path.stem)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from exc


def shift_base(duration: float, speed: float, now: float) -> float:
    """Epoch seconds of scenario time 0 so that no reading is ever stamped in the future:
    at 1x the scenario starts now; at Nx it ends when the publishing ends (now + T/N)."""
    return now - duration * (1.0 - 1.0 / max(speed, 1.0))


def wall_offset(duration: float, speed: float) -> float:
    return duration / max(speed, 1.0)

