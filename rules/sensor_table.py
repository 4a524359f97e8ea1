"""The registry slice the engine needs, held as columns rather than one object per sensor.

Why: at a million sensors, one SensorRow + SensorSpec per sensor costs seconds to build
and ~400 bytes each to keep, and resolving rules sensor by sensor costs tens of seconds.
Columns load straight from a binary COPY, and sensors that share a rule *group* (site kind,
sensor kind, unit, per-sensor `rules` overrides) resolve their rules together
(rules.packs.effective_arrays). The table is still a Sequence[SensorRow]: indexing builds
the row on demand, so code that reads `rows[i].spec.tag` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
import orjson

from rules.packs import SensorSpec

LIMIT_COLUMNS = ("ll", "l", "h", "hh")
FLOAT_COLUMNS = ("range_lo", "range_hi", "ll", "l", "h", "hh", "interval_s")
INT_COLUMNS = ("sensor_id", "site_id", "gateway_id", "site_grade", "group")


@dataclass(frozen=True)
class Group:
    """What sensors of one rule group share. rules_key is the overrides' canonical text."""

    site_kind: str
    kind: str
    unit: str
    rules_key: str
    rules: Mapping = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.site_kind, self.kind, self.unit, self.rules_key)


def rules_key(rules: Mapping | None) -> str:
    """Canonical text of a `rules` mapping (key order does not matter; {} is "")."""
    return orjson.dumps(rules, option=orjson.OPT_SORT_KEYS).decode() if rules else ""


class SensorTable(Sequence):
    """Columns of equal length; gateway_id -1 means none, a NaN limit means not set.

    Columns: sensor_id, site_id, gateway_id, site_grade, group (index into `groups`), the
    float columns range_lo, range_hi, ll, l, h, hh, interval_s, and `tags` (a list)."""

    def __init__(self, columns: Mapping[str, np.ndarray], tags: Sequence[str],
                 groups: Sequence[Group]) -> None:
        n = len(tags)
        for name in INT_COLUMNS:
            setattr(self, name, np.asarray(columns[name], dtype=np.int64).reshape(n))
        for name in FLOAT_COLUMNS:
            setattr(self, name, np.asarray(columns[name], dtype=np.float64).reshape(n))
        self.tags = list(tags)
        self.groups = list(groups)

    sensor_id: np.ndarray
    site_id: np.ndarray
    gateway_id: np.ndarray
    site_grade: np.ndarray
    group: np.ndarray
    range_lo: np.ndarray
    range_hi: np.ndarray
    ll: np.ndarray
    l: np.ndarray  # noqa: E741 - the standard's name
    h: np.ndarray
    hh: np.ndarray
    interval_s: np.ndarray

    @classmethod
    def empty(cls) -> SensorTable:
        return cls({name: np.zeros(0) for name in (*INT_COLUMNS, *FLOAT_COLUMNS)}, [], [])

    @classmethod
    def from_rows(cls, rows: Sequence) -> SensorTable:
        """From SensorRow objects (tests, simulators); the database path builds columns."""
        if isinstance(rows, SensorTable):
            return rows
        index: dict[tuple, int] = {}
        groups: list[Group] = []
        codes = []
        for row in rows:
            spec = row.spec
            key = (row.site_kind, spec.kind, spec.unit, rules_key(spec.rules))
            code = index.get(key)
            if code is None:
                code = index[key] = len(groups)
                groups.append(Group(*key, rules=spec.rules or {}))
            codes.append(code)

        def floats(get) -> np.ndarray:
            return np.array([np.nan if (x := get(r)) is None else float(x) for r in rows],
                            dtype=np.float64)

        columns = {
            "sensor_id": [r.sensor_id for r in rows],
            "site_id": [r.site_id for r in rows],
            "gateway_id": [-1 if r.gateway_id is None else r.gateway_id for r in rows],
            "site_grade": [r.site_grade for r in rows],
            "group": codes,
            **{name: floats(lambda r, n=name: getattr(r.spec, n)) for name in FLOAT_COLUMNS},
        }
        return cls(columns, [r.spec.tag for r in rows], groups)

    # ---- Sequence[SensorRow] -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tags)

    @overload
    def __getitem__(self, i: int) -> object: ...
    @overload
    def __getitem__(self, i: slice) -> list: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from rules.engine import SensorRow  # the engine imports this module

        if i < 0:
            i += len(self)
        g = self.groups[int(self.group[i])]
        lim = [None if v != v else float(v) for v in (self.ll[i], self.l[i], self.h[i], self.hh[i])]
        spec = SensorSpec(tag=self.tags[i], kind=g.kind, unit=g.unit,
                          range_lo=float(self.range_lo[i]), range_hi=float(self.range_hi[i]),
                          ll=lim[0], l=lim[1], h=lim[2], hh=lim[3],
                          interval_s=float(self.interval_s[i]), rules=dict(g.rules))
        gateway = int(self.gateway_id[i])
        return SensorRow(int(self.sensor_id[i]), int(self.site_id[i]),
                         None if gateway < 0 else gateway, g.site_kind, int(self.site_grade[i]),
                         spec)

    def __iter__(self) -> Iterator:
        return (self[i] for i in range(len(self)))

    # ---- combining ---------------------------------------------------------------------

    def take(self, idx: np.ndarray) -> SensorTable:
        cols = {name: getattr(self, name)[idx] for name in (*INT_COLUMNS, *FLOAT_COLUMNS)}
        tags = self.tags
        return SensorTable(cols, [tags[i] for i in np.asarray(idx).tolist()], self.groups)

    def merged(self, incoming: SensorTable, slots: np.ndarray) -> SensorTable:
        """This table with incoming[i] written at slots[i] (slots[i] < 0: appended, in order).

        Group codes of `incoming` are re-coded into this table's group list."""
        index = {g.key: i for i, g in enumerate(self.groups)}
        groups = list(self.groups)
        recode = np.empty(len(incoming.groups), dtype=np.int64)
        for i, g in enumerate(incoming.groups):
            code = index.get(g.key)
            if code is None:
                code = index[g.key] = len(groups)
                groups.append(g)
            recode[i] = code
        known = slots >= 0
        new = ~known
        cols = {}
        for name in (*INT_COLUMNS, *FLOAT_COLUMNS):
            mine, theirs = getattr(self, name), getattr(incoming, name)
            if name == "group":
                theirs = recode[theirs] if len(theirs) else theirs
            out = np.concatenate([mine, theirs[new]])
            out[slots[known]] = theirs[known]
            cols[name] = out
        tags = list(self.tags)
        in_tags = incoming.tags
        for slot, i in zip(slots[known].tolist(), np.flatnonzero(known).tolist(), strict=True):
            tags[slot] = in_tags[i]
        tags.extend(in_tags[i] for i in np.flatnonzero(new).tolist())
        return SensorTable(cols, tags, groups)
