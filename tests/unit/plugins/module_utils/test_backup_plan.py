# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_plan's decisions against the lab, over real HTTPS XML-RPC through the XenAPI package.

Repositories are real: restore points exported over NBD from the lab's snapshots into qcow2 files (or, for
a disk size the lab cannot produce, written with the real qcow2 writer), then damaged the way a user or a
crash would damage them.
"""

from __future__ import absolute_import, division, print_function

import datetime
import json
import os
import shutil

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _time
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import (
    plan as _backup_plan,
    export as _export,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import (
    nbd_access as _nbd_access,
    network as _network_ops,
    snapshot as _snapshot_ops,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import model as _objects, client as _xenapi
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, retention, store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Writer
from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import xenlab

__metaclass__ = type

K64 = 64 * 1024


@pytest.fixture
def client(client):  # the conftest's client, with an NBD network
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    return client


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / 'backups')


class Demo:
    """demo-vm and its two disks, with shortcuts for a backup run's steps."""

    def __init__(self, lab, client, root):
        self.lab = lab
        self.client = client
        self.root = root
        self.vm_ref, self.vm = _objects.find_vm(client, 'demo-vm')
        disks = _objects.vm_disks(client, self.vm_ref, self.vm)
        self.refs = [ref for ref, dummy, dummy2 in disks]
        self.uuids = [record['uuid'] for dummy, record, dummy2 in disks]

    def repo(self, n):
        return os.path.join(self.root, self.vm['uuid'], self.uuids[n])

    def cbt(self, n, enabled):
        self.client.call('VDI.enable_cbt' if enabled else 'VDI.disable_cbt', self.refs[n])

    def snapshot(self):
        """Snapshot the VM (both disks); the snapshots' uuids in disk order."""
        return [s['uuid'] for s in _snapshot_ops.snapshot_vm(self.client, 'demo-vm')['snapshots']]

    def snap(self, n):
        """Snapshot disk n alone (quicker in the lab); the snapshot's uuid."""
        return _snapshot_ops.snapshot_vdi(self.client, self.uuids[n])['snapshots'][0]['uuid']

    def export(self, n, snap_uuid, base=None, metadata_only=True):
        """Back up the snapshot into disk n's repository over NBD, as vdi_export does; returns the point."""
        snap_ref, snap = _objects.find_vdi(self.client, snap_uuid, snapshot=True)
        changed = None
        if base:
            changed = self.client.call('VDI.list_changed_blocks', self.client.call('VDI.get_by_uuid', base), snap_ref)
        info = _nbd_access.in_order(_nbd_access.require_nbd_info(self.client, snap_ref, snap))[0]
        target = _export.make_target(info, tls=True, timeout=10)
        snapshot = {'uuid': snap_uuid, 'snapshot_of': self.uuids[n], 'name': snap['name_label'], 'time': '20261125T02:00:00Z'}
        result = backup.export_to_repository(target, self.repo(n), changed_blocks=changed, snapshot=snapshot,
                                             base_uuid=base, connections=1)
        if metadata_only:
            _snapshot_ops.data_destroy(self.client, snap_uuid, retries=20, delay=0.1)
        return result['point']

    def plan(self, **kwargs):
        kwargs.setdefault('vms', ['demo-vm'])
        return _backup_plan.plan(self.client, self.root, **kwargs)

    def disks(self, **kwargs):
        return self.plan(**kwargs)['vms'][0]['disks']


@pytest.fixture
def demo(lab, client, root):
    return Demo(lab, client, root)


def edit_manifest(repo_dir, change):
    path = os.path.join(repo_dir, 'manifest.json')
    with open(path) as handle:
        manifest = json.load(handle)
    change(manifest)
    with open(path, 'w') as handle:
        json.dump(manifest, handle)


def decision(disk):
    return disk['mode'], disk['reason_code']


# ----- a chain: first backup, incrementals ----------------------------------------------------------------

def test_first_backup_then_incremental(demo):
    demo.cbt(0, True)
    demo.cbt(1, True)
    plan = demo.plan()
    assert plan['changed'] is False and plan['warnings'] == []
    assert plan['summary'] == {'vms': 1, 'disks': 2, 'full': 2, 'incremental': 0, 'skip': 0, 'leftover_snapshots': 0}
    vm = plan['vms'][0]
    assert (vm['uuid'], vm['name'], vm['power_state'], vm['tags']) == (demo.vm['uuid'], 'demo-vm', 'Running', [])
    first = vm['disks']
    assert [d['vdi_name'] for d in first] == ['demo-vm-disk0', 'demo-vm-disk1']  # the CD drive is no user disk
    assert [d['userdevice'] for d in first] == ['0', '1']
    for n, disk in enumerate(first):
        assert decision(disk) == ('full', 'FIRST_BACKUP')
        assert 'no restore point yet' in disk['reason'] and disk['vdi_uuid'] in disk['reason']
        assert disk['repository'] == demo.repo(n) and os.path.isabs(disk['repository'])
        assert disk['vdi_uuid'] == demo.uuids[n]
        assert disk['sr_name'] == 'Local storage' and disk['sr_uuid']
        assert disk['cbt_enabled'] is True and disk['cbt_supported'] is True
        assert disk['base'] is None and disk['previous_anchor'] is None
        assert (disk['points'], disk['incrementals_since_full'], disk['last_full_time']) == (0, 0, None)
        assert disk['leftover_snapshots'] == []
    assert first[0]['virtual_size'] == 8 * 1024 * 1024 and first[1]['virtual_size'] == 2 * 1024 * 1024
    assert not os.path.exists(demo.root)  # nothing created

    snaps = demo.snapshot()
    points = [demo.export(n, snaps[n]) for n in (0, 1)]
    second = demo.disks()
    for n, disk in enumerate(second):
        assert decision(disk) == ('incremental', 'CHAIN_OK')
        assert disk['base'] == snaps[n] and disk['previous_anchor'] == snaps[n]
        assert (disk['points'], disk['incrementals_since_full']) == (1, 0)
        assert disk['last_full_time'] == points[n]['time']
        assert snaps[n] in disk['reason'] and 'incremental' in disk['reason']

    demo.lab.write(demo.uuids[0], 0, K64, seed=5)
    snaps2 = demo.snapshot()
    demo.export(0, snaps2[0], base=snaps[0])
    third = demo.plan()
    disk0 = third['vms'][0]['disks'][0]
    assert decision(disk0) == ('incremental', 'CHAIN_OK')
    assert disk0['base'] == snaps2[0] and disk0['previous_anchor'] == snaps2[0]
    assert (disk0['points'], disk0['incrementals_since_full'], disk0['last_full_time']) == (2, 1, points[0]['time'])
    assert third['summary'] == {'vms': 1, 'disks': 2, 'full': 0, 'incremental': 2, 'skip': 0, 'leftover_snapshots': 1}
    # disk1's snapshot of the second run was neither exported nor reduced: a leftover, as after an interrupted run
    assert disk0['leftover_snapshots'] == []
    assert [s['uuid'] for s in third['vms'][0]['disks'][1]['leftover_snapshots']] == [snaps2[1]]


def test_the_plan_takes_no_lock(demo):
    demo.cbt(1, True)
    snap = demo.snap(1)
    demo.export(1, snap)
    with store.Repository(demo.repo(1), write=True):  # a backup run is writing the repository
        assert decision(demo.disks()[1]) == ('incremental', 'CHAIN_OK')


# ----- skip and CBT support --------------------------------------------------------------------------------

def test_skip_disks_by_name_or_uuid_and_unknown_entries_warn(demo):
    plan = demo.plan(skip_disks=['demo-vm-disk1', demo.uuids[0].upper(), 'no-such-disk'])
    assert [decision(d) for d in plan['vms'][0]['disks']] == [('skip', 'SKIPPED')] * 2
    assert 'skip_disks' in plan['vms'][0]['disks'][0]['reason']
    assert plan['summary']['skip'] == 2 and plan['summary']['full'] == 0
    assert plan['warnings'] == ['skip_disks names no disk of the selected VMs: no-such-disk']


def test_a_disk_on_a_storage_repository_without_cbt(demo):
    # A disk of the ISO library (no vdi_enable_cbt) plugged into the VM as a disk, not as a CD.
    iso_ref, iso = _objects.find_vdi(demo.client, 'lab-tools.iso')
    demo.client.call('VBD.create', {'VM': demo.vm_ref, 'VDI': iso_ref, 'userdevice': '2', 'bootable': False,
                                    'mode': 'RO', 'type': 'Disk', 'empty': False, 'other_config': {},
                                    'qos_algorithm_type': '', 'qos_algorithm_params': {}})
    disks = demo.disks()
    assert [d['vdi_name'] for d in disks] == ['demo-vm-disk0', 'demo-vm-disk1', 'lab-tools.iso']
    iso_disk = disks[2]
    assert decision(iso_disk) == ('full', 'CBT_UNSUPPORTED')
    assert iso_disk['cbt_supported'] is False and iso_disk['sr_name'] == 'ISO library'
    assert 'vdi_enable_cbt' in iso_disk['reason'] and 'every backup' in iso_disk['reason']
    # CBT_UNSUPPORTED comes before everything the repository says, even a damaged manifest
    os.makedirs(iso_disk['repository'])
    with open(os.path.join(iso_disk['repository'], 'manifest.json'), 'w') as handle:
        handle.write('{not json')
    assert decision(demo.disks()[2]) == ('full', 'CBT_UNSUPPORTED')
    # and skip_disks comes before CBT support
    assert decision(demo.disks(skip_disks=['lab-tools.iso'])[2]) == ('skip', 'SKIPPED')


# ----- the repository ---------------------------------------------------------------------------------------

def test_a_repository_that_cannot_be_read(demo):
    demo.cbt(0, True)
    repo = demo.repo(0)
    demo.export(0, demo.snap(0))
    path = os.path.join(repo, 'manifest.json')
    with open(path) as handle:
        good = handle.read()
    damages = [
        ('{"format": "xenserver.cbt_backup repository", "points": [', 'damaged'),
        (good.replace('xenserver.cbt_backup repository', 'something else'), "format: 'something else'"),
        (json.dumps(dict(json.loads(good), points={'not': 'a list'})), 'points: an object, expected a list'),
        (json.dumps(dict(json.loads(good), points=[{'id': 'x'}])), 'points[0].file: missing'),
        ('[]', 'the top level is a list'),
        ('null', 'the top level is null'),
    ]
    for text, words in damages:
        with open(path, 'w') as handle:
            handle.write(text)
        disk = demo.disks()[0]
        assert decision(disk) == ('full', 'REPOSITORY_DAMAGED'), words
        assert words in disk['reason'] and repo in disk['reason']
        assert 'repaired' in disk['reason']
        assert disk['points'] == 0 and disk['previous_anchor'] is None and disk['base'] is None
    shutil.rmtree(repo)
    with open(repo, 'w') as handle:
        handle.write('a file where the repository belongs')
    disk = demo.disks()[0]
    assert decision(disk) == ('full', 'REPOSITORY_DAMAGED')
    assert 'exists but is not a directory' in disk['reason']


def test_an_empty_repository_is_a_first_backup(demo):
    os.makedirs(demo.repo(0))
    assert decision(demo.disks()[0]) == ('full', 'FIRST_BACKUP')


def test_a_repository_of_another_disk(demo):
    demo.cbt(1, True)
    snap = demo.snap(1)
    demo.export(1, snap)
    shutil.copytree(demo.repo(1), demo.repo(0))  # disk1's repository where disk0's belongs
    demo.cbt(0, True)
    disk0 = demo.disks()[0]
    assert decision(disk0) == ('full', 'MANIFEST_MISMATCH')
    assert 'records the disk %s' % demo.uuids[1] in disk0['reason']
    assert disk0['previous_anchor'] is None  # disk1's snapshot is never offered for destruction as disk0's


def test_the_newest_point_does_not_match_the_manifest(demo):
    demo.cbt(0, True)
    snaps = [demo.snap(0)]
    demo.export(0, snaps[0])
    demo.lab.write(demo.uuids[0], K64, K64, seed=7)
    snaps.append(demo.snap(0))
    point = demo.export(0, snaps[1], base=snaps[0])
    path = os.path.join(demo.repo(0), point['file'])
    manifest_path = os.path.join(demo.repo(0), 'manifest.json')
    saved = str(demo.repo(0)) + '.saved'
    shutil.copytree(demo.repo(0), saved)
    assert decision(demo.disks()[0]) == ('incremental', 'CHAIN_OK')

    def grow():
        with open(path, 'ab') as handle:
            handle.write(b'\0' * 512)

    for damage, words in [
        (lambda: os.unlink(path), 'is missing'),
        (grow, 'has %d bytes, but the manifest records %d' % (point['file_size'] + 512, point['file_size'])),
        (lambda: edit_manifest(demo.repo(0), lambda m: m.update(cbt_anchor=snaps[0])), 'contradicts itself'),
    ]:
        damage()
        disk = demo.disks()[0]
        assert decision(disk) == ('full', 'MANIFEST_MISMATCH'), words
        assert words in disk['reason'] and point['id'] in disk['reason']
        shutil.copy(os.path.join(saved, point['file']), path)
        shutil.copy(os.path.join(saved, 'manifest.json'), manifest_path)


def test_a_prune_interrupted_after_replacing_the_newest_file_is_no_mismatch(demo):
    demo.cbt(0, True)
    point = demo.export(0, demo.snap(0))
    path = os.path.join(demo.repo(0), point['file'])
    with open(path, 'ab') as handle:
        handle.write(b'\0' * 512)
    # the journal of backup_prune names the new size: the next export finishes the merge
    journal = {'point': point['id'], 'file_size': os.path.getsize(path), 'sha256': 'f' * 64, 'blocks': 1, 'bytes': 1,
               'blocks_digest': 'f' * 64}
    edit_manifest(demo.repo(0), lambda m: m.update(pending_merge=journal))
    assert decision(demo.disks()[0]) == ('incremental', 'CHAIN_OK')


# ----- CBT on the disk and the anchor -----------------------------------------------------------------------

def test_cbt_disabled_on_the_disk(demo):
    demo.cbt(0, True)
    snap = demo.snap(0)
    demo.export(0, snap)
    demo.cbt(0, False)
    disk = demo.disks()[0]
    assert decision(disk) == ('full', 'CBT_DISABLED')
    assert disk['cbt_enabled'] is False and 'CBT is enabled before the snapshot' in disk['reason']
    # the anchor still exists and belongs to the disk: the role may destroy it after the full backup
    assert disk['previous_anchor'] == snap and disk['base'] is None
    # without a repository the first backup comes first
    assert decision(demo.disks()[1]) == ('full', 'FIRST_BACKUP')


def test_cbt_disabled_on_a_reset_disk_says_what_to_do(lab, client, root):
    vm_ref, vm = _objects.find_vm(client, 'other-vm')
    ref, record, dummy = _objects.vm_disks(client, vm_ref, vm)[0]
    repo = os.path.join(root, vm['uuid'], record['uuid'])
    # a point written with the real qcow2 writer (the lab cannot snapshot an on_boot=reset disk)
    write_point(repo, record, None, int(record['virtual_size']))
    plan = _backup_plan.plan(client, root, vms=['other-vm'])
    disk = plan['vms'][0]['disks'][0]
    assert decision(disk) == ('full', 'CBT_DISABLED')
    assert 'on_boot=reset' in disk['reason'] and 'skip_disks' in disk['reason']


def test_the_anchor_was_destroyed(demo):
    demo.cbt(0, True)
    snap = demo.snap(0)
    demo.export(0, snap)
    _snapshot_ops.destroy(demo.client, snap)
    disk = demo.disks()[0]
    assert decision(disk) == ('full', 'ANCHOR_MISSING')
    assert snap in disk['reason'] and 'no longer exists' in disk['reason']
    assert disk['previous_anchor'] is None and disk['base'] is None


def test_an_anchor_of_another_disk_or_a_live_disk(demo):
    demo.cbt(0, True)
    demo.cbt(1, True)
    snaps = demo.snapshot()
    demo.export(0, snaps[0])
    demo.export(1, snaps[1])

    def point_at(anchor):
        def change(manifest):
            manifest['cbt_anchor'] = anchor
            manifest['points'][-1]['snapshot_uuid'] = anchor
        edit_manifest(demo.repo(0), change)

    point_at(snaps[1])
    disk = demo.disks()[0]
    assert decision(disk) == ('full', 'ANCHOR_MISMATCH')
    assert 'a snapshot of another disk' in disk['reason']
    assert disk['previous_anchor'] is None  # never offer another disk's snapshot for destruction

    point_at(demo.uuids[1])  # a live disk
    disk = demo.disks()[0]
    assert decision(disk) == ('full', 'ANCHOR_MISMATCH')
    assert 'not a snapshot' in disk['reason']
    assert disk['previous_anchor'] is None  # and never a live disk


def test_an_anchor_taken_without_cbt(demo):
    snap = demo.snap(0)  # CBT is off: the snapshot has no CBT metadata
    demo.export(0, snap, metadata_only=False)
    demo.cbt(0, True)
    disk = demo.disks()[0]
    assert decision(disk) == ('full', 'ANCHOR_NO_CBT')
    assert 'carries no CBT metadata' in disk['reason']
    assert disk['previous_anchor'] == snap


def write_point(repo, disk_record, snapshot_uuid, virtual_size):
    """A full point of ``virtual_size`` bytes written with the real qcow2 writer and recorded in the manifest."""
    with store.Repository(repo, write=True, create=True) as opened:
        when = _time.utc_now()
        ident, out = opened.new_point_file('full', when)
        writer = Qcow2Writer(out.fd, virtual_size)
        writer(0, memoryview(b'\x5a' * K64))
        written = writer.finish()
        out.commit()
        opened.add_point({'id': ident, 'time': when.isoformat(), 'type': 'full', 'file': ident + '.qcow2',
                          'parent': None, 'snapshot_uuid': snapshot_uuid, 'virtual_size': virtual_size,
                          'blocks': written.clusters_stored, 'bytes': written.bytes_stored,
                          'blocks_digest': written.digest, 'bytes_read': K64, 'seconds': 0.1},
                         disk={'vdi_uuid': disk_record['uuid'], 'name': disk_record['name_label'],
                               'virtual_size': virtual_size})


def test_a_resized_disk(demo):
    demo.cbt(1, True)
    snap = demo.snap(1)
    _snapshot_ops.data_destroy(demo.client, snap)
    record = demo.client.call('VDI.get_record', demo.refs[1])
    # the lab cannot resize a disk: the newest point is of a smaller disk than the live one
    write_point(demo.repo(1), record, snap, 1024 * 1024)
    disk = demo.disks()[1]
    assert decision(disk) == ('full', 'SIZE_CHANGED')
    assert '2097152 bytes now but 1048576 bytes' in disk['reason']
    assert disk['previous_anchor'] == snap


# ----- snapshots that interrupted runs left behind ----------------------------------------------------------

def marked_time(client, uuid):
    return client.call('VDI.get_other_config', client.call('VDI.get_by_uuid', uuid))[_snapshot_ops.SNAPSHOT_MARKER]


def snapshot_time(client, uuid):
    return _snapshot_ops.xenapi_time(client.call('VDI.get_snapshot_time', client.call('VDI.get_by_uuid', uuid)))


def test_leftover_snapshots(demo):
    """Listed: vdi_snapshot's (marked) snapshots that still hold data. Not listed: the repository's anchor (here
    with its data), CBT metadata, and snapshots someone else took with plain XenAPI (no marker)."""
    demo.cbt(0, True)
    demo.cbt(1, True)
    snaps = demo.snapshot()
    demo.export(0, snaps[0], metadata_only=False)  # the anchor keeps its data
    demo.export(1, snaps[1])  # reduced to CBT metadata, the anchor of disk1
    reduced = demo.snap(1)  # marked, and reduced to CBT metadata, but no anchor
    _snapshot_ops.data_destroy(demo.client, reduced)
    session = demo.lab.session()
    try:
        api = session.xenapi
        plain = [api.VDI.get_uuid(api.VDI.snapshot(api.VDI.get_by_uuid(uuid), {})) for uuid in demo.uuids]
    finally:
        session.xenapi.session.logout()
    for uuid in snaps + [reduced]:
        assert marked_time(demo.client, uuid)
    plan = demo.plan()
    assert [d['leftover_snapshots'] for d in plan['vms'][0]['disks']] == [[], []]
    assert plan['summary']['leftover_snapshots'] == 0

    interrupted = demo.snapshot()  # a run that stopped after its snapshot, before its cleanup
    plan = demo.plan()
    disks = plan['vms'][0]['disks']
    for n, disk in enumerate(disks):
        assert disk['leftover_snapshots'] == [
            {'uuid': interrupted[n], 'time': snapshot_time(demo.client, interrupted[n]), 'type': 'user'}]
        assert decision(disk) == ('incremental', 'CHAIN_OK')  # the plan itself does not change
    assert plan['summary']['leftover_snapshots'] == 2
    # listed for a skipped disk too
    assert demo.disks(skip_disks=['demo-vm-disk1'])[1]['leftover_snapshots'] == disks[1]['leftover_snapshots']

    # once disk0's repository is gone, its former anchor is a leftover like any marked snapshot with data
    shutil.rmtree(demo.repo(0))
    disk0 = demo.disks()[0]
    assert decision(disk0) == ('full', 'FIRST_BACKUP')
    assert sorted(s['uuid'] for s in disk0['leftover_snapshots']) == sorted([snaps[0], interrupted[0]])

    # the next run destroys them (vdi_snapshot state=absent); what others made stays
    for disk in demo.plan()['vms'][0]['disks']:
        for leftover in disk['leftover_snapshots']:
            assert _snapshot_ops.destroy(demo.client, leftover['uuid'])['changed'] is True
    plan = demo.plan()
    assert plan['summary']['leftover_snapshots'] == 0
    for uuid in plain + [snaps[1], reduced]:
        assert demo.client.call('VDI.get_by_uuid', uuid)


def test_a_leftover_snapshot_reports_its_snapshot_time_not_the_marker_value(demo):
    snap = demo.snap(0)
    ref = demo.client.call('VDI.get_by_uuid', snap)
    demo.client.call('VDI.remove_from_other_config', ref, _snapshot_ops.SNAPSHOT_MARKER)
    demo.client.call('VDI.add_to_other_config', ref, _snapshot_ops.SNAPSHOT_MARKER, '2020-01-01T00:00:00Z')
    leftovers = demo.disks()[0]['leftover_snapshots']
    assert leftovers == [{'uuid': snap, 'time': snapshot_time(demo.client, snap), 'type': 'user'}]
    assert leftovers[0]['time'] != '2020-01-01T00:00:00Z'


# ----- full_every --------------------------------------------------------------------------------------------

@pytest.fixture
def chain(demo):
    """disk0's repository: a full and two incrementals, anchored on a cbt_metadata snapshot."""
    demo.cbt(0, True)
    snaps = [demo.snap(0)]
    points = [demo.export(0, snaps[0])]
    for n in (1, 2):
        demo.lab.write(demo.uuids[0], n * K64, K64, seed=n)
        snaps.append(demo.snap(0))
        points.append(demo.export(0, snaps[-1], base=snaps[-2]))
    return demo, snaps, points


def test_full_every_incrementals(chain):
    demo, snaps, points = chain
    disk = demo.disks(full_every={'incrementals': 2})[0]
    assert decision(disk) == ('full', 'FULL_EVERY_INCREMENTALS')
    assert '2 incremental backup(s)' in disk['reason'] and 'full_every.incrementals is 2' in disk['reason']
    assert disk['previous_anchor'] == snaps[-1] and disk['base'] is None
    assert (disk['points'], disk['incrementals_since_full'], disk['last_full_time']) == (3, 2, points[0]['time'])
    assert decision(demo.disks(full_every={'incrementals': 3})[0]) == ('incremental', 'CHAIN_OK')
    assert decision(demo.disks(full_every={'incrementals': 0})[0]) == ('full', 'FULL_EVERY_INCREMENTALS')
    assert decision(demo.disks(full_every={'incrementals': None, 'days': None})[0]) == ('incremental', 'CHAIN_OK')


def test_full_every_days(chain):
    demo, snaps, points = chain
    full_time = datetime.datetime.fromisoformat(points[0]['time'])
    late = demo.disks(full_every={'days': 7}, now=full_time + datetime.timedelta(days=7))[0]
    assert decision(late) == ('full', 'FULL_EVERY_DAYS')
    assert '7.0 days old' in late['reason'] and 'full_every.days is 7' in late['reason']
    # a schedule that starts a little earlier than a week ago still takes its weekly full
    early = demo.disks(full_every={'days': 7}, now=full_time + datetime.timedelta(days=7, minutes=-30))[0]
    assert decision(early) == ('full', 'FULL_EVERY_DAYS')
    fresh = demo.disks(full_every={'days': 7, 'incrementals': 5}, now=full_time + datetime.timedelta(days=6))[0]
    assert decision(fresh) == ('incremental', 'CHAIN_OK')
    # incrementals are looked at first
    both = demo.disks(full_every={'days': 7, 'incrementals': 1}, now=full_time + datetime.timedelta(days=8))[0]
    assert decision(both) == ('full', 'FULL_EVERY_INCREMENTALS')


def test_a_point_merged_by_prune_is_not_a_taken_full(chain):
    demo, snaps, points = chain
    with store.Repository(demo.repo(0), write=True) as repo:
        result = retention.prune(repo, {'keep_last': 2})
    assert list(result['merged']) == [points[1]['id']]
    assert result['merged'][points[1]['id']]['merged'] == [points[0]['id']]
    disk = demo.disks()[0]
    assert decision(disk) == ('incremental', 'CHAIN_OK')
    # no point was taken as a full any more: every point after the oldest counts, the oldest gives the age
    assert (disk['points'], disk['incrementals_since_full'], disk['last_full_time']) == (2, 1, None)
    assert decision(demo.disks(full_every={'incrementals': 1})[0]) == ('full', 'FULL_EVERY_INCREMENTALS')
    merged_time = datetime.datetime.fromisoformat(points[1]['time'])
    aged = demo.disks(full_every={'days': 3}, now=merged_time + datetime.timedelta(days=3))[0]
    assert decision(aged) == ('full', 'FULL_EVERY_DAYS')
    assert 'oldest restore point (no full backup is kept) %s' % points[1]['id'] in aged['reason']


def test_chain_facts():
    taken = {'id': 'a', 'type': 'full'}
    merged = {'id': 'b', 'type': 'full', 'merged': ['x']}
    incr = {'id': 'c', 'type': 'incremental'}
    assert _backup_plan.chain_facts([]) == (0, None, None)
    assert _backup_plan.chain_facts([taken, incr, incr]) == (2, taken, taken)
    assert _backup_plan.chain_facts([merged, incr, incr]) == (2, None, merged)
    assert _backup_plan.chain_facts([taken, incr, taken, incr]) == (1, taken, taken)


# ----- selecting VMs -----------------------------------------------------------------------------------------

def test_vms_by_name_uuid_and_tags(lab, client, root):
    demo_ref, demo_vm = _objects.find_vm(client, 'demo-vm')
    other_ref, other_vm = _objects.find_vm(client, 'other-vm')
    client.call('VM.add_tags', demo_ref, 'backup')
    client.call('VM.add_tags', other_ref, 'nightly')
    dom0 = [ref for ref, rec in client.call('VM.get_all_records').items() if rec['is_control_domain']][0]
    client.call('VM.add_tags', dom0, 'backup')
    # a snapshot VM carries the tags of its VM; it is no VM to back up
    snap_vm = client.call('VM.snapshot', demo_ref, 'a snapshot VM')
    assert 'backup' in client.call('VM.get_tags', snap_vm)

    plan = _backup_plan.plan(client, root, tags=['nightly', 'backup'])
    assert [vm['name'] for vm in plan['vms']] == ['demo-vm', 'other-vm']  # sorted by name
    assert plan['vms'][0]['tags'] == ['backup'] and plan['vms'][1]['tags'] == ['nightly']
    # the snapshot VM's disk snapshots were made with plain XenAPI: no leftovers of a backup run
    assert plan['summary'] == {'vms': 2, 'disks': 3, 'full': 3, 'incremental': 0, 'skip': 0, 'leftover_snapshots': 0}
    # other-vm's disk: CBT off, no repository yet
    assert decision(plan['vms'][1]['disks'][0]) == ('full', 'FIRST_BACKUP')

    plan = _backup_plan.plan(client, root, vms=[other_vm['uuid'], 'demo-vm'], tags=['backup'])
    assert [vm['uuid'] for vm in plan['vms']] == [other_vm['uuid'], demo_vm['uuid']]  # vms as given, once each

    with pytest.raises(_xenapi.XenApiError) as caught:
        _backup_plan.plan(client, root, tags=['no-such-tag'])
    assert caught.value.code == 'NO_VM_SELECTED' and 'no-such-tag' in caught.value.message
    with pytest.raises(_xenapi.XenApiError) as caught:
        _backup_plan.plan(client, root)
    assert caught.value.code == 'NO_VM_SELECTED'
    assert plan['unresolved'] == [] and plan['warnings'] == []


def test_unresolved_vms_are_left_out_and_the_others_planned(lab, client, root):
    demo_ref, demo_vm = _objects.find_vm(client, 'demo-vm')
    other_ref, other_vm = _objects.find_vm(client, 'other-vm')
    client.call('VM.snapshot', demo_ref, 'a snapshot VM')
    client.call('VM.add_tags', other_ref, 'nightly')
    missing_uuid = '00000000-0000-4000-8000-0000000000ff'

    plan = _backup_plan.plan(client, root, vms=['no-such-vm', 'demo-vm', 'a snapshot VM', missing_uuid, 'no-such-vm'])
    assert [vm['name'] for vm in plan['vms']] == ['demo-vm']
    assert plan['summary'] == {'vms': 1, 'disks': 2, 'full': 2, 'incremental': 0, 'skip': 0, 'leftover_snapshots': 0}
    # each unresolved name once, in the order of vms; a snapshot VM is no VM here
    assert plan['unresolved'] == [
        {'name': 'no-such-vm', 'error_code': 'NOT_FOUND', 'msg': 'no VM has the uuid or name "no-such-vm"'},
        {'name': 'a snapshot VM', 'error_code': 'NOT_FOUND', 'msg': 'no VM has the uuid or name "a snapshot VM"'},
        {'name': missing_uuid, 'error_code': 'NOT_FOUND', 'msg': 'no VM has the uuid or name "%s"' % missing_uuid},
    ]
    assert plan['warnings'] == ['the VM "%s" of vms is left out of this run: %s' % (entry['name'], entry['msg'])
                                for entry in plan['unresolved']]

    # two VMs share a name: that name is ambiguous, the VMs are still planned by uuid or tag
    client.call('VM.set_name_label', other_ref, 'demo-vm')
    plan = _backup_plan.plan(client, root, vms=['demo-vm', demo_vm['uuid']], tags=['nightly'],
                             skip_disks=['no-such-disk'])
    assert [vm['uuid'] for vm in plan['vms']] == [demo_vm['uuid'], other_vm['uuid']]
    assert [entry['name'] for entry in plan['unresolved']] == ['demo-vm']
    ambiguous = plan['unresolved'][0]
    assert ambiguous['error_code'] == 'AMBIGUOUS'
    assert 'ambiguous' in ambiguous['msg'] and demo_vm['uuid'] in ambiguous['msg'] and other_vm['uuid'] in ambiguous['msg']
    assert plan['warnings'] == ['the VM "demo-vm" of vms is left out of this run: %s' % ambiguous['msg'],
                                'skip_disks names no disk of the selected VMs: no-such-disk']

    # nothing selected at all: the failure names what could not be resolved
    with pytest.raises(_xenapi.XenApiError) as caught:
        _backup_plan.plan(client, root, vms=['demo-vm', 'no-such-vm'])
    message = caught.value.message
    assert caught.value.code == 'NO_VM_SELECTED'
    assert 'AMBIGUOUS: the name "demo-vm" is ambiguous' in message
    assert 'NOT_FOUND: no VM has the uuid or name "no-such-vm"' in message
    with pytest.raises(_xenapi.XenApiError) as caught:
        _backup_plan.plan(client, root, vms=['no-such-vm'], tags=['no-such-tag'])
    message = caught.value.message
    assert caught.value.code == 'NO_VM_SELECTED'
    assert '"no-such-vm"' in message and 'no VM carries any of the tags no-such-tag' in message
    assert not os.path.exists(root)


def test_other_errors_of_a_vm_lookup_still_fail(lab, client, root):
    xenlab('stop', '--dir', lab.dir)  # the host is gone: that is no unresolved name, the plan fails
    with pytest.raises(_xenapi.XenApiError) as caught:
        _backup_plan.plan(client, root, vms=['demo-vm', 'no-such-vm'])
    assert caught.value.code == 'CONNECTION_FAILED' and 'cannot reach the XenAPI' in caught.value.message


def test_bad_full_every(lab, client, root):
    with pytest.raises(_xenapi.XenApiError) as caught:
        _backup_plan.plan(client, root, vms=['demo-vm'], full_every={'days': -1})
    assert 'full_every.days' in caught.value.message
