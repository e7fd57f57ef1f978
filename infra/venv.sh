#!/usr/bin/env bash
# Makes sure the Python tools in infra/requirements.txt are installed in a venv and prints the
# venv's path. The venv is $IMAGEGEN_VENV when set (CI keeps one outside the clone), else .venv.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${IMAGEGEN_VENV:-$root/.venv}"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! cmp -s "$root/infra/requirements.txt" "$stamp"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/infra/requirements.txt" >&2
  cp "$root/infra/requirements.txt" "$stamp"
fi
echo "$venv"
