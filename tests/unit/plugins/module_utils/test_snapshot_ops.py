# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_snapshot logic over the fake XenAPI (tests/unit/helpers/fake_xenapi.py; also used by
test_changed_blocks_ops)."""
from __future__ import absolute_import, division, print_function

import datetime
import xmlrpc.client

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import snapshot as ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_xenapi import FakeXenApi, host_error

__metaclass__ = type

K64 = 64 * 1024
NULL = 'OpaqueRef:NULL'


def _uuid(n):
    return '%08d-0000-4000-8000-000000000000' % n


def _vdi(n, name, **fields):
    record = {'uuid': _uuid(n), 'name_label': name, 'type': 'user', 'is_a_snapshot': False, 'snapshot_of': NULL,
              'snapshot_time': xmlrpc.client.DateTime('19700101T00:00:00Z'), 'cbt_enabled': True,
              'virtual_size': str(4 * K64 + 512), 'managed': True, 'VBDs': [], 'other_config': {}}
    record.update(fields)
    return record


class FakeClient(FakeXenApi):
    """Two disks with CBT, a VM with a CD; snapshots, VM snapshots, marks, data_destroy and destroy."""

    def __init__(self):
        super(FakeClient, self).__init__({
            'VDI': {
                'OpaqueRef:d0': _vdi(1, 'disk0'),
                'OpaqueRef:d1': _vdi(2, 'disk1', cbt_enabled=False),
                'OpaqueRef:iso': _vdi(3, 'tools.iso'),
            },
            'VM': {
                'OpaqueRef:vm': {'uuid': _uuid(10), 'name_label': 'vm', 'is_a_template': False,
                                 'is_a_snapshot': False, 'is_control_domain': False,
                                 'VBDs': ['OpaqueRef:b1', 'OpaqueRef:b0', 'OpaqueRef:bcd']},
            },
            'VBD': {
                'OpaqueRef:b0': {'type': 'Disk', 'VDI': 'OpaqueRef:d0', 'userdevice': '0', 'empty': False},
                'OpaqueRef:b1': {'type': 'Disk', 'VDI': 'OpaqueRef:d1', 'userdevice': '1', 'empty': False},
                'OpaqueRef:bcd': {'type': 'CD', 'VDI': 'OpaqueRef:iso', 'userdevice': '3', 'empty': False},
            },
        })
        self.counter = 100
        self.bitmap = None

    def add_snapshot(self, of, when, **fields):
        self.counter += 1
        ref = 'OpaqueRef:s%d' % self.counter
        base = self.objects['VDI'][of]
        fields.setdefault('other_config', dict(base['other_config']))  # xapi copies it from the disk
        self.objects['VDI'][ref] = _vdi(self.counter, base['name_label'], is_a_snapshot=True, snapshot_of=of,
                                        snapshot_time=xmlrpc.client.DateTime(when),
                                        cbt_enabled=base['cbt_enabled'], **fields)
        return ref

    def _VDI_snapshot(self, vdi, driver_params):
        assert driver_params == {}  # no 'type': CBT rotates only for the default snapshot type
        return self.add_snapshot(vdi, '20240501T02:00:00Z')

    def _VM_snapshot(self, vm, name):
        self.counter += 1
        snap_vm = 'OpaqueRef:v%d' % self.counter
        vbds = []
        for vbd in self.objects['VM'][vm]['VBDs']:
            record = dict(self.objects['VBD'][vbd])
            if record['type'] == 'Disk':
                record['VDI'] = self.add_snapshot(record['VDI'], '20240501T02:00:01Z')
            self.objects['VBD'][vbd + snap_vm] = record
            vbds.append(vbd + snap_vm)
        self.objects['VM'][snap_vm] = {'uuid': _uuid(self.counter), 'name_label': name, 'is_a_template': False,
                                       'is_a_snapshot': True, 'is_control_domain': False, 'VBDs': vbds,
                                       'snapshot_time': xmlrpc.client.DateTime('20240501T02:00:00Z')}
        return snap_vm

    def _VM_destroy(self, vm):
        for vbd in self.objects['VM'].pop(vm)['VBDs']:
            del self.objects['VBD'][vbd]
        return ''

    def _VDI_add_to_other_config(self, vdi, key, value):
        other_config = self.objects['VDI'][vdi]['other_config']
        if key in other_config:
            raise host_error('MAP_DUPLICATE_KEY', 'VDI', 'other_config', vdi, key)
        other_config[key] = value
        return ''

    def _VDI_remove_from_other_config(self, vdi, key):
        self.objects['VDI'][vdi]['other_config'].pop(key, None)
        return ''

    def _VDI_data_destroy(self, vdi):
        if not self.objects['VDI'][vdi]['cbt_enabled']:
            raise host_error('VDI_NO_CBT_METADATA', vdi)
        self.objects['VDI'][vdi]['type'] = 'cbt_metadata'
        return ''

    def _VDI_destroy(self, vdi):
        del self.objects['VDI'][vdi]
        return ''

    def _VDI_list_changed_blocks(self, vdi_from, vdi_to):
        return self.bitmap


def in_use(ref='OpaqueRef:x'):
    return host_error('VDI_IN_USE', ref, 'data_destroy')


# ----- xenapi_time --------------------------------------------------------------------------------

@pytest.mark.parametrize('value, expected', [
    (xmlrpc.client.DateTime('20240102T03:04:05Z'), '2024-01-02T03:04:05Z'),
    ('20240102T03:04:05Z', '2024-01-02T03:04:05Z'),
    ('20240102T03:04:05', '2024-01-02T03:04:05Z'),
    (datetime.datetime(2024, 1, 2, 3, 4, 5), '2024-01-02T03:04:05Z'),
    (datetime.datetime(2024, 1, 2, 4, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
     '2024-01-02T03:04:05Z'),
    (xmlrpc.client.DateTime('19700101T00:00:00Z'), None),
    (None, None),
])
def test_xenapi_time(value, expected):
    assert ops.xenapi_time(value) == expected


# ----- present -----------------------------------------------------------------------------------

def test_snapshot_vdi_returns_the_snapshot():
    client = FakeClient()
    result = ops.snapshot_vdi(client, 'disk0')
    snap = result['snapshots'][0]
    assert result['changed'] and result['warnings'] == []
    assert snap['snapshot_of'] == _uuid(1) and snap['time'] == '2024-05-01T02:00:00Z'
    assert snap['ref'].startswith('OpaqueRef:s') and snap['name'] == 'disk0' and snap['virtual_size'] == 4 * K64 + 512


def test_snapshot_vdi_name_ignores_snapshots_with_the_same_name():
    client = FakeClient()
    client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    assert ops.snapshot_vdi(client, 'disk0')['snapshots'][0]['snapshot_of'] == _uuid(1)


def test_snapshot_vdi_check_mode_calls_nothing():
    client = FakeClient()
    result = ops.snapshot_vdi(client, 'disk1', check_mode=True)
    assert result['changed'] and result['snapshots'][0]['uuid'] is None
    assert 'CBT is not enabled' in result['warnings'][0]
    assert not [c for c in client.calls if c[0] == 'VDI.snapshot']


def test_snapshot_vm_maps_disks_and_drops_the_vm_record():
    client = FakeClient()
    result = ops.snapshot_vm(client, 'vm')
    snaps = result['snapshots']
    assert [s['snapshot_of'] for s in snaps] == [_uuid(1), _uuid(2)]  # userdevice order, CD left out
    assert [s['time'] for s in snaps] == ['2024-05-01T02:00:00Z'] * 2  # the VM snapshot's time
    assert not [vm for vm in client.objects['VM'].values() if vm['is_a_snapshot']]
    for snap in snaps:
        assert snap['ref'] in client.objects['VDI']  # the disks survive VM.destroy
    assert 'CBT is not enabled on the disk disk1' in result['warnings'][0]


def test_snapshot_vm_reports_snapshots_when_cleanup_fails():
    client = FakeClient()
    client.fail['VM.destroy'] = [host_error('OTHER_OPERATION_IN_PROGRESS', 'VM', 'x', 'clone', 't')]
    with pytest.raises(ops.PartialSnapshotError) as info:
        ops.snapshot_vm(client, 'vm')
    assert len(info.value.snapshots) == 2 and 'destroy the snapshot VM' in info.value.message
    assert info.value.code == 'OTHER_OPERATION_IN_PROGRESS' and info.value.from_host


def test_snapshot_vm_check_mode():
    client = FakeClient()
    result = ops.snapshot_vm(client, _uuid(10), check_mode=True)
    assert [s['snapshot_of'] for s in result['snapshots']] == [_uuid(1), _uuid(2)]
    assert not [c for c in client.calls if c[0] == 'VM.snapshot']


# ----- metadata_only -----------------------------------------------------------------------------

def test_data_destroy_retries_vdi_in_use_then_succeeds():
    client = FakeClient()
    snap = client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    client.fail['VDI.data_destroy'] = [in_use(snap), in_use(snap)]
    sleeps = []
    result = ops.data_destroy(client, _uuid(101), retries=3, delay=1.5, sleep=sleeps.append)
    assert result['changed'] and result['attempts'] == 3 and sleeps == [1.5, 1.5]
    assert result['snapshots'][0]['type'] == 'cbt_metadata'


def test_data_destroy_gives_up_after_retries():
    client = FakeClient()
    snap = client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    client.fail['VDI.data_destroy'] = [in_use(snap) for dummy in range(5)]
    sleeps = []
    with pytest.raises(XenApiError) as info:
        ops.data_destroy(client, _uuid(101), retries=2, delay=0, sleep=sleeps.append)
    assert info.value.code == 'VDI_IN_USE' and info.value.from_host and 'NBD connection' in info.value.message
    assert 'failed 3 times' in info.value.message and len(sleeps) == 2


def test_data_destroy_is_idempotent_and_check_mode_is_dry():
    client = FakeClient()
    snap = client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    dry = ops.data_destroy(client, _uuid(101), check_mode=True)
    assert dry['changed'] and client.objects['VDI'][snap]['type'] == 'user'
    assert ops.data_destroy(client, _uuid(101))['changed']
    again = ops.data_destroy(client, _uuid(101))
    assert not again['changed'] and again['attempts'] == 0


@pytest.mark.parametrize('check_mode', [False, True])
def test_data_destroy_without_cbt_explains(check_mode):
    client = FakeClient()
    client.add_snapshot('OpaqueRef:d1', '20240101T00:00:00Z')
    with pytest.raises(XenApiError) as info:
        ops.data_destroy(client, _uuid(101), check_mode=check_mode)
    assert info.value.code == 'VDI_NO_CBT_METADATA' and 'state=absent' in info.value.message
    assert info.value.from_host is not check_mode  # check mode predicts the refusal without asking


def test_data_destroy_of_a_gone_uuid_fails():
    with pytest.raises(XenApiError) as info:
        ops.data_destroy(FakeClient(), _uuid(555))
    assert info.value.code == 'NOT_FOUND'


def test_data_destroy_refuses_a_disk():
    with pytest.raises(XenApiError) as info:
        ops.data_destroy(FakeClient(), _uuid(1))
    assert info.value.code == 'WRONG_KIND'


# ----- absent ------------------------------------------------------------------------------------

def test_destroy_twice():
    client = FakeClient()
    client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    assert ops.destroy(client, _uuid(101))['changed']
    assert ops.destroy(client, _uuid(101)) == {'changed': False, 'snapshots': [], 'attempts': 0}


def test_destroy_race_with_someone_else_is_no_change():
    client = FakeClient()
    client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    client.fail['VDI.destroy'] = [host_error('HANDLE_INVALID', 'VDI', 'x')]
    assert not ops.destroy(client, _uuid(101))['changed']


def test_destroy_never_destroys_a_disk():
    client = FakeClient()
    with pytest.raises(XenApiError):
        ops.destroy(client, _uuid(1))
    assert 'OpaqueRef:d0' in client.objects['VDI']
