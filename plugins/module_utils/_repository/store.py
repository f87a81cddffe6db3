# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk's backup repository: a directory of qcow2 restore points and the manifest that lists them.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Layout (docs/repository.md describes it for users)::

    <repository>/manifest.json         the chain of restore points; only finished points are in it
    <repository>/<id>.qcow2            one restore point; an incremental's backing file is its parent
    <repository>/.lock                 held (flock) while a run writes the repository
    <repository>/.<id>.qcow2.partial-* a point being written; never a restore point, removed by the next run

A point is written under a temporary name, fsynced, renamed, and only then recorded in the manifest
(itself written to a temporary name, fsynced and renamed), so a crash at any moment leaves either
the old manifest or the new one, and every point it lists complete.
"""

from __future__ import absolute_import, division, print_function

import datetime
import errno
import fcntl
import hashlib
import json
import os

from .raw_file import AtomicFile, fsync_directory

__metaclass__ = type

MANIFEST = 'manifest.json'
LOCK = '.lock'
FORMAT = 'xenserver.cbt_backup repository'
FORMAT_VERSION = 1
PARTIAL_MARK = '.partial-'
HASH_CHUNK = 4 * 1024 * 1024


class RepositoryError(Exception):
    """The repository cannot do what was asked (busy, inconsistent, wrong anchor...)."""


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def point_id(when, kind):
    return '%s-%s' % (when.strftime('%Y%m%dT%H%M%SZ'), 'full' if kind == 'full' else 'incr')


def fd_sha256(fd):
    """sha256 of everything in an open file (read with pread, so the file position does not matter)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, HASH_CHUNK, offset)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        offset += len(chunk)


def file_sha256(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


class Repository:
    """One disk's repository directory. Use ``with Repository(path, write=True)`` to hold its lock."""

    def __init__(self, path, write=False, create=False, missing_ok=False):
        self.path = os.path.abspath(path)
        self.write = write
        self._lock_fd = None
        self.exists = os.path.isdir(self.path)
        if not self.exists:
            if create:
                os.makedirs(self.path, 0o700)
                self.exists = True
            elif not missing_ok:
                raise RepositoryError('%s is not a backup repository (no such directory)' % self.path)
        self.manifest = None

    # -- locking and loading -------------------------------------------------------------------------

    def __enter__(self):
        if self.write:
            fd = os.open(os.path.join(self.path, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise RepositoryError('another run is writing the repository %s; try again when it has finished'
                                          % self.path)
                raise
            self._lock_fd = fd
        self.manifest = self.load()
        return self

    def __exit__(self, *exc_info):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self):
        path = os.path.join(self.path, MANIFEST)
        if not self.exists or not os.path.exists(path):
            return {'format': FORMAT, 'version': FORMAT_VERSION, 'disk': {}, 'cbt_anchor': None, 'points': []}
        try:
            with open(path) as handle:
                manifest = json.load(handle)
        except ValueError as exc:
            raise RepositoryError('the manifest %s is damaged (%s); restore points cannot be trusted until it is '
                                  'repaired' % (path, exc))
        if manifest.get('format') != FORMAT or manifest.get('version') != FORMAT_VERSION:
            raise RepositoryError('%s is not a version %d manifest of this collection' % (path, FORMAT_VERSION))
        return manifest

    def save(self):
        """Write the manifest atomically (temporary name, fsync, rename, fsync the directory)."""
        out = AtomicFile(os.path.join(self.path, MANIFEST), prefix=PARTIAL_MARK)
        try:
            data = json.dumps(self.manifest, indent=2, sort_keys=True).encode('utf-8') + b'\n'
            os.write(out.fd, data)
            out.commit(mode=0o600)
        except BaseException:
            out.discard()
            raise

    # -- points ----------------------------------------------------------------------------------------

    @property
    def points(self):
        return self.manifest['points']

    def newest(self):
        return self.points[-1] if self.points else None

    def point(self, ident):
        """A point by id, or 'latest'/'newest'."""
        if ident in (None, 'latest', 'newest'):
            newest = self.newest()
            if newest is None:
                raise RepositoryError('the repository %s has no restore point' % self.path)
            return newest
        for point in self.points:
            if point['id'] == ident:
                return point
        raise RepositoryError('the repository %s has no restore point %s (it has: %s)'
                              % (self.path, ident, ', '.join(p['id'] for p in self.points) or 'none'))

    def chain(self, point):
        """The points a restore of ``point`` reads, newest first (the point, its parent, ... the full)."""
        by_id = dict((p['id'], p) for p in self.points)
        chain = [point]
        while chain[-1].get('parent'):
            parent = by_id.get(chain[-1]['parent'])
            if parent is None:
                raise RepositoryError('restore point %s depends on %s, which the manifest does not list'
                                      % (chain[-1]['id'], chain[-1]['parent']))
            chain.append(parent)
        return chain

    def file_path(self, point):
        return os.path.join(self.path, point['file'])

    def dependents(self, point_id_):
        """Ids of the points that need ``point_id_`` (its children, their children...)."""
        found, frontier = [], [point_id_]
        while frontier:
            current = frontier.pop()
            for point in self.points:
                if point.get('parent') == current:
                    found.append(point['id'])
                    frontier.append(point['id'])
        return found

    def leftovers(self):
        """Files of interrupted runs: temporary names and point files the manifest does not list."""
        listed = set(p['file'] for p in self.points)
        found = []
        for name in sorted(os.listdir(self.path)):
            if PARTIAL_MARK in name:
                found.append(name)
            elif name.endswith('.qcow2') and name not in listed:
                found.append(name)
        return found

    def remove_leftovers(self):
        removed = self.leftovers()
        for name in removed:
            os.unlink(os.path.join(self.path, name))
        if removed:
            fsync_directory(self.path)
        return removed

    def new_point_file(self, kind, when=None):
        """An AtomicFile for a new point and the point's id (unique within the repository)."""
        when = when or utc_now()
        base = point_id(when, kind)
        ident, counter = base, 1
        taken = set(p['id'] for p in self.points)
        while ident in taken or os.path.exists(os.path.join(self.path, ident + '.qcow2')):
            counter += 1
            ident = '%s-%d' % (base, counter)
        return ident, AtomicFile(os.path.join(self.path, ident + '.qcow2'), prefix=PARTIAL_MARK)

    def add_point(self, point, disk=None):
        """Record a finished, renamed point file in the manifest (atomically) and move the CBT anchor."""
        path = self.file_path(point)
        point['sha256'] = file_sha256(path)
        point['file_size'] = os.path.getsize(path)
        if disk:
            self.manifest['disk'] = disk
        self.points.append(point)
        self.manifest['cbt_anchor'] = point.get('snapshot_uuid')
        self.save()
        return point
