# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fault injection for exports into a repository: SIGKILL at random moments, a full disk, a corrupt byte."""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, store
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import collections_path
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    assert_qcow2_clean, assert_same_as_raw,
)

__metaclass__ = type

pytestmark = pytest.mark.interop
K64 = 64 * 1024

# Runs one export in a child process, slowed down per piece so that a kill lands mid-way.
CHILD = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup
args = json.loads(sys.argv[2])
real_call = qcow2.Qcow2Writer.__call__
def slow_call(self, offset, view):
    time.sleep(0.1)
    return real_call(self, offset, view)
qcow2.Qcow2Writer.__call__ = slow_call
target = _export.make_target(args['nbd'], tls=True, timeout=10)
backup.export_to_repository(target, args['repo'], changed_blocks=args['bitmap'], snapshot=args['snapshot'],
                            base_uuid=args['base'], connections=2, requests_in_flight=2)
print('done')
'''


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def check_repository(repo_dir, expected_by_snapshot, tmp_path):
    """Every listed point is complete and holds its snapshot's content; nothing else poses as a point."""
    with store.Repository(repo_dir) as repo:
        for point in repo.points:
            path = repo.file_path(point)
            assert store.file_sha256(path) == point['sha256']
            assert_qcow2_clean(path)
            assert_same_as_raw(path, expected_by_snapshot[point['snapshot_uuid']], tmp_path)
        return [p['snapshot_uuid'] for p in repo.points]


def test_sigkill_at_random_moments_never_loses_or_fakes_a_point(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 4 * 1024 * 1024, pattern='D', seed=41)
    server = nbd_server_factory('nbdkit-tls', image.path)
    repo_dir = str(tmp_path / 'repo')
    target = _export.make_target(server.nbd_info(), tls=True, timeout=10)
    backup.export_to_repository(target, repo_dir, snapshot={'uuid': 'snap-0'})
    expected = {'snap-0': read(image.path)}
    rnd = random.Random(7)
    anchor = 'snap-0'
    killed_mid_data = 0
    for attempt in range(1, 6):
        changed = rewrite_random_blocks(image.path, 24, seed=100 + attempt)
        snapshot = 'snap-%d' % attempt
        expected[snapshot] = read(image.path)
        args = {'nbd': server.nbd_info(), 'repo': repo_dir, 'bitmap': _cbt.encode(changed, image.size),
                'snapshot': {'uuid': snapshot}, 'base': anchor}
        child = subprocess.Popen([sys.executable, '-c', CHILD, collections_path(), json.dumps(args)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.4, 2.0))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=60)
        listed = check_repository(repo_dir, expected, tmp_path)
        if listed[-1] == snapshot:  # the child finished before the kill
            anchor = snapshot
            continue
        assert listed[-1] == anchor, (out, err)
        killed_mid_data += any(store.PARTIAL_MARK in name for name in os.listdir(repo_dir))
        # The next run cleans up and succeeds from the same anchor.
        result = backup.export_to_repository(target, repo_dir, changed_blocks=args['bitmap'], snapshot={'uuid': snapshot},
                                             base_uuid=anchor)
        assert not [name for name in os.listdir(repo_dir) if store.PARTIAL_MARK in name]
        assert result['point']['snapshot_uuid'] == snapshot
        anchor = snapshot
        assert check_repository(repo_dir, expected, tmp_path)[-1] == snapshot
    assert killed_mid_data >= 2  # the kills really landed while data was being written


@pytest.fixture
def tiny_filesystem(tmp_path):
    mount_point = tmp_path / 'tiny'
    mount_point.mkdir()
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1536k', 'tmpfs', str(mount_point)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        if os.environ.get('CI') == 'true':
            pytest.fail('cannot mount a tmpfs for the full-disk test: %s' % proc.stdout.decode())
        pytest.skip('cannot mount a tmpfs here: %s' % proc.stdout.decode())
    try:
        yield str(mount_point)
    finally:
        subprocess.run(['umount', str(mount_point)], check=False)


def test_full_disk_fails_cleanly_and_keeps_the_repository(nbd_server_factory, tmp_path, tiny_filesystem):
    image = make_disk_image(tmp_path / 'src.raw', 1024 * 1024, pattern='D', seed=43)
    server = nbd_server_factory('nbdkit-tls', image.path)
    target = _export.make_target(server.nbd_info(), tls=True, timeout=10)
    repo_dir = os.path.join(tiny_filesystem, 'repo')
    backup.export_to_repository(target, repo_dir, snapshot={'uuid': 'snap-0'})
    manifest = read(os.path.join(repo_dir, 'manifest.json'))
    # 1 MiB more of random data does not fit in what is left of 1.5 MiB.
    with open(image.path, 'wb') as handle:
        handle.write(os.urandom(1024 * 1024))
    with pytest.raises(OSError) as caught:
        backup.export_to_repository(target, repo_dir, changed_blocks=_cbt.encode(range(16), image.size),
                                    snapshot={'uuid': 'snap-1'}, base_uuid='snap-0')
    assert caught.value.errno == errno.ENOSPC
    assert read(os.path.join(repo_dir, 'manifest.json')) == manifest
    assert not [name for name in os.listdir(repo_dir) if store.PARTIAL_MARK in name]
    with store.Repository(repo_dir) as repo:
        assert [p['snapshot_uuid'] for p in repo.points] == ['snap-0']
