# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw-file incrementals are journaled; dest must be a regular file (issue 10, items 4 and 8)."""

from __future__ import absolute_import, division, print_function

import os
import shutil
import stat
import subprocess
import sys

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import collections_path, run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.full_disk import fill
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    file_sha256, make_disk_image, rewrite_random_blocks,
)

__metaclass__ = type

pytestmark = pytest.mark.interop

SIZE = 8 * 1024 * 1024


@pytest.fixture
def disk(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', SIZE, seed=17)
    return nbd_server_factory('nbdkit-tls', image.path), image


def full(server, dest, tmp_path):
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'dest': dest}, tmp_path)
    assert result['failed'] is False, output
    return result


def incremental_args(server, image, dest, changed):
    return {'nbd': server.nbd_info(), 'dest': dest, 'changed_blocks': _cbt.encode(changed, image.size)}


def test_enospc_before_a_raw_apply_leaves_the_copy_whole(disk, tmp_path, small_tmpfs):
    server, image = disk
    mount_point = small_tmpfs(SIZE // 1024 + 4096)
    dest = os.path.join(mount_point, 'copy.raw')
    full(server, dest, tmp_path)
    before = file_sha256(dest)
    assert before == image.sha256
    changed = rewrite_random_blocks(image.path, 40, seed=3)  # 2.5 MiB of changes
    filler = fill(mount_point, 1024 * 1024)
    checked, output = run_module('vdi_export', incremental_args(server, image, dest, changed), tmp_path, check=True)
    assert checked['failed'] is True and checked['error_code'] == 'NO_SPACE', 'check mode tells the truth: ' + output
    result, output = run_module('vdi_export', incremental_args(server, image, dest, changed), tmp_path)
    assert result['failed'] is True and result['error_code'] == 'NO_SPACE', output
    assert 'unchanged' in result['msg'] and 'Traceback' not in output
    assert file_sha256(dest) == before  # still the previous snapshot, bit for bit
    assert sorted(os.listdir(mount_point)) == ['copy.raw', 'filler']
    os.unlink(filler)
    checked, output = run_module('vdi_export', incremental_args(server, image, dest, changed), tmp_path, check=True)
    assert checked['failed'] is False and checked['changed'] is True, output
    result, output = run_module('vdi_export', incremental_args(server, image, dest, changed), tmp_path)
    assert result['failed'] is False, output
    assert file_sha256(dest) == image.refresh()


def test_an_apply_killed_midway_is_finished_by_the_next_run(disk, tmp_path):
    server, image = disk
    dest = str(tmp_path / 'copy.raw')
    full(server, dest, tmp_path)
    first = rewrite_random_blocks(image.path, 6, seed=5)
    wanted = image.refresh()
    with open(image.path, 'rb') as handle:
        snapshot_one = handle.read()
    script = (
        'import os, signal\n'
        'from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export\n'
        'def checkpoint(step):\n'
        '    if step == "applying":\n'
        '        os.kill(os.getpid(), signal.SIGKILL)\n'
        'target = _export.make_target(%r, tls=True, timeout=10)\n'
        '_export.export_to_file(target, %r, changed_blocks=%r, checkpoint=checkpoint)\n'
    ) % (server.nbd_info(), dest, _cbt.encode(first, image.size))
    env = dict(os.environ, PYTHONPATH=collections_path())
    child = subprocess.run([sys.executable, '-c', script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=120, check=False)
    assert child.returncode == -9, child.stderr
    staging, journal = _export._apply_paths(dest)
    assert os.path.exists(journal) and os.path.exists(staging)
    assert file_sha256(dest) not in (image.sha256, wanted)  # really half-applied: only the first extent
    # the snapshot moves on; the next run (changed blocks of snapshot 2 against snapshot 1) finishes first
    second = rewrite_random_blocks(image.path, 3, seed=8)
    result, output = run_module('vdi_export', incremental_args(server, image, dest, second), tmp_path)
    assert result['failed'] is False and result['finished_apply'] > 0, output
    assert 'interrupted earlier run' in output
    assert file_sha256(dest) == image.refresh()
    assert not os.path.exists(journal) and not os.path.exists(staging)
    assert snapshot_one  # (the first snapshot's content was the one the journal completed)


def test_dest_that_is_a_device_a_directory_or_in_no_directory(disk, tmp_path):
    server, image = disk
    device = str(tmp_path / 'null-device')
    os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    cases = [(device, 'DEST_NOT_REGULAR_FILE'), (str(tmp_path), 'DEST_IS_DIRECTORY'),
             (str(tmp_path / 'missing' / 'copy.raw'), 'DEST_PARENT_MISSING')]
    for dest, code in cases:
        for changed in (None, [0]):
            args = {'nbd': server.nbd_info(), 'dest': dest}
            if changed is not None:
                args['changed_blocks'] = _cbt.encode(changed, image.size)
            result, output = run_module('vdi_export', args, tmp_path)
            assert result['failed'] is True and result['error_code'] == code, output
            assert 'resized' not in result['msg'] and 'Traceback' not in output
    assert stat.S_ISCHR(os.stat(device).st_mode)  # never replaced by a regular file
    assert not os.path.exists(str(tmp_path / 'missing'))
    shutil.rmtree(str(tmp_path / 'ansible-home'), ignore_errors=True)
