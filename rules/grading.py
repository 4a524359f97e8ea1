"""Site grading (预警分级): the active conditions of one site and cause → one level.

The level rises with the limit crossed (each condition's base level), with agreement
between independent sensors (two gas detectors over 25 % LEL, 2-out-of-3 level
instruments), with how long the warning has been active, and with the hazard source's
grade. Within one episode the level never falls (the engine keeps the maximum).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from rules.model import CauseSpec, Cond, Level


@dataclass(frozen=True, slots=True)
class ActiveCondition:
    source: object     # the sensor id, or ("gateway", id): "independent" means distinct sources
    equipment: str     # tag prefix before the first '.', e.g. TK101 for TK101.LT1
    cond: Cond


def grade(cause: CauseSpec, site_grade: int, active: Iterable[ActiveCondition],
          active_for_s: float) -> Level | None:
    """None when nothing of this cause is active."""
    conds = [a for a in active if a.cond in cause.base]
    if not conds:
        return None
    level = max(cause.base[a.cond] for a in conds)
    strong = {(a.source, a.equipment) for a in conds if cause.base[a.cond] >= cause.agree_min}
    if cause.agree_group == "equipment":
        per_group = Counter(equipment for _, equipment in strong)
        agreeing = max(per_group.values(), default=0)
    else:
        agreeing = len({source for source, _ in strong})
    score = int(level)
    if agreeing >= cause.agree_n:
        score += cause.agree_bonus
    if active_for_s >= cause.duration_s:
        score += cause.duration_bonus
    score += cause.grade_adjust.get(site_grade, 0)
    return Level(max(int(Level.BLUE), min(int(cause.max_level), score)))


def equipment_of(tag: str) -> str:
    return tag.split(".", 1)[0]
