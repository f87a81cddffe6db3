#!/usr/bin/env bash
# Usage: collection-copy.sh DIR
# Copies the collection (tracked files plus new, not ignored ones: what a fresh clone holds once committed)
# to DIR/ansible_collections/xenserver/cbt_backup and prints that path. ansible-test needs a real copy at such
# a path (a symlink is refused) and lists files through git, so the copy gets a git index of its own.
set -euo pipefail
cd "$(dirname "$0")/.."
coll=$1/ansible_collections/xenserver/cbt_backup
mkdir -p "$coll"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$coll"
(cd "$coll" && git init -q && git add -A)
echo "$coll"
