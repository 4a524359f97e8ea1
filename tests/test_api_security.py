"""API security probes over the whole HTTP surface, enumerated from the app itself so a new
endpoint is covered without editing this file:

- hostile strings (SQL injection, LIKE wildcards, NUL, unicode) in every query, path and
  header parameter and every JSON body field of every route: never a 5xx; a 2xx answer is
  the same as for a harmless value that matches nothing (an injected filter filters, it
  does not widen); nothing outside the caller's scope; the tables intact afterwards;
- a source scan: no SQL text is built with f-strings, % or .format() from values (psycopg's
  sql composition is fine), reported as file:line;
- security headers on every console page and every API answer, and console pages that work
  under that CSP (no inline script, style or event handler).

Token expiry, revocation, rate limiting, CSRF and secret-free logs are tested in
tests/test_auth.py; the role × endpoint matrix in tests/test_api.py.
"""

from __future__ import annotations

import ast
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fastapi.routing
import psycopg
import pytest
import uvicorn
from apihelp import E1, E2, E3, UNKNOWN_ENTERPRISE, USERS, ApiServer, seed
from dbutil import fresh_database
from fastapi.routing import APIRoute

from alerting.api import create_app
from alerting.api.app import CONSOLE_DIR
from hazardwatch.app import add_ops_routes

REPO = Path(__file__).resolve().parents[1]

INJECTIONS = [
    "' OR 1=1--",
    "'; DROP TABLE warnings;--",
    "1; DELETE FROM users",
    "') UNION SELECT password_hash, NULL FROM users --",
    "%",
    "_",
    "%' OR '%'='",
    "\\",
    "\x00",
    "a\x00b",
    "天桥区'; --",
    "\u202e' OR 1=1",          # right-to-left override
    "ｓｅｌｅｃｔ",               # full-width letters
    "😀",
    "\ufeff",
    "9" * 40,                  # overflows every integer column
    "1 OR 1=1",
    "$1",
    "%s",
    "%(id)s",
    "{}",
    "x" * 3000,
]
BENIGN = "zz-nomatch"          # valid for every text filter, matches nothing
OTHERS = (E2, E3, UNKNOWN_ENTERPRISE)


class Server(ApiServer):
    """The whole HTTP surface as `serve` builds it: API, console and the ops routes."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, heartbeat_s=0.5)
        self.app = create_app(self.settings, clock=self.clock, stop=self.stop_event,
                              heartbeat_s=0.5, setup=lambda app: add_ops_routes(app, None))
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning",
            timeout_graceful_shutdown=2))


@pytest.fixture(scope="module")
async def env():
    with fresh_database("hw_apisec") as dsn:
        world = seed(dsn)
        server = await Server(dsn).start()
        try:
            yield server, world
        finally:
            await server.stop()


# ------------------------------------------------------------------ the routes


class Probe:
    """One operation of the API: where its parameters and body fields are."""

    def __init__(self, path: str, method: str, op: dict, schemas: dict) -> None:
        self.path, self.method = path, method
        params = op.get("parameters", [])
        self.path_params = [p["name"] for p in params if p["in"] == "path"]
        self.query = [p["name"] for p in params if p["in"] == "query"]
        self.headers = [p["name"] for p in params if p["in"] == "header"]
        self.body: dict[str, dict] = {}
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        if content:
            self.body = _properties(content["schema"], schemas)
        self.stream = "text/event-stream" in str(op.get("responses", {}))

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


def _properties(schema: dict, schemas: dict) -> dict[str, dict]:
    for option in schema.get("anyOf", [schema]):
        if "$ref" in option:
            return schemas[option["$ref"].rsplit("/", 1)[1]].get("properties", {})
    return schema.get("properties", {})


def api_routes(app) -> list[tuple[str, APIRoute]]:
    """(full path, route) of every API route. FastAPI ≥ 0.16x keeps included routers as
    lazily expanded entries in app.routes and offers iter_route_contexts to walk them;
    older versions list the routes themselves."""
    walk = getattr(fastapi.routing, "iter_route_contexts", None)
    if walk is None:
        return [(r.path_format, r) for r in app.routes if isinstance(r, APIRoute)]
    return [(c.path_format, c.original_route) for c in walk(app.routes)
            if isinstance(c.original_route, APIRoute)]


def probes(app) -> list[Probe]:
    doc = app.openapi()
    schemas = doc.get("components", {}).get("schemas", {})
    out = []
    for path, route in api_routes(app):
        for method in sorted(route.methods - {"HEAD"}):
            op = doc["paths"].get(path, {}).get(method.lower())
            if op is None:
                # Outside the OpenAPI document (e.g. /metrics): must take no input at all.
                d = route.dependant
                assert not (d.path_params or d.query_params or d.header_params or d.body_params
                            or d.dependencies), f"{method} {path} takes input but is not " \
                    "in the OpenAPI document, so the probes cannot see its parameters"
                op = {}
            out.append(Probe(path, method, op, schemas))
    documented = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    missing = documented - {repr(p) for p in out}
    assert not missing, f"routes in the OpenAPI document the enumeration did not find: {missing}"
    return out


def sample(prop: dict) -> Any:
    """A valid value for a body field (so that only the injected field is wrong)."""
    kinds = [prop] + prop.get("anyOf", [])
    for kind in kinds:
        if kind.get("type") == "string":
            if kind.get("format") == "date-time":
                return (datetime.now(UTC) + timedelta(hours=1)).isoformat()
            return kind.get("enum", ["probe text"])[0]
        if kind.get("type") in ("integer", "number"):
            return kind.get("minimum", 1)
        if kind.get("type") == "boolean":
            return True
    return None


def path_values(world) -> dict[str, str]:
    return {"warning_id": str(world.warnings[E1]), "sensor_id": str(world.sensors[E1]),
            "code": E1}


def fill(probe: Probe, world, override: dict[str, str] | None = None) -> str:
    known = path_values(world)
    values = {}
    for name in probe.path_params:
        assert name in known, f"{probe}: give a valid value for path parameter {name!r} " \
                              "in path_values() so the probes can reach it"
        values[name] = quote(known[name], safe="")
    values.update({k: quote(v, safe="") for k, v in (override or {}).items()})
    return probe.path.format(**values)


async def call(client, probe: Probe, url: str, *, params=None, headers=None, body=None):
    """(status, json or None, text). Streams: status and headers only."""
    kw: dict[str, Any] = {"params": params, "headers": headers}
    if probe.method != "GET":
        kw["json"] = body if body is not None else ({} if probe.body else None)
    if probe.stream:
        async with client.stream(probe.method, url, **kw) as r:
            return r.status_code, None, "", r.headers
    r = await client.request(probe.method, url, **kw)
    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
    return r.status_code, data, r.text, r.headers


def _volatile(a: Any, b: Any, path: str = "") -> set[str]:
    """Paths whose values differ between two identical requests (times, ages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in a.keys() | b.keys():
            out |= _volatile(a.get(k), b.get(k), f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out |= _volatile(x, y, f"{path}/{i}")
        return out
    return set() if a == b else {path}


def _strip(value: Any, volatile: set[str], path: str = "") -> Any:
    if path in volatile:
        return "<volatile>"
    if isinstance(value, dict):
        return {k: _strip(v, volatile, f"{path}/{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v, volatile, f"{path}/{i}") for i, v in enumerate(value)]
    return value


async def counts(dsn: str) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        out = {}
        for table in ("users", "regions", "enterprises", "sites", "sensors", "warnings",
                      "readings", "api_tokens", "dead_letters", "unregistered_tags"):
            cur = await conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(
                psycopg.sql.Identifier(table)))
            out[table] = (await cur.fetchone())[0]
        return out


# ------------------------------------------------------------------ injection probes


def test_the_probes_see_every_kind_of_input():
    """The enumeration itself: it finds the routes, parameters and body fields we know of
    (if FastAPI changed how it describes them, the probes would silently probe nothing)."""
    from hazardwatch.settings import Settings

    found = {repr(p): p for p in probes(create_app(Settings(), setup=lambda a: add_ops_routes(a, None)))}
    assert {"GET /api/warnings", "POST /api/login", "GET /api/events/stream", "GET /metrics",
            "POST /api/warnings/{warning_id}/shelve", "GET /healthz"} <= found.keys()
    assert {"state", "level", "region", "enterprise", "cause", "limit", "offset"} <= \
        set(found["GET /api/warnings"].query)
    assert found["GET /api/sensors/{sensor_id}/readings"].path_params == ["sensor_id"]
    assert "from" in found["GET /api/kpis"].query
    assert found["GET /api/events/stream"].stream
    assert "Last-Event-ID" in found["GET /api/events/stream"].headers
    assert set(found["POST /api/warnings/{warning_id}/shelve"].body) == {"reason", "until"}
    assert set(found["POST /api/login"].body) == {"username", "password"}


@pytest.mark.parametrize("user", ["admin", "ent1"])
async def test_injection_everywhere(env, user):
    server, world = env
    before = await counts(world.dsn)
    token = await server.login(user)
    every = probes(server.app)
    tried = 0
    async with server.client(token) as c:
        for probe in every:
            url = fill(probe, world)
            # query and header parameters: compared with a harmless value that matches nothing
            for name, where in [(n, "query") for n in probe.query] + \
                               [(n, "header") for n in probe.headers]:
                def kw(value: str, name=name, where=where) -> dict:
                    return {"params": {name: value}} if where == "query" else \
                        {"headers": {name: value.encode("utf-8")}}
                base = [await call(c, probe, url, **kw(BENIGN)) for _ in range(2)]
                for value in INJECTIONS:
                    if where == "header" and re.search(r"[\x00-\x1f\x7f]", value):
                        continue      # not expressible in an HTTP header at all
                    status, data, text, _ = await call(c, probe, url, **kw(value))
                    tried += 1
                    where_ = f"{user}: {probe} {where} {name}={value[:40]!r}"
                    assert status < 500, f"{where_}: {status} {text[:300]}"
                    _no_leak(user, text, where_)
                    if 200 <= status < 300 and data is not None:
                        assert 200 <= base[0][0] < 300, \
                            f"{where_}: accepted, but the harmless value was refused ({base[0][0]})"
                        volatile = _volatile(base[0][1], base[1][1])
                        assert _strip(data, volatile) == _strip(base[0][1], volatile), \
                            f"{where_}: answered more or other than a value that matches nothing"
            # path parameters: nothing exists under a hostile id or code
            for name in probe.path_params:
                for value in INJECTIONS:
                    status, _, text, _ = await call(c, probe, fill(probe, world, {name: value}),
                                                    body={k: sample(p) for k, p in probe.body.items()})
                    tried += 1
                    assert 400 <= status < 500, f"{user}: {probe} path {name}={value[:40]!r}: " \
                                                f"{status} {text[:300]}"
            # body fields: each in turn hostile, the others valid; stored as data or refused
            for name in probe.body:
                if probe.path == "/api/logout":
                    continue
                for value in INJECTIONS:
                    body = {k: sample(p) for k, p in probe.body.items()} | {name: value}
                    status, data, text, _ = await call(c, probe, url, body=body)
                    tried += 1
                    where_ = f"{user}: {probe} body {name}={value[:40]!r}"
                    assert status < 500, f"{where_}: {status} {text[:300]}"
                    _no_leak(user, text, where_)
    assert tried > 500, tried      # the enumeration found a real surface
    after = await counts(world.dsn)
    after.pop("api_tokens"), before.pop("api_tokens")   # sign-ins add tokens
    assert after == before
    async with await psycopg.AsyncConnection.connect(world.dsn) as conn:
        cur = await conn.execute("SELECT id FROM warnings WHERE id = ANY(%s)",
                                 (list(world.warnings.values()),))
        assert len(await cur.fetchall()) == len(world.warnings)


def _no_leak(user: str, text: str, where: str) -> None:
    assert "argon2" not in text, where
    if user != "admin":
        for code in OTHERS:
            if code not in USERS[user][3]:
                assert code not in text, f"{where}: answered {code}, outside the user's scope"


async def test_raw_bytes_that_are_not_utf8(env):
    """Percent-escapes of invalid UTF-8 in the query and the path: refused or harmless."""
    server, world = env
    token = await server.login("admin")
    async with server.client(token) as c:
        for path in ("/api/warnings?cause=%ff%fe", "/api/warnings?enterprise=%c0%27",
                     "/api/registry/enterprises/%ff%27", "/api/warnings/%ff",
                     "/api/dead-letters?enterprise=%00", "/api/kpis?region=%e2%80%ae"):
            r = await c.get(path)
            assert r.status_code < 500, (path, r.status_code, r.text)
            if r.status_code == 200 and "items" in r.json():
                assert r.json()["items"] == [], path


# ------------------------------------------------------------------ SQL built from values


SQL_CALLS = {"execute", "executemany", "copy", "stream"}
SQL_TEXT = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|WHERE|VALUES|ORDER BY|GROUP BY|AND|OR|"
                      r"JOIN|RETURNING|SET)\b|%\(\w+\)s")


def _literal(node: ast.AST | None) -> bool:
    return node is None or (isinstance(node, ast.Constant) and
                            (node.value is None or isinstance(node.value, str | int | float)))


def _constant(node: ast.AST | None, names: set[str]) -> bool:
    """Whether `node` is fixed when the module is written: literals, module constants
    (`names`), and what str.join, f-strings, arithmetic, len() and comprehensions over
    them make. Nothing a request can reach."""
    if _literal(node):
        return True
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return all(_constant(e, names) for e in node.elts)
    if isinstance(node, ast.JoinedStr):
        return all(_constant(v.value, names) for v in node.values
                   if isinstance(v, ast.FormattedValue))
    if isinstance(node, ast.BinOp):
        return _constant(node.left, names) and _constant(node.right, names)
    if isinstance(node, ast.Subscript):
        return _constant(node.value, names) and _constant(node.slice, names)
    if isinstance(node, ast.GeneratorExp | ast.ListComp):
        bound = set(names)
        for gen in node.generators:
            if not _constant(gen.iter, bound) or gen.ifs:
                return False
            bound |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
        return _constant(node.elt, bound)
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "join":
            return _constant(func.value, names) and all(_constant(a, names) for a in node.args)
        if isinstance(func, ast.Name) and func.id in ("len", "str", "int", "repr"):
            return all(_constant(a, names) for a in node.args)
    return False


def _module_constants(tree: ast.Module) -> set[str]:
    """Module-level names assigned once, from constant expressions, never rebound in a
    function (`global`)."""
    assigned: dict[str, int] = {}
    for n in tree.body:
        targets = n.targets if isinstance(n, ast.Assign) else \
            [n.target] if isinstance(n, ast.AnnAssign | ast.AugAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                assigned[t.id] = assigned.get(t.id, 0) + 1
    rebound = {name for n in ast.walk(tree) if isinstance(n, ast.Global) for name in n.names}
    names: set[str] = set()
    for n in tree.body:
        if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None:
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                if isinstance(t, ast.Name) and assigned[t.id] == 1 and t.id not in rebound \
                        and _constant(n.value, names):
                    names.add(t.id)
    return names


def _is_sql_composable(node: ast.AST) -> bool:
    """psycopg.sql.SQL("...") / sql.SQL(...) / SQL(...): .format() on it escapes."""
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Attribute) and node.func.attr == "SQL") or
        (isinstance(node.func, ast.Name) and node.func.id == "SQL"))


def _formatting(node: ast.AST) -> list[ast.AST] | None:
    """The interpolated expressions when `node` formats a string, else None."""
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and \
            isinstance(node.left, ast.Constant | ast.JoinedStr) and isinstance(
                getattr(node.left, "value", ""), str):
        right = node.right
        return list(right.elts) if isinstance(right, ast.Tuple) else [right]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr == "format" and not _is_sql_composable(node.func.value):
        return list(node.args) + [k.value for k in node.keywords]
    return None


def _text_of(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp):
        return _text_of(node.left)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _text_of(node.func.value)
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


class SqlScan(ast.NodeVisitor):
    """Finds SQL whose text is built by formatting values into it.

    A formatted value is allowed only when it cannot come from a request: a constant of the
    module (see _constant), or a parameter of the enclosing function that every caller in
    the module passes as a string literal (alerting.lifecycle's fixed SET clauses)."""

    def __init__(self, tree: ast.Module, filename: str) -> None:
        self.tree, self.filename = tree, filename
        self.violations: list[str] = []
        self.stack: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.module_names = _assignments(tree.body)
        self.constants = _module_constants(tree)

    def visit_FunctionDef(self, node) -> None:
        self.stack.append(node)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if name in SQL_CALLS:
            query = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg in ("query", "statement")), None)
            if query is not None:
                self._query(query, node.lineno, depth=0)
        if _is_sql_composable(node) and node.args:
            self._query(node.args[0], node.lineno, depth=0)
        self.generic_visit(node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        self._sql_looking(node)
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self._sql_looking(node)
        self.generic_visit(node)

    def _sql_looking(self, node: ast.AST) -> None:
        parts = _formatting(node)
        if parts is not None and SQL_TEXT.search(_text_of(node)):
            self._check_parts(parts, node.lineno, "SQL text built with string formatting")

    def _query(self, node: ast.AST, line: int, depth: int) -> None:
        if depth > 4:
            return
        parts = _formatting(node)
        if parts is not None:
            self._check_parts(parts, line, "query built with string formatting")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            self._query(node.left, line, depth + 1)
            self._query(node.right, line, depth + 1)
        elif isinstance(node, ast.IfExp):
            self._query(node.body, line, depth + 1)
            self._query(node.orelse, line, depth + 1)
        elif isinstance(node, ast.Call) and _is_sql_composable(node) and node.args:
            self._query(node.args[0], line, depth + 1)
        elif isinstance(node, ast.Name):
            local = _assignments(ast.walk(self.stack[-1])) if self.stack else {}
            for value in local.get(node.id, []) or self.module_names.get(node.id, []):
                self._query(value, line, depth + 1)

    def _check_parts(self, parts: list[ast.AST], line: int, what: str) -> None:
        bad = [p for p in parts
               if not _constant(p, self.constants) and not self._literal_parameter(p)]
        if bad:
            shown = ", ".join(ast.unparse(p) for p in bad)
            self.violations.append(f"{self.filename}:{line}: {what} from {shown}")

    def _literal_parameter(self, node: ast.AST) -> bool:
        """A parameter of the enclosing function that every call in this module passes as
        a string literal (or leaves at a literal default)."""
        if not (isinstance(node, ast.Name) and self.stack):
            return False
        fn = self.stack[-1]
        names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
        kwonly = [a.arg for a in fn.args.kwonlyargs]
        if node.id not in names + kwonly:
            return False
        calls = [c for c in ast.walk(self.tree) if isinstance(c, ast.Call) and (
            (isinstance(c.func, ast.Name) and c.func.id == fn.name) or
            (isinstance(c.func, ast.Attribute) and c.func.attr == fn.name))]
        if not calls:
            return False
        for c in calls:
            given = next((k.value for k in c.keywords if k.arg == node.id), None)
            if given is None and node.id in names and names.index(node.id) < len(c.args):
                given = c.args[names.index(node.id)]
            if any(isinstance(a, ast.Starred) for a in c.args) or any(
                    k.arg is None for k in c.keywords):
                return False
            if not _literal(given):
                return False
        return True


def _assignments(nodes) -> dict[str, list[ast.AST]]:
    out: dict[str, list[ast.AST]] = {}
    for n in nodes:
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, []).append(n.value)
        elif isinstance(n, ast.AnnAssign | ast.AugAssign) and isinstance(n.target, ast.Name) \
                and n.value is not None:
            out.setdefault(n.target.id, []).append(n.value)
    return out


def scan(source: str, filename: str = "<string>") -> list[str]:
    tree = ast.parse(source, filename)
    visitor = SqlScan(tree, filename)
    visitor.visit(tree)
    return visitor.violations


def product_files() -> list[Path]:
    """The packages the wheel ships (pyproject), so a new package is scanned too."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py"))


def test_scanner_tells_formatting_from_parameters():
    bad = {
        "f-string": "def f(conn, name):\n    conn.execute(f\"SELECT * FROM t WHERE n = '{name}'\")\n",
        "percent": "def f(cur, name):\n    cur.execute(\"SELECT %s FROM t\" % name)\n",
        "format": "def f(cur, n):\n    cur.execute(\"SELECT * FROM t WHERE n = {}\".format(n))\n",
        "via a variable": ("def f(cur, n):\n    q = f\"DELETE FROM t WHERE n = {n}\"\n"
                           "    cur.execute(q)\n"),
        "concatenated": ("def f(cur, n):\n    where = f\" WHERE n = '{n}'\"\n"
                         "    cur.execute(\"SELECT 1 FROM t\" + where)\n"),
        "appended fragment": ("def f(cur, n):\n    parts = []\n"
                              "    parts.append(f\"e.code = '{n}' AND x\")\n"),
        "sql.SQL of an f-string": ("def f(cur, n):\n"
                                   "    cur.execute(sql.SQL(f\"SELECT {n} FROM t\"))\n"),
        "a module variable a function rebinds": (
            "TABLE = \"t\"\ndef g(name):\n    global TABLE\n    TABLE = name\n"
            "def f(cur):\n    cur.execute(f\"SELECT * FROM {TABLE}\")\n"),
        "parameter from a caller's variable": (
            "def g(cur, sets):\n    cur.execute(f\"UPDATE t SET {sets}\")\n"
            "def h(cur, x):\n    g(cur, x)\n"),
    }
    for name, source in bad.items():
        assert scan(source), f"the scanner missed: {name}"
    good = {
        "parameters": "def f(cur, n):\n    cur.execute(\"SELECT * FROM t WHERE n = %s\", (n,))\n",
        "composition": ("def f(cur, t):\n    cur.execute(sql.SQL(\"SELECT * FROM {}\")"
                        ".format(sql.Identifier(t)))\n"),
        "constant fragments": ("def f(cur, a):\n    where = []\n    if a:\n"
                               "        where.append(\"a = %(a)s\")\n"
                               "    clause = \" WHERE \" + \" AND \".join(where)\n"
                               "    cur.execute(\"SELECT 1 FROM t\" + clause, {\"a\": a})\n"),
        "literal-only parameter": (
            "def g(cur, sets=None):\n    cur.execute(f\"UPDATE t SET {sets}\")\n"
            "def h(cur):\n    g(cur, \"a = 1\")\n    g(cur)\n"),
        "a message, not SQL": "def f(n):\n    raise ValueError(f\"no warning {n}\")\n",
        "module constants": ("COLS = (\"a\", \"b\")\nSCOPE = \"(x = %(x)s)\"\n"
                             "Q = f\"SELECT {', '.join(COLS)} FROM t WHERE {SCOPE}\"\n"
                             "def f(cur):\n    cur.execute(f\"{Q} AND {SCOPE} LIMIT {len(COLS)}\")\n"),
    }
    for name, source in good.items():
        assert scan(source) == [], f"false alarm: {name}: {scan(source)}"


def test_no_sql_is_built_from_values():
    files = product_files()
    assert len(files) > 30 and any(f.name == "lifecycle.py" for f in files)
    violations = []
    for path in files:
        violations += scan(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert violations == [], "\n".join(violations)


# ------------------------------------------------------------------ security headers

CONSOLE_PAGES = sorted(p.relative_to(CONSOLE_DIR).as_posix() for p in CONSOLE_DIR.rglob("*")
                       if p.is_file())
DOCS = {"/docs", "/redoc", "/docs/oauth2-redirect"}


def assert_security_headers(headers, where: str) -> None:
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (where, csp)
    assert "default-src 'self'" in csp and "object-src 'none'" in csp, (where, csp)
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("x-frame-options") == "DENY", where
    assert headers.get("referrer-policy") == "no-referrer", where
    if where not in DOCS:
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, (where, csp)


async def test_security_headers_on_every_page_and_answer(env):
    server, world = env
    assert "index.html" in CONSOLE_PAGES and "login.html" in CONSOLE_PAGES
    token = await server.login("admin")
    seen = 0
    async with server.client() as anon, server.client(token) as c:
        for page in ["", *CONSOLE_PAGES, "vendor/plotly.min.js", "no-such-page.html"]:
            r = await anon.get(f"/{page}")
            assert r.status_code in (200, 404), (page, r.status_code)
            assert_security_headers(r.headers, f"/{page}")
            seen += 1
        for probe in probes(server.app):
            if probe.path == "/api/logout":
                continue
            url = fill(probe, world)
            body = {k: sample(p) for k, p in probe.body.items()}
            for client in (c, anon):
                status, _, _, headers = await call(client, probe, url, body=body)
                assert_security_headers(headers, probe.path)
                if probe.path.startswith("/api/"):
                    assert "no-store" in headers.get("cache-control", ""), (probe, status)
                seen += 1
        for path in ("/api/warnings/1/nope", "/api/nope"):
            r = await c.get(path)
            assert r.status_code == 404
            assert_security_headers(r.headers, path)
    assert seen > 40


def test_console_pages_work_under_the_csp():
    """script-src/style-src 'self' forbid inline code: a page that had some would break."""
    for page in CONSOLE_PAGES:
        if not page.endswith(".html"):
            continue
        html = (CONSOLE_DIR / page).read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{page}: inline <script>"
        assert "<style" not in html, f"{page}: inline <style>"
        assert not re.search(r"\sstyle\s*=", html), f"{page}: style attribute"
        assert not re.search(r"\son[a-z]+\s*=", html), f"{page}: inline event handler"
        assert "javascript:" not in html, f"{page}: javascript: URL"
        for src in re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", html):
            assert not re.match(r"(https?:)?//", src), f"{page}: loads {src} from elsewhere"

