# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw disk image files: sparse writing, atomic replacement, applying changed blocks.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
"""

from __future__ import absolute_import, division, print_function

import errno
import os
import tempfile
import threading

from .._extents import nonzero_runs

__metaclass__ = type

COPY_CHUNK = 4 * 1024 * 1024


class FileWriter:
    """A thread-safe sink that writes ``(offset, view)`` pieces into an open file.

    With ``sparse=True`` all-zero 64 KiB blocks are skipped (the file must start as a hole there);
    ``view`` must then start at the beginning of its buffer (``view.obj``), which the extent
    reader guarantees.
    """

    def __init__(self, fd, sparse):
        self.fd = fd
        self.sparse = sparse
        self.bytes_written = 0
        self._lock = threading.Lock()

    def __call__(self, offset, view):
        written = 0
        if self.sparse:
            for start, stop in nonzero_runs(view.obj, len(view)):
                written += pwrite_all(self.fd, view[start:stop], offset + start)
        else:
            written = pwrite_all(self.fd, view, offset)
        with self._lock:
            self.bytes_written += written


def pwrite_all(fd, data, offset):
    """Write all of ``data`` (bytes-like) at ``offset``; pwrite may write less than asked. Returns its length."""
    view = memoryview(data)
    total = len(view)
    while len(view):
        done = os.pwrite(fd, view, offset)
        view = view[done:]
        offset += done
    return total


class AtomicFile:
    """A new file written under a temporary name next to ``path`` and renamed into place on commit."""

    def __init__(self, path, size=None, prefix='.partial-'):
        self.path = path
        directory, name = os.path.split(os.path.abspath(path))
        self.fd, self.temp_path = tempfile.mkstemp(prefix='.%s%s' % (name, prefix), dir=directory)
        if size is not None:
            try:
                os.ftruncate(self.fd, size)
            except BaseException:
                self.discard()
                raise

    def commit(self, mode=0o600):
        """fsync, rename over ``path``, fsync the directory."""
        os.fchmod(self.fd, mode)
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        os.rename(self.temp_path, self.path)
        fsync_directory(os.path.dirname(os.path.abspath(self.path)))

    def discard(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.temp_path)
        except OSError:
            pass


def _copy_range_in_kernel(src_fd, dst_fd, offset, length):
    end = offset + length
    while offset < end:
        done = os.copy_file_range(src_fd, dst_fd, end - offset, offset, offset)
        if done <= 0:
            raise IOError('short read from the staging file at offset %d' % offset)
        offset += done


def fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_extents(src_fd, dst_fd, extents):
    """Copy the given byte ranges from one file to the same offsets of another."""
    if hasattr(os, 'copy_file_range'):  # Linux, Python 3.8+: the kernel copies, no round trip through Python
        try:
            for offset, length in extents:
                _copy_range_in_kernel(src_fd, dst_fd, offset, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
    buf = bytearray(COPY_CHUNK)
    for offset, length in extents:
        end = offset + length
        while offset < end:
            step = min(COPY_CHUNK, end - offset)
            view = memoryview(buf)[:step]
            got = os.preadv(src_fd, [view], offset)
            if got != step:
                raise IOError('short read from the staging file at offset %d' % offset)
            pwrite_all(dst_fd, view, offset)
            offset += step
