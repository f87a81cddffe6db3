# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The write locks: a disk repository refuses a second writer (REPOSITORY_BUSY) and lets one in once the first has
left; a VM configuration store makes a second writer wait (the disks of one VM are pruned by several threads)."""

from __future__ import absolute_import, division, print_function

import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import vm_configs as _vm_configs

__metaclass__ = type


def test_second_repository_writer_is_refused_until_the_first_leaves(tmp_path):
    repo_dir = str(tmp_path / 'disk0')
    with store.Repository(repo_dir, write=True, create=True):
        with pytest.raises(store.RepositoryError) as caught:
            with store.Repository(repo_dir, write=True):
                pass  # pragma: no cover - never entered
        assert caught.value.code == 'REPOSITORY_BUSY'
        assert 'another run is writing the repository %s' % repo_dir in str(caught.value)
        with store.Repository(repo_dir) as reader:  # readers take no lock
            assert reader.points == []
    with store.Repository(repo_dir, write=True) as again:
        assert again.points == []


def test_lock_directory_without_waiting_answers_none_while_held(tmp_path):
    held = store.lock_directory(str(tmp_path), wait=False)
    try:
        assert store.lock_directory(str(tmp_path), wait=False) is None
    finally:
        store.unlock_directory(held)
    again = store.lock_directory(str(tmp_path), wait=False)
    assert again is not None
    store.unlock_directory(again)
    store.unlock_directory(None)  # nothing held: nothing to do


def test_second_vm_config_writer_waits_for_the_first(tmp_path):
    vm_dir = str(tmp_path)
    entered = threading.Event()
    order = []

    def second():
        with _vm_configs.VmConfigs(vm_dir, write=True):
            order.append('second')
        entered.set()

    with _vm_configs.VmConfigs(vm_dir, write=True):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)  # long enough for the second writer to reach the lock
        assert not entered.is_set()
        order.append('first')
    thread.join(10)
    assert entered.is_set()
    assert order == ['first', 'second']
