# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the repository format tests: random disks, qemu-img wrappers."""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import subprocess

from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import require_binary

__metaclass__ = type

K64 = 64 * 1024
MIB = 1024 * 1024


def qemu_img(*args, **kwargs):
    """Run qemu-img (fail under CI=true if it is missing, else skip); return the CompletedProcess."""
    binary = require_binary('qemu-img')
    return subprocess.run([binary] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, check=kwargs.get('check', True))


def qemu_io(path, *commands, **kwargs):
    binary = require_binary('qemu-io')
    argv = [binary, '-f', kwargs.get('fmt', 'qcow2')]
    for command in commands:
        argv += ['-c', command]
    return subprocess.run(argv + [path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True)


def assert_qcow2_clean(path):
    """``qemu-img check`` passes and its JSON report shows no leaks, corruptions or errors."""
    qemu_img('check', '-f', 'qcow2', path)
    report = json.loads(qemu_img('check', '-f', 'qcow2', '--output=json', path, check=False).stdout)
    for key in ('leaks', 'corruptions', 'check-errors', 'leaks-fixed', 'corruptions-fixed'):
        assert report.get(key, 0) == 0, (path, report)
    return report


def convert_sha256(path, tmp_dir, fmt='qcow2'):
    """sha256 and length of ``qemu-img convert -O raw path``."""
    out = os.path.join(str(tmp_dir), 'converted-%s.raw' % hashlib.sha256(path.encode()).hexdigest()[:12])
    qemu_img('convert', '-f', fmt, '-O', 'raw', path, out)
    try:
        with open(out, 'rb') as handle:
            data = handle.read()
    finally:
        os.unlink(out)
    return hashlib.sha256(data).hexdigest(), len(data)


def assert_same_as_raw(path, raw, tmp_dir, fmt='qcow2'):
    """``qemu-img compare`` and the sha256 of ``qemu-img convert`` agree with ``raw`` (bytes)."""
    raw_path = os.path.join(str(tmp_dir), 'expected.raw')
    with open(raw_path, 'wb') as handle:
        handle.write(raw)
    try:
        qemu_img('compare', '-q', '-f', fmt, '-F', 'raw', path, raw_path)
    finally:
        os.unlink(raw_path)
    assert convert_sha256(path, tmp_dir, fmt) == (hashlib.sha256(raw).hexdigest(), len(raw))


def random_disk(rnd, size, data_ratio=0.5, zero_runs=True):
    """A bytearray of ``size`` bytes: random 64 KiB blocks, zero blocks, runs of both, and blocks
    that are zero except for one byte (which must not be taken for zero)."""
    disk = bytearray(size)
    offset = 0
    while offset < size:
        run = rnd.choice((1, 1, 2, 5, 17)) * K64
        stop = min(size, offset + run)
        roll = rnd.random()
        if roll < data_ratio:
            disk[offset:stop] = rnd.getrandbits(8 * (stop - offset)).to_bytes(stop - offset, 'little')
        elif roll < data_ratio + 0.1:
            disk[min(stop - 1, offset + rnd.randrange(K64))] = rnd.randrange(1, 256)
        elif not zero_runs:
            for block in range(offset, stop, K64):
                disk[block] = 1
        offset = stop
    return disk


def random_changes(rnd, disk, fraction):
    """Change some 64 KiB blocks of ``disk`` in place (new data, all zero, one byte); return their offsets."""
    changed = []
    for offset in range(0, len(disk), K64):
        if rnd.random() >= fraction:
            continue
        stop = min(len(disk), offset + K64)
        roll = rnd.random()
        if roll < 0.5:
            disk[offset:stop] = rnd.getrandbits(8 * (stop - offset)).to_bytes(stop - offset, 'little')
        elif roll < 0.85:
            disk[offset:stop] = bytes(stop - offset)
        else:
            disk[offset + rnd.randrange(stop - offset)] ^= 0x5a
        changed.append(offset)
    return changed


def pieces(offsets_or_size, disk, rnd=None, max_blocks=16):
    """Cut the given block offsets (or the whole disk) into reader-like pieces of 1..max_blocks blocks."""
    if isinstance(offsets_or_size, int):
        offsets = list(range(0, offsets_or_size, K64))
    else:
        offsets = sorted(offsets_or_size)
    result = []
    index = 0
    while index < len(offsets):
        count = rnd.randint(1, max_blocks) if rnd else max_blocks
        run = [offsets[index]]
        while len(run) < count and index + len(run) < len(offsets) and offsets[index + len(run)] == run[-1] + K64:
            run.append(offsets[index + len(run)])
        start = run[0]
        stop = min(len(disk), run[-1] + K64)
        result.append((start, stop - start))
        index += len(run)
    if rnd:
        rnd.shuffle(result)
    return result


def feed(sink, disk, piece_list):
    """Call ``sink`` like the reader does: a memoryview at the start of a reused, larger buffer."""
    buf = bytearray(16 * K64 + 4096)
    for offset, length in piece_list:
        if length > len(buf):
            buf = bytearray(length)
        buf[:length] = disk[offset:offset + length]
        buf[length:] = b'\xee' * (len(buf) - length)  # stale bytes past the view must not matter
        view = memoryview(buf)[:length]
        sink(offset, view)
        view.release()
