# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 writer, reader, chain and check, against qemu-img / qemu-io."""

from __future__ import absolute_import, division, print_function

import os
import random
import struct
import threading

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.raw_file import AtomicFile
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    K64, MIB, assert_qcow2_clean, assert_same_as_raw, feed, pieces, qemu_img, qemu_io, random_changes, random_disk,
)

__metaclass__ = type


def write_image(path, disk, piece_list, backing_file=None, virtual_size=None):
    writer = qcow2.Qcow2Writer(str(path), len(disk) if virtual_size is None else virtual_size, backing_file=backing_file)
    feed(writer, disk, piece_list)
    return writer, writer.finish()


def nonzero_blocks(disk):
    return [o for o in range(0, len(disk), K64) if any(disk[o:o + K64])]


@pytest.mark.parametrize('size', [
    3 * MIB,                    # whole clusters
    3 * MIB + 4608,             # partial last cluster
    K64 + 512,                  # one full, one tiny cluster
    512,                        # a single partial cluster
    0,                          # empty disk
])
def test_full_image_equals_disk(tmp_path, size):
    rnd = random.Random(size)
    disk = random_disk(rnd, size)
    path = str(tmp_path / 'full.qcow2')
    writer, result = write_image(path, disk, pieces(size, disk, rnd))
    expected = nonzero_blocks(disk)
    assert list(writer.stored_clusters()) == expected  # only non-zero clusters are stored
    assert result.clusters_stored == len(expected) and result.zero_clusters == 0
    assert result.bytes_stored == sum(min(K64, size - o) for o in expected)
    assert os.path.getsize(path) < len(expected) * K64 + 8 * K64
    report = assert_qcow2_clean(path)
    assert report.get('allocated-clusters', 0) >= len(expected)
    assert_same_as_raw(path, bytes(disk), tmp_path)
    with qcow2.Qcow2Image(path) as image:
        assert image.check() == []
        assert image.version == 3 and image.backing_file is None and image.virtual_size == size
        assert list(image.allocated_clusters()) == expected
        assert image.digest() == result.digest
        assert image.bytes_stored() == result.bytes_stored
        assert image.read(0, size) == bytes(disk)
        for offset, length in ((0, 0), (size // 3, min(200000, size - size // 3)), (max(0, size - 700), min(size, 700))):
            assert image.read(offset, length) == bytes(disk[offset:offset + length])


def test_several_l2_tables_sparse(tmp_path):
    """A disk larger than one L2 table (512 MiB) with a few blocks around the table boundary."""
    size = 1100 * MIB + 512
    rnd = random.Random(1)
    blocks = {}
    for offset in (0, 100 * MIB, 512 * MIB - K64, 512 * MIB, 1024 * MIB + K64, size - size % K64):
        blocks[offset] = rnd.getrandbits(8 * K64).to_bytes(K64, 'little')[:size - offset]
    path = str(tmp_path / 'big.qcow2')
    raw_path = str(tmp_path / 'big.raw')
    writer = qcow2.Qcow2Writer(path, size)
    with open(raw_path, 'wb') as raw:
        raw.truncate(size)
        for offset, data in sorted(blocks.items(), reverse=True):
            writer(offset, memoryview(bytearray(data)))
            raw.seek(offset)
            raw.write(data)
    writer(200 * MIB, memoryview(bytearray(MIB)))  # zeros are not stored
    result = writer.finish()
    assert result.clusters_stored == len(blocks)
    assert os.path.getsize(path) < 16 * K64
    assert_qcow2_clean(path)
    qemu_img('compare', '-q', '-f', 'qcow2', '-F', 'raw', path, raw_path)
    with qcow2.Qcow2Image(path) as image:
        assert len(image.l1) == 3 and image.check() == []
        assert list(image.allocated_clusters()) == sorted(blocks)
        for offset, data in blocks.items():
            assert image.read(offset, len(data)) == data
        assert image.read(512 * MIB - 5, 10) == blocks[512 * MIB - K64][-5:] + blocks[512 * MIB][:5]
        assert image.read(100 * MIB - 5, 10) == bytes(5) + blocks[100 * MIB][:5]
        assert image.digest() == result.digest


def test_threads_out_of_order_medium_disk(tmp_path):
    rnd = random.Random(7)
    size = 64 * MIB + 3 * 512
    disk = random_disk(rnd, size, data_ratio=0.6)
    piece_list = pieces(size, disk, rnd)
    path = str(tmp_path / 'threads.qcow2')
    writer = qcow2.Qcow2Writer(path, size)
    chunks = [piece_list[k::4] for k in range(4)]
    errors = []

    def run(chunk):
        try:
            feed(writer, disk, chunk)
        except Exception as exc:  # pylint: disable=broad-except
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    result = writer.finish()
    assert_qcow2_clean(path)
    assert_same_as_raw(path, bytes(disk), tmp_path)
    # The same data in guest order, one block at a time, gives the same digest and cluster list.
    serial_writer, serial = write_image(str(tmp_path / 'serial.qcow2'), disk, pieces(size, disk, max_blocks=1))
    assert serial.digest == result.digest
    assert list(serial_writer.stored_clusters()) == list(writer.stored_clusters())
    with qcow2.Qcow2Chain.open(path) as chain:
        assert chain.read(0, size) == bytes(disk)
        assert list(chain.iter_allocated()) == nonzero_blocks(disk)
    assert qcow2.check(path) == []


def test_digest_depends_on_content_not_order(tmp_path):
    rnd = random.Random(3)
    disk = random_disk(rnd, 2 * MIB + 512, zero_runs=False)
    digests = set()
    for attempt in range(3):
        order = pieces(len(disk), disk, random.Random(attempt), max_blocks=attempt * 5 + 1)
        digests.add(write_image(tmp_path / ('d%d.qcow2' % attempt), disk, order)[1].digest)
    assert len(digests) == 1
    changed = bytearray(disk)
    changed[K64 + 17] ^= 1
    assert write_image(tmp_path / 'changed.qcow2', changed, pieces(len(disk), changed))[1].digest not in digests
    # Same bytes at another offset is a different digest too.
    digest = qcow2.ClusterDigest(K64, 2 * K64)
    digest.add(0, b'a' * K64)
    other = qcow2.ClusterDigest(K64, 2 * K64)
    other.add(K64, b'a' * K64)
    assert digest.hexdigest() != other.hexdigest()


def test_overlay_chain_of_four(tmp_path):
    rnd = random.Random(11)
    size = 6 * MIB + 1536
    disk = random_disk(rnd, size)
    paths = []
    states = []
    stored = []
    name = 'p0.qcow2'
    writer, result = write_image(tmp_path / name, disk, pieces(size, disk, rnd))
    paths.append(str(tmp_path / name))
    states.append(bytes(disk))
    stored.append((writer, result))
    for level in range(1, 4):
        changed = random_changes(rnd, disk, 0.25)
        changed.append(size - size % K64)  # the partial last cluster changes every time
        disk[-1] ^= 0xff
        changed = sorted(set(changed))
        name = 'p%d.qcow2' % level
        writer, result = write_image(tmp_path / name, disk, pieces(changed, disk, rnd), backing_file=paths[-1].rsplit('/', 1)[1])
        paths.append(str(tmp_path / name))
        states.append(bytes(disk))
        stored.append((writer, result))
        # An overlay stores exactly the changed blocks, zero ones with the zero flag.
        assert list(writer.stored_clusters()) == changed
        zero = [o for o in changed if not any(disk[o:o + K64])]
        assert result.zero_clusters == len(zero)
        assert result.bytes_stored == sum(min(K64, size - o) for o in changed if o not in zero)
    assert stored[1][1].zero_clusters > 0  # the case that must shadow the backing file happened
    for path, state, (writer, result) in zip(paths, states, stored):
        assert_qcow2_clean(path)
        assert_same_as_raw(path, state, tmp_path)
        with qcow2.Qcow2Chain.open(path) as chain:
            assert chain.read(0, size) == state
            assert chain.read(K64 - 5, 10) == state[K64 - 5:K64 + 5]
            assert list(chain.iter_allocated()) == nonzero_blocks(state)
        with qcow2.Qcow2Image(path) as image:
            assert image.check() == []
            assert image.digest() == result.digest
            assert list(image.allocated_clusters()) == list(writer.stored_clusters())
    with qcow2.Qcow2Image(paths[2]) as image:
        assert image.backing_file == 'p1.qcow2' and image.backing_format == 'qcow2'
    # Explicit chain of images, newest first, equals opening through the backing names.
    with qcow2.Qcow2Chain(list(reversed(paths))) as chain:
        assert chain.read(0, size) == states[-1]


def test_writer_on_atomic_file_descriptor(tmp_path):
    disk = random_disk(random.Random(5), MIB)
    target = str(tmp_path / 'point.qcow2')
    atomic = AtomicFile(target)
    writer = qcow2.Qcow2Writer(atomic.fd, len(disk))
    feed(writer, disk, pieces(len(disk), disk))
    writer.finish()
    assert not os.path.exists(target)
    atomic.commit()
    assert_qcow2_clean(target)
    assert_same_as_raw(target, bytes(disk), tmp_path)


def test_writer_accepts_bytes_and_rejects_misuse(tmp_path):
    path = str(tmp_path / 'misuse.qcow2')
    writer = qcow2.Qcow2Writer(path, 4 * K64 + 512)
    writer(0, b'\x01' * K64)
    writer(4 * K64, b'\x02' * 512)
    with pytest.raises(qcow2.Qcow2Error, match='twice'):
        writer(0, b'\x03' * K64)
    with pytest.raises(qcow2.Qcow2Error, match='aligned'):
        writer(100, b'\x01' * K64)
    with pytest.raises(qcow2.Qcow2Error, match='aligned'):
        writer(K64, b'\x01' * 1000)
    with pytest.raises(qcow2.Qcow2Error, match='aligned'):
        writer(4 * K64, b'\x01' * K64)  # past the end
    result = writer.finish()
    assert result.clusters_stored == 2
    with pytest.raises(qcow2.Qcow2Error):
        writer(K64, b'\x01' * K64)
    assert_same_as_raw(path, b'\x01' * K64 + bytes(3 * K64) + b'\x02' * 512, tmp_path)
    with pytest.raises(qcow2.Qcow2Error):
        qcow2.Qcow2Writer(path, K64, cluster_size=1000)
    with pytest.raises(qcow2.Qcow2Error):
        qcow2.Qcow2Writer(path, K64, backing_file='x' * 2000)


def test_standalone_can_store_zeros_and_overlay_can_skip_them(tmp_path):
    disk = bytearray(4 * K64)
    disk[0] = 1
    writer = qcow2.Qcow2Writer(str(tmp_path / 'z.qcow2'), len(disk), store_zeros=True)
    feed(writer, disk, pieces(len(disk), disk))
    assert writer.finish().zero_clusters == 3
    assert_qcow2_clean(str(tmp_path / 'z.qcow2'))
    assert_same_as_raw(str(tmp_path / 'z.qcow2'), bytes(disk), tmp_path)
    with qcow2.Qcow2Image(str(tmp_path / 'z.qcow2')) as image:
        assert [kind for _o, kind in image.iter_clusters()] == ['data', 'zero', 'zero', 'zero']
        assert image.bytes_stored() == K64


def test_reader_reads_what_qemu_writes(tmp_path):
    size = 5 * MIB + 512
    base = str(tmp_path / 'base.qcow2')
    mid = str(tmp_path / 'mid.qcow2')
    top = str(tmp_path / 'top.qcow2')
    qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', base, str(size))
    qemu_io(base, 'write -P 0x11 0 1M', 'write -P 0x22 2M 300k', 'write -P 0x33 5M 512')
    qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', 'base.qcow2', '-F', 'qcow2', mid)
    qemu_io(mid, 'write -z 64k 128k', 'write -P 0x44 3M 64k', 'write -P 0x55 1000k 100k')
    qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', '-b', 'mid.qcow2', '-F', 'qcow2', top)
    qemu_io(top, 'write -P 0x66 4M 1k', 'write -z 2M 64k')
    expected = bytearray(size)
    expected[0:MIB] = b'\x11' * MIB
    expected[2 * MIB:2 * MIB + 300 * 1024] = b'\x22' * (300 * 1024)
    expected[5 * MIB:5 * MIB + 512] = b'\x33' * 512
    expected[K64:3 * K64] = bytes(2 * K64)
    expected[3 * MIB:3 * MIB + K64] = b'\x44' * K64
    expected[1000 * 1024:1100 * 1024] = b'\x55' * (100 * 1024)
    expected[4 * MIB:4 * MIB + 1024] = b'\x66' * 1024
    expected[2 * MIB:2 * MIB + K64] = bytes(K64)
    assert_same_as_raw(top, bytes(expected), tmp_path)
    with qcow2.Qcow2Chain.open(top) as chain:
        names = [os.path.join(str(tmp_path), name) for name in ('mid.qcow2', 'base.qcow2')]
        assert [image.path for image in chain.images] == [top] + names
        assert chain.read(0, size) == bytes(expected)
        allocated = list(chain.iter_allocated())
        assert set(nonzero_blocks(expected)) <= set(allocated)
        assert 2 * MIB not in allocated and K64 not in allocated  # zeroed by a newer layer
    for path in (base, mid, top):
        assert qcow2.check(path) == []
    with qcow2.Qcow2Image(mid) as image:
        kinds = dict(image.iter_clusters())
        assert kinds[K64] == 'zero' and kinds[3 * MIB] == 'data'
        assert image.read_cluster(0) is None  # falls through to the base
    # Compressed clusters (qemu-img convert -c) read back too.
    packed = str(tmp_path / 'packed.qcow2')
    qemu_img('convert', '-c', '-f', 'qcow2', '-O', 'qcow2', '-o', 'cluster_size=65536', top, packed)
    with qcow2.Qcow2Image(packed) as image:
        assert 'compressed' in {kind for _o, kind in image.iter_clusters()}
        assert image.read(0, size) == bytes(expected)
        assert image.check() == []


def _patch(path, offset, data):
    with open(path, 'r+b') as handle:
        handle.seek(offset)
        handle.write(data)


def test_check_finds_damage(tmp_path):
    disk = random_disk(random.Random(9), 2 * MIB, zero_runs=False)
    path = str(tmp_path / 'good.qcow2')
    write_image(path, disk, pieces(len(disk), disk))
    with open(path, 'rb') as handle:
        good = handle.read()
    header = struct.unpack('>4sIQIIQIIQQI', good[:60])
    l1_offset, rt_offset = header[8], header[9]
    l2_offset = struct.unpack('>Q', good[l1_offset:l1_offset + 8])[0] & qcow2.OFFSET_MASK
    rb_offset = struct.unpack('>Q', good[rt_offset:rt_offset + 8])[0]

    def damaged(name, offset, data):
        target = str(tmp_path / name)
        with open(target, 'wb') as handle:
            handle.write(good)
        _patch(target, offset, data)
        return qcow2.check(target)

    assert 'bad magic' in damaged('magic.qcow2', 0, b'QFI\x00')[0]
    assert 'version' in damaged('version.qcow2', 4, struct.pack('>I', 9))[0]
    assert all(good[l2_offset + 8 * index:l2_offset + 8 * index + 8] != bytes(8) for index in range(32))
    problems = damaged('overlap.qcow2', l2_offset + 8, struct.pack('>Q', qcow2.FLAG_COPIED | l1_offset))
    assert any('overlaps' in p for p in problems), problems
    assert any('leaked' in p for p in problems), problems  # the data cluster no longer referenced
    problems = damaged('refcount.qcow2', rb_offset + 2, b'\x00\x02')
    assert any('refcount 2' in p for p in problems), problems
    problems = damaged('beyond.qcow2', l2_offset, struct.pack('>Q', qcow2.FLAG_COPIED | (1 << 40)))
    assert any('beyond the end' in p for p in problems), problems
    truncated = str(tmp_path / 'truncated.qcow2')
    with open(truncated, 'wb') as handle:
        handle.write(good[:len(good) // 2])
    assert qcow2.check(truncated)
    assert qcow2.check(str(tmp_path / 'missing.qcow2'))
    problems = damaged('dirty.qcow2', 72, struct.pack('>Q', 1))
    assert any('dirty' in p for p in problems)
    with pytest.raises(qcow2.Qcow2Error, match='unsupported incompatible'):
        qcow2.Qcow2Image(_copy_with(tmp_path, good, 72, struct.pack('>Q', 16)))


def _copy_with(tmp_path, good, offset, data):
    target = str(tmp_path / 'copy.qcow2')
    with open(target, 'wb') as handle:
        handle.write(good)
    _patch(target, offset, data)
    return target


def test_chain_open_detects_loops(tmp_path):
    disk = bytearray(K64)
    disk[0] = 1
    path = str(tmp_path / 'loop.qcow2')
    write_image(path, disk, [(0, K64)], backing_file='loop.qcow2')
    with pytest.raises(qcow2.Qcow2Error, match='loops'):
        qcow2.Qcow2Chain.open(path)
