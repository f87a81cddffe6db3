# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""export_wait (action plugin) and export_progress (the module it runs every second), run by Ansible.

The async job is played by the test: it writes the job file in ANSIBLE_ASYNC_DIR as async_wrapper does (running,
then the module's result), writes progress documents, and watches the lease as vdi_export does. So the waiting
side is checked on its own: lease renewed (never created), progress lines every ``interval`` seconds, no
"FAILED - RETRYING", the job's result returned and its job file removed, a per-disk summary, TIMEOUT releasing
the lease, JOB_NOT_FOUND. The real export behind it is tests/e2e/test_export_wait.py.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import re
import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.action import export_wait as _export_wait
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module

__metaclass__ = type

MIB = 1024 * 1024
GIB = 1024 * MIB
JID = 'j123456789'

pytestmark = pytest.mark.timeout(300)


# -- formatting ---------------------------------------------------------------------------------------------


def test_sizes_and_durations():
    assert _export_wait.size_text(0) == '0.0 MiB'
    assert _export_wait.size_text(512 * MIB) == '512.0 MiB'
    assert _export_wait.size_text(3 * GIB + 512 * MIB) == '3.50 GiB'
    assert [_export_wait.duration_text(s) for s in (0, 59.4, 65, 3599, 3600, 7322)] == \
        ['0s', '59s', '1m05s', '59m59s', '1h00m', '2h02m']


def test_a_progress_line_has_label_percent_bytes_rate_and_eta():
    disk = {'label': 'web01/xvda', 'state': 'running', 'bytes_done': 3 * GIB, 'bytes_total': 12 * GIB,
            'percent': 25.0, 'mib_s': 118.25, 'eta_s': 78}
    assert _export_wait.progress_line('pool1', disk) == \
        '[pool1] web01/xvda: 25.0%, 3.00 GiB of 12.00 GiB, 118.2 MiB/s, ETA 1m18s'
    assert _export_wait.progress_line('pool1', dict(disk, eta_s=None)).endswith('ETA ?')


def test_the_summary_has_a_line_per_disk():
    seen = _export_wait.Seen()
    seen.update({'disks': [{'label': 'b', 'state': 'running', 'bytes_done': MIB}]}, 10.0)
    seen.update({'disks': [{'label': 'b', 'state': 'running', 'bytes_done': 2 * MIB}]}, 12.5)
    result = {'exports': [
        {'label': 'a', 'snapshot': 's1', 'failed': False, 'bytes_read': 3 * MIB, 'seconds': 1.25},
        {'label': 'b', 'snapshot': 's2', 'failed': True, 'error_code': 'CANCELLED'},
        {'snapshot': 's3', 'failed': False, 'bytes_read': 0, 'seconds': 0.0, 'already_exported': True},
    ]}
    assert _export_wait.summary_lines('p', result, seen) == [
        '[p] a: ok, 3.0 MiB read in 1.2 s',
        '[p] b: failed (CANCELLED), 2.0 MiB read in 2.5 s',
        '[p] s3: ok, 0.0 MiB read in 0.0 s (already exported)',
    ]


def test_a_restore_gets_a_line_per_disk_too():
    seen = _export_wait.Seen()
    seen.update({'disks': [{'label': 'web01/xvda', 'state': 'running', 'bytes_done': MIB},
                           {'label': 'web01/xvdb', 'state': 'queued', 'bytes_done': 0}]}, 10.0)
    seen.update({'disks': [{'label': 'web01/xvda', 'state': 'done', 'bytes_done': 4 * MIB},
                           {'label': 'web01/xvdb', 'state': 'running', 'bytes_done': 2 * MIB}]}, 12.0)
    vm_restore = {'changed': True, 'disks': [{'name': 'xvda', 'bytes_sent': 4 * MIB, 'method': 'changed_blocks'},
                                             {'name': 'xvdb', 'bytes_sent': 2 * MIB}]}
    assert _export_wait.summary_lines('p', vm_restore, seen) == [
        '[p] web01/xvda: ok, 4.0 MiB sent in 0.0 s (changed_blocks)', '[p] web01/xvdb: ok, 2.0 MiB sent in 0.0 s']
    vdi_restore = {'changed': True, 'vdi': {'uuid': 'u'}, 'bytes_sent': 3 * MIB, 'seconds': 1.5}
    assert _export_wait.summary_lines('p', vdi_restore, seen)[0] == '[p] web01/xvda: ok, 3.0 MiB sent in 1.5 s'
    failed = {'failed': True, 'error_code': 'CANCELLED', 'msg': 'x'}
    assert _export_wait.summary_lines('p', failed, seen) == ['[p] web01/xvda: failed (CANCELLED)',
                                                             '[p] web01/xvdb: failed (CANCELLED)']


# -- export_progress ----------------------------------------------------------------------------------------


@pytest.fixture
def async_dir(tmp_path, monkeypatch):
    path = tmp_path / 'async'
    path.mkdir()
    monkeypatch.setenv('ANSIBLE_ASYNC_DIR', str(path))  # run_module passes the environment on
    return path


def write_job(async_dir, data):
    temp = async_dir / (JID + '.tmp')
    temp.write_text(json.dumps(data) if not isinstance(data, str) else data)
    os.rename(str(temp), str(async_dir / JID))  # as async_wrapper's jwrite


RUNNING = {'started': True, 'finished': False, 'ansible_job_id': JID}


def look(tmp_path, async_dir, **args):
    base = dict(jid=JID, async_dir=str(async_dir), progress_file=str(tmp_path / 'progress.json'))
    base.update(args)
    result, dummy = run_module('export_progress', base, tmp_path)
    assert not result['failed'], result
    return result


def test_export_progress_renews_an_existing_lease_and_never_creates_one(tmp_path, async_dir):
    write_job(async_dir, RUNNING)
    lease = tmp_path / 'progress.json.lease'
    result = look(tmp_path, async_dir)
    assert result['lease'] == 'missing' and not lease.exists()
    assert result['job'] == {'found': True, 'finished': False} and result['progress'] is None
    lease.write_text(u'')
    os.utime(str(lease), (time.time() - 100, time.time() - 100))
    (tmp_path / 'progress.json').write_text(u'{"updated": "2026-12-02T15:43:31Z", "disks": []}\n')
    result = look(tmp_path, async_dir)
    assert result['lease'] == 'renewed' and time.time() - lease.stat().st_mtime < 30
    assert result['progress'] == {'updated': '2026-12-02T15:43:31Z', 'disks': []} and result['changed'] is False
    result = look(tmp_path, async_dir, lease='release')
    assert result['lease'] == 'released' and not lease.exists()


def test_export_progress_reads_the_job_as_async_status_does(tmp_path, async_dir):
    result = look(tmp_path, async_dir)
    assert result['job'] == {'found': False, 'finished': False}
    write_job(async_dir, '{"started": tr')  # being written: running
    assert look(tmp_path, async_dir)['job'] == {'found': True, 'finished': False}
    (tmp_path / 'progress.json').write_text(u'{}')
    (tmp_path / 'progress.json.lease').write_text(u'')
    write_job(async_dir, {'changed': True, 'exports': []})  # the module's result: ended
    result = look(tmp_path, async_dir)
    assert result['job'] == {'found': True, 'finished': True} and result['lease'] == 'ended'
    # what a killed job left is removed once it has ended
    assert sorted(os.path.basename(p) for p in result['removed']) == ['progress.json', 'progress.json.lease']
    assert not (tmp_path / 'progress.json').exists() and (async_dir / JID).exists()


def test_export_progress_renews_the_other_leases_it_is_given(tmp_path, async_dir):
    write_job(async_dir, RUNNING)
    others = [tmp_path / 'disk1.json', tmp_path / 'disk2.json']
    for other in others[:1]:
        (tmp_path / (other.name + '.lease')).write_text(u'')
        os.utime(str(tmp_path / (other.name + '.lease')), (time.time() - 100, time.time() - 100))
    look(tmp_path, async_dir, also_renew=[str(other) for other in others])
    assert time.time() - (tmp_path / 'disk1.json.lease').stat().st_mtime < 30
    assert not (tmp_path / 'disk2.json.lease').exists()  # renewed, never created
    look(tmp_path, async_dir, lease='keep', also_renew=[str(others[0])])  # only a renewing look renews them


def test_export_progress_records_the_job_and_forgets_it_with_its_job_file(tmp_path, async_dir):
    record = tmp_path / 'run.job'
    look(tmp_path, async_dir, record=str(record))
    assert not record.exists()  # no such job: nothing to record
    write_job(async_dir, RUNNING)
    result = look(tmp_path, async_dir, record=str(record))
    assert result['changed'] is True and (os.stat(str(record)).st_mode & 0o777) == 0o600
    content = json.loads(record.read_text())
    assert content['jid'] == JID and content['async_dir'] == str(async_dir)
    assert content['progress_file'] == str(tmp_path / 'progress.json')
    assert look(tmp_path, async_dir, record=str(record))['changed'] is False  # written once
    write_job(async_dir, {'changed': True, 'exports': []})
    result = look(tmp_path, async_dir, record=str(record), forget=True, lease='keep')
    assert sorted(result['removed']) == sorted([str(async_dir / JID), str(record)])
    assert not record.exists() and not (async_dir / JID).exists()


def leftovers(tmp_path, records, check=False):
    result, dummy = run_module('export_leftovers', dict(records=records), tmp_path, check=check)
    return result


def test_export_leftovers_removes_what_a_cancelled_wait_left_once_the_job_has_ended(tmp_path, async_dir):
    record = str(tmp_path / 'run.job')
    write_job(async_dir, RUNNING)
    (tmp_path / 'progress.json').write_text(u'{}')
    (tmp_path / 'progress.json.lease').write_text(u'')
    look(tmp_path, async_dir, record=record)
    # the job still runs (its lease has not run out yet): everything stays for a later run
    result = leftovers(tmp_path, [record, str(tmp_path / 'none.job')])
    assert not result['failed'] and result['changed'] is False
    assert [(j['jid'], j['state'], j['removed']) for j in result['jobs']] == [(JID, 'running', [])]
    write_job(async_dir, {'failed': True, 'error_code': 'EXPORTS_FAILED', 'exports': [
        {'failed': False}, {'failed': True, 'error_code': 'CANCELLED'}, {'failed': True, 'error_code': 'CANCELLED'}]})
    expected = sorted([str(async_dir / JID), str(tmp_path / 'progress.json'), str(tmp_path / 'progress.json.lease'), record])
    result = leftovers(tmp_path, [record], check=True)
    assert result['changed'] is True and sorted(result['jobs'][0]['removed']) == expected
    assert os.path.exists(record) and (async_dir / JID).exists()  # check mode removes nothing
    result = leftovers(tmp_path, [record])
    job = result['jobs'][0]
    assert job['state'] == 'ended' and job['summary'] == {'ok': 1, 'cancelled': 2, 'failed': 0}
    assert sorted(job['removed']) == expected and all(not os.path.exists(path) for path in expected)
    assert leftovers(tmp_path, [record])['jobs'] == []


def test_export_leftovers_never_touches_a_file_it_did_not_write(tmp_path, async_dir):
    foreign = tmp_path / 'notes.job'
    foreign.write_text(u'{"jid": "j1", "async_dir": "/etc"}\n')
    result = leftovers(tmp_path, [str(foreign)])
    assert result['failed'] and result['error_code'] == 'INVALID_RECORD' and foreign.exists()


# -- export_wait --------------------------------------------------------------------------------------------


class FakeJob:
    """Plays a vdi_export list form run in the background: the job file, the progress file, the lease.

    Runs ``steps`` documents, one every ``step`` seconds, then writes ``result`` as the job's result; if the lease
    file disappears first, it writes ``cancelled`` instead. Records the lease's modification times."""

    def __init__(self, tmp_path, async_dir, steps, result, cancelled=None, step=0.5):
        self.progress = str(tmp_path / 'progress.json')
        self.lease = self.progress + '.lease'
        self.async_dir = async_dir
        self.steps = steps
        self.result = result
        self.cancelled = cancelled
        self.step = step
        self.lease_times = []
        self.ended = None
        write_job(async_dir, RUNNING)
        open(self.lease, 'w').close()
        self.thread = threading.Thread(target=self._run)
        self.thread.daemon = True

    def _run(self):
        result = self.result
        for document in self.steps:
            with open(self.progress + '.tmp', 'w') as handle:
                json.dump(document, handle)
            os.rename(self.progress + '.tmp', self.progress)
            deadline = time.time() + self.step
            while time.time() < deadline:
                try:
                    self.lease_times.append(os.stat(self.lease).st_mtime)
                except OSError:
                    result = self.cancelled
                    break
                time.sleep(0.05)
            if result is self.cancelled:
                break
        if result is self.cancelled and self.cancelled is not None:
            time.sleep(0.5)
        for path in (self.progress, self.lease):
            if os.path.exists(path):
                os.unlink(path)
        write_job(self.async_dir, result)
        self.ended = time.time()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(60)


def doc(*disks):
    return {'updated': '2026-12-02T15:43:31Z', 'disks': list(disks)}


def disk(label, state, done, total=8 * MIB, mib_s=2.0, eta=None):
    return {'label': label, 'state': state, 'bytes_done': done, 'bytes_total': total,
            'percent': round(100.0 * done / total, 1), 'mib_s': mib_s, 'eta_s': eta}


def wait(tmp_path, **args):
    base = dict(jid=JID, progress_file=str(tmp_path / 'progress.json'), interval=1)
    base.update(args)
    started = time.time()
    result, output = run_module('export_wait', base, tmp_path)
    return result, output, time.time() - started


def test_export_wait_prints_progress_renews_the_lease_and_returns_the_result(tmp_path, async_dir):
    steps = [doc(disk('vm1/xvda', 'queued', 0), disk('vm2/xvda', 'queued', 0))]
    steps += [doc(disk('vm1/xvda', 'running', n * MIB, eta=8 - n), disk('vm2/xvda', 'queued', 0)) for n in range(1, 8)]
    steps += [doc(disk('vm1/xvda', 'done', 8 * MIB, eta=0), disk('vm2/xvda', 'running', 4 * MIB, eta=2))] * 2
    result = {'changed': True, 'bytes_read': 16 * MIB, 'hosts': {'192.0.2.10:10809': {'exports': 2}}, 'exports': [
        {'snapshot': 's1', 'label': 'vm1/xvda', 'failed': False, 'bytes_read': 8 * MIB, 'seconds': 4.0},
        {'snapshot': 's2', 'label': 'vm2/xvda', 'failed': False, 'bytes_read': 8 * MIB, 'seconds': 2.0}]}
    with FakeJob(tmp_path, async_dir, steps, result) as job:
        outcome, output, elapsed = wait(tmp_path, record=str(tmp_path / 'run.job'))
    assert not outcome['failed'], outcome
    for key in ('changed', 'bytes_read', 'hosts', 'exports'):
        assert outcome[key] == result[key], key
    assert outcome['ansible_job_id'] == JID and 'started' not in outcome and 'finished' not in outcome
    assert not (async_dir / JID).exists()  # cleaned up as async_status mode=cleanup does
    assert not (tmp_path / 'run.job').exists()  # and the record with it

    lines = re.findall(r'^\[localhost\] vm1/xvda: \d+\.\d%, \d+\.\d MiB of 8\.0 MiB, 2\.0 MiB/s, ETA \d+s$', output, re.M)
    assert len(lines) >= 2, output  # every interval (1 s) while it ran (about 5 s)
    assert re.search(r'^\[localhost\] 2 disk\(s\): 1 running, 1 queued; waited \d+s$', output, re.M), output
    assert '[localhost] vm1/xvda: ok, 8.0 MiB read in 4.0 s' in output
    assert '[localhost] vm2/xvda: ok, 8.0 MiB read in 2.0 s' in output
    assert 'FAILED - RETRYING' not in output and 'RETRYING' not in output
    # the lease was renewed while it waited: its modification time moved forward, about every second
    renewals = sorted(set(job.lease_times))
    assert len(renewals) >= 3 and max(b - a for a, b in zip(renewals, renewals[1:])) < 5, renewals


def test_a_failed_job_fails_the_wait_with_its_result(tmp_path, async_dir):
    result = {'failed': True, 'msg': '1 of 1 exports failed: vm1/xvda: gone', 'error_code': 'EXPORTS_FAILED',
              'changed': False, 'bytes_read': 0, 'hosts': {}, 'exports': [
                  {'snapshot': 's1', 'label': 'vm1/xvda', 'failed': True, 'error_code': 'NOT_FOUND', 'msg': 'gone'}]}
    with FakeJob(tmp_path, async_dir, [doc(disk('vm1/xvda', 'failed', 0))], result):
        outcome, output, dummy = wait(tmp_path)
    assert outcome['failed'] and outcome['error_code'] == 'EXPORTS_FAILED' and outcome['msg'] == result['msg']
    assert outcome['exports'] == result['exports']
    assert '[localhost] vm1/xvda: failed (NOT_FOUND), 0.0 MiB read in 0.0 s' in output


def test_a_timeout_releases_the_lease_and_returns_the_cancelled_result(tmp_path, async_dir):
    steps = [doc(disk('vm1/xvda', 'running', n * 64 * 1024)) for n in range(1, 120)]  # a minute, unless cancelled
    cancelled = {'failed': True, 'error_code': 'EXPORTS_FAILED', 'msg': '1 of 1 exports were cancelled', 'changed': False,
                 'bytes_read': 0, 'hosts': {}, 'exports': [
                     {'snapshot': 's1', 'label': 'vm1/xvda', 'failed': True, 'error_code': 'CANCELLED', 'msg': 'x'}]}
    with FakeJob(tmp_path, async_dir, steps, {'changed': True}, cancelled=cancelled) as job:
        outcome, output, elapsed = wait(tmp_path, timeout=3)
    assert outcome['failed'] and outcome['error_code'] == 'TIMEOUT'
    assert 'incremental_backup_async_timeout' in outcome['msg'] and '3 seconds' in outcome['msg']
    assert outcome['exports'] == cancelled['exports']  # the job's result, as it ended after the cancellation
    assert job.ended is not None and elapsed < 30
    assert not (async_dir / JID).exists()
    assert 'timeout of 3 seconds reached' in output


def test_waiting_for_a_job_that_does_not_exist_fails_at_once(tmp_path, async_dir):
    outcome, dummy, elapsed = wait(tmp_path)
    assert outcome['failed'] and outcome['error_code'] == 'JOB_NOT_FOUND' and JID in outcome['msg']
    assert elapsed < 60


def test_export_wait_checks_its_arguments(tmp_path, async_dir):
    outcome, dummy, dummy = wait(tmp_path, interval=0)
    assert outcome['failed'] and outcome['error_code'] == 'INVALID_OPTION'
    outcome, dummy, dummy = wait(tmp_path, bogus=1)
    assert outcome['failed'] and 'bogus' in outcome['msg']
