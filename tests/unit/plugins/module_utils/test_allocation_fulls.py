# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fulls that read only the allocated blocks: the lab's VHD export map, NBD reads of just those blocks, bytes compared."""

from __future__ import absolute_import, division, print_function

import hashlib
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import restore, store
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import allocation as _allocation
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import qemu_img

__metaclass__ = type

MIB = 1024 * 1024
BLOCK = 2 * MIB
SIZE = 64 * MIB
# guest writes: 10 % of the disk in a few places, one of them across a 2 MiB block boundary
WRITES = [(0, 2 * MIB), (10 * MIB + 4096, MIB), (31 * MIB, 2 * MIB), (63 * MIB, MIB + 0)]


def params(**overrides):
    base = dict(snapshot=None, base=None, nbd_network=None, repository=None, dest=None, tls=True, tls_ca_path=None,
                timeout=30, min_rate_mib_s=1.0, connections=2, requests_in_flight=4, retries=2, on_broken_chain='fail',
                run=None, allocation_map='auto')
    base.update(overrides)
    return base


@pytest.fixture
def thin_snapshot(lab, client):
    """A 64 MiB disk with 6.4 MiB written, snapshotted: (snapshot uuid, its content, allocated bytes by 2 MiB block)."""
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    sr = client.call('SR.get_by_name_label', 'Local storage')[0]
    ref, record = _vdi_import.create_vdi(client, sr, 'thin', SIZE)
    for number, (offset, length) in enumerate(WRITES):
        lab.write(record['uuid'], offset, length, seed=number + 1)
    snap = client.call('VDI.snapshot', ref, {})
    uuid = client.call('VDI.get_uuid', snap)
    with open(lab.path(uuid), 'rb') as handle:
        content = handle.read().ljust(SIZE, b'\0')
    blocks = set()
    for offset, length in WRITES:
        blocks.update(range(offset // BLOCK, (offset + length - 1) // BLOCK + 1))
    return uuid, content, len(blocks) * BLOCK


def restored_equals(repo_dir, content, tmp_path):
    out = str(tmp_path / 'restored.raw')
    with restore.RestoreSource(repo_dir) as source:
        restore.restore_to_file(source, out, force=True)
    with open(out, 'rb') as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == hashlib.sha256(content).hexdigest()
    raw = str(tmp_path / 'source.raw')
    with open(raw, 'wb') as handle:
        handle.write(content)
    with store.Repository(repo_dir) as repo:
        point_file = repo.file_path(repo.newest())
    assert qemu_img('compare', '-f', 'qcow2', '-F', 'raw', point_file, raw).returncode == 0


def test_a_full_reads_only_the_blocks_the_host_lists(thin_snapshot, client, tmp_path):
    uuid, content, allocated = thin_snapshot
    found = _allocation.vdi_allocation(client, client.call('VDI.get_by_uuid', uuid))
    assert found.virtual_size == SIZE and found.allocated_bytes == allocated
    names = [client.call('task.get_name_label', task) for task in client.call('task.get_all')]
    assert 'xenserver.cbt_backup allocation map' not in names  # the map's task does not stay behind
    repo_dir = str(tmp_path / 'repo')
    result = _vdi_export.export_snapshot(client, params(snapshot=uuid, repository=repo_dir))
    assert result['allocation_source'] == 'vhd_bat' and 'allocation_fallback_reason' not in result
    assert allocated <= result['bytes_read'] <= 1.1 * allocated < SIZE / 4
    assert result['point']['allocation_source'] == 'vhd_bat'
    restored_equals(repo_dir, content, tmp_path)
    # a raw file full reads the same blocks and holds the whole disk
    dest = str(tmp_path / 'disk.raw')
    result = _vdi_export.export_snapshot(client, params(snapshot=uuid, dest=dest))
    assert result['allocation_source'] == 'vhd_bat' and result['bytes_read'] <= 1.1 * allocated
    with open(dest, 'rb') as handle:
        assert handle.read() == content


def test_allocation_map_none_reads_everything(thin_snapshot, client, tmp_path):
    uuid, content, allocated = thin_snapshot
    repo_dir = str(tmp_path / 'repo')
    result = _vdi_export.export_snapshot(client, params(snapshot=uuid, repository=repo_dir, allocation_map='none'))
    assert result['allocation_source'] == 'none' and result['bytes_read'] == SIZE
    restored_equals(repo_dir, content, tmp_path)


def test_a_host_without_a_map_is_read_whole_and_says_why(thin_snapshot, client, tmp_path, monkeypatch):
    uuid, content, allocated = thin_snapshot
    # what an older host or a failing SR answers: no VHD export of that VDI (here: a VDI the host does not know)
    real = _allocation.vdi_allocation

    def unknown_vdi(api, ref):
        return real(api, 'OpaqueRef:00000000-0000-0000-0000-00000000dead')
    monkeypatch.setattr(_allocation, 'vdi_allocation', unknown_vdi)
    repo_dir = str(tmp_path / 'repo')
    result = _vdi_export.export_snapshot(client, params(snapshot=uuid, repository=repo_dir))
    assert result['allocation_source'] == 'none' and result['bytes_read'] == SIZE
    assert 'HTTP 404' in result['allocation_fallback_reason']
    assert any('no allocation map' in warning for warning in result['warnings'])
    assert result['point']['allocation_source'] == 'none'
    restored_equals(repo_dir, content, tmp_path)


def test_lab_file_is_sparse_where_nothing_was_written(thin_snapshot, lab):
    uuid, dummy, allocated = thin_snapshot
    # the premise of the map: the snapshot's file holds data only where the guest wrote
    used = os.stat(lab.path(uuid)).st_blocks * 512
    assert used <= allocated + MIB
