# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Listing and verifying repositories exported from a real NBD server, with damage injected."""

from __future__ import absolute_import, division, print_function

import datetime
import json
import os
import random
import shutil

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, inspection, store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Image
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks

__metaclass__ = type

pytestmark = pytest.mark.interop
K64 = 64 * 1024


def target(server):
    return _export.make_target(server.nbd_info(), tls=True, timeout=10)


def snapshot_info(n):
    return {'uuid': 'snap-%d' % n, 'snapshot_of': 'disk-uuid', 'name': 'disk0', 'time': '2026112%dT10:00:00Z' % n}


@pytest.fixture
def chain(nbd_server_factory, tmp_path):
    """A repository with a full and two incrementals; returns (repo_dir, points, server, image)."""
    image = make_disk_image(tmp_path / 'src.raw', 3 * 1024 * 1024 + 512, seed=41)
    server = nbd_server_factory('nbdkit-tls', image.path)
    repo_dir = str(tmp_path / 'backups' / 'vm1' / 'disk0')
    backup.export_to_repository(target(server), repo_dir, snapshot=snapshot_info(1))
    for n in (2, 3):
        changed = rewrite_random_blocks(image.path, 5, seed=n)
        backup.export_to_repository(target(server), repo_dir, changed_blocks=_cbt.encode(changed, image.size),
                                    snapshot=snapshot_info(n), base_uuid='snap-%d' % (n - 1))
    with store.Repository(repo_dir) as repo:
        points = list(repo.points)
    assert [p['type'] for p in points] == ['full', 'incremental', 'incremental']
    return repo_dir, points, server, image


def manifest_path(repo_dir):
    return os.path.join(repo_dir, 'manifest.json')


def edit_manifest(repo_dir, change):
    with open(manifest_path(repo_dir)) as handle:
        manifest = json.load(handle)
    change(manifest)
    with open(manifest_path(repo_dir), 'w') as handle:
        json.dump(manifest, handle)


def ids(points):
    return [p['id'] for p in points]


def test_a_clean_chain_verifies(chain):
    repo_dir, points, dummy, dummy2 = chain
    result = inspection.verify_repository(repo_dir)
    assert result['ok'] is True
    assert result['first_bad'] is None and result['affected'] == []
    assert [p['id'] for p in result['points']] == ids(points)
    assert all(p['ok'] and p['problems'] == [] for p in result['points'])
    assert 'all 3 restore points' in result['message']


def test_verify_needs_no_lock_and_ignores_a_run_in_progress(chain):
    repo_dir, dummy, dummy2, dummy3 = chain
    partial = os.path.join(repo_dir, '.20991231T000000Z-incr.qcow2.partial-abc')
    with open(partial, 'wb') as handle:
        handle.write(b'half a point')
    with store.Repository(repo_dir, write=True):  # a backup run holds the lock
        result = inspection.verify_repository(repo_dir)
        info = inspection.list_repositories(repo_dir)
    assert result['ok'] is True
    # made by hand, not journaled by a run: reported as unknown, never a leftover to delete
    assert result['unknown_files'] == [os.path.basename(partial)] and result['leftovers'] == []
    assert info['repositories'][0]['unknown_files'] == [os.path.basename(partial)]
    assert os.path.exists(partial)


def test_a_corrupt_byte_in_a_stored_block(chain):
    repo_dir, points, dummy, dummy2 = chain
    middle = points[1]
    path = os.path.join(repo_dir, middle['file'])
    with Qcow2Image(path) as image:
        assert list(image.allocated_clusters())
    # The writer puts guest data in the clusters right after the header cluster: cluster 1 is stored data.
    with open(path, 'r+b') as handle:
        handle.seek(K64 + 1234)
        byte = handle.read(1)
        handle.seek(K64 + 1234)
        handle.write(bytes([byte[0] ^ 0x40]))
    result = inspection.verify_repository(repo_dir)
    assert result['ok'] is False
    assert result['first_bad'] == middle['id']
    assert result['affected'] == [middle['id'], points[2]['id']]
    by_id = dict((p['id'], p) for p in result['points'])
    assert by_id[points[0]['id']]['ok'] and by_id[points[2]['id']]['ok']
    problems = ' | '.join(by_id[middle['id']]['problems'])
    assert 'sha256' in problems and 'digest of the stored blocks' in problems
    assert 'qcow2 structure' not in problems
    assert middle['id'] in result['message'] and points[2]['id'] in result['message']
    assert 'cannot be trusted' in result['message']


def test_a_structure_check_reads_no_data_and_a_full_one_reads_each_byte_once(chain, monkeypatch):
    repo_dir, points, dummy, dummy2 = chain
    sizes = dict((os.path.join(repo_dir, p['file']), p['file_size']) for p in points)
    read = {}
    real_pread, real_open = os.pread, os.open
    paths = {}

    def counting_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        paths[fd] = os.path.abspath(path) if isinstance(path, str) else path
        return fd

    def counting_pread(fd, length, offset):
        data = real_pread(fd, length, offset)
        read[paths.get(fd)] = read.get(paths.get(fd), 0) + len(data)
        return data
    monkeypatch.setattr(os, 'open', counting_open)
    monkeypatch.setattr(os, 'pread', counting_pread)
    result = inspection.verify_repository(repo_dir)
    assert result['ok'] and result['data_read']
    for path, size in sizes.items():
        # each byte once, plus the header and tables the structure check reads again (a few clusters a file)
        assert size <= read[path] <= 1.05 * size + 12 * K64, (path, read[path], size)
    read.clear()
    quick = inspection.verify_repository(repo_dir, read_data=False)
    assert quick['ok'] and not quick['data_read']
    for path, size in sizes.items():
        assert read[path] < 4 * 1024 * 1024 + 8 * K64 and read[path] < size, (path, read[path], size)
    # A changed data byte goes unseen by the structure check and is found by the full one.
    path = os.path.join(repo_dir, points[0]['file'])
    with open(path, 'r+b') as handle:
        handle.seek(K64 + 99)
        byte = handle.read(1)
        handle.seek(K64 + 99)
        handle.write(bytes([byte[0] ^ 1]))
    assert inspection.verify_repository(repo_dir, read_data=False)['ok'] is True
    assert inspection.verify_repository(repo_dir)['first_bad'] == points[0]['id']


def test_a_truncated_file(chain):
    repo_dir, points, dummy, dummy2 = chain
    newest = points[2]
    path = os.path.join(repo_dir, newest['file'])
    with open(path, 'r+b') as handle:
        handle.truncate(os.path.getsize(path) // 2)
    result = inspection.verify_repository(repo_dir)
    assert result['first_bad'] == newest['id'] and result['affected'] == [newest['id']]
    problems = ' | '.join(result['points'][2]['problems'])
    assert 'truncated' in problems and 'sha256' in problems
    assert result['points'][0]['ok'] and result['points'][1]['ok']


def test_a_missing_file(chain):
    repo_dir, points, dummy, dummy2 = chain
    os.unlink(os.path.join(repo_dir, points[1]['file']))
    result = inspection.verify_repository(repo_dir)
    assert result['first_bad'] == points[1]['id']
    assert result['affected'] == ids(points[1:])
    assert result['points'][1]['problems'] == ['its file %s is missing' % points[1]['file']]


def test_a_parent_missing_from_the_manifest(chain):
    repo_dir, points, dummy, dummy2 = chain
    edit_manifest(repo_dir, lambda m: m['points'].pop(1))
    result = inspection.verify_repository(repo_dir)
    assert result['first_bad'] == points[2]['id']
    assert result['affected'] == [points[2]['id']]
    assert any('parent %s is not listed' % points[1]['id'] in text for text in result['points'][1]['problems'])
    # the unlisted file is not a restore point, and nobody journaled it: reported, never cleaned up
    assert result['leftovers'] == [] and result['unknown_files'] == [points[1]['file']]
    info = inspection.list_repositories(repo_dir)['repositories'][0]
    assert [p['chain_length'] for p in info['points']] == [1, None]


def test_a_wrong_backing_file_name(chain):
    repo_dir, points, dummy, dummy2 = chain
    newest = points[2]
    path = os.path.join(repo_dir, newest['file'])
    with Qcow2Image(path) as image:
        offset, length = image.header.backing_file_offset, image.header.backing_file_size
        assert image.backing_file == points[1]['file']
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        handle.write(b'x' * (length - 6) + b'.qcow2')
    sha = store.file_sha256(path)

    def update(manifest):
        manifest['points'][2]['sha256'] = sha
    edit_manifest(repo_dir, update)
    result = inspection.verify_repository(repo_dir)
    assert result['first_bad'] == newest['id']
    assert result['points'][2]['problems'] == [
        "its backing file is %s but its parent's file is %s" % ('x' * (length - 6) + '.qcow2', points[1]['file'])]


def test_a_full_with_a_backing_file_and_a_size_change_are_reported(chain):
    repo_dir, points, dummy, dummy2 = chain

    def update(manifest):
        manifest['points'][1]['type'] = 'full'
        manifest['points'][1]['parent'] = None
        manifest['points'][2]['virtual_size'] += 512
    edit_manifest(repo_dir, update)
    result = inspection.verify_repository(repo_dir)
    problems = ' | '.join(result['points'][1]['problems'])
    assert 'backing file' in problems and 'listed without a parent' in problems
    assert 'virtual size' in ' | '.join(result['points'][2]['problems'])
    assert result['first_bad'] == points[1]['id']


def test_verify_one_point_checks_its_chain(chain):
    repo_dir, points, dummy, dummy2 = chain
    result = inspection.verify_repository(repo_dir, point=points[1]['id'])
    assert [p['id'] for p in result['points']] == ids(points[:2]) and result['ok']
    os.unlink(os.path.join(repo_dir, points[0]['file']))
    result = inspection.verify_repository(repo_dir, point='latest')
    assert result['first_bad'] == points[0]['id'] and result['affected'] == ids(points)
    with pytest.raises(store.RepositoryError, match='no restore point nope'):
        inspection.verify_repository(repo_dir, point='nope')


def test_verify_a_damaged_manifest_or_missing_repository(chain, tmp_path):
    repo_dir, dummy, dummy2, dummy3 = chain
    for name in ('manifest.json', 'manifest.json.prev'):
        with open(os.path.join(repo_dir, name), 'w') as handle:
            handle.write('{"points": [')
    with pytest.raises(store.RepositoryError, match='damaged') as raised:
        inspection.verify_repository(repo_dir)
    assert raised.value.code == 'REPOSITORY_DAMAGED' and 'rebuild_manifest' in str(raised.value)
    with pytest.raises(store.RepositoryError, match='no such directory'):
        inspection.verify_repository(str(tmp_path / 'nowhere'))
    with pytest.raises(store.RepositoryError, match='not a backup repository'):
        inspection.verify_repository(str(tmp_path / 'backups'))


def test_a_file_name_outside_the_repository(chain):
    repo_dir, points, dummy, dummy2 = chain

    def update(manifest):
        manifest['points'][0]['file'] = '../' + manifest['points'][0]['file']
    edit_manifest(repo_dir, update)
    result = inspection.verify_repository(repo_dir)
    # load() refuses the damaged manifest and reads manifest.json.prev (the chain without its newest point)
    assert result['ok'] is False and result['manifest_damaged'] is True
    assert 'points[0].file' in result['message'] and 'not a plain file name' in result['message']
    assert 'manifest.json.prev' in result['message'] and 'rebuild_manifest' in result['message']
    assert ids(result['points']) == ids(points[:2]) and all(p['ok'] for p in result['points'])
    os.unlink(os.path.join(repo_dir, 'manifest.json.prev'))
    with pytest.raises(store.RepositoryError, match='not a plain file name') as raised:
        inspection.verify_repository(repo_dir)
    assert raised.value.code == 'REPOSITORY_DAMAGED'


def test_backup_info_over_a_tree(chain, tmp_path):
    repo_dir, points, dummy, dummy2 = chain
    root = str(tmp_path / 'backups')
    other = os.path.join(root, 'vm2', 'disk0')
    shutil.copytree(repo_dir, other)
    damaged = os.path.join(root, 'vm3', 'disk0')
    os.makedirs(damaged)
    with open(manifest_path(damaged), 'w') as handle:
        handle.write('not json')
    os.makedirs(os.path.join(root, 'empty', 'dir'))
    too_deep = os.path.join(root, 'a', 'b', 'c', 'd', 'e')
    shutil.copytree(repo_dir, too_deep)

    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    result = inspection.list_repositories(root, now=later)
    repos = result['repositories']
    assert [r['path'] for r in repos] == sorted([repo_dir, other, damaged])
    by_path = dict((r['path'], r) for r in repos)
    assert 'damaged' in by_path[damaged]['error'] and 'points' not in by_path[damaged]
    for path in (repo_dir, other):
        info = by_path[path]
        assert 'error' not in info
        assert info['disk']['vdi_uuid'] == 'disk-uuid' and info['cbt_anchor'] == 'snap-3'
        assert [p['id'] for p in info['points']] == ids(points)
        assert [p['chain_length'] for p in info['points']] == [1, 2, 3]
        assert [p['parent'] for p in info['points']] == [None] + ids(points[:2])
        assert [p['snapshot_time'] for p in info['points']] == [p['snapshot_time'] for p in points]
        assert [p['run'] for p in info['points']] == [p['snapshot_time'] for p in points], 'no run: the snapshot time'
        for listed in info['points']:
            assert listed['file_size'] == os.path.getsize(os.path.join(path, listed['file']))
            assert 3600 - 120 <= listed['age_seconds'] <= 3600 + 5
            assert 0 < listed['bytes'] <= listed['blocks'] * K64 and listed['bytes'] < listed['file_size']
            assert listed['virtual_size'] == 3 * 1024 * 1024 + 512
        assert info['total_bytes'] == sum(p['file_size'] for p in info['points'])
        assert info['newest'] == points[2]['id'] and info['leftovers'] == []
    assert inspection.list_repositories(root, max_depth=5)['repositories'][0]['path'] == os.path.join(root, 'a', 'b', 'c', 'd', 'e')
    # A repository directory itself.
    assert [r['path'] for r in inspection.list_repositories(repo_dir)['repositories']] == [repo_dir]
    with pytest.raises(store.RepositoryError, match='does not exist'):
        inspection.list_repositories(str(tmp_path / 'nowhere'))


def test_spot_check_against_the_live_export(chain):
    repo_dir, points, server, image = chain

    def open_connection():
        return NbdConnection.open(target(server))
    total = -(-image.size // K64)
    result = inspection.spot_check(repo_dir, 'latest', open_connection, 8, rng=random.Random(5))
    assert result['ok'] is True and result['checked'] == 8 and result['mismatches'] == []
    assert result['point'] == points[2]['id']
    # The disk moved on: every block is compared, exactly the rewritten ones differ.
    changed = rewrite_random_blocks(image.path, 3, seed=99)
    result = inspection.spot_check(repo_dir, 'latest', open_connection, total + 10, rng=random.Random(1))
    assert result['checked'] == total
    assert result['mismatches'] == [i * K64 for i in changed] and result['ok'] is False
    assert 'cannot be trusted' in result['message']
    # An older point differs from the current disk.
    result = inspection.spot_check(repo_dir, points[0]['id'], open_connection, total, rng=random.Random(2))
    assert result['ok'] is False
