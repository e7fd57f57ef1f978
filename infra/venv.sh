#!/usr/bin/env bash
# Make sure the Python tools the AWS tests and the template lint need are installed:
# moto's server (the AWS emulator the tests start) and cfn-lint.
#
# Uses the venv named by IMAGEGEN_VENV when it is set (shared venvs, CI), else creates
# .venv in the repo. Prints the venv's path on its last line.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${IMAGEGEN_VENV:-$repo/.venv}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import moto, cfnlint, flask_cors' >/dev/null 2>&1; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]>=5" "cfn-lint>=1"
fi
echo "$venv"
