# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_snapshot's skip_disks (VM.snapshot ignore_vdis) against the lab, over real HTTPS XML-RPC."""

from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import model as _objects, client as _xenapi
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import snapshot as _snapshot_ops

__metaclass__ = type


def disks_of(client, vm):
    vm_ref, dummy = _objects.find_vm(client, vm)
    return [record for dummy, record, dummy2 in _objects.vm_disks(client, vm_ref)]


def snapshots_of(client, uuid):
    return client.call('VDI.get_snapshots', client.call('VDI.get_by_uuid', uuid))


def snapshot_vms(client):
    return [ref for ref, rec in client.call('VM.get_all_records').items() if rec['is_a_snapshot']]


def test_a_skipped_disk_is_left_out_of_the_vm_snapshot(client):
    disk0, disk1 = disks_of(client, 'demo-vm')
    result = _snapshot_ops.snapshot_vm(client, 'demo-vm', skip_disks=['demo-vm-disk1', 'no-such-disk'])
    assert result['changed'] is True
    assert result['skipped_disks'] == [disk1['uuid']]
    assert [s['snapshot_of'] for s in result['snapshots']] == [disk0['uuid']]
    assert result['snapshots'][0]['uuid'] in [client.call('VDI.get_uuid', r) for r in snapshots_of(client, disk0['uuid'])]
    # VM.snapshot was told to ignore disk1: the host made no snapshot of it at all
    assert snapshots_of(client, disk1['uuid']) == []
    assert snapshot_vms(client) == []
    assert not [w for w in result['warnings'] if 'made no snapshot' in w]


def test_skip_by_uuid_in_any_case(client):
    disk0, disk1 = disks_of(client, 'demo-vm')
    result = _snapshot_ops.snapshot_vm(client, 'demo-vm', skip_disks=[disk0['uuid'].upper()])
    assert result['skipped_disks'] == [disk0['uuid']]
    assert [s['snapshot_of'] for s in result['snapshots']] == [disk1['uuid']]
    assert snapshots_of(client, disk0['uuid']) == []


def test_check_mode_plans_without_the_skipped_disks(client):
    disk0, disk1 = disks_of(client, 'demo-vm')
    result = _snapshot_ops.snapshot_vm(client, 'demo-vm', check_mode=True, skip_disks=['demo-vm-disk0'])
    assert result['changed'] is True
    assert [s['snapshot_of'] for s in result['snapshots']] == [disk1['uuid']]
    assert result['snapshots'][0]['uuid'] is None
    assert result['skipped_disks'] == [disk0['uuid']]
    assert snapshots_of(client, disk1['uuid']) == []


def test_every_disk_skipped_is_no_snapshot_and_no_change(client):
    # other-vm's only disk has on_boot=reset, which VM.snapshot refuses; skipped, nothing is asked of the host
    with pytest.raises(_xenapi.XenApiError) as caught:
        _snapshot_ops.snapshot_vm(client, 'other-vm')
    assert caught.value.code == 'VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION'
    scratch = disks_of(client, 'other-vm')[0]
    for check_mode in (True, False):
        result = _snapshot_ops.snapshot_vm(client, 'other-vm', check_mode=check_mode, skip_disks=['other-vm-scratch'])
        assert result == {'changed': False, 'snapshots': [], 'vm': result['vm'], 'skipped_disks': [scratch['uuid']],
                          'warnings': []}
    assert snapshots_of(client, scratch['uuid']) == []
    assert snapshot_vms(client) == []

    result = _snapshot_ops.snapshot_vm(client, 'demo-vm', skip_disks=['demo-vm-disk0', 'demo-vm-disk1'])
    assert result['changed'] is False and result['snapshots'] == [] and len(result['skipped_disks']) == 2
    assert snapshot_vms(client) == []


def test_without_skip_disks_every_disk_is_snapshotted(client):
    disk0, disk1 = disks_of(client, 'demo-vm')
    result = _snapshot_ops.snapshot_vm(client, 'demo-vm')
    assert result['skipped_disks'] == []
    assert [s['snapshot_of'] for s in result['snapshots']] == [disk0['uuid'], disk1['uuid']]
