# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Byte ranges of a disk: coalescing, splitting into requests, finding non-zero blocks.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
An extent is a ``(offset, length)`` tuple of ints.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

CBT_BLOCK_SIZE = 64 * 1024
_ZERO_BLOCK = bytes(CBT_BLOCK_SIZE)


def coalesce(extents):
    """Merge touching or overlapping extents; input in any order, output sorted."""
    merged = []
    for offset, length in sorted(extents):
        if length <= 0:
            continue
        if merged and offset <= merged[-1][0] + merged[-1][1]:
            last_offset, last_length = merged[-1]
            merged[-1] = (last_offset, max(last_length, offset + length - last_offset))
        else:
            merged.append((offset, length))
    return merged


def split(extents, max_length):
    """Yield extents cut so that none is longer than ``max_length``.

    Cuts fall on multiples of ``max_length`` from the extent start, which keeps requests aligned
    whenever the extent is.
    """
    for offset, length in extents:
        end = offset + length
        while offset < end:
            step = min(max_length, end - offset)
            yield offset, step
            offset += step


def total_length(extents):
    return sum(length for _offset, length in extents)


def nonzero_runs(buf, length, block_size=CBT_BLOCK_SIZE):
    """Yield ``(start, stop)`` byte ranges of ``buf[:length]`` made of blocks that are not all zero.

    ``buf`` is a bytes-like object supporting ``startswith`` (bytes or bytearray); blocks are
    compared with memcmp through ``startswith``, so nothing is copied.
    """
    zero = _ZERO_BLOCK if block_size == CBT_BLOCK_SIZE else bytes(block_size)
    run_start = None
    pos = 0
    while pos < length:
        end = min(pos + block_size, length)
        is_zero = buf.startswith(zero[:end - pos], pos, end) if end - pos < block_size else buf.startswith(zero, pos, end)
        if is_zero:
            if run_start is not None:
                yield run_start, pos
                run_start = None
        elif run_start is None:
            run_start = pos
        pos = end
    if run_start is not None:
        yield run_start, length
