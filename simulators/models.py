"""Site models: small physical models with noise and a daily cycle, pure functions of
(seed, time) - no I/O.

A site is described by a `SiteSpec` (its sensors mirror examples/registry.yaml: the same
kinds, ranges and limits). `simulate_site` returns, per tag, the sample times (seconds from
the scenario start) and values as numpy arrays. Everything is generated from t = 0 and then
sliced, so a reading at time t depends only on (seed, site, t, incidents), never on the
range asked for.

Incidents (`Incident.kind`): tank_overfill, toxic_release (major_hazard), gas_leak
(gas_pipeline), bag_break, blockage, hopper_over_temperature (dust_explosion).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

DAY = 86400.0

Series = tuple[np.ndarray, np.ndarray]   # (t seconds from scenario start, values; NaN = null)


@dataclass(frozen=True)
class SensorDef:
    tag: str
    kind: str
    unit: str
    range: tuple[float, float]
    limits: Mapping[str, float]
    interval_s: float
    gateway: str          # the site's gateway role: dcs, gds, scada, nbiot, plc
    decimals: int = 2

    def registry_entry(self, gateway_id: str) -> dict:
        entry = {"tag": self.tag, "kind": self.kind, "unit": self.unit,
                 "range": [float(self.range[0]), float(self.range[1])]}
        if self.limits:
            entry["limits"] = {k: float(v) for k, v in self.limits.items()}
        entry.update(interval_s=float(self.interval_s), gateway=gateway_id)
        return entry


@dataclass(frozen=True)
class SiteSpec:
    id: str                 # e.g. TF1, GP2, DS1
    kind: str               # major_hazard | gas_pipeline | dust_explosion
    n: int                  # number of this site within its kind (1-based): goes into tags
    name: str
    grade: int
    sensors: tuple[SensorDef, ...]
    gateways: Mapping[str, str] = field(default_factory=dict)  # role -> gateway id

    def sensor(self, tag: str) -> SensorDef:
        for s in self.sensors:
            if s.tag == tag:
                return s
        raise KeyError(f"{self.id} has no sensor {tag} (has {', '.join(s.tag for s in self.sensors)})")


@dataclass(frozen=True)
class Incident:
    kind: str
    at: float               # seconds from the scenario start
    duration: float
    params: Mapping[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------- sensor lists
# Ranges and limits as in examples/registry.yaml (which gives their sources).

_LEVEL = dict(kind="level", unit="m", range=(0, 20), limits={"ll": 0.5, "l": 1, "h": 16, "hh": 18},
              interval_s=10, gateway="dcs", decimals=3)
_TANK_T = dict(kind="temperature", unit="°C", range=(-20, 80), limits={"h": 40, "hh": 50},
               interval_s=10, gateway="dcs", decimals=2)
_TANK_P = dict(kind="pressure", unit="kPa", range=(-1, 6),
               limits={"ll": -0.3, "l": 0.1, "h": 1.2, "hh": 1.8}, interval_s=10, gateway="dcs",
               decimals=3)
_LEL = dict(kind="gas_lel", unit="%LEL", range=(0, 100), limits={"h": 25, "hh": 50},
            interval_s=5, gateway="gds", decimals=1)
_H2S = dict(kind="gas_toxic", unit="mg/m³", range=(0, 100), limits={"h": 10, "hh": 20},
            interval_s=5, gateway="gds", decimals=1)
_NET_P = dict(kind="pressure", unit="MPa", range=(0, 0.6),
              limits={"ll": 0.15, "l": 0.2, "h": 0.38, "hh": 0.4}, interval_s=10,
              gateway="scada", decimals=4)
_FLOW = dict(kind="flow", unit="m³/h", range=(0, 12000), limits={"h": 8000, "hh": 9500},
             interval_s=10, gateway="scada", decimals=0)
_CH4 = dict(kind="gas_lel", unit="%LEL", range=(0, 100), limits={"h": 20, "hh": 35},
            interval_s=30, gateway="nbiot", decimals=1)


def tank_farm_sensors(n: int) -> tuple[SensorDef, ...]:
    out = []
    for j in (1, 2):
        tk = f"TK{n}{j:02d}"
        out += [SensorDef(f"{tk}.LT1", **_LEVEL), SensorDef(f"{tk}.LT2", **_LEVEL),
                SensorDef(f"{tk}.TT", **_TANK_T), SensorDef(f"{tk}.PT", **_TANK_P)]
    out += [SensorDef(f"GT{n}{j:02d}.LEL", **_LEL) for j in range(1, 5)]
    out.append(SensorDef(f"AT{n}01.H2S", **_H2S))
    return tuple(out)


def pipeline_sensors(n: int) -> tuple[SensorDef, ...]:
    p = f"P{n}"
    return (SensorDef(f"{p}RS01.PT", **_NET_P), SensorDef(f"{p}N01.PT", **_NET_P),
            SensorDef(f"{p}N02.PT", **_NET_P), SensorDef(f"{p}RS01.FT", **_FLOW),
            SensorDef(f"{p}VW01.CH4", **_CH4), SensorDef(f"{p}VW02.CH4", **_CH4),
            SensorDef(f"{p}MH01.CH4", **_CH4))


def dust_sensors(n: int) -> tuple[SensorDef, ...]:
    dc = f"DC{n}"
    gw = "plc"
    return (
        SensorDef(f"{dc}.DPT", "differential_pressure", "Pa", (0, 3000),
                  {"ll": 300, "l": 500, "h": 1800, "hh": 2200}, 5, gw, 0),
        SensorDef(f"{dc}.TT", "temperature", "°C", (-20, 150), {"h": 70, "hh": 80}, 10, gw, 1),
        SensorDef(f"{dc}.DUST", "dust_concentration", "mg/m³", (0, 200), {"h": 10, "hh": 20}, 10,
                  gw, 2),
        SensorDef(f"{dc}.SPARK", "spark_count", "次", (0, 1000), {"h": 1, "hh": 3}, 5, gw, 0),
        SensorDef(f"{dc}.RV.FAULT", "fault", "", (0, 1), {"h": 0.5}, 5, gw, 0),
        SensorDef(f"{dc}.RUN", "running", "", (0, 1), {}, 5, gw, 0),
    )


SITE_KINDS = {
    # kind: (site id prefix, sensors, gateway roles, name, hazard grade)
    "major_hazard": ("TF", tank_farm_sensors, {"dcs": "罐区DCS网关", "gds": "GDS网关"},
                     "甲醇罐区", 2),
    "gas_pipeline": ("GP", pipeline_sensors, {"scada": "管网SCADA网关", "nbiot": "阀井甲烷监测平台"},
                     "中压A级管网", 3),
    "dust_explosion": ("DS", dust_sensors, {"plc": "除尘器数据采集网关"}, "脉冲袋式除尘器", 3),
}

INCIDENTS = {
    # incident kind: (site kind, [(cause in the rule pack, expected level, sustained)])
    # Levels as the packs grade the incident's signature on a site of the kind's usual hazard
    # grade (TF grade 2, GP/DS grade 3: no grade adjustment): e.g. overfill = HH (orange) on
    # both level instruments of the tank (agreement) -> red. `sustained`: the condition holds
    # for the whole incident, so when the incident lasts at least the cause's duration window
    # (the pack's `duration.s`) the expected level includes the pack's duration bonus (a hot
    # hopper for 15 min is red). Sparks come and go (each clears a minute later), so they
    # never count as sustained.
    "tank_overfill": ("major_hazard", [("overfill", "red", True)]),
    "toxic_release": ("major_hazard", [("toxic_gas", "orange", True)]),
    "gas_leak": ("gas_pipeline", [("pressure_loss", "red", True), ("methane_adjacent", "red", True)]),
    "bag_break": ("dust_explosion", [("bag_break", "red", True)]),
    "blockage": ("dust_explosion", [("blockage", "orange", True)]),
    # A smouldering hopper: the temperature climbs and embers reach the spark detector
    # (`sparks` of them, default 6; `sparks: 0` for a fire without any).
    "hopper_over_temperature": ("dust_explosion", [("hopper_over_temperature", "orange", True),
                                                   ("sparks", "yellow", False)]),
}

# Per incident kind, consequences that only happen when a parameter says so (cause -> test).
INCIDENT_CONDITIONAL = {
    ("hopper_over_temperature", "sparks"): lambda params: int(params.get("sparks", HOPPER_SPARKS)) > 0,
}
HOPPER_SPARKS = 6


def make_site(kind: str, n: int, enterprise_gateway_prefix: str = "") -> SiteSpec:
    prefix, sensors, roles, name, grade = SITE_KINDS[kind]
    sid = f"{prefix}{n}"
    gateways = {role: f"{enterprise_gateway_prefix}{sid.lower()}-{role}" for role in roles}
    return SiteSpec(sid, kind, n, f"{name}{n}号", grade, sensors(n), gateways)


# ---------------------------------------------------------------------------- helpers


def site_rng(seed: int, site_id: str, stream: str = "") -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(f"{site_id}/{stream}".encode())])


def times(interval: float, t1: float) -> np.ndarray:
    return np.arange(0.0, t1, float(interval))


def hour_of_day(t: np.ndarray, tod0: float) -> np.ndarray:
    return ((tod0 + t) % DAY) / 3600.0


def smooth_noise(rng: np.random.Generator, t: np.ndarray, t1: float, knot_s: float = 900.0) -> np.ndarray:
    """Slow unit-scale noise: random knots every knot_s, linearly interpolated."""
    knots = np.arange(0.0, t1 + 2 * knot_s, knot_s)
    return np.interp(t, knots, rng.standard_normal(knots.size))


def envelope(t: np.ndarray, at: float, duration: float, rise: float, fall: float) -> np.ndarray:
    """0 before `at`, ramps to 1 over `rise`, 1 until at+duration, back to 0 over `fall`."""
    up = np.clip((t - at) / max(rise, 1e-9), 0.0, 1.0)
    down = np.clip(1.0 - (t - at - duration) / max(fall, 1e-9), 0.0, 1.0)
    return np.minimum(up, down)


def diurnal(hour: np.ndarray, peak_hour: float = 15.0) -> np.ndarray:
    """-1..1, highest at peak_hour."""
    return np.cos(2 * np.pi * (hour - peak_hour) / 24.0)


# ---------------------------------------------------------------------------- tank farm


def _level_schedule(rng: np.random.Generator, t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knots (time, level) of fill / hold / drain cycles between 3 and 14 m, and the rate
    (m/s) of the segment starting at each knot."""
    t, level = 0.0, float(rng.uniform(5, 10))
    ts, ls = [t], [level]
    filling = level < 8
    while t < t1 + 3600:
        t += float(rng.uniform(3600, 3 * 3600))                    # hold (at rest)
        ts.append(t)
        ls.append(level)
        target = float(rng.uniform(11, 14) if filling else rng.uniform(3, 6))
        rate = float(rng.uniform(1.5, 2.5)) / 3600.0               # transfer pump, m/s
        t += abs(target - level) / rate
        level = target
        ts.append(t)
        ls.append(level)
        filling = not filling
    ts_a, ls_a = np.array(ts), np.array(ls)
    rates = np.append(np.diff(ls_a) / np.diff(ts_a), 0.0)
    return ts_a, ls_a, rates


def _tank_farm(site: SiteSpec, seed: int, t1: float, tod0: float,
               incidents: list[Incident]) -> dict[str, Series]:
    out: dict[str, Series] = {}
    n = site.n
    for j in (1, 2):
        tk = f"TK{n}{j:02d}"
        rng = site_rng(seed, site.id, tk)
        t = times(10, t1)
        kts, kls, krates = _level_schedule(rng, t1)
        level = np.interp(t, kts, kls)
        rate = krates[np.clip(np.searchsorted(kts, t, side="right") - 1, 0, krates.size - 1)]
        for inc in incidents:
            if inc.kind == "tank_overfill" and inc.params.get("tank", 1) == j:
                # A transfer that is not stopped: the level climbs through H and HH
                # (peak above HH, below the top of the tank), then is pumped back down.
                # Afterwards the excess is pumped out at a transfer pump's rate (`pump_out`
                # m/h) until the level meets the tank's schedule again - a tank is never
                # emptied by metres a minute, which would look like a rupture (low_level).
                peak = float(inc.params.get("peak", 19.0))
                pump_out = float(inc.params.get("pump_out", 3.0)) / 3600.0
                start = float(np.interp(inc.at, kts, kls))
                climb = np.clip((t - inc.at) / (0.7 * inc.duration), 0, 1)
                during = start + (peak - start) * climb
                end = inc.at + inc.duration
                down = peak - pump_out * (t - end)
                after = np.maximum(level, down)
                over = np.where(t < inc.at, level, np.where(t < end, during, after))
                rate = np.where((t >= inc.at) & (t < inc.at + 0.7 * inc.duration),
                                (peak - start) / (0.7 * inc.duration), rate)
                rate = np.where((t >= end) & (down > level), -pump_out, rate)
                level = over
        hour = hour_of_day(t, tod0)
        # Two level instruments (radar, servo) agree within a few millimetres.
        out[f"{tk}.LT1"] = (t, level + rng.normal(0, 0.005, t.size))
        out[f"{tk}.LT2"] = (t, level + 0.004 + rng.normal(0, 0.005, t.size))
        temp = 22 + 5 * diurnal(hour) + 1.0 * smooth_noise(rng, t, t1, 1800) + rng.normal(0, 0.05, t.size)
        out[f"{tk}.TT"] = (t, temp)
        # Nitrogen blanket: follows the temperature, pushed up by filling, pulled down by draining.
        press = (0.55 + 0.03 * (temp - 22) + 0.1 * np.tanh(rate * 3600 / 1.0)
                 + 0.03 * smooth_noise(rng, t, t1, 600) + rng.normal(0, 0.01, t.size))
        out[f"{tk}.PT"] = (t, press)
    rng = site_rng(seed, site.id, "gds")
    t5 = times(5, t1)
    for j in range(1, 5):
        out[f"GT{n}{j:02d}.LEL"] = (t5, np.maximum(0.0, rng.normal(0, 0.4, t5.size)))
    h2s = np.maximum(0.0, rng.normal(0, 0.3, t5.size))
    for inc in incidents:
        if inc.kind == "toxic_release":
            peak = float(inc.params.get("peak", 35.0))
            e = envelope(t5, inc.at, inc.duration, 90, 300)
            h2s = h2s + e * peak * (1 + 0.1 * rng.standard_normal(t5.size)).clip(0.8, 1.2)
    out[f"AT{n}01.H2S"] = (t5, h2s)
    return out


# ---------------------------------------------------------------------------- gas pipeline


def demand(hour: np.ndarray) -> np.ndarray:
    """City gas demand 0..1: a morning and an evening peak over a night base."""
    d = (0.25 + 0.75 * np.exp(-(((hour - 7.5) / 1.2) ** 2))
         + 0.85 * np.exp(-(((hour - 18.5) / 1.5) ** 2)))
    return np.clip(d, 0, 1)


def _pipeline(site: SiteSpec, seed: int, t1: float, tod0: float,
              incidents: list[Incident]) -> dict[str, Series]:
    rng = site_rng(seed, site.id, "scada")
    p = f"P{site.n}"
    t = times(10, t1)
    d = np.clip(demand(hour_of_day(t, tod0)) + 0.03 * smooth_noise(rng, t, t1, 1200), 0, 1)
    rs = 0.345 - 0.025 * d + 0.002 * smooth_noise(rng, t, t1, 600)
    n1 = rs - 0.015 - 0.03 * d
    n2 = rs - 0.03 - 0.045 * d
    flow = 1200 + 4800 * d
    t30 = times(30, t1)
    ch4 = {k: np.zeros(t30.size) for k in ("VW01", "VW02", "MH01")}
    for inc in incidents:
        if inc.kind == "gas_leak":
            # Pressure falls much faster than any demand swing (~0.02 MPa/min), the downstream
            # node below LL and the next one below L; flow rises by the leak; methane builds up
            # in the valve wells next to the break.
            e = envelope(t, inc.at, inc.duration, 0.25 * inc.duration, 600)
            n2 = (1 - e) * n2 + e * float(inc.params.get("n2", 0.13))
            n1 = (1 - e) * n1 + e * float(inc.params.get("n1", 0.185))
            rs = rs - 0.02 * e
            flow = flow + 900 * e
            m = envelope(t30, inc.at, inc.duration, 0.4 * inc.duration, 900)
            ch4["VW01"] = ch4["VW01"] + 45 * m
            ch4["VW02"] = ch4["VW02"] + 26 * m
            ch4["MH01"] = ch4["MH01"] + 5 * m
    out = {
        f"{p}RS01.PT": (t, rs + rng.normal(0, 0.0008, t.size)),
        f"{p}N01.PT": (t, n1 + rng.normal(0, 0.0008, t.size)),
        f"{p}N02.PT": (t, n2 + rng.normal(0, 0.0008, t.size)),
        f"{p}RS01.FT": (t, flow + rng.normal(0, 40, t.size)),
    }
    rng2 = site_rng(seed, site.id, "nbiot")
    for k, base in ch4.items():
        out[f"{p}{k}.CH4"] = (t30, np.maximum(0.0, base + rng2.normal(0, 0.3, t30.size)))
    return out


# ---------------------------------------------------------------------------- dust workshop


def _dust(site: SiteSpec, seed: int, t1: float, tod0: float,
          incidents: list[Incident]) -> dict[str, Series]:
    rng = site_rng(seed, site.id, "plc")
    dc = f"DC{site.n}"
    period = float(rng.uniform(420, 600))       # pulse-cleaning cycle, s
    phase0 = float(rng.uniform(0, period))
    t5 = times(5, t1)
    hour5 = hour_of_day(t5, tod0)
    load = 0.8 + 0.2 * diurnal(hour5, 14.0)      # production is heavier by day
    since_pulse = (t5 + phase0) % period
    # Saw-tooth: the bags load up between cleanings; a pulse-jet cleaning pass (row by row,
    # about a minute) brings ΔP back down. 200 Pa over 60 s stays under the pack's rate_fall.
    clean_s = 60.0
    tooth = np.where(since_pulse < clean_s, 1 - since_pulse / clean_s,
                     (since_pulse - clean_s) / (period - clean_s))
    dp = 950 + 150 * load + 200 * tooth + rng.normal(0, 8, t5.size)
    dust = 1.5 + 2.5 * np.exp(-since_pulse / 20.0) + np.abs(rng.normal(0, 0.2, t5.size))
    t10 = times(10, t1)
    hour10 = hour_of_day(t10, tod0)
    temp = 35 + 6 * diurnal(hour10) + smooth_noise(rng, t10, t1, 1800) + rng.normal(0, 0.2, t10.size)
    sparks = np.zeros(t5.size)
    for inc in incidents:
        if inc.kind == "bag_break":
            e = envelope(t5, inc.at, inc.duration, 20, 120)
            dp = dp * (1 - 0.65 * e)
            dust = dust + float(inc.params.get("dust", 40)) * e
        elif inc.kind == "blockage":
            # Cleared by restoring the pulse cleaning: ΔP comes back down over a few cleaning
            # cycles (`recover` s, default 20 min), not in one step (a step would be a ΔP
            # drop as fast as a torn bag's).
            e = envelope(t5, inc.at, inc.duration, 0.5 * inc.duration,
                         float(inc.params.get("recover", 1200)))
            dp = dp + float(inc.params.get("rise", 1400)) * e
        elif inc.kind == "hopper_over_temperature":
            e = envelope(t10, inc.at, inc.duration, 0.5 * inc.duration, 1200)
            temp = temp + float(inc.params.get("rise", 55)) * e
            # Embers reach the spark detector while the hopper is hot: `sparks` single
            # counts at distinct 5-s readings where the fire is at least half developed.
            e5 = envelope(t5, inc.at, inc.duration, 0.5 * inc.duration, 1200)
            hot = np.flatnonzero(e5 >= 0.5)
            n = min(int(inc.params.get("sparks", HOPPER_SPARKS)), hot.size)
            if n > 0:
                sparks[rng.choice(hot, size=n, replace=False)] += 1
    dust10 = np.interp(t10, t5, dust)
    return {
        f"{dc}.DPT": (t5, dp),
        f"{dc}.TT": (t10, temp),
        f"{dc}.DUST": (t10, dust10),
        f"{dc}.SPARK": (t5, sparks),
        f"{dc}.RV.FAULT": (t5, np.zeros(t5.size)),
        f"{dc}.RUN": (t5, np.ones(t5.size)),
    }


_MODELS = {"major_hazard": _tank_farm, "gas_pipeline": _pipeline, "dust_explosion": _dust}


def simulate_site(site: SiteSpec, seed: int, t0: float, t1: float, *, tod0: float = 0.0,
                  incidents: Iterable[Incident] = ()) -> dict[str, Series]:
    """Readings of every sensor of `site` in [t0, t1) seconds from the scenario start.

    tod0 is the scenario start's time of day (seconds after local midnight) for the daily
    cycles. Values are rounded to each sensor's resolution and clipped to its range.
    """
    incidents = [i for i in incidents if INCIDENTS[i.kind][0] == site.kind]
    raw = _MODELS[site.kind](site, int(seed), float(t1), float(tod0), incidents)
    out: dict[str, Series] = {}
    for s in site.sensors:
        t, v = raw[s.tag]
        keep = (t >= t0) & (t < t1)
        v = np.clip(np.round(v[keep], s.decimals), s.range[0], s.range[1])
        out[s.tag] = (t[keep], v)
    return out
