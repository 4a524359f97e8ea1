"""Run the fault tests (tests/test_faults.py, marker `faults`) and print the table of
docs/reliability.md from the figures each test writes.

    python3 bench/faults_report.py                  # run them, then print the table
    python3 bench/faults_report.py --from DIR       # only render figures already in DIR
    python3 bench/faults_report.py -- -k sigkill    # extra pytest arguments after --

The tests run through scripts/test (which installs the project into $HW_VENV, default
.venv), with HW_FAULT_REPORT pointing at a fresh directory; this script needs only the
standard library. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COLUMNS = [
    ("fault", "fault"),
    ("injections", "injected"),
    ("published", "readings published"),
    ("stored", "stored"),
    ("duplicates", "duplicated"),
    ("warnings", "warnings (reference)"),
    ("notifications_due", "notifications due"),
    ("delivered", "delivered"),
    ("repeats", "repeats seen (retry / crash)"),
    ("recovery_s", "recovery (s)"),
]


def render(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + "|".join("---" if key == "fault" else "--:" for key, _ in COLUMNS) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key) for key, _ in COLUMNS) + " |")
    notes = [f"- {row['fault']}: {row['notes']}" for row in rows if row.get("notes")]
    each = [f"- {row['fault']}: recovery after each injection "
            f"{', '.join(f'{s:g}' for s in row['recovery_each_s'])} s"
            for row in rows if len(row.get("recovery_each_s") or []) > 1]
    return "\n".join(lines + ([""] + notes + each if notes or each else [])) + "\n"


def _cell(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    if key == "recovery_s":
        return f"{value:.1f}"
    if key == "repeats":
        return f"{value} ({row.get('retried', '?')} / {row.get('cut_off_by_crash', '?')})"
    if key == "warnings":
        return f"{value} ({row.get('warnings_expected', '?')})"
    return str(value)


def load(directory: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path,
                        help="render the JSON figures in this directory without running")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    if args.source is not None:
        print(render(load(args.source)), end="")
        return 0
    out = Path(tempfile.mkdtemp(prefix="hw-faults-"))
    cmd = [str(ROOT / "scripts" / "test"), "-m", "faults", "-p", "no:cacheprovider",
           "tests/test_faults.py", *args.pytest_args]
    print("$", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HW_FAULT_REPORT": str(out)},
                          check=False).returncode
    rows = load(out)
    print(f"\nfigures: {out} ({len(rows)} tests reported)\n")
    print(render(rows), end="")
    return code


if __name__ == "__main__":
    sys.exit(main())
