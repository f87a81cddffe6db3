# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A disk's backup repository: a directory of qcow2 restore points and the manifest that lists them.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Layout (docs/repository.md describes it for users)::

    <repository>/.xenserver-cbt-backup  marker written at creation: this directory is a repository of this collection
    <repository>/manifest.json         the chain of restore points; only finished points are in it
    <repository>/manifest.json.prev    the manifest before the last save (read when manifest.json is damaged)
    <repository>/manifest.json.damaged a damaged manifest that backup_verify rebuild_manifest replaced
    <repository>/<id>.qcow2            one restore point; an incremental's backing file is its parent
    <repository>/.lock                 held (flock) while a run writes the repository
    <repository>/.<id>.qcow2.partial-* a point being written; never a restore point, removed by the next run

Ownership: a directory is a repository only if it has the marker or a manifest; an existing directory that
holds anything else is refused, never written to.  The only files a run deletes are those the manifest's
``pending_files`` journal names (recorded before they are written, or when their point leaves the manifest)
and that no listed point uses; everything else that the manifest does not list is reported, never touched.

A point is written under a temporary name, fsynced, renamed, and only then recorded in the manifest.
The manifest is written whole to ``.manifest.json.partial`` (every write checked), fsynced, the current
one is kept as ``manifest.json.prev``, then it is renamed into place and the directory fsynced: a crash or
a full disk at any moment leaves a whole manifest, and every point it lists complete.
"""

from __future__ import absolute_import, division, print_function

import errno
import fcntl
import hashlib
import json
import os
import re

from .._image.raw_file import AtomicFile, fsync_directory, pwrite_all
from .._errors import CbtBackupError
from .._time import format_utc, normalize_if_time, utc_now

__metaclass__ = type

MANIFEST = 'manifest.json'
MANIFEST_PREV = 'manifest.json.prev'
MANIFEST_TEMP = '.manifest.json.partial'
MANIFEST_DAMAGED = 'manifest.json.damaged'
MARKER = '.xenserver-cbt-backup'
LOCK = '.lock'
FORMAT = 'xenserver.cbt_backup repository'
FORMAT_VERSION = 2
# Version 1 (releases before the one time format) wrote ``+00:00`` offsets and XenAPI-style run ids; it is read,
# upgraded in memory, and saved as version 2 by the first run that writes the repository.
UPGRADABLE_VERSIONS = (1,)
POINT_TIMES = ('time', 'snapshot_time', 'run')
PARTIAL_MARK = '.partial-'
PENDING = 'pending_files'
HASH_CHUNK = 4 * 1024 * 1024
# the names point_id() gives point files; nothing else is ever read as a restore point
POINT_FILE = re.compile(r'^[0-9]{8}T[0-9]{6}Z-(full|incr)(-[0-9]+)?\.qcow2$')
OWN_FILES = (MANIFEST, MANIFEST_PREV, MANIFEST_TEMP, MANIFEST_DAMAGED, MARKER, LOCK)
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
RECOVERY_HINT = ('Nothing was changed. To list the restore points again, run xenserver.cbt_backup.backup_verify with '
                 'rebuild_manifest: true on this directory (docs/guide.md, "A lost or damaged manifest").')


class RepositoryError(CbtBackupError):
    """The repository cannot do what was asked; ``code`` names the condition (REPOSITORY_DAMAGED, ...)."""

    code = 'REPOSITORY_ERROR'


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


FILE_FACTS = ('sha256', 'blocks', 'bytes', 'blocks_digest', 'file_size')  # what a point records of its file


def file_facts(scanned):
    """The FILE_FACTS of a point file from its ``qcow2.scan``."""
    return {'sha256': scanned.sha256, 'blocks': scanned.clusters_stored, 'bytes': scanned.bytes_stored,
            'blocks_digest': scanned.digest, 'file_size': scanned.file_size}


def file_sha256(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_sha256(fd)
    finally:
        os.close(fd)


def lock_directory(path, wait):
    """Hold ``path``/.lock with an exclusive flock; return its descriptor (close it to release).

    With ``wait`` false and another process (or descriptor) holding it, return None instead of waiting."""
    fd = os.open(os.path.join(path, LOCK), os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if not wait and exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def unlock_directory(fd):
    """Release what ``lock_directory`` returned (None: nothing held)."""
    if fd is not None:
        os.close(fd)


def write_file_atomically(path, data, temp_name=None, keep_previous=None):
    """Replace ``path`` by ``data``: temporary file, checked writes, fsync, rename, fsync of the directory.

    ``temp_name`` (in the same directory) is overwritten if a crashed write left it. With ``keep_previous``
    the current file is first hard-linked to that name. On any failure the old file stays as it was and
    the OSError propagates.
    """
    directory = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(directory, temp_name or '.%s.partial' % os.path.basename(path))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, 'O_NOFOLLOW', 0), 0o600)
    try:
        try:
            pwrite_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        if keep_previous and os.path.exists(path):
            _link_over(path, os.path.join(directory, keep_previous))
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


def remove_if_exists(path):
    """Remove the file ``path``; False when it was not there (any other failure raises)."""
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _link_over(source, dest):
    """Make ``dest`` a hard link of ``source``, replacing it atomically (no data is copied)."""
    link = dest + '.link'
    try:
        os.unlink(link)
    except OSError:
        pass
    os.link(source, link)
    os.rename(link, dest)


def empty_manifest():
    return {'format': FORMAT, 'version': FORMAT_VERSION, 'disk': {}, 'cbt_anchor': None, 'points': []}


# -- manifest schema ----------------------------------------------------------------------------------

_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_POINT_FIELDS = (
    # name, required, accepted types
    ('id', True, _TEXT),
    ('file', True, _TEXT),
    ('type', True, _TEXT),
    ('time', True, _TEXT),
    ('virtual_size', True, (int,)),
    ('parent', False, _OPTIONAL_TEXT),
    ('sha256', False, _OPTIONAL_TEXT),
    ('file_size', False, (int, type(None))),
    ('blocks', False, (int, type(None))),
    ('bytes', False, (int, type(None))),
    ('snapshot_uuid', False, _OPTIONAL_TEXT),
)
# the merge journal retention.py writes: a rewrite or overlay merge between its rename and its manifest update,
# or a fold (kind "fold") from the save that unlists the folded points until the manifest records the result
_JOURNAL_FIELDS = (('point', _TEXT), ('sha256', _TEXT), ('blocks_digest', _TEXT), ('blocks', (int,)), ('bytes', (int,)),
                   ('file_size', (int,)), ('kind', _OPTIONAL_TEXT), ('parent', _OPTIONAL_TEXT),
                   ('temp_file', _OPTIONAL_TEXT), ('drops', (list, type(None))), ('merged', (list, type(None))))
_FOLD_WRITING_OPTIONAL = FILE_FACTS  # known once the fold's file is hashed (phase ready)
_FOLD_PHASES = ('writing', 'ready')
_FOLD_FIELDS = (('base_file', _TEXT), ('base_file_size', (int,)), ('chain', (list,)))
_TYPE_NAMES = {str: 'a string', int: 'a whole number', type(None): 'null', dict: 'an object', list: 'a list'}


def _kind(types):
    return ' or '.join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def manifest_problem(manifest):
    """The first thing wrong with a loaded manifest's shape, as ``field: what is wrong``; None if sound."""
    if not isinstance(manifest, dict):
        return 'the top level is %s, not an object' % _kind((type(manifest),))
    if manifest.get('format') != FORMAT:
        return 'format: %r is not %r' % (manifest.get('format'), FORMAT)
    version = manifest.get('version')
    if version != FORMAT_VERSION and version not in UPGRADABLE_VERSIONS:
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            return ('version: %d was written by a newer release of xenserver.cbt_backup (this one reads up to %d); '
                    'upgrade the collection' % (version, FORMAT_VERSION))
        return 'version: %r is not %d' % (version, FORMAT_VERSION)
    for key, types in (('disk', (dict, type(None))), ('cbt_anchor', _OPTIONAL_TEXT), ('points', (list,)),
                       (PENDING, (list, type(None))), ('pending_merge', (dict, type(None)))):
        if key == 'points' and key not in manifest:
            return 'points: missing (expected a list of restore points)'
        value = manifest.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            return '%s: %s, expected %s' % (key, _kind((type(value),)), _kind(types))
    seen = set()
    for index, point in enumerate(manifest['points']):
        where = 'points[%d]' % index
        if not isinstance(point, dict):
            return '%s: %s, expected an object' % (where, _kind((type(point),)))
        for name, required, types in _POINT_FIELDS:
            if name not in point:
                if required:
                    return '%s.%s: missing (expected %s)' % (where, name, _kind(types))
                continue
            if not isinstance(point[name], types) or isinstance(point[name], bool):
                return '%s.%s: %s, expected %s' % (where, name, _kind((type(point[name]),)), _kind(types))
        if point['type'] not in ('full', 'incremental'):
            return '%s.type: %r, expected "full" or "incremental"' % (where, point['type'])
        if os.path.basename(point['file']) != point['file'] or point['file'] in ('', '.', '..'):
            return '%s.file: %r is not a plain file name inside the repository' % (where, point['file'])
        if point['id'] in seen:
            return '%s.id: %r is listed twice' % (where, point['id'])
        seen.add(point['id'])
    for index, entry in enumerate(manifest.get(PENDING) or []):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and os.path.basename(entry[k]) == entry[k]
                                                  for k in entry if k in ('file', 'temp')):
            return '%s[%d]: expected an object of plain file names' % (PENDING, index)
    journal = manifest.get('pending_merge')
    return _journal_problem(journal) if journal is not None else None


def _journal_problem(journal):
    fold = journal.get('kind') == 'fold'
    writing = fold and journal.get('phase') == 'writing'
    if journal.get('kind') not in (None, 'rewrite', 'overlay', 'fold'):
        return 'pending_merge.kind: %r, expected "rewrite", "overlay" or "fold"' % (journal.get('kind'),)
    if fold and journal.get('phase') not in _FOLD_PHASES:
        return 'pending_merge.phase: %r, expected "%s"' % (journal.get('phase'), '" or "'.join(_FOLD_PHASES))
    for name, types in _JOURNAL_FIELDS:
        if writing and name in _FOLD_WRITING_OPTIONAL and journal.get(name) is None:
            continue
        if not isinstance(journal.get(name), types) or isinstance(journal.get(name), bool):
            return 'pending_merge.%s: %s, expected %s' % (name, _kind((type(journal.get(name)),)), _kind(types))
    for name, types in _FOLD_FIELDS if fold else ():
        value = journal.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            return 'pending_merge.%s: %s, expected %s' % (name, _kind((type(value),)), _kind(types))
    for index, record in enumerate(journal.get('chain') or [] if fold else []):
        if not isinstance(record, dict) or not isinstance(record.get('id'), str) \
                or not isinstance(record.get('file'), str) or os.path.basename(record['file']) != record['file']:
            return 'pending_merge.chain[%d]: expected a restore point with a plain file name' % index
    if fold and (not journal['chain'] or journal['chain'][-1].get('file') != journal['base_file']
                 or os.path.basename(journal['base_file']) != journal['base_file']):
        return 'pending_merge.base_file: expected the plain file name of the last point of the chain'
    return None


def read_manifest(path):
    """The manifest at ``path``: ``(manifest, None)``, or ``(None, problem)`` when it does not parse or is malformed."""
    try:
        with open(path, 'rb') as handle:
            manifest = json.loads(handle.read().decode('utf-8'))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, 'it is not valid JSON (%s)' % exc
    problem = manifest_problem(manifest)
    if problem:
        return None, problem
    return upgrade_manifest(manifest), None


def upgrade_manifest(manifest):
    """A sound manifest of an older version as the current version (in place; returns it).

    Version 1 -> 2: every time becomes RFC 3339 UTC with Z (``format_utc``); a time that cannot be read is
    left as it was (the readers report it). ``upgraded_from`` (not saved) tells the Repository to save it.
    """
    version = manifest.get('version')
    if version == FORMAT_VERSION:
        return manifest
    for point in manifest['points']:
        for name in POINT_TIMES:
            if point.get(name) is not None:
                point[name] = normalize_if_time(point[name])
    for pending in manifest.get(PENDING) or []:
        if isinstance(pending, dict) and 'since' in pending:
            pending['since'] = normalize_if_time(pending['since'])
    manifest['version'] = FORMAT_VERSION
    manifest['upgraded_from'] = version
    return manifest


class Repository:
    """One disk's repository directory. Use ``with Repository(path, write=True)`` to hold its lock.

    ``create``: make the directory (or adopt an empty one) as a new repository.  ``missing_ok``: a directory
    that does not exist yet reads as an empty repository.  ``allow_previous`` (default: when not writing):
    read manifest.json.prev when manifest.json is damaged.  ``repair``: load whatever can be loaded (for
    rebuilding the manifest).  After loading, ``warnings`` says what a reader should know.
    """

    def __init__(self, path, write=False, create=False, missing_ok=False, allow_previous=None, repair=False):
        self.path = os.path.abspath(path)
        self.write = write
        self.create = create
        self.allow_previous = not write if allow_previous is None else allow_previous
        self.repair = repair
        self._lock_fd = None
        self.warnings = []
        self.from_previous = False
        self.damage = None
        self.upgraded_from = None  # the manifest version this open upgraded (saved as the current one if writing)
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise RepositoryError('%s exists but is not a directory, so it cannot be a backup repository; give each '
                                  'disk a directory of its own' % self.path, code='REPOSITORY_NOT_A_DIRECTORY')
        self.exists = os.path.isdir(self.path)
        if not self.exists:
            if create:
                os.makedirs(self.path, 0o700)
                self.exists = True
                self._write_marker()
            elif not missing_ok:
                raise RepositoryError('%s is not a backup repository (no such directory)' % self.path,
                                      code='REPOSITORY_NOT_FOUND')
        self.manifest = None

    # -- ownership, locking and loading --------------------------------------------------------------

    def _has(self, name):
        return os.path.lexists(os.path.join(self.path, name))

    def _write_marker(self):
        data = json.dumps({'format': FORMAT, 'created': format_utc(utc_now())}).encode('utf-8') + b'\n'
        write_file_atomically(os.path.join(self.path, MARKER), data)

    def _check_ownership(self):
        """Refuse a directory that holds files but neither the marker nor a manifest (never ours to write).

        A repair (rebuilding a lost manifest) is asked for by the user for this very directory: it only
        reads files named like points and writes the manifest, so it is let in."""
        if not self.exists or self.repair or self._has(MARKER) or self._has(MANIFEST) or self._has(MANIFEST_PREV):
            return
        others = sorted(name for name in os.listdir(self.path) if name != LOCK)
        if not others:
            if self.create and self.write:
                self._write_marker()  # an empty directory becomes a new repository
            return
        shown = ', '.join(others[:5]) + (', ...' if len(others) > 5 else '')
        raise RepositoryError(
            '%s is not a backup repository of this collection: it has no manifest.json and no %s marker, but holds '
            '%d other file(s) (%s). Nothing was changed. Give each disk its own new or empty directory; if this '
            'directory held restore points whose manifest was lost, see backup_verify rebuild_manifest.'
            % (self.path, MARKER, len(others), shown), code='REPOSITORY_FOREIGN')

    def __enter__(self):
        self._check_ownership()
        if self.write:
            self._lock_fd = lock_directory(self.path, wait=False)
            if self._lock_fd is None:
                raise RepositoryError('another run is writing the repository %s; try again when it has finished'
                                      % self.path, code='REPOSITORY_BUSY')
        try:
            self.manifest = self.load()
            self.upgraded_from = self.manifest.pop('upgraded_from', None)
            if self.write and self.exists and not self._has(MARKER):
                self._write_marker()  # a repository made before the marker existed
            if self.write and self.upgraded_from and not self.damage:
                self.save()  # crash-safe like every save: manifest.json.prev keeps the old version's manifest
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        fd, self._lock_fd = self._lock_fd, None
        unlock_directory(fd)

    def point_files(self):
        """Names in the directory that have the form of a point file."""
        return sorted(name for name in os.listdir(self.path) if POINT_FILE.match(name)) if self.exists else []

    def load(self):
        """The manifest, validated.

        When manifest.json is damaged (or missing while point files are there) a reader falls back to
        manifest.json.prev with a warning; a writer, or a reader with ``allow_previous=False``, gets
        REPOSITORY_DAMAGED: nothing is ever written on top of a manifest that could not be read.  With
        ``repair`` the load never fails: ``damage`` says what was wrong and the manifest is the previous one
        (or empty), for rebuilding.
        """
        path = os.path.join(self.path, MANIFEST)
        if not self.exists:
            return empty_manifest()
        if not os.path.exists(path):
            if not self.point_files() and not self._has(MANIFEST_PREV):
                return empty_manifest()  # a new repository: nothing was finished in it yet
            problem = 'the manifest %s is missing' % path
        else:
            manifest, problem = read_manifest(path)
            if manifest is not None:
                return manifest
            problem = 'the manifest %s is damaged: %s' % (path, problem)
        self.damage = problem
        previous, previous_problem = read_manifest(os.path.join(self.path, MANIFEST_PREV)) \
            if self._has(MANIFEST_PREV) else (None, 'there is no %s to fall back to' % MANIFEST_PREV)
        if previous is not None:
            previous.pop(PENDING, None)  # its journal is not acted on: nothing is deleted on an old manifest's word
            if self.repair:
                return previous
            if self.allow_previous:
                return self._use_previous(previous, problem)
            previous_problem = '%s is intact, but a run that writes does not build on it' % MANIFEST_PREV
        if self.repair:
            return empty_manifest()
        raise RepositoryError('%s; %s. The restore point files (%s) were left as they are. %s'
                              % (problem, previous_problem, ', '.join(self.point_files()) or 'none', RECOVERY_HINT),
                              code='REPOSITORY_DAMAGED')

    def _use_previous(self, previous, problem):
        """Read the manifest saved before the last one; it may lack the newest point."""
        self.from_previous = True
        self.warnings.append('%s; the previous manifest %s was read instead, and the newest restore point may be '
                             'missing from it. Nothing was changed. Run xenserver.cbt_backup.backup_verify with '
                             'rebuild_manifest: true on %s to list every point file again (docs/guide.md, "A lost or '
                             'damaged manifest").' % (problem, MANIFEST_PREV, self.path))
        return previous

    def save(self):
        """Write the manifest crash- and ENOSPC-safely; on failure the previous manifest stays whole."""
        data = json.dumps(self.manifest, indent=2, sort_keys=True).encode('utf-8') + b'\n'
        path = os.path.join(self.path, MANIFEST)
        keep = MANIFEST_PREV
        if self.damage and os.path.exists(path):
            # a repair: the damaged manifest is kept for inspection, and must not replace the sound previous one
            _link_over(path, os.path.join(self.path, MANIFEST_DAMAGED))
            keep = None
        try:
            write_file_atomically(path, data, temp_name=MANIFEST_TEMP, keep_previous=keep)
        except OSError as exc:
            if exc.errno in SPACE_ERRNOS:
                raise RepositoryError('not enough space in %s to save its manifest (%s); the previous manifest was '
                                      'kept and every restore point it lists is intact. Free some space and run again.'
                                      % (self.path, os.strerror(exc.errno)), code='NO_SPACE')
            raise
        self.from_previous = False
        self.damage = None

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
                raise RepositoryError('the repository %s has no restore point' % self.path, code='POINT_NOT_FOUND')
            return newest
        for point in self.points:
            if point['id'] == ident:
                return point
        raise RepositoryError('the repository %s has no restore point %s (it has: %s)'
                              % (self.path, ident, ', '.join(p['id'] for p in self.points) or 'none'),
                              code='POINT_NOT_FOUND')

    def chain(self, point):
        """The points a restore of ``point`` reads, newest first (the point, its parent, ... the full).

        While a prune folds the point's ancestors into its base file (a ``pending_merge`` journal of kind
        ``fold``, retention.py), they are no longer listed: the journal holds them, until the base file has
        been renamed to the point's file, which then holds the whole disk.
        """
        journal = self.manifest.get('pending_merge') or {}
        folding = journal.get('point') if journal.get('kind') == 'fold' else None
        by_id = dict((p['id'], p) for p in self.points)
        chain = [point]
        while True:
            current = chain[-1]
            if current['id'] == folding:
                if os.path.exists(os.path.join(self.path, journal['base_file'])):
                    chain.extend(journal['chain'])
                return chain
            if not current.get('parent'):
                return chain
            parent = by_id.get(current['parent'])
            if parent is None or parent in chain:
                raise RepositoryError('restore point %s depends on %s, which the manifest does not list'
                                      % (current['id'], current['parent']), code='REPOSITORY_DAMAGED')
            chain.append(parent)

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

    # -- what the collection wrote: the pending_files journal ----------------------------------------

    def record_pending(self, names):
        """Journal ``names`` (point files about to be written, or leaving the manifest) before touching them.

        Only journaled names, and the temporary files ``.<name>.partial-*`` of journaled names, are ever
        deleted by :meth:`remove_leftovers`; saved by the caller's next :meth:`save`.
        """
        pending = self.manifest.setdefault(PENDING, [])
        known = set(entry.get('file') for entry in pending)
        for name in names:
            if name not in known:
                pending.append({'file': name, 'since': format_utc(utc_now())})

    def in_use(self):
        """Names of the files that listed points and an unfinished prune (``pending_merge``) read."""
        names = set(p['file'] for p in self.points)
        journal = self.manifest.get('pending_merge') or {}
        names.update(record['file'] for record in journal.get('chain') or [])
        return names

    def _pending_names(self):
        """Existing files that the journal names and nothing uses (:meth:`in_use`), with their temporary files."""
        listed = self.in_use()
        journaled = set(entry['file'] for entry in self.manifest.get(PENDING) or [] if entry.get('file'))
        found = []
        for name in sorted(os.listdir(self.path)) if self.exists else []:
            if name in listed:
                continue
            if name in journaled:
                found.append(name)
            elif name.startswith('.') and PARTIAL_MARK in name and name[1:].split(PARTIAL_MARK)[0] in journaled:
                found.append(name)
        return found

    def leftovers(self):
        """Files of interrupted runs that the next writing run deletes (journaled, unlisted)."""
        return self._pending_names()

    def unknown_files(self):
        """Files neither listed nor journaled nor the repository's own: reported, never deleted."""
        if not self.exists:
            return []
        ours = set(OWN_FILES) | self.in_use() | set(self._pending_names())
        return sorted(name for name in os.listdir(self.path) if name not in ours and not name.endswith('.link'))

    def notices(self):
        """What a run should tell its caller: the loading warnings and the files left untouched."""
        unknown = self.unknown_files()
        if not unknown:
            return list(self.warnings)
        return self.warnings + ['%s holds %d file(s) that this collection did not write; they were left untouched: %s'
                                % (self.path, len(unknown), ', '.join(unknown[:10]) + (', ...' if len(unknown) > 10 else ''))]

    def remove_leftovers(self):
        """Delete what the journal names and no point uses; clear the journal. Returns the deleted names."""
        if not self.write:
            raise RepositoryError('cleaning up %s needs its write lock' % self.path)
        removed = []
        for name in self._pending_names():
            try:
                os.unlink(os.path.join(self.path, name))
                removed.append(name)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        if removed:
            fsync_directory(self.path)
        if self.manifest.get(PENDING):
            self.manifest[PENDING] = []
            self.save()
        return removed

    def new_point_file(self, kind, when=None):
        """An AtomicFile for a new point and the point's id (unique within the repository), journaled first."""
        when = when or utc_now()
        base = point_id(when, kind)
        ident, counter = base, 1
        taken = set(p['id'] for p in self.points)
        while ident in taken or os.path.lexists(os.path.join(self.path, ident + '.qcow2')):
            counter += 1
            ident = '%s-%d' % (base, counter)
        self.record_pending([ident + '.qcow2'])
        self.save()
        return ident, AtomicFile(os.path.join(self.path, ident + '.qcow2'), prefix=PARTIAL_MARK)

    def _forget_pending(self, names):
        names = set(names)
        if self.manifest.get(PENDING):
            self.manifest[PENDING] = [entry for entry in self.manifest[PENDING] if entry.get('file') not in names]

    def abandon_pending(self, names):
        """After a failed write whose files are already removed: drop them from the journal if the manifest can
        still be saved (on a full disk it cannot; the next run's clean-up then clears the entries)."""
        self._forget_pending(names)
        try:
            self.save()
        except (RepositoryError, OSError):
            pass

    def add_point(self, point, disk=None):
        """Record a finished, renamed point file in the manifest (atomically) and move the CBT anchor."""
        path = self.file_path(point)
        point['sha256'] = file_sha256(path)
        point['file_size'] = os.path.getsize(path)
        if disk:
            self.manifest['disk'] = disk
        self.points.append(point)
        self.manifest['cbt_anchor'] = point.get('snapshot_uuid')
        self._forget_pending([point['file']])
        self.save()
        return point
