# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_plan, vdi_snapshot skip_disks and vdi_export's manifest facts, run by Ansible itself against the lab."""

from __future__ import absolute_import, division, print_function

import json
import os


from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import lab_connection as connection, run_module

__metaclass__ = type


def run(lab, name, args, tmp_path, check=False):
    result, output = run_module(name, dict(connection(lab), **args), tmp_path, check=check)
    assert lab.info['password'] not in output
    return result


def test_plan_snapshot_export_plan_through_ansible(lab, tmp_path):
    root = str(tmp_path / 'backups')
    assert run(lab, 'nbd_network', {'network': 'backup-net', 'purpose': 'nbd'}, tmp_path)['changed']
    assert run(lab, 'vdi_cbt', {'vm': 'demo-vm', 'enabled': True}, tmp_path)['changed']

    plan = run(lab, 'backup_plan', {'vms': ['demo-vm'], 'repository_root': root, 'skip_disks': ['demo-vm-disk1'],
                                    'full_every': {'incrementals': 6}}, tmp_path, check=True)
    assert plan['failed'] is False and plan['changed'] is False, plan
    assert plan['summary'] == {'vms': 1, 'disks': 2, 'full': 1, 'incremental': 0, 'skip': 1, 'leftover_snapshots': 0}
    disk0, disk1 = plan['vms'][0]['disks']
    assert (disk0['mode'], disk0['reason_code'], disk1['mode'], disk1['reason_code']) == \
        ('full', 'FIRST_BACKUP', 'skip', 'SKIPPED')

    snap = run(lab, 'vdi_snapshot', {'vm': 'demo-vm', 'skip_disks': ['demo-vm-disk1']}, tmp_path)
    assert snap['changed'] and snap['skipped_disks'] == [disk1['vdi_uuid']]
    assert [s['snapshot_of'] for s in snap['snapshots']] == [disk0['vdi_uuid']]
    snapshot = snap['snapshots'][0]['uuid']

    exported = run(lab, 'vdi_export', {'snapshot': snapshot, 'repository': disk0['repository']}, tmp_path)
    assert exported['failed'] is False, exported
    assert exported['repository'] == disk0['repository']
    with open(os.path.join(disk0['repository'], 'manifest.json')) as handle:
        manifest = json.load(handle)
    assert manifest['disk'] == {'vdi_uuid': disk0['vdi_uuid'], 'name': 'demo-vm-disk0',
                                'virtual_size': disk0['virtual_size'], 'vm_uuid': plan['vms'][0]['uuid'],
                                'vm_name': 'demo-vm', 'userdevice': '0'}
    point = manifest['points'][0]
    assert isinstance(point['seconds'], float) and 0 < point['seconds'] < 60
    assert point['seconds'] == round(point['seconds'], 3)
    assert exported['point']['seconds'] == point['seconds']
    # the same task again (also as the role's re-run words it, with the anchor as base): ok, nothing added
    for again_args in ({}, {'base': snapshot}):
        again = run(lab, 'vdi_export', dict({'snapshot': snapshot, 'repository': disk0['repository']}, **again_args),
                    tmp_path)
        assert again['failed'] is False and again['changed'] is False and again['already_exported'] is True, again
        assert again['point']['id'] == point['id'] and again['bytes_read'] == 0
    with open(os.path.join(disk0['repository'], 'manifest.json')) as handle:
        assert [p['id'] for p in json.load(handle)['points']] == [point['id']]

    plan = run(lab, 'backup_plan', {'vms': ['demo-vm'], 'repository_root': root}, tmp_path)
    disk0 = plan['vms'][0]['disks'][0]
    assert (disk0['mode'], disk0['reason_code'], disk0['base']) == ('incremental', 'CHAIN_OK', snapshot)
    assert disk0['leftover_snapshots'] == []  # the anchor still holds its data (not reduced), but is no leftover

    # a snapshot of a run that stopped before its cleanup: the next plan lists it
    left = run(lab, 'vdi_snapshot', {'vdi': 'demo-vm-disk0'}, tmp_path)['snapshots'][0]
    plan = run(lab, 'backup_plan', {'vms': ['demo-vm'], 'repository_root': root}, tmp_path)
    leftover = {'uuid': left['uuid'], 'time': left['time'], 'type': 'user'}
    assert plan['vms'][0]['disks'][0]['leftover_snapshots'] == [leftover]
    assert plan['summary']['leftover_snapshots'] == 1


def test_bad_arguments(lab, tmp_path):
    for name, args, words in [
        ('backup_plan', {'repository_root': str(tmp_path)}, 'no VM selected'),
        ('backup_plan', {'vms': ['demo-vm'], 'repository_root': str(tmp_path), 'full_every': {'days': -1}},
         'full_every.days must be 0 or more'),
        ('backup_plan', {'tags': ['nobody-has-this'], 'repository_root': str(tmp_path)}, 'no VM carries any of the tags'),
        ('vdi_snapshot', {'vdi': 'demo-vm-disk0', 'skip_disks': ['demo-vm-disk1']}, 'skip_disks'),
    ]:
        result = run(lab, name, args, tmp_path)
        assert result['failed'] is True and words in result['msg'], result
