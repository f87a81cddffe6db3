# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

import base64

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt

__metaclass__ = type

K64 = 64 * 1024


def test_block_zero_is_msb_of_first_byte():
    # Reference example: only block 0 changed -> first byte 0x80 -> "gAAA..."
    bitmap = _cbt.encode([0], 1024 ** 3)
    assert bitmap.startswith('gAAA')
    assert len(base64.b64decode(bitmap)) == 2048


def test_block_nine_sets_second_byte_0x40():
    raw = base64.b64decode(_cbt.encode([9], 16 * K64))
    assert raw == b'\x00\x40'


def test_bitmap_length_for_odd_size():
    # 4 000 000 bytes -> 62 blocks -> 8 bytes
    assert _cbt.bitmap_length(4000000) == 8
    assert _cbt.block_count(4000000) == 62


@pytest.mark.parametrize('blocks, expected', [
    ([], []),
    ([0], [(0, K64)]),
    ([0, 1, 2], [(0, 3 * K64)]),
    ([1, 3], [(K64, K64), (3 * K64, K64)]),
    (list(range(8, 24)), [(8 * K64, 16 * K64)]),
    ([7, 8], [(7 * K64, 2 * K64)]),
])
def test_to_extents_coalesces_adjacent_blocks(blocks, expected):
    size = 64 * K64
    raw = _cbt.decode(_cbt.encode(blocks, size))
    assert _cbt.to_extents(raw, size) == expected
    assert list(_cbt.changed_blocks(raw)) == blocks


def test_last_block_is_clamped_to_the_disk_size():
    size = 3 * K64 + 512
    raw = _cbt.decode(_cbt.encode([3], size))
    assert _cbt.to_extents(raw, size) == [(3 * K64, 512)]


def test_all_ones_run_becomes_one_extent():
    size = 4096 * K64
    raw = b'\xff' * 512
    assert _cbt.to_extents(raw, size) == [(0, size)]


def test_shorter_bitmap_is_refused():
    with pytest.raises(_cbt.BitmapError, match='smaller disk'):
        _cbt.to_extents(b'\x00', 64 * K64)


def test_longer_bitmap_with_zero_tail_is_accepted():
    raw = _cbt.decode(_cbt.encode([1], 8 * K64)) + b'\x00\x00'
    assert _cbt.to_extents(raw, 8 * K64) == [(K64, K64)]


def test_longer_bitmap_with_marked_tail_is_refused():
    with pytest.raises(_cbt.BitmapError, match='larger disk'):
        _cbt.to_extents(b'\x00\x01', 8 * K64)


def test_padding_bits_beyond_last_block_must_be_zero():
    # 62 blocks: bits 62 and 63 of the last byte are padding
    raw = bytearray(8)
    raw[7] = 0x01
    with pytest.raises(_cbt.BitmapError, match='beyond the end'):
        _cbt.to_extents(bytes(raw), 4000000)


def test_invalid_base64_is_refused():
    with pytest.raises(_cbt.BitmapError, match='base64'):
        _cbt.decode('not base64!')


def test_base64_with_line_breaks_is_accepted():
    text = _cbt.encode([5], 64 * K64)
    assert _cbt.decode(text[:4] + '\n' + text[4:]) == _cbt.decode(text)
