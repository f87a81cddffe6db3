# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring points of repositories built from a real NBD server: raw files, VHD and raw streams."""

from __future__ import absolute_import, division, print_function

import errno
import hashlib
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import Cancelled
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, restore, store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Writer
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.raw_file import AtomicFile
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.vhd import MAX_VHD_SIZE
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_xenapi import FakeXenApi
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import qemu_img

__metaclass__ = type

pytestmark = pytest.mark.interop
K64 = 64 * 1024
MIB = 1024 * 1024


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def snapshot_info(n):
    return {'uuid': 'snap-%d' % n, 'snapshot_of': 'disk-uuid', 'name': 'disk0', 'time': '2026112%dT10:00:00Z' % n}


@pytest.fixture
def repository(nbd_server_factory, tmp_path):
    """A repository with a full and two incrementals (one zeroes a block); the source's content at each point."""
    image = make_disk_image(tmp_path / 'src.raw', 5 * MIB + 512, seed=7)
    server = nbd_server_factory('nbdkit-tls', image.path)
    repo_dir = str(tmp_path / 'repo')

    def target():
        return _export.make_target(server.nbd_info(), tls=True, timeout=10)
    ids = [backup.export_to_repository(target(), repo_dir, snapshot=snapshot_info(1))['point']['id']]
    expected = {ids[0]: read(image.path)}
    for n in (2, 3):
        changed = set(rewrite_random_blocks(image.path, 6, seed=n))
        zeroed = image.data_blocks[n]
        with open(image.path, 'r+b') as handle:
            handle.seek(zeroed * K64)
            handle.write(bytes(K64))
        changed.add(zeroed)
        result = backup.export_to_repository(target(), repo_dir, changed_blocks=_cbt.encode(sorted(changed), image.size),
                                             snapshot=snapshot_info(n), base_uuid='snap-%d' % (n - 1))
        ids.append(result['point']['id'])
        expected[ids[-1]] = read(image.path)
    return repo_dir, ids, expected


def test_every_point_restores_to_the_source_bytes(repository, tmp_path):
    repo_dir, ids, expected = repository
    for point in ids:
        dest = str(tmp_path / ('%s.raw' % point))
        with restore.RestoreSource(repo_dir, point) as source:
            result = restore.restore_to_file(source, dest)
        assert result['point'] == point and result['changed']
        assert result['chain'][0] == point and result['chain'][-1] == ids[0]
        assert len(result['chain']) == ids.index(point) + 1
        data = read(dest)
        assert len(data) == len(expected[point])
        assert sha256(data) == sha256(expected[point])
        # qemu agrees: the restore point (read through its backing chain) equals the restored raw file
        qemu_img('compare', '-q', '-f', 'qcow2', '-F', 'raw', os.path.join(repo_dir, point + '.qcow2'), dest)
        assert not [name for name in os.listdir(str(tmp_path)) if '.partial-' in name]


def test_latest_is_the_default_and_the_output_is_sparse(repository, tmp_path):
    repo_dir, ids, expected = repository
    dest = str(tmp_path / 'latest.raw')
    with restore.RestoreSource(repo_dir) as source:
        result = restore.restore_to_file(source, dest)
    assert result['point'] == ids[-1]
    assert read(dest) == expected[ids[-1]]
    zero_blocks = sum(1 for off in range(0, len(expected[ids[-1]]), K64)
                      if not any(expected[ids[-1]][off:off + K64]))
    stat = os.stat(dest)
    assert zero_blocks > 10
    # holes where the disk is zero (allocation is in 512-byte units)
    assert stat.st_blocks * 512 <= stat.st_size - (zero_blocks - 2) * K64
    assert result['bytes_written'] <= stat.st_size - (zero_blocks - 2) * K64
    assert oct(stat.st_mode & 0o777) == oct(0o600)


def test_existing_dest_is_refused_unless_forced(repository, tmp_path):
    repo_dir, ids, expected = repository
    dest = str(tmp_path / 'taken.raw')
    with open(dest, 'wb') as handle:
        handle.write(b'precious')
    with restore.RestoreSource(repo_dir, ids[0]) as source:
        with pytest.raises(restore.RestoreError, match='already exists'):
            restore.restore_to_file(source, dest)
        assert read(dest) == b'precious'
        restore.restore_to_file(source, dest, force=True)
    assert read(dest) == expected[ids[0]]


def test_restoring_onto_a_file_that_already_is_the_point_is_ok_and_writes_nothing(repository, tmp_path):
    repo_dir, ids, expected = repository
    dest = str(tmp_path / 'again.raw')
    with restore.RestoreSource(repo_dir, ids[1]) as source:
        first = restore.restore_to_file(source, dest)
        inode = os.stat(dest).st_ino
        again = restore.restore_to_file(source, dest)  # the same task run twice
        assert first['changed'] is True and again['changed'] is False and again['already_restored'] is True
        assert os.stat(dest).st_ino == inode and again['bytes_written'] == 0
        with open(dest, 'r+b') as handle:  # one byte differs: no longer the point, refused without force
            handle.seek(len(expected[ids[1]]) - 1)
            handle.write(b'\x01' if expected[ids[1]][-1:] != b'\x01' else b'\x02')
        with pytest.raises(restore.RestoreError, match='already exists'):
            restore.restore_to_file(source, dest)
        other = restore.restore_to_file(source, dest, check_mode=True, force=True)
        assert other['changed'] is True
    assert read(dest) != expected[ids[1]]


def test_check_mode_writes_nothing(repository, tmp_path):
    repo_dir, ids, expected = repository
    dest = str(tmp_path / 'check.raw')
    with restore.RestoreSource(repo_dir, ids[1]) as source:
        result = restore.restore_to_file(source, dest, check_mode=True)
    assert result['changed'] and result['bytes_written'] == 0 and 0 < result['bytes_to_write'] < len(expected[ids[1]])
    assert not os.path.exists(dest)


def test_a_dest_that_is_not_a_regular_file_or_too_small_is_refused(repository, tmp_path, monkeypatch):
    repo_dir, ids, dummy = repository
    link = str(tmp_path / 'link.raw')
    os.symlink('/dev/null', link)
    with restore.RestoreSource(repo_dir, ids[0]) as source:
        with pytest.raises(restore.RestoreError, match='not a regular file'):
            restore.restore_to_file(source, link, force=True)

        class Full:
            f_bavail = 1
            f_frsize = 4096
        monkeypatch.setattr(restore.os, 'statvfs', lambda path: Full())
        with pytest.raises(restore.RestoreError, match='free; nothing was written'):
            restore.restore_to_file(source, str(tmp_path / 'nospace.raw'))
    assert not [name for name in os.listdir(str(tmp_path)) if 'nospace' in name]


def test_a_corrupt_chain_is_refused_naming_the_bad_point(repository, tmp_path):
    repo_dir, ids, dummy = repository
    with open(os.path.join(repo_dir, 'manifest.json')) as handle:
        manifest = json.load(handle)
    middle = [p for p in manifest['points'] if p['id'] == ids[1]][0]
    path = os.path.join(repo_dir, middle['file'])
    size = os.path.getsize(path)
    with open(path, 'r+b') as handle:  # flip a byte of a stored data cluster
        handle.seek(K64 + 100)
        byte = handle.read(1)
        handle.seek(K64 + 100)
        handle.write(bytes([byte[0] ^ 0xff]))
    assert os.path.getsize(path) == size
    for point in ids[1:]:
        with pytest.raises(restore.RestoreError) as info:
            restore.RestoreSource(repo_dir, point)
        assert ids[1] in str(info.value) and 'backup_verify' in str(info.value)
    # the full below it is still fine
    with restore.RestoreSource(repo_dir, ids[0]) as source:
        restore.restore_to_file(source, str(tmp_path / 'full.raw'))


def test_unknown_point_and_missing_repository(repository, tmp_path):
    repo_dir, dummy, dummy2 = repository
    with pytest.raises(restore.RestoreError, match='no restore point nope'):
        restore.RestoreSource(repo_dir, 'nope')
    with pytest.raises(restore.RestoreError, match='not a backup repository'):
        restore.RestoreSource(str(tmp_path / 'missing'))


def test_vhd_stream_is_the_point(repository, tmp_path):
    repo_dir, ids, expected = repository
    point = ids[-1]
    with restore.RestoreSource(repo_dir, point) as source:
        stream = source.vhd_stream()
        vhd_path = str(tmp_path / 'point.vhd')
        with open(vhd_path, 'wb') as handle:
            assert stream.write_to(handle) == stream.length
        allocated_blocks = set(off // (2 * MIB) for off in source.reader.iter_allocated())
    assert stream.blocks_present == len(allocated_blocks) < -(-len(expected[point]) // (2 * MIB)) + 1
    assert_vhd_is(vhd_path, expected[point], tmp_path)
    # onto an existing VDI every block must travel (zeros too), and it is still the same disk
    with restore.RestoreSource(repo_dir, point) as source:
        fmt, length, chunks, warning = source.upload_stream('vhd', overwrite=True)
        with open(vhd_path, 'wb') as handle:
            for chunk in chunks():
                handle.write(chunk)
    assert fmt == 'vhd' and warning is None and os.path.getsize(vhd_path) == length > len(expected[point])
    assert_vhd_is(vhd_path, expected[point], tmp_path)


def assert_vhd_is(vhd_path, data, tmp_path):
    checked = qemu_img('check', '-f', 'vpc', vhd_path, check=False)  # qemu's vpc driver has no checker (63)
    assert checked.returncode == 0 or (checked.returncode == 63 and 'does not support checks' in checked.stderr)
    out = str(tmp_path / 'from-vhd.raw')
    qemu_img('convert', '-f', 'vpc', '-O', 'raw', vhd_path, out)
    assert sha256(read(out)) == sha256(data)
    os.unlink(out)


def test_raw_chunks_are_the_whole_disk(repository):
    repo_dir, ids, expected = repository
    for point in ids:
        with restore.RestoreSource(repo_dir, point) as source:
            buf = io.BytesIO()
            for chunk in source.raw_chunks(chunk=3 * MIB):
                buf.write(chunk)
        assert sha256(buf.getvalue()) == sha256(expected[point])


def test_reader_matches_at_odd_offsets(repository):
    repo_dir, ids, expected = repository
    data = expected[ids[-1]]
    with restore.RestoreSource(repo_dir) as source:
        for offset, length in ((0, 1), (K64 - 3, 7), (MIB + 5, 3 * MIB), (len(data) - 700, 700), (0, len(data))):
            assert source.reader.read(offset, length) == data[offset:offset + length]


def test_format_choice():
    assert restore.choose_format(MIB) == ('vhd', None)
    assert restore.choose_format(MIB, 'raw') == ('raw', None)
    fmt, warning = restore.choose_format(MAX_VHD_SIZE + 512)
    assert fmt == 'raw' and '2040 GiB' in warning and 'raw' in warning
    with pytest.raises(restore.RestoreError):
        restore.choose_format(MIB, 'qcow2')


# -- upload into a VDI, against a small HTTP server and a fake XenAPI client ----------------------------------------

EXISTING_VDI = '33333333-3333-4333-8333-333333333333'


class FakeClient(FakeXenApi):
    """What _vdi_import uses of XenApiClient: url, session_id, TLS settings, timeout and calls on an SR, a VDI
    attached to a running VM, VDI.create/destroy and the import task, whose outcome is ``task_outcome``."""

    def __init__(self, url, task_outcome=('success', [])):
        super(FakeClient, self).__init__({
            'SR': {'OpaqueRef:sr': {'uuid': 'sr-uuid', 'name_label': 'Local storage', 'type': 'ext',
                                    'allowed_operations': ['vdi_create'], 'content_type': 'user'}},
            'VDI': {'OpaqueRef:existing': {'uuid': EXISTING_VDI, 'name_label': 'old disk', 'SR': 'OpaqueRef:sr',
                                           'virtual_size': None, 'is_a_snapshot': False, 'read_only': False,
                                           'type': 'user', 'VBDs': ['OpaqueRef:vbd'], 'managed': True}},
            'VBD': {'OpaqueRef:vbd': {'currently_attached': True, 'VM': 'OpaqueRef:vm'}},
            'VM': {'OpaqueRef:vm': {'name_label': 'vm1', 'power_state': 'Running'}},
            'task': {'OpaqueRef:task': {'status': task_outcome[0], 'error_info': task_outcome[1], 'result': ''}},
        })
        self.url = url
        self.session_id = 'OpaqueRef:secret-session'
        self.validate_certs = True
        self.ca_path = None
        self.timeout = 10

    def existing(self):
        return self.objects['VDI']['OpaqueRef:existing']

    def _VDI_create(self, record):
        self.objects['VDI']['OpaqueRef:new'] = dict(record, uuid='new-uuid', VBDs=[])
        return 'OpaqueRef:new'

    def _VDI_destroy(self, vdi):
        del self.objects['VDI'][vdi]
        return ''

    def _task_create(self, label, description):
        return 'OpaqueRef:task'

    def _task_destroy(self, task):
        return ''


@pytest.fixture
def http_import():
    """A plain HTTP server taking PUT /import_raw_vdi: records requests; ``status`` sets the answer."""
    state = {'status': 200, 'requests': []}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's naming
            length = int(self.headers['Content-Length'])
            body = self.rfile.read(length)
            state['requests'].append({'path': self.path, 'headers': dict(self.headers), 'body': body})
            self.send_response(state['status'])
            self.send_header('task-id', 'OpaqueRef:task')
            self.send_header('Connection', 'close')
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield 'http://127.0.0.1:%d' % server.server_address[1], state
    server.shutdown()
    server.server_close()


def test_upload_to_a_new_vdi_sends_the_vhd(repository, http_import, tmp_path):
    repo_dir, ids, expected = repository
    url, state = http_import
    client = FakeClient(url)
    with restore.RestoreSource(repo_dir) as source:
        result = _vdi_import.restore_to_vdi(client, source, sr='Local storage')
    request = state['requests'][0]
    assert request['path'].startswith('/import_raw_vdi?session_id=OpaqueRef%3Asecret-session&vdi=OpaqueRef%3Anew&format=vhd')
    assert 'task_id=OpaqueRef%3Atask' in request['path']
    assert int(request['headers']['Content-Length']) == len(request['body']) == result['bytes_sent'] == result['bytes_to_send']
    assert 'Transfer-Encoding' not in request['headers']
    assert result['vdi'] == {'uuid': 'new-uuid', 'name': 'disk0 (restored %s)' % ids[-1], 'sr': 'sr-uuid'}
    create = [c for c in client.calls if c[0] == 'VDI.create'][0][1]
    assert create['virtual_size'] == str(len(expected[ids[-1]])) and create['type'] == 'user'
    vhd_path = str(tmp_path / 'sent.vhd')
    with open(vhd_path, 'wb') as handle:
        handle.write(request['body'])
    assert_vhd_is(vhd_path, expected[ids[-1]], tmp_path)
    assert ('task.destroy', 'OpaqueRef:task') in client.calls


def test_a_failed_upload_destroys_the_new_vdi(repository, http_import):
    repo_dir, dummy, dummy2 = repository
    url, dummy3 = http_import
    client = FakeClient(url, task_outcome=('failure', ['VDI_IO_ERROR', 'Device I/O errors']))
    with restore.RestoreSource(repo_dir) as source:
        with pytest.raises(XenApiError) as info:
            _vdi_import.restore_to_vdi(client, source, sr='Local storage', fmt='raw')
    assert info.value.code == 'VDI_IO_ERROR'
    assert 'new-uuid was destroyed' in info.value.message
    assert ('VDI.destroy', 'OpaqueRef:new') in client.calls


def test_an_upload_reports_its_progress_and_stops_when_cancelled(repository, http_import):
    repo_dir, dummy, dummy2 = repository
    url, state = http_import
    tracker = _progress.DiskProgress('vm/disk0')
    with restore.RestoreSource(repo_dir) as source:
        result = _vdi_import.restore_to_vdi(FakeClient(url), source, sr='Local storage', progress=tracker)
    entry = tracker.entry()
    assert entry['bytes_total'] == result['bytes_to_send'] == entry['bytes_done'] == len(state['requests'][0]['body'])

    cancel = _progress.Cancellation()
    cancel.cancel('the lease expired')
    client = FakeClient(url)
    with restore.RestoreSource(repo_dir) as source:
        with pytest.raises(Cancelled) as info:
            _vdi_import.restore_to_vdi(client, source, sr='Local storage', cancel=cancel)
    assert info.value.code == 'CANCELLED' and 'the lease expired' in info.value.message
    assert 'new-uuid was destroyed' in info.value.message  # no half-restored disk is left
    assert ('VDI.destroy', 'OpaqueRef:new') in client.calls


def test_a_refused_session_is_explained_without_the_session_id(repository, http_import):
    repo_dir, dummy, expected = repository
    url, state = http_import
    state['status'] = 401
    client = FakeClient(url, task_outcome=('failure', ['SESSION_AUTHENTICATION_FAILED']))
    client.existing()['virtual_size'] = str(len(list(expected.values())[0]))
    with restore.RestoreSource(repo_dir) as source:
        with pytest.raises(XenApiError) as info:
            _vdi_import.restore_to_vdi(client, source, vdi=EXISTING_VDI, force=True)
    assert info.value.code == 'SESSION_INVALID' and 'log in again' in info.value.message
    assert 'secret-session' not in info.value.message
    assert 'does not hold restore point' in info.value.message
    assert not [c for c in client.calls if c[0] == 'VDI.destroy']


def test_an_existing_vdi_must_match_and_be_free(repository, http_import):
    repo_dir, dummy, expected = repository
    url, state = http_import
    client = FakeClient(url)
    size = len(list(expected.values())[0])
    client.existing()['virtual_size'] = str(size + 512)
    with restore.RestoreSource(repo_dir) as source:
        with pytest.raises(XenApiError) as info:
            _vdi_import.restore_to_vdi(client, source, vdi=EXISTING_VDI)
        assert info.value.code == 'VDI_SIZE_MISMATCH'
        client.existing()['virtual_size'] = str(size)
        with pytest.raises(XenApiError) as info:
            _vdi_import.restore_to_vdi(client, source, vdi=EXISTING_VDI)
        assert info.value.code == 'VDI_IN_USE' and 'vm1 (Running)' in info.value.message
        result = _vdi_import.restore_to_vdi(client, source, vdi=EXISTING_VDI, check_mode=True, force=True)
    assert result['bytes_sent'] == 0 and result['bytes_to_send'] > size and not state['requests']


def test_a_read_failure_during_the_upload_destroys_the_new_vdi(repository, http_import, monkeypatch):
    repo_dir, dummy, dummy2 = repository
    url, dummy3 = http_import
    client = FakeClient(url)
    with restore.RestoreSource(repo_dir) as source:
        def broken(view, run):
            raise OSError(5, 'Input/output error')
        monkeypatch.setattr(source.reader, 'read_run_into', broken)
        with pytest.raises(XenApiError) as info:
            _vdi_import.restore_to_vdi(client, source, sr='Local storage', fmt='raw')
    assert info.value.code == 'RESTORE_READ_FAILED'
    assert 'Input/output error' in info.value.message and 'new-uuid was destroyed' in info.value.message
    assert ('VDI.destroy', 'OpaqueRef:new') in client.calls


def _replace_like_prune(repo_dir, point_id):
    """What backup_prune does to a point: a new file renamed over it, then the manifest updated (here the
    new file is the old one plus trailing padding, so the disk content stays the same)."""
    with store.Repository(repo_dir, write=True) as repo:
        point = repo.point(point_id)
        path = repo.file_path(point)
        temp = path + '.partial-test'
        with open(path, 'rb') as src, open(temp, 'wb') as dst:
            dst.write(src.read() + bytes(512))
        os.rename(temp, path)
        point['sha256'] = store.file_sha256(path)
        point['file_size'] = os.path.getsize(path)
        repo.save()


def test_a_point_file_replaced_while_opening_is_retried(repository, tmp_path, monkeypatch):
    repo_dir, ids, expected = repository
    real = restore.fd_sha256
    calls = []

    def racing_sha256(fd):
        calls.append(fd)
        if len(calls) == 1:  # prune replaces the full after the restore hashed the pinned (old) file
            _replace_like_prune(repo_dir, ids[0])
        return real(fd)
    monkeypatch.setattr(restore, 'fd_sha256', racing_sha256)
    with restore.RestoreSource(repo_dir) as source:
        assert source.verified
        dest = str(tmp_path / 'raced.raw')
        restore.restore_to_file(source, dest)
    assert read(dest) == expected[ids[-1]]
    assert len(calls) > len(ids)  # hashed again after the retry


def test_a_pending_merge_journal_vouches_for_the_merged_file(repository, tmp_path):
    repo_dir, ids, expected = repository
    with store.Repository(repo_dir, write=True) as repo:
        old_sha = repo.point(ids[0])['sha256']
    _replace_like_prune(repo_dir, ids[0])
    with store.Repository(repo_dir, write=True) as repo:  # renamed, but the manifest not yet updated: the journal says so
        point = repo.point(ids[0])
        repo.manifest['pending_merge'] = {'point': ids[0], 'sha256': point['sha256']}
        point['sha256'] = old_sha
        repo.save()
    with restore.RestoreSource(repo_dir, ids[1]) as source:
        restore.restore_to_file(source, str(tmp_path / 'journal.raw'))
    assert read(str(tmp_path / 'journal.raw')) == expected[ids[1]]


def test_a_point_merged_forward_before_the_manifest_says_so(repository, tmp_path):
    """backup_prune step 3 done, step 4 not: the incremental's file is already a standalone full of the same disk."""
    repo_dir, ids, expected = repository
    with store.Repository(repo_dir, write=True) as repo:
        point = repo.point(ids[1])
        path = repo.file_path(point)
        out = AtomicFile(path, prefix=store.PARTIAL_MARK)
        writer = Qcow2Writer(out.fd, len(expected[ids[1]]))
        data = expected[ids[1]]
        writer(0, memoryview(bytes(data)))
        written = writer.finish()
        out.commit()
        repo.manifest['pending_merge'] = {'point': ids[1], 'sha256': store.file_sha256(path), 'blocks_digest': written.digest,
                                          'blocks': written.clusters_stored, 'bytes': written.bytes_stored,
                                          'file_size': written.file_size}
        repo.save()
    for point in ids[1:]:
        dest = str(tmp_path / ('merged-%s.raw' % point))
        with restore.RestoreSource(repo_dir, point) as source:
            result = restore.restore_to_file(source, dest)
        assert result['chain'][-1] == ids[1]  # the chain ends at the merged file: the old full is not read
        assert read(dest) == expected[point]


def test_a_file_naming_another_backing_file_is_refused(repository):
    repo_dir, ids, dummy = repository
    with store.Repository(repo_dir, write=True) as repo:  # the manifest claims another parent than the file names
        repo.point(ids[2])['parent'] = ids[0]
        repo.save()
    with pytest.raises(restore.RestoreError, match='backing file'):
        restore.RestoreSource(repo_dir, ids[2])


def test_without_kernel_copies_the_buffered_path_gives_the_same_file(repository, tmp_path, monkeypatch):
    repo_dir, ids, expected = repository
    calls = []

    def no_kernel_copy(*args):
        calls.append(args)
        raise OSError(errno.EXDEV, 'Invalid cross-device link')
    monkeypatch.setattr(restore.os, 'copy_file_range', no_kernel_copy, raising=False)
    dest = str(tmp_path / 'buffered.raw')
    with restore.RestoreSource(repo_dir) as source:
        restore.restore_to_file(source, dest)
    assert read(dest) == expected[ids[-1]]
    assert len(calls) == 1  # tried once, then the buffered path for the rest
