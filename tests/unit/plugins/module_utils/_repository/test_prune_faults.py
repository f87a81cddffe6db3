# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault injection for pruning: SIGKILL at every step of a merge and at random moments, and a full disk."""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import retention, store
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import collections_path, run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.full_disk import fill
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    assert_qcow2_clean, assert_same_as_raw,
)
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.test_retention import (
    at, build_chain, check_repository, read, set_times,
)

__metaclass__ = type

pytestmark = pytest.mark.interop

# Runs one prune in a child process; args: collections root, repository, rules (JSON), a delay per written piece,
# per manifest save (before and after) and per deleted file, so that a kill after a random time lands anywhere.
CHILD = r'''
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2, qcow2_fold
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import retention, store
delay = float(sys.argv[4])
if delay:
    real_call = qcow2.Qcow2Writer.__call__
    def slow_call(self, offset, view):
        time.sleep(delay)
        return real_call(self, offset, view)
    qcow2.Qcow2Writer.__call__ = slow_call
    real_save = store.Repository.save
    def slow_save(self):
        time.sleep(delay)
        real_save(self)
        time.sleep(delay)
    store.Repository.save = slow_save
    real_unlink = retention._unlink
    def slow_unlink(path):
        time.sleep(delay)
        return real_unlink(path)
    retention._unlink = slow_unlink
    real_pieces = qcow2_fold._write_pieces
    def slow_pieces(fd, pieces, cs):
        time.sleep(delay)
        return real_pieces(fd, pieces, cs)
    qcow2_fold._write_pieces = slow_pieces
rules = json.loads(sys.argv[3])
now = rules.pop('now', None)
kill_at = sys.argv[5]
def checkpoint(step):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
with store.Repository(sys.argv[2], write=True) as repo:
    retention.prune(repo, rules, now=now, checkpoint=checkpoint)
print('done')
'''


def start_child(repo_dir, rules, kill_at=None, delay=0.0):
    return subprocess.Popen([sys.executable, '-c', CHILD, collections_path(), repo_dir, json.dumps(rules), str(delay),
                             kill_at or ''], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_listed_points_restorable(repo_dir, expected, tmp_path):
    """What a user sees right after a crash: every point the manifest lists reads as its snapshot."""
    with store.Repository(repo_dir) as repo:
        for point in repo.points:
            assert_same_as_raw(repo.file_path(point), expected[point['snapshot_uuid']], tmp_path)
        return [p['snapshot_uuid'] for p in repo.points], repo.manifest.get(retention.JOURNAL)


@pytest.fixture
def pristine(nbd_server_factory, tmp_path_factory):
    """A full and four incrementals, built once per test; each scenario works on a copy."""
    base = tmp_path_factory.mktemp('pristine')
    repo_dir, expected = build_chain(nbd_server_factory, base, incrementals=4, seed=131)
    return repo_dir, expected


def listed_ids(repo_dir):
    with store.Repository(repo_dir) as repo:
        return [p['id'] for p in repo.points]


def copy_repo(pristine_dir, tmp_path, name):
    dest = str(tmp_path / name)
    shutil.copytree(pristine_dir, dest)
    return dest


# keep_last 2 of a full and four incrementals: snap-3 and snap-4 stay; snap-3, snap-2 and snap-1 are folded into
# snap-0's file in place, which then takes snap-3's name.  What the next run's recovery does after each kill:
FOLD_RECOVERY = {
    'fold-journaled': 'finished',   # folded points unlisted, nothing written: the fold is done again
    'fold-write': 'finished',       # half written into unused clusters: cut back and done again
    'fold-written': 'finished',     # written, not hashed: done again
    'journal-saved': 'finished',    # hashed: the header is switched and the file renamed
    'header-switched': 'finished',  # switched: renamed
    'renamed': 'finished',          # renamed: the manifest is finished
    'manifest-saved': 'none',       # manifest final: the folded points' files are deleted
    'deleting': 'none',             # killed before the first deletion
}


def kill_and_check(repo_dir, rules, kill_at, expected, tmp_path):
    """Kill a prune at ``kill_at``; check that every listed point restores and verifies; return (listed, journal)."""
    child = start_child(repo_dir, rules, kill_at=kill_at)
    out, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, (out, err)
    listed, journal = assert_listed_points_restorable(repo_dir, expected, tmp_path)
    # backup_verify right after the crash honours the merge journal as restore does: no false alarm
    verified, output = run_module('backup_verify', {'repository': repo_dir}, tmp_path)
    assert verified['failed'] is False and verified['ok'] is True, verified
    assert [p['id'] for p in verified['points']] == listed_ids(repo_dir) and 'Traceback' not in output
    assert verified['unknown_files'] == [], verified  # the files a journal still reads are the collection's
    for point in listed_ids(repo_dir):
        with store.Repository(repo_dir) as repo:
            for path in [repo.file_path(p) for p in repo.chain(repo.point(point))]:
                assert_qcow2_clean(path)
    return listed, journal


@pytest.mark.parametrize('kill_at', sorted(FOLD_RECOVERY, key=retention.FOLD_KILL_POINTS.index))
def test_sigkill_at_each_step_of_a_fold(pristine, tmp_path, kill_at):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo-' + kill_at)
    with store.Repository(repo_dir) as repo:
        exported = repo.points[-2]  # snap-3: the point the fold merges
    listed, journal = kill_and_check(repo_dir, {'keep_last': 2}, kill_at, expected, tmp_path)
    assert listed == ['snap-3', 'snap-4']  # the folded points left the list before anything was written
    assert (journal is not None) == (kill_at not in ('manifest-saved', 'deleting'))
    assert not any(store.PARTIAL_MARK in name for name in os.listdir(repo_dir))  # a fold needs no temporary file

    # Recovery alone (what other repository users call) already leaves a consistent repository...
    with store.Repository(repo_dir, write=True) as repo:
        recovered = retention.recover(repo)
    assert recovered['action'] == FOLD_RECOVERY[kill_at]
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-3', 'snap-4']
    # ... and a second prune has nothing left to do.
    with store.Repository(repo_dir, write=True) as repo:
        result = retention.prune(repo, {'keep_last': 2})
    assert result['recovered']['action'] == 'none' and result['merged'] == {} and result['removed'] == []
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-3', 'snap-4']
    with store.Repository(repo_dir) as repo:
        assert [p['type'] for p in repo.points] == ['full', 'incremental']
        # however the merge was finished, the point keeps what its export stored
        assert repo.points[0]['export'] == {'type': 'incremental', 'bytes': exported['bytes'],
                                            'blocks': exported['blocks']}
        assert len([n for n in os.listdir(repo_dir) if n not in store.OWN_FILES]) == 2


@pytest.mark.parametrize('kill_at', ['journal-saved', 'header-switched', 'renamed', 'manifest-saved'])
def test_a_manifest_lost_after_a_killed_fold_is_rebuilt_from_the_journal(pristine, tmp_path, kill_at):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo-' + kill_at)
    child = start_child(repo_dir, {'keep_last': 2}, kill_at=kill_at)
    child.communicate(timeout=120)
    os.unlink(os.path.join(repo_dir, 'manifest.json'))  # lost: readers fall back to manifest.json.prev
    with store.Repository(repo_dir) as repo:
        # the previous save: from before the hashes were known (phase writing) unless the manifest was final
        assert repo.from_previous and repo.manifest[retention.JOURNAL]['phase'] == (
            'ready' if kill_at == 'manifest-saved' else 'writing')
    listed, journal = assert_listed_points_restorable(repo_dir, expected, tmp_path)
    assert listed == ['snap-3', 'snap-4'] and journal['kind'] == 'fold'
    # rebuilding cannot tell folded files apart by content: it keeps the journal's manifest ...
    rebuilt, output = run_module('backup_verify', {'repository': repo_dir, 'rebuild_manifest': True}, tmp_path)
    assert rebuilt['failed'] is False and rebuilt['rebuilt']['points'] == listed_ids(repo_dir), rebuilt.get('msg')
    assert 'had not finished' in rebuilt['rebuilt']['message']
    # ... and the next writing run finishes the fold from whatever the files show
    with store.Repository(repo_dir, write=True) as repo:
        assert retention.recover(repo)['action'] == 'finished'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-3', 'snap-4']


# Days: snap-0 | snap-1 snap-2 | snap-3 snap-4, keep_daily 3: snap-0, snap-2 and snap-4 stay; snap-2 takes snap-1's
# clusters and snap-4 takes snap-3's, each as a new overlay of the kept point before it, renamed over its file.
OVERLAY_RECOVERY = {
    'merge-write': 'none',        # the temporary file is half written: deleted, nothing else changed
    'merge-written': 'none',      # written but not journaled: deleted
    'journal-saved': 'finished',  # journaled, not renamed: the temporary file is renamed
    'renamed': 'finished',        # renamed, manifest not updated: the manifest is finished
    'manifest-saved': 'none',     # the first merge recorded: the second is done by the next prune
    'drops-saved': 'none',        # both merges and the drops recorded: the dropped files are deleted
    'deleting': 'none',           # killed before the first deletion
}
DAYS = [at(1), at(2, 9), at(2, 10), at(3, 9), at(3, 10)]


@pytest.mark.parametrize('kill_at', sorted(OVERLAY_RECOVERY, key=retention.KILL_POINTS.index))
def test_sigkill_at_each_step_of_an_overlay_merge(pristine, tmp_path, kill_at):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo-' + kill_at)
    set_times(repo_dir, DAYS)
    rules = {'keep_daily': 3, 'now': at(4)}
    listed, journal = kill_and_check(repo_dir, rules, kill_at, expected, tmp_path)
    everything = ['snap-%d' % n for n in range(5)]
    assert listed == (['snap-0', 'snap-2', 'snap-4'] if kill_at in ('drops-saved', 'deleting') else everything)
    assert (journal is not None) == (kill_at in ('journal-saved', 'renamed'))
    if kill_at in ('merge-write', 'merge-written', 'journal-saved'):
        assert any(store.PARTIAL_MARK in name for name in os.listdir(repo_dir))
    with store.Repository(repo_dir, write=True) as repo:
        recovered = retention.recover(repo)
    assert recovered['action'] == OVERLAY_RECOVERY[kill_at]
    check_repository(repo_dir, expected, tmp_path)
    with store.Repository(repo_dir, write=True) as repo:
        result = retention.prune(repo, {'keep_daily': 3}, now=at(4))
    assert result['recovered']['action'] == 'none'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-0', 'snap-2', 'snap-4']
    with store.Repository(repo_dir) as repo:
        assert [p['type'] for p in repo.points] == ['full', 'incremental', 'incremental']
        assert [p['parent'] for p in repo.points] == [None, repo.points[0]['id'], repo.points[1]['id']]


def test_second_prune_recovers_by_itself(pristine, tmp_path):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo')
    child = start_child(repo_dir, {'keep_last': 2}, kill_at='journal-saved')
    child.communicate(timeout=120)
    with store.Repository(repo_dir, write=True) as repo:
        result = retention.prune(repo, {'keep_last': 2})
    assert result['recovered']['action'] == 'finished'
    assert result['changed'] and result['removed'] == [] and result['merged'] == {}
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-3', 'snap-4']


def test_a_damaged_temporary_file_is_rolled_back(pristine, tmp_path):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo')
    set_times(repo_dir, DAYS)
    child = start_child(repo_dir, {'keep_daily': 3, 'now': at(4)}, kill_at='journal-saved')
    child.communicate(timeout=120)
    with store.Repository(repo_dir) as repo:
        temp = os.path.join(repo_dir, repo.manifest[retention.JOURNAL]['temp_file'])
        with pytest.raises(store.RepositoryError, match='write lock'):
            retention.recover(repo)
    with open(temp, 'ab') as handle:  # e.g. the data never reached the disk
        handle.write(b'x')
    with store.Repository(repo_dir, write=True) as repo:
        recovered = retention.recover(repo)
    assert recovered['action'] == 'rolled_back' and os.path.basename(temp) in recovered['deleted']
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-%d' % n for n in range(5)]
    with store.Repository(repo_dir, write=True) as repo:
        retention.prune(repo, {'keep_daily': 3}, now=at(4))
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-0', 'snap-2', 'snap-4']


def test_a_fold_whose_header_switch_went_wrong_is_done_again(pristine, tmp_path):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo')
    child = start_child(repo_dir, {'keep_last': 2}, kill_at='journal-saved')
    child.communicate(timeout=120)
    with store.Repository(repo_dir) as repo:
        journal = repo.manifest[retention.JOURNAL]
        base = os.path.join(repo_dir, journal['base_file'])
    with open(base, 'r+b') as handle:  # a byte the switched header would read is not what was hashed
        handle.seek(-1, os.SEEK_END)
        handle.write(b'\x01')
    listed, dummy = assert_listed_points_restorable(repo_dir, expected, tmp_path)
    with store.Repository(repo_dir, write=True) as repo:
        assert retention.recover(repo)['action'] == 'finished'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-3', 'snap-4']


def test_sigkill_between_two_merges(pristine, tmp_path):
    pristine_dir, expected = pristine
    repo_dir = copy_repo(pristine_dir, tmp_path, 'repo')
    # Days: snap-0 | snap-1 snap-2 | snap-3 snap-4 -> keep_daily 2 keeps snap-2 (a fold) and snap-4 (an overlay).
    set_times(repo_dir, DAYS)
    rules = {'keep_daily': 2, 'now': at(4)}
    child = start_child(repo_dir, rules, kill_at='manifest-saved')  # after the first merge
    child.communicate(timeout=120)
    listed, journal = assert_listed_points_restorable(repo_dir, expected, tmp_path)
    assert journal is None and listed == ['snap-2', 'snap-3', 'snap-4']
    with store.Repository(repo_dir) as repo:
        assert [p['type'] for p in repo.points] == ['full', 'incremental', 'incremental']
    with store.Repository(repo_dir, write=True) as repo:
        result = retention.prune(repo, {'keep_daily': 2}, now=at(4))
    assert list(result['merged']) == [result['kept'][1]] and result['merged'][result['kept'][1]]['method'] == 'overlay'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-2', 'snap-4']


def test_sigkill_after_random_delays(pristine, tmp_path):
    pristine_dir, expected = pristine
    rnd = random.Random(int(os.environ.get('PRUNE_FAULT_SEED', '5')))
    outcomes = []
    for attempt in range(8):
        repo_dir = copy_repo(pristine_dir, tmp_path, 'repo-%d' % attempt)
        child = start_child(repo_dir, {'keep_last': 1}, delay=0.2)
        time.sleep(rnd.uniform(0.2, 3.0))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=120)
        finished = child.returncode == 0
        listed, journal = assert_listed_points_restorable(repo_dir, expected, tmp_path)
        assert listed[-1] == 'snap-4', (out, err)
        outcomes.append((finished, journal is not None, len(listed)))
        with store.Repository(repo_dir, write=True) as repo:
            retention.prune(repo, {'keep_last': 1})
        assert check_repository(repo_dir, expected, tmp_path) == ['snap-4']
        with store.Repository(repo_dir) as repo:
            assert repo.points[0]['type'] == 'full'
    # The kills really interrupted runs (not all of them finished before the signal).
    assert sum(1 for finished, dummy, count in outcomes if not finished) >= 3, outcomes


# -- full disk ----------------------------------------------------------------------------------------

def tree_size(path):
    return sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))


def test_full_disk_fails_cleanly_and_keeps_the_repository(pristine, tmp_path, small_tmpfs):
    pristine_dir, expected = pristine
    # Room for the repository and a little more, then none at all.
    needed_k = tree_size(pristine_dir) // 1024
    mount_point = small_tmpfs(needed_k + 192)
    repo_dir = os.path.join(mount_point, 'repo')
    shutil.copytree(pristine_dir, repo_dir)
    set_times(repo_dir, DAYS)  # an overlay merge first: it writes a new file, which does not fit
    manifest = read(os.path.join(repo_dir, 'manifest.json'))
    files = sorted(os.listdir(repo_dir))
    fill(mount_point, 48 * 1024)  # room for manifest saves, not for the merged file
    with pytest.raises(retention.PruneError) as caught:
        with store.Repository(repo_dir, write=True) as repo:
            retention.prune(repo, {'keep_daily': 3}, now=at(4))
    assert caught.value.errno == errno.ENOSPC
    assert 'not enough space' in str(caught.value) and 'left as it was' in str(caught.value)
    assert json.loads(read(os.path.join(repo_dir, 'manifest.json'))) == json.loads(manifest)
    assert sorted(os.listdir(repo_dir)) == files
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-%d' % n for n in range(5)]


def test_full_disk_during_a_fold_keeps_every_listed_point_and_the_next_run_finishes(pristine, tmp_path, small_tmpfs):
    pristine_dir, expected = pristine
    mount_point = small_tmpfs(tree_size(pristine_dir) // 1024 * 2 + 1024)  # room for the fold, once freed
    repo_dir = os.path.join(mount_point, 'repo')
    shutil.copytree(pristine_dir, repo_dir)

    def fill_after_journal(step):
        if step == 'fold-journaled':
            fill(mount_point, 0)
    with pytest.raises(retention.PruneError) as caught:
        with store.Repository(repo_dir, write=True) as repo:
            retention.prune(repo, {'keep_last': 1}, checkpoint=fill_after_journal)
    assert caught.value.errno == errno.ENOSPC
    assert 'not enough space' in str(caught.value) and 'next run with room finishes' in str(caught.value)
    listed, journal = assert_listed_points_restorable(repo_dir, expected, tmp_path)
    assert listed == ['snap-4'] and journal['phase'] == 'writing'
    os.unlink(os.path.join(mount_point, 'filler'))
    with store.Repository(repo_dir, write=True) as repo:
        assert retention.recover(repo)['action'] == 'finished'
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-4']
