# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_export's list form (exports) through Ansible against a 3-host lab: one task for many disks, a per-host
connection budget counted at the lab's NBD fronts, failover, per-item failures, every point restored and compared."""

from __future__ import absolute_import, division, print_function

import hashlib
import json

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import restore
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import xenlab
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import lab_connection, run_module

__metaclass__ = type

MIB = 1024 * 1024
HOSTS = 3
pytestmark = pytest.mark.parametrize('lab', [('--hosts', HOSTS)], indirect=True)


def disks(lab, client, sizes):
    """Disks of ``sizes`` with data in every 64 KiB block of their first 2 MiB and their last block,
    snapshotted: [(snapshot uuid, sha256 of its content, size)]."""
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    sr = client.call('SR.get_by_name_label', 'Local storage')[0]
    made = []
    for number, size in enumerate(sizes):
        ref, record = _vdi_import.create_vdi(client, sr, 'many-%d' % number, size)
        lab.write(record['uuid'], 0, 2 * MIB, seed=number + 1)
        lab.write(record['uuid'], size - 65536, 65536, seed=100 + number)
        uuid = client.call('VDI.get_uuid', client.call('VDI.snapshot', ref, {}))
        with open(lab.path(uuid), 'rb') as handle:
            made.append((uuid, hashlib.sha256(handle.read().ljust(size, b'\0')).hexdigest(), size))
    return made


def restored_sha256(repository, tmp_path):
    out = str(tmp_path / 'restored.raw')
    with restore.RestoreSource(repository) as source:
        restore.restore_to_file(source, out, force=True)
    with open(out, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def nbd_counts(lab, reset=False):
    return json.loads(xenlab('nbd-counts', '--dir', lab.dir, *(['--reset'] if reset else [])).stdout)


def export_all(lab, made, tmp_path, check=False, **options):
    items = [{'snapshot': uuid, 'repository': str(tmp_path / 'repos' / uuid)} for uuid, dummy, dummy in made]
    args = dict(lab_connection(lab), exports=items, connections=4, allocation_map='none', **options)
    return run_module('vdi_export', args, tmp_path, check=check)


def test_one_task_exports_every_disk_within_the_host_budget(lab, client, tmp_path):
    made = disks(lab, client, [32 * MIB] + [4 * MIB] * 9)
    nbd_counts(lab, reset=True)
    result, output = export_all(lab, made, tmp_path, max_host_connections=8)
    assert not result['failed'], result.get('msg')
    assert lab.info['password'] not in output and 'session_id=' not in output
    assert [e['snapshot'] for e in result['exports']] == [uuid for uuid, dummy, dummy in made]  # the items' order
    for entry, (uuid, digest, size) in zip(result['exports'], made):
        assert entry['failed'] is False and entry['changed'] is True and entry['point_type'] == 'full'
        assert entry['bytes_read'] == size
        assert restored_sha256(entry['repository'], tmp_path) == digest
    assert result['bytes_read'] == sum(size for dummy, dummy, size in made)
    # counted by this run and at the fronts: never more than 8 connections on a host, every host used
    peaks = nbd_counts(lab)['peaks']
    assert set(peaks) == set('lab-host-%d' % n for n in range(1, HOSTS + 1))
    assert all(1 <= peak <= 8 for peak in peaks.values()), peaks
    assert all(1 <= h['peak_connections'] <= 8 and h['passed_over'] is None for h in result['hosts'].values())
    assert sum(h['exports'] for h in result['hosts'].values()) == len(made)
    # the same task again: every repository already holds its snapshot, nothing is read
    again, dummy = export_all(lab, made, tmp_path, max_host_connections=8)
    assert not again['failed'] and again['changed'] is False and again['bytes_read'] == 0
    assert all(e['already_exported'] for e in again['exports'])


def test_a_refusing_host_is_passed_over_for_the_whole_run(lab, client, tmp_path):
    made = disks(lab, client, [4 * MIB] * 6)
    xenlab('nbd-switch', '--dir', lab.dir, '--host', 'lab-host-2', '--switch', 'refuse')
    try:
        result, dummy = export_all(lab, made, tmp_path)
    finally:
        xenlab('nbd-switch', '--dir', lab.dir, '--host', 'lab-host-2', '--switch', 'serve')
    assert not result['failed'], result.get('msg')
    refused = '127.0.0.1:%d' % lab.info['hosts'][1]['nbd_port']
    assert result['hosts'][refused]['passed_over'].startswith('cannot connect to NBD server %s' % refused)
    for entry, (uuid, digest, dummy) in zip(result['exports'], made):
        assert entry['nbd_address'] != refused
        assert restored_sha256(entry['repository'], tmp_path) == digest
    # only the exports started there before its first refusal tried it; after that no export goes there
    tried = result['hosts'][refused]['exports']
    assert 1 <= tried < len(made) and sum(1 for e in result['exports'] if e.get('nbd_failover')) == tried


def test_an_item_that_fails_fails_alone(lab, client, tmp_path):
    made = disks(lab, client, [4 * MIB] * 2)
    items = [{'snapshot': made[0][0], 'repository': str(tmp_path / 'a')},
             {'snapshot': 'no-such-snapshot', 'repository': str(tmp_path / 'b')},
             {'snapshot': made[1][0], 'repository': str(tmp_path / 'c')}]
    result, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=items, allocation_map='none'), tmp_path)
    assert result['failed'] and result['error_code'] == 'EXPORTS_FAILED'
    assert result['msg'].startswith('1 of 3 exports failed: no-such-snapshot: ')
    good, bad, other = result['exports']
    assert bad['failed'] and bad['error_code'] == 'NOT_FOUND' and bad['repository'] == str(tmp_path / 'b')
    assert not good['failed'] and not other['failed'] and result['changed'] is True
    assert restored_sha256(str(tmp_path / 'c'), tmp_path) == made[1][1]


def test_check_mode_reads_and_writes_nothing(lab, client, tmp_path):
    made = disks(lab, client, [4 * MIB] * 2)
    result, dummy = export_all(lab, made, tmp_path, check=True)
    assert not result['failed'] and result['changed'] is True and result['bytes_read'] == 0
    assert not (tmp_path / 'repos').exists()


def test_options_are_checked(lab, tmp_path):
    items = [{'snapshot': 'x', 'repository': str(tmp_path / 'r')}]
    result, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=items, max_host_connections=17), tmp_path)
    assert result['failed'] and result['error_code'] == 'INVALID_OPTION' and 'max_host_connections' in result['msg']
    result, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=items, snapshot='x'), tmp_path)
    assert result['failed'] and 'mutually exclusive' in result['msg']


def test_hosts_that_drop_a_connection_serve_again(lab, client, tmp_path):
    # Every host closes its next connection after the export name (as xapi-nbd when it is full for a moment or
    # cannot plug the VBD), then serves: the exports wait for the hosts' rest and are served, none is passed over.
    made = disks(lab, client, [4 * MIB] * 3)
    for number in range(1, HOSTS + 1):
        xenlab('nbd-switch', '--dir', lab.dir, '--host', 'lab-host-%d' % number, '--switch', 'drop', '--times', '1')
    result, dummy = export_all(lab, made, tmp_path)
    assert not result['failed'], result.get('msg')
    assert sum(h['failed_connections'] for h in result['hosts'].values()) >= 1
    assert all(h['passed_over'] is None for h in result['hosts'].values()), result['hosts']
    assert any(e.get('nbd_failover') for e in result['exports'])
    for entry, (uuid, digest, dummy) in zip(result['exports'], made):
        assert restored_sha256(entry['repository'], tmp_path) == digest


def test_an_unchanged_incremental_opens_no_nbd_connection(lab, client, tmp_path):
    made = disks(lab, client, [4 * MIB])
    first = made[0][0]
    disk = client.call('VDI.get_snapshot_of', client.call('VDI.get_by_uuid', first))
    # CBT on, a full from an anchor, then a snapshot with nothing written in between
    client.call('VDI.enable_cbt', disk)
    anchor_ref = client.call('VDI.snapshot', disk, {})
    anchor = client.call('VDI.get_uuid', anchor_ref)
    repository = str(tmp_path / 'repo')
    full, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=[{'snapshot': anchor, 'repository': repository}],
                                                allocation_map='none'), tmp_path)
    assert not full['failed'], full.get('msg')
    client.call('VDI.data_destroy', anchor_ref)
    second = client.call('VDI.get_uuid', client.call('VDI.snapshot', disk, {}))
    nbd_counts(lab, reset=True)
    item = {'snapshot': second, 'base': anchor, 'repository': repository, 'label': 'vm/disk'}
    result, dummy = run_module('vdi_export', dict(lab_connection(lab), exports=[item]), tmp_path)
    assert not result['failed'], result.get('msg')
    entry = result['exports'][0]
    assert entry['point_type'] == 'incremental' and entry['bytes_read'] == 0 and entry['blocks_changed'] == 0
    assert entry['connections'] == 0 and entry['nbd_address'] is None
    assert set(nbd_counts(lab)['peaks'].values()) == {0}
    assert restored_sha256(repository, tmp_path) == made[0][1]
