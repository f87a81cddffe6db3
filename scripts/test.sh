#!/usr/bin/env bash
# Runs every test of the collection: installs what is missing (scripts/bootstrap.sh), then
#   1. pytest, two workers, one file per worker at a time: the lab's contract tests (tests/lab/tests), and the
#      incremental_backup role end to end against the lab plus the README's demo (tests/e2e);
#   2. ansible-test sanity and units from a real ansible_collections/xenserver/cbt_backup copy (units are
#      tests/unit: unit tests and NBD interop tests against real servers, run once, there);
#   3. ansible-lint (production profile), galaxy build, changelog lint;
#   4. ansible-test integration: the modules in real playbooks against the XenServer lab.
# With CI=true a missing tool fails the run instead of skipping tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash scripts/bootstrap.sh
PY=$ROOT/.venv/bin/python
export PATH=$ROOT/.venv/bin:$PATH

status=0
run() {
    echo "=== $*"
    if ! "$@"; then
        echo "=== FAILED: $*"
        status=1
    fi
}

run "$PY" -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests/lab/tests tests/e2e

run bash scripts/ansible-checks.sh
run bash scripts/integration.sh

exit $status
