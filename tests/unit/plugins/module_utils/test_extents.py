# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _extents

__metaclass__ = type

K64 = 64 * 1024


def test_coalesce_merges_touching_and_overlapping():
    assert _extents.coalesce([(10, 5), (0, 10), (20, 5), (22, 10), (40, 0)]) == [(0, 15), (20, 12)]


def test_split_respects_max_length():
    assert list(_extents.split([(0, 10), (100, 3)], 4)) == [(0, 4), (4, 4), (8, 2), (100, 3)]


@pytest.mark.parametrize('blocks, expected', [
    ('0000', []),
    ('1111', [(0, 4 * K64)]),
    ('0110', [(K64, 3 * K64)]),
    ('1001', [(0, K64), (3 * K64, 4 * K64)]),
])
def test_nonzero_runs(blocks, expected):
    buf = bytearray()
    for flag in blocks:
        block = bytearray(K64)
        if flag == '1':
            block[K64 // 2] = 7
        buf += block
    assert list(_extents.nonzero_runs(buf, len(buf))) == expected


def test_nonzero_runs_partial_last_block():
    buf = bytearray(K64 + 100)
    buf[K64 + 99] = 1
    assert list(_extents.nonzero_runs(buf, len(buf))) == [(K64, K64 + 100)]
    assert list(_extents.nonzero_runs(buf, K64 + 50)) == []
