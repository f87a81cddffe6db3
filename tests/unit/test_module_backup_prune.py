# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_prune run by Ansible itself: check mode, diff, errors, idempotency.

A controller test (ansible-test runs tests under plugins/ without the ansible command line).
"""

from __future__ import absolute_import, division, print_function

import os

import pytest

from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module as run_ansible
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.test_retention import (
    build_chain, check_repository, read,
)

__metaclass__ = type

pytestmark = pytest.mark.interop


def run_prune_module(args, tmp_path, check=False, diff=False):
    return run_ansible('backup_prune', args, tmp_path, check=check, diff=diff)[0]


def test_module_check_mode_then_prune(nbd_server_factory, tmp_path):
    repo_dir, expected = build_chain(nbd_server_factory, tmp_path, incrementals=2, seed=91)
    manifest_before = read(os.path.join(repo_dir, 'manifest.json'))
    result = run_prune_module({'repository': repo_dir}, tmp_path)
    assert result['failed'] and 'keep_last' in result['msg']
    result = run_prune_module({'repository': repo_dir, 'keep_last': -2}, tmp_path)
    assert result['failed'] and 'keep_last must be' in result['msg']
    result = run_prune_module({'repository': str(tmp_path / 'nowhere'), 'keep_last': 1}, tmp_path)
    assert result['failed'] and 'not a backup repository' in result['msg'] and 'Traceback' not in result['msg']

    preview = run_prune_module({'repository': repo_dir, 'keep_last': 1}, tmp_path, check=True)
    assert not preview['failed'] and preview['changed'] and len(preview['removed']) == 2
    assert read(os.path.join(repo_dir, 'manifest.json')) == manifest_before

    result = run_prune_module({'repository': repo_dir, 'keep_last': 1}, tmp_path, diff=True)
    assert not result['failed'] and result['changed'] and result['removed'] == preview['removed']
    assert result['kept'] == preview['kept'] and list(result['merged']) == preview['kept']
    assert check_repository(repo_dir, expected, tmp_path) == ['snap-2']
    again = run_prune_module({'repository': repo_dir, 'keep_last': 1}, tmp_path)
    assert not again['failed'] and not again['changed']
