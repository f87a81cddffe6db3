# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The README's demo (scripts/demo/lab_demo.py, what scripts/demo.sh runs after installing) works."""

from __future__ import absolute_import, division, print_function

import os
import subprocess
import sys

from test_role_incremental_backup import ROOT, require_tools

__metaclass__ = type


def test_demo_runs_full_incrementals_prune_verify_and_restores_identical_disks(tmp_path):
    require_tools()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'demo', 'lab_demo.py'),
                           '--workdir', str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    out = proc.stdout.decode(errors='replace')
    assert proc.returncode == 0, out[-5000:]
    for expected in ('first run: full backups', 'second run: incrementals', 'third run: incrementals',
                     'every repository keeps 2 points', 'demo-vm-disk0: sha256 equal, qemu-img compare: Images are identical',
                     'demo-vm-disk1: sha256 equal, qemu-img compare: Images are identical', 'the lab is stopped'):
        assert expected in out
    lab_json = os.path.join(str(tmp_path), 'lab', 'lab.json')
    assert not os.path.exists(lab_json) or '"running"' not in open(lab_json).read()
