# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_export's list form with a progress file and a lease, against real NBD servers.

nbdkit with its rate filter makes the exports last seconds at almost no CPU, so that the progress file can be
watched while they run (read back every few milliseconds: it must always parse, have mode 0600, change at most once
a second, and be gone at the end) and a lease can be lost in the middle of an export: the running export stops at
once, the queued one never starts, both end CANCELLED, the repository holds nothing but its own files, and the next
export into it works. An export killed outright (SIGKILL) leaves only files the repository's journal lists, which
the next export deletes. Then the module through Ansible against the lab: labels, the file removed, option checks.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import scheduler as _scheduler
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import Cancelled
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiClient, XenApiError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import (
    collections_path,
    lab_connection,
    run_module,
)
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image
from ansible_collections.xenserver.cbt_backup.tests.unit.test_module_vdi_export_many import restored_sha256

__metaclass__ = type

MIB = 1024 * 1024
SIZE = 8 * MIB

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


def slow_server(factory, image, mib_s):
    """nbdkit serving ``image`` at about ``mib_s`` MiB/s over all its connections (the rate filter counts bits; a
    small burstiness keeps it from serving its first two seconds' worth at once)."""
    return factory('nbdkit-plain', image.path, extra_args=['--filter=rate'],
                   params=['rate=%dM' % (mib_s * 8), 'burstiness=0.1'])


def prepared(server, repository, uuid, size=SIZE):
    """A SnapshotExport of the server's export, as prepare_snapshot_export builds it from the XenAPI."""
    params = dict(tls=False, tls_ca_path=None, timeout=30, min_rate_mib_s=0.0, connections=1, requests_in_flight=2,
                  retries=0, repository=repository, dest=None, compress='none', run=None)
    snapshot = {'uuid': uuid, 'snapshot_of': 'vdi-' + uuid, 'name': 'disk of ' + uuid, 'time': None}
    return _vdi_export.SnapshotExport(params, [server.nbd_info()], None, snapshot, None, None, None, size)


def image_sha256(image):
    with open(image.path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class FileReader:
    """Reads ``path`` every few milliseconds in a thread: (inode, mode, document) of each read, and the texts
    that did not parse."""

    def __init__(self, path):
        self.path = path
        self.seen = []
        self.unparsed = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.daemon = True

    def _run(self):
        while not self._stop.wait(0.005):
            try:
                with open(self.path) as handle:
                    info = os.fstat(handle.fileno())
                    text = handle.read()
            except (IOError, OSError):
                continue
            try:
                self.seen.append((info.st_ino, stat.S_IMODE(info.st_mode), json.loads(text)))
            except ValueError:
                self.unparsed.append(text)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def documents(self):
        return [document for dummy, dummy, document in self.seen]


def repository_files_are_its_own(path):
    """Every file of the repository is its own (manifest, marker, lock), a listed point, or journal-listed."""
    with store.Repository(path) as repo:
        names = set(os.listdir(path))
        allowed = set(store.OWN_FILES) | repo.in_use() | set(repo.leftovers())
        assert repo.unknown_files() == [], repo.unknown_files()
        assert names <= allowed, names - allowed
        return repo.points, repo.leftovers()


def test_the_progress_file_follows_the_exports(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'disk.raw', SIZE, seed=5)
    server = slow_server(nbd_server_factory, image, 4)  # 2 s per export
    path = str(tmp_path / 'run' / 'progress.json')
    os.mkdir(str(tmp_path / 'run'))
    exports = [prepared(server, str(tmp_path / 'a'), 'snap-a'), prepared(server, str(tmp_path / 'b'), 'snap-b')]
    watch = _progress.ProgressWatch(path, ['vm-a/xvda', 'vm-b/xvda']).start()
    started = time.monotonic()
    with FileReader(path) as reader:
        try:
            # one connection per host: b waits in the queue while a runs
            results, dummy = _scheduler.run_exports(exports, 1, 1, progress=watch.disks, cancel=watch.cancellation)
        finally:
            watch.stop()
    elapsed = time.monotonic() - started
    assert [r['bytes_read'] for r in results] == [SIZE, SIZE]
    assert not os.path.exists(path) and os.listdir(str(tmp_path / 'run')) == []  # removed, no temporary file left

    assert reader.unparsed == []  # never half a document
    assert reader.seen, 'the progress file was never seen'
    assert set(mode for dummy, mode, dummy in reader.seen) == {0o600}
    inodes = set(inode for inode, dummy, dummy in reader.seen)
    assert 3 <= len(inodes) <= elapsed / _progress.PERIOD + 2  # at most one write a second (and the first one)
    documents = reader.documents()
    for document in documents:
        assert set(document) == {'updated', 'disks'} and document['updated'].endswith('Z')
        assert [d['label'] for d in document['disks']] == ['vm-a/xvda', 'vm-b/xvda']
        for disk in document['disks']:
            assert set(disk) == {'label', 'state', 'bytes_done', 'bytes_total', 'percent', 'mib_s', 'eta_s'}
            if disk['bytes_total']:
                assert disk['percent'] == round(100.0 * disk['bytes_done'] / disk['bytes_total'], 1)

    def states(document):
        return tuple(d['state'] for d in document['disks'])
    midway = [d for d in documents if states(d) == ('running', 'queued') and 0 < d['disks'][0]['bytes_done'] < SIZE]
    assert midway, [states(d) for d in documents]
    disk = midway[-1]['disks'][0]
    assert disk['bytes_total'] == SIZE and 0.5 < disk['mib_s'] < 16 and isinstance(disk['eta_s'], int)
    assert midway[-1]['disks'][1]['bytes_done'] == 0
    assert any(states(d) == ('done', 'running') for d in documents), [states(d) for d in documents]
    assert [d.entry()['state'] for d in watch.disks] == ['done', 'done']
    assert [d.entry()['bytes_done'] for d in watch.disks] == [SIZE, SIZE]


def test_a_lost_lease_stops_the_running_export_and_the_queued_one(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'disk.raw', SIZE, seed=6)
    server = slow_server(nbd_server_factory, image, 2)  # 4 s per export
    path = str(tmp_path / 'progress.json')
    repos = [str(tmp_path / 'a'), str(tmp_path / 'b')]
    exports = [prepared(server, repos[0], 'snap-a'), prepared(server, repos[1], 'snap-b')]
    watch = _progress.ProgressWatch(path, ['vm-a/xvda', 'vm-b/xvda'], lease_seconds=2).start()
    removed = []

    def lose_the_lease():  # as soon as a has read something: the waiter died
        deadline = time.monotonic() + 30
        while watch.disks[0].entry()['bytes_done'] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.unlink(path + '.lease')
        removed.append(time.monotonic())

    loser = threading.Thread(target=lose_the_lease)
    loser.start()
    try:
        results, dummy = _scheduler.run_exports(exports, 1, 1, progress=watch.disks, cancel=watch.cancellation)
    finally:
        ended = time.monotonic()
        watch.stop()
        loser.join()
    # noticed within a second (the lease check), the running export stopped before its next request
    assert ended - removed[0] < _progress.PERIOD + 1.5
    for result in results:
        assert isinstance(result, Cancelled) and result.code == 'CANCELLED'
        assert 'stopped waiting' in result.message and 'is gone' in result.message and 'cleans up' in result.message
    entries = [d.entry() for d in watch.disks]
    assert [e['state'] for e in entries] == ['cancelled', 'cancelled']
    assert 0 < entries[0]['bytes_done'] < SIZE and entries[1]['bytes_done'] == 0
    assert not os.path.exists(path) and not os.path.exists(path + '.lease')

    # a's repository: no point, only its own files; b was never started, so never created
    points, leftovers = repository_files_are_its_own(repos[0])
    assert points == [] and leftovers == []
    assert not os.path.exists(repos[1])

    # the next export into the same repositories works
    fast = nbd_server_factory('nbdkit-plain', image.path)
    again, dummy = _scheduler.run_exports([prepared(fast, repo, 'snap-%d' % n) for n, repo in enumerate(repos)], 4, 16)
    for repo, result in zip(repos, again):
        assert result['point_type'] == 'full' and result['bytes_read'] == SIZE
        assert restored_sha256(repo, tmp_path) == image_sha256(image)
        repository_files_are_its_own(repo)


KILLED_EXPORT = '''
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.backup import export_to_repository
target = _export.make_target({'address': '127.0.0.1', 'port': sys.argv[2], 'exportname': sys.argv[3]}, tls=False,
                             timeout=30, min_rate_mib_s=0)
export_to_repository(target, sys.argv[4], snapshot={'uuid': 'snap-killed'}, connections=1)
'''


def test_an_export_killed_outright_leaves_only_journal_listed_files(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'disk.raw', SIZE, seed=7)
    server = slow_server(nbd_server_factory, image, 2)
    repo = str(tmp_path / 'repo')
    proc = subprocess.Popen([sys.executable, '-c', KILLED_EXPORT, collections_path(), str(server.port),
                             server.exportname, repo])
    try:
        deadline = time.monotonic() + 30
        partial = []
        while not partial and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            partial = [n for n in os.listdir(repo) if store.PARTIAL_MARK in n] if os.path.isdir(repo) else []
        time.sleep(0.5)  # mid-export
        assert proc.poll() is None, 'the export ended before it could be killed'
    finally:
        proc.kill()
        proc.wait()
    assert partial
    points, leftovers = repository_files_are_its_own(repo)
    assert points == [] and set(partial) <= set(leftovers)

    fast = nbd_server_factory('nbdkit-plain', image.path)
    result, = _scheduler.run_exports([prepared(fast, repo, 'snap-next')], 4, 16)[0]
    assert set(partial) <= set(result['cleaned_up']) and result['point_type'] == 'full'
    assert restored_sha256(repo, tmp_path) == image_sha256(image)
    points, leftovers = repository_files_are_its_own(repo)
    assert len(points) == 1 and leftovers == []
    assert not [n for n in os.listdir(repo) if store.PARTIAL_MARK in n]


# -- the module, run by Ansible ------------------------------------------------------------------------------


def lab_disks(lab, client, count, size):
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    sr = client.call('SR.get_by_name_label', 'Local storage')[0]
    made = []
    for number in range(count):
        ref, record = _vdi_import.create_vdi(client, sr, 'progress-%d' % number, size)
        lab.write(record['uuid'], 0, MIB, seed=number + 1)
        made.append(client.call('VDI.get_uuid', client.call('VDI.snapshot', ref, {})))
    return made


def test_the_module_reports_labels_and_removes_its_files(lab, client, tmp_path):
    snapshots = lab_disks(lab, client, 2, 64 * MIB)
    path = str(tmp_path / 'progress.json')
    items = [{'snapshot': uuid, 'repository': str(tmp_path / 'repos' / uuid), 'label': 'vm-%d/xvda' % n}
             for n, uuid in enumerate(snapshots)]
    args = dict(lab_connection(lab), exports=items, allocation_map='none', progress_file=path, lease_seconds=30)
    with FileReader(path) as reader:
        result, output = run_module('vdi_export', args, tmp_path)
    assert not result['failed'], result.get('msg')
    assert [e['label'] for e in result['exports']] == ['vm-0/xvda', 'vm-1/xvda']
    assert [e['bytes_read'] for e in result['exports']] == [64 * MIB, 64 * MIB]
    assert not os.path.exists(path) and not os.path.exists(path + '.lease')
    assert reader.unparsed == [] and reader.seen  # the first document is written before the XenAPI is asked
    assert [d['label'] for d in reader.documents()[0]['disks']] == ['vm-0/xvda', 'vm-1/xvda']
    assert lab.info['password'] not in json.dumps(reader.documents())


@pytest.mark.parametrize('end_the_lease, abandoned', [
    (lambda lease: os.utime(lease, (time.time() - 60, time.time() - 60)), True),  # nobody renews it: the waiter died
    (os.unlink, False),  # released on purpose (export_wait's timeout): the playbook goes on with its session
])
def test_an_abandoned_run_logs_out_the_session_it_was_given(lab, client, tmp_path, end_the_lease, abandoned):
    snapshots = lab_disks(lab, client, 8, 64 * MIB)
    path = str(tmp_path / 'progress.json')
    items = [{'snapshot': uuid, 'repository': str(tmp_path / 'repos' / uuid)} for uuid in snapshots]
    with XenApiClient(lab.info['url'], username=lab.info['username'], password=lab.info['password'],
                      ca_path=lab.info['ca_cert'], timeout=30) as playbook:
        # one disk after another, one request at a time: the run outlasts the first lease check (1 s)
        args = dict(hostname=lab.info['url'], ca_path=lab.info['ca_cert'], session_id=playbook.session_id,
                    exports=items, allocation_map='none', progress_file=path, lease_seconds=2, logout_on_abandon=True,
                    connections=1, max_host_connections=1, requests_in_flight=1)

        def end_it():
            deadline = time.time() + 60
            while not os.path.exists(path + '.lease') and time.time() < deadline:
                time.sleep(0.01)
            end_the_lease(path + '.lease')
        ender = threading.Thread(target=end_it)
        ender.start()
        result, output = run_module('vdi_export', args, tmp_path)
        ender.join()
        assert result['failed'] and 'cancelled' in result['msg'], result.get('msg')
        assert 'CANCELLED' in [e.get('error_code') for e in result['exports']]
        # (asked on the session alone: the SDK's session object would log in again with its password)
        attached = XenApiClient(lab.info['url'], session_id=playbook.session_id, ca_path=lab.info['ca_cert'], timeout=30)
        if abandoned:
            with pytest.raises(XenApiError) as caught:
                attached.open()
            assert caught.value.code == 'SESSION_INVALID'
            playbook.logged_in = False
        else:
            attached.open()  # still logged in: the playbook logs out itself
    assert playbook.session_id not in output


@pytest.mark.parametrize('extra, fragment', [
    (dict(logout_on_abandon=True, progress_file='{tmp}/p.json'), 'logout_on_abandon needs lease_seconds'),
    (dict(lease_seconds=30), 'lease_seconds needs progress_file'),
    (dict(lease_seconds=1, progress_file='{tmp}/p.json'), 'lease_seconds must be 0 (no lease) or at least 2, not 1'),
    (dict(lease_seconds=-5, progress_file='{tmp}/p.json'), 'not -5'),
    (dict(progress_file='{tmp}/missing/p.json'), 'the directory of progress_file'),
    (dict(progress_file='p.json'), 'progress_file must be an absolute path'),
])
def test_progress_options_are_checked_before_anything_is_done(tmp_path, extra, fragment):
    extra = dict((k, v.format(tmp=tmp_path) if isinstance(v, str) else v) for k, v in extra.items())
    args = dict(hostname='https://192.0.2.1', username='u', password='not-the-password', **extra)
    args['exports'] = [{'snapshot': 'x', 'repository': str(tmp_path / 'r')}]
    result, dummy = run_module('vdi_export', args, tmp_path)
    assert result['failed'] and result['error_code'] == 'INVALID_OPTION' and fragment in result['msg'], result['msg']
    assert not (tmp_path / 'r').exists() and not (tmp_path / 'p.json').exists()


def test_progress_file_belongs_to_the_list_form(tmp_path):
    args = dict(hostname='https://192.0.2.1', username='u', password='not-the-password', snapshot='x', repository=str(tmp_path / 'r'),
                progress_file=str(tmp_path / 'p.json'))
    result, dummy = run_module('vdi_export', args, tmp_path)
    assert result['failed'] and result['error_code'] == 'INVALID_OPTION' and 'give exports' in result['msg']
