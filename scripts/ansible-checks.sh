#!/usr/bin/env bash
# ansible-test sanity + units from a real ansible_collections/xenserver/cbt_backup copy (ansible-test
# refuses symlinks), then ansible-lint with the production profile.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH=$ROOT/.venv/bin:$PATH
PYVER=$("$ROOT/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

COPY_BASE=$(mktemp -d "${TMPDIR:-/tmp}/cbt-backup-ansible-test.XXXXXX")
trap 'rm -rf "$COPY_BASE"' EXIT
COLL=$COPY_BASE/ansible_collections/xenserver/cbt_backup
mkdir -p "$COLL"
# Tracked files plus new, not ignored ones: what a fresh clone would hold once committed.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$COLL"
cd "$COLL"
git init -q && git add -A  # ansible-test lists files through git

status=0
echo "--- ansible-test sanity (python $PYVER)"
ansible-test sanity --local --python "$PYVER" --color no || status=1
echo "--- ansible-test units (python $PYVER)"
ansible-test units --local --python "$PYVER" --color no || status=1
echo "--- ansible-lint --profile production"
(cd "$ROOT" && ansible-lint --profile production --offline) || status=1
exit $status
