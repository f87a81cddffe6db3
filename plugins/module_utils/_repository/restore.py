# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a point of a repository: to a sparse raw file, or as the VHD / raw stream a VDI upload sends.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

A restore reads the chain named by the manifest (the point, its parent, ... the full), after checking
the sha256 of every file of the chain against the manifest: a chain with a damaged file is refused
before a single byte is restored.  Reads are large: the clusters of a 512 MiB region are resolved
through the chain once, and runs of clusters that sit back to back in one file are read with one
system call (up to :data:`qcow2.MAX_RUN` bytes).  Clusters that are unallocated in every file of the chain,
or zero-flagged in the newest file defining them, read as zeros and are never read from disk; a raw
file target keeps them as holes, a VHD stream leaves out the 2 MiB blocks that hold none of them.
"""

from __future__ import absolute_import, division, print_function

import errno
import os
import time

from .._image.qcow2 import MAX_RUN, Qcow2Chain, Qcow2Error
from .._image.raw_file import AtomicFile, WriteBehind
from .store import Repository, RepositoryError, fd_sha256
from .._image.vhd import DEFAULT_BLOCK_SIZE, MAX_VHD_SIZE, VhdStream

__metaclass__ = type

RAW_CHUNK = 4 * 1024 * 1024
MIB = 1024 * 1024
FORMATS = ('vhd', 'raw')


class RestoreError(RepositoryError):
    """A point cannot be restored (missing, damaged chain, target refused); ``code`` names the condition."""

    code = 'RESTORE_FAILED'


class RestoreSource:
    """A point of a repository, its chain checked, ready to be read. Use as a context manager.

    ``point``: an id or 'latest'.  With ``verify`` (default) the sha256 of each file of the chain must
    match the manifest.
    """

    ATTEMPTS = 3

    def __init__(self, repository, point='latest', verify=True):
        self.verified = False
        self.reader = None
        # A concurrent backup_prune replaces point files by rename and then rewrites the manifest: what was
        # listed may change between reading the manifest and opening the files. Such a race is retried;
        # only a mismatch that persists against an unchanged manifest is damage.
        for attempt in range(self.ATTEMPTS):
            last = attempt == self.ATTEMPTS - 1
            manifest = self._load(repository, point)
            pinned = []
            try:
                try:
                    for path in self.paths:
                        pinned.append(os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0)))
                except OSError as exc:
                    # a prune renames files while its journal (pending_merge) is in the manifest
                    if not last and (self._manifest_changed(manifest) or self.journal):
                        continue
                    raise RestoreError('restore point %s needs the file %s, which cannot be opened (%s); the point '
                                       'cannot be restored%s' % (self.point['id'], exc.filename, exc.strerror,
                                                                 self._verify_hint()))
                if verify:
                    bad = self._first_mismatch(pinned)
                    if bad is not None:
                        if not last and self._manifest_changed(manifest):
                            continue
                        self._damaged(*bad)
                    self.verified = True
                self.reader = self._open_reader(pinned)
                if self.reader is None:  # a file was replaced after it was hashed
                    if not last:
                        continue
                    raise RestoreError('the files of restore point %s keep changing while they are read; try again '
                                       'when backup_prune or the backup has finished' % self.point['id'])
                break
            finally:
                for fd in pinned:
                    os.close(fd)
        if self.reader.virtual_size != self.virtual_size:
            self.reader.close()
            raise RestoreError('restore point %s: the file says %d bytes, the manifest %d%s'
                               % (self.point['id'], self.reader.virtual_size, self.virtual_size, self._verify_hint()))

    def _load(self, repository, point):
        """Read the manifest: the point, its chain and their paths; return the manifest as loaded."""
        try:
            with Repository(repository) as repo:
                if not repo.points:
                    raise RestoreError('%s has no restore point (is it a disk\'s repository directory, with a '
                                       'manifest.json?)' % repo.path)
                self.point = repo.point(point or 'latest')
                self.chain = repo.chain(self.point)  # newest first
                self.paths = [repo.file_path(p) for p in self.chain]
                self.disk = dict(repo.manifest.get('disk') or {})
                self.journal = repo.manifest.get('pending_merge') or {}
                self.path = repo.path
                self.warnings = list(repo.warnings)  # e.g. read from manifest.json.prev
                self.virtual_size = int(self.point['virtual_size'])
                return repo.manifest
        except RestoreError:
            raise
        except RepositoryError as exc:
            raise RestoreError(str(exc), code=exc.code)

    def _manifest_changed(self, manifest):
        try:
            with Repository(self.path) as repo:
                return repo.manifest != manifest
        except RepositoryError:
            return False

    def _first_mismatch(self, pinned):
        """(point, path, actual, expected) of the oldest file whose sha256 differs from the manifest, or None.

        A merge journal (``pending_merge``, see retention.py) vouches for the merged file's hash too.
        """
        journal = self.journal
        for item, path, fd in reversed(list(zip(self.chain, self.paths, pinned))):
            expected = item.get('sha256')
            if not expected:
                continue
            actual = fd_sha256(fd)
            if actual != expected and not (journal.get('point') == item['id'] and journal.get('sha256') == actual):
                return item, path, actual, expected
        return None

    def _damaged(self, item, path, actual, expected):
        needed = ''
        if item is not self.point:
            needed = ' (restore point %s is built on it)' % self.point['id']
        raise RestoreError(
            'restore point %s is damaged: the sha256 of %s is %s, the manifest recorded %s%s. Nothing was '
            'restored. Run xenserver.cbt_backup.backup_verify on %s to see every affected point, and restore '
            'a point that does not depend on %s.'
            % (item['id'], path, actual, expected, needed, self.path, item['id']))

    def _open_reader(self, pinned):
        """A Qcow2Chain on the very files that were hashed (None if one was replaced in between)."""
        try:
            reader = Qcow2Chain(self.paths)
        except (Qcow2Error, OSError) as exc:
            raise RestoreError('cannot read restore point %s: %s%s' % (self.point['id'], exc, self._verify_hint()))
        for image, fd in zip(reader.images, pinned):
            mine, hashed = os.fstat(image.fileno()), os.fstat(fd)
            if (mine.st_dev, mine.st_ino) != (hashed.st_dev, hashed.st_ino):
                reader.close()
                return None
        try:
            self._check_links(reader)
        except BaseException:
            reader.close()
            raise
        return reader

    def _check_links(self, reader):
        """Each file must name the next one of the manifest's chain as its backing file (qemu follows those names).

        The one exception is a point being merged (a ``pending_merge`` journal) whose file is already the merged
        image: standalone (the chain ends there) or an overlay of a kept ancestor (the dropped points between
        are no longer read).
        """
        index = 0
        while index < len(reader.images):
            image = reader.images[index]
            parent = self.chain[index + 1]['file'] if index + 1 < len(self.chain) else None
            if image.backing_file == parent:
                index += 1
                continue
            merged_here = self.journal.get('point') == self.chain[index]['id']
            if image.backing_file is None and merged_here:
                reader.truncate(index + 1)
                self.chain = self.chain[:index + 1]
                self.paths = self.paths[:index + 1]
                return
            names = [p['file'] for p in self.chain[index + 1:]]
            if merged_here and self.journal.get('parent') and image.backing_file in names:
                stop = index + 1 + names.index(image.backing_file)
                reader.skip(index + 1, stop)
                del self.chain[index + 1:stop]
                del self.paths[index + 1:stop]
                index += 1
                continue
            raise RestoreError('restore point %s: the file %s names %s as its backing file, but the manifest says its '
                               'parent is %s%s' % (self.chain[index]['id'], self.paths[index],
                                                   image.backing_file or 'nothing', parent or 'none', self._verify_hint()))

    @staticmethod
    def _verify_hint():
        return '. Run xenserver.cbt_backup.backup_verify on the repository to see which points are affected.'

    def close(self):
        self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def info(self):
        return {'point': self.point['id'], 'chain': [p['id'] for p in self.chain], 'virtual_size': self.virtual_size}

    # -- targets ----------------------------------------------------------------------------------------

    def vhd_stream(self, every_block=False):
        """A dynamic VHD of the point; VhdError beyond 2040 GiB.

        Only the 2 MiB blocks holding data are present, unless ``every_block``: a VDI that already holds
        data must get every block, because an importer leaves the blocks a VHD omits as they were.
        """
        allocated = range(0, self.virtual_size, DEFAULT_BLOCK_SIZE) if every_block else self.reader.iter_allocated()
        return VhdStream(self.reader.read, self.virtual_size, allocated)

    def vhd_stream_of(self, offsets):
        """A dynamic VHD of the point holding only the 2 MiB blocks that contain ``offsets`` (guest byte offsets),
        each whole: what overwrites a disk that differs from the point in those places only."""
        return VhdStream(self.reader.read, self.virtual_size, offsets)

    def upload_stream(self, wanted='vhd', overwrite=False):
        """What a VDI upload sends: ``(format, length, chunks factory, warning or None)``.

        VHD carries only the 2 MiB blocks holding data, or every block when ``overwrite`` (the target VDI is
        not new, so zeros must be written too); beyond 2040 GiB raw is used (with a warning).
        """
        fmt, warning = choose_format(self.virtual_size, wanted)
        if fmt == 'vhd':
            stream = self.vhd_stream(every_block=overwrite)
            return fmt, stream.length, stream.chunks, warning
        return fmt, self.virtual_size, self.raw_chunks, warning

    def raw_chunks(self, chunk=RAW_CHUNK):
        """Yield the whole disk as bytes objects of at most ``chunk`` bytes (zeros included)."""
        zeros = bytes(chunk)
        pos = 0
        while pos < self.virtual_size:
            step = min(chunk, self.virtual_size - pos)
            runs = list(self.reader.runs(pos, step))
            if all(run[2] is None for run in runs):
                yield zeros if step == chunk else zeros[:step]
            else:
                buf = bytearray(step)
                view = memoryview(buf)
                for run in runs:
                    start = run[0] - pos
                    self.reader.read_run_into(view[start:start + run[1]], run)
                yield bytes(buf)
            pos += step


def choose_format(virtual_size, wanted='vhd'):
    """(format, warning or None): VHD cannot hold more than 2040 GiB, raw is used then."""
    if wanted not in FORMATS:
        raise RestoreError('format must be one of %s, not %s' % (', '.join(FORMATS), wanted))
    if wanted == 'vhd' and virtual_size > MAX_VHD_SIZE:
        return 'raw', ('the disk has %d bytes, more than a VHD can hold (2040 GiB); it is uploaded in raw format '
                       'instead, zeros included, which takes longer' % virtual_size)
    return wanted, None


class _RunCopier:
    """Copy data runs of the chain to the same guest offsets of a file.

    Runs stored contiguously go file to file in the kernel (``copy_file_range``; no copy through Python, and
    a reflink where the filesystem shares extents); otherwise, or where the kernel cannot, large reads and
    writes through one buffer.
    """

    def __init__(self, reader, fd):
        self.reader = reader
        self.fd = fd
        self.kernel = hasattr(os, 'copy_file_range')
        self._view = None
        self.write_behind = WriteBehind(fd)

    def copy(self, run):
        self._copy(run)
        self.write_behind.written(run[0], run[1])

    def _copy(self, run):
        offset, length, source, host = run
        if self.kernel and host >= 0:
            src = self.reader.images[source].fileno()
            done = 0
            try:
                while done < length:
                    got = os.copy_file_range(src, self.fd, length - done, host + done, offset + done)
                    if got <= 0:
                        raise Qcow2Error('%s: short read at host offset %d (the file ends first)'
                                         % (self.reader.images[source].path, host + done))
                    done += got
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                    raise
                self.kernel = False  # e.g. across filesystems on an old kernel: copy through a buffer
                run = (offset + done, length - done, source, host + done)
                offset, length = run[0], run[1]
        if self._view is None:
            self._view = memoryview(bytearray(MAX_RUN))
        part = self._view[:length]
        self.reader.read_run_into(part, run)
        done = 0
        while done < length:
            done += os.pwrite(self.fd, part[done:], offset + done)


def holds_the_point(source, dest):
    """Whether the regular file ``dest`` already is the point's disk, byte for byte (reads both once)."""
    if not os.path.isfile(dest) or os.path.islink(dest) or os.path.getsize(dest) != source.virtual_size:
        return False
    with open(dest, 'rb') as handle:
        for chunk in source.raw_chunks():
            if handle.read(len(chunk)) != chunk:
                return False
    return True


def restore_to_file(source, dest, force=False, check_mode=False):
    """Write the point as a sparse raw file ``dest`` (temporary name, fsync, rename); return the result dict.

    An existing ``dest`` that already holds the point is left as it is (``changed: false``, a re-run of the
    same task); any other existing ``dest`` is refused unless ``force``. Zero clusters stay holes.
    """
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        raise RestoreError('dest %s is a directory; give the path of the raw file to create' % dest)
    if os.path.lexists(dest):
        if holds_the_point(source, dest):
            return dict(source.info(), dest=dest, changed=False, bytes_written=0, bytes_to_write=0, seconds=0.0,
                        throughput_mib_s=0.0, already_restored=True)
        if not force:
            raise RestoreError('dest %s already exists; choose another path or set force: true to replace it' % dest)
        if not os.path.isfile(dest) or os.path.islink(dest):
            raise RestoreError('dest %s exists and is not a regular file; it is only ever replaced by a new raw file, '
                               'so give the path of a regular file' % dest)
    directory = os.path.dirname(dest)
    if not os.path.isdir(directory):
        raise RestoreError('the directory of dest (%s) does not exist' % directory)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RestoreError('cannot create files in %s (permission denied)' % directory)
    needed = sum(run[1] for run in source.reader.data_runs())
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise RestoreError('the restored disk needs %d MiB in %s (the point holds that much data) but only %d MiB are '
                           'free; nothing was written' % (-(-needed // MIB), directory, free // MIB))
    result = dict(source.info(), dest=dest, bytes_written=0, bytes_to_write=needed, seconds=0.0, throughput_mib_s=0.0)
    if check_mode:
        result['changed'] = True
        return result
    started = time.monotonic()
    out = AtomicFile(dest, size=source.virtual_size, prefix='.partial-')
    written = 0
    try:
        copier = _RunCopier(source.reader, out.fd)
        for run in source.reader.data_runs():
            copier.copy(run)
            written += run[1]
        out.commit(mode=0o600)
    except BaseException:
        out.discard()
        raise
    seconds = time.monotonic() - started
    result.update(changed=True, bytes_written=written, seconds=round(seconds, 3),
                  throughput_mib_s=round(source.virtual_size / MIB / seconds, 1) if seconds > 0 else 0.0)
    return result
