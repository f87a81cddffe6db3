# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The list form's progress file and lease (_backup/progress.py), and the reader's hooks they use.

DiskProgress turns the bytes the NBD reader reports into percent, rate and ETA; ProgressWatch writes the document
atomically with mode 0600, cancels on a lease that is gone or too old, and removes its files when it stops. The
reader's ``on_read`` counts exactly what ``bytes_read`` counts, and a set ``cancel`` stops it with CANCELLED.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import re
import stat
import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import Cancelled
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.reader import ExtentReader
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_nbd_server import FakeNbdServer, image_bytes

__metaclass__ = type

MIB = 1024 * 1024
RFC3339_Z = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$')

pytestmark = pytest.mark.timeout(120)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_running_disk_has_percent_rate_and_eta():
    clock = Clock()
    disk = _progress.DiskProgress('web01/xvda', clock=clock)
    assert disk.entry() == {'label': 'web01/xvda', 'state': 'queued', 'bytes_done': 0, 'bytes_total': 0,
                            'percent': 0.0, 'mib_s': 0.0, 'eta_s': None}
    disk.queued(100 * MIB)
    disk.running()
    disk.started(100 * MIB)
    assert disk.entry()['eta_s'] is None  # no rate yet
    clock.now += 2
    disk.read(20 * MIB)
    entry = disk.entry()
    assert entry['state'] == 'running' and entry['bytes_done'] == 20 * MIB and entry['bytes_total'] == 100 * MIB
    assert entry['percent'] == 20.0 and entry['mib_s'] == 10.0 and entry['eta_s'] == 8
    # the rate is the recent one: after 20 s at 1 MiB/s, the first 10 MiB/s seconds no longer count
    for dummy in range(20):
        clock.now += 1
        disk.read(MIB)
        entry = disk.entry()
    assert entry['mib_s'] == 1.0 and entry['eta_s'] == 60
    disk.read(60 * MIB)
    clock.now += 1
    disk.ended('done')
    entry = disk.entry()
    assert entry['percent'] == 100.0 and entry['eta_s'] == 0 and entry['mib_s'] == round(100.0 / 23, 1)


def test_a_disk_sent_back_to_the_queue_starts_again_from_zero():
    disk = _progress.DiskProgress('a', clock=Clock())
    disk.running()
    disk.started(10 * MIB)
    disk.read(4 * MIB)
    disk.queued()  # its host was passed over
    entry = disk.entry()
    assert entry['state'] == 'queued' and entry['bytes_done'] == 0 and entry['bytes_total'] == 10 * MIB
    disk.ended('cancelled')
    assert disk.entry()['state'] == 'cancelled' and disk.entry()['eta_s'] is None
    with pytest.raises(ValueError):
        disk.ended('exploded')


def test_an_empty_export_that_is_done_is_at_100_percent():
    disk = _progress.DiskProgress('already', clock=Clock())
    disk.ended('done')
    assert disk.entry()['percent'] == 100.0 and disk.entry()['bytes_total'] == 0


def test_the_document_is_written_atomically_with_mode_0600(tmp_path):
    path = str(tmp_path / 'progress.json')
    old_umask = os.umask(0)  # even a permissive umask gives 0600
    try:
        _progress.write_atomically(path, b'{"a": 1}\n')
        first = os.stat(path)
        _progress.write_atomically(path, b'{"a": 2}\n')
    finally:
        os.umask(old_umask)
    second = os.stat(path)
    assert stat.S_IMODE(second.st_mode) == 0o600
    assert first.st_ino != second.st_ino  # a new file renamed over the old one, never rewritten in place
    assert json.loads((tmp_path / 'progress.json').read_text()) == {'a': 2}
    assert sorted(os.listdir(str(tmp_path))) == ['progress.json']  # no temporary file left


def test_a_failed_write_leaves_the_old_document_and_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'progress.json')
    _progress.write_atomically(path, b'{"old": true}\n')

    def broken_fsync(fd):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(_progress.os, 'fsync', broken_fsync)
    with pytest.raises(OSError):
        _progress.write_atomically(path, b'{"new": true}\n')
    monkeypatch.undo()
    assert json.loads((tmp_path / 'progress.json').read_text()) == {'old': True}
    assert sorted(os.listdir(str(tmp_path))) == ['progress.json']


def test_lease_state_tells_a_released_lease_from_an_abandoned_one(tmp_path):
    lease = str(tmp_path / 'p.json.lease')
    assert _progress.lease_state(lease, 5)[0] == 'released'
    open(lease, 'w').close()
    assert _progress.lease_state(lease, 5) == ('held', None)
    os.utime(lease, (time.time() - 30, time.time() - 30))
    assert _progress.lease_state(lease, 5)[0] == 'abandoned'


def test_logout_on_abandon_needs_a_lease(tmp_path):
    assert 'needs lease_seconds' in _progress.option_problem(str(tmp_path / 'p.json'), 0, logout_on_abandon=True)
    assert _progress.option_problem(str(tmp_path / 'p.json'), 5, logout_on_abandon=True) is None


def test_lease_problem(tmp_path):
    lease = str(tmp_path / 'p.json.lease')
    assert 'is gone' in _progress.lease_problem(lease, 5)
    open(lease, 'w').close()
    assert _progress.lease_problem(lease, 5) is None
    old = time.time() - 30
    os.utime(lease, (old, old))
    problem = _progress.lease_problem(lease, 5)
    assert 'was last renewed 30' in problem and 'more than lease_seconds (5)' in problem
    assert _progress.lease_problem(lease, 60) is None


def test_the_watch_writes_every_second_and_removes_its_files(tmp_path):
    path = str(tmp_path / 'progress.json')
    watch = _progress.ProgressWatch(path, ['web01/xvda', 'web01/xvdb'], lease_seconds=30).start()
    try:
        lease = path + '.lease'
        assert stat.S_IMODE(os.stat(lease).st_mode) == 0o600 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        document = json.loads((tmp_path / 'progress.json').read_text())
        assert RFC3339_Z.match(document['updated'])
        assert [d['label'] for d in document['disks']] == ['web01/xvda', 'web01/xvdb']
        assert [d['state'] for d in document['disks']] == ['queued', 'queued']
        first = os.stat(path).st_ino
        watch.disks[0].running()
        deadline = time.time() + 5
        while os.stat(path).st_ino == first and time.time() < deadline:
            time.sleep(0.05)
        assert json.loads((tmp_path / 'progress.json').read_text())['disks'][0]['state'] == 'running'
        assert not watch.cancellation.is_set()
    finally:
        watch.stop()
    assert os.listdir(str(tmp_path)) == []
    assert watch.file_error is None


@pytest.mark.parametrize('expire, reason, abandoned', [
    (os.unlink, 'is gone', False),  # released by the waiter (export_wait's timeout): the playbook goes on
    (lambda lease: os.utime(lease, (time.time() - 10, time.time() - 10)), 'was last renewed', True),  # nobody waits
])
def test_an_expired_lease_cancels(tmp_path, expire, reason, abandoned):
    path = str(tmp_path / 'progress.json')
    watch = _progress.ProgressWatch(path, ['a'], lease_seconds=3, period=3600).start()  # ticks by hand below
    try:
        watch.tick()
        assert not watch.cancellation.is_set()  # the watch made the lease when it started
        expire(path + '.lease')
        watch.tick()
        assert watch.cancellation.is_set()
        message = watch.cancellation.reason
        assert reason in message and 'stopped waiting' in message and 'AWX' in message and 'SIGTERM' in message
        assert 'next run' in message and 'cleans up' in message
        error = watch.cancellation.error()
        assert isinstance(error, Cancelled) and error.code == 'CANCELLED' and error.message == message
        assert watch.abandoned is abandoned
    finally:
        watch.stop()
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize('waiter, abandoned', [
    (lambda lease: os.utime(lease, None), False),  # renews it: alive
    (os.unlink, False),                            # releases it: alive, and the playbook goes on
    (lambda lease: None, True),                    # killed just before the work ended: nobody renews it
])
def test_after_the_work_the_watch_finds_out_whether_anybody_still_waits(tmp_path, waiter, abandoned):
    path = str(tmp_path / 'progress.json')
    watch = _progress.ProgressWatch(path, ['a'], lease_seconds=2, period=3600).start()
    try:
        acting = threading.Timer(0.5, waiter, [path + '.lease'])
        acting.start()
        watch.await_waiter()
        acting.join()
        assert watch.abandoned is abandoned and not watch.cancellation.is_set()
    finally:
        watch.stop()


def test_without_a_lease_nothing_cancels(tmp_path):
    path = str(tmp_path / 'progress.json')
    watch = _progress.ProgressWatch(path, ['a'], lease_seconds=0, period=3600).start()
    try:
        watch.tick()
        assert not os.path.exists(path + '.lease') and not watch.cancellation.is_set()
    finally:
        watch.stop()


def test_a_progress_file_that_cannot_be_written_fails_the_start(tmp_path):
    watch = _progress.ProgressWatch(str(tmp_path / 'missing' / 'progress.json'), ['a'])
    with pytest.raises(OSError):
        watch.start()


# -- the reader's hooks ---------------------------------------------------------------------------------

IMAGE = image_bytes(3 * MIB + 4096, seed=7)


def reader(server, **kwargs):
    target = _export.make_target(server.nbd_info('disk'), tls=False, timeout=10)
    return ExtentReader(target, connections=2, requests_in_flight=2, **kwargs)


def test_on_read_counts_what_bytes_read_counts():
    counted = []
    with FakeNbdServer(IMAGE) as server:
        stats = reader(server, on_read=counted.append).read([(0, len(IMAGE))], lambda offset, view: None)
    assert sum(counted) == stats.bytes_read == len(IMAGE) and len(counted) == stats.requests


def test_a_set_cancel_stops_the_reader_between_requests():
    cancellation = _progress.Cancellation()
    seen = []

    def sink(offset, view):
        seen.append(len(view))
        cancellation.cancel('stop')  # after the first piece

    with FakeNbdServer(IMAGE) as server:
        with pytest.raises(Cancelled) as caught:
            reader(server, cancel=cancellation).read([(0, len(IMAGE))], sink)
    assert caught.value.code == 'CANCELLED'
    assert sum(seen) < len(IMAGE)


def test_a_cancelled_export_does_not_connect():
    cancellation = _progress.Cancellation()
    cancellation.cancel('stop')
    with FakeNbdServer(IMAGE) as server:
        target = _export.make_target(server.nbd_info('disk'), tls=False, timeout=10)
        with pytest.raises(Cancelled):
            _export.run_export(target, None, lambda *a: None, cancel=cancellation)
    assert server.connections == 0


def test_items_not_prepared_before_a_cancel_end_cancelled():
    """The list form asks nothing more of the XenAPI once cancelled (client None: any call would fail)."""
    cancellation = _progress.Cancellation()
    cancellation.cancel('the run was cancelled because the playbook stopped waiting for it (test)')
    disks = [_progress.DiskProgress('a'), _progress.DiskProgress('b')]
    params = dict(exports=[{'snapshot': 's1', 'repository': '/nonexistent/r1'},
                           {'snapshot': 's2', 'repository': '/nonexistent/r2'}],
                  connections=4, max_host_connections=16, run=None)
    outcome = _vdi_export.export_snapshots(None, params, progress=disks, cancel=cancellation)
    assert [e.code for e in outcome['exports']] == ['CANCELLED', 'CANCELLED']
    assert all('playbook stopped waiting' in e.message for e in outcome['exports'])
    assert [d.entry()['state'] for d in disks] == ['cancelled', 'cancelled'] and outcome['hosts'] == {}
