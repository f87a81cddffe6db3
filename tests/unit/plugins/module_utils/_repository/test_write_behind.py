# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write-behind: every write path keeps only a window of the file in the page cache, and the bytes stay right."""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import subprocess
import sys

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import raw_file
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import MAX_RUN, Qcow2Writer
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.raw_file import (
    AtomicFile, FileWriter, WriteBehind,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, restore
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, require_binary

__metaclass__ = type

MIB = 1024 * 1024
SIZE = 64 * MIB
PIECE = MIB

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='sync_file_range is Linux only')


def cached_bytes(path):
    """Bytes of ``path`` in the page cache, as util-linux fincore counts them."""
    fincore = require_binary('fincore')
    out = subprocess.run([fincore, '--bytes', '--noheadings', '--output', 'RES', path], check=True,
                         stdout=subprocess.PIPE).stdout
    return int(out.decode('ascii').strip())


def pieces(seed):
    """SIZE bytes of data that differ per MiB (a 64 KiB zero block in every eighth MiB), as (offset, bytes)."""
    for number in range(SIZE // PIECE):
        block = hashlib.sha256(b'%d-%d' % (seed, number)).digest() * (PIECE // 32)
        if number % 8 == 3:
            block = block[:65536] + bytes(65536) + block[131072:]
        yield number * PIECE, bytearray(block)


def expected_sha256(seed):
    digest = hashlib.sha256()
    for _offset, data in pieces(seed):
        digest.update(data)
    return digest.hexdigest()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(MIB), b''):
            digest.update(chunk)
    return digest.hexdigest()


def test_the_sync_call_is_found_on_linux():
    assert raw_file._sync_file_range is not None


@pytest.mark.parametrize('sparse', [True, False])
def test_a_raw_file_written_through_the_file_writer_keeps_only_the_window_cached(tmp_path, sparse):
    path = str(tmp_path / 'disk.raw')
    out = AtomicFile(path, size=SIZE)
    writer = FileWriter(out.fd, sparse=sparse)
    for offset, data in pieces(1):
        writer(offset, memoryview(data))
    # the window and the piece that pushed past it; without write-behind the whole 64 MiB stays cached
    assert cached_bytes(out.temp_path) <= raw_file.WRITE_BEHIND_WINDOW + PIECE
    out.commit()
    assert file_sha256(path) == expected_sha256(1)


def test_a_qcow2_point_keeps_only_the_window_cached_and_qemu_img_reads_it(tmp_path):
    path = str(tmp_path / 'point.qcow2')
    writer = Qcow2Writer(path, SIZE)
    for offset, data in pieces(2):
        writer(offset, memoryview(data))
    assert cached_bytes(path) <= raw_file.WRITE_BEHIND_WINDOW + PIECE
    writer.finish()
    raw = str(tmp_path / 'converted.raw')
    subprocess.run([require_binary('qemu-img'), 'convert', '-f', 'qcow2', '-O', 'raw', path, raw], check=True)
    assert file_sha256(raw) == expected_sha256(2)


def test_export_backup_and_restore_from_a_real_server_keep_only_a_window_cached(nbd_server_factory, tmp_path):
    """The write paths of a run, end to end: the bytes are the source's, and the page cache holds the window
    (plus a copy run and a file's end), not the disk."""
    image = make_disk_image(tmp_path / 'src.raw', SIZE, seed=5)
    server = nbd_server_factory('qemu-plain', image.path)
    bound = raw_file.WRITE_BEHIND_WINDOW + MAX_RUN + MIB

    raw = str(tmp_path / 'export.raw')
    _export.export_to_file(_export.make_target(server.nbd_info(), tls=False, timeout=10), raw)
    assert cached_bytes(raw) <= bound
    assert file_sha256(raw) == file_sha256(image.path)

    repo_dir = str(tmp_path / 'repository')
    # (the point is read back once to hash it, so its page cache says nothing here; its bytes are checked below)
    backup.export_to_repository(_export.make_target(server.nbd_info(), tls=False, timeout=10), repo_dir,
                                snapshot={'uuid': 'snap-1', 'snapshot_of': 'disk', 'name': 'disk0'})

    restored = str(tmp_path / 'restored.raw')
    with restore.RestoreSource(repo_dir) as source:
        restore.restore_to_file(source, restored)
    assert cached_bytes(restored) <= bound
    assert file_sha256(restored) == file_sha256(image.path)
    subprocess.run([require_binary('qemu-img'), 'compare', '-f', 'raw', '-F', 'raw', image.path, restored], check=True)


def test_write_behind_on_a_pipe_turns_itself_off(tmp_path):
    read_end, write_end = os.pipe()
    try:
        behind = WriteBehind(write_end, window=PIECE)
        for number in range(4):
            os.write(write_end, b'x' * 4096)
            behind.written(number * 4096, 4096)
        assert not behind.enabled
        assert os.read(read_end, 65536) == b'x' * 16384
    finally:
        os.close(read_end)
        os.close(write_end)
