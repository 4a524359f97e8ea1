# Sourced by scripts/test and scripts/demo: a project venv at $HW_VENV (default .venv),
# with hazardwatch installed non-editable so runs use exactly what a wheel ships.
set -euo pipefail
HW_VENV=${HW_VENV:-.venv}
if [ ! -x "$HW_VENV/bin/python" ]; then
  python3 -m venv "$HW_VENV"
  "$HW_VENV/bin/pip" install --quiet --upgrade pip
fi
"$HW_VENV/bin/pip" install --quiet --disable-pip-version-check ".[test]"
