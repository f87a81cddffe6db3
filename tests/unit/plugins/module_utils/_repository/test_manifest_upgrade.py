# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manifest v1 (written by releases before the one time format) is read as v2 and upgraded crash-safely.

The fixture tests/unit/fixtures/repository-v1 was written by the code of commit 38deff2
(tests/unit/fixtures/make_repository_v1.py) and is never regenerated.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import shutil

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _time
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import inspection, restore, store
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.full_disk import fill

__metaclass__ = type

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
                        'fixtures')
V1 = os.path.join(FIXTURES, 'repository-v1')


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def expected_contents():
    with open(V1 + '.sha256.json') as handle:
        return json.load(handle)


def every_time_is_rfc3339_z(manifest):
    for point in manifest['points']:
        for name in store.POINT_TIMES:
            if point.get(name) is not None:
                assert point[name] == _time.normalize_utc(point[name]), (point['id'], name, point[name])
                assert point[name].endswith('Z') and '+' not in point[name]


def assert_every_point_restores(repo_dir, tmp_path):
    for ident, sha256 in expected_contents().items():
        dest = str(tmp_path / ('%s.raw' % ident))
        with restore.RestoreSource(repo_dir, ident) as source:
            restore.restore_to_file(source, dest)
        assert hashlib.sha256(read(dest)).hexdigest() == sha256, ident
        os.unlink(dest)


@pytest.fixture
def v1_repository(tmp_path):
    repo_dir = str(tmp_path / 'repo')
    shutil.copytree(V1, repo_dir)
    return repo_dir


def test_the_fixture_is_a_version_1_manifest_with_old_times():
    manifest = json.loads(read(os.path.join(V1, store.MANIFEST)).decode())
    assert manifest['version'] == 1
    assert any(point['time'].endswith('+00:00') for point in manifest['points'])


def test_a_reader_sees_version_2_and_changes_nothing(v1_repository, tmp_path):
    before = read(os.path.join(v1_repository, store.MANIFEST))
    with store.Repository(v1_repository) as repo:
        assert repo.manifest['version'] == store.FORMAT_VERSION == 2
        assert repo.upgraded_from == 1
        every_time_is_rfc3339_z(repo.manifest)
        assert [p['id'] for p in repo.points] == sorted(expected_contents())
    assert read(os.path.join(v1_repository, store.MANIFEST)) == before
    described = inspection.describe_repository(v1_repository)
    assert all(p['run'].endswith('Z') for p in described['points']) and 'error' not in described
    assert inspection.verify_repository(v1_repository)['ok']
    assert_every_point_restores(v1_repository, tmp_path)


def test_the_first_writer_saves_version_2_and_keeps_version_1_as_previous(v1_repository, tmp_path):
    before = read(os.path.join(v1_repository, store.MANIFEST))
    with store.Repository(v1_repository, write=True) as repo:
        assert repo.upgraded_from == 1
    saved = json.loads(read(os.path.join(v1_repository, store.MANIFEST)).decode())
    assert saved['version'] == 2 and 'upgraded_from' not in saved
    every_time_is_rfc3339_z(saved)
    assert read(os.path.join(v1_repository, store.MANIFEST_PREV)) == before
    old = json.loads(before.decode())
    for new_point, old_point in zip(saved['points'], old['points']):
        assert {k: v for k, v in new_point.items() if k not in store.POINT_TIMES} == \
            {k: v for k, v in old_point.items() if k not in store.POINT_TIMES}
    with store.Repository(v1_repository, write=True) as repo:
        assert repo.upgraded_from is None  # upgraded once
    assert inspection.verify_repository(v1_repository)['ok']
    assert_every_point_restores(v1_repository, tmp_path)


def test_an_upgrade_on_a_full_disk_leaves_version_1_whole(tmp_path, small_tmpfs):
    size_k = sum(os.path.getsize(os.path.join(V1, name)) for name in os.listdir(V1)) // 1024
    repo_dir = os.path.join(small_tmpfs(size_k + 256), 'repo')
    shutil.copytree(V1, repo_dir)
    before = read(os.path.join(repo_dir, store.MANIFEST))
    filler = fill(os.path.dirname(repo_dir), 0)
    with pytest.raises(store.RepositoryError) as info:
        with store.Repository(repo_dir, write=True):
            pass
    assert info.value.code == 'NO_SPACE'
    assert read(os.path.join(repo_dir, store.MANIFEST)) == before
    os.unlink(filler)
    assert_every_point_restores(repo_dir, tmp_path)


def test_a_manifest_of_a_newer_release_is_refused_by_name(v1_repository):
    path = os.path.join(v1_repository, store.MANIFEST)
    manifest = json.loads(read(path).decode())
    manifest['version'] = 3
    with open(path, 'w') as handle:
        json.dump(manifest, handle)
    with pytest.raises(store.RepositoryError) as info:
        with store.Repository(v1_repository, allow_previous=False):
            pass
    assert info.value.code == 'REPOSITORY_DAMAGED' and 'newer release' in str(info.value)


def fold_manifest(**journal):
    record = {'id': 'p0', 'type': 'full', 'time': '2026-01-01T00:00:00Z', 'virtual_size': 512, 'file': 'p0.qcow2'}
    fold = {'point': 'p1', 'kind': 'fold', 'phase': 'writing', 'parent': None, 'base_file': 'p0.qcow2',
            'base_file_size': 4096, 'chain': [record], 'merged': ['p0'], 'drops': []}
    fold.update(journal)
    point = dict(record, id='p1', file='p1.qcow2', type='incremental', parent='p0')
    return {'format': store.FORMAT, 'version': store.FORMAT_VERSION, 'points': [point], 'pending_merge': fold}


@pytest.mark.parametrize('journal, problem', [
    ({}, None),  # a fold still writing: no hashes yet
    ({'phase': 'ready'}, 'pending_merge.sha256: null, expected a string'),
    ({'phase': 'done'}, 'pending_merge.phase'),
    ({'kind': 'squash'}, 'pending_merge.kind'),
    ({'chain': [{'id': 'p0', 'file': '../p0.qcow2'}]}, 'pending_merge.chain[0]'),
    ({'base_file': 'other.qcow2'}, 'pending_merge.base_file'),
    ({'base_file_size': '4096'}, 'pending_merge.base_file_size'),
])
def test_the_fold_journal_is_checked_at_load(journal, problem):
    found = store.manifest_problem(fold_manifest(**journal))
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
