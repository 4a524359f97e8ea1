"""Site grading: base level by condition, agreement, duration, hazard grade, clamping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rules.grading import ActiveCondition, equipment_of, grade
from rules.model import CauseSpec, Cond, Level, WarningKind

GAS = CauseSpec(
    name="combustible_gas", title_zh="可燃气体", title_en="Combustible gas", kind=WarningKind.PROCESS,
    sensor_kinds=frozenset({"gas_lel"}), conditions=frozenset({Cond.H, Cond.HH, Cond.RATE_RISE}),
    base={Cond.H: Level.YELLOW, Cond.HH: Level.ORANGE, Cond.RATE_RISE: Level.BLUE},
    agree_n=2, agree_min=Level.YELLOW, agree_group="site", duration_s=1800,
)
LEVEL = CauseSpec(
    name="overfill", title_zh="高液位", title_en="High level", kind=WarningKind.PROCESS,
    sensor_kinds=frozenset({"level"}), conditions=frozenset({Cond.H, Cond.HH, Cond.TREND_HH}),
    base={Cond.TREND_HH: Level.BLUE, Cond.H: Level.YELLOW, Cond.HH: Level.ORANGE},
    agree_n=2, agree_group="equipment",
)


def a(source, cond, equipment="E"):
    return ActiveCondition(source, equipment, cond)


def test_nothing_active_is_no_level():
    assert grade(GAS, 2, [], 0) is None
    assert grade(GAS, 2, [a(1, Cond.LL)], 0) is None  # not a condition of this cause


def test_limit_crossed_sets_the_base():
    assert grade(GAS, 2, [a(1, Cond.H)], 0) == Level.YELLOW
    assert grade(GAS, 2, [a(1, Cond.HH)], 0) == Level.ORANGE
    assert grade(GAS, 2, [a(1, Cond.RATE_RISE)], 0) == Level.BLUE


def test_two_detectors_over_25_percent_lel_raise_one_level():
    assert grade(GAS, 2, [a(1, Cond.H), a(2, Cond.H)], 0) == Level.ORANGE
    # the same detector twice is not agreement; a weak condition does not count
    assert grade(GAS, 2, [a(1, Cond.H), a(1, Cond.HH)], 0) == Level.ORANGE
    assert grade(GAS, 2, [a(1, Cond.H), a(2, Cond.RATE_RISE)], 0) == Level.YELLOW


def test_equipment_agreement_needs_the_same_equipment():
    same = [a(1, Cond.H, "TK101"), a(2, Cond.H, "TK101")]
    apart = [a(1, Cond.H, "TK101"), a(2, Cond.H, "TK102")]
    assert grade(LEVEL, 2, same, 0) == Level.ORANGE
    assert grade(LEVEL, 2, apart, 0) == Level.YELLOW
    assert equipment_of("TK101.LT1") == "TK101"


def test_duration_and_hazard_grade_adjust_and_clamp():
    assert grade(GAS, 2, [a(1, Cond.H)], 1800) == Level.ORANGE
    assert grade(GAS, 1, [a(1, Cond.H)], 0) == Level.ORANGE       # grade 1 source: +1
    assert grade(GAS, 4, [a(1, Cond.RATE_RISE)], 0) == Level.BLUE  # floor
    assert grade(GAS, 1, [a(1, Cond.HH), a(2, Cond.HH)], 3600) == Level.RED  # ceiling


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([Cond.H, Cond.HH, Cond.RATE_RISE])),
                min_size=1, max_size=8),
       st.integers(1, 4), st.floats(0, 7200))
def test_more_conditions_never_lower_the_level(items, site_grade, duration):
    conds = [a(s, c) for s, c in items]
    base = grade(GAS, site_grade, conds[:1], duration)
    full = grade(GAS, site_grade, conds, duration)
    longer = grade(GAS, site_grade, conds, duration + 3600)
    assert base <= full <= longer
    assert Level.BLUE <= full <= Level.RED
