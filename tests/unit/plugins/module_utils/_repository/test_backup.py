# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore points exported from a real NBD server into a repository, checked with qemu-img."""

from __future__ import absolute_import, division, print_function

import json
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import errors
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Image
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    assert_qcow2_clean, assert_same_as_raw,
)

__metaclass__ = type

pytestmark = pytest.mark.interop
K64 = 64 * 1024


@pytest.fixture
def served(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 3 * 1024 * 1024 + 512, seed=31)
    server = nbd_server_factory('nbdkit-tls', image.path)
    return server, image


def target(server):
    return _export.make_target(server.nbd_info(), tls=True, timeout=10)


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def snapshot_info(n):
    return {'uuid': 'snap-%d' % n, 'snapshot_of': 'disk-uuid', 'name': 'disk0', 'time': '2026112%dT10:00:00Z' % n}


def test_full_then_incrementals_are_a_qcow2_chain(served, tmp_path):
    server, image = served
    repo_dir = str(tmp_path / 'repo')
    result = backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1))
    full = result['point']
    assert result['point_type'] == 'full' and full['parent'] is None
    expected = [read(image.path)]

    for n in (2, 3):
        changed = rewrite_random_blocks(image.path, 5, seed=n)
        zeroed = image.data_blocks[n]  # a block that becomes zero must shadow the older data
        with open(image.path, 'r+b') as handle:
            handle.seek(zeroed * K64)
            handle.write(bytes(K64))
        changed = sorted(set(changed) | {zeroed})
        result = backup.export_to_repository(target(server), repo_dir, changed_blocks=_cbt.encode(changed, image.size),
                                             snapshot=snapshot_info(n), base_uuid='snap-%d' % (n - 1))
        assert result['point_type'] == 'incremental'
        assert result['point']['blocks'] == len(changed)
        assert result['bytes_read'] <= len(changed) * K64
        expected.append(read(image.path))

    with open(os.path.join(repo_dir, 'manifest.json')) as handle:
        manifest = json.load(handle)
    assert manifest['cbt_anchor'] == 'snap-3'
    points = manifest['points']
    assert [p['type'] for p in points] == ['full', 'incremental', 'incremental']
    assert [p['parent'] for p in points] == [None, points[0]['id'], points[1]['id']]
    for point, content in zip(points, expected):
        path = os.path.join(repo_dir, point['file'])
        assert_qcow2_clean(path)
        assert_same_as_raw(path, content, tmp_path)
        assert store.file_sha256(path) == point['sha256']
        with Qcow2Image(path) as qcow:
            assert qcow.digest() == point['blocks_digest']
    assert sorted(os.listdir(repo_dir)) == sorted([p['file'] for p in points] + ['manifest.json', 'manifest.json.prev', '.xenserver-cbt-backup', '.lock'])


def test_incremental_needs_the_matching_anchor(served, tmp_path):
    server, image = served
    repo_dir = str(tmp_path / 'repo')
    bitmap = _cbt.encode([1], image.size)
    with pytest.raises(store.RepositoryError, match='no restore point'):
        backup.export_to_repository(target(server), repo_dir, changed_blocks=bitmap, base_uuid='snap-0')
    backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1))
    before = read(os.path.join(repo_dir, 'manifest.json'))
    with pytest.raises(store.RepositoryError, match='Take a full backup'):
        backup.export_to_repository(target(server), repo_dir, changed_blocks=bitmap, snapshot=snapshot_info(2),
                                    base_uuid='some-other-snapshot')
    assert read(os.path.join(repo_dir, 'manifest.json')) == before


def test_check_mode_writes_nothing(served, tmp_path):
    server, image = served
    repo_dir = str(tmp_path / 'repo')
    result = backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1), check_mode=True)
    assert result['point_type'] == 'full' and result['bytes_to_read'] == image.size
    assert not os.path.exists(repo_dir)


def test_interrupted_export_is_never_a_restore_point(served, tmp_path, monkeypatch):
    server, image = served
    repo_dir = str(tmp_path / 'repo')
    backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1))
    points_before = json.loads(read(os.path.join(repo_dir, 'manifest.json')))['points']
    # A file that looks like a leftover of a run, but that no run journaled (made by hand, or by another tool).
    stranger = os.path.join(repo_dir, '.20261125T000000Z-incr.qcow2.partial-abc123')
    with open(stranger, 'wb') as handle:
        handle.write(b'half a point')

    real_read = _export.ExtentReader.read

    def failing_read(self, extents, sink):
        real_read(self, extents[:1], sink)
        raise errors.NbdConnectionLost('connection to the server broke (test)')
    monkeypatch.setattr(_export.ExtentReader, 'read', failing_read)
    with pytest.raises(errors.NbdConnectionLost):
        backup.export_to_repository(target(server), repo_dir, changed_blocks=_cbt.encode([0, 5], image.size),
                                    snapshot=snapshot_info(2), base_uuid='snap-1')
    monkeypatch.undo()
    # The failed run recorded no point and removed its own temporary file; the stranger is kept.
    manifest = json.loads(read(os.path.join(repo_dir, 'manifest.json')))
    assert manifest['points'] == points_before and manifest['cbt_anchor'] == 'snap-1'
    assert [name for name in os.listdir(repo_dir) if store.PARTIAL_MARK in name] == [os.path.basename(stranger)]
    # The next run works, clears the failed run's journal entry, and reports (never deletes) the stranger.
    result = backup.export_to_repository(target(server), repo_dir, changed_blocks=_cbt.encode([0], image.size),
                                         snapshot=snapshot_info(2), base_uuid='snap-1')
    assert result['cleaned_up'] == [] and result['point']['parent'] is not None
    assert any(os.path.basename(stranger) in text for text in result['warnings'])
    assert read(stranger) == b'half a point'
    assert not json.loads(read(os.path.join(repo_dir, 'manifest.json'))).get('pending_files')


def test_a_second_writer_is_refused(served, tmp_path):
    server, dummy = served
    repo_dir = str(tmp_path / 'repo')
    with store.Repository(repo_dir, write=True, create=True):
        with pytest.raises(store.RepositoryError, match='another run'):
            backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1))


def test_a_manifest_write_killed_midway_is_a_leftover(served, tmp_path):
    # The manifest is written to .manifest.json.partial and renamed: a kill during the write leaves the old
    # manifest in place and a partial file that the next save overwrites and renames.
    server, dummy = served
    repo_dir = str(tmp_path / 'repo')
    backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1))
    manifest = read(os.path.join(repo_dir, 'manifest.json'))
    partial = os.path.join(repo_dir, store.MANIFEST_TEMP)
    with open(partial, 'wb') as handle:
        handle.write(manifest[:len(manifest) // 2])
    with store.Repository(repo_dir) as repo:
        assert [p['snapshot_uuid'] for p in repo.points] == ['snap-1']
        assert repo.leftovers() == [] and repo.unknown_files() == []
    result = backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(2))
    assert result['cleaned_up'] == [] and not result['warnings']
    assert not os.path.exists(partial)
