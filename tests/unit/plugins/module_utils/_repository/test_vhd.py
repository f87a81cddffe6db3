# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dynamic VHD stream, against qemu's vpc driver."""

from __future__ import absolute_import, division, print_function

import json
import random
import struct

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2, vhd
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    K64, MIB, assert_same_as_raw, feed, pieces, qemu_img, random_changes, random_disk,
)

__metaclass__ = type

BLOCK = 2 * MIB


def write_vhd(stream, path):
    with open(path, 'wb') as handle:
        written = stream.write_to(handle)
    assert written == stream.length == len(stream)
    return path


def assert_vhd_sound(path, stream):
    """qemu opens it with the exact size; ``qemu-img check -f vpc`` passes (qemu's vpc driver has no
    checker: exit code 63 'does not support checks' is accepted); our own structural reading agrees."""
    result = qemu_img('check', '-f', 'vpc', path, check=False)
    assert result.returncode == 0 or (result.returncode == 63 and 'does not support checks' in result.stderr), result
    info = json.loads(qemu_img('info', '-f', 'vpc', '--output=json', path).stdout)
    assert info['virtual-size'] == stream.size
    with open(path, 'rb') as handle:
        data = handle.read()
    assert len(data) == stream.length
    footer, copy, header = data[-512:], data[:512], data[512:1536]
    assert footer == copy and footer[:8] == b'conectix' and header[:8] == b'cxsparse'
    assert vhd.checksum(footer[:64] + bytes(4) + footer[68:]) == struct.unpack('>I', footer[64:68])[0]
    assert vhd.checksum(header[:36] + bytes(4) + header[40:]) == struct.unpack('>I', header[36:40])[0]
    assert struct.unpack('>QQ', footer[40:56]) == (stream.size, stream.size)
    assert footer[28:32] == b'tap\x00'
    entries, block_size = struct.unpack('>II', header[28:36])
    bat = struct.unpack('>%dI' % entries, data[1536:1536 + 4 * entries])
    present = [e for e in bat if e != 0xffffffff]
    assert len(present) == stream.blocks_present
    ends = sorted((e * 512, e * 512 + 512 + block_size) for e in present)
    for (start, end), following in zip(ends, ends[1:] + [(len(data) - 512, None)]):
        assert start >= 1536 + 4 * entries and end <= following[0]  # inside the file, no overlap
    return data


def raw_source(disk):
    def read(offset, length):
        assert 0 <= offset and offset + length <= len(disk)
        return bytes(disk[offset:offset + length])
    return read


@pytest.mark.parametrize('size', [5 * MIB, 5 * MIB + 3 * 512, BLOCK, K64, 2 * BLOCK + K64])
def test_vhd_from_raw_round_trips(tmp_path, size):
    rnd = random.Random(size)
    disk = random_disk(rnd, size, data_ratio=0.3)
    allocated = [o for o in range(0, size, K64) if any(disk[o:o + K64])]
    stream = vhd.VhdStream(raw_source(disk), size, iter(allocated), timestamp=1700000000, unique_id=bytes(range(16)))
    path = write_vhd(stream, str(tmp_path / 'disk.vhd'))
    assert stream.blocks_present == len({o // BLOCK for o in allocated})
    assert_vhd_sound(path, stream)
    assert_same_as_raw(path, bytes(disk), tmp_path, fmt='vpc')
    # Iterating again yields the same bytes (a retried upload).
    assert b''.join(stream.chunks()) == b''.join(stream)


def test_only_allocated_blocks_travel(tmp_path):
    size = 64 * MIB
    disk = bytearray(size)
    disk[10 * MIB + 5] = 1
    disk[size - 1] = 2
    stream = vhd.VhdStream(raw_source(disk), size, [10 * MIB, size - K64])
    assert stream.blocks_present == 2
    assert stream.length == 512 + 1024 + 512 + 2 * (512 + BLOCK) + 512
    path = write_vhd(stream, str(tmp_path / 'sparse.vhd'))
    assert_vhd_sound(path, stream)
    assert_same_as_raw(path, bytes(disk), tmp_path, fmt='vpc')
    empty = vhd.VhdStream(raw_source(disk), size, [])
    assert empty.blocks_present == 0
    assert_same_as_raw(write_vhd(empty, str(tmp_path / 'empty.vhd')), bytes(size), tmp_path, fmt='vpc')


def test_vhd_from_qcow2_chain(tmp_path):
    rnd = random.Random(21)
    size = 9 * MIB + 1024
    disk = random_disk(rnd, size, data_ratio=0.3)
    writer = qcow2.Qcow2Writer(str(tmp_path / 'p0.qcow2'), size)
    feed(writer, disk, pieces(size, disk, rnd))
    writer.finish()
    parent = 'p0.qcow2'
    for level in range(1, 3):
        changed = random_changes(rnd, disk, 0.2)
        writer = qcow2.Qcow2Writer(str(tmp_path / ('p%d.qcow2' % level)), size, backing_file=parent)
        feed(writer, disk, pieces(changed, disk, rnd))
        writer.finish()
        parent = 'p%d.qcow2' % level
    with qcow2.Qcow2Chain.open(str(tmp_path / parent)) as chain:
        stream = vhd.VhdStream(chain.read, chain.virtual_size, chain.iter_allocated())
        path = write_vhd(stream, str(tmp_path / 'restore.vhd'))
    assert_vhd_sound(path, stream)
    assert_same_as_raw(path, bytes(disk), tmp_path, fmt='vpc')


def test_unaligned_size_is_padded_to_a_sector(tmp_path):
    size = 3 * MIB + 100
    disk = bytearray(size)
    disk[-1] = 7
    stream = vhd.VhdStream(raw_source(disk), size, [size - size % K64])
    assert stream.size == 3 * MIB + 512
    path = write_vhd(stream, str(tmp_path / 'odd.vhd'))
    assert_vhd_sound(path, stream)
    assert_same_as_raw(path, bytes(disk) + bytes(412), tmp_path, fmt='vpc')


def test_geometry_and_limits():
    assert vhd.chs_geometry(10 * MIB) == (301, 4, 17)  # the spec's algorithm (qemu-img create rounds up to 302)
    assert vhd.chs_geometry(3 * 1024 * MIB)[1:] == (16, 63)
    assert vhd.chs_geometry(500 * 1024 * MIB) == (65535, 16, 255)
    with pytest.raises(vhd.VhdError):
        vhd.VhdStream(None, vhd.MAX_VHD_SIZE + 512, [])
    with pytest.raises(vhd.VhdError):
        vhd.VhdStream(None, MIB, [MIB])
    with pytest.raises(vhd.VhdError):
        vhd.VhdStream(None, MIB, [], block_size=3000)
    big = vhd.VhdStream(None, 2000 * 1024 * MIB, [0])
    assert big.length == 1536 + 1000 * 1024 * 4 + 512 + BLOCK + 512


# -- the allocation map at the start of a VHD stream --------------------------------------------------------

def reader_of(data, step=777):
    """``read(n)`` over ``data`` that returns at most ``step`` bytes a call (as a socket does)."""
    position = [0]

    def read(length):
        chunk = data[position[0]:position[0] + min(length, step)]
        position[0] += len(chunk)
        return chunk
    return read, position


def test_allocation_map_of_our_stream_and_of_qemu_img(tmp_path):
    size = 9 * MIB
    allocated = [0, 5 * MIB, 9 * MIB - 512]  # blocks 0, 2 and the short last block 4
    stream = vhd.VhdStream(lambda offset, length: bytes(length), size, allocated)
    data = b''.join(stream.chunks())
    read, position = reader_of(data)
    found = vhd.read_allocation(read)
    assert (found.virtual_size, found.block_size, found.present) == (size, BLOCK, [0, 2, 4])
    assert found.extents() == [(0, BLOCK), (4 * MIB, BLOCK), (8 * MIB, MIB)]
    assert found.allocated_bytes == 5 * MIB
    assert position[0] == stream.bat_offset + 4 * stream.max_table_entries  # footer, header and table: no data
    # qemu-img's dynamic VHD (a different layout: its table is where its header says)
    raw = tmp_path / 'disk.raw'
    content = bytearray(size)
    content[3 * MIB:3 * MIB + 100] = b'x' * 100
    raw.write_bytes(bytes(content))
    out = tmp_path / 'disk.vhd'
    qemu_img('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=dynamic,force_size=on', str(raw), str(out))
    with open(str(out), 'rb') as handle:
        found = vhd.read_allocation(handle.read)
    assert found.virtual_size == size and found.present == [1]


def test_allocation_map_refusals(tmp_path):
    stream = vhd.VhdStream(lambda offset, length: bytes(length), 4 * MIB, [0])
    data = bytearray(b''.join(stream.chunks()))
    bad = bytearray(data)
    bad[512 + 30] ^= 1  # a table entry count the header checksum does not cover
    with pytest.raises(vhd.VhdError, match='checksum'):
        vhd.read_allocation(reader_of(bytes(bad))[0])
    with pytest.raises(vhd.VhdError, match='ends inside its block allocation table'):
        vhd.read_allocation(reader_of(bytes(data[:stream.bat_offset + 2]))[0])
    with pytest.raises(vhd.VhdError, match='footer'):
        vhd.read_allocation(reader_of(bytes(4096))[0])
    raw = tmp_path / 'disk.raw'
    raw.write_bytes(bytes(MIB))
    fixed = tmp_path / 'fixed.vhd'
    qemu_img('convert', '-f', 'raw', '-O', 'vpc', '-o', 'subformat=fixed,force_size=on', str(raw), str(fixed))
    with open(str(fixed), 'rb') as handle:
        head = handle.read()
    # a fixed VHD has its footer at the end only: the stream starts with data
    with pytest.raises(vhd.VhdError, match='footer'):
        vhd.read_allocation(reader_of(head)[0])
    with pytest.raises(vhd.VhdError, match='not dynamic'):
        vhd.read_allocation(reader_of(head[-512:])[0])
