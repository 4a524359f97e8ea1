"""The `hazardwatch` command as a user runs it: settings, registry import and pending."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from dbutil import fresh_database
from harness import HAZARDWATCH

import hazardwatch
from hazardwatch.resources import migrations_dir, payloads_dir, schema_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "registry.yaml"


def run(args, env=None, cwd=None, check=True):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HW_")}
    full_env.update(env or {})
    return subprocess.run([HAZARDWATCH, *args], env=full_env, cwd=cwd, capture_output=True,
                          text=True, check=check, timeout=60)


def test_config_layers_toml_under_env_and_masks_secrets(tmp_path):
    (tmp_path / "hazardwatch.toml").write_text(
        'database_url = "postgresql://hw:s3cret@db.example:5432/hw"\n'
        '[mqtt]\nport = 8883\npassword = "mqtt-secret"\n[ingest]\nbatch_ms = 50\n')
    out = run(["config"], env={"HW_INGEST__BATCH_MS": "75"}, cwd=tmp_path).stdout
    cfg = json.loads(out)
    assert cfg["mqtt"]["port"] == 8883                 # from the file
    assert cfg["ingest"]["batch_ms"] == 75             # env beats file
    assert cfg["mqtt"]["password"] == "********"
    assert cfg["database_url"] == "postgresql://hw:********@db.example:5432/hw"
    assert "s3cret" not in out and "mqtt-secret" not in out


def test_bad_setting_names_the_field(tmp_path):
    res = run(["config"], env={"HW_INGEST__BATCH_MS": "soon"}, cwd=tmp_path, check=False)
    assert res.returncode != 0
    assert "batch_ms" in res.stderr


def test_registry_import_wrong_file_changes_nothing_and_pending_lists(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text(encoding="utf-8").replace("hh: 18", "hh: 25", 1), encoding="utf-8")
    with fresh_database("hw_test_cli") as dsn:
        env = {"HW_DATABASE_URL": dsn}
        res = run(["registry", "import", str(bad)], env=env, check=False)
        assert res.returncode == 1
        assert "nothing imported" in res.stderr and "limits.hh" in res.stderr
        ok = run(["registry", "import", str(EXAMPLE)], env=env)
        assert "sensors" in ok.stdout and "new" in ok.stdout
        assert "no unregistered tags" in run(["registry", "pending"], env=env).stdout


def test_unreachable_database_is_one_plain_sentence(tmp_path):
    res = run(["registry", "pending"], env={"HW_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
              cwd=tmp_path, check=False)
    assert res.returncode == 1
    assert "database unavailable" in res.stderr and "Traceback" not in res.stderr


def test_installed_package_carries_its_schema():
    """A non-editable install must find migrations and JSON Schemas inside the package."""
    assert any(migrations_dir().glob("0001_*.sql"))
    assert any(payloads_dir().glob("*.schema.json"))
    pkg = Path(hazardwatch.__file__).resolve().parent
    if "site-packages" in str(pkg):  # CI installs non-editable: the wheel's copy is used
        assert schema_dir() == pkg / "_schema"
