# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_verify and backup_info run by Ansible itself against repositories exported from a real NBD server."""

from __future__ import absolute_import, division, print_function

import json
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, store
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module as run_ansible
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks

__metaclass__ = type

pytestmark = pytest.mark.interop
K64 = 64 * 1024


def run_module(name, args, tmp_path, check=False):
    return run_ansible(name, args, tmp_path, check=check)[0]


@pytest.fixture
def repo(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 2 * 1024 * 1024 + 512, seed=51)
    server = nbd_server_factory('nbdkit-tls', image.path)
    repo_dir = str(tmp_path / 'backups' / 'vm1' / 'disk0')
    for n in (1, 2, 3):
        changed = None
        if n > 1:
            changed = _cbt.encode(rewrite_random_blocks(image.path, 4, seed=n), image.size)
        backup.export_to_repository(_export.make_target(server.nbd_info(), tls=True, timeout=10), repo_dir,
                                    changed_blocks=changed, base_uuid='snap-%d' % (n - 1) if n > 1 else None,
                                    snapshot={'uuid': 'snap-%d' % n, 'snapshot_of': 'disk-uuid', 'name': 'disk0'})
    with store.Repository(repo_dir) as opened:
        return repo_dir, list(opened.points)


def test_verify_ok_then_a_corrupt_block_fails(repo, tmp_path):
    repo_dir, points = repo
    result = run_module('backup_verify', {'repository': repo_dir}, tmp_path, check=True)
    assert result['failed'] is False and result['changed'] is False, result
    assert result['ok'] is True and result['first_bad'] is None and len(result['points']) == 3

    with open(os.path.join(repo_dir, points[1]['file']), 'r+b') as handle:
        handle.seek(K64 + 7)
        handle.write(b'\xff\x00\xff')
    result = run_module('backup_verify', {'repository': repo_dir}, tmp_path)
    assert result['failed'] is True and result['changed'] is False
    assert result['ok'] is False
    assert result['first_bad'] == points[1]['id']
    assert result['affected'] == [points[1]['id'], points[2]['id']]
    assert 'restore point %s' % points[1]['id'] in result['msg'] and 'cannot be trusted' in result['msg']
    assert 'Traceback' not in json.dumps(result)

    result = run_module('backup_verify', {'repository': repo_dir, 'point': points[0]['id']}, tmp_path)
    assert result['failed'] is False and [p['id'] for p in result['points']] == [points[0]['id']]


def test_spot_check_needs_the_xenapi_and_a_missing_repository_fails(repo, tmp_path):
    repo_dir, dummy = repo
    result = run_module('backup_verify', {'repository': repo_dir, 'spot_check': 4}, tmp_path)
    assert result['failed'] is True and 'hostname' in result['msg']
    result = run_module('backup_verify', {'repository': str(tmp_path / 'nowhere')}, tmp_path)
    assert result['failed'] is True and 'no such directory' in result['msg']


def test_backup_info(repo, tmp_path):
    repo_dir, points = repo
    damaged = str(tmp_path / 'backups' / 'vm2' / 'disk0')
    os.makedirs(damaged)
    with open(os.path.join(damaged, 'manifest.json'), 'w') as handle:
        handle.write('{')
    result = run_module('backup_info', {'path': str(tmp_path / 'backups')}, tmp_path, check=True)
    assert result['failed'] is False and result['changed'] is False, result
    repos = result['repositories']
    assert [r['path'] for r in repos] == [repo_dir, damaged]
    assert [p['id'] for p in repos[0]['points']] == [p['id'] for p in points]
    assert [p['chain_length'] for p in repos[0]['points']] == [1, 2, 3]
    assert all(0 <= p['age_seconds'] < 600 for p in repos[0]['points'])
    assert 'damaged' in repos[1]['error']
    result = run_module('backup_info', {'path': str(tmp_path / 'nowhere')}, tmp_path)
    assert result['failed'] is True and 'does not exist' in result['msg']
