# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_cbt logic over the fake XenAPI (tests/unit/helpers/fake_xenapi.py)."""
from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import cbt as _cbt_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_xenapi import FakeXenApi

__metaclass__ = type

CBT_OPS = ['vdi_enable_cbt', 'vdi_disable_cbt']


def _uuid(n):
    return '%08d-0000-4000-8000-000000000000' % n


def _vdi(n, name, sr='OpaqueRef:local', **fields):
    record = {'uuid': _uuid(n), 'name_label': name, 'SR': sr, 'type': 'user', 'is_a_snapshot': False,
              'cbt_enabled': False, 'on_boot': 'persist', 'managed': True}
    record.update(fields)
    return record


class FakeClient(FakeXenApi):
    """Disks, a VM with a CD, a VM with an on_boot=reset disk, an SR without CBT; CBT switches per disk, with
    host refusals per disk in ``fail_refs``."""

    def __init__(self):
        super(FakeClient, self).__init__({
            'SR': {
                'OpaqueRef:local': {'uuid': _uuid(90), 'name_label': 'Local storage', 'type': 'ext',
                                    'allowed_operations': list(CBT_OPS)},
                'OpaqueRef:iso': {'uuid': _uuid(91), 'name_label': 'ISO library', 'type': 'iso',
                                  'allowed_operations': []},
            },
            'VDI': {
                'OpaqueRef:d0': _vdi(1, 'disk0'),
                'OpaqueRef:d1': _vdi(2, 'disk1'),
                'OpaqueRef:iso': _vdi(3, 'tools.iso', sr='OpaqueRef:iso'),
                'OpaqueRef:scratch': _vdi(4, 'scratch', on_boot='reset'),
                'OpaqueRef:snap': _vdi(5, 'disk0', is_a_snapshot=True),
            },
            'VM': {
                'OpaqueRef:vm': {'uuid': _uuid(10), 'name_label': 'vm', 'is_a_template': False, 'is_a_snapshot': False,
                                 'is_control_domain': False, 'VBDs': ['OpaqueRef:b1', 'OpaqueRef:b0', 'OpaqueRef:bcd']},
                'OpaqueRef:vm2': {'uuid': _uuid(11), 'name_label': 'vm2', 'is_a_template': False,
                                  'is_a_snapshot': False, 'is_control_domain': False,
                                  'VBDs': ['OpaqueRef:b2', 'OpaqueRef:b3']},
            },
            'VBD': {
                'OpaqueRef:b0': {'type': 'Disk', 'VDI': 'OpaqueRef:d0', 'userdevice': '0', 'empty': False},
                'OpaqueRef:b1': {'type': 'Disk', 'VDI': 'OpaqueRef:d1', 'userdevice': '1', 'empty': False},
                'OpaqueRef:bcd': {'type': 'CD', 'VDI': 'OpaqueRef:iso', 'userdevice': '3', 'empty': False},
                'OpaqueRef:b2': {'type': 'Disk', 'VDI': 'OpaqueRef:d0', 'userdevice': '0', 'empty': False},
                'OpaqueRef:b3': {'type': 'Disk', 'VDI': 'OpaqueRef:scratch', 'userdevice': '1', 'empty': False},
            },
        })
        self.fail_refs = {}

    def _switch_cbt(self, vdi, enabled):
        if vdi in self.fail_refs:
            raise self.fail_refs[vdi]
        self.objects['VDI'][vdi]['cbt_enabled'] = enabled
        return ''

    def _VDI_enable_cbt(self, vdi):
        return self._switch_cbt(vdi, True)

    def _VDI_disable_cbt(self, vdi):
        return self._switch_cbt(vdi, False)

    def changes(self):
        return [method for method in self.methods() if method.endswith('able_cbt')]


@pytest.fixture
def client():
    return FakeClient()


def test_enable_one_disk_then_idempotent(client):
    result = _cbt_ops.ensure_cbt(client, vdi='disk0')
    assert result['changed'] is True
    assert result['disks'] == [{'uuid': _uuid(1), 'name': 'disk0', 'cbt_enabled': True, 'changed': True}]
    assert result['diff']['before'] == {'disks': [{'uuid': _uuid(1), 'name': 'disk0', 'cbt_enabled': False}]}
    assert result['diff']['after'] == {'disks': [{'uuid': _uuid(1), 'name': 'disk0', 'cbt_enabled': True}]}
    again = _cbt_ops.ensure_cbt(client, vdi=_uuid(1))
    assert again['changed'] is False and again['disks'][0]['changed'] is False
    assert client.changes() == ['VDI.enable_cbt']


def test_vm_disks_in_device_order_without_the_cd(client):
    client.objects['VDI']['OpaqueRef:d0']['cbt_enabled'] = True
    result = _cbt_ops.ensure_cbt(client, vm='vm')
    assert [(d['name'], d['changed'], d['cbt_enabled']) for d in result['disks']] == [
        ('disk0', False, True), ('disk1', True, True)]
    assert client.changes() == ['VDI.enable_cbt']


def test_check_mode_changes_nothing(client):
    result = _cbt_ops.ensure_cbt(client, vm='vm', check_mode=True)
    assert result['changed'] is True
    assert [d['cbt_enabled'] for d in result['disks']] == [True, True]
    assert client.changes() == []
    assert not client.objects['VDI']['OpaqueRef:d0']['cbt_enabled']


def test_disable(client):
    for ref in ('OpaqueRef:d0', 'OpaqueRef:d1'):
        client.objects['VDI'][ref]['cbt_enabled'] = True
    result = _cbt_ops.ensure_cbt(client, vm='vm', enabled=False)
    assert result['changed'] and [d['cbt_enabled'] for d in result['disks']] == [False, False]
    assert client.changes() == ['VDI.disable_cbt', 'VDI.disable_cbt']


@pytest.mark.parametrize('check_mode', [False, True])
def test_sr_without_cbt_is_named(client, check_mode):
    with pytest.raises(XenApiError) as info:
        _cbt_ops.ensure_cbt(client, vdi='tools.iso', check_mode=check_mode)
    exc = info.value
    assert exc.code == 'SR_OPERATION_NOT_SUPPORTED'
    assert exc.params == ['OpaqueRef:iso']
    assert 'disk "tools.iso"' in exc.message and '"ISO library" (type iso)' in exc.message
    assert client.changes() == []


def test_disabling_a_disabled_disk_on_an_sr_without_cbt_is_fine(client):
    result = _cbt_ops.ensure_cbt(client, vdi='tools.iso', enabled=False)
    assert result['changed'] is False
    assert 'SR.get_allowed_operations' not in client.methods()


def test_on_boot_reset_is_named_and_nothing_changes(client):
    with pytest.raises(XenApiError) as info:
        _cbt_ops.ensure_cbt(client, vm='vm2')
    assert info.value.code == 'VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION'
    assert 'disk "scratch"' in info.value.message and 'on_boot=reset' in info.value.message
    # disk0 comes first in vm2 but was not changed: every disk is checked before any change
    assert client.changes() == []


def test_host_refusal_is_translated_and_keeps_the_disks_done(client):
    client.fail_refs['OpaqueRef:d1'] = XenApiError(from_host=True, message='VDI.enable_cbt failed: ...', code='SR_OPERATION_NOT_SUPPORTED',
                                                   params=['OpaqueRef:local'])
    with pytest.raises(_cbt_ops.CbtError) as info:
        _cbt_ops.ensure_cbt(client, vm='vm')
    exc = info.value
    assert exc.code == 'SR_OPERATION_NOT_SUPPORTED'
    assert 'disk "disk1"' in exc.message and '"Local storage"' in exc.message
    assert exc.disks == [{'uuid': _uuid(1), 'name': 'disk0', 'cbt_enabled': True, 'changed': True}]


@pytest.mark.parametrize('code, params, words', [
    ('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', [], 'on_boot=reset'),
    ('LICENCE_RESTRICTION', ['CBT'], 'licence does not include CBT'),
    ('VDI_IS_SHARABLE', ['OpaqueRef:d0'], 'sharable'),
])
def test_other_host_errors_name_the_disk(client, code, params, words):
    client.fail['VDI.enable_cbt'] = [XenApiError(from_host=True, message='VDI.enable_cbt failed', code=code, params=params)]
    with pytest.raises(_cbt_ops.CbtError) as info:
        _cbt_ops.ensure_cbt(client, vdi='disk0')
    assert info.value.code == code and info.value.params == params
    assert 'disk "disk0"' in info.value.message and words in info.value.message
    assert info.value.disks == []


def test_snapshots_are_refused_and_names_prefer_disks(client):
    # "disk0" is also the snapshot's name: only the disk is considered
    assert _cbt_ops.ensure_cbt(client, vdi='disk0', check_mode=True)['disks'][0]['uuid'] == _uuid(1)
    with pytest.raises(XenApiError) as info:
        _cbt_ops.ensure_cbt(client, vdi=_uuid(5))
    assert info.value.code == 'WRONG_KIND'


def test_incompatible_type(client):
    client.objects['VDI']['OpaqueRef:d0']['type'] = 'suspend'
    with pytest.raises(XenApiError) as info:
        _cbt_ops.ensure_cbt(client, vdi='disk0')
    assert info.value.code == 'VDI_INCOMPATIBLE_TYPE' and 'type suspend' in info.value.message


def test_lookup_errors(client):
    client.objects['VDI']['OpaqueRef:d1']['name_label'] = 'disk0'
    with pytest.raises(XenApiError) as info:
        _cbt_ops.ensure_cbt(client, vdi='disk0')
    assert info.value.code == 'AMBIGUOUS'
    with pytest.raises(XenApiError) as info:
        _cbt_ops.ensure_cbt(client, vm='nope')
    assert info.value.code == 'NOT_FOUND'
    with pytest.raises(XenApiError):
        _cbt_ops.ensure_cbt(client)
