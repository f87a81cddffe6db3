# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incremental_backup role end to end: real ansible-playbook runs of the collection's playbooks
against the XenServer lab (XenAPI simulator over HTTPS, nbdkit NBD front with TLS).

One lab for the module; the tests run in file order and build on each other's state, like the
nights of a backup schedule: a check-mode run, a first run over six VMs with one that cannot be
snapshotted, incrementals, forced fulls, a lost anchor, a damaged repository, skipped disks, a
point-in-time restore and a run with -vvv that must leak no secret.
"""

from __future__ import absolute_import, division, print_function

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts', 'demo'))
from lab_demo import LabPlaybooks, disk_modes, sha256  # noqa: E402 pylint: disable=wrong-import-position

__metaclass__ = type

EXTRA_VMS = 5
TAGGED = ['lab-vm-%02d' % n for n in range(1, EXTRA_VMS + 1)]


def require_tools():
    missing = [tool for tool in ('nbdkit', 'qemu-img') if not shutil.which(tool)]
    if missing:
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail('required tools missing: %s' % ', '.join(missing))
        pytest.skip('tools missing: %s' % ', '.join(missing))


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    require_tools()
    workdir = str(tmp_path_factory.mktemp('role'))
    lab_args = ['--extra-vms', str(EXTRA_VMS), '--auth-failure-delay', '0']
    for name in TAGGED:
        lab_args += ['--vm-tags', '%s=nightly' % name]
    instance = LabPlaybooks(workdir, lab_args=lab_args,
                            host_vars={'incremental_backup_vm_tags': ['nightly'],
                                       'incremental_backup_vms': ['other-vm'],
                                       # 8 connections per disk: 2 disks at once on the lab's one host,
                                       # 16 connections at most, exactly the lab's NBD limit.
                                       'incremental_backup_connections': 8},
                            verbose=False)
    instance.state = {}
    yield instance
    instance.stop()


def task_output(out, title):
    """What every run of the tasks whose name contains title printed (a task runs once per batch)."""
    bodies = []
    for part in out.split('\nTASK [')[1:]:
        header, dummy, body = part.partition('\n')
        if title in header:
            bodies.append(body)
    return '\n'.join(bodies)


def snapshots_of(lab, name):
    """Snapshot records of the disk called name."""
    return [r for r in lab.vdis().values() if r['is_a_snapshot'] and r['name_label'] == name]


def data_bearing_snapshots(lab):
    return sorted(r['name_label'] for r in lab.vdis().values() if r['is_a_snapshot'] and r['type'] != 'cbt_metadata')


def disk_uuid(lab, name):
    return [u for u, r in lab.vdis().items() if r['name_label'] == name and not r['is_a_snapshot']][0]


def test_check_mode_plans_and_changes_nothing(lab):
    before = lab.vdis()
    rc, out = lab.playbook('backup', options=['--check'], check=False)
    # Check mode already finds out that other-vm's disk (on_boot=reset) cannot get CBT.
    assert rc != 0
    assert 'other-vm/other-vm-scratch at enable_cbt' in out and 'on_boot=reset' in out
    assert out.count('full (FIRST_BACKUP) planned') == EXTRA_VMS
    assert lab.vdis().keys() == before.keys()
    assert not any(r['cbt_enabled'] for r in lab.vdis().values())
    assert lab.repositories() == []
    assert lab.reports() == []


def test_first_run_backs_up_the_good_vms_and_reports_the_bad_one(lab):
    rc, out = lab.playbook('backup', check=False)
    assert rc != 0, 'other-vm cannot be snapshotted (on_boot=reset disk): the play must fail after the report'
    assert 'other-vm/other-vm-scratch at enable_cbt' in out
    report = lab.reports()[-1]
    modes = disk_modes(report)
    for name in TAGGED:
        assert modes[name + '-disk0'] == ('full', 'FIRST_BACKUP', 'ok')
    assert modes['other-vm-scratch'][2] == 'failed'
    vms = dict((vm['name'], vm) for vm in report['vms'])
    assert vms['other-vm']['status'] == 'failed'
    assert vms['other-vm']['disks'][0]['step'] == 'enable_cbt'
    assert 'on_boot=reset' in vms['other-vm']['disks'][0]['error']
    # The VM snapshot was still tried (a full backup is better than none) and failed as well.
    snapshot_failure = [f for f in report['failures'] if f['step'] == 'snapshot']
    assert len(snapshot_failure) == 1 and 'on_boot=reset' in snapshot_failure[0]['msg']
    # Each failure keeps the module's error code and says what to do in the role's variables, also in the play.
    cbt_failure = [f for f in report['failures'] if f['step'] == 'enable_cbt'][0]
    assert cbt_failure['error_code'] == snapshot_failure[0]['error_code'] == 'VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION'
    assert 'incremental_backup_skip_disks' in cbt_failure['advice']
    assert 'What to do: ' + cbt_failure['advice'] in out
    assert report['totals']['failed'] == 1 and report['totals']['ok'] == EXTRA_VMS
    # Every snapshot left on the host is a CBT anchor, one per backed-up disk.
    assert data_bearing_snapshots(lab) == []
    for name in TAGGED:
        anchors = snapshots_of(lab, name + '-disk0')
        assert len(anchors) == 1 and anchors[0]['type'] == 'cbt_metadata'
    assert len(lab.repositories()) == EXTRA_VMS
    # Remember what lab-vm-03 held at the first backup, for the point-in-time restore below.
    disk = disk_uuid(lab, 'lab-vm-03-disk0')
    lab.state['first_run'] = {'hash': sha256(lab.vdi_file(disk)), 'time': report['finished']}


def test_second_run_is_incremental_and_reads_only_the_changed_blocks(lab):
    lab.write_inventory({'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 8,
                         'incremental_backup_spot_check': 4})
    disk = disk_uuid(lab, 'lab-vm-03-disk0')
    lab.guest_write(disk, 1 << 20, 128 << 10, 7)
    rc, out = lab.playbook('backup', options=['-v'])
    # The spot check re-read blocks of every new snapshot before it was reduced to CBT metadata (one task for all).
    spot = task_output(out, 'spot-check them against their snapshots')
    checks = [entry['spot_check'] for entry in json.loads(spot[spot.index('=>') + 2:])['repositories']]
    assert len(checks) == EXTRA_VMS and all(c['ok'] and c['checked'] == 4 for c in checks), spot
    # The wait names every disk by VM and disk at the end, with what it read; no async_status retry noise.
    assert '[lab-pool] lab-vm-03/lab-vm-03-disk0: ok, 0.1 MiB read' in out, task_output(out, 'Wait for the exports')
    assert 'FAILED - RETRYING' not in out
    report = lab.reports()[-1]
    modes = disk_modes(report)
    assert set(modes.values()) == {('incremental', 'CHAIN_OK', 'ok')}
    read = dict((d['vdi_name'], d['bytes_read']) for vm in report['vms'] for d in vm['disks'])
    assert read.pop('lab-vm-03-disk0') == 128 << 10
    assert set(read.values()) == {0}
    for vm in report['vms']:
        assert vm['disks'][0]['points_kept'] == 2
    assert data_bearing_snapshots(lab) == []


def test_full_every_forces_a_full_backup(lab):
    lab.write_inventory({'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 8,
                         'incremental_backup_full_every': {'incrementals': 1}})
    lab.playbook('backup')
    modes = disk_modes(lab.reports()[-1])
    assert set(modes.values()) == {('full', 'FULL_EVERY_INCREMENTALS', 'ok')}


def test_lost_anchor_and_damaged_repository(lab):
    lab.write_inventory({'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 8,
                         'incremental_backup_fail_on_error': False})
    # Someone destroyed the anchor of lab-vm-01; the repository of lab-vm-02 lost its manifest's integrity.
    session = lab.xenapi()
    try:
        anchor = snapshots_of(lab, 'lab-vm-01-disk0')[0]
        session.xenapi.VDI.destroy(session.xenapi.VDI.get_by_uuid(anchor['uuid']))
    finally:
        session.xenapi.session.logout()
    damaged = [r for r in lab.repositories() if disk_uuid(lab, 'lab-vm-02-disk0') in r][0]
    with open(os.path.join(damaged, 'manifest.json'), 'w') as handle:
        handle.write('{"format": "xenserver.cbt_backup repository", "points": [')
    anchor_02 = snapshots_of(lab, 'lab-vm-02-disk0')[0]['uuid']
    # CBT of lab-vm-04 was switched off and on again: its anchor is fine, but the chain is cut.
    session = lab.xenapi()
    try:
        ref = session.xenapi.VDI.get_by_uuid(disk_uuid(lab, 'lab-vm-04-disk0'))
        session.xenapi.VDI.disable_cbt(ref)
        session.xenapi.VDI.enable_cbt(ref)
    finally:
        session.xenapi.session.logout()

    rc, out = lab.playbook('backup', check=False)
    assert rc == 0, 'fail_on_error is false: failures only go into the report\n' + out[-3000:]
    report = lab.reports()[-1]
    modes = disk_modes(report)
    assert modes['lab-vm-01-disk0'] == ('full', 'ANCHOR_MISSING', 'ok')
    assert modes['lab-vm-02-disk0'][:2] == ('full', 'REPOSITORY_DAMAGED')
    assert modes['lab-vm-02-disk0'][2] == 'failed'
    assert modes['lab-vm-04-disk0'] == ('full', 'CHAIN_BROKEN', 'ok')
    for name in ('lab-vm-03', 'lab-vm-05'):
        assert modes[name + '-disk0'] == ('incremental', 'CHAIN_OK', 'ok')
    # The failed disk's new snapshot is gone and its previous anchor is kept for the next run.
    assert data_bearing_snapshots(lab) == []
    assert [s['uuid'] for s in snapshots_of(lab, 'lab-vm-02-disk0')] == [anchor_02]


def restore(lab, extra):
    """Run the restore playbook; {new VDI name: file holding its content}."""
    before = set(lab.vdis())
    lab.playbook('restore', dict({'incremental_backup_restore_sr': 'Local storage'}, **extra))
    after = lab.vdis()
    return dict((after[u]['name_label'], lab.vdi_file(u)) for u in set(after) - before)


def test_skipped_disks_a_missing_vm_and_a_consistent_restore(lab):
    disk0, disk1 = disk_uuid(lab, 'demo-vm-disk0'), disk_uuid(lab, 'demo-vm-disk1')
    lab.guest_write(disk1, 0, 64 << 10, 11)
    lab.write_inventory({'incremental_backup_vms': ['demo-vm']})
    lab.playbook('backup')
    at_first = {'disk0': sha256(lab.vdi_file(disk0)), 'disk1': sha256(lab.vdi_file(disk1))}

    # disk1 is skipped from now on; a VM that no longer exists stays in the list by mistake.
    lab.guest_write(disk0, 2 << 20, 64 << 10, 12)
    lab.write_inventory({'incremental_backup_vms': ['demo-vm', 'gone-vm'], 'incremental_backup_skip_disks': ['demo-vm-disk1']})
    before = len(snapshots_of(lab, 'demo-vm-disk1'))
    rc, out = lab.playbook('backup', check=False)
    assert rc != 0 and 'gone-vm' in out, 'the missing VM fails the play, after the others were backed up'
    report = lab.reports()[-1]
    assert disk_modes(report) == {'demo-vm-disk0': ('incremental', 'CHAIN_OK', 'ok'),
                                  'demo-vm-disk1': ('skip', 'SKIPPED', 'skipped')}
    assert [f['step'] for f in report['failures']] == ['plan'] and 'gone-vm' in report['failures'][0]['msg']
    assert len(snapshots_of(lab, 'demo-vm-disk1')) == before, 'a skipped disk is not snapshotted'

    # The newest VM snapshot both disks have a point of is the first run's: the VM comes back as it was then.
    restored = restore(lab, {'incremental_backup_restore_vm': 'demo-vm'})
    assert sorted(restored) == ['demo-vm-disk0 (restored)', 'demo-vm-disk1 (restored)']
    assert sha256(restored['demo-vm-disk0 (restored)']) == at_first['disk0']
    assert sha256(restored['demo-vm-disk1 (restored)']) == at_first['disk1']
    # One disk alone (by userdevice) comes from its own newest point.
    restored = restore(lab, {'incremental_backup_restore_vm': 'demo-vm', 'incremental_backup_restore_disks': 0,
                             'incremental_backup_restore_name_suffix': ' (alone)'})
    assert list(restored) == ['demo-vm-disk0 (alone)']
    assert sha256(restored['demo-vm-disk0 (alone)']) == sha256(lab.vdi_file(disk0))


def test_point_in_time_restore(lab):
    before = set(lab.vdis())
    lab.playbook('restore', {'incremental_backup_restore_vm': 'lab-vm-03', 'incremental_backup_restore_sr': 'Local storage',
                             'incremental_backup_restore_point': lab.state['first_run']['time'].rstrip('Z')})
    new = list(set(lab.vdis()) - before)
    assert len(new) == 1
    restored = lab.vdi_file(new[0])
    assert sha256(restored) == lab.state['first_run']['hash'], 'the restore must give the disk as it was at the first run'
    # The newest point is the disk as it is now.
    before = set(lab.vdis())
    lab.playbook('restore', {'incremental_backup_restore_vm': 'lab-vm-03', 'incremental_backup_restore_sr': 'Local storage',
                             'incremental_backup_restore_name_suffix': ' (latest)'})
    new = list(set(lab.vdis()) - before)
    source = lab.vdi_file(disk_uuid(lab, 'lab-vm-03-disk0'))
    compare = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', source, lab.vdi_file(new[0])],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    assert compare.returncode == 0, compare.stdout


def test_restore_of_an_unknown_vm_says_so(lab):
    rc, out = lab.playbook('restore', {'incremental_backup_restore_vm': 'no-such-vm',
                                       'incremental_backup_restore_sr': 'Local storage'}, check=False)
    assert rc != 0
    assert "No backup of the VM 'no-such-vm'" in out


def test_verify_playbook_finds_the_damaged_repository(lab):
    lab.write_inventory({'incremental_backup_verify_vms': ['lab-vm-03']})
    rc, out = lab.playbook('verify', check=False)
    verified = task_output(out, 'Verify each repository')
    assert verified.count('ok: [lab-pool] => (item=') == 1, 'the repository of lab-vm-03'
    assert verified.count('failed: [lab-pool] (item=') == 1, 'a repository whose manifest cannot be read is always verified'
    assert rc != 0
    lab.write_inventory({})
    rc, out = lab.playbook('verify', check=False)
    assert rc != 0
    assert 'repositories failed verification' in out
    assert 'manifest' in out


def test_the_leftover_of_an_interrupted_run_is_destroyed_by_the_next_run(lab):
    # A run that died between its snapshot and its cleanup (a cancelled job) left a marked snapshot with data.
    lab.module('vdi_snapshot', {'hostname': lab.lab['url'], 'ca_path': lab.lab['ca_cert'],
                                'username': lab.lab['username'], 'vm': 'lab-vm-05'})
    assert data_bearing_snapshots(lab) == ['lab-vm-05-disk0']
    leftover = [u for u, r in lab.vdis().items() if r['is_a_snapshot'] and r['type'] != 'cbt_metadata'][0]
    # Someone else's snapshot (no marker) is not the role's business.
    session = lab.xenapi()
    try:
        foreign = session.xenapi.VDI.snapshot(session.xenapi.VDI.get_by_uuid(disk_uuid(lab, 'lab-vm-05-disk0')), {})
        foreign_uuid = session.xenapi.VDI.get_uuid(foreign)
    finally:
        session.xenapi.session.logout()
    lab.write_inventory({'incremental_backup_vms': ['lab-vm-05']})
    rc, out = lab.playbook('backup')
    assert 'Destroy the snapshots that interrupted runs left behind' in out
    # The next run says what the interrupted one left.
    warnings = [w['msg'] for w in lab.reports()[-1]['warnings']]
    assert any(leftover in w and 'interrupted run' in w for w in warnings), warnings
    assert [r['uuid'] for r in lab.vdis().values() if r['is_a_snapshot'] and r['type'] != 'cbt_metadata'] == [foreign_uuid]


def test_two_runs_in_one_play(lab):
    lab.write_inventory({})
    count = len(lab.reports())
    lab.playbook(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'playbooks', 'two_runs.yml'))
    reports = lab.reports()
    assert len(reports) == count + 2
    assert [[vm['name'] for vm in r['vms']] for r in reports[-2:]] == [['lab-vm-03'], ['lab-vm-05']]


def test_no_secret_in_output_reports_or_repositories(lab):
    session = lab.xenapi()
    try:
        ref = session._session  # pylint: disable=protected-access
        lab.write_inventory({'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 8,
                             'incremental_backup_fail_on_error': False, 'incremental_backup_session_id': ref})
        rc, out = lab.playbook('backup', options=['-vvv'], check=False)
        assert rc == 0, out[-3000:]
        # The role used the given session and did not log it out.
        assert session.xenapi.VM.get_all()
    finally:
        session.xenapi.session.logout()
    secrets = [lab.lab['password'], ref, ref.split(':', 1)[1]]
    files = [p for p in glob.glob(os.path.join(lab.workdir, '**'), recursive=True)
             if os.path.isfile(p) and not p.startswith(lab.lab_dir) and not os.path.basename(p).startswith('extra-vars')
             and not p.endswith('inventory.yml')]
    for path in files + ['<output>']:
        if path == '<output>':
            text = out
        else:
            with open(path, 'rb') as handle:
                text = handle.read().decode('latin-1')
        for secret in secrets:
            assert secret not in text, 'a secret appears in %s' % path
    assert os.listdir(os.path.join(lab.workdir, 'async')) == [], 'async status files must be cleaned up'
