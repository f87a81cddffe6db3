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
cd "$(bash scripts/collection-copy.sh "$COPY_BASE")"

status=0
echo "--- ansible-test sanity (python $PYVER)"
if ! command -v shellcheck >/dev/null && [ "${CI:-}" = true ]; then
    echo "shellcheck is missing (scripts/bootstrap.sh installs it): the shell scripts would go unchecked"; status=1
fi
ansible-test sanity --local --python "$PYVER" --color no || status=1
echo "--- compile: modules and module_utils on every target Python of tests/config.yml (3.8 - 3.13)"
for v in 3.8 3.9 3.10 3.11 3.12 3.13; do
    py=""
    for candidate in "$HOME"/.pyenv/versions/"$v".*/bin/python"$v" /usr/bin/python"$v"; do
        [ -x "$candidate" ] && { py=$candidate; break; }
    done
    if [ -n "$py" ]; then
        if find plugins -name '*.py' -print0 | xargs -0 "$py" -c '
import sys
for path in sys.argv[1:]:
    with open(path, "rb") as handle:
        compile(handle.read(), path, "exec")
'; then
            echo "python$v: ok"
        else
            echo "python$v: compile FAILED"; status=1
        fi
    elif [ "${CI:-}" = true ]; then
        echo "python$v is missing: cannot prove the modules compile on it"; status=1
    else
        echo "python$v not installed: compile check skipped"
    fi
done
echo "--- ansible-test units (python $PYVER)"
ansible-test units --local --python "$PYVER" --color no || status=1
echo "--- ansible-galaxy collection build"
ansible-galaxy collection build --output-path "$COPY_BASE/build" . >/dev/null || status=1
tarball=$(ls "$COPY_BASE"/build/xenserver-cbt_backup-*.tar.gz)
if tar -tzf "$tarball" | grep -E '(^|/)(\.venv|\.tmp|tests/output|\.ansible|__pycache__)(/|$)'; then
    echo "the collection tarball holds generated files"; status=1
fi
echo "--- antsibull-changelog lint"
antsibull-changelog lint || status=1
echo "--- ansible-lint --profile production"
ANSIBLE_COLLECTIONS_PATH=$COPY_BASE ansible-lint --profile production --offline || status=1
exit $status
