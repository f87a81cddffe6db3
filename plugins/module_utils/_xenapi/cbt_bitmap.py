# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bitmap of ``VDI.list_changed_blocks`` and the extents it describes.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Format (verified against tapdisk, SM and the official samples): standard base64 of a bitmap with
one bit per 64 KiB block; block ``i`` changed <=> ``raw[i // 8] & (0x80 >> (i % 8))`` (MSB first);
``ceil(ceil(size / 64 KiB) / 8)`` bytes; no header.
"""

from __future__ import absolute_import, division, print_function

import base64
import binascii
import re

from .._extents import CBT_BLOCK_SIZE
from .._errors import CbtBackupError

__metaclass__ = type

_NONZERO_BYTES = re.compile(b'[^\x00]+')


class BitmapError(CbtBackupError, ValueError):
    """The bitmap does not fit the disk it is applied to."""

    code = 'BITMAP_INVALID'


def block_count(size):
    return -(-size // CBT_BLOCK_SIZE)


def bitmap_length(size):
    """Bytes of the bitmap that describes a disk of ``size`` bytes."""
    return -(-block_count(size) // 8)


def decode(bitmap_b64):
    """Decode the base64 text that list_changed_blocks returns."""
    if isinstance(bitmap_b64, str):
        bitmap_b64 = bitmap_b64.encode('ascii', 'replace')
    try:
        return base64.b64decode(b''.join(bitmap_b64.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BitmapError('the changed-blocks bitmap is not valid base64 (%s)' % exc)


def encode(changed_blocks, size):
    """Encode block indices as list_changed_blocks would (used by tests and the lab)."""
    buf = bytearray(bitmap_length(size))
    for index in changed_blocks:
        buf[index // 8] |= 0x80 >> (index % 8)
    return base64.b64encode(bytes(buf)).decode('ascii')


def check_fits(raw, size):
    """Raise BitmapError unless ``raw`` describes exactly a disk of ``size`` bytes.

    A longer bitmap is accepted only when every bit beyond the disk's last block is zero.
    """
    needed = bitmap_length(size)
    if len(raw) < needed:
        raise BitmapError('the changed-blocks bitmap has %d bytes but a disk of %d bytes needs %d: it was made for a '
                          'smaller disk (was the VDI resized?)' % (len(raw), size, needed))
    blocks = block_count(size)
    if blocks % 8 and raw[needed - 1] & (0xFF >> (blocks % 8)):
        raise BitmapError('the changed-blocks bitmap marks blocks beyond the end of the %d-byte disk' % size)
    if raw[needed:].strip(b'\x00'):
        raise BitmapError('the changed-blocks bitmap has %d bytes but a disk of %d bytes needs %d, and the extra bytes '
                          'mark changed blocks: it was made for a larger disk' % (len(raw), size, needed))


def changed_blocks(raw):
    """Yield the indices of the set bits of a decoded bitmap, in order."""
    for match in _NONZERO_BYTES.finditer(raw):
        for position, byte in enumerate(match.group(), match.start()):
            for bit in range(8):
                if byte & (0x80 >> bit):
                    yield position * 8 + bit


def to_extents(raw, size):
    """Return the coalesced ``(offset, length)`` extents a decoded bitmap marks, clamped to ``size``."""
    check_fits(raw, size)
    extents = []
    for match in _NONZERO_BYTES.finditer(raw):
        run = match.group()
        first_block = match.start() * 8
        if run.count(b'\xff') == len(run):
            _append(extents, first_block, first_block + len(run) * 8, size)
            continue
        for position, byte in enumerate(run):
            if byte == 0xFF:
                block = first_block + position * 8
                _append(extents, block, block + 8, size)
                continue
            for bit in range(8):
                if byte & (0x80 >> bit):
                    block = first_block + position * 8 + bit
                    _append(extents, block, block + 1, size)
    return extents


def _append(extents, first_block, end_block, size):
    offset = first_block * CBT_BLOCK_SIZE
    end = min(end_block * CBT_BLOCK_SIZE, size)
    if end <= offset:
        return
    if extents and extents[-1][0] + extents[-1][1] == offset:
        extents[-1] = (extents[-1][0], end - extents[-1][0])
    else:
        extents.append((offset, end - offset))
