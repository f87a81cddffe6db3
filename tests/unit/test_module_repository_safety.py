# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Never lose a restore point: foreign files, lost and damaged manifests, a full disk, odd sizes (issue 10).

Every case runs the modules through Ansible against real NBD servers and checks, by bytes, that nothing
the collection did not write was deleted and that every point listed before still restores.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import shutil

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import store
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.full_disk import fill
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    assert_same_as_raw,
)

__metaclass__ = type

pytestmark = pytest.mark.interop

SIZE = 2 * 1024 * 1024
DAMAGED_SHAPES = [
    ('a JSON list', '[]', 'the top level is a list'),
    ('null', 'null', 'the top level is null'),
    ('no points', '{"format": "xenserver.cbt_backup repository", "version": 1}', 'points: missing'),
    ('points not a list', '{"format": "xenserver.cbt_backup repository", "version": 1, "points": "x"}',
     'points: a string, expected a list'),
    ('a point without file', '{"format": "xenserver.cbt_backup repository", "version": 1, "points": [{"id": "a", '
     '"type": "full", "time": "2026-01-01T00:00:00Z", "virtual_size": 512}]}', 'points[0].file: missing'),
    ('truncated', '{"format": "xenserver.cbt_backup repository", "points": [', 'not valid JSON'),
]


def tree(path):
    """{name: sha256} of every file in a directory (what 'nothing changed' means)."""
    found = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), 'rb') as handle:
            found[name] = hashlib.sha256(handle.read()).hexdigest()
    return found


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


@pytest.fixture
def disk(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', SIZE, seed=77)
    server = nbd_server_factory('nbdkit-tls', image.path)
    return server, image


def export(server, repo_dir, tmp_path, changed=None, image=None, check=False):
    args = {'nbd': server.nbd_info(), 'repository': repo_dir}
    if changed is not None:
        args['changed_blocks'] = _cbt.encode(changed, image.size)
    return run_module('vdi_export', args, tmp_path, check=check)


def build(server, image, repo_dir, tmp_path, incrementals=2):
    """A full and incrementals through vdi_export; returns the list of disk contents, oldest first."""
    result, output = export(server, repo_dir, tmp_path)
    assert result['failed'] is False, output
    contents = [read(image.path)]
    for n in range(incrementals):
        changed = rewrite_random_blocks(image.path, 3, seed=n + 5)
        result, output = export(server, repo_dir, tmp_path, changed=changed, image=image)
        assert result['failed'] is False and result['point_type'] == 'incremental', output
        contents.append(read(image.path))
    return contents


def point_ids(repo_dir):
    with open(os.path.join(repo_dir, 'manifest.json')) as handle:
        return [p['id'] for p in json.load(handle)['points']]


def assert_restores(repo_dir, ids, contents, tmp_path):
    """Every point restores, through vdi_restore, to exactly its disk content."""
    for ident, content in zip(ids, contents):
        dest = str(tmp_path / ('restored-%s.raw' % ident))
        result, output = run_module('vdi_restore', {'repository': repo_dir, 'point': ident, 'dest': dest,
                                                    'format': 'raw'}, tmp_path)
        assert result['failed'] is False, output
        assert read(dest) == content
        os.unlink(dest)
    for ident, content in zip(ids, contents):  # qemu-img reads the points as the same disks
        assert_same_as_raw(os.path.join(repo_dir, ident + '.qcow2'), content, tmp_path)


def assert_clean_failure(result, output, code):
    assert result['failed'] is True, output
    assert result.get('error_code') == code, result
    assert 'Traceback' not in output and 'Traceback' not in result.get('msg', '')


# -- 1. a directory that holds other images -------------------------------------------------------------

def test_a_directory_with_foreign_images_is_refused_and_untouched(disk, tmp_path):
    server, dummy = disk
    repo_dir = str(tmp_path / 'images')
    os.makedirs(repo_dir)
    with open(os.path.join(repo_dir, 'web01.qcow2'), 'wb') as handle:
        handle.write(b'QFI\xfb not ours')
    with open(os.path.join(repo_dir, '.20260101T000000Z-full.qcow2.partial-x'), 'wb') as handle:
        handle.write(b'looks like ours, is not')
    before = tree(repo_dir)
    for check in (True, False):
        result, output = export(server, repo_dir, tmp_path, check=check)
        assert_clean_failure(result, output, 'REPOSITORY_FOREIGN')
        assert 'web01.qcow2' in result['msg'] and 'Nothing was changed' in result['msg']
    result, output = run_module('backup_prune', {'repository': repo_dir, 'keep_last': 1}, tmp_path)
    assert_clean_failure(result, output, 'REPOSITORY_FOREIGN')
    assert tree(repo_dir) == before


def test_foreign_files_inside_a_repository_are_reported_never_deleted(disk, tmp_path):
    server, image = disk
    repo_dir = str(tmp_path / 'repo')
    contents = build(server, image, repo_dir, tmp_path, incrementals=1)
    strangers = {'web01.qcow2': b'someone else\'s image', '20260101T000000Z-full.qcow2': b'a point nobody recorded',
                 '.20260101T000000Z-incr.qcow2.partial-abc': b'half of nothing'}
    for name, data in strangers.items():
        with open(os.path.join(repo_dir, name), 'wb') as handle:
            handle.write(data)
    changed = rewrite_random_blocks(image.path, 2, seed=99)
    result, output = export(server, repo_dir, tmp_path, changed=changed, image=image)
    assert result['failed'] is False, output
    contents.append(read(image.path))
    assert result['cleaned_up'] == []
    assert 'did not write' in output and 'web01.qcow2' in output
    result, output = run_module('backup_prune', {'repository': repo_dir, 'keep_last': 1}, tmp_path)
    assert result['failed'] is False, output
    assert sorted(result['unknown_files']) == sorted(strangers)
    for name, data in strangers.items():
        assert read(os.path.join(repo_dir, name)) == data
    assert_restores(repo_dir, point_ids(repo_dir), contents[-1:], tmp_path)


# -- 2. a lost manifest, and rebuilding it ---------------------------------------------------------------

@pytest.mark.parametrize('lose_previous', [False, True], ids=['manifest', 'manifest-and-prev'])
def test_a_deleted_manifest_deletes_nothing_and_is_rebuilt(disk, tmp_path, lose_previous):
    server, image = disk
    repo_dir = str(tmp_path / 'repo')
    contents = build(server, image, repo_dir, tmp_path)
    ids = point_ids(repo_dir)
    os.unlink(os.path.join(repo_dir, 'manifest.json'))
    if lose_previous:
        os.unlink(os.path.join(repo_dir, 'manifest.json.prev'))
    before = tree(repo_dir)

    result, output = export(server, repo_dir, tmp_path)
    assert_clean_failure(result, output, 'REPOSITORY_DAMAGED')
    assert 'manifest.json is missing' in result['msg'] and 'rebuild_manifest' in result['msg']
    result, output = run_module('backup_prune', {'repository': repo_dir, 'keep_last': 1}, tmp_path)
    assert_clean_failure(result, output, 'REPOSITORY_DAMAGED')
    result, output = run_module('backup_verify', {'repository': repo_dir}, tmp_path)
    assert result['failed'] is True and 'Traceback' not in output
    assert result['error_code'] == ('REPOSITORY_DAMAGED' if lose_previous else 'MANIFEST_DAMAGED')
    assert tree(repo_dir) == before  # nothing deleted, nothing written

    preview, output = run_module('backup_verify', {'repository': repo_dir, 'rebuild_manifest': True}, tmp_path,
                                 check=True)
    assert preview['changed'] is True and preview['rebuilt']['points'] == ids, output
    assert tree(repo_dir) == before
    result, output = run_module('backup_verify', {'repository': repo_dir, 'rebuild_manifest': True}, tmp_path)
    assert result['failed'] is False and result['changed'] is True and result['ok'] is True, output
    assert result['rebuilt']['points'] == ids and result['rebuilt']['unrestorable'] == []
    # what only the old manifest knew comes back from manifest.json.prev for the points it lists
    assert result['rebuilt']['carried'] == ([] if lose_previous else ids[:-1])
    assert result['rebuilt']['cbt_anchor'] is None
    assert_restores(repo_dir, ids, contents, tmp_path)
    again, output = run_module('backup_verify', {'repository': repo_dir, 'rebuild_manifest': True}, tmp_path)
    assert again['changed'] is False and again['ok'] is True, output  # idempotent

    # backups go on: changed blocks against the newest point, then a full
    changed = rewrite_random_blocks(image.path, 2, seed=42)
    result, output = export(server, repo_dir, tmp_path, changed=changed, image=image)
    assert result['failed'] is False and result['point_type'] == 'incremental', output
    contents.append(read(image.path))
    result, output = export(server, repo_dir, tmp_path)
    assert result['failed'] is False and result['point_type'] == 'full', output
    assert_restores(repo_dir, point_ids(repo_dir), contents + [read(image.path)], tmp_path)


def test_rebuild_leaves_out_a_broken_point_and_keeps_its_file(disk, tmp_path):
    server, image = disk
    repo_dir = str(tmp_path / 'repo')
    contents = build(server, image, repo_dir, tmp_path)
    ids = point_ids(repo_dir)
    os.unlink(os.path.join(repo_dir, 'manifest.json'))
    os.unlink(os.path.join(repo_dir, 'manifest.json.prev'))
    broken = os.path.join(repo_dir, ids[1] + '.qcow2')
    with open(broken, 'r+b') as handle:
        handle.write(b'not a qcow2 header')
    result, output = run_module('backup_verify', {'repository': repo_dir, 'rebuild_manifest': True}, tmp_path)
    assert result['failed'] is False and result['ok'] is True, output
    assert result['rebuilt']['points'] == ids[:1]
    assert [entry['file'] for entry in result['rebuilt']['unrestorable']] == [ids[1] + '.qcow2', ids[2] + '.qcow2']
    assert os.path.exists(broken) and os.path.exists(os.path.join(repo_dir, ids[2] + '.qcow2'))
    assert_restores(repo_dir, ids[:1], contents, tmp_path)


# -- 5. damaged manifests -----------------------------------------------------------------------------

@pytest.mark.parametrize('shape,text,words', DAMAGED_SHAPES, ids=[shape[0] for shape in DAMAGED_SHAPES])
def test_a_damaged_manifest_is_a_clean_error_everywhere(disk, tmp_path, shape, text, words):
    server, image = disk
    repo_dir = str(tmp_path / 'repo')
    contents = build(server, image, repo_dir, tmp_path, incrementals=1)
    ids = point_ids(repo_dir)
    with open(os.path.join(repo_dir, 'manifest.json'), 'w') as handle:
        handle.write(text)
    before = tree(repo_dir)
    # writers refuse (the previous manifest is intact, but nothing is written on top of a damaged one)
    result, output = export(server, repo_dir, tmp_path)
    assert_clean_failure(result, output, 'REPOSITORY_DAMAGED')
    assert words in result['msg'] and 'manifest.json' in result['msg']
    result, output = run_module('backup_prune', {'repository': repo_dir, 'keep_last': 1}, tmp_path)
    assert_clean_failure(result, output, 'REPOSITORY_DAMAGED')
    # readers fall back to manifest.json.prev, say so, and verify does not pass a damaged repository
    result, output = run_module('backup_verify', {'repository': repo_dir}, tmp_path)
    assert_clean_failure(result, output, 'MANIFEST_DAMAGED')
    assert words in result['msg'] and 'manifest.json.prev' in result['msg']
    dest = str(tmp_path / 'restored.raw')
    result, output = run_module('vdi_restore', {'repository': repo_dir, 'point': ids[0], 'dest': dest,
                                                'format': 'raw'}, tmp_path)
    assert result['failed'] is False and 'manifest.json.prev' in output, output
    assert read(dest) == contents[0]
    result, output = run_module('backup_info', {'path': repo_dir}, tmp_path)
    assert result['failed'] is False and words in result['repositories'][0]['warnings'][0], output
    assert tree(repo_dir) == dict(before, **{'restored.raw': before.get('restored.raw')}) or tree(repo_dir) == before
    # with manifest.json.prev damaged too, the readers fail cleanly as well
    with open(os.path.join(repo_dir, 'manifest.json.prev'), 'w') as handle:
        handle.write(text)
    result, output = run_module('vdi_restore', {'repository': repo_dir, 'dest': str(tmp_path / 'r2.raw'),
                                                'format': 'raw'}, tmp_path)
    assert_clean_failure(result, output, 'REPOSITORY_DAMAGED')
    result, output = run_module('backup_info', {'path': repo_dir}, tmp_path)
    assert result['repositories'][0]['error_code'] == 'REPOSITORY_DAMAGED' and 'Traceback' not in output
    # and the rebuild brings every point back
    result, output = run_module('backup_verify', {'repository': repo_dir, 'rebuild_manifest': True}, tmp_path)
    assert result['failed'] is False and result['rebuilt']['points'] == ids, output
    assert read(os.path.join(repo_dir, 'manifest.json.damaged')) == text.encode()
    assert_restores(repo_dir, ids, contents, tmp_path)


# -- 3. a full disk during the manifest save -------------------------------------------------------------

def test_a_full_disk_before_the_manifest_save_keeps_the_manifest(disk, tmp_path, small_tmpfs):
    server, image = disk
    source_dir = str(tmp_path / 'source')
    contents = []
    result, output = export(server, source_dir, tmp_path)
    contents.append(read(image.path))
    for seed in (1, 2, 3):  # two chains: keep_last 2 drops the first whole, and only the manifest is written
        changed = rewrite_random_blocks(image.path, 2, seed=seed)
        if seed == 2:
            result, output = export(server, source_dir, tmp_path)
        else:
            result, output = export(server, source_dir, tmp_path, changed=changed, image=image)
        assert result['failed'] is False, output
        contents.append(read(image.path))
    ids = point_ids(source_dir)
    # a manifest larger than the page left free (as in the field: many points, long names)
    with open(os.path.join(source_dir, 'manifest.json')) as handle:
        manifest = json.load(handle)
    manifest['disk']['vm_name'] = 'a VM with a long name ' * 250
    with open(os.path.join(source_dir, 'manifest.json'), 'w') as handle:
        json.dump(manifest, handle)
    used = sum(os.path.getsize(os.path.join(source_dir, name)) for name in os.listdir(source_dir))
    mount_point = small_tmpfs(used // 1024 + 256)
    repo_dir = os.path.join(mount_point, 'repo')
    shutil.copytree(source_dir, repo_dir)
    filler = fill(mount_point, 4096)  # one free page: less than the manifest needs
    manifest = read(os.path.join(repo_dir, 'manifest.json'))
    assert len(manifest) > 4096

    result, output = run_module('backup_prune', {'repository': repo_dir, 'keep_last': 2}, tmp_path)
    assert_clean_failure(result, output, 'NO_SPACE')
    assert 'previous manifest was kept' in result['msg'] or 'left as it was' in result['msg']
    assert read(os.path.join(repo_dir, 'manifest.json')) == manifest
    assert_restores(repo_dir, ids, contents, tmp_path)

    os.unlink(filler)
    result, output = run_module('backup_prune', {'repository': repo_dir, 'keep_last': 2}, tmp_path)
    assert result['failed'] is False and result['removed'] == ids[:2], output
    assert sorted(os.listdir(repo_dir)) == sorted([i + '.qcow2' for i in ids[2:]] + [
        'manifest.json', 'manifest.json.prev', '.lock', store.MARKER])
    assert_restores(repo_dir, ids[2:], contents[2:], tmp_path)


# -- 11. an export whose size is not a whole number of sectors ---------------------------------------

def test_an_odd_sized_export_is_refused_for_a_repository(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'odd.raw', 1000, seed=3)
    server = nbd_server_factory('nbdkit-tls', image.path)
    repo_dir = str(tmp_path / 'repo')
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'repository': repo_dir}, tmp_path)
    assert_clean_failure(result, output, 'EXPORT_SIZE_UNALIGNED')
    assert '1000 bytes' in result['msg'] and 'dest:' in result['msg']
    assert not [name for name in os.listdir(repo_dir) if name.endswith('.qcow2') or store.PARTIAL_MARK in name]
    # a raw file holds it exactly
    dest = str(tmp_path / 'odd-copy.raw')
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'dest': dest}, tmp_path)
    assert result['failed'] is False and read(dest) == read(image.path), output
