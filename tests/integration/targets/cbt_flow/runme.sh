#!/usr/bin/env bash
# Runs the whole backup flow with -vvv and then proves the output holds no password, session
# reference or NBD export name.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
config=$here/../../integration_config.yml
out=${OUTPUT_DIR:-$(mktemp -d)}
log=$out/cbt_flow-vvv.log
secrets=$out/cbt_flow-secrets.json

if ! ansible-playbook "$here/flow.yml" -e "@$config" -e "flow_secrets_file=$secrets" \
        -e "flow_work_dir=$out/cbt_flow" -vvv >"$log" 2>&1; then
    tail -n 200 "$log"
    exit 1
fi
tail -n 20 "$log"
python "$here/check_secrets.py" "$log" "$config" "$secrets"
