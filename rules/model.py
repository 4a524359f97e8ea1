"""Types shared by rule packs, condition evaluation, grading and the engine. No I/O.

Two layers, as the national system does it: per-sensor *conditions* (报警) and per-site
*warnings* (预警) graded blue < yellow < orange < red.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import numpy as np


class Level(IntEnum):
    """Warning level: 蓝 低 / 黄 一般 / 橙 较大 / 红 重大."""

    BLUE = 1
    YELLOW = 2
    ORANGE = 3
    RED = 4

    @property
    def zh(self) -> str:
        return {1: "蓝色(低)", 2: "黄色(一般)", 3: "橙色(较大)", 4: "红色(重大)"}[self.value]


class Cond(StrEnum):
    """Sensor conditions (报警). Values are stable: they are stored in alarms.condition."""

    HH = "hh"                    # high-high limit crossed
    H = "h"                      # high limit crossed
    L = "l"                      # low limit crossed
    LL = "ll"                    # low-low limit crossed
    RATE_RISE = "rate_rise"      # rising faster than the configured rate
    RATE_FALL = "rate_fall"      # falling faster than the configured rate
    TREND_HH = "trend_hh"        # projected to reach HH within the lead time
    TREND_LL = "trend_ll"        # projected to reach LL within the lead time
    DEVIATION = "deviation"      # CUSUM on the EWMA baseline (sensors without fixed limits)
    STUCK = "stuck"              # flat-line: no change beyond eps for the window
    OUT_OF_RANGE = "out_of_range"  # outside the physical range (sensor fault)
    BAD_QUALITY = "bad_quality"  # the gateway says the value is bad/faulty (q >= 2)
    NO_DATA = "no_data"          # nothing for k x the expected interval (processing time)
    OFFLINE = "offline"          # the gateway's link is down (state topic / last-will)


PROCESS_CONDS = frozenset({Cond.HH, Cond.H, Cond.L, Cond.LL, Cond.RATE_RISE, Cond.RATE_FALL,
                           Cond.TREND_HH, Cond.TREND_LL, Cond.DEVIATION})
FAULT_CONDS = frozenset({Cond.STUCK, Cond.OUT_OF_RANGE, Cond.BAD_QUALITY})
INTERRUPTION_CONDS = frozenset({Cond.NO_DATA, Cond.OFFLINE})


class WarningKind(StrEnum):
    PROCESS = "process"                      # process danger
    SENSOR_FAULT = "sensor_fault"            # 传感器故障: never mistaken for process danger
    DATA_INTERRUPTION = "data_interruption"  # 数据中断 / 联网中断


@dataclass(frozen=True)
class SensorRules:
    """The effective rules of one sensor: pack defaults < sensor-kind section < registry
    limits < the sensor's own `rules` overrides. NaN / None means "off"."""

    hh: float = np.nan
    h: float = np.nan
    l: float = np.nan  # noqa: E741 - the standard's name
    ll: float = np.nan
    deadband: float = 0.0          # absolute units, applied on the clearing side of each limit
    on_delay_s: float = 0.0        # the condition must hold this long before it raises
    off_delay_s: float = 0.0       # the clear condition must hold this long before it clears
    rate_rise_per_min: float = np.nan
    rate_fall_per_min: float = np.nan   # a positive number: the allowed fall per minute
    rate_tau_s: float = 60.0       # time constant of the slope used for rate of change
    trend_tau_s: float = np.nan    # time constant of the slope used for projection; NaN = off
    trend_lead_s: float = 900.0    # warn when HH / LL is projected within this many seconds
    deviation: bool = False        # EWMA/CUSUM baseline deviation
    deviation_alpha: float = 0.01  # EWMA weight per sample
    deviation_k: float = 0.5       # CUSUM slack, in standard deviations
    deviation_h: float = 8.0       # CUSUM decision interval, in standard deviations
    deviation_warmup: int = 60     # samples before the baseline may raise
    stuck_window_s: float = np.nan  # flat-line window; NaN = off (digital points)
    stuck_eps: float = 0.0         # change smaller than this counts as "no change"
    range_lo: float = -np.inf
    range_hi: float = np.inf
    interval_s: float = 60.0       # expected reporting interval
    nodata_k: float = 3.0          # no data for k x interval raises no_data


# Column names of the parameter table the engine builds from SensorRules (one array each).
PARAM_FIELDS: tuple[str, ...] = tuple(SensorRules.__dataclass_fields__)


@dataclass(frozen=True)
class CauseSpec:
    """How conditions of one site combine into one warning (one per site and cause)."""

    name: str                       # stable id, stored in warnings.cause
    title_zh: str
    title_en: str
    kind: WarningKind
    sensor_kinds: frozenset[str]    # registry sensors.kind values that feed this cause
    conditions: frozenset[Cond]     # which conditions of those sensors count
    base: dict[Cond, Level]         # level a condition alone gives
    agree_n: int = 2                # this many independent sensors agreeing ...
    agree_min: Level = Level.YELLOW  # ... each at least at this base level ...
    agree_bonus: int = 1            # ... raise the level by this much
    agree_group: str = "site"       # "site", or "equipment" (tag prefix before the first '.')
    duration_s: float = 1800.0      # active this long raises the level ...
    duration_bonus: int = 1         # ... by this much
    grade_adjust: dict[int, int] = field(default_factory=lambda: {1: 1, 2: 0, 3: 0, 4: -1})
    max_level: Level = Level.RED
