# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vm_restore against the lab: demo-vm (two disks, a CD drive, two interfaces, non-default settings) backed up with its
configuration, then restored as a new VM on another network. The new VM's record matches the saved configuration
field by field (except uuids, name and, unless kept, MACs), its disks equal the source disks byte for byte, check mode
creates nothing, and a restore that fails halfway leaves nothing behind."""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import shutil
import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_restore as _vm_restore
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import vm_configs as _vm_configs
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vm_config as _vm_config
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import client as _xenapi
from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import start_lab, xenlab
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import lab_connection, run_module

__metaclass__ = type

pytestmark = pytest.mark.timeout(600)
RUN = '2026-11-25T02:00:00Z'


def back_up(lab, client, root, tmp_path, run=RUN):
    """One backup run of demo-vm: its snapshot with the configuration, its disks exported with the same run."""
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    snap, dummy = run_module('vdi_snapshot', dict(lab_connection(lab), vm='demo-vm', repository_root=str(root), run=run),
                             tmp_path)
    assert not snap['failed'] and snap['vm_config'], snap.get('msg')
    exports = [{'snapshot': s['uuid'], 'repository': str(root / snap['vm'] / s['snapshot_of'])} for s in snap['snapshots']]
    exported, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=exports, run=run, nbd_network='backup-net',
                                                    allocation_map='none'), tmp_path)
    assert not exported['failed'], exported.get('msg')
    return snap


def world(client):
    """The VMs, VDIs, VBDs and VIFs of the lab (refs), to tell what a restore created."""
    return dict((cls, set(client.call('%s.get_all' % cls))) for cls in ('VM', 'VDI', 'VBD', 'VIF'))


def sha256_of(lab, uuid, size):
    return hashlib.sha256(lab.content(uuid).ljust(size, b'\0')).hexdigest()


def run_against(lab, module, tmp_path, check=False, **args):
    result, output = run_module(module, dict(lab_connection(lab), **args), tmp_path, check=check)
    assert lab.info['password'] not in output
    return result


def restore(lab, tmp_path, check=False, **args):
    return run_against(lab, 'vm_restore', tmp_path, check=check, **args)


def test_a_vm_restored_as_a_new_vm_matches_its_configuration_and_its_disks(lab, client, tmp_path):
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    with _vm_configs.VmConfigs(str(root / snap['vm'])) as store:
        config = store.load(RUN)
    assert len(config['vifs']) == 2 and [v['type'] for v in config['vbds']] == ['Disk', 'Disk', 'CD']
    before = world(client)
    args = dict(repository_root=str(root), vm='demo-vm', network_map={'Pool-wide network associated with eth0': 'lab-private'},
                default_sr='Local storage')

    planned = restore(lab, tmp_path, check=True, **args)
    assert not planned['failed'], planned.get('msg')
    assert planned['changed'] and planned['vm']['uuid'] is None and planned['run'] == RUN
    assert world(client) == before  # check mode creates nothing

    result = restore(lab, tmp_path, **args)
    assert not result['failed'], result.get('msg')
    assert result['vm']['name'] == 'demo-vm (restored)' and result['vm']['power_state'] == 'Halted'
    vm_ref = client.call('VM.get_by_uuid', result['vm']['uuid'])
    vm = client.call('VM.get_record', vm_ref)
    vm['other_config'] = _vm_config.other_config_subset(vm['other_config'])  # without the new VM's own mac_seed
    for field, value in config['vm'].items():
        if field not in ('name_label', 'generation_id'):
            assert vm[field] == value, field
    # the disks: same userdevice, mode, bootable; content equal to the source disks at the backup
    vbds = sorted((client.call('VBD.get_record', ref) for ref in vm['VBDs']), key=lambda v: int(v['userdevice']))
    assert [(v['userdevice'], v['type'], v['mode'], v['bootable'], v['empty']) for v in vbds] == \
        [(s['userdevice'], s['type'], s['mode'], s['bootable'], s['type'] == 'CD') for s in config['vbds']]
    for saved, vbd in zip(config['vbds'], vbds):
        if saved['disk']:
            size = saved['disk']['virtual_size']
            assert sha256_of(lab, client.call('VDI.get_uuid', vbd['VDI']), size) == \
                sha256_of(lab, saved['disk']['disk_uuid'], size)
    # the interfaces: same devices and MTU, on the mapped network (and the other one kept), new MACs
    vifs = sorted((client.call('VIF.get_record', ref) for ref in vm['VIFs']), key=lambda v: int(v['device']))
    assert [(v['device'], v['MTU']) for v in vifs] == [(s['device'], s['MTU']) for s in config['vifs']]
    networks = [client.call('network.get_name_label', v['network']) for v in vifs]
    expected = ['lab-private' if s['network']['name_label'] == 'Pool-wide network associated with eth0'
                else s['network']['name_label'] for s in config['vifs']]
    assert networks == expected
    assert all(v['MAC'] != s['MAC'] for v, s in zip(vifs, config['vifs']))
    created = dict((cls, world(client)[cls] - before[cls]) for cls in before)
    assert len(created['VM']) == 1 and len(created['VDI']) == 2 and len(created['VBD']) == 3 and len(created['VIF']) == 2


def test_macs_can_be_kept_and_the_vm_started(lab, client, tmp_path):
    root = tmp_path / 'backups'
    back_up(lab, client, root, tmp_path)
    result = restore(lab, tmp_path, repository_root=str(root), vm='demo-vm', name='demo-vm-dr', mac='keep', start=True,
                     default_sr='Local storage')
    assert not result['failed'], result.get('msg')
    assert result['vm']['power_state'] == 'Running' and result['vm']['name'] == 'demo-vm-dr'
    vm_ref = client.call('VM.get_by_uuid', result['vm']['uuid'])
    source = client.call('VM.get_by_name_label', 'demo-vm')[0]
    macs = sorted(client.call('VIF.get_MAC', ref) for ref in client.call('VM.get_VIFs', vm_ref))
    assert macs == sorted(client.call('VIF.get_MAC', ref) for ref in client.call('VM.get_VIFs', source))


def test_a_restore_that_fails_halfway_leaves_nothing_behind(lab, client, tmp_path):
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    # the second disk's point is damaged: its upload is refused after the VM was created, while the first disk's
    # upload runs (which it stops) or has finished (whose VDI is destroyed again)
    second = sorted(snap['snapshots'], key=lambda s: s['name'])[1]['snapshot_of']
    repository = root / snap['vm'] / second
    point_file = [name for name in os.listdir(str(repository)) if name.endswith('.qcow2')][0]
    with open(str(repository / point_file), 'r+b') as handle:
        handle.seek(-4096, 2)
        handle.write(b'\xff' * 512)
    before = world(client)
    result = restore(lab, tmp_path, repository_root=str(root), vm='demo-vm', default_sr='Local storage')
    assert result['failed'] and 'Everything it had created was destroyed again' in result['msg'], result['msg']
    disk_name = [s['name'] for s in snap['snapshots'] if s['snapshot_of'] == second][0]
    assert 'failed: the disk %s (device ' % disk_name in result['msg'], result['msg']
    assert world(client) == before


def test_an_upload_without_a_connection_of_its_own_fails_the_restore_and_leaves_nothing(lab, client, tmp_path):
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    chosen = _vm_restore.chosen_run(str(root / snap['vm']))
    ca_copy = str(tmp_path / 'ca.pem')
    shutil.copy(lab.info['ca_cert'], ca_copy)
    before = world(client)
    with _xenapi.XenApiClient(lab.info['url'], username=lab.info['username'], password=lab.info['password'],
                              ca_path=ca_copy, timeout=30) as own:
        os.remove(ca_copy)  # a second upload's connection (a sibling client) cannot be made any more
        with pytest.raises(_vm_restore.VmRestoreError) as caught:
            _vm_restore.restore_new_vm(own, chosen, default_sr='Local storage')
    assert 'Everything it had created was destroyed again' in str(caught.value), str(caught.value)
    assert 'No such file or directory' in str(caught.value)
    assert world(client) == before


class MeetingProgress(_progress.DiskProgress):
    """A disk's progress whose upload waits, when it starts, until every other disk's upload has started too."""

    def __init__(self, label, meeting):
        super(MeetingProgress, self).__init__(label)
        self.meeting = meeting

    def running(self):
        super(MeetingProgress, self).running()
        self.meeting.wait()  # BrokenBarrierError after its timeout when the uploads run one after another


def test_the_disks_of_a_new_vm_are_uploaded_at_once(lab, client, tmp_path):
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    chosen = _vm_restore.chosen_run(str(root / snap['vm']))
    labels = _vm_restore.disk_labels(chosen[0])
    assert len(labels) == 2
    meeting = threading.Barrier(len(labels), timeout=30)
    progress = [MeetingProgress(label, meeting) for label in labels]
    result = _vm_restore.restore_new_vm(client, chosen, default_sr='Local storage', disk_progress=progress)
    assert [p.state for p in progress] == ['done', 'done']
    for disk, saved in zip(result['disks'], _vm_restore.disk_vbds(chosen[0])):
        size = saved['disk']['virtual_size']
        assert disk['bytes_sent'] > 0
        assert sha256_of(lab, disk['vdi'], size) == sha256_of(lab, saved['disk']['disk_uuid'], size)


class CancellingProgress(_progress.DiskProgress):
    """A disk's progress that cancels the run once its first piece was sent (as a lease running out would)."""

    def __init__(self, label, cancel):
        super(CancellingProgress, self).__init__(label)
        self.cancel = cancel

    def read(self, length):
        super(CancellingProgress, self).read(length)
        self.cancel.cancel('nobody waits for the restore any more')


def test_a_restore_cancelled_during_the_uploads_stops_them_and_leaves_nothing(lab, client, tmp_path):
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    chosen = _vm_restore.chosen_run(str(root / snap['vm']))
    cancel = _progress.Cancellation()
    progress = [CancellingProgress(label, cancel) for label in _vm_restore.disk_labels(chosen[0])]
    before = world(client)
    with pytest.raises(_vm_restore.VmRestoreError) as caught:
        _vm_restore.restore_new_vm(client, chosen, default_sr='Local storage', disk_progress=progress, cancel=cancel)
    assert caught.value.code == 'CANCELLED'
    message = str(caught.value)
    assert 'as a new VM failed: nobody waits for the restore any more.' in message, message
    assert message.endswith('Everything it had created was destroyed again.'), message
    assert 'cancelled' in [p.state for p in progress]
    assert world(client) == before


def test_a_wrong_map_fails_before_anything_is_created(lab, client, tmp_path):
    root = tmp_path / 'backups'
    back_up(lab, client, root, tmp_path)
    before = world(client)
    result = restore(lab, tmp_path, repository_root=str(root), vm='demo-vm', default_sr='Local storage',
                     default_network='no-such-network')
    assert result['failed'] and 'default_network' in result['msg'] and result['error_code'] == 'NOT_FOUND'
    result = restore(lab, tmp_path, repository_root=str(root), vm='demo-vm', sr_map={'0': 'ISO library'})
    assert result['failed'] and 'sr_map' in result['msg']
    assert world(client) == before
    result = restore(lab, tmp_path, repository_root=str(root), vm='no-such-vm')
    assert result['failed'] and result['error_code'] == 'NOT_FOUND'


def test_the_run_is_the_newest_with_every_disk(tmp_path):
    with pytest.raises(_vm_restore.VmRestoreError) as caught:
        _vm_restore.choose_run(str(tmp_path))
    assert caught.value.code == 'NO_COMPLETE_RUN'


# -- health check -------------------------------------------------------------------------------------------


def health_check(lab, tmp_path, check=False, **args):
    return run_against(lab, 'backup_health_check', tmp_path, check=check, **args)


def test_a_health_check_boots_the_backup_and_leaves_nothing(lab, client, tmp_path):
    root = tmp_path / 'backups'
    back_up(lab, client, root, tmp_path)
    before = world(client)
    planned = health_check(lab, tmp_path, check=True, repository_root=str(root), vm='demo-vm', sr='Local storage')
    assert not planned['failed'] and planned['booted'] is None and world(client) == before
    result = health_check(lab, tmp_path, repository_root=str(root), vm='demo-vm', sr='Local storage', timeout=60)
    assert not result['failed'], result.get('msg')
    assert result['booted'] is True and result['reason'] is None and 0 <= result['seconds_to_agent'] < 60
    assert result['run'] == RUN and result['left_behind'] == []
    assert world(client) == before  # the temporary VM, its disks, drives and interfaces are gone


def test_a_backup_that_does_not_boot_is_reported_within_the_timeout(lab, client, tmp_path):
    vm = client.call('VM.get_by_name_label', 'demo-vm')[0]
    boot_disk = [client.call('VBD.get_record', ref) for ref in client.call('VM.get_VBDs', vm)]
    boot_disk = [client.call('VDI.get_uuid', v['VDI']) for v in boot_disk if v['bootable'] and v['type'] == 'Disk'][0]
    xenlab('write', '--dir', lab.dir, '--vdi', boot_disk, '--broken-boot-sector')  # backed up as it is
    root = tmp_path / 'backups'
    back_up(lab, client, root, tmp_path)
    before = world(client)
    started = time.monotonic()
    result = health_check(lab, tmp_path, repository_root=str(root), vm='demo-vm', sr='Local storage', timeout=5)
    assert not result['failed'], result.get('msg')
    assert result['booted'] is False and 'did not report within 5 seconds' in result['reason']
    assert time.monotonic() - started < 60 and world(client) == before
    failing = health_check(lab, tmp_path, repository_root=str(root), vm='demo-vm', sr='Local storage', timeout=3,
                           fail_on_no_boot=True)
    assert failing['failed'] and failing['error_code'] == 'NO_BOOT' and 'was destroyed' in failing['msg']
    assert world(client) == before


# -- in place -----------------------------------------------------------------------------------------------


def point_sha256(repository, tmp_path):
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import restore as _restore
    out = str(tmp_path / 'point.raw')
    with _restore.RestoreSource(repository) as source:
        _restore.restore_to_file(source, out, force=True)
        size = source.virtual_size
    with open(out, 'rb') as handle:
        return hashlib.sha256(handle.read().ljust(size, b'\0')).hexdigest(), size


def test_a_restore_in_place_sends_only_what_changed_since_the_run_and_refuses_a_running_vm(lab, client, tmp_path):
    result, dummy = run_module('vdi_cbt', dict(lab_connection(lab), vm='demo-vm', enabled=True), tmp_path)
    assert not result['failed'], result.get('msg')
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    disk0 = [s for s in snap['snapshots'] if s['name'] == 'demo-vm-disk0'][0]
    repository = str(root / snap['vm'] / disk0['snapshot_of'])
    expected, size = point_sha256(repository, tmp_path)
    xenlab('write', '--dir', lab.dir, '--vdi', disk0['snapshot_of'], '--offset', str(3 * 1024 * 1024),
           '--length', '65536', '--seed', '77')  # the guest writes after the backup
    assert sha256_of(lab, disk0['snapshot_of'], size) != expected
    args = dict(repository_root=str(root), vm='demo-vm', mode='in_place')
    refused = restore(lab, tmp_path, **args)
    assert refused['failed'] and refused['error_code'] == 'VM_NOT_HALTED' and 'shut it down' in refused['msg']

    client.call('VM.hard_shutdown', client.call('VM.get_by_name_label', 'demo-vm')[0])
    before = world(client)
    planned = restore(lab, tmp_path, check=True, **args)
    assert not planned['failed'], planned.get('msg')
    assert [d['method'] for d in planned['disks']] == ['changed_blocks', 'changed_blocks'] and world(client) == before
    done = restore(lab, tmp_path, **args)
    assert not done['failed'], done.get('msg')
    by_name = dict((d['name'], d) for d in done['disks'])
    # one 64 KiB block written since the run: one 2 MiB block sent for it, nothing for the untouched disk
    assert by_name['demo-vm-disk0']['method'] == 'changed_blocks' and by_name['demo-vm-disk0']['changed_blocks'] == 1
    assert by_name['demo-vm-disk0']['blocks'] == 1 and by_name['demo-vm-disk0']['bytes_sent'] < 3 * 1024 * 1024
    assert by_name['demo-vm-disk1']['changed_blocks'] == 0 and by_name['demo-vm-disk1']['blocks'] == 0
    assert sha256_of(lab, disk0['snapshot_of'], size) == expected
    assert world(client) == before  # the snapshot it listed the changes against is gone again

    # without the run's snapshot (a later run replaced it), everything is written
    client.call('VDI.destroy', client.call('VDI.get_by_uuid', disk0['uuid']))
    xenlab('write', '--dir', lab.dir, '--vdi', disk0['snapshot_of'], '--offset', '0', '--length', '65536', '--seed', '78')
    again = restore(lab, tmp_path, **args)
    assert not again['failed'], again.get('msg')
    first = dict((d['name'], d) for d in again['disks'])['demo-vm-disk0']
    assert first['method'] == 'full' and 'no longer exists' in first['why_full']
    assert sha256_of(lab, disk0['snapshot_of'], size) == expected


def test_a_vm_is_restored_onto_another_pool(lab, client, tmp_path):
    root = tmp_path / 'backups'
    snap = back_up(lab, client, root, tmp_path)
    other = start_lab(tmp_path / 'dr-lab', '--pool-name', 'dr-pool')
    try:
        result = restore(other, tmp_path, repository_root=str(root), vm='demo-vm', name='demo-vm', mac='keep')
        assert not result['failed'], result.get('msg')
        assert result['source_vm']['pool_name'] == 'lab-pool' and result['vm']['uuid']
        with _xenapi.XenApiClient(other.info['url'], username=other.info['username'], password=other.info['password'],
                                  ca_path=other.info['ca_cert'], timeout=30) as dr:
            assert dr.call('pool.get_name_label', dr.call('pool.get_all')[0]) == 'dr-pool'
            vm_ref = dr.call('VM.get_by_uuid', result['vm']['uuid'])
            assert dr.call('VM.get_name_label', vm_ref) == 'demo-vm'
            for disk in result['disks']:
                size = dr.call('VDI.get_virtual_size', dr.call('VDI.get_by_uuid', disk['vdi']))
                size = int(size)
                assert hashlib.sha256(other.content(disk['vdi']).ljust(size, b'\0')).hexdigest() == \
                    sha256_of(lab, disk['source_disk'], size)
            macs = sorted(dr.call('VIF.get_MAC', ref) for ref in dr.call('VM.get_VIFs', vm_ref))
        source = client.call('VM.get_by_name_label', 'demo-vm')[0]
        assert macs == sorted(client.call('VIF.get_MAC', ref) for ref in client.call('VM.get_VIFs', source))
        assert snap['vm'] != result['vm']['uuid']
    finally:
        xenlab('stop', '--dir', other.dir)


def test_a_health_check_can_wait_for_a_key_the_guest_writes(lab, client, tmp_path):
    vm = client.call('VM.get_by_name_label', 'demo-vm')[0]
    vbds = [client.call('VBD.get_record', ref) for ref in client.call('VM.get_VBDs', vm)]
    boot_disk = [client.call('VDI.get_uuid', v['VDI']) for v in vbds if v['bootable'] and v['type'] == 'Disk'][0]
    root = tmp_path / 'backups'
    back_up(lab, client, root, tmp_path, run=RUN)  # before the boot script: its guest never writes the key
    xenlab('write', '--dir', lab.dir, '--vdi', boot_disk, '--guest-key', 'backup-ok')
    later = '2026-11-26T02:00:00Z'
    back_up(lab, client, root, tmp_path, run=later)  # with the boot script
    args = dict(repository_root=str(root), vm='demo-vm', sr='Local storage', guest_key='backup-ok')
    result = health_check(lab, tmp_path, timeout=60, **args)
    assert not result['failed'], result.get('msg')
    assert result['booted'] is True and result['run'] == later
    result = health_check(lab, tmp_path, timeout=3, point=RUN, **args)
    assert result['booted'] is False and 'did not write xenstore control/backup-ok within 3 seconds' in result['reason']
