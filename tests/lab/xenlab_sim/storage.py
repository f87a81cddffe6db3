# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VDI contents as sparse raw files under DIR/sr/<sr-uuid>/<vdi-uuid>.raw."""

from __future__ import absolute_import, division, print_function

import os
import random
import shutil
import subprocess

__metaclass__ = type

CHUNK = 1024 * 1024


def guest_bytes(length, seed):
    """What a simulated guest writes: pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(length)


class Storage:
    def __init__(self, root):
        self.root = root

    def path(self, sr_uuid, vdi_uuid):
        return os.path.join(self.root, 'sr', sr_uuid, vdi_uuid + '.raw')

    def create(self, sr_uuid, vdi_uuid, size):
        path = self.path(sr_uuid, vdi_uuid)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as handle:
            handle.truncate(size)  # sparse: reads as zeros, takes no space
        return path

    def copy(self, src, dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if shutil.which('cp'):
            subprocess.check_call(['cp', '--reflink=auto', '--sparse=always', src, dst])
            return
        self._sparse_copy(src, dst)

    @staticmethod
    def _sparse_copy(src, dst):
        """Copy without allocating the holes (fallback when GNU cp is missing)."""
        size = os.path.getsize(src)
        with open(src, 'rb') as inp, open(dst, 'wb') as out:
            out.truncate(size)
            offset = 0
            while offset < size:
                data = inp.read(CHUNK)
                if data.count(0) != len(data):
                    out.seek(offset)
                    out.write(data)
                offset += len(data)

    @staticmethod
    def remove(path):
        if path and os.path.exists(path):
            os.unlink(path)

    @staticmethod
    def write(path, offset, data):
        fd = os.open(path, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        finally:
            os.close(fd)

    @staticmethod
    def write_keep_sparse(path, offset, data):
        """Write, but skip all-zero pieces that already read as zeros (keeps fresh VDIs sparse)."""
        fd = os.open(path, os.O_RDWR)
        try:
            view = memoryview(data)
            pos = 0
            while pos < len(view):
                piece = view[pos:pos + CHUNK]
                if bytes(piece).count(0) == len(piece):
                    current = os.pread(fd, len(piece), offset + pos)
                    if current.count(0) == len(current):
                        pos += len(piece)
                        continue
                done = 0
                while done < len(piece):
                    done += os.pwrite(fd, piece[done:], offset + pos + done)
                pos += len(piece)
        finally:
            os.close(fd)
