#!/usr/bin/env bash
# Installs everything (scripts/bootstrap.sh) and runs the demo: a sample disk served by qemu-nbd over
# TLS is exported with xenserver.cbt_backup.vdi_export, fully and then incrementally, and verified.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo/nbd_export_demo.py
