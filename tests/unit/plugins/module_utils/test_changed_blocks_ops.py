# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_changed_blocks logic over a fake XenAPI client."""
from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import changed_blocks as cbo
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils.test_snapshot_ops import (
    K64, FakeClient, _uuid, host_error,
)

__metaclass__ = type


def _pair(client=None):
    client = client or FakeClient()
    base = client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z', type='cbt_metadata')
    snap = client.add_snapshot('OpaqueRef:d0', '20240102T00:00:00Z')
    return client, base, snap


def test_changed_blocks_counts_and_extents_clamped_to_the_disk():
    client, base, snap = _pair()
    client.bitmap = _cbt.encode([0, 1, 4], 4 * K64 + 512)  # block 4 is the partial last block
    result = cbo.list_changed_blocks(client, _uuid(101), _uuid(102))
    assert ('VDI.list_changed_blocks', base, snap) in client.calls  # (older, newer)
    assert result['changed_blocks'] == 3 and result['changed_bytes'] == 2 * K64 + 512
    assert result['extents'] == [{'offset': 0, 'length': 2 * K64}, {'offset': 4 * K64, 'length': 512}]
    assert not result['chain_broken'] and result['chain_broken_reason'] is None and not result['changed']


@pytest.mark.parametrize('code, words', [
    ('SR_BACKEND_FAILURE_460', 'unrelated'),
    ('SR_BACKEND_FAILURE_459', 'inconsistent'),
    ('VDI_NO_CBT_METADATA', 'no CBT metadata'),
    ('HANDLE_INVALID', 'no longer exists'),
])
def test_changed_blocks_broken_chain_codes(code, words):
    client, dummy, dummy2 = _pair()
    client.fail['VDI.list_changed_blocks'] = [host_error(code, '', 'detail', '')]
    result = cbo.list_changed_blocks(client, _uuid(101), _uuid(102), allow_broken_chain=True)
    assert result['chain_broken'] and words in result['chain_broken_reason'] and 'bitmap' not in result
    client.fail['VDI.list_changed_blocks'] = [host_error(code, '', 'detail', '')]
    with pytest.raises(cbo.ChainBroken) as info:
        cbo.list_changed_blocks(client, _uuid(101), _uuid(102))
    assert info.value.code == code and info.value.from_host and 'full backup' in info.value.message


def test_changed_blocks_base_gone_and_cbt_off_are_detected_before_the_call():
    client, base, snap = _pair()
    gone = cbo.list_changed_blocks(client, _uuid(999), _uuid(102), allow_broken_chain=True)
    assert gone['chain_broken'] and gone['base'] is None
    client.objects['VDI'][snap]['cbt_enabled'] = False
    off = cbo.list_changed_blocks(client, _uuid(101), _uuid(102), allow_broken_chain=True)
    assert off['chain_broken'] and 'CBT was not enabled' in off['chain_broken_reason']
    assert not [c for c in client.calls if c[0] == 'VDI.list_changed_blocks']
    with pytest.raises(cbo.ChainBroken) as info:
        cbo.list_changed_blocks(client, _uuid(101), _uuid(102))
    assert info.value.code == 'CBT_CHAIN_BROKEN' and not info.value.from_host


def test_changed_blocks_other_disk_is_a_broken_chain():
    client = FakeClient()
    client.objects['VDI']['OpaqueRef:d1']['cbt_enabled'] = True
    client.add_snapshot('OpaqueRef:d0', '20240101T00:00:00Z')
    client.add_snapshot('OpaqueRef:d1', '20240102T00:00:00Z')
    result = cbo.list_changed_blocks(client, _uuid(101), _uuid(102), allow_broken_chain=True)
    assert result['chain_broken'] and 'different disks' in result['chain_broken_reason']


def test_changed_blocks_user_errors_fail_even_when_broken_chains_are_allowed():
    client, dummy, dummy2 = _pair()
    with pytest.raises(XenApiError) as info:
        cbo.list_changed_blocks(client, _uuid(102), _uuid(101), allow_broken_chain=True)
    assert 'swap them' in info.value.message
    with pytest.raises(XenApiError) as info:
        cbo.list_changed_blocks(client, _uuid(102), _uuid(102), allow_broken_chain=True)
    assert 'the same VDI' in info.value.message
    with pytest.raises(XenApiError) as info:
        cbo.list_changed_blocks(client, _uuid(101), 'no-such', allow_broken_chain=True)
    assert info.value.code == 'NOT_FOUND'


def test_changed_blocks_in_use_mentions_nbd():
    client, dummy, dummy2 = _pair()
    client.fail['VDI.list_changed_blocks'] = [host_error('VDI_IN_USE', 'x', 'list_changed_blocks')]
    with pytest.raises(XenApiError) as info:
        cbo.list_changed_blocks(client, _uuid(101), _uuid(102), allow_broken_chain=True)
    assert 'NBD connection' in info.value.message and info.value.from_host


def test_changed_blocks_bitmap_for_a_smaller_disk_fails():
    client, dummy, dummy2 = _pair()
    client.bitmap = _cbt.encode([0], K64)  # 1 byte; the disk needs 1 byte too -> make the disk bigger
    client.objects['VDI']['OpaqueRef:s102']['virtual_size'] = str(100 * K64)
    with pytest.raises(XenApiError) as info:
        cbo.list_changed_blocks(client, _uuid(101), _uuid(102))
    assert 'unusable bitmap' in info.value.message


def test_changed_blocks_warns_when_cbt_is_off_on_the_disk_now():
    client, dummy, dummy2 = _pair()
    client.bitmap = _cbt.encode([], 4 * K64 + 512)
    assert cbo.list_changed_blocks(client, _uuid(101), _uuid(102))['warnings'] == []
    client.objects['VDI']['OpaqueRef:d0']['cbt_enabled'] = False
    result = cbo.list_changed_blocks(client, _uuid(101), _uuid(102))
    assert not result['chain_broken'] and result['changed_blocks'] == 0
    assert 'CBT is disabled on the disk disk0' in result['warnings'][0]
