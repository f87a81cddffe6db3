# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incremental_backup role on a pool of three lab hosts (shared SR, one NBD front each), end to end through the
backup playbook: the exports spread over every host and move off a host whose NBD server refuses; a run cancelled in
the middle of its exports (SIGTERM to ansible-playbook, as an AWX cancel sends) stops them within the lease, and the
next run destroys what it left, says so in its report and backs every disk up; restored disks equal their sources.
"""

from __future__ import absolute_import, division, print_function

import glob
import hashlib
import json
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts', 'demo'))
from lab_demo import BIN, LabPlaybooks, disk_modes  # noqa: E402 pylint: disable=wrong-import-position
from test_export_wait import sigterm_once_reading  # noqa: E402 pylint: disable=wrong-import-position
from test_role_incremental_backup import data_bearing_snapshots, require_tools  # noqa: E402 pylint: disable=wrong-import-position
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import restore  # noqa: E402

__metaclass__ = type

HOSTS = 3
VMS = ['lab-vm-%02d' % n for n in range(1, 7)]
MIB = 1024 * 1024
DISK_SIZE = 128 * MIB
LEASE_SECONDS = 3


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
    require_tools()
    workdir = str(tmp_path_factory.mktemp('role-pool'))
    lab_args = ['--hosts', str(HOSTS), '--extra-vms', str(len(VMS)), '--extra-vm-disk-size', '128M',
                '--auth-failure-delay', '0']
    for name in VMS:
        lab_args += ['--vm-tags', '%s=nightly' % name]
    instance = LabPlaybooks(workdir, lab_args=lab_args, verbose=False,
                            host_vars={'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 2})
    yield instance
    instance.stop()


def disk_uuids(lab):
    return dict((r['name_label'], u) for u, r in lab.vdis().items()
                if r['name_label'].startswith('lab-vm-') and not r['is_a_snapshot'])


def fill(lab, seed):
    """Every disk written whole (the exports then take a while on the lab)."""
    for number, uuid in enumerate(sorted(disk_uuids(lab).values())):
        for offset in range(0, DISK_SIZE, 32 * MIB):
            lab.guest_write(uuid, offset, 32 * MIB, seed * 1000 + number * 100 + offset // MIB)


def restored_equals_source(lab, tmp_path):
    for name, uuid in disk_uuids(lab).items():
        repository = glob.glob(os.path.join(lab.backups, '*', uuid))[0]
        out = str(tmp_path / 'restored.raw')
        with restore.RestoreSource(repository) as source:
            restore.restore_to_file(source, out, force=True)
        with open(out, 'rb') as restored, open(lab.vdi_file(uuid), 'rb') as original:
            assert hashlib.sha256(restored.read()).digest() == hashlib.sha256(original.read().ljust(DISK_SIZE, b'\0')).digest(), name


def cancelled_exports(lab):
    """The snapshots whose exports the background job of a cancelled run ended with CANCELLED (from its async job
    file, once the job has ended)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in glob.glob(os.path.join(lab.workdir, 'async', 'j*')):
            with open(path) as handle:
                try:
                    job = json.load(handle)
                except ValueError:
                    continue
            if 'exports' in job:
                return [e['snapshot'] for e in job['exports'] if e.get('error_code') == 'CANCELLED']
        time.sleep(0.2)
    raise AssertionError('the background job of the cancelled run did not end')


def collection_sessions(lab):
    """The lab's sessions that the collection logged in and did not log out."""
    return [s for s in json.loads(lab.xenlab('sessions')) if s['originator'] == 'xenserver.cbt_backup']


def counts(lab, reset=False):
    return json.loads(lab.xenlab('nbd-counts', *(['--reset'] if reset else [])))


def test_the_exports_spread_over_the_hosts_and_move_off_a_refusing_one(pool, tmp_path):
    fill(pool, 1)
    counts(pool, reset=True)
    pool.xenlab('nbd-switch', '--host', 'lab-host-2', '--switch', 'refuse')
    try:
        rc, out = pool.playbook('backup', check=False)
    finally:
        pool.xenlab('nbd-switch', '--host', 'lab-host-2', '--switch', 'serve')
    assert rc == 0, out[-4000:]
    modes = disk_modes(pool.reports()[-1])
    assert set(modes.values()) == {('full', 'FIRST_BACKUP', 'ok')} and len(modes) == len(VMS)
    peaks = counts(pool)['peaks']
    assert peaks['lab-host-2'] == 0 and peaks['lab-host-1'] > 0 and peaks['lab-host-3'] > 0, peaks
    assert all(peak <= 16 for peak in peaks.values())
    assert 'FAILED - RETRYING' not in out
    restored_equals_source(pool, tmp_path)


def test_a_cancelled_run_stops_its_exports_and_the_next_run_cleans_up(pool, tmp_path):
    assert collection_sessions(pool) == []  # every run so far logged out
    fill(pool, 2)
    # one connection, one request in flight per disk: the exports last long enough to be interrupted
    pool.write_inventory({'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 1,
                          'incremental_backup_requests_in_flight': 1, 'incremental_backup_max_host_connections': 1,
                          'incremental_backup_lease_seconds': LEASE_SECONDS})
    argv = [os.path.join(BIN, 'ansible-playbook'), os.path.join(ROOT, 'playbooks', 'backup.yml'), '-i', pool.inventory]
    progress_glob = os.path.join(pool.backups, 'reports', '.progress-*.json')
    proc, killed, out = sigterm_once_reading(argv, pool.env(), progress_glob, wait=120)
    assert proc.returncode != 0
    # the background exports, nobody waiting any more, stop by themselves within the lease and a few seconds
    while glob.glob(progress_glob) and time.monotonic() - killed < LEASE_SECONDS + 30:
        time.sleep(0.2)
    assert not glob.glob(progress_glob) and time.monotonic() - killed <= LEASE_SECONDS + 10
    assert 'FAILED - RETRYING' not in out
    # the background job ended: the exports that had not finished within the lease were cancelled (how many depends
    # on the machine's speed: an export that finished before the lease ran out keeps its point)
    cancelled = cancelled_exports(pool)
    # the abandoned job logged out the role's session (the playbook that would have done it was killed)
    assert collection_sessions(pool) == []
    # its snapshots stay, marked: those of cancelled exports are leftovers for the next run, those of finished
    # ones are their repositories' anchors
    left = data_bearing_snapshots(pool)
    assert len(left) == len(VMS), left

    # the next run destroys them, says so, and backs up every disk
    pool.write_inventory({'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_connections': 2})
    rc, out = pool.playbook('backup', check=False)
    assert rc == 0, out[-4000:]
    report = pool.reports()[-1]
    assert set(status for dummy, dummy, status in disk_modes(report).values()) == {'ok'}
    # exactly the snapshots of the cancelled exports were leftovers (the others were their repositories' anchors)
    warnings = [w['msg'] for w in report['warnings'] if 'destroyed the snapshot' in w['msg']]
    assert len(warnings) == len(cancelled), (warnings, cancelled)
    assert all(any(snapshot in w for w in warnings) for snapshot in cancelled)
    assert data_bearing_snapshots(pool) == []
    # and removed the async job file the cancelled run left (the job had ended), naming it in the report
    jobs = [w['msg'] for w in report['warnings'] if 'left its export job' in w['msg']]
    assert len(jobs) == 1 and 'its job file was removed' in jobs[0] and '%d cancelled' % len(cancelled) in jobs[0], jobs
    assert glob.glob(os.path.join(pool.workdir, 'async', 'j*')) == []
    assert glob.glob(os.path.join(pool.backups, 'reports', '.*')) == []  # no record, progress or lease file
    assert collection_sessions(pool) == []
    restored_equals_source(pool, tmp_path)


def test_a_restore_through_the_role_waits_with_export_wait_and_equals_the_source(pool):
    rc, out = pool.playbook('restore', {'incremental_backup_restore_vm': 'lab-vm-01',
                                        'incremental_backup_restore_sr': 'Local storage'}, check=False)
    assert rc == 0, out[-4000:]
    assert 'Restore | Wait for each disk' in out and 'FAILED - RETRYING' not in out
    assert glob.glob(os.path.join(pool.backups, 'reports', '.restore-*')) == []  # progress, lease, record removed
    assert collection_sessions(pool) == []  # each upload logged in and out by itself
    source = disk_uuids(pool)['lab-vm-01-disk0']
    restored = [u for u, r in pool.vdis().items() if r['name_label'] == 'lab-vm-01-disk0 (restored)']
    assert len(restored) == 1
    with open(pool.vdi_file(source), 'rb') as original, open(pool.vdi_file(restored[0]), 'rb') as copy:
        assert hashlib.sha256(copy.read().ljust(DISK_SIZE, b'\0')).digest() == \
            hashlib.sha256(original.read().ljust(DISK_SIZE, b'\0')).digest()
