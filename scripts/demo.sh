#!/usr/bin/env bash
# Installs everything (scripts/bootstrap.sh), starts the XenServer lab and runs the incremental_backup role
# against it: full backup, guest writes, incremental, second incremental, prune, verify, restore to new VDIs,
# byte-for-byte comparison with the source disks, the run reports; then stops the lab.
# Options are passed to scripts/demo/lab_demo.py (--workdir DIR, --keep).
# The NBD-only demo of vdi_export against qemu-nbd: .venv/bin/python scripts/demo/nbd_export_demo.py
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo/lab_demo.py "$@"
