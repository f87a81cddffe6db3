# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Apply a streamed VHD (fixed or dynamic) onto a raw VDI, for PUT /import_raw_vdi?format=vhd.

The stream is read once, front to back: a dynamic VHD written by vhd-util or qemu-img keeps its
BAT before the data blocks, so blocks are taken in file order. Differencing VHDs are refused.
"""

from __future__ import absolute_import, division, print_function

import os
import struct

__metaclass__ = type

SECTOR = 512
UNUSED = 0xFFFFFFFF


class VhdError(Exception):
    pass


class _Reader:
    def __init__(self, read, length):
        self.read_raw = read
        self.remaining = length
        self.pos = 0

    def read(self, n):
        if n > self.remaining:
            raise VhdError('VHD stream ends early')
        chunks = []
        while n:
            data = self.read_raw(min(n, 1 << 20))
            if not data:
                raise VhdError('connection closed inside the VHD')
            chunks.append(data)
            n -= len(data)
            self.remaining -= len(data)
            self.pos += len(data)
        return b''.join(chunks)

    def skip_to(self, pos):
        if pos < self.pos:
            raise VhdError('VHD block at %d precedes the stream position %d' % (pos, self.pos))
        while self.pos < pos:
            self.read(min(pos - self.pos, 1 << 20))


def parse_footer(footer):
    if footer[:8] != b'conectix':
        raise VhdError('no VHD footer cookie')
    current_size, = struct.unpack('>Q', footer[48:56])
    disk_type, = struct.unpack('>I', footer[60:64])
    data_offset, = struct.unpack('>Q', footer[16:24])
    return current_size, disk_type, data_offset


def apply_vhd(read, length, capacity, write):
    """Read ``length`` bytes of VHD via ``read(n)``; call ``write(offset, data)`` for its data."""
    reader = _Reader(read, length)
    if length < SECTOR:
        raise VhdError('too short for a VHD')
    head = reader.read(SECTOR)
    if head[:8] != b'conectix':
        _apply_fixed(reader, head, length, capacity, write)
        return
    size, disk_type, data_offset = parse_footer(head)
    if disk_type == 4:
        raise VhdError('differencing VHDs are not supported by the lab')
    if disk_type != 3:
        raise VhdError('unexpected VHD disk type %d' % disk_type)
    if size > capacity:
        raise VhdError('VHD virtual size %d exceeds the VDI (%d)' % (size, capacity))
    reader.skip_to(data_offset)
    header = reader.read(1024)
    if header[:8] != b'cxsparse':
        raise VhdError('no dynamic header cookie')
    table_offset, = struct.unpack('>Q', header[16:24])
    entries, block_size = struct.unpack('>II', header[28:36])
    reader.skip_to(table_offset)
    bat = struct.unpack('>%dI' % entries, reader.read(entries * 4))
    bitmap_bytes = -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR
    for index, sector in sorted(((i, s) for i, s in enumerate(bat) if s != UNUSED), key=lambda item: item[1]):
        reader.skip_to(sector * SECTOR)
        bitmap = reader.read(bitmap_bytes)
        data = reader.read(block_size)
        _write_present(index * block_size, bitmap, data, size, write)
    reader.skip_to(length)


def _write_present(base, bitmap, data, size, write):
    """Write the runs of sectors the block's bitmap marks as present."""
    nsectors = len(data) // SECTOR
    run_start = None
    for i in range(nsectors + 1):
        present = i < nsectors and bitmap[i // 8] & (0x80 >> (i % 8))
        if present and run_start is None:
            run_start = i
        elif not present and run_start is not None:
            start = base + run_start * SECTOR
            end = min(base + i * SECTOR, size)
            if end > start:
                write(start, data[run_start * SECTOR:run_start * SECTOR + end - start])
            run_start = None


def _apply_fixed(reader, head, length, capacity, write):
    """A fixed VHD is the raw disk followed by a 512-byte footer."""
    size = length - SECTOR
    if size > capacity:
        raise VhdError('VHD virtual size %d exceeds the VDI (%d)' % (size, capacity))
    offset = 0
    data = head
    while True:
        keep = min(len(data), size - offset)
        if keep > 0:
            write(offset, data[:keep])
            offset += keep
        if offset >= size:
            break
        data = reader.read(min(1 << 20, size - offset))
    footer = (data[keep:] if keep < len(data) else b'') + reader.read(reader.remaining)
    current_size, disk_type, _unused = parse_footer(footer[-SECTOR:])
    if disk_type != 2 or current_size != size:
        raise VhdError('bad fixed VHD footer')


# ----- GET /export_raw_vdi?format=vhd: a dynamic VHD of a sparse raw VDI ---------------------------------

EXPORT_BLOCK = 2 * 1024 * 1024
_BAT_OFFSET = 3 * SECTOR


def _checksum(data):
    return (~sum(bytearray(data))) & 0xFFFFFFFF


def _with_checksum(data, at):
    return data[:at] + struct.pack('>I', _checksum(data)) + data[at + 4:]


def allocated_blocks(path, size, block=EXPORT_BLOCK):
    """Indexes of the ``block``-sized blocks of the sparse file holding data (SEEK_DATA / SEEK_HOLE)."""
    present = set()
    with open(path, 'rb') as handle:
        fd = handle.fileno()
        end = min(size, os.fstat(fd).st_size)
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            stop = min(end, os.lseek(fd, start, os.SEEK_HOLE))
            present.update(range(start // block, (stop - 1) // block + 1))
            pos = stop
    return sorted(b for b in present if b * block < size)


def export_stream(path, size, unique_id, timestamp):
    """(length, chunks()) of a dynamic VHD of the raw file ``path``: footer copy, dynamic header, BAT whose
    present entries are the file's allocated 2 MiB blocks, those blocks (bitmap sector + data), footer."""
    entries = -(-size // EXPORT_BLOCK)
    present = allocated_blocks(path, size)
    bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
    first_sector = (_BAT_OFFSET + bat_bytes) // SECTOR
    per_block = 1 + EXPORT_BLOCK // SECTOR
    bat = [UNUSED] * entries
    for number, index in enumerate(present):
        bat[index] = first_sector + number * per_block
    cylinders, heads, sectors = min(65535, size // (16 * 63 * SECTOR)), 16, 63
    footer = struct.pack('>8sIIQI4sI4sQQHBBII16sB427x', b'conectix', 2, 0x00010000, SECTOR, timestamp, b'tap\x00',
                         0x00010003, b'Lnux', size, size, cylinders, heads, sectors, 3, 0, unique_id, 0)
    footer = _with_checksum(footer, 64)
    header = struct.pack('>8sQQIIII16sII512s192x256x', b'cxsparse', 0xFFFFFFFFFFFFFFFF, _BAT_OFFSET, 0x00010000,
                         entries, EXPORT_BLOCK, 0, bytes(16), 0, 0, bytes(512))
    header = _with_checksum(header, 36)
    head = footer + header + struct.pack('>%dI' % entries, *bat) + bytes(bat_bytes - entries * 4)
    length = len(head) + len(present) * per_block * SECTOR + SECTOR

    def chunks():
        yield head
        with open(path, 'rb') as handle:
            for index in present:
                yield b'\xff' * SECTOR
                handle.seek(index * EXPORT_BLOCK)
                data = handle.read(min(EXPORT_BLOCK, size - index * EXPORT_BLOCK))
                yield data + bytes(EXPORT_BLOCK - len(data))
        yield footer
    return length, chunks
