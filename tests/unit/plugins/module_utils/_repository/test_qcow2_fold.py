# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In-place folds of overlays into their base (qcow2_fold.py) and the one-pass file scan, against qemu-img."""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import random

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2, qcow2_fold
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.image_tools import (
    K64, MIB, assert_qcow2_clean, assert_same_as_raw, pieces, qemu_img, random_changes, random_disk,
)
from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils._repository.test_qcow2 import write_image

__metaclass__ = type


def build(tmp_path, rnd, size, levels, fraction=0.05):
    """A full and ``levels`` overlays of a changing disk: (paths oldest first, disk states)."""
    disk = random_disk(rnd, size)
    paths, states = [str(tmp_path / 'p0.qcow2')], [bytes(disk)]
    write_image(paths[0], disk, pieces(size, disk, rnd))
    for level in range(1, levels + 1):
        changed = sorted(set(random_changes(rnd, disk, fraction)))
        paths.append(str(tmp_path / ('p%d.qcow2' % level)))
        write_image(paths[-1], disk, pieces(changed, disk, rnd), backing_file=os.path.basename(paths[-2]))
        states.append(bytes(disk))
    return paths, states


def sha256_of(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def fold(paths, upto):
    """Fold paths[1..upto] into paths[0]; return the FoldResult (switched)."""
    overlays = list(reversed(paths[1:upto + 1]))
    result = qcow2_fold.prepare(paths[0], overlays)
    qcow2_fold.switch(paths[0], result.patch)
    return result


def test_fold_reads_as_the_overlay_and_costs_what_it_folds(tmp_path):
    rnd = random.Random(7)
    size = 40 * MIB + 4608  # several L2 regions would need 512 MiB; the partial last cluster is folded too
    paths, states = build(tmp_path, rnd, size, 4)
    before = os.path.getsize(paths[0])
    top = sha256_of(paths[3])
    result = qcow2_fold.prepare(paths[0], [paths[3], paths[2], paths[1]])
    # Prepared but not switched: the base reads exactly as before and qemu-img sees only free space.
    assert_same_as_raw(paths[0], states[0], tmp_path)
    assert_qcow2_clean(paths[0])
    assert_same_as_raw(paths[4], states[4], tmp_path)  # the chain above is untouched
    future = qcow2.scan(paths[0], header_patch=result.patch)
    qcow2_fold.switch(paths[0], result.patch)
    assert qcow2_fold.current_patch(paths[0]) == result.patch
    assert_qcow2_clean(paths[0])
    assert qcow2.check(paths[0]) == []
    assert_same_as_raw(paths[0], states[3], tmp_path)
    # The overlays above still read the same through the folded base.
    assert_same_as_raw(paths[4], states[4], tmp_path)
    assert sha256_of(paths[3]) == top
    # The scan made before the switch describes the file after it.
    now = qcow2.scan(paths[0])
    assert (now.sha256, now.digest, now.file_size) == (future.sha256, future.digest, future.file_size)
    assert now.sha256 == sha256_of(paths[0])
    with qcow2.Qcow2Image(paths[0]) as image:
        assert now.digest == image.digest() and now.clusters_stored == len(list(image.iter_clusters()))
        assert now.bytes_stored == image.bytes_stored()
    # Written: the folded clusters plus metadata, not the disk.
    folded = set()
    for path in paths[1:4]:
        with qcow2.Qcow2Image(path) as image:
            folded.update(image.allocated_clusters())
    assert result.clusters == len(folded)
    assert result.bytes_written <= len(folded) * K64 + 4 * K64
    assert os.path.getsize(paths[0]) <= before + len(folded) * K64 + 4 * K64


def test_repeated_folds_reuse_freed_space_and_stay_exact(tmp_path):
    rnd = random.Random(8)
    size = 24 * MIB
    paths, states = build(tmp_path, rnd, size, 8, fraction=0.1)
    sizes = []
    for level in range(1, 9):
        # each fold takes the next overlay in; the overlay above re-points at the base the way a prune renames
        fold([paths[0], paths[level]], 1)
        assert_qcow2_clean(paths[0])
        assert qcow2.check(paths[0]) == []
        assert_same_as_raw(paths[0], states[level], tmp_path)
        os.rename(paths[0], paths[level])  # as a prune does: the next overlay names this file as its backing file
        paths[0] = paths[level]
        sizes.append(os.path.getsize(paths[0]))
    # Freed clusters are reused: the file does not grow by every fold's data.
    growth = sizes[-1] - sizes[0]
    assert growth < 7 * 0.1 * size, sizes


def test_zero_clusters_of_the_overlays_free_the_base_clusters(tmp_path):
    rnd = random.Random(9)
    size = 4 * MIB
    disk = bytearray(os.urandom(size))
    base = str(tmp_path / 'base.qcow2')
    write_image(base, disk, pieces(size, disk, rnd))
    for offset in range(0, 2 * MIB, K64):
        disk[offset:offset + K64] = bytes(K64)
    top = str(tmp_path / 'top.qcow2')
    write_image(top, disk, pieces(list(range(0, 2 * MIB, K64)), disk, rnd), backing_file='base.qcow2')
    result = fold([base, top], 1)
    assert result.bytes_written == 4 * K64  # L2, L1, refcount table and block: zeros need no data
    assert_qcow2_clean(base)
    assert_same_as_raw(base, bytes(disk), tmp_path)
    with qcow2.Qcow2Image(base) as image:
        assert image.bytes_stored() == 2 * MIB


def test_a_qemu_written_base_folds_too(tmp_path):
    rnd = random.Random(10)
    size = 8 * MIB
    disk = random_disk(rnd, size)
    raw = str(tmp_path / 'disk.raw')
    with open(raw, 'wb') as handle:
        handle.write(disk)
    base = str(tmp_path / 'base.qcow2')
    qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, base)
    changed = sorted(set(random_changes(rnd, disk, 0.2)))
    top = str(tmp_path / 'top.qcow2')
    write_image(top, disk, pieces(changed, disk, rnd), backing_file='base.qcow2')
    fold([base, top], 1)
    assert_qcow2_clean(base)
    assert_same_as_raw(base, bytes(disk), tmp_path)


def test_a_base_with_a_backing_file_is_not_folded(tmp_path):
    rnd = random.Random(12)
    paths, dummy = build(tmp_path, rnd, 2 * MIB, 2)
    with pytest.raises(qcow2_fold.FoldUnsupported, match='backing file'):
        qcow2_fold.prepare(paths[1], [paths[2]])


def test_scan_equals_the_two_pass_hashes(tmp_path):
    rnd = random.Random(13)
    paths, dummy = build(tmp_path, rnd, 6 * MIB + 512, 2, fraction=0.3)
    for path in paths:
        found = qcow2.scan(path, chunk_size=3 * K64)
        with qcow2.Qcow2Image(path) as image:
            assert found.digest == image.digest()
            assert found.clusters_stored == len(list(image.iter_clusters()))
            assert found.bytes_stored == image.bytes_stored()
        assert found.sha256 == sha256_of(path) and found.file_size == os.path.getsize(path)
