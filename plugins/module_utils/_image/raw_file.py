# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Raw disk image files: sparse writing, atomic replacement, applying changed blocks.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
"""

from __future__ import absolute_import, division, print_function

import collections
import errno
import os
import sys
import tempfile
import threading

from .._extents import nonzero_runs

__metaclass__ = type

COPY_CHUNK = 4 * 1024 * 1024
# Dirty bytes a WriteBehind lets pile up before it waits for the oldest (docs/performance.md, "What changed: write-behind").
WRITE_BEHIND_WINDOW = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2       # start writeback of the range's dirty pages
_SYNC_FILE_RANGE_WAIT_ALL = 7    # WAIT_BEFORE | WRITE | WAIT_AFTER: the range is on the device when it returns
# sync_file_range cannot serve this descriptor (a pipe, a filesystem without it): the final fsync does the work
_SYNC_UNSUPPORTED = (errno.ESPIPE, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)


def _load_sync_file_range():
    """libc's sync_file_range through ctypes (the os module has no binding), or None off Linux."""
    if not sys.platform.startswith('linux'):
        return None, None
    try:
        import ctypes
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return None, None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func, ctypes.get_errno


_sync_file_range, _get_errno = _load_sync_file_range()


class WriteBehind:
    """Keep the dirty data of a file being written within a small window, as nbdcopy does.

    Call :meth:`written` after each write: it starts the writeback of that range at once, and waits for the
    ranges more than ``window`` bytes back to reach the device, then drops them from the page cache. Writeback
    then overlaps the reading instead of one long fsync at the end, and the page cache recycles a few warm
    pages instead of filling with the whole disk (on a virtual machine, pages the host has to provide anew
    cost more CPU than the copy itself: docs/performance.md). Durability still comes from the fsync that
    ends every write. Thread-safe; where the kernel cannot do it, it does nothing.
    """

    def __init__(self, fd, window=WRITE_BEHIND_WINDOW):
        self.fd = fd
        self.window = window
        self.enabled = _sync_file_range is not None
        self._pending = collections.deque()  # (offset, length) whose writeback was started, oldest first
        self._pending_bytes = 0
        self._lock = threading.Lock()

    def written(self, offset, length):
        """``length`` bytes at ``offset`` were just written."""
        if not self.enabled or length <= 0:
            return
        self._sync(offset, length, _SYNC_FILE_RANGE_WRITE)
        due = []
        with self._lock:
            self._pending.append((offset, length))
            self._pending_bytes += length
            while self._pending_bytes > self.window:
                oldest = self._pending.popleft()
                self._pending_bytes -= oldest[1]
                due.append(oldest)
        for old_offset, old_length in due:
            self._sync(old_offset, old_length, _SYNC_FILE_RANGE_WAIT_ALL)
            if self.enabled:
                os.posix_fadvise(self.fd, old_offset, old_length, os.POSIX_FADV_DONTNEED)

    def _sync(self, offset, length, flags):
        if not self.enabled or _sync_file_range(self.fd, offset, length, flags) == 0:
            return
        code = _get_errno()
        if code in _SYNC_UNSUPPORTED:
            self.enabled = False
            return
        if code == errno.EINTR:
            return  # a signal: this range is left to the final fsync
        raise OSError(code, os.strerror(code))  # ENOSPC, EIO: the write failed, as the fsync would say later


class FileWriter:
    """A thread-safe sink that writes ``(offset, view)`` pieces into an open file.

    With ``sparse=True`` all-zero 64 KiB blocks are skipped (the file must start as a hole there);
    ``view`` must then start at the beginning of its buffer (``view.obj``), which the extent
    reader guarantees. ``write_behind`` (a :class:`WriteBehind`) suits a file written once and not read
    soon; a file read back at once (a staging file) is better left in the page cache.
    """

    def __init__(self, fd, sparse, write_behind=True):
        self.fd = fd
        self.sparse = sparse
        self.bytes_written = 0
        self._lock = threading.Lock()
        self._write_behind = WriteBehind(fd) if write_behind else None

    def __call__(self, offset, view):
        written = 0
        if self.sparse:
            for start, stop in nonzero_runs(view.obj, len(view)):
                written += pwrite_all(self.fd, view[start:stop], offset + start)
        else:
            written = pwrite_all(self.fd, view, offset)
        if self._write_behind is not None:
            self._write_behind.written(offset, len(view))
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
