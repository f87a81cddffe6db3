# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM configurations kept beside a VM's disk repositories (_repository/vm_configs): written atomically under a
journal, read back checked, listed without a manifest, pruned with their run; nothing else is ever deleted.
And through vdi_snapshot against the lab: the configuration read from the VM snapshot, field by field."""

from __future__ import absolute_import, division, print_function

import errno
import json
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_restore as _vm_restore
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import vm_configs as _vm_configs
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vm_config as _vm_config
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import lab_connection, run_module

__metaclass__ = type

RUNS = ['2026-11-2%dT02:00:00Z' % day for day in range(1, 6)]


def document(run, name='web01'):
    return {'format': _vm_config.FORMAT, 'version': _vm_config.VERSION, 'run': run, 'captured': run,
            'snapshot_time': run, 'source': {'vm_uuid': 'u-1', 'pool_uuid': 'p-1', 'pool_name': 'pool'},
            'vm': {'name_label': name, 'VCPUs_max': 2}, 'vbds': [], 'vifs': []}


def saved(vm_dir, runs):
    with _vm_configs.VmConfigs(str(vm_dir), write=True) as store:
        return [store.save(document(run)) for run in runs]


def listing(vm_dir):
    with _vm_configs.VmConfigs(str(vm_dir)) as store:
        return [entry['run'] for entry in store.entries()], store.verify()


def test_configurations_are_kept_by_run_read_back_and_checked(tmp_path):
    paths = saved(tmp_path, RUNS[:3])
    assert [os.path.basename(p) for p in paths] == ['20261121T020000Z.json', '20261122T020000Z.json',
                                                    '20261123T020000Z.json']
    assert all(oct(os.stat(p).st_mode & 0o777) == oct(0o600) for p in paths)
    runs, verified = listing(tmp_path)
    assert runs == RUNS[:3] and verified == {'checked': 3, 'problems': [], 'unknown_files': []}
    with _vm_configs.VmConfigs(str(tmp_path)) as store:
        assert store.load(RUNS[1]) == document(RUNS[1])
        assert store.latest_at('2026-11-22T12:00:00Z')['run'] == RUNS[1]
        assert store.latest_at()['run'] == RUNS[2]
        with pytest.raises(_vm_configs.VmConfigError) as caught:
            store.load(RUNS[4])
        assert caught.value.code == 'NOT_FOUND'
    saved(tmp_path, [RUNS[1]])  # the same run again replaces its configuration
    assert listing(tmp_path)[0] == RUNS[:3]


def test_a_changed_configuration_fails_its_check(tmp_path):
    path = saved(tmp_path, RUNS[:1])[0]
    with open(path, 'a') as handle:
        handle.write(' ')
    dummy, verified = listing(tmp_path)
    assert len(verified['problems']) == 1 and 'does not match its checksum' in verified['problems'][0]
    with _vm_configs.VmConfigs(str(tmp_path)) as store:
        with pytest.raises(_vm_configs.VmConfigError) as caught:
            store.load(RUNS[0])
    assert caught.value.code == 'VM_CONFIG_DAMAGED'


def test_prune_deletes_the_runs_no_point_has_and_nothing_else(tmp_path):
    saved(tmp_path, RUNS)
    foreign = tmp_path / 'vm-config' / 'notes.txt'
    foreign.write_text(u'mine')
    lookalike = tmp_path / 'vm-config' / '20261101T020000Z.json'  # a name like ours, written by someone else
    lookalike.write_text(u'{}')
    with _vm_configs.VmConfigs(str(tmp_path), write=True) as store:
        # RUNS[4] is newer than every kept point: a run still going (or whose exports all failed) keeps it
        assert store.prune([RUNS[1], RUNS[3]]) == [RUNS[0], RUNS[2]]
    runs, verified = listing(tmp_path)
    assert runs == [RUNS[1], RUNS[3], RUNS[4]]
    assert verified['unknown_files'] == ['20261101T020000Z.json', 'notes.txt']
    assert foreign.exists() and lookalike.exists()
    assert sorted(os.listdir(str(tmp_path / 'vm-config'))) == sorted(
        ['.lock', 'configs.json', 'configs.json.prev', 'notes.txt', '20261101T020000Z.json',
         '20261122T020000Z.json', '20261124T020000Z.json', '20261125T020000Z.json'])


def test_a_lost_manifest_loses_no_configuration(tmp_path):
    saved(tmp_path, RUNS[:3])
    os.unlink(str(tmp_path / 'vm-config' / 'configs.json'))
    runs, verified = listing(tmp_path)  # the previous manifest, and the file the last save wrote
    assert runs == RUNS[:3] and verified['problems'] == ['configs.json is missing']
    os.unlink(str(tmp_path / 'vm-config' / 'configs.json.prev'))
    runs, verified = listing(tmp_path)  # no manifest at all: the files that are ours, by name and content
    assert runs == RUNS[:3] and verified['checked'] == 3
    saved(tmp_path, RUNS[3:4])  # the next writer adopts them
    runs, verified = listing(tmp_path)
    assert runs == RUNS[:4] and verified['problems'] == []


def test_a_save_that_fails_leaves_the_old_state_and_the_next_writer_cleans_up(tmp_path, monkeypatch):
    saved(tmp_path, RUNS[:2])
    real = _vm_configs.write_file_atomically

    def full_disk(path, data, **kwargs):
        if path.endswith('.json') and not path.endswith('configs.json'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real(path, data, **kwargs)
    monkeypatch.setattr(_vm_configs, 'write_file_atomically', full_disk)
    with pytest.raises(OSError):
        saved(tmp_path, RUNS[2:3])
    monkeypatch.undo()
    runs, verified = listing(tmp_path)
    assert runs == RUNS[:2] and verified['problems'] == []
    with open(str(tmp_path / 'vm-config' / 'configs.json')) as handle:
        assert json.load(handle)['pending'] == ['20261123T020000Z.json']  # the journal names the unfinished write
    saved(tmp_path, RUNS[3:4])
    with open(str(tmp_path / 'vm-config' / 'configs.json')) as handle:
        assert json.load(handle)['pending'] == []
    assert listing(tmp_path)[0] == [RUNS[0], RUNS[1], RUNS[3]]


def test_a_document_that_is_not_a_configuration_is_refused(tmp_path):
    with _vm_configs.VmConfigs(str(tmp_path), write=True) as store:
        with pytest.raises(_vm_configs.VmConfigError):
            store.save({'format': 'something else', 'run': RUNS[0]})
    assert listing(tmp_path)[0] == []


# -- through vdi_snapshot, against the lab -----------------------------------------------------------------


def test_vdi_snapshot_keeps_the_vm_configuration_of_the_run(lab, client, tmp_path):
    root = tmp_path / 'backups'
    args = dict(lab_connection(lab), vm='demo-vm', repository_root=str(root), run=RUNS[0])
    result, output = run_module('vdi_snapshot', args, tmp_path, check=True)
    assert not result['failed'], result.get('msg')
    vm_ref = client.call('VM.get_by_name_label', 'demo-vm')[0]
    vm = client.call('VM.get_record', vm_ref)
    planned = str(root / vm['uuid'] / 'vm-config' / '20261121T020000Z.json')
    assert result['vm_config'] == planned and not root.exists()  # check mode writes nothing

    result, output = run_module('vdi_snapshot', args, tmp_path)
    assert not result['failed'], result.get('msg')
    assert result['vm_config'] == planned
    with _vm_configs.VmConfigs(str(root / vm['uuid'])) as store:
        config = store.load(RUNS[0])
    assert config['run'] == RUNS[0] and config['source']['vm_uuid'] == vm['uuid']
    assert config['snapshot_time'] == result['snapshots'][0]['time']
    for field in _vm_config.VM_FIELDS:
        if field in vm and field != 'other_config':
            assert config['vm'][field] == vm[field], field
    # the drives in userdevice order: each disk names the disk it snapshots (its repository's name), the CD its ISO
    vbds = [client.call('VBD.get_record', ref) for ref in vm['VBDs']]
    assert [d['userdevice'] for d in config['vbds']] == sorted((v['userdevice'] for v in vbds), key=int)
    disks = dict((v['userdevice'], client.call('VDI.get_uuid', v['VDI'])) for v in vbds if v['type'] == 'Disk')
    assert dict((d['userdevice'], d['disk']['disk_uuid']) for d in config['vbds'] if d['disk']) == disks
    cds = [d for d in config['vbds'] if d['type'] == 'CD']
    assert len(cds) == 1 and cds[0]['iso']['name_label'] == 'lab-tools.iso' and cds[0]['disk'] is None
    networks = dict((client.call('VIF.get_device', ref), client.call('VIF.get_network', ref)) for ref in vm['VIFs'])
    assert [v['device'] for v in config['vifs']] == sorted(networks, key=int)
    for vif in config['vifs']:
        assert vif['network']['uuid'] == client.call('network.get_uuid', networks[vif['device']])
    assert lab.info['password'] not in output


def test_the_configurations_follow_their_runs_through_info_verify_and_prune(lab, client, tmp_path):
    """Two runs of demo-vm (snapshot with repository_root, export of its disks with the same run): backup_info
    lists both configurations, backup_verify checks them, and a prune to one point per disk deletes the first
    run's configuration with its points."""
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    root = tmp_path / 'backups'
    repositories = []
    for run in RUNS[:2]:
        result, dummy = run_module('vdi_snapshot', dict(lab_connection(lab), vm='demo-vm', repository_root=str(root),
                                                        run=run), tmp_path)
        assert not result['failed'], result.get('msg')
        vm_uuid = result['vm']
        exports = [{'snapshot': s['uuid'], 'repository': str(root / vm_uuid / s['snapshot_of'])}
                   for s in result['snapshots']]
        repositories = [e['repository'] for e in exports]
        exported, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=exports, run=run,
                                                        nbd_network='backup-net', allocation_map='none'), tmp_path)
        assert not exported['failed'], exported.get('msg')

    info, dummy = run_module('backup_info', {'path': str(root)}, tmp_path)
    assert [r['path'] for r in info['repositories']] == sorted(repositories)  # vm-config is not a disk repository
    assert [(c['vm_uuid'], [e['run'] for e in c['configs']]) for c in info['vm_configs']] == [(vm_uuid, RUNS[:2])]

    verified, dummy = run_module('backup_verify', {'repositories': repositories}, tmp_path)
    assert not verified['failed'], verified.get('msg')
    assert all(r['vm_configs'] == {'checked': 2, 'problems': [], 'unknown_files': [], 'newest_run_kept': True}
               for r in verified['repositories'])

    args = {'repositories': repositories, 'keep_last': 1}
    predicted, dummy = run_module('backup_prune', args, tmp_path, check=True)
    # the last disk of the VM to be pruned takes the run's last point with it, and its configuration
    assert predicted['changed'] and [r['vm_configs_pruned'] for r in predicted['repositories']] == [[], [RUNS[0]]]
    assert listing(root / vm_uuid)[0] == RUNS[:2]  # check mode deletes nothing
    pruned, dummy = run_module('backup_prune', args, tmp_path)
    assert not pruned['failed'], pruned.get('msg')
    assert [r['vm_configs_pruned'] for r in pruned['repositories']] == [[], [RUNS[0]]]  # as predicted
    assert listing(root / vm_uuid)[0] == RUNS[1:2]
    again, dummy = run_module('backup_prune', args, tmp_path)
    assert not again['changed'] and all(r['vm_configs_pruned'] == [] for r in again['repositories'])


def test_a_store_that_cannot_be_read_stops_a_lookup_by_name_not_by_uuid(tmp_path):
    readable = tmp_path / '0d1f9c52-6e7a-4c8e-9a43-1d2b3c4d5e6f'
    broken = tmp_path / '7a8b9c0d-1e2f-4a5b-8c6d-7e8f9a0b1c2d'
    saved(readable, RUNS[:1])
    saved(broken, RUNS[:1])
    manifest = os.path.join(_vm_configs.directory_of(str(broken)), _vm_configs.MANIFEST)
    os.unlink(manifest)
    os.mkdir(manifest)  # reading it fails with EISDIR, as an unreadable disk would fail
    with pytest.raises(_vm_restore.VmRestoreError) as caught:
        _vm_restore.find_vm_directory(str(tmp_path), 'web01')
    assert caught.value.code == 'REPOSITORY_ERROR'
    assert broken.name in str(caught.value) and "give the VM's uuid" in str(caught.value)
    assert _vm_restore.find_vm_directory(str(tmp_path), readable.name) == str(readable)
