# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention: rule selection over synthetic manifests, and merging forward on real chains checked with qemu-img."""

from __future__ import absolute_import, division, print_function

import datetime
import json
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, retention, store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Image
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    assert_qcow2_clean, assert_same_as_raw, qemu_img,
)

__metaclass__ = type

K64 = 64 * 1024
UTC = datetime.timezone.utc


# -- selection (pure) -------------------------------------------------------------------------------

def synthetic(times):
    return [{'id': 'p%d' % n, 'time': when} for n, when in enumerate(times)]


def at(day, hour=12, month=11, year=2026):
    return datetime.datetime(year, month, day, hour, tzinfo=UTC).isoformat()


def kept(points, now=None, **rules):
    reasons = retention.select(points, rules, now=now or '2026-11-30T00:00:00+00:00')
    return [p['id'] for p in points if p['id'] in reasons]


def test_keep_last_and_the_newest_is_always_kept():
    points = synthetic([at(day) for day in range(1, 8)])
    assert kept(points, keep_last=3) == ['p4', 'p5', 'p6']
    assert kept(points, keep_last=0) == ['p6']
    assert kept(points, keep_last=100) == [p['id'] for p in points]
    assert retention.select([], {'keep_last': 1}) == {}


def test_keep_days_counts_back_from_now():
    points = synthetic([at(day) for day in range(20, 30)])
    assert kept(points, now='2026-11-29T18:00:00Z', keep_days=2) == ['p8', 'p9']
    assert kept(points, now='2026-11-29T11:00:00Z', keep_days=2) == ['p7', 'p8', 'p9']
    # Long after the last backup: only the newest point is left.
    assert kept(points, now='2027-06-01T00:00:00Z', keep_days=7) == ['p9']


def test_keep_daily_takes_the_newest_point_of_each_day():
    points = synthetic([at(1, 1), at(1, 23), at(2, 5), at(2, 6), at(4, 0), at(4, 3)])
    assert kept(points, keep_daily=2) == ['p3', 'p5']
    assert kept(points, keep_daily=3) == ['p1', 'p3', 'p5']
    assert kept(points, keep_daily=10) == ['p1', 'p3', 'p5']


def test_keep_weekly_uses_iso_weeks_in_utc():
    # 2026-11-01 is a Sunday; 2026-11-02 a Monday (a new ISO week).
    points = synthetic([at(1, 10), at(1, 20), at(2, 1), at(8, 23), at(9, 0), at(10, 0)])
    assert kept(points, keep_weekly=1) == ['p5']
    assert kept(points, keep_weekly=2) == ['p3', 'p5']
    assert kept(points, keep_weekly=3) == ['p1', 'p3', 'p5']
    # A non-UTC offset is converted first: Sunday 23:30 at -02:00 is Monday 01:30 UTC.
    shifted = synthetic(['2026-11-01T10:00:00+00:00', '2026-11-01T23:30:00-02:00', '2026-11-02T05:00:00Z'])
    assert kept(shifted, keep_weekly=2) == ['p0', 'p2']


def test_keep_monthly_and_rules_combine():
    points = synthetic([at(30, month=9), at(5, month=10), at(28, month=10), at(2), at(20), at(29)])
    assert kept(points, keep_monthly=2) == ['p2', 'p5']
    assert kept(points, keep_monthly=12) == ['p0', 'p2', 'p5']
    assert kept(points, keep_monthly=1, keep_last=2) == ['p4', 'p5']
    assert kept(points, keep_monthly=2, keep_daily=1, keep_last=1) == ['p2', 'p5']
    reasons = retention.select(points, {'keep_monthly': 2, 'keep_last': 1}, now='2026-11-30T00:00:00Z')
    assert sorted(reasons['p5']) == ['keep_last', 'keep_monthly', 'newest']


def test_rules_are_required_and_whole_numbers():
    points = synthetic([at(1)])
    with pytest.raises(store.RepositoryError, match='at least one retention rule'):
        retention.select(points, {})
    with pytest.raises(store.RepositoryError, match='keep_last must be'):
        retention.select(points, {'keep_last': -1})
    with pytest.raises(store.RepositoryError, match='not an RFC 3339'):
        retention.select(synthetic(['yesterday']), {'keep_last': 1})
    assert retention.parse_time('20261121T10:00:00Z') == datetime.datetime(2026, 11, 21, 10, tzinfo=UTC)


def test_plan_merges_a_kept_point_whose_parent_is_dropped():
    points = [
        {'id': 'f1', 'parent': None}, {'id': 'i1', 'parent': 'f1'}, {'id': 'i2', 'parent': 'i1'},
        {'id': 'i3', 'parent': 'i2'}, {'id': 'f2', 'parent': None}, {'id': 'i4', 'parent': 'f2'},
    ]
    # a kept ancestor ends the walk (i2 is re-pointed at f1); a dropped root is part of it (i3 becomes a full)
    assert retention.plan(points, ['f1', 'i2', 'f2', 'i4']) == (['i1', 'i3'], [('i2', ['i2', 'i1'])])
    assert retention.plan(points, ['i3', 'i4']) == (['f1', 'i1', 'i2', 'f2'], [('i3', ['i3', 'i2', 'i1', 'f1']),
                                                                               ('i4', ['i4', 'f2'])])
    assert retention.plan(points, [p['id'] for p in points]) == ([], [])
    assert retention.merge_method(points, ['i2', 'i1']) == 'overlay'
    assert retention.merge_method(points, ['i3', 'i2', 'i1', 'f1']) == 'fold'
    # a file of the chain that also serves a point outside it cannot take the clusters in place
    branched = points + [{'id': 'b1', 'parent': 'i1'}]
    assert retention.merge_method(branched, ['i3', 'i2', 'i1', 'f1']) == 'rewrite'


# -- merging on real chains -------------------------------------------------------------------------

def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def build_chain(nbd_server_factory, tmp_path, incrementals=4, size=2 * 1024 * 1024 + 512, seed=51, compressions=None):
    """A repository with a full and ``incrementals`` incrementals; returns (repo_dir, {snapshot uuid: content}).

    ``compressions``: per point (full first), the ``compression`` of its export (None: stored as it is)."""
    compressions = list(compressions or [None] * (incrementals + 1))
    image = make_disk_image(tmp_path / 'src.raw', size, pattern='DDZD0', seed=seed)
    server = nbd_server_factory('nbdkit-tls', image.path)
    target = _export.make_target(server.nbd_info(), tls=True, timeout=10)
    repo_dir = str(tmp_path / 'repo')
    backup.export_to_repository(target, repo_dir, snapshot={'uuid': 'snap-0'}, compression=compressions[0])
    expected = {'snap-0': read(image.path)}
    for n in range(1, incrementals + 1):
        changed = rewrite_random_blocks(image.path, 4, seed=seed + n)
        zeroed = image.data_blocks[n] if hasattr(image, 'data_blocks') else n
        with open(image.path, 'r+b') as handle:  # a block that becomes zero must stay zero after a merge
            handle.seek(zeroed * K64)
            handle.write(bytes(K64))
        changed = sorted(set(changed) | {zeroed})
        backup.export_to_repository(target, repo_dir, changed_blocks=_cbt.encode(changed, image.size),
                                    snapshot={'uuid': 'snap-%d' % n}, base_uuid='snap-%d' % (n - 1),
                                    compression=compressions[n])
        expected['snap-%d' % n] = read(image.path)
    return repo_dir, expected


def set_times(repo_dir, times):
    path = os.path.join(repo_dir, 'manifest.json')
    with open(path) as handle:
        manifest = json.load(handle)
    for point, when in zip(manifest['points'], times):
        point['time'] = when
    with open(path, 'w') as handle:
        json.dump(manifest, handle)


def check_repository(repo_dir, expected, tmp_path):
    """Every listed point is intact, qemu-clean, holds its snapshot's content; no stray files."""
    with store.Repository(repo_dir) as repo:
        assert retention.JOURNAL not in repo.manifest
        ids = set(p['id'] for p in repo.points)
        for point in repo.points:
            path = repo.file_path(point)
            assert store.file_sha256(path) == point['sha256']
            assert os.path.getsize(path) == point['file_size']
            assert_qcow2_clean(path)
            assert_same_as_raw(path, expected[point['snapshot_uuid']], tmp_path)
            with Qcow2Image(path) as qcow:
                assert qcow.digest() == point['blocks_digest']
                assert (qcow.backing_file is None) == (point['type'] == 'full') == (point['parent'] is None)
                if point['parent']:
                    assert point['parent'] in ids
                    assert qcow.backing_file == repo.point(point['parent'])['file']
                else:
                    assert qcow.bytes_stored() == point['bytes']
        assert repo.manifest['cbt_anchor'] == repo.points[-1]['snapshot_uuid']
        files = sorted(os.listdir(repo_dir))
        assert files == sorted([p['file'] for p in repo.points] + ['manifest.json', 'manifest.json.prev', '.lock',
                                                                   '.xenserver-cbt-backup'])
        return [p['snapshot_uuid'] for p in repo.points]


def prune(repo_dir, **rules):
    now = rules.pop('now', None)
    check_mode = rules.pop('check_mode', False)
    with store.Repository(repo_dir, write=not check_mode) as repo:
        return retention.prune(repo, rules, now=now, check_mode=check_mode)


def test_keep_last_merges_the_oldest_kept_point_into_a_full(nbd_server_factory, tmp_path):
    repo_dir, expected = build_chain(nbd_server_factory, tmp_path)
    with store.Repository(repo_dir) as repo:
        ids = [p['id'] for p in repo.points]
        files = dict((p['id'], p['file']) for p in repo.points)
        exported = dict(repo.point(ids[2]))
    manifest_before = read(os.path.join(repo_dir, 'manifest.json'))

    preview = prune(repo_dir, keep_last=3, check_mode=True)
    assert preview['changed'] and preview['removed'] == ids[:2] and preview['kept'] == ids[2:]
    assert list(preview['merged']) == [ids[2]] and preview['bytes_freed'] > 0
    assert read(os.path.join(repo_dir, 'manifest.json')) == manifest_before

    result = prune(repo_dir, keep_last=3)
    assert result['changed'] and result['removed'] == ids[:2] and result['kept'] == ids[2:]
    assert result['merged'][ids[2]]['merged'] == [ids[1], ids[0]]
    # folded in place: the full's file took the kept point's clusters and its name, the incremental went
    assert result['merged'][ids[2]]['method'] == 'fold'
    assert result['deleted_files'] == [files[ids[1]]]
    assert sorted(n for n in os.listdir(repo_dir) if n not in store.OWN_FILES) == sorted(files[i] for i in ids[2:])
    assert 0 < result['bytes_written'] < 2 * (exported['bytes'] + 1024 * 1024)
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-2', 'snap-3', 'snap-4']
    with store.Repository(repo_dir) as repo:
        merged = repo.point(ids[2])
        assert merged['type'] == 'full' and merged['parent'] is None and merged['file'] == files[ids[2]]
        assert [p['parent'] for p in repo.points] == [None, ids[2], ids[3]]
        total = sum(p['file_size'] for p in repo.points)
        # what the export of the point stored is kept next to the merged facts
        assert merged['export'] == {'type': 'incremental', 'bytes': exported['bytes'], 'blocks': exported['blocks']}
        assert merged['bytes'] == result['merged'][ids[2]]['bytes'] > exported['bytes']
        assert merged['blocks'] == result['merged'][ids[2]]['blocks'] > exported['blocks']
        assert [('export' in p) for p in repo.points] == [True, False, False]
    assert result['bytes_freed'] > 0

    again = prune(repo_dir, keep_last=3)
    assert not again['changed'] and again['removed'] == [] and again['merged'] == {}
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-2', 'snap-3', 'snap-4']
    with store.Repository(repo_dir) as repo:
        assert sum(p['file_size'] for p in repo.points) == total
        assert repo.point(ids[2])['export'] == merged['export']


def test_daily_rule_merges_several_kept_points(nbd_server_factory, tmp_path):
    repo_dir, expected = build_chain(nbd_server_factory, tmp_path, incrementals=5, seed=61)
    set_times(repo_dir, [at(1, 10), at(2, 10), at(2, 20), at(3, 9), at(3, 10), at(3, 11)])
    with store.Repository(repo_dir) as repo:
        before = dict((p['snapshot_uuid'], p) for p in repo.points)
    result = prune(repo_dir, keep_daily=3, now=at(4))
    with store.Repository(repo_dir) as repo:
        ids = [p['id'] for p in repo.points]
    # Kept: snap-0 (day 1, the full), snap-2 (day 2), snap-5 (day 3, newest).
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-0', 'snap-2', 'snap-5']
    assert sorted(result['merged']) == sorted(ids[1:])
    assert [result['merged'][i]['method'] for i in ids[1:]] == ['overlay', 'overlay']
    with store.Repository(repo_dir) as repo:
        # each kept point is re-pointed at the kept one before it, holding the dropped points' clusters
        assert [p['type'] for p in repo.points] == ['full', 'incremental', 'incremental']
        assert [p['parent'] for p in repo.points] == [None, ids[0], ids[1]]
        old_id = dict((uuid, point['id']) for uuid, point in before.items())
        assert [p.get('merged') for p in repo.points[1:]] == [[old_id['snap-1']], [old_id['snap-4'], old_id['snap-3']]]
        # the full was taken as one and merged nothing: no export record; each merged point got its own
        assert 'export' not in repo.points[0]
        for point in repo.points[1:]:
            old = before[point['snapshot_uuid']]
            assert point['export'] == {'type': 'incremental', 'bytes': old['bytes'], 'blocks': old['blocks']}


def test_only_whole_chains_dropped_needs_no_merge(nbd_server_factory, tmp_path):
    repo_dir, expected = build_chain(nbd_server_factory, tmp_path, incrementals=1, seed=71)
    # A second full on top: the first chain becomes independent of the newest point.
    image_path = str(tmp_path / 'src.raw')
    server = nbd_server_factory('nbdkit-tls', image_path)
    target = _export.make_target(server.nbd_info(), tls=True, timeout=10)
    backup.export_to_repository(target, repo_dir, snapshot={'uuid': 'snap-9'})
    expected['snap-9'] = read(image_path)
    result = prune(repo_dir, keep_last=1)
    assert result['merged'] == {} and len(result['removed']) == 2
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-9']


def test_prune_takes_the_write_lock(nbd_server_factory, tmp_path):
    repo_dir, dummy = build_chain(nbd_server_factory, tmp_path, incrementals=1, seed=81)
    with store.Repository(repo_dir, write=True):
        with pytest.raises(store.RepositoryError, match='another run'):
            prune(repo_dir, keep_last=1)


def test_compressed_points_restore_and_merges_keep_their_compression(nbd_server_factory, tmp_path):
    compressions = ['zstd', None, 'zlib', None, 'zstd']
    repo_dir, expected = build_chain(nbd_server_factory, tmp_path, seed=91, compressions=compressions)
    with store.Repository(repo_dir) as repo:
        assert [p.get('compression') for p in repo.points] == compressions
        ids = [p['id'] for p in repo.points]
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-%d' % n for n in range(5)]
    # snap-2 (zlib) is re-pointed at snap-0 holding snap-1's clusters: an overlay merge keeps its compression;
    # snap-4 (zstd) takes snap-3's clusters the same way
    set_times(repo_dir, [at(1), at(2, 9), at(2, 10), at(3, 9), at(3, 10)])
    result = prune(repo_dir, keep_daily=3, now=at(4))
    assert [result['merged'][i]['method'] for i in (ids[2], ids[4])] == ['overlay', 'overlay']
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-0', 'snap-2', 'snap-4']
    with store.Repository(repo_dir) as repo:
        assert [p.get('compression') for p in repo.points] == ['zstd', 'zlib', 'zstd']
        for point in repo.points:  # (random test data does not compress: the zstd header shows the writer's choice)
            with Qcow2Image(repo.file_path(point)) as image:
                assert image.header.compression_type == (1 if point['compression'] == 'zstd' else 0), point['id']
    # then keep_last 1: everything is folded into snap-0's zstd file, whose compressed clusters stay
    result = prune(repo_dir, keep_last=1)
    assert result['merged'][ids[4]]['method'] == 'fold'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-4']
    with store.Repository(repo_dir) as repo:
        assert repo.points[0]['compression'] == 'zstd'


def test_a_full_the_fold_cannot_take_is_rewritten_instead(nbd_server_factory, tmp_path):
    # a full turned into a qcow2 v2 file by hand (qemu-img amend): the fold needs v3, the prune still merges
    repo_dir, expected = build_chain(nbd_server_factory, tmp_path, incrementals=2, seed=97)
    with store.Repository(repo_dir, write=True) as repo:
        full = repo.points[0]
        path = repo.file_path(full)
        qemu_img('amend', '-f', 'qcow2', '-o', 'compat=0.10', path)
        full.update({'sha256': store.file_sha256(path), 'file_size': os.path.getsize(path)})
        repo.save()
        ids = [p['id'] for p in repo.points]
    assert prune(repo_dir, keep_last=1, check_mode=True)['merged'][ids[2]]['method'] == 'rewrite'
    result = prune(repo_dir, keep_last=1)
    assert result['merged'][ids[2]]['method'] == 'rewrite'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-2']
