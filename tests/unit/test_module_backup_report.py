# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_report run by Ansible itself: the report file, check mode, extra keys in the inputs, errors.

A controller test (ansible-test runs tests under plugins/ without the ansible command line).
"""

from __future__ import absolute_import, division, print_function

import json
import os
import stat

from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module as run_ansible
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.test_report import (
    STARTED, VM, plan_disk, plan_vm, snap, write_point,
)

__metaclass__ = type

SECRET = 'hunter2-s3cr3t'


def arguments(tmp_path, **extra):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a', seconds=0.5)
    write_point(str(root / VM / 'disk-a'), 'snap-a1', 'disk-a', blocks=8, seconds=0.5, seed=2)
    vm = plan_vm([plan_disk(root, 'disk-a'), plan_disk(root, 'disk-b', 'skip', 'SKIPPED', userdevice='1')])
    vm['session_id'] = SECRET  # module results are passed through: their other keys must not reach the report
    args = dict(plan=[vm], snapshots=[snap('snap-a1', 'disk-a', password=SECRET)],
                warnings=[{'vm_uuid': VM, 'vdi_uuid': 'disk-a', 'step': 'destroy_anchor', 'msg': 'left snap-a0',
                           'invocation': {'module_args': {'password': SECRET}}}],
                started=STARTED, pool='pool1')
    args.update(extra)
    return args


def test_module_writes_the_report(tmp_path):
    dest = tmp_path / 'reports' / 'pool1-20261125T020005Z.json'
    result = run_ansible('backup_report', arguments(tmp_path, dest=str(dest)), tmp_path)[0]
    assert not result['failed'] and result['changed'] and result['path'] == str(dest)
    with open(str(dest)) as handle:
        text = handle.read()
    assert json.loads(text) == result['report'] and SECRET not in text
    assert stat.S_IMODE(os.stat(str(dest)).st_mode) == 0o640 and os.listdir(str(dest.parent)) == [dest.name]
    disk = result['report']['vms'][0]['disks'][0]
    assert (disk['status'], disk['point_type'], disk['seconds'], disk['points_kept']) == ('ok', 'incremental', 0.5, 2)
    assert result['report']['vms'][0]['status'] == 'ok'
    assert result['summary'][0] == ('demo-vm/demo-vm-disk-a (xvda 0): incremental (CHAIN_OK) ok  512.0 KiB read, '
                                    '512.0 KiB stored, 0.5 s, 1.0 MiB/s, 2 points')
    assert result['summary'][1] == 'demo-vm/demo-vm-disk-b (xvdb 1): skip (SKIPPED) skipped  0 points'
    assert result['summary'][-1] == 'WARNING demo-vm/demo-vm-disk-a at destroy_anchor: left snap-a0'


def test_module_check_mode_writes_nothing(tmp_path):
    dest = tmp_path / 'reports' / 'check.json'
    result, output = run_ansible('backup_report', arguments(tmp_path, dest=str(dest)), tmp_path, check=True)
    # check mode predicts the change the real run makes (writing the file), and writes nothing
    assert not result['failed'] and result['changed'] and result['path'] == str(dest)
    assert not os.path.exists(str(dest.parent))
    assert not run_ansible('backup_report', arguments(tmp_path), tmp_path, check=True)[0]['changed']
    assert result['report']['vms'][0]['disks'][0]['status'] == 'ok' and SECRET not in json.dumps(result)
    # ``started`` is checked
    result = run_ansible('backup_report', arguments(tmp_path, started='soon'), tmp_path)[0]
    assert result['failed'] and 'started must be an RFC 3339 time' in result['msg']
