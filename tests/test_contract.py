"""The published MQTT contract: models ⇄ committed JSON Schemas ⇄ gateway guide ⇄ decoder.

Needs `jsonschema` (test extra). No database, no broker.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from hazardwatch.resources import payloads_dir
from ingest import contract
from ingest.contract import NESTED, SCHEMAS, explain, render
from ingest.reasons import Reason

jsonschema = pytest.importorskip("jsonschema")
from jsonschema import Draft202012Validator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "gateway-guide.md"
REGENERATE = "python -m ingest.contract"

ENTERPRISE, GATEWAY = "91370105MA3C00001X", "gw-01"
# Topics as the collectors see them (the broker re-publishes ThingsBoard topics under
# tb/<enterprise>/<gateway>/ from the MQTT username).
TOPIC = {
    "native-readings": f"hw/v1/{ENTERPRISE}/{GATEWAY}/readings",
    "native-state": f"hw/v1/{ENTERPRISE}/{GATEWAY}/state",
    "thingsboard-gateway-telemetry": f"tb/{ENTERPRISE}/{GATEWAY}/v1/gateway/telemetry",
    "thingsboard-gateway-connect": f"tb/{ENTERPRISE}/{GATEWAY}/v1/gateway/connect",
    "thingsboard-device-telemetry": f"tb/{ENTERPRISE}/{GATEWAY}/v1/devices/me/telemetry",
}


def validator(stem: str) -> Draft202012Validator:
    return Draft202012Validator(contract.schema_of(stem))


def schema_errors(stem: str, payload: Any) -> list[str]:
    return [e.message for e in validator(stem).iter_errors(payload)]


def model_ok(model: type[BaseModel], payload: Any) -> bool:
    try:
        model.model_validate(payload)
    except ValidationError:
        return False
    return True


# ---- committed files are what the models generate ----------------------------------------

@pytest.mark.parametrize("stem", SCHEMAS)
def test_committed_schema_is_current(stem: str) -> None:
    path = payloads_dir() / f"{stem}.schema.json"
    assert path.is_file(), f"{path} missing: run `{REGENERATE}`"
    assert path.read_text(encoding="utf-8") == render(stem), (
        f"{path} is stale: the models in ingest/contract.py changed. Run `{REGENERATE}` "
        "and commit the result (a change to a published contract: version it if it breaks "
        "gateways)."
    )


def test_no_orphan_schema_files() -> None:
    assert contract.stale(payloads_dir()) == [], f"run `{REGENERATE}`"


def test_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert contract.main(["--check", str(tmp_path)]) == 1
    assert "missing:" in capsys.readouterr().out
    written = contract.main([str(tmp_path)])
    assert written == 0 and len(list(tmp_path.glob("*.schema.json"))) == len(SCHEMAS)
    assert contract.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "native-state.schema.json").write_text("{}\n")
    (tmp_path / "old.schema.json").write_text("{}\n")
    assert contract.main(["--check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "stale:" in out and "unexpected:" in out


@pytest.mark.parametrize("stem", SCHEMAS)
def test_schema_is_2020_12_with_identity(stem: str) -> None:
    schema = contract.schema_of(stem)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://hazardwatch.example/schema/payloads/{stem}.schema.json"
    assert schema["title"]
    for topic in SCHEMAS[stem].TOPICS:  # type: ignore[attr-defined]
        assert topic in schema["description"]
    text = render(stem)
    assert text.endswith("}\n") and '\n  "$id"' in text  # 2-space indent, trailing newline


@pytest.mark.parametrize("model", [*SCHEMAS.values(), *NESTED], ids=lambda m: m.__name__)
def test_every_field_is_described(model: type[BaseModel]) -> None:
    assert model.__doc__
    for name, field in model.model_fields.items():
        if name != "root":
            assert field.description, f"{model.__name__}.{name} has no description"
            assert field.examples, f"{model.__name__}.{name} has no examples"


# ---- examples are valid, by the schema and by the model ----------------------------------

def _nodes_with_examples(node: Any, path: str = "#") -> list[tuple[str, dict, list]]:
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("examples"), list):
            found.append((path, node, node["examples"]))
        for key, value in node.items():
            if key != "examples":
                found += _nodes_with_examples(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _nodes_with_examples(value, f"{path}/{i}")
    return found


@pytest.mark.parametrize("stem", SCHEMAS)
def test_schema_examples_validate_against_their_own_subschema(stem: str) -> None:
    root = contract.schema_of(stem)
    nodes = _nodes_with_examples(root)
    assert nodes, "no examples at all"
    for path, node, examples in nodes:
        sub = {**node, "$defs": root.get("$defs", {})} if path != "#" else root
        sub = {k: v for k, v in sub.items() if k != "$id"}
        check = Draft202012Validator(sub)
        for example in examples:
            errors = [e.message for e in check.iter_errors(example)]
            assert not errors, f"{stem} {path}: example {example!r} invalid: {errors}"


def _model_examples(model: type[BaseModel]) -> list[Any]:
    extra = model.model_config.get("json_schema_extra") or {}
    return list(extra.get("examples", []))  # type: ignore[union-attr]


@pytest.mark.parametrize("model", [*SCHEMAS.values(), *NESTED], ids=lambda m: m.__name__)
def test_model_examples_validate_against_the_model(model: type[BaseModel]) -> None:
    examples = _model_examples(model)
    assert examples, f"{model.__name__} has no examples"
    for example in examples:
        model.model_validate(example)
    # each field example, put into the model's first example
    base = examples[0]
    for name, field in model.model_fields.items():
        for value in field.examples or ():
            if name == "root":
                continue
            model.model_validate({**copy.deepcopy(base), name: value})


def test_published_examples_validate_against_the_published_schema() -> None:
    for stem, model in SCHEMAS.items():
        for example in _model_examples(model):
            assert not schema_errors(stem, example), (stem, example)
            assert explain(stem, orjson.dumps(example)) == []


def test_nested_models_are_all_listed() -> None:
    defs = set()
    for stem in SCHEMAS:
        defs |= set(contract.schema_of(stem).get("$defs", {}))
    assert defs == {m.model_config.get("title") for m in NESTED}


# ---- invalid payloads fail the schema, the model, and say why ------------------------------

MS = 1_732_262_400_000
INVALID: list[tuple[str, str, Any, str, bool]] = [
    # (case, stem, payload, reason explain() gives, whether the decoder sees it unaided)
    ("string value", "native-readings", {"ts": MS, "values": {"TK101.LT1": "12.3"}}, "not_a_number", True),
    ("object value", "native-readings", {"ts": MS, "values": {"TK101": {"LT1": 1}}}, "not_a_number", True),
    ("q out of range", "native-readings", {"ts": MS, "values": {"TK101.LT1": 1}, "q": {"TK101.LT1": 7}}, "bad_quality", True),
    ("q negative", "native-readings", {"ts": MS, "values": {"TK101.LT1": 1}, "q": {"TK101.LT1": -1}}, "bad_quality", True),
    ("q fraction", "native-readings", {"ts": MS, "values": {"TK101.LT1": 1}, "q": {"TK101.LT1": 1.5}}, "bad_quality", True),
    ("q bool", "native-readings", {"ts": MS, "values": {"TK101.LT1": 1}, "q": {"TK101.LT1": True}}, "bad_quality", True),
    ("ts in seconds", "native-readings", {"ts": MS // 1000, "values": {"TK101.LT1": 1}}, "bad_timestamp", True),
    ("ts before 2000", "native-readings", {"ts": "1999-12-31T23:59:59Z", "values": {"TK101.LT1": 1}}, "bad_timestamp", True),
    ("ts without offset", "native-readings", {"ts": "2024-11-22T16:00:00", "values": {"TK101.LT1": 1}}, "bad_timestamp", True),
    ("ts not a date", "native-readings", {"ts": "yesterday", "values": {"TK101.LT1": 1}}, "bad_timestamp", True),
    ("ts bool", "native-readings", {"ts": True, "values": {"TK101.LT1": 1}}, "bad_timestamp", True),
    ("ts missing", "native-readings", {"values": {"TK101.LT1": 1}}, "schema", True),
    ("values missing", "native-readings", {"ts": MS}, "schema", True),
    ("values array", "native-readings", {"ts": MS, "values": [1, 2]}, "schema", True),
    ("extra key", "native-readings", {"ts": MS, "values": {"TK101.LT1": 1}, "unit": "m"}, "schema", True),
    ("empty tag", "native-readings", {"ts": MS, "values": {"": 1}}, "schema", True),
    ("tag too long", "native-readings", {"ts": MS, "values": {"T" * 129: 1}}, "schema", True),
    ("tag with space", "native-readings", {"ts": MS, "values": {"TK101 LT1": 1}}, "schema", False),
    ("empty array", "native-readings", [], "schema", True),
    ("array of non-objects", "native-readings", [1, 2], "schema", True),
    ("nested arrays", "native-readings", [[{"ts": MS, "values": {"TK101.LT1": 1}}]], "schema", True),
    ("scalar document", "native-readings", 12.3, "schema", True),
    ("negative seq", "native-readings", {"ts": MS, "values": {"TK101.LT1": 1}, "seq": -1}, "schema", True),
    ("unknown state", "native-state", {"state": "up"}, "schema", True),
    ("state as number", "native-state", 1, "schema", True),
    ("tb: device not a list", "thingsboard-gateway-telemetry", {"TK101": {"ts": MS, "values": {"LT1": 1}}}, "schema", False),
    ("tb: empty device list", "thingsboard-gateway-telemetry", {"TK101": []}, "schema", True),
    ("tb: ts in seconds", "thingsboard-gateway-telemetry", {"TK101": [{"ts": MS // 1000, "values": {"LT1": 1}}]}, "bad_timestamp", True),
    ("tb: string value", "thingsboard-gateway-telemetry", {"TK101": [{"ts": MS, "values": {"LT1": "on"}}]}, "not_a_number", True),
    ("tb: extra key", "thingsboard-gateway-telemetry", {"TK101": [{"ts": MS, "values": {"LT1": 1}, "q": 0}]}, "schema", True),
    ("tb: ts without values", "thingsboard-gateway-telemetry", {"TK101": [{"ts": MS, "LT1": 1}]}, "schema", False),
    ("tb: device name with space", "thingsboard-gateway-telemetry", {"TK 101": [{"LT1": 1}]}, "schema", False),
    ("tb: root is a list", "thingsboard-gateway-telemetry", [{"TK101": [{"LT1": 1}]}], "schema", True),
    ("tb: connect without device", "thingsboard-gateway-connect", {"name": "TK101"}, "schema", True),
    ("tb: device api empty array", "thingsboard-device-telemetry", [], "schema", True),
    ("tb: device api ts float", "thingsboard-device-telemetry", {"ts": MS + 0.5, "values": {"TK101.LT1": 1}}, "bad_timestamp", False),
    ("tb: device api nested", "thingsboard-device-telemetry", {"TK101": {"LT1": 1}}, "not_a_number", True),
]


@pytest.mark.parametrize(("case", "stem", "payload", "reason", "_decoder"), INVALID,
                         ids=[c[0] for c in INVALID])
def test_invalid_payload_fails_schema_and_model(case: str, stem: str, payload: Any,
                                                reason: str, _decoder: bool) -> None:
    assert schema_errors(stem, payload), f"{case}: the JSON Schema accepted it"
    assert not model_ok(SCHEMAS[stem], payload), f"{case}: the pydantic model accepted it"
    problems = explain(stem, orjson.dumps(payload))
    assert problems and reason in {p["reason"] for p in problems}, problems
    assert all(p["reason"] in set(Reason) and p["field"].startswith("$") for p in problems)


def test_explain_undecodable_and_bare_state() -> None:
    assert explain("native-readings", b'{"ts": 1732262400000, "values": {"a": NaN}}')[0]["reason"] \
        == "undecodable"
    assert explain("native-state", b"online") == []
    assert explain("native-state", b"offline\n") == []
    assert explain("native-state", b"up")[0]["reason"] == "undecodable"


def test_explain_names_the_reading() -> None:
    problems = explain("thingsboard-gateway-telemetry",
                       b'{"TK101": [{"ts": 1732262400000, "values": {"LT1": "x"}}]}')
    assert problems == [{"reason": "not_a_number", "field": "$.TK101[0].values",
                         "detail": 'expected a finite number, true/false or null, got "x"',
                         "tag": "TK101.LT1"}]
    problems = explain("native-readings", b'[{"ts": 1732262400, "values": {"TK101.LT1": 1}}]')
    assert problems[0]["field"] == "$[0].ts" and "epoch seconds" in problems[0]["detail"]


def test_edge_values_that_are_valid() -> None:
    ok = [
        ("native-readings", {"ts": MS + 0.25, "values": {}}),  # fractional ms; empty values
        ("native-readings", {"ts": "2024-11-22T08:00:00.123456789Z", "values": {"a:b/c-d_e.f": -1e300}}),
        ("native-readings", {"ts": MS, "values": {"T" * 128: 0}, "q": {"T" * 128: 4, "other": 0}}),
        ("native-state", "offline"),
        ("native-state", {"state": "offline", "ts": MS}),  # other keys ignored
        ("thingsboard-gateway-telemetry", {}),
        ("thingsboard-gateway-telemetry", {"D" * 64: [{"K" * 63: None}]}),
        ("thingsboard-gateway-connect", {"device": "TK101", "type": "Tank", "extra": 1}),
        ("thingsboard-device-telemetry", {"ts": MS, "values": {"TK101.XV1": False}}),
    ]
    for stem, payload in ok:
        assert not schema_errors(stem, payload), (stem, payload)
        assert explain(stem, orjson.dumps(payload)) == [], (stem, payload)


# ---- the guide's examples are valid --------------------------------------------------------

_MARK = re.compile(r"<!--\s*valid:\s*([a-z0-9-]+)\s*-->")


def guide_examples() -> list[tuple[str, int, Any]]:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        mark = _MARK.search(line)
        if not mark:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        assert j < len(lines) and lines[j].strip() == "```json", (
            f"{GUIDE.name}:{i + 1}: <!-- valid: {mark[1]} --> must be followed by a ```json fence")
        end = lines.index("```", j + 1)
        text = "\n".join(lines[j + 1:end])
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{GUIDE.name}:{j + 2}: not JSON: {exc}")
        found.append((mark[1], i + 1, doc))
    return found


def test_guide_examples_are_valid() -> None:
    examples = guide_examples()
    assert {stem for stem, _, _ in examples} == set(SCHEMAS), "every schema needs a guide example"
    for stem, line, doc in examples:
        errors = schema_errors(stem, doc)
        assert not errors, f"{GUIDE.name}:{line}: not a valid {stem}: {errors}"
        assert explain(stem, orjson.dumps(doc)) == [], f"{GUIDE.name}:{line}"


def test_guide_lists_every_reason_code_and_limit() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for reason in Reason:
        assert re.search(rf"^\|\s*`{reason}`\s*\|", text, re.M), f"reason {reason} not in the table"
    for needle in ("256 KiB", "10,000", "946684800000", "hazardwatch registry pending",
                   "91370114MA3CK7LB5R", "gw-dcs", "TK101.LT1", "-q 1", "$(date +%s%3N)"):
        assert needle in text, needle


# ---- the hand-written decoder accepts what the contract calls valid ----------------------

def _decode(stem: str, payload: Any):
    dialects = pytest.importorskip("ingest.dialects")
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    topic = TOPIC[stem]
    (dialect,) = [d for d in dialects.all_dialects() if d.matches(topic)]
    return dialect.decode(topic, raw, float(MS))


def _reading_count(stem: str, doc: Any) -> int:
    def entries(e: Any) -> int:
        return len(e["values"]) if "ts" in e and "values" in e else len(e)

    if stem == "native-readings":
        return sum(len(g["values"]) for g in (doc if isinstance(doc, list) else [doc]))
    if stem == "thingsboard-gateway-telemetry":
        return sum(entries(e) for items in doc.values() for e in items)
    if stem == "thingsboard-device-telemetry":
        return sum(entries(e) for e in (doc if isinstance(doc, list) else [doc]))
    return 0


def _valid_documents() -> list[tuple[str, Any]]:
    docs = [(stem, ex) for stem, model in SCHEMAS.items() for ex in _model_examples(model)]
    return docs + [(stem, doc) for stem, _, doc in guide_examples()]


def test_decoder_accepts_every_valid_example() -> None:
    for stem, doc in _valid_documents():
        decoded = _decode(stem, doc)
        assert not decoded.rejected and not decoded.problems, (stem, doc, decoded.problems)
        assert len(decoded.tags) == _reading_count(stem, doc), (stem, doc)
    assert _decode("native-state", b"online\n").online is True
    assert _decode("native-state", b"offline").online is False


@pytest.mark.parametrize(("case", "stem", "payload", "reason", "decoder"),
                         [c for c in INVALID if c[4]], ids=[c[0] for c in INVALID if c[4]])
def test_decoder_refuses_what_the_contract_refuses(case: str, stem: str, payload: Any,
                                                   reason: str, decoder: bool) -> None:
    decoded = _decode(stem, payload)
    assert decoded.rejected or decoded.problems, f"{case}: the decoder found nothing wrong"


def test_decoder_accepts_integral_floats() -> None:
    doc = {"ts": MS, "values": {"TK101.LT1": 1}, "q": {"TK101.LT1": 1.0}, "seq": 7.0}
    assert not schema_errors("native-readings", doc) and explain("native-readings", doc) == []
    decoded = _decode("native-readings", doc)
    assert not decoded.problems and decoded.quality == [1] and decoded.seq == 7
