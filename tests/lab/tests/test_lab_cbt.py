# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""CBT calls: enable/disable, snapshot rotation, list_changed_blocks bitmaps, data_destroy, destroy."""

from __future__ import absolute_import, division, print_function

import base64
import os

import pytest

__metaclass__ = type

BLOCK = 64 * 1024
MSG = 'Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are %s]'


def changed(bitmap):
    """Decode per the reference: block i changed <=> raw[i // 8] & (0x80 >> i % 8)."""
    raw = base64.b64decode(bitmap)
    return [i for i in range(len(raw) * 8) if raw[i // 8] & (0x80 >> (i % 8))]


@pytest.fixture(scope='module')
def disk(api):
    """A fresh CBT-enabled user VDI in Local storage (not attached, so the live VDI can be compared)."""
    sr = api.SR.get_by_name_label('Local storage')[0]
    vdi = api.VDI.create({'SR': sr, 'virtual_size': str(4 << 20), 'type': 'user', 'sharable': False,
                          'read_only': False, 'other_config': {}, 'name_label': 'cbt-test'})
    api.VDI.enable_cbt(vdi)
    return vdi


def uuid(api, ref):
    return api.VDI.get_uuid(ref)


def test_enable_cbt_idempotent_and_snapshot_carries_it(api, disk):
    api.VDI.enable_cbt(disk)
    assert api.VDI.get_cbt_enabled(disk) is True
    snap = api.VDI.snapshot(disk)
    record = api.VDI.get_record(snap)
    assert record['is_a_snapshot'] is True and record['snapshot_of'] == disk and record['cbt_enabled'] is True
    assert snap in api.VDI.get_snapshots(disk)
    api.VDI.destroy(snap)


def test_enable_cbt_errors(api, disk, failure):
    snap = api.VDI.snapshot(disk)
    with failure('OPERATION_NOT_ALLOWED') as exc:
        api.VDI.enable_cbt(snap)
    assert exc.details[1] == 'VDI is a snapshot: %s' % snap
    with failure('OPERATION_NOT_ALLOWED'):
        api.VDI.disable_cbt(snap)
    api.VDI.data_destroy(snap)
    with failure('VDI_INCOMPATIBLE_TYPE') as exc:
        api.VDI.enable_cbt(snap)
    assert exc.details[1:] == [snap, 'cbt_metadata']
    sr = api.SR.get_by_name_label('Local storage')[0]
    suspend = api.VDI.create({'SR': sr, 'virtual_size': '1048576', 'type': 'suspend', 'sharable': False,
                              'read_only': False, 'other_config': {}, 'name_label': 'suspend'})
    with failure('VDI_INCOMPATIBLE_TYPE') as exc:
        api.VDI.enable_cbt(suspend)
    assert exc.details[1:] == [suspend, 'suspend']
    reset = api.VDI.get_by_name_label('other-vm-scratch')[0]
    with failure('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION') as exc:
        api.VDI.enable_cbt(reset)
    assert exc.details == ['VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION']
    iso_vdi = api.VDI.get_by_name_label('lab-tools.iso')[0]
    with failure('SR_OPERATION_NOT_SUPPORTED') as exc:
        api.VDI.enable_cbt(iso_vdi)
    assert exc.details[1:] == [api.VDI.get_SR(iso_vdi)]
    with failure('VDI_INCOMPATIBLE_TYPE') as exc:
        api.VDI.create({'SR': sr, 'virtual_size': '1048576', 'type': 'cbt_metadata', 'sharable': False,
                        'read_only': False, 'other_config': {}, 'name_label': 'x'})
    assert exc.details[1:] == ['', 'cbt_metadata']
    for ref in (snap, suspend):
        api.VDI.destroy(ref)


def test_bitmap_format_on_known_writes(lab, api, disk):
    base = api.VDI.snapshot(disk)
    last = (4 << 20) // BLOCK - 1
    lab.write(uuid(api, disk), 0, 1)                         # block 0
    lab.write(uuid(api, disk), 9 * BLOCK + 100, 10)         # block 9
    lab.write(uuid(api, disk), 20 * BLOCK - 1, 2)           # straddles blocks 19 and 20
    lab.write(uuid(api, disk), (4 << 20) - 512, 512)       # last block
    new = api.VDI.snapshot(disk)
    bitmap = api.VDI.list_changed_blocks(base, new)
    raw = base64.b64decode(bitmap)
    assert len(raw) == (4 << 20) // BLOCK // 8
    assert raw[0] == 0x80 and raw[1] == 0x40
    assert changed(bitmap) == [0, 9, 19, 20, last]
    # The live VDI (not attached) can be vdi_to; nothing changed since the last snapshot.
    assert changed(api.VDI.list_changed_blocks(new, disk)) == []
    for ref in (base, new):
        api.VDI.destroy(ref)


def test_or_of_logs_and_destroy_merges(lab, api, disk):
    s0 = api.VDI.snapshot(disk)
    lab.write(uuid(api, disk), 1 * BLOCK, 1)
    s1 = api.VDI.snapshot(disk)
    lab.write(uuid(api, disk), 2 * BLOCK, 1)
    s2 = api.VDI.snapshot(disk)
    lab.write(uuid(api, disk), 3 * BLOCK, 1)
    s3 = api.VDI.snapshot(disk)
    assert changed(api.VDI.list_changed_blocks(s0, s1)) == [1]
    assert changed(api.VDI.list_changed_blocks(s1, s3)) == [2, 3]
    assert changed(api.VDI.list_changed_blocks(s0, s3)) == [1, 2, 3]
    api.VDI.data_destroy(s1)
    api.VDI.data_destroy(s2)
    api.VDI.destroy(s2)  # merges its log into s3's
    assert changed(api.VDI.list_changed_blocks(s1, s3)) == [2, 3]
    assert changed(api.VDI.list_changed_blocks(s0, s3)) == [1, 2, 3]
    for ref in (s0, s1, s3):
        api.VDI.destroy(ref)


def test_same_and_unrelated(api, disk, failure):
    s0 = api.VDI.snapshot(disk)
    s1 = api.VDI.snapshot(disk)
    with failure('SR_BACKEND_FAILURE_460') as exc:
        api.VDI.list_changed_blocks(s0, s0)
    assert exc.details[1:] == ['', MSG % 'same', '']
    with failure('SR_BACKEND_FAILURE_460') as exc:
        api.VDI.list_changed_blocks(s1, s0)  # wrong order
    assert exc.details[2] == MSG % 'unrelated'
    api.VDI.disable_cbt(disk)
    api.VDI.disable_cbt(disk)  # idempotent
    api.VDI.enable_cbt(disk)
    s2 = api.VDI.snapshot(disk)
    with failure('SR_BACKEND_FAILURE_460') as exc:
        api.VDI.list_changed_blocks(s1, s2)  # new chain after disable/enable
    assert exc.details[2] == MSG % 'unrelated'
    plain = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    plain_snap = api.VDI.snapshot(plain)  # no CBT: no log
    with failure('SR_BACKEND_FAILURE_460'):
        api.VDI.list_changed_blocks(s2, plain_snap)
    for ref in (s0, s1, s2, plain_snap):
        api.VDI.destroy(ref)


def test_list_changed_blocks_live_vdi_attached_to_running_vm(api, failure):
    vdi = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    api.VDI.enable_cbt(vdi)
    snap = api.VDI.snapshot(vdi)
    with failure('VDI_IN_USE') as exc:
        api.VDI.list_changed_blocks(snap, vdi)
    assert exc.details[1:] == [vdi, 'list_changed_blocks']
    api.VDI.destroy(snap)
    api.VDI.disable_cbt(vdi)


def test_snapshot_copies_content(lab, api, disk):
    lab.write(uuid(api, disk), 5 * BLOCK, 3000, seed=42)
    snap = api.VDI.snapshot(disk)
    assert lab.content(uuid(api, snap)) == lab.content(uuid(api, disk))
    lab.write(uuid(api, disk), 5 * BLOCK, 3000, seed=43)
    assert lab.content(uuid(api, snap)) != lab.content(uuid(api, disk))
    api.VDI.destroy(snap)


def test_data_destroy(lab, api, disk, failure):
    with failure('OPERATION_NOT_ALLOWED') as exc:
        api.VDI.data_destroy(disk)
    assert exc.details[1] == 'VDI is not a snapshot: %s' % disk
    plain = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    plain_snap = api.VDI.snapshot(plain)
    with failure('VDI_NO_CBT_METADATA') as exc:
        api.VDI.data_destroy(plain_snap)
    assert exc.details[1:] == [plain_snap]
    snap = api.VDI.snapshot(disk)
    path = lab.path(uuid(api, snap))
    api.VDI.data_destroy(snap)
    record = api.VDI.get_record(snap)
    assert record['type'] == 'cbt_metadata' and record['cbt_enabled'] is True and record['is_a_snapshot'] is True
    assert record['snapshot_of'] == disk and snap in api.VDI.get_snapshots(disk)
    assert not os.path.exists(path)
    api.VDI.data_destroy(snap)  # idempotent
    with failure('VDI_INCOMPATIBLE_TYPE'):
        api.VDI.snapshot(snap)
    with failure('VDI_INCOMPATIBLE_TYPE') as exc:
        api.VDI.get_nbd_info(snap)
    assert exc.details[1:] == [snap, 'cbt_metadata']
    # A cbt_metadata snapshot still anchors the chain.
    lab.write(uuid(api, disk), 7 * BLOCK, 1)
    later = api.VDI.snapshot(disk)
    assert changed(api.VDI.list_changed_blocks(snap, later)) == [7]
    for ref in (plain_snap, snap, later):
        api.VDI.destroy(ref)
    with failure('HANDLE_INVALID'):
        api.VDI.get_record(snap)


def test_sharable_and_set_on_boot(api, disk, failure):
    with failure('VDI_CBT_ENABLED') as exc:
        api.VDI.set_on_boot(disk, 'reset')
    assert exc.details[1:] == [disk]
    sr = api.SR.get_by_name_label('Local storage')[0]
    shared = api.VDI.create({'SR': sr, 'virtual_size': '1048576', 'type': 'user', 'sharable': True,
                             'read_only': False, 'other_config': {}, 'name_label': 'shared'})
    with failure('VDI_IS_SHARABLE') as exc:
        api.VDI.snapshot(shared)
    assert exc.details[1:] == [shared]
    api.VDI.destroy(shared)


def test_allowed_operations_never_list_cbt_ops(api, disk):
    ops = set(api.VDI.get_allowed_operations(disk))
    assert 'snapshot' in ops and 'destroy' in ops
    assert not ops & {'enable_cbt', 'disable_cbt', 'data_destroy', 'list_changed_blocks'}
    live = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    assert 'destroy' not in api.VDI.get_record(live)['allowed_operations']  # attached to a running VM
