# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A dynamic VHD generated on the fly from a block source, for ``PUT /import_raw_vdi?format=vhd``.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Only the 2 MiB VHD blocks that contain at least one allocated cluster travel; the length of the
whole stream is known before the first byte (``Content-Length``).  Layout (all offsets fixed in
advance)::

    0       footer copy (512 bytes)
    512     dynamic disk header (1024 bytes), BAT at 1536
    1536    BAT: one big-endian sector number per 2 MiB block, 0xFFFFFFFF = not present,
            padded to a 512-byte boundary
    ...     present blocks in guest order: a 512-byte sector bitmap (all ones) + 2 MiB of data
    end-512 footer

Size and geometry: the footer's current and original size are the virtual size rounded up to a
whole 512-byte sector (a VHD cannot describe a partial sector; VDI sizes are sector multiples, so
nothing is padded in practice).  The CHS geometry is computed with the VHD specification's
algorithm, but readers must not derive the size from it (it rounds down): the creator application
is ``tap\\0``, XenServer's own blktap/vhd-util tag, which qemu's vpc driver (like XenServer)
recognises as "use the footer's current size", so ``qemu-img convert -f vpc`` returns exactly the
disk.  The VHD format tops out at 2040 GiB.
"""

from __future__ import absolute_import, division, print_function

import array
import struct
import sys
import time
import uuid

from .._errors import CbtBackupError

__metaclass__ = type

SECTOR = 512
DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
MAX_VHD_SIZE = 0xff000000 * SECTOR          # 2040 GiB, the format's (and qemu's) limit
VHD_EPOCH = 946684800                       # 2000-01-01T00:00:00Z
CREATOR_APP = b'tap\x00'
CREATOR_VERSION = 0x00010003
CREATOR_OS = b'Lnux'
DISK_TYPE_DYNAMIC = 3
UNUSED_BAT_ENTRY = 0xffffffff

_FOOTER = struct.Struct('>8sIIQI4sI4sQQHBBII16sB427x')
_DYNAMIC_HEADER = struct.Struct('>8sQQIIII16sII512s192x256x')
_FOOTER_CHECKSUM_AT = 64
_HEADER_CHECKSUM_AT = 36
_READ_CHUNK = 2 * 1024 * 1024


class VhdError(CbtBackupError):
    """The disk cannot be expressed as a dynamic VHD (too large, bad block size)."""

    code = 'VHD_UNSUPPORTED'


def _ceil_div(num, den):
    return -(-num // den)


def checksum(data):
    """The VHD checksum: one's complement of the byte sum (the checksum field itself must be zero)."""
    return ~sum(bytearray(data)) & 0xffffffff


def chs_geometry(size):
    """(cylinders, heads, sectors per track) of ``size`` bytes per the VHD specification."""
    total = min(size // SECTOR, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        sectors, heads = 255, 16
        cyl_heads = total // sectors
    else:
        sectors = 17
        cyl_heads = total // sectors
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            sectors, heads = 31, 16
            cyl_heads = total // sectors
        if cyl_heads >= heads * 1024:
            sectors, heads = 63, 16
            cyl_heads = total // sectors
    return cyl_heads // heads, heads, sectors


def _with_checksum(data, position):
    data = bytearray(data)
    struct.pack_into('>I', data, position, checksum(data))
    return bytes(data)


class VhdStream:
    """A dynamic VHD of a disk, generated while it is iterated.

    ``read(offset, length)`` returns the disk's bytes (e.g. ``Qcow2Chain.read``; it is only asked
    for ranges inside ``virtual_size``).  ``allocated`` is an iterable of guest byte offsets (of
    clusters, e.g. ``Qcow2Chain.iter_allocated()``); it is consumed once, here, to lay out the
    BAT.  Every 2 MiB block touched by an allocated offset is emitted in full (zeros included);
    the others are absent and read as zeros.  ``length`` is the exact stream length.
    ``timestamp`` (Unix time) and ``unique_id`` (16 bytes) default to now and a random UUID.
    """

    def __init__(self, read, virtual_size, allocated, block_size=DEFAULT_BLOCK_SIZE, timestamp=None, unique_id=None):
        if block_size < SECTOR or block_size & (block_size - 1) or block_size > 256 * 1024 * 1024:
            raise VhdError('block size must be a power of two between 512 bytes and 256 MiB')
        if virtual_size < 0:
            raise VhdError('virtual size must not be negative')
        self.read_source = read
        self.virtual_size = virtual_size
        self.size = _ceil_div(virtual_size, SECTOR) * SECTOR
        if self.size > MAX_VHD_SIZE:
            raise VhdError('a VHD cannot hold %d bytes (the limit is %d)' % (virtual_size, MAX_VHD_SIZE))
        self.block_size = block_size
        self.bitmap_size = _ceil_div(block_size // SECTOR // 8, SECTOR) * SECTOR
        self.max_table_entries = _ceil_div(self.size, block_size)
        present = bytearray(self.max_table_entries)
        for offset in allocated:
            if offset < 0 or offset >= virtual_size:
                raise VhdError('allocated offset %d is outside the %d-byte disk' % (offset, virtual_size))
            present[offset // block_size] = 1
        self.blocks = array.array('I', [index for index, flag in enumerate(present) if flag])
        self.bat_offset = SECTOR + 1024
        self.bat_size = _ceil_div(self.max_table_entries * 4, SECTOR) * SECTOR
        self.data_offset = self.bat_offset + self.bat_size
        self.block_span = self.bitmap_size + block_size
        self.length = self.data_offset + len(self.blocks) * self.block_span + SECTOR
        if (self.length - SECTOR) // SECTOR > UNUSED_BAT_ENTRY:  # pragma: no cover - excluded by MAX_VHD_SIZE
            raise VhdError('the VHD would be too long for its block table')
        self.timestamp = int(time.time() if timestamp is None else timestamp)
        self.unique_id = uuid.uuid4().bytes if unique_id is None else bytes(unique_id)
        if len(self.unique_id) != 16:
            raise VhdError('unique id must be 16 bytes')
        self.footer = self._footer()

    def __len__(self):
        return self.length

    @property
    def blocks_present(self):
        return len(self.blocks)

    def _footer(self):
        cylinders, heads, sectors = chs_geometry(self.size)
        footer = _FOOTER.pack(b'conectix', 2, 0x00010000, SECTOR, max(0, self.timestamp - VHD_EPOCH) & 0xffffffff,
                              CREATOR_APP, CREATOR_VERSION, CREATOR_OS, self.size, self.size,
                              cylinders, heads, sectors, DISK_TYPE_DYNAMIC, 0, self.unique_id, 0)
        return _with_checksum(footer, _FOOTER_CHECKSUM_AT)

    def _dynamic_header(self):
        header = _DYNAMIC_HEADER.pack(b'cxsparse', 0xffffffffffffffff, self.bat_offset, 0x00010000,
                                      self.max_table_entries, self.block_size, 0, bytes(16), 0, 0, bytes(512))
        return _with_checksum(header, _HEADER_CHECKSUM_AT)

    def _bat(self):
        bat = array.array('I', [UNUSED_BAT_ENTRY]) * self.max_table_entries
        for position, index in enumerate(self.blocks):
            bat[index] = (self.data_offset + position * self.block_span) // SECTOR
        if sys.byteorder == 'little':
            bat.byteswap()
        data = bat.tobytes()
        return data + b'\xff' * (self.bat_size - len(data))

    def chunks(self):
        """Yield the stream as bytes objects (at most a block each); may be iterated again."""
        yield self.footer
        yield self._dynamic_header()
        yield self._bat()
        bitmap = b'\xff' * self.bitmap_size
        for index in self.blocks:
            yield bitmap
            start = index * self.block_size
            stop = start + self.block_size
            pos = start
            while pos < stop:
                step = min(_READ_CHUNK, stop - pos)
                inside = max(0, min(step, self.virtual_size - pos))
                data = self.read_source(pos, inside) if inside else b''
                if len(data) != inside:
                    raise VhdError('the block source returned %d bytes for (%d, %d)' % (len(data), pos, inside))
                yield bytes(data) + bytes(step - inside) if inside < step else data
                pos += step
        yield self.footer

    __iter__ = chunks

    def write_to(self, fileobj):
        """Write the whole stream to a binary file object; return the number of bytes (== ``length``)."""
        written = 0
        for chunk in self.chunks():
            fileobj.write(chunk)
            written += len(chunk)
        if written != self.length:  # pragma: no cover - a layout bug
            raise VhdError('wrote %d bytes, announced %d' % (written, self.length))
        return written


# -- reading the allocation map at the start of a dynamic VHD stream --------------------------------------

MAX_BAT_ENTRIES = MAX_VHD_SIZE // SECTOR  # bounds what a header may make us read


class VhdAllocation:
    """Which blocks of a disk a dynamic VHD holds (``present``: sorted block indexes)."""

    def __init__(self, virtual_size, block_size, present):
        self.virtual_size = virtual_size
        self.block_size = block_size
        self.present = present

    @property
    def allocated_bytes(self):
        return sum(min(self.block_size, self.virtual_size - index * self.block_size) for index in self.present)

    def extents(self):
        """``[(offset, length)]`` of the present blocks, neighbours merged, cut at the virtual size."""
        runs = []
        for index in self.present:
            start = index * self.block_size
            length = min(self.block_size, self.virtual_size - start)
            if runs and runs[-1][0] + runs[-1][1] == start:
                runs[-1] = (runs[-1][0], runs[-1][1] + length)
            else:
                runs.append((start, length))
        return runs


class _ForwardReader:
    """Exact reads from a stream that only goes forward (an HTTP response)."""

    def __init__(self, read):
        self._read = read
        self.position = 0

    def read(self, length, what):
        chunks, got = [], 0
        while got < length:
            data = self._read(min(length - got, _READ_CHUNK))
            if not data:
                raise VhdError('the VHD stream ends inside its %s (at byte %d)' % (what, self.position + got))
            chunks.append(data)
            got += len(data)
        self.position += got
        return b''.join(chunks)

    def skip_to(self, offset, what):
        if offset < self.position:
            raise VhdError('the VHD %s at byte %d lies before what was read already' % (what, offset))
        while self.position < offset:
            self.read(min(offset - self.position, _READ_CHUNK), what)


def _checked(data, position, what):
    zeroed = bytearray(data)
    stored, = struct.unpack_from('>I', data, position)
    struct.pack_into('>I', zeroed, position, 0)
    if checksum(zeroed) != stored:
        raise VhdError('the VHD %s has a wrong checksum' % what)


def read_allocation(read):
    """The allocation map of the dynamic VHD stream that ``read(n)`` yields: footer copy, dynamic header and
    block allocation table, nothing after them.  Raises VhdError for anything else (a fixed VHD has no map)."""
    stream = _ForwardReader(read)
    footer = stream.read(SECTOR, 'footer')
    if footer[:8] != b'conectix':
        raise VhdError('the stream does not start with a VHD footer (no "conectix" cookie)')
    _checked(footer, _FOOTER_CHECKSUM_AT, 'footer')
    data_offset, = struct.unpack_from('>Q', footer, 16)
    virtual_size, = struct.unpack_from('>Q', footer, 48)
    disk_type, = struct.unpack_from('>I', footer, 60)
    if disk_type != DISK_TYPE_DYNAMIC:
        raise VhdError('the VHD is of type %d, not dynamic (3): it carries no block allocation table' % disk_type)
    stream.skip_to(data_offset, 'dynamic header')
    header = stream.read(1024, 'dynamic header')
    if header[:8] != b'cxsparse':
        raise VhdError('no dynamic VHD header ("cxsparse") where the footer points')
    _checked(header, _HEADER_CHECKSUM_AT, 'dynamic header')
    table_offset, = struct.unpack_from('>Q', header, 16)
    entries, block_size = struct.unpack_from('>II', header, 28)
    if block_size < SECTOR or block_size & (block_size - 1):
        raise VhdError('the VHD block size %d is not a power of two of at least 512' % block_size)
    if entries > MAX_BAT_ENTRIES or entries * block_size < virtual_size:
        raise VhdError('the VHD table of %d entries of %d bytes does not describe a disk of %d bytes'
                       % (entries, block_size, virtual_size))
    stream.skip_to(table_offset, 'block allocation table')
    table = array.array('I')
    table.frombytes(stream.read(entries * 4, 'block allocation table'))
    if sys.byteorder == 'little':
        table.byteswap()
    present = [index for index, entry in enumerate(table)
               if entry != UNUSED_BAT_ENTRY and index * block_size < virtual_size]
    return VhdAllocation(virtual_size, block_size, present)
