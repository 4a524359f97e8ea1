"""Where the language-neutral contracts (schema/) live at run time.

An installed wheel carries schema/ as hazardwatch/_schema; a source checkout has it
beside the package. Both resolve here so nothing else cares which one it is.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PKG = Path(__file__).resolve().parent


@cache
def schema_dir() -> Path:
    for candidate in (_PKG / "_schema", _PKG.parent / "schema"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"schema/ not found beside {_PKG}: reinstall hazardwatch (pip install .)"
    )


def migrations_dir() -> Path:
    return schema_dir() / "migrations"


def payloads_dir() -> Path:
    return schema_dir() / "payloads"


@cache
def acl_template() -> Path:
    """deploy/mosquitto/acl: the broker ACL template `hazardwatch gateway` renders
    (a wheel carries it as hazardwatch/_deploy/mosquitto.acl)."""
    for candidate in (_PKG / "_deploy" / "mosquitto.acl", _PKG.parent / "deploy" / "mosquitto" / "acl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the mosquitto ACL template was not found beside {_PKG}: reinstall hazardwatch "
        "(pip install .) or pass --acl-template"
    )
