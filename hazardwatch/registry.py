"""The registry: regions → enterprises → sites → sensors, plus gateways, from hand-edited YAML.

Enterprises and supervision centres edit the file by hand, so every problem is reported at
once, each as one line naming the entry by its human id, the field and the reason:

    enterprises[0] (91370105MA3D2N8P36) sites[1] (TF-2) sensors[3] (TK101.LT) limits.hh: 25 is outside range [0, 20] (line 42)

Import is all or nothing: validation first, then one transaction of upserts on the
natural keys. Rows missing from the file are never deleted (a partial file is a normal
edit, not a request to forget sensors whose history is stored).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
import yaml
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from hazardwatch import yamlfile
from hazardwatch.db import connect_sync

# ---------------------------------------------------------------------------- credit codes

CREDIT_CODE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$")
_CREDIT_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = [pow(3, i, 31) for i in range(17)]  # 1, 3, 9, 27, 19, 26, ... 28
GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SENSOR_KIND = re.compile(r"^[a-z][a-z0-9_]*$")


def credit_code_check_character(code: str) -> str:
    """The 18th character of a 统一社会信用代码 (GB 32100-2015) from the first 17."""
    total = sum(_CREDIT_CHARS.index(c) * w for c, w in zip(code[:17], _CREDIT_WEIGHTS, strict=True))
    return _CREDIT_CHARS[(31 - total % 31) % 31]


def credit_code_problem(code: str) -> str | None:
    """Why `code` is not a valid unified social credit code, or None when it is."""
    if not CREDIT_CODE.match(code):
        return (f"{code} is not a unified social credit code (统一社会信用代码): "
                f"18 characters, digits and capitals except I, O, S, V, Z, characters 3-8 "
                f"digits (got {len(code)} characters)")
    expected = credit_code_check_character(code)
    if code[17] != expected:
        return (f"{code} has check character {code[17]} but its first 17 characters give "
                f"{expected} (GB 32100-2015); a character is probably mistyped")
    return None


# ---------------------------------------------------------------------------- the file format

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # no "18", no true, no .nan
Id = Annotated[str, Field(strict=True, min_length=1, max_length=128)]
Text = Annotated[str, Field(strict=True, min_length=1)]
SiteKind = Literal["major_hazard", "gas_pipeline", "dust_explosion"]
LIMIT_NAMES = ("ll", "l", "h", "hh")


def _problem(reason: str) -> PydanticCustomError:
    """A validation failure in the registry's words (pydantic would prefix "Value error")."""
    return PydanticCustomError("registry", "{reason}", {"reason": reason})


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Region(_Entry):
    code: Id
    name: Text
    parent: Id | None = None


class Gateway(_Entry):
    id: Id
    name: str | None = None

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not GATEWAY_ID.match(value):
            raise _problem(f"{value!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
                           "starting with a letter or digit (it becomes an MQTT topic segment)")
        return value


class Limits(_Entry):
    ll: Number | None = None
    l: Number | None = None  # noqa: E741 - the standard name of the low limit
    h: Number | None = None
    hh: Number | None = None

    def present(self) -> list[tuple[str, float]]:
        return [(n, v) for n in LIMIT_NAMES if (v := getattr(self, n)) is not None]


class Sensor(_Entry):
    tag: Id
    kind: Text
    unit: str = Field(strict=True)  # "" for dimensionless 0/1 signals
    range: tuple[Number, Number]
    limits: Limits = Limits()
    interval_s: Annotated[Number, Field(gt=0, le=86400)]
    gateway: Id
    rules: dict[str, JsonValue] = {}

    @field_validator("kind")
    @classmethod
    def _kind_shape(cls, value: str) -> str:
        if not SENSOR_KIND.match(value):
            raise _problem(f"{value!r} must be a lower-case identifier such as level or gas_lel")
        return value

    # Field validators rather than one model validator: these checks still run (and are
    # reported) when another field of the same sensor is wrong.
    @field_validator("range")
    @classmethod
    def _range_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not lo < hi:
            raise _problem(f"[{_num(lo)}, {_num(hi)}]: the low end must be below the high end")
        return value

    @field_validator("limits")
    @classmethod
    def _limits_fit(cls, value: Limits, info: ValidationInfo) -> Limits:
        issues = _limit_issues(value, info.data.get("range"))
        if issues:
            raise PydanticCustomError("registry_many", "{issues}", {"issues": issues})
        return value


class Site(_Entry):
    id: Id
    name: Text
    kind: SiteKind
    grade: Annotated[int, Field(strict=True, ge=1, le=4)]
    sensors: list[Sensor] = []


class Enterprise(_Entry):
    code: Id
    name: Text
    region: Id
    gateways: list[Gateway] = []
    sites: list[Site] = []

    @field_validator("code")
    @classmethod
    def _credit_code(cls, value: str) -> str:
        problem = credit_code_problem(value)
        if problem:
            raise _problem(problem)
        return value


class RegistryFile(_Entry):
    regions: list[Region] = []
    enterprises: list[Enterprise] = []


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _limit_issues(limits: Limits, rng: tuple[float, float] | None) -> list[tuple[str, str]]:
    """Limits ordered ll ≤ l < h ≤ hh (any subset present) and inside a valid range."""
    issues = []
    if rng is not None:  # None: the range itself is wrong and reported on its own
        lo, hi = rng
        issues = [(name, f"{_num(v)} is outside range [{_num(lo)}, {_num(hi)}]")
                  for name, v in limits.present() if not lo <= v <= hi]
    for (a, va), (b, vb) in pairwise(limits.present()):
        strict = a in ("ll", "l") and b in ("h", "hh")  # a low limit must stay below a high one
        if va > vb or (strict and va == vb):
            issues.append((a, f"{_num(va)} must be {'<' if strict else '≤'} {b} ({_num(vb)}); "
                              "limits run ll ≤ l < h ≤ hh"))
    return issues


# ---------------------------------------------------------------------------- YAML with lines


_Map = yamlfile.Map


def read_yaml(path: Path) -> Any:
    """The file's data; unreadable files and YAML errors become a RegistryError."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise RegistryError([f"cannot read {path}: {exc.strerror or exc}"]) from exc
    try:
        data = yamlfile.load(text)
    except yaml.MarkedYAMLError as exc:
        mark, start = exc.problem_mark, exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({exc.context}" if exc.context else ""
        if context and start:  # an unclosed bracket is found lines after it was opened
            context += f" started at line {start.line + 1}, column {start.column + 1}"
        context += ")" if context else ""
        raise RegistryError([f"invalid YAML{where}: {exc.problem}{context}"]) from exc
    except yaml.YAMLError as exc:
        raise RegistryError([f"invalid YAML: {exc}"]) from exc
    if data is None:
        raise RegistryError(["the file is empty (expected the keys regions and enterprises)"])
    return data


# ---------------------------------------------------------------------------- error paths

Loc = tuple[str | int, ...]
# Collections of entries and the key that names an entry for humans.
_ID_KEYS = {"regions": "code", "enterprises": "code", "gateways": "id", "sites": "id",
            "sensors": "tag"}
_MODELS: dict[str, type[BaseModel]] = {"regions": Region, "enterprises": Enterprise,
                                       "gateways": Gateway, "sites": Site, "sensors": Sensor,
                                       "limits": Limits}


@dataclass(frozen=True)
class _Issue:
    loc: Loc
    reason: str


def _entries(node: Any, key: str) -> Iterator[tuple[int, Mapping]]:
    """(index, entry) of a list of mappings; anything malformed is pydantic's to report."""
    items = node.get(key) if isinstance(node, Mapping) else None
    if isinstance(items, list):
        yield from ((i, x) for i, x in enumerate(items) if isinstance(x, Mapping))


def _text(entry: Mapping, key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) else None


_MISSING = object()


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, Mapping):
        return node.get(part, _MISSING)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return _MISSING


def _split(loc: Loc) -> tuple[list[tuple[str, int]], Loc]:
    """(collection, index) pairs leading to the entry, then the field path inside it."""
    pairs: list[tuple[str, int]] = []
    i = 0
    while i + 1 < len(loc) and loc[i] in _ID_KEYS and isinstance(loc[i + 1], int):
        pairs.append((str(loc[i]), int(loc[i + 1])))
        i += 2
    return pairs, loc[i:]


def _entry_names(data: Any, pairs: list[tuple[str, int]]) -> list[str]:
    """`sites[1] (TF-2)` for each step, the id read from the file as written."""
    names: list[str] = []
    node = data
    for collection, index in pairs:
        node = _child(_child(node, collection), index)
        ident = _child(node, _ID_KEYS[collection])
        shown = f" ({ident})" if isinstance(ident, str | int | float) and ident != "" else ""
        names.append(f"{collection}[{index}]{shown}")
    return names


def _field_name(parts: Loc) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(data: Any, loc: Loc) -> int | None:
    """The line of the deepest mapping (or key) along loc, when the data came from YAML."""
    line, node = None, data
    for part in loc:
        if isinstance(node, _Map):
            line = node.key_lines.get(part, node.line)
        node = _child(node, part)
        if node is _MISSING:
            return line
    return node.line if isinstance(node, _Map) else line


def _render(data: Any, issue: _Issue) -> str:
    pairs, field = _split(issue.loc)
    path = " ".join(_entry_names(data, pairs))
    if field:
        path = f"{path} {_field_name(field)}" if path else _field_name(field)
    line = _line(data, issue.loc)
    return f"{path or 'file'}: {issue.reason}" + (f" (line {line})" if line else "")


# ---------------------------------------------------------------------------- pydantic errors


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int | float):
        return _num(value)
    if isinstance(value, list):
        return "a list"
    return repr(value) if isinstance(value, str) else type(value).__name__


def _unknown_key(loc: Loc) -> str:
    owner = next((_MODELS[p] for p in reversed(loc[:-1]) if p in _MODELS), RegistryFile)
    allowed = list(owner.model_fields)
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    return f"unknown key (allowed: {', '.join(allowed)}){hint}"


def _pydantic_issues(exc: ValidationError) -> Iterator[_Issue]:
    """pydantic's errors in the registry's own words, one issue per problem."""
    for err in exc.errors():
        loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "registry_many":
            for field, reason in err["ctx"]["issues"]:
                yield _Issue((*loc, field), reason)
        elif kind == "registry":
            yield _Issue(loc, err["ctx"]["reason"])
        elif kind == "extra_forbidden":
            yield _Issue(loc, _unknown_key(loc))
        elif kind in ("model_type", "dict_type"):
            yield _Issue(loc, f"expected a mapping of keys to values (got {_show(value)})")
        elif kind == "missing":
            yield _Issue(loc, "missing (required)")
        elif kind == "string_type" and isinstance(value, int | float | bool):
            read_as = "a boolean" if isinstance(value, bool) else "a number"
            yield _Issue(loc, f"YAML read {_show(value)} as {read_as}; put it in quotes "
                              f"to keep it as text (\"...\")")
        elif isinstance(value, Mapping | list) or value is None:
            yield _Issue(loc, err["msg"])
        else:
            yield _Issue(loc, f"{err['msg']} (got {_show(value)})")


# ---------------------------------------------------------------------------- cross-references


def _duplicates(entries: Iterator[tuple[Loc, str | None]], what: str,
                data: Any, scope: int) -> Iterator[_Issue]:
    """Entries whose key repeats an earlier one; scope = pairs to drop when naming it."""
    first: dict[str, Loc] = {}
    for loc, key in entries:
        if key is None:
            continue
        if key in first:
            pairs, _ = _split(first[key])
            where = " ".join(_entry_names(data, pairs)[scope:])
            yield _Issue(loc, f"duplicate {what} {key!r}, first used by {where}")
        else:
            first[key] = loc


def _region_issues(data: Any, known: Mapping[str, str | None] | None) -> Iterator[_Issue]:
    """Region codes unique; parents exist and never loop."""
    regions = list(_entries(data, "regions"))
    yield from _duplicates(((("regions", i, "code"), _text(r, "code")) for i, r in regions),
                           "region code", data, 0)
    parents = dict(known or {})
    parents.update({c: _text(r, "parent") for _, r in regions if (c := _text(r, "code"))})
    for i, r in regions:
        code, parent = _text(r, "code"), _text(r, "parent")
        if parent is None or code is None:
            continue
        if parent == code:
            yield _Issue(("regions", i, "parent"), f"{parent} is the region itself")
        elif known is not None and parent not in parents:
            yield _Issue(("regions", i, "parent"),
                         f"unknown region {parent} (not in this file nor in the database)")
        elif _loops(code, parents):
            yield _Issue(("regions", i, "parent"),
                         f"{parent}: the chain of parents loops and never reaches the top")


def _loops(code: str, parents: Mapping[str, str | None]) -> bool:
    seen = {code}
    node = parents.get(code)
    while node is not None and node in parents:
        if node in seen:
            return True
        seen.add(node)
        node = parents[node]
    return False


def _enterprise_issues(data: Any, known: Mapping[str, str | None] | None) -> Iterator[_Issue]:
    """Codes unique, regions exist, ids and tags unique, sensors name a declared gateway."""
    enterprises = list(_entries(data, "enterprises"))
    yield from _duplicates(((("enterprises", i, "code"), _text(e, "code")) for i, e in enterprises),
                           "enterprise code", data, 0)
    regions = {c for _, r in _entries(data, "regions") if (c := _text(r, "code"))}
    for i, ent in enterprises:
        here: Loc = ("enterprises", i)
        region = _text(ent, "region")
        if region is not None and region not in regions and known is not None and region not in known:
            yield _Issue(here + ("region",),
                         f"unknown region {region} (not in this file nor in the database)")
        gateways = list(_entries(ent, "gateways"))
        yield from _duplicates(((here + ("gateways", g, "id"), _text(gw, "id"))
                                for g, gw in gateways), "gateway id", data, 1)
        sites = list(_entries(ent, "sites"))
        yield from _duplicates(((here + ("sites", s, "id"), _text(site, "id"))
                                for s, site in sites), "site id", data, 1)
        sensors = [(here + ("sites", s, "sensors", k), sensor)
                   for s, site in sites for k, sensor in _entries(site, "sensors")]
        yield from _duplicates(((loc + ("tag",), _text(sensor, "tag")) for loc, sensor in sensors),
                               "tag", data, 1)
        declared = {g for _, gw in gateways if (g := _text(gw, "id"))}
        for loc, sensor in sensors:
            gateway = _text(sensor, "gateway")
            if gateway is not None and gateway not in declared:
                listed = ", ".join(sorted(declared)) or "none"
                yield _Issue(loc + ("gateway",), f"{gateway!r} is not among this enterprise's "
                                                 f"gateways (declared: {listed})")


# ---------------------------------------------------------------------------- validation


class RegistryError(Exception):
    """The file (or the database) refused the import; `errors` lists every reason."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def validate(data: Any, known_regions: Mapping[str, str | None] | None = None) -> RegistryFile:
    """Check parsed YAML; every problem is reported, sorted by its place in the file.

    known_regions maps the database's region codes to their parents. None means no database
    was consulted, so references to regions outside the file cannot be checked and are not.
    """
    issues: list[_Issue] = []
    model: RegistryFile | None = None
    try:
        model = RegistryFile.model_validate(data)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(exc))
    issues.extend(_region_issues(data, known_regions))
    issues.extend(_enterprise_issues(data, known_regions))
    if issues or model is None:
        ordered = sorted(issues, key=lambda issue: _line(data, issue.loc) or 0)
        raise RegistryError([_render(data, issue) for issue in ordered])
    return model


def load_file(path: Path, known_regions: Mapping[str, str | None] | None = None) -> RegistryFile:
    """Parse and validate a registry file without touching a database."""
    return validate(read_yaml(path), known_regions)


# ---------------------------------------------------------------------------- import


@dataclass(frozen=True)
class Counts:
    total: int = 0
    new: int = 0
    updated: int = 0

    def describe(self, name: str) -> str:
        return f"{name} {self.total} ({self.new} new, {self.updated} updated)"


@dataclass(frozen=True)
class ImportSummary:
    regions: Counts
    enterprises: Counts
    sites: Counts
    gateways: Counts
    sensors: Counts
    pending_resolved: int = 0  # unregistered_tags rows that this import registered

    def describe(self) -> str:
        parts = [getattr(self, n).describe(n)
                 for n in ("regions", "enterprises", "sites", "gateways", "sensors")]
        line = ", ".join(parts)
        if self.pending_resolved:
            line += f"; {self.pending_resolved} pending tag(s) now registered"
        return line


# Unchanged rows are left alone (WHERE … IS DISTINCT FROM), so updated_at means "last real
# change" and RETURNING tells new (xmax = 0) from updated rows. Each upsert is ONE statement
# over rows COPYed into a temporary table: the registry's statement triggers then bump
# registry_meta once per table, not once per row (per-row statements made a 10,000-sensor
# import take ~20 s, almost all of it re-updating that one row inside one transaction).
_UPSERT_REGION = """
    INSERT INTO regions AS t (code, name, parent) SELECT code, name, parent FROM {src}
    ON CONFLICT (code) DO UPDATE SET name = excluded.name, parent = excluded.parent
    WHERE (t.name, t.parent) IS DISTINCT FROM (excluded.name, excluded.parent)
    RETURNING xmax = 0"""
_UPSERT_ENTERPRISE = """
    INSERT INTO enterprises AS t (code, name, region) SELECT code, name, region FROM {src}
    ON CONFLICT (code) DO UPDATE SET name = excluded.name, region = excluded.region,
        updated_at = now()
    WHERE (t.name, t.region) IS DISTINCT FROM (excluded.name, excluded.region)
    RETURNING xmax = 0"""
_UPSERT_SITE = """
    INSERT INTO sites AS t (enterprise_id, code, name, kind, grade)
    SELECT enterprise_id, code, name, kind, grade FROM {src}
    ON CONFLICT (enterprise_id, code) DO UPDATE SET name = excluded.name, kind = excluded.kind,
        grade = excluded.grade, updated_at = now()
    WHERE (t.name, t.kind, t.grade) IS DISTINCT FROM (excluded.name, excluded.kind, excluded.grade)
    RETURNING xmax = 0"""
_UPSERT_GATEWAY = """
    INSERT INTO gateways AS t (enterprise_id, code, name, username)
    SELECT enterprise_id, code, name, username FROM {src}
    ON CONFLICT (enterprise_id, code) DO UPDATE SET name = excluded.name, updated_at = now()
    WHERE t.name IS DISTINCT FROM excluded.name
    RETURNING xmax = 0"""
_SENSOR_COLUMNS = ("site_id", "gateway_id", "kind", "unit", "range_lo", "range_hi",
                   "ll", "l", "h", "hh", "interval_s", "rules")
_UPSERT_SENSOR = f"""
    INSERT INTO sensors AS t (enterprise_id, tag, {", ".join(_SENSOR_COLUMNS)})
    SELECT enterprise_id, tag, {", ".join(_SENSOR_COLUMNS)} FROM {{src}}
    ON CONFLICT (enterprise_id, tag) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in _SENSOR_COLUMNS)}, updated_at = now()
    WHERE ({", ".join(f"t.{c}" for c in _SENSOR_COLUMNS)})
        IS DISTINCT FROM ({", ".join(f"excluded.{c}" for c in _SENSOR_COLUMNS)})
    RETURNING xmax = 0"""
_COLUMNS = {
    "regions": ("code", "name", "parent"),
    "enterprises": ("code", "name", "region"),
    "sites": ("enterprise_id", "code", "name", "kind", "grade"),
    "gateways": ("enterprise_id", "code", "name", "username"),
    "sensors": ("enterprise_id", "tag", *_SENSOR_COLUMNS),
}
# A pending row is resolved once ingest would accept it: gateway and tag both registered
# to that enterprise (ingest accepts a tag from any of its enterprise's gateways).
_RESOLVE_PENDING = """
    DELETE FROM unregistered_tags u WHERE EXISTS (
        SELECT FROM enterprises e
        JOIN gateways g ON g.enterprise_id = e.id AND g.code = u.gateway_code
        JOIN sensors s ON s.enterprise_id = e.id AND s.tag = u.tag
        WHERE e.code = u.enterprise_code)"""


def _upsert(cur: psycopg.Cursor, table: str, query: str, rows: list[tuple]) -> Counts:
    """COPY the rows into a temporary table shaped like `table`, upsert them in one
    statement; count new and actually changed rows."""
    if not rows:
        return Counts()
    columns = sql.SQL(", ").join(map(sql.Identifier, _COLUMNS[table]))
    src = sql.Identifier("_import_" + table)
    # the target's column types, none of its constraints or defaults (no sequence is used)
    cur.execute(sql.SQL("CREATE TEMP TABLE {src} ON COMMIT DROP AS SELECT {columns} "
                        "FROM {table} WITH NO DATA").format(
        src=src, columns=columns, table=sql.Identifier(table)))
    with cur.copy(sql.SQL("COPY {src} ({columns}) FROM STDIN").format(
            src=src, columns=columns)) as copy:
        for row in rows:
            copy.write_row(row)
    new = updated = 0
    for (is_new,) in cur.execute(sql.SQL(query).format(src=src)).fetchall():
        new, updated = (new + 1, updated) if is_new else (new, updated + 1)
    return Counts(len(rows), new, updated)


def _ids(cur: psycopg.Cursor, query: str, params: tuple) -> dict[tuple, int]:
    return {tuple(row[:-1]): row[-1] for row in cur.execute(query, params)}


def _write(conn: psycopg.Connection, reg: RegistryFile) -> ImportSummary:
    """Upsert the validated file, parents before children, inside the caller's transaction."""
    cur = conn.cursor()
    regions = _upsert(cur, "regions", _UPSERT_REGION, [(r.code, r.name, r.parent) for r in reg.regions])
    enterprises = _upsert(cur, "enterprises", _UPSERT_ENTERPRISE,
                          [(e.code, e.name, e.region) for e in reg.enterprises])
    ent_id = _ids(cur, "SELECT code, id FROM enterprises WHERE code = ANY(%s)",
                  ([e.code for e in reg.enterprises],))
    sites = _upsert(cur, "sites", _UPSERT_SITE, [
        (ent_id[(e.code,)], s.id, s.name, s.kind, s.grade) for e in reg.enterprises for s in e.sites
    ])
    gateways = _upsert(cur, "gateways", _UPSERT_GATEWAY, [
        (ent_id[(e.code,)], g.id, g.name, f"{e.code}/{g.id}") for e in reg.enterprises
        for g in e.gateways
    ])
    ids = list(ent_id.values())
    site_id = _ids(cur, "SELECT enterprise_id, code, id FROM sites WHERE enterprise_id = ANY(%s)",
                   (ids,))
    gateway_id = _ids(cur, "SELECT enterprise_id, code, id FROM gateways "
                           "WHERE enterprise_id = ANY(%s)", (ids,))
    rows = []
    for e in reg.enterprises:
        eid = ent_id[(e.code,)]
        for s in e.sites:
            for x in s.sensors:
                rows.append((eid, x.tag, site_id[(eid, s.id)], gateway_id[(eid, x.gateway)],
                             x.kind, x.unit, x.range[0], x.range[1], x.limits.ll, x.limits.l,
                             x.limits.h, x.limits.hh, x.interval_s, Jsonb(x.rules)))
    sensors = _upsert(cur, "sensors", _UPSERT_SENSOR, rows)
    resolved = cur.execute(_RESOLVE_PENDING).rowcount
    return ImportSummary(regions, enterprises, sites, gateways, sensors, resolved)


def import_file(dsn: str, path: Path) -> ImportSummary:
    """Validate the file and upsert it in one transaction: all of it or none of it."""
    data = read_yaml(path)
    try:
        with connect_sync(dsn) as conn:
            # One import at a time, so the regions validated against are the ones written to.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('hazardwatch.registry'))")
            known = dict(conn.execute("SELECT code, parent FROM regions").fetchall())
            summary = _write(conn, validate(data, known))
            conn.commit()
            return summary
    except psycopg.Error as exc:  # the connection block has rolled back
        detail = getattr(exc.diag, "message_detail", None)
        raise RegistryError([f"database: {str(exc).strip()}" + (f" ({detail})" if detail else "")]
                            ) from exc


# ---------------------------------------------------------------------------- onboarding


@dataclass(frozen=True)
class PendingTag:
    enterprise_code: str
    gateway_code: str
    tag: str
    first_seen: datetime
    last_seen: datetime
    count: int
    last_value: float | None


def pending(dsn: str, enterprise_code: str | None = None) -> list[PendingTag]:
    """Tags (and gateways) that send data but are not registered: the onboarding list."""
    with connect_sync(dsn) as conn:
        rows = conn.execute(
            "SELECT enterprise_code, gateway_code, tag, first_seen, last_seen, count, last_value "
            "FROM unregistered_tags WHERE %(ent)s::text IS NULL OR enterprise_code = %(ent)s "
            "ORDER BY enterprise_code, gateway_code, tag",
            {"ent": enterprise_code},
        ).fetchall()
    return [PendingTag(*row) for row in rows]
