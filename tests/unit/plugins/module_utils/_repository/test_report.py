# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run report: statuses from plan, snapshots, failures and real repositories; summary lines; atomic writing."""

from __future__ import absolute_import, division, print_function

import datetime
import json
import os
import random
import stat

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, report, retention
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Writer
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.store import Repository
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers import full_disk
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    K64, MIB, assert_qcow2_clean, feed, pieces,
)

__metaclass__ = type

UTC = datetime.timezone.utc
STARTED = '2026-11-25T02:00:05Z'
NOW = datetime.datetime(2026, 11, 25, 2, 0, 57, 500000, tzinfo=UTC)
VM = 'vm-1111'
DISK_SIZE = 4 * MIB


# -- real repositories without an NBD server ---------------------------------------------------------

def write_point(repo_dir, snapshot_uuid, disk_uuid='disk-0', blocks=4, seconds=0.25, bytes_read=None, seed=1,
                fallback_reason=None):
    """Add a real qcow2 restore point (full on an empty repository, else incremental) the way vdi_export does.

    ``seconds=None`` leaves the field out, like points written before it was recorded.
    """
    rnd = random.Random(seed)
    disk = bytearray(DISK_SIZE)
    offsets = sorted(rnd.sample(range(0, DISK_SIZE, K64), blocks))
    for offset in offsets:
        disk[offset:offset + K64] = bytes(rnd.getrandbits(8) for dummy in range(64)) * (K64 // 64)
    with Repository(repo_dir, write=True, create=True) as repo:
        parent = repo.newest()
        kind = 'full' if parent is None else 'incremental'
        ident, out = repo.new_point_file(kind)
        writer = Qcow2Writer(out.fd, DISK_SIZE, backing_file=parent['file'] if parent else None)
        feed(writer, disk, pieces(offsets, disk))
        written = writer.finish()
        out.commit()
        point = {
            'id': ident, 'time': datetime.datetime.now(UTC).isoformat(), 'type': kind, 'file': ident + '.qcow2',
            'parent': parent['id'] if parent else None, 'snapshot_uuid': snapshot_uuid, 'snapshot_time': None,
            'base_snapshot_uuid': parent['snapshot_uuid'] if parent else None, 'source_vdi_uuid': disk_uuid,
            'source_vdi_name': disk_uuid, 'virtual_size': DISK_SIZE, 'blocks': written.clusters_stored,
            'bytes': written.bytes_stored, 'blocks_digest': written.digest,
            'bytes_read': DISK_SIZE if bytes_read is None and kind == 'full' else (bytes_read or blocks * K64),
        }
        if seconds is not None:
            point['seconds'] = seconds
        if fallback_reason:
            point['fallback_reason'] = fallback_reason
        repo.add_point(point, disk={'vdi_uuid': disk_uuid, 'name': disk_uuid, 'virtual_size': DISK_SIZE,
                                    'vm_uuid': VM, 'vm_name': 'demo-vm', 'userdevice': '0'})
    assert_qcow2_clean(os.path.join(repo_dir, point['file']))
    return point


def plan_disk(root, vdi_uuid, mode='incremental', code='CHAIN_OK', userdevice='0', vm_uuid=VM, **extra):
    disk = {
        'vdi_uuid': vdi_uuid, 'vdi_name': 'demo-vm-%s' % vdi_uuid, 'userdevice': userdevice, 'virtual_size': DISK_SIZE,
        'sr_uuid': 'sr-1', 'sr_name': 'Local storage', 'cbt_enabled': True, 'cbt_supported': True,
        'repository': os.path.join(str(root), vm_uuid, vdi_uuid), 'mode': mode,
        'reason': 'reason for %s' % code, 'reason_code': code, 'base': None, 'previous_anchor': None,
        'points': 0, 'incrementals_since_full': 0, 'last_full_time': None,
    }
    disk.update(extra)
    return disk


def plan_vm(disks, uuid=VM, name='demo-vm'):
    return {'uuid': uuid, 'name': name, 'power_state': 'Running', 'tags': [], 'disks': disks}


def snap(uuid, of, **extra):
    item = {'uuid': uuid, 'ref': 'OpaqueRef:%s' % uuid, 'name': of, 'snapshot_of': of, 'time': STARTED,
            'type': 'user', 'cbt_enabled': True, 'virtual_size': DISK_SIZE}
    item.update(extra)
    return item


def build(plan, **kwargs):
    kwargs.setdefault('started', STARTED)
    kwargs.setdefault('pool', 'pool1')
    kwargs.setdefault('now', NOW)
    return report.build_report(plan, **kwargs)


def disk_of(result, vdi_uuid):
    for vm in result['vms']:
        for disk in vm['disks']:
            if disk['vdi_uuid'] == vdi_uuid:
                return disk
    raise AssertionError('no disk %s in the report' % vdi_uuid)


# -- statuses ----------------------------------------------------------------------------------------

def test_ok_disks_carry_the_facts_of_this_runs_point(tmp_path):
    root = tmp_path / 'repo'
    repo_a = str(root / VM / 'disk-a')
    write_point(repo_a, 'snap-a0', 'disk-a', seconds=1.5)
    write_point(repo_a, 'snap-a1', 'disk-a', blocks=6, seconds=2.0, seed=2)
    newest = write_point(repo_a, 'snap-a2', 'disk-a', blocks=3, bytes_read=12 * MIB, seconds=0.4, seed=3)
    full = write_point(str(root / VM / 'disk-b'), 'snap-b0', 'disk-b', blocks=5, seconds=0.5)
    plan = [plan_vm([plan_disk(root, 'disk-a'), plan_disk(root, 'disk-b', 'full', 'FIRST_BACKUP', userdevice='1')])]
    # Older snapshots of the disk in the list do not matter: the point taken from this run's snapshot is reported.
    result = build(plan, snapshots=[snap('snap-a2', 'disk-a'), snap('snap-b0', 'disk-b')])

    a = disk_of(result, 'disk-a')
    assert a == {
        'vdi_uuid': 'disk-a', 'vdi_name': 'demo-vm-disk-a', 'userdevice': '0', 'repository': repo_a,
        'mode': 'incremental', 'reason': 'reason for CHAIN_OK', 'reason_code': 'CHAIN_OK', 'status': 'ok',
        'step': None, 'error': None, 'snapshot_uuid': 'snap-a2', 'point': newest['id'], 'point_type': 'incremental',
        'bytes_read': 12 * MIB, 'bytes_stored': 3 * K64, 'seconds': 0.4, 'throughput_mib_s': 30.0, 'points_kept': 3,
        'warnings': [],
    }
    b = disk_of(result, 'disk-b')
    assert b['status'] == 'ok' and b['point'] == full['id'] and b['point_type'] == 'full'
    assert b['bytes_read'] == DISK_SIZE and b['bytes_stored'] == 5 * K64 and b['throughput_mib_s'] == 8.0
    assert b['points_kept'] == 1
    assert result['vms'][0]['status'] == 'ok' and result['vms'][0]['name'] == 'demo-vm'
    assert result['pool'] == 'pool1' and result['started'] == STARTED and result['finished'] == '2026-11-25T02:00:57Z'
    assert result['seconds'] == 52.5
    assert result['totals'] == {'vms': 1, 'disks': 2, 'full': 1, 'incremental': 1, 'skipped': 0, 'failed': 0,
                                'ok': 2, 'planned': 0, 'bytes_read': 12 * MIB + DISK_SIZE,
                                'bytes_stored': 8 * K64}
    assert result['failures'] == [] and result['warnings'] == []

    lines = report.summary_lines(result)
    assert lines == [
        'demo-vm/demo-vm-disk-a (xvda 0): incremental (CHAIN_OK) ok  12.0 MiB read, 192.0 KiB stored, 0.4 s, '
        '30.0 MiB/s, 3 points',
        'demo-vm/demo-vm-disk-b (xvdb 1): full (FIRST_BACKUP) ok  4.0 MiB read, 320.0 KiB stored, 0.5 s, '
        '8.0 MiB/s, 1 point',
        'pool1: 1 VM, 2 disks: 1 full, 1 incremental, 0 skipped; 2 ok, 0 failed; 16.0 MiB read, 512.0 KiB stored; '
        '52.5 s',
    ]


def test_skipped_and_planned_disks(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-s'), 'snap-old', 'disk-s')
    write_point(str(root / VM / 'disk-p'), 'snap-old-p', 'disk-p')
    plan = [
        plan_vm([plan_disk(root, 'disk-s', 'skip', 'SKIPPED'), plan_disk(root, 'disk-p')]),
        plan_vm([plan_disk(root, 'disk-x', 'skip', 'SKIPPED', vm_uuid='vm-2222')], uuid='vm-2222', name='idle'),
        plan_vm([plan_disk(root, 'disk-n', 'full', 'FIRST_BACKUP', vm_uuid='vm-3333')], uuid='vm-3333', name='new'),
    ]
    # Check mode of the role: vdi_snapshot returns the disks it would snapshot, without uuids. A snapshot of a
    # skipped disk (there should be none) does not make it anything but skipped.
    snapshots = [snap(None, 'disk-p'), snap(None, 'disk-n'), snap('snap-s', 'disk-s')]
    result = build(plan, snapshots=snapshots)
    s, p, x, n = (disk_of(result, d) for d in ('disk-s', 'disk-p', 'disk-x', 'disk-n'))
    assert (s['status'], s['points_kept'], s['snapshot_uuid'], s['point']) == ('skipped', 1, None, None)
    assert (p['status'], p['points_kept'], p['snapshot_uuid'], p['point']) == ('planned', 1, None, None)
    assert (x['status'], x['points_kept']) == ('skipped', 0)  # no repository yet: nothing kept
    assert (n['status'], n['points_kept'], n['bytes_read']) == ('planned', 0, None)
    assert [vm['status'] for vm in result['vms']] == ['planned', 'skipped', 'planned']
    assert result['totals'] == {'vms': 3, 'disks': 4, 'full': 1, 'incremental': 1, 'skipped': 2, 'failed': 0,
                                'ok': 0, 'planned': 2, 'bytes_read': 0, 'bytes_stored': 0}
    assert result['failures'] == [] and result['warnings'] == []
    assert report.summary_lines(result) == [
        'demo-vm/demo-vm-disk-s (xvda 0): skip (SKIPPED) skipped  1 point',
        'demo-vm/demo-vm-disk-p (xvda 0): incremental (CHAIN_OK) planned  1 point',
        'idle/demo-vm-disk-x (xvda 0): skip (SKIPPED) skipped  0 points',
        'new/demo-vm-disk-n (xvda 0): full (FIRST_BACKUP) planned  0 points',
        'pool1: 3 VMs, 4 disks: 1 full, 1 incremental, 2 skipped; 0 ok, 0 failed, 2 planned; 0 B read, 0 B stored; '
        '52.5 s',
    ]


def test_a_snapshot_without_a_point_fails_the_disk(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a')
    plan = [plan_vm([plan_disk(root, 'disk-a'), plan_disk(root, 'disk-b', 'full', 'FIRST_BACKUP', userdevice='1')])]
    result = build(plan, snapshots=[snap('snap-a1', 'disk-a'), snap('snap-b0', 'disk-b')])
    for vdi, kept in (('disk-a', 1), ('disk-b', 0)):
        disk = disk_of(result, vdi)
        assert disk['status'] == 'failed' and disk['step'] == 'report' and disk['error'] == report.NO_POINT
        assert disk['points_kept'] == kept and disk['point'] is None and disk['bytes_read'] is None
    assert disk_of(result, 'disk-a')['snapshot_uuid'] == 'snap-a1'
    assert result['vms'][0]['status'] == 'failed' and result['totals']['failed'] == 2
    assert result['failures'] == [
        {'vm_uuid': VM, 'vdi_uuid': 'disk-a', 'step': 'report', 'msg': report.NO_POINT, 'error_code': None, 'advice': None},
        {'vm_uuid': VM, 'vdi_uuid': 'disk-b', 'step': 'report', 'msg': report.NO_POINT, 'error_code': None, 'advice': None},
    ]
    lines = report.summary_lines(result)
    assert lines[0] == 'demo-vm/demo-vm-disk-a (xvda 0): incremental (CHAIN_OK) failed at report  1 point'
    assert lines[-2:] == [
        "FAILED demo-vm/demo-vm-disk-a at report: no restore point was recorded for this run's snapshot",
        "FAILED demo-vm/demo-vm-disk-b at report: no restore point was recorded for this run's snapshot",
    ]


def test_a_disk_failure_keeps_the_point_facts_and_makes_the_vm_partial(tmp_path):
    root = tmp_path / 'repo'
    point = write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a', seconds=2.0)
    write_point(str(root / VM / 'disk-b'), 'snap-b0', 'disk-b', seconds=1.0)
    plan = [plan_vm([plan_disk(root, 'disk-a', 'full', 'FIRST_BACKUP'), plan_disk(root, 'disk-b', userdevice='1'),
                     plan_disk(root, 'disk-c', userdevice='2')])]
    failures = [
        # written, then the spot check failed: the point's facts are still reported
        {'vm_uuid': VM, 'vdi_uuid': 'disk-a', 'step': 'verify', 'msg': 'block 3 differs'},
        # a record naming the disk but not its VM is matched by the disk
        {'vdi_uuid': 'disk-c', 'step': 'export', 'msg': 'NBD connection reset\n  at offset 0'},
    ]
    result = build(plan, snapshots=[snap('snap-a0', 'disk-a'), snap('snap-b0', 'disk-b'), snap('snap-c0', 'disk-c')],
                   failures=failures)
    a, b, c = (disk_of(result, d) for d in ('disk-a', 'disk-b', 'disk-c'))
    assert (a['status'], a['step'], a['error']) == ('failed', 'verify', 'block 3 differs')
    assert a['point'] == point['id'] and a['bytes_read'] == DISK_SIZE and a['seconds'] == 2.0
    assert a['throughput_mib_s'] == 2.0 and a['points_kept'] == 1
    assert b['status'] == 'ok'
    assert (c['status'], c['step'], c['error'], c['point']) == ('failed', 'export', 'NBD connection reset\n  at offset 0',
                                                                None)
    assert result['vms'][0]['status'] == 'partial'
    assert result['totals']['failed'] == 2 and result['totals']['ok'] == 1
    assert result['totals']['bytes_read'] == 2 * DISK_SIZE  # the failed disk's point was written: it counts
    assert [f['vdi_uuid'] for f in result['failures']] == ['disk-a', 'disk-c']
    lines = report.summary_lines(result)
    assert lines[0].startswith('demo-vm/demo-vm-disk-a (xvda 0): full (FIRST_BACKUP) failed at verify  4.0 MiB read')
    assert lines[-2:] == ['FAILED demo-vm/demo-vm-disk-a at verify: block 3 differs',
                          'FAILED demo-vm/demo-vm-disk-c at export: NBD connection reset at offset 0']


def test_vm_and_pool_level_failures(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a')
    plan = [
        plan_vm([plan_disk(root, 'disk-a'), plan_disk(root, 'disk-s', 'skip', 'SKIPPED', userdevice='1')]),
        plan_vm([plan_disk(root, 'disk-o', 'skip', 'SKIPPED', vm_uuid='vm-2222')], uuid='vm-2222', name='other'),
        plan_vm([plan_disk(root, 'disk-f', 'full', 'FIRST_BACKUP', vm_uuid='vm-3333')], uuid='vm-3333', name='fine'),
    ]
    failures = [
        {'vm_uuid': VM, 'vdi_uuid': None, 'step': 'snapshot', 'msg': 'VM_BAD_POWER_STATE'},
        {'vm_uuid': 'vm-2222', 'step': 'snapshot', 'msg': 'busy'},
        {'vm_uuid': None, 'vdi_uuid': None, 'step': 'logout', 'msg': 'session expired'},
        {'vm_uuid': 'vm-9999', 'vdi_uuid': 'disk-9', 'step': 'export', 'msg': 'not in the plan'},
    ]
    write_point(str(root / 'vm-3333' / 'disk-f'), 'snap-f0', 'disk-f')
    result = build(plan, snapshots=[snap('snap-f0', 'disk-f')], failures=failures)
    a, s, o, f = (disk_of(result, d) for d in ('disk-a', 'disk-s', 'disk-o', 'disk-f'))
    assert (a['status'], a['step'], a['error'], a['points_kept']) == ('failed', 'snapshot', 'VM_BAD_POWER_STATE', 1)
    assert s['status'] == 'skipped' and s['error'] is None  # a VM-level failure does not touch skipped disks
    assert o['status'] == 'skipped' and f['status'] == 'ok'
    # The VM with only skipped disks still failed as a whole.
    assert [vm['status'] for vm in result['vms']] == ['failed', 'failed', 'ok']
    assert result['totals']['failed'] == 1 and result['totals']['skipped'] == 2
    assert len(result['failures']) == 4
    assert report.summary_lines(result)[-4:] == [
        'FAILED demo-vm at snapshot: VM_BAD_POWER_STATE',
        'FAILED other at snapshot: busy',
        'FAILED pool1 at logout: session expired',
        'FAILED vm-9999/disk-9 at export: not in the plan',
    ]


def test_warnings_are_carried_but_fail_nothing(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a')
    plan = [plan_vm([plan_disk(root, 'disk-a')])]
    warnings = [
        {'vm_uuid': VM, 'vdi_uuid': 'disk-a', 'step': 'destroy_anchor', 'msg': 'previous anchor snap-9 not destroyed'},
        {'vm_uuid': VM, 'vdi_uuid': None, 'step': 'snapshot_cleanup', 'msg': 'snapshot VM left'},
        {'step': 'logout', 'msg': 'logout timed out'},
    ]
    result = build(plan, snapshots=[snap('snap-a0', 'disk-a')], warnings=warnings)
    a = disk_of(result, 'disk-a')
    assert a['status'] == 'ok' and result['vms'][0]['status'] == 'ok' and result['failures'] == []
    assert a['warnings'] == [{'step': 'destroy_anchor', 'msg': 'previous anchor snap-9 not destroyed'}]
    assert result['vms'][0]['warnings'] == [{'step': 'snapshot_cleanup', 'msg': 'snapshot VM left'}]
    assert result['warnings'] == [
        {'vm_uuid': VM, 'vdi_uuid': 'disk-a', 'step': 'destroy_anchor', 'msg': 'previous anchor snap-9 not destroyed'},
        {'vm_uuid': VM, 'vdi_uuid': None, 'step': 'snapshot_cleanup', 'msg': 'snapshot VM left'},
        {'vm_uuid': None, 'vdi_uuid': None, 'step': 'logout', 'msg': 'logout timed out'},
    ]
    assert report.summary_lines(result)[-3:] == [
        'WARNING demo-vm/demo-vm-disk-a at destroy_anchor: previous anchor snap-9 not destroyed',
        'WARNING demo-vm at snapshot_cleanup: snapshot VM left',
        'WARNING pool1 at logout: logout timed out',
    ]


def test_points_without_seconds(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a', seconds=None)
    result = build([plan_vm([plan_disk(root, 'disk-a', 'full', 'FIRST_BACKUP')])],
                   snapshots=[snap('snap-a0', 'disk-a')])
    a = disk_of(result, 'disk-a')
    assert a['status'] == 'ok' and a['seconds'] is None and a['throughput_mib_s'] is None
    assert a['bytes_read'] == DISK_SIZE and a['bytes_stored'] == 4 * K64
    assert report.summary_lines(result)[0] == \
        'demo-vm/demo-vm-disk-a (xvda 0): full (FIRST_BACKUP) ok  4.0 MiB read, 256.0 KiB stored, 1 point'


def test_an_incremental_that_fell_back_to_a_full_says_why(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a1', 'disk-a', fallback_reason='CBT was disabled and re-enabled')
    result = build([plan_vm([plan_disk(root, 'disk-a')])], snapshots=[snap('snap-a1', 'disk-a')])
    a = disk_of(result, 'disk-a')
    assert (a['mode'], a['reason_code'], a['status'], a['point_type']) == ('full', 'CHAIN_BROKEN', 'ok', 'full')
    assert 'CBT was disabled and re-enabled' in a['reason']
    assert result['totals']['full'] == 1 and result['totals']['incremental'] == 0
    assert report.summary_lines(result)[0].startswith('demo-vm/demo-vm-disk-a (xvda 0): full (CHAIN_BROKEN) ok')


def test_a_point_merged_by_prune_right_after_its_export_reports_the_export(tmp_path):
    root = tmp_path / 'repo'
    repo_a = str(root / VM / 'disk-a')
    write_point(repo_a, 'snap-a0', 'disk-a', blocks=8)
    newest = write_point(repo_a, 'snap-a1', 'disk-a', blocks=3, bytes_read=3 * K64, seconds=0.5, seed=2)
    # the role prunes after the export: keep_last=1 merges the full into this run's incremental
    with Repository(repo_a, write=True) as repo:
        pruned = retention.prune(repo, {'keep_last': 1})
    assert list(pruned['merged']) == [newest['id']]
    with Repository(repo_a) as repo:
        merged = repo.point(newest['id'])
    assert merged['type'] == 'full' and merged['bytes'] > newest['bytes']
    assert merged['export'] == {'type': 'incremental', 'bytes': newest['bytes'], 'blocks': newest['blocks']}

    result = build([plan_vm([plan_disk(root, 'disk-a')])], snapshots=[snap('snap-a1', 'disk-a')])
    a = disk_of(result, 'disk-a')
    assert (a['status'], a['point'], a['points_kept']) == ('ok', newest['id'], 1)
    # what this run's export did, not what the merge made of the point
    assert a['point_type'] == 'incremental' and a['bytes_stored'] == newest['bytes'] == 3 * K64
    assert a['bytes_read'] == 3 * K64 and a['seconds'] == 0.5
    assert (a['mode'], a['reason_code']) == ('incremental', 'CHAIN_OK')
    assert result['totals']['bytes_stored'] == 3 * K64
    assert report.summary_lines(result)[0] == ('demo-vm/demo-vm-disk-a (xvda 0): incremental (CHAIN_OK) ok  '
                                               '192.0 KiB read, 192.0 KiB stored, 0.5 s, 0.4 MiB/s, 1 point')


def test_a_damaged_manifest(tmp_path):
    root = tmp_path / 'repo'
    for vdi in ('disk-a', 'disk-b'):
        write_point(str(root / VM / vdi), 'snap-%s' % vdi, vdi)
        with open(str(root / VM / vdi / 'manifest.json'), 'w') as handle:
            handle.write('{"format": ')
    plan = [plan_vm([plan_disk(root, 'disk-a'), plan_disk(root, 'disk-b', userdevice='1')])]
    result = build(plan, snapshots=[snap('snap-disk-a', 'disk-a')])
    a, b = disk_of(result, 'disk-a'), disk_of(result, 'disk-b')
    assert a['status'] == 'failed' and a['step'] == 'report' and 'is damaged' in a['error']
    assert a['points_kept'] is None and a['snapshot_uuid'] == 'snap-disk-a'
    assert b['status'] == 'planned' and b['points_kept'] is None
    assert len(b['warnings']) == 1 and 'is damaged' in b['warnings'][0]['msg']
    assert [w['vdi_uuid'] for w in result['warnings']] == ['disk-b']
    assert report.summary_lines(result)[1] == 'demo-vm/demo-vm-disk-b (xvdb 1): incremental (CHAIN_OK) planned'


def test_nothing_but_the_listed_fields_is_copied(tmp_path):
    root = tmp_path / 'repo'
    write_point(str(root / VM / 'disk-a'), 'snap-a0', 'disk-a')
    secret = 'hunter2-s3cr3t'
    vm = plan_vm([plan_disk(root, 'disk-a', password=secret, session_id=secret, vdi_name={'nested': secret})])
    vm['password'] = secret
    vm['name'] = ['not', 'a', 'name', secret]
    result = build([vm], snapshots=[snap('snap-a0', 'disk-a', session_id=secret, invocation={'password': secret})],
                   failures=[{'vm_uuid': VM, 'vdi_uuid': 'disk-a', 'step': 'verify', 'msg': 'bad',
                              'invocation': {'module_args': {'password': secret}}, 'session_id': secret}],
                   warnings=[{'vm_uuid': VM, 'step': 'x', 'msg': 'w', 'password': secret}])
    dumped = json.dumps(result) + '\n'.join(report.summary_lines(result))
    assert secret not in dumped
    assert disk_of(result, 'disk-a')['vdi_name'] is None and result['vms'][0]['name'] is None
    assert report.summary_lines(result)[0].startswith('vm-1111/disk-a (xvda 0): incremental (CHAIN_OK) failed')
    assert sorted(result['failures'][0]) == ['advice', 'error_code', 'msg', 'step', 'vdi_uuid', 'vm_uuid']


def test_times():
    with pytest.raises(report.ReportError, match='started must be an RFC 3339 time'):
        build([], started='yesterday')
    result = build([], started='2026-11-25T02:00:05.250000+00:00',
                   now=datetime.datetime(2026, 11, 25, 3, 0, 5, 250000, tzinfo=UTC))
    assert result['seconds'] == 3600.0 and result['started'] == STARTED
    assert result['totals']['vms'] == 0 and result['vms'] == []
    assert report.summary_lines(result) == [
        'pool1: 0 VMs, 0 disks: 0 full, 0 incremental, 0 skipped; 0 ok, 0 failed; 0 B read, 0 B stored; 3600.0 s']
    # without ``now``: the current time
    result = report.build_report([], started=datetime.datetime.now(UTC).isoformat(), pool=None)
    assert 0 <= result['seconds'] < 60 and result['pool'] is None


def test_human_bytes():
    assert [report.human_bytes(n) for n in (0, 1023, 1024, 12 * MIB, 3 * 1024 * MIB + 300 * MIB, 5 * 1024 ** 5)] == \
        ['0 B', '1023 B', '1.0 KiB', '12.0 MiB', '3.3 GiB', '5120.0 TiB']


# -- writing -----------------------------------------------------------------------------------------

def test_write_report_is_atomic_with_modes(tmp_path):
    result = build([])
    dest = tmp_path / 'reports' / 'deeper' / 'pool1-20261125T020005Z.json'
    old_umask = os.umask(0o022)
    try:
        path = report.write_report(result, str(dest))
    finally:
        os.umask(old_umask)
    assert path == str(dest)
    with open(path) as handle:
        text = handle.read()
    assert text == json.dumps(result, indent=2, sort_keys=True) + '\n' and json.loads(text) == result
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(str(dest.parent)).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(str(dest.parent.parent)).st_mode) == 0o750
    assert os.listdir(str(dest.parent)) == [dest.name]  # no temporary file left

    # Replacing an existing report (its mode too), in an existing directory whose mode is left alone.
    os.chmod(path, 0o666)
    os.chmod(str(dest.parent), 0o700)
    second = build([], pool='pool2')
    report.write_report(second, path)
    with open(path) as handle:
        assert json.load(handle)['pool'] == 'pool2'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(str(dest.parent)).st_mode) == 0o700
    assert os.listdir(str(dest.parent)) == [dest.name]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / 'reports' / 'taken.json'
    target.mkdir(parents=True)  # a directory where the file should go: the rename fails
    with pytest.raises(report.ReportError) as info:
        report.write_report(build([]), str(target))
    assert info.value.code == 'REPORT_WRITE_FAILED' and str(target) in str(info.value)
    assert os.listdir(str(target.parent)) == ['taken.json'] and os.path.isdir(str(target))


def test_a_full_disk_keeps_the_previous_report_whole(small_tmpfs):
    mount_point = small_tmpfs(256)
    target = os.path.join(mount_point, 'report.json')
    report.write_report(build([]), target)
    with open(target, 'rb') as handle:
        previous = handle.read()
    full_disk.fill(mount_point, 0)
    big = dict(build([]), padding='x' * 512 * 1024)  # more than the whole file system
    with pytest.raises(report.ReportError) as info:
        report.write_report(big, target)
    assert info.value.code == 'NO_SPACE'
    with open(target, 'rb') as handle:
        assert handle.read() == previous
    assert sorted(os.listdir(os.path.dirname(target))) == ['filler', 'report.json']


# -- with the real export ----------------------------------------------------------------------------

@pytest.mark.interop
def test_points_written_by_the_real_export(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 2 * MIB + 512, pattern='DDZD0', seed=7)
    server = nbd_server_factory('nbdkit-tls', image.path)
    repo_dir = str(tmp_path / 'repo' / VM / 'disk-a')
    target = _export.make_target(server.nbd_info(), tls=True, timeout=10)
    exported = backup.export_to_repository(target, repo_dir, snapshot={'uuid': 'snap-a0', 'snapshot_of': 'disk-a'})
    point = exported['point']
    result = build([plan_vm([plan_disk(tmp_path / 'repo', 'disk-a', 'full', 'FIRST_BACKUP')])],
                   snapshots=[snap('snap-a0', 'disk-a')])
    a = disk_of(result, 'disk-a')
    assert a['status'] == 'ok' and a['point'] == point['id'] and a['point_type'] == 'full'
    assert a['bytes_read'] == point['bytes_read'] == exported['bytes_read']
    assert a['bytes_stored'] == point['bytes'] and a['points_kept'] == 1
    # ``seconds`` is recorded by exports of this version; the report copies whatever the manifest holds.
    assert a['seconds'] == point.get('seconds')
    assert (a['throughput_mib_s'] is None) == (not point.get('seconds'))
