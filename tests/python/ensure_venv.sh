#!/usr/bin/env bash
# Makes sure the Python venv that the gRPC test suite runs in exists and holds exactly
# tests/python/requirements.txt. Usage: ensure_venv.sh VENV_DIR (the suite uses target/pyenv).
#
# Idempotent: a stamp in the venv records the requirements it was built from, so a second run
# returns at once, and a changed requirements.txt rebuilds it. Safe when several processes run it
# at the same time (two test binaries, CI and a developer): they take turns on a lock file.
set -euo pipefail

venv=${1:?usage: ensure_venv.sh VENV_DIR}
requirements="$(cd "$(dirname "$0")" && pwd)/requirements.txt"
command -v python3 >/dev/null || {
    echo "ensure_venv.sh: python3 is needed for the gRPC test suite (apt-get install python3 python3-venv)" >&2
    exit 1
}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

want=$(sha256sum "$requirements" | cut -d' ' -f1)
stamp="$venv/.requirements.sha256"
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi

echo "ensure_venv.sh: creating $venv from $requirements"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -r "$requirements"
echo "$want" >"$stamp"
