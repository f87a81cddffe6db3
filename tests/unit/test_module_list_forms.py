# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The list forms of the step modules, run by Ansible itself: many items in one module run, one result per item in
the order given, an item that fails fails alone (the others are done), the module fails naming it.

vdi_snapshot (vms, vdis) and vdi_cbt (vdis) against the lab over real HTTPS XML-RPC; backup_prune and backup_verify
(repositories) on repositories written by the real export path from a real NBD server.
"""

from __future__ import absolute_import, division, print_function

import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup.each import run_each
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import CbtBackupError
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers import ansible_runner
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.test_retention import (
    build_chain, check_repository, read,
)

__metaclass__ = type


def run_module(name, args, tmp_path, check=False):
    return ansible_runner.run_module(name, args, tmp_path, check=check)[0]


def lab_args(lab, **args):
    args.update(hostname=lab.info['url'], username=lab.info['username'], password=lab.info['password'],
                ca_path=lab.info['ca_cert'])
    return args


def vdi_records(client):
    return dict((rec['uuid'], rec) for rec in client.call('VDI.get_all_records').values())


def test_run_each_keeps_order_and_turns_every_failure_into_an_item_result():
    def one(item):
        if item == 3:
            raise CbtBackupError('three is bad', code='BAD_THREE')
        if item == 5:
            raise ValueError('five')
        return item * 10

    outcomes = run_each(range(8), one, workers=3)
    assert [o for o in outcomes if not isinstance(o, Exception)] == [0, 10, 20, 40, 60, 70]
    assert outcomes[3].code == 'BAD_THREE'
    assert outcomes[5].code == 'UNEXPECTED_ERROR' and 'ValueError: five' in outcomes[5].message


@pytest.mark.parametrize('lab', [('--extra-vms', '3', '--extra-vm-disk-size', '1M')], indirect=True)
def test_snapshot_and_cbt_list_forms_against_the_lab(lab, client, tmp_path):
    disks = [u for u, r in vdi_records(client).items() if r['name_label'].startswith('lab-vm-') and not r['is_a_snapshot']]
    assert len(disks) == 3

    preview = run_module('vdi_cbt', lab_args(lab, vdis=disks + ['no-such-disk']), tmp_path, check=True)
    assert preview['failed'] and preview['error_code'] == 'CBT_FAILED' and '1 of 4 CBT changes failed' in preview['msg']
    assert [e['failed'] for e in preview['vdis']] == [False, False, False, True]
    assert preview['vdis'][3]['vdi'] == 'no-such-disk' and preview['vdis'][3]['error_code'] == 'NOT_FOUND'
    assert not any(vdi_records(client)[u]['cbt_enabled'] for u in disks)

    enabled = run_module('vdi_cbt', lab_args(lab, vdis=disks), tmp_path)
    assert not enabled['failed'] and enabled['changed']
    assert [e['disks'][0]['uuid'] for e in enabled['vdis']] == disks
    assert all(vdi_records(client)[u]['cbt_enabled'] for u in disks)
    again = run_module('vdi_cbt', lab_args(lab, vdis=disks), tmp_path)
    assert not again['failed'] and not again['changed']

    vms = [{'vm': 'lab-vm-%02d' % n} for n in (1, 2, 3)] + [{'vm': 'no-such-vm'}]
    snapped = run_module('vdi_snapshot', lab_args(lab, vms=vms), tmp_path)
    assert snapped['failed'] and snapped['error_code'] == 'SNAPSHOTS_FAILED' and 'no-such-vm' in snapped['msg']
    assert [e['failed'] for e in snapped['vms']] == [False, False, False, True]
    snapshots = [e['snapshots'][0]['uuid'] for e in snapped['vms'][:3]]
    assert [e['snapshots'][0]['snapshot_of'] for e in snapped['vms'][:3]] == disks
    records = vdi_records(client)
    assert all(records[u]['is_a_snapshot'] and records[u]['type'] == 'user' for u in snapshots)

    reduced = run_module('vdi_snapshot', lab_args(lab, vdis=snapshots, state='metadata_only'), tmp_path)
    assert not reduced['failed'] and reduced['changed'] and [e['vdi'] for e in reduced['vdis']] == snapshots
    records = vdi_records(client)
    assert all(records[u]['type'] == 'cbt_metadata' for u in snapshots)

    destroyed = run_module('vdi_snapshot', lab_args(lab, vdis=snapshots[:2], state='absent'), tmp_path)
    assert not destroyed['failed'] and destroyed['changed']
    records = vdi_records(client)
    assert snapshots[0] not in records and snapshots[1] not in records and snapshots[2] in records
    gone = run_module('vdi_snapshot', lab_args(lab, vdis=snapshots[:2], state='absent'), tmp_path)
    assert not gone['failed'] and not gone['changed']

    wrong = run_module('vdi_snapshot', lab_args(lab, vms=vms[:1], state='absent'), tmp_path)
    assert wrong['failed'] and 'vdis' in wrong['msg']
    assert len([u for u, r in vdi_records(client).items() if r['is_a_snapshot']]) == 1


@pytest.mark.interop
def test_prune_and_verify_list_forms(nbd_server_factory, tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    first, expected_first = build_chain(nbd_server_factory, tmp_path / 'a', incrementals=2, seed=71)
    second, expected_second = build_chain(nbd_server_factory, tmp_path / 'b', incrementals=2, seed=72)
    missing = str(tmp_path / 'nowhere')
    before = read(os.path.join(first, 'manifest.json'))

    preview = run_module('backup_prune', {'repositories': [first, missing, second], 'keep_last': 1}, tmp_path, check=True)
    assert preview['failed'] and preview['error_code'] == 'PRUNE_FAILED' and missing in preview['msg']
    assert [e['failed'] for e in preview['repositories']] == [False, True, False]
    assert read(os.path.join(first, 'manifest.json')) == before

    pruned = run_module('backup_prune', {'repositories': [first, second], 'keep_last': 1}, tmp_path)
    assert not pruned['failed'] and pruned['changed']
    assert [len(e['removed']) for e in pruned['repositories']] == [2, 2]
    assert pruned['bytes_written'] == sum(e['bytes_written'] for e in pruned['repositories']) > 0
    assert check_repository(first, expected_first, tmp_path) == ['snap-2']
    assert check_repository(second, expected_second, tmp_path) == ['snap-2']
    again = run_module('backup_prune', {'repositories': [first, second], 'keep_last': 1}, tmp_path)
    assert not again['failed'] and not again['changed']

    verified = run_module('backup_verify', {'repositories': [first, second]}, tmp_path)
    assert not verified['failed'] and verified['ok'] and all(e['ok'] for e in verified['repositories'])
    # One bit flipped in the second repository's point: only that repository fails, the first is still verified.
    point = [name for name in os.listdir(second) if name.endswith('.qcow2')][0]
    with open(os.path.join(second, point), 'r+b') as image:
        image.seek(-4096, os.SEEK_END)
        byte = image.read(1)
        image.seek(-1, os.SEEK_CUR)
        image.write(bytes([byte[0] ^ 1]))
    verified = run_module('backup_verify', {'repositories': [first, second]}, tmp_path)
    assert verified['failed'] and verified['error_code'] == 'VERIFY_FAILED' and not verified['ok']
    assert [e['ok'] for e in verified['repositories']] == [True, False]
    assert verified['repositories'][1]['error_code'] == 'VERIFY_FAILED' and verified['repositories'][1]['first_bad']
