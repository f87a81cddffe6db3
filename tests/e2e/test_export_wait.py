# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_export in the background (async, poll 0) and export_wait, in real ansible-playbook runs against the lab.

The wait prints progress lines (label, percent, bytes, MiB/s, ETA) and a line per disk at the end, never
"FAILED - RETRYING", and returns the export's result. ansible-playbook killed with SIGTERM in the middle of an
export (what an AWX cancel does) stops renewing the lease: the background job cancels itself within
lease_seconds and a few seconds, leaves no progress file, its repositories hold only their own files, and the
next run exports everything. A wait that times out cancels the job the same way and says which variable to raise.

Exports are 512 MiB disks read over one connection with one request in flight, one disk at a time (about two
seconds each on the lab), so that they last long enough to be watched and interrupted.
"""

from __future__ import absolute_import, division, print_function

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts', 'demo'))
from lab_demo import BIN, LabPlaybooks  # noqa: E402 pylint: disable=wrong-import-position
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import store  # noqa: E402

__metaclass__ = type

PLAYBOOK = os.path.join(ROOT, 'tests', 'e2e', 'playbooks', 'export_wait.yml')
MIB = 1024 * 1024
DISK_SIZE = 512 * MIB
VMS = ['lab-vm-01', 'lab-vm-02', 'lab-vm-03', 'lab-vm-04']
LEASE_SECONDS = 3  # for the SIGTERM test; the others use 30, so that a busy machine cannot cancel them


def require_tools():
    if not shutil.which('nbdkit'):
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail('required tool missing: nbdkit')
        pytest.skip('tool missing: nbdkit')


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    require_tools()
    workdir = str(tmp_path_factory.mktemp('export-wait'))
    instance = LabPlaybooks(workdir, lab_args=['--extra-vms', str(len(VMS)), '--extra-vm-disk-size', '512M',
                                               '--nbd-purpose', 'nbd', '--auth-failure-delay', '0'], verbose=False)
    yield instance
    instance.stop()


def snapshots(lab, names):
    """A new snapshot of each VM's disk: [(vm name, snapshot uuid)]."""
    session = lab.xenapi()
    try:
        made = []
        for name in names:
            disk = session.xenapi.VDI.get_by_name_label(name + '-disk0')[0]
            made.append((name, session.xenapi.VDI.get_uuid(session.xenapi.VDI.snapshot(disk, {}))))
        return made
    finally:
        session.xenapi.session.logout()


def run_vars(lab, name, snaps, wait_timeout=600, lease_seconds=30):
    items = [{'snapshot': uuid, 'repository': os.path.join(lab.backups, vm), 'label': vm + '/xvda'}
             for vm, uuid in snaps]
    return {'items': items, 'progress_file': os.path.join(lab.workdir, 'progress-%s.json' % name),
            'lease_seconds': lease_seconds, 'wait_timeout': wait_timeout,
            'result_file': os.path.join(lab.workdir, 'result-%s.json' % name)}


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


def job_files(lab):
    return glob.glob(os.path.join(lab.workdir, 'async', 'j*'))


def own_files_only(repository):
    with store.Repository(repository) as repo:
        assert repo.unknown_files() == [], repo.unknown_files()
        allowed = set(store.OWN_FILES) | repo.in_use() | set(repo.leftovers())
        assert set(os.listdir(repository)) <= allowed
        return repo.points


def sigterm_once_reading(argv, env, progress_glob, wait=60):
    """Run ansible-playbook ``argv``; once a progress file matching ``progress_glob`` shows a disk being read,
    send it SIGTERM (what an AWX cancel does). Returns (the ended process, when it was signalled, its output)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + wait
        running = False
        while not running and time.monotonic() < deadline:
            time.sleep(0.1)
            for path in glob.glob(progress_glob):
                try:
                    document = read_json(path)
                except (IOError, OSError, ValueError):
                    continue
                running = running or any(d['state'] == 'running' and d['bytes_done'] > 0 for d in document['disks'])
        assert running, 'no export was seen running'
        proc.send_signal(signal.SIGTERM)
        killed = time.monotonic()
        out = proc.communicate(timeout=60)[0].decode('utf-8', 'replace')
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, killed, out


def test_the_wait_prints_progress_and_returns_the_result(lab):
    extra = run_vars(lab, 'progress', snapshots(lab, VMS[:2]))
    rc, out = lab.playbook(PLAYBOOK, extra_vars=extra, check=False)
    assert rc == 0, out[-4000:]
    assert 'FAILED - RETRYING' not in out and 'retries left' not in out
    progress = re.findall(r'^\[lab-pool\] (lab-vm-0[12])/xvda: (\d+\.\d)%, ([\d.]+) MiB of 512\.0 MiB, '
                          r'([\d.]+) MiB/s, ETA (\d+s|\?)$', out, re.M)
    assert progress, out[-4000:]
    assert all(0 <= float(percent) <= 100 for dummy, percent, dummy, dummy, dummy in progress)
    assert re.search(r'^\[lab-pool\] 2 disk\(s\): .*running.*; waited \d+s$', out, re.M), out[-4000:]
    for vm in VMS[:2]:
        assert re.search(r'^\[lab-pool\] %s/xvda: ok, 512\.0 MiB read in \d+\.\d s$' % vm, out, re.M), out[-4000:]

    result = read_json(extra['result_file'])
    assert not result.get('failed') and result['changed'] is True and result['bytes_read'] == 2 * DISK_SIZE
    assert [e['label'] for e in result['exports']] == [vm + '/xvda' for vm in VMS[:2]]
    assert all(e['failed'] is False and e['point_type'] == 'full' for e in result['exports'])
    assert len(result['hosts']) == 1 and list(result['hosts'].values())[0]['peak_connections'] == 1
    # the module removed its files, the wait the job file
    assert not os.path.exists(extra['progress_file']) and not os.path.exists(extra['progress_file'] + '.lease')
    assert job_files(lab) == []


def test_sigterm_to_ansible_playbook_cancels_the_export_within_the_lease(lab):
    snaps = snapshots(lab, VMS)
    extra = run_vars(lab, 'killed', snaps, lease_seconds=LEASE_SECONDS)
    vars_file = os.path.join(lab.workdir, 'extra-vars-killed.json')
    with open(vars_file, 'w') as handle:
        json.dump(extra, handle)
    argv = [os.path.join(BIN, 'ansible-playbook'), PLAYBOOK, '-i', lab.inventory, '-e', '@' + vars_file]
    proc, killed, out = sigterm_once_reading(argv, lab.env(), extra['progress_file'])
    assert proc.returncode != 0

    # the background job, nobody waiting for it any more, cancels itself within the lease and a few seconds
    job, = job_files(lab)
    result = None
    while time.monotonic() - killed < LEASE_SECONDS + 30:
        data = read_json(job)
        if 'started' not in data:
            result = data
            break
        time.sleep(0.2)
    stopped = time.monotonic() - killed
    assert result is not None, 'the job did not end'
    assert stopped <= LEASE_SECONDS + 5, stopped
    assert not os.path.exists(extra['progress_file']) and not os.path.exists(extra['progress_file'] + '.lease')
    assert result['failed'] and result['error_code'] == 'EXPORTS_FAILED'
    states = [e['error_code'] if e['failed'] else 'ok' for e in result['exports']]
    assert 'CANCELLED' in states and set(states) <= {'ok', 'CANCELLED'}, states
    assert states[-1] == 'CANCELLED'  # one disk at a time: the last one had not started
    for entry in result['exports']:
        if entry['failed']:
            assert 'stopped waiting' in entry['msg'] and 'next run' in entry['msg']
    assert 'were cancelled' in result['msg']
    assert 'FAILED - RETRYING' not in out
    os.unlink(job)
    for vm, dummy in snaps:
        if os.path.isdir(os.path.join(lab.backups, vm)):
            own_files_only(os.path.join(lab.backups, vm))

    # the next run exports what was cancelled; what was done is already there
    again = run_vars(lab, 'after-kill', snaps)
    rc, out = lab.playbook(PLAYBOOK, extra_vars=again, check=False)
    assert rc == 0, out[-4000:]
    result_again = read_json(again['result_file'])
    for before, after in zip(states, result_again['exports']):
        assert after['failed'] is False
        assert after.get('already_exported', False) is (before == 'ok')
    for vm, uuid in snaps:
        points = own_files_only(os.path.join(lab.backups, vm))
        assert points[-1]['snapshot_uuid'] == uuid
    assert job_files(lab) == []


def test_a_wait_that_times_out_cancels_the_job_and_names_the_variable(lab):
    extra = run_vars(lab, 'timeout', snapshots(lab, VMS[:3]), wait_timeout=2)
    rc, out = lab.playbook(PLAYBOOK, extra_vars=extra, check=False)
    assert rc != 0
    result = read_json(extra['result_file'])
    assert result['failed'] and result['error_code'] == 'TIMEOUT'
    assert 'incremental_backup_async_timeout' in result['msg'] and '2 seconds' in result['msg']
    codes = [e.get('error_code') for e in result['exports'] if e['failed']]
    assert codes and set(codes) == {'CANCELLED'}
    assert 'timeout of 2 seconds reached' in out and 'FAILED - RETRYING' not in out
    assert not os.path.exists(extra['progress_file']) and not os.path.exists(extra['progress_file'] + '.lease')
    assert job_files(lab) == []
