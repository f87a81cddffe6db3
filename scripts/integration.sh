#!/usr/bin/env bash
# Runs the ansible-test integration targets (tests/integration/targets) against a fresh XenServer lab.
# The lab's connection details reach the targets through tests/integration/integration_config.yml,
# written into the temporary collection copy only (it holds the lab's password).
# Usage: integration.sh [ansible-test integration arguments, e.g. a target name]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH=$ROOT/.venv/bin:$PATH
PYVER=$("$ROOT/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cbt-backup-integration.XXXXXX")
LAB=$WORK/lab
cleanup() {
    "$ROOT/tests/lab/xenlab" stop --dir "$LAB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$ROOT/tests/lab/xenlab" start --dir "$LAB" >/dev/null
COLL=$(bash scripts/collection-copy.sh "$WORK")
"$ROOT/.venv/bin/python" - "$LAB/lab.json" "$COLL/tests/integration/integration_config.yml" "$ROOT/tests/lab/xenlab" <<'PY'
import json, sys
lab = json.load(open(sys.argv[1]))
config = {
    'xenlab_url': lab['url'],
    'xenlab_username': lab['username'],
    'xenlab_password': lab['password'],
    'xenlab_ca_cert': lab['ca_cert'],
    'xenlab_dir': lab['dir'],
    'xenlab_cli': sys.argv[3],
}
with open(sys.argv[2], 'w') as handle:
    json.dump(config, handle, indent=2)
PY
cd "$COLL"
ansible-test integration --local --python "$PYVER" --color no "$@"
