# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compressed restore points (zlib, zstd): qemu-img reads ours, we read qemu's, chains mix them, folds keep them."""

from __future__ import absolute_import, division, print_function

import json
import os
import random
import threading

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2, qcow2_fold
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    K64, MIB, assert_qcow2_clean, assert_same_as_raw, pieces, qemu_img, random_changes,
)

__metaclass__ = type


def mixed_disk(rnd, size):
    """Text, random data, zero-but-written and mostly-zero blocks (what guests hold)."""
    disk = bytearray()
    for index in range(-(-size // K64)):
        kind = index % 4
        if kind == 0:
            disk += rnd.randbytes(K64)
        elif kind == 1:
            disk += ((b'%08d INFO request served in %d ms\n' % (index, rnd.randint(1, 900))) * K64)[:K64]
        elif kind == 2:
            disk += bytes(K64)
        else:
            disk += bytes(K64 - 300) + rnd.randbytes(300)
    return disk[:size]


def write(path, disk, compression, backing_file=None, offsets=None, rnd=None, threads=1):
    writer = qcow2.Qcow2Writer(str(path), len(disk), backing_file=backing_file, compression=compression)
    work = pieces(offsets if offsets is not None else len(disk), disk, rnd or random.Random(0))
    parts = [work[n::threads] for n in range(threads)]

    def run(part):
        for offset, length in part:
            writer(offset, memoryview(bytes(disk[offset:offset + length])))
    workers = [threading.Thread(target=run, args=(part,)) for part in parts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return writer.finish()


@pytest.mark.parametrize('compression', qcow2.COMPRESSIONS)
def test_a_compressed_full_is_smaller_reads_the_same_and_qemu_agrees(tmp_path, compression):
    rnd = random.Random(21)
    size = 12 * MIB + 4608
    disk = mixed_disk(rnd, size)
    plain = write(tmp_path / 'plain.qcow2', disk, None, rnd=rnd)
    packed = write(tmp_path / 'packed.qcow2', disk, compression, rnd=rnd, threads=3)
    path = str(tmp_path / 'packed.qcow2')
    assert_qcow2_clean(path)
    assert qcow2.check(path) == []
    assert_same_as_raw(path, bytes(disk), tmp_path)
    info = json.loads(qemu_img('info', '--output=json', path).stdout)
    assert info['format-specific']['data']['compression-type'] == compression
    # the same content, the same digest and counts: only the file is smaller
    assert (packed.digest, packed.clusters_stored, packed.bytes_stored) == (plain.digest, plain.clusters_stored,
                                                                            plain.bytes_stored)
    assert packed.file_size < 0.6 * plain.file_size
    with qcow2.Qcow2Chain.open(path) as chain:
        assert chain.read(0, size) == bytes(disk)
    assert qcow2.scan(path).digest == plain.digest


@pytest.mark.parametrize('compression', qcow2.COMPRESSIONS)
def test_we_read_what_qemu_compresses(tmp_path, compression):
    rnd = random.Random(22)
    disk = mixed_disk(rnd, 4 * MIB)
    raw = tmp_path / 'disk.raw'
    raw.write_bytes(bytes(disk))
    out = str(tmp_path / 'qemu.qcow2')
    qemu_img('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'compression_type=%s' % compression, str(raw), out)
    with qcow2.Qcow2Image(out) as image:
        assert any(kind == qcow2.KIND_COMPRESSED for dummy, kind in image.iter_clusters())
    with qcow2.Qcow2Chain.open(out) as chain:
        assert chain.read(0, len(disk)) == bytes(disk)
    assert qcow2.check(out) == []


def test_a_chain_mixing_compressed_and_plain_points_restores_and_folds(tmp_path):
    rnd = random.Random(23)
    size = 8 * MIB
    disk = mixed_disk(rnd, size)
    states, paths = [], []
    for level, compression in enumerate(['zstd', None, 'zlib', 'zstd']):
        path = tmp_path / ('p%d.qcow2' % level)
        if level == 0:
            write(path, disk, compression, rnd=rnd)
        else:
            changed = sorted(set(random_changes(rnd, disk, 0.15)))
            write(path, disk, compression, backing_file='p%d.qcow2' % (level - 1), offsets=changed, rnd=rnd)
        states.append(bytes(disk))
        paths.append(str(path))
        assert_qcow2_clean(str(path))
        assert_same_as_raw(str(path), states[-1], tmp_path)
    # folding the overlays into the zstd full keeps its compressed clusters (and their shared refcounts exact)
    result = qcow2_fold.prepare(paths[0], [paths[2], paths[1]])
    qcow2_fold.switch(paths[0], result.patch)
    assert_qcow2_clean(paths[0])
    assert qcow2.check(paths[0]) == []
    assert_same_as_raw(paths[0], states[2], tmp_path)
    with qcow2.Qcow2Image(paths[0]) as image:
        assert any(kind == qcow2.KIND_COMPRESSED for dummy, kind in image.iter_clusters())
    os.rename(paths[0], paths[2])
    assert_same_as_raw(paths[3], states[3], tmp_path)  # the newest point still reads through the folded file


def test_compression_options_are_checked(tmp_path):
    with pytest.raises(qcow2.Qcow2Error, match='compression must be one of'):
        qcow2.Qcow2Writer(str(tmp_path / 'x.qcow2'), MIB, compression='lz4')


@pytest.mark.parametrize('compression', qcow2.COMPRESSIONS)
def test_a_compressible_partial_last_cluster_reads_in_qemu(tmp_path, compression):
    # qemu decompresses to a whole cluster or fails the read: the short last cluster is compressed padded
    size = 2 * K64 + 4608
    disk = (b'INFO all quiet\n' * size)[:size]
    path = str(tmp_path / 'short.qcow2')
    write(path, disk, compression)
    with qcow2.Qcow2Image(path) as image:
        assert [kind for dummy, kind in image.iter_clusters()] == [qcow2.KIND_COMPRESSED] * 3
    assert_same_as_raw(path, disk, tmp_path)
    assert_qcow2_clean(path)


def tiny_clusters(rnd, count):
    """Clusters that compress to a few dozen bytes: hundreds share one host cluster."""
    return b''.join(bytes([rnd.randrange(1, 256)]) * K64 for dummy in range(count))


@pytest.mark.parametrize('compression', qcow2.COMPRESSIONS)
def test_a_fold_keeps_the_points_compression(tmp_path, compression):
    rnd = random.Random(24)
    size = 40 * MIB + 4608
    disk = bytearray(tiny_clusters(rnd, 400)) + mixed_disk(rnd, size - 400 * K64)
    paths, states = [], []
    for level in range(3):
        path = str(tmp_path / ('p%d.qcow2' % level))
        if level == 0:
            write(path, disk, compression, rnd=rnd)
        else:
            changed = sorted(set(random_changes(rnd, disk, 0.2)))
            for offset in rnd.sample(range(0, 400 * K64, K64), 300):  # very compressible changes
                disk[offset:offset + K64] = bytes([rnd.randrange(1, 256)]) * K64
                changed.append(offset)
            disk[size - 4608:] = (b'tail text\n' * 500)[:4608]  # a compressible partial last cluster
            changed.append(size - 4608 - (size - 4608) % K64)
            write(path, disk, compression, backing_file=os.path.basename(paths[-1]), offsets=sorted(set(changed)), rnd=rnd)
        paths.append(path)
        states.append(bytes(disk))
    before = os.path.getsize(paths[0])
    with qcow2.Qcow2Image(paths[0]) as image:
        assert max(qcow2_fold._references(image)) > 255  # more compressed clusters in one host cluster than a byte counts
    result = qcow2_fold.prepare(paths[0], [paths[2], paths[1]], compress=True)
    assert result.compression == compression
    assert_same_as_raw(paths[0], states[0], tmp_path)  # not switched yet: reads as before
    assert_qcow2_clean(paths[0])
    qcow2_fold.switch(paths[0], result.patch)
    assert_qcow2_clean(paths[0])
    assert qcow2.check(paths[0]) == []
    assert_same_as_raw(paths[0], states[2], tmp_path)
    folded = set()
    for path in paths[1:]:
        with qcow2.Qcow2Image(path) as image:
            folded.update(image.allocated_clusters())
    with qcow2.Qcow2Image(paths[0]) as image:
        kinds = dict((index, kind) for index, kind in image.iter_clusters())
    compressed = [index for index in folded if kinds.get(index) == qcow2.KIND_COMPRESSED]
    assert len(compressed) > 0.4 * len(folded)  # the text and tiny clusters; random ones stay plain
    # compressed clusters cost less than whole ones: the fold writes less than the plain clusters it folds
    assert result.bytes_written < len(folded) * K64
    assert os.path.getsize(paths[0]) - before < len(folded) * K64
