# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of restore points: which points to keep, and dropping the others without breaking a chain.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Selection (:func:`select`) is a pure function of the points' ``time`` (UTC):

* ``keep_last: N``    the N newest points;
* ``keep_days: N``    every point taken in the last N * 24 hours (before ``now``);
* ``keep_daily: N``   the newest point of each of the N most recent UTC days that have a point;
* ``keep_weekly: N``  the same per ISO week (Monday..Sunday, UTC);
* ``keep_monthly: N`` the same per calendar month (UTC).

A point is kept if any rule keeps it; the newest point is always kept (it is the CBT anchor the next
incremental builds on).  Days, weeks and months without a point do not count, so a repository whose
backups stopped is not emptied by the passing of time.

Dropping (:func:`prune`): a kept point whose parent is dropped is merged, at the cost of the clusters
the merge folds, not of the disk (:func:`plan` and :func:`merge_method` choose how):

* **fold** (the dropped points reach the full at the chain's root): the clusters of the kept point and
  of the dropped incrementals are folded into the full's file in place (qcow2_fold.py: unused clusters,
  new tables, one header switch), and that file is renamed to the kept point's name, so the points
  above it keep their backing names.  Steps and recovery: :func:`fold_point`.
* **overlay** (a kept ancestor remains): a new overlay of the ancestor holding the kept point's clusters
  and those of the dropped points between that it does not override is written to a temporary file and
  renamed over the point's file;
* **rewrite** (only where a file of the chain also serves a point outside it): the point's whole
  content as a standalone full, written and renamed the same way.

Overlay and rewrite, step by step::

    0. journal the point's file in ``pending_files`` (so its temporary file is known to be ours);
    1. write the merged image to .<file>.partial-XXXX, fsync it and the directory, hash it;
    2. journal: manifest['pending_merge'] = {point, kind, parent, temp_file, sha256, blocks, bytes,
       blocks_digest, file_size, merged}, saved atomically (Repository.save);
    3. rename the temporary file over <file>, fsync the directory;
    4. manifest: the point takes the journal's facts (a full, or an incremental of its new parent;
       ``export`` keeps the type/bytes/blocks its export stored, unless it has one already), the
       journal is removed; saved atomically.

After the merges, the dropped points still listed leave the manifest (their files enter ``pending_files``
in the same save), then the files ``pending_files`` names and nothing uses are deleted.
A manifest saved between merges is consistent on its own.  :func:`recover` finishes or rolls back an
interrupted run: a fold is finished (:func:`fold_point`); for the others, if the point's file already
has the journal's sha256 it finishes step 4; elif the temporary file exists with that sha256 it
renames it (step 3) and finishes; else it drops the journal (the old files are intact).  Then the files
the repository's ``pending_files`` journal names and nothing uses are deleted; nothing else is touched.
At any moment every point of the manifest is restorable.

Fault injection: ``prune(..., checkpoint=f)`` calls ``f(step)`` at each step of :data:`KILL_POINTS`
and :data:`FOLD_KILL_POINTS` (tests pass a callable that kills the process there); without it nothing is called.
"""

from __future__ import absolute_import, division, print_function

import binascii
import datetime
import os

from .._image import qcow2, qcow2_fold
from .._image.qcow2 import SOURCE_NONE, Qcow2Chain, Qcow2Writer
from .._image.raw_file import AtomicFile, fsync_directory
from .store import FILE_FACTS, PARTIAL_MARK, SPACE_ERRNOS, Repository, RepositoryError, file_facts, file_sha256
from .._time import TimeFormatError, parse_utc, utc_now

__metaclass__ = type

JOURNAL = 'pending_merge'
RULES = ('keep_last', 'keep_days', 'keep_daily', 'keep_weekly', 'keep_monthly')
# rewrite and overlay merges
KILL_POINTS = ('merge-write', 'merge-written', 'journal-saved', 'renamed', 'manifest-saved', 'drops-saved', 'deleting')
# folds
FOLD_KILL_POINTS = ('fold-journaled', 'fold-write', 'fold-written', 'journal-saved', 'header-switched', 'renamed',
                    'manifest-saved', 'drops-saved', 'deleting')
MERGE_PIECE_CLUSTERS = 16


class PruneError(RepositoryError):
    """Pruning failed; ``errno`` is set when an OS error caused it (ENOSPC...)."""

    def __init__(self, message, errno_=None):
        super(PruneError, self).__init__(message, code='NO_SPACE' if errno_ in SPACE_ERRNOS else 'PRUNE_FAILED')
        self.errno = errno_


def _no_checkpoint(step):
    pass


# -- selection --------------------------------------------------------------------------------------

def parse_time(text):
    """A point's ``time`` as an aware UTC datetime; RepositoryError if it cannot be read."""
    try:
        return parse_utc(text)
    except TimeFormatError:
        raise RepositoryError('restore point time %r is not an RFC 3339 date and time' % (text,),
                              code='REPOSITORY_DAMAGED')


def validate_rules(rules):
    """The given rules (name -> int) without the unset ones; RepositoryError if none is set or one is negative."""
    given = dict((name, rules.get(name)) for name in RULES if rules.get(name) is not None)
    if not given:
        raise RepositoryError('give at least one retention rule (%s)' % ', '.join(RULES), code='INVALID_OPTION')
    for name, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RepositoryError('%s must be a whole number of at least 0, not %r' % (name, value), code='INVALID_OPTION')
    return given


def select(points, rules, now=None):
    """Which points to keep.

    ``points``: oldest..newest as in the manifest (each with ``id`` and ``time``); ``rules``: the
    retention options.  Returns ``{id: [reason, ...]}`` for every kept point.
    """
    rules = validate_rules(rules)
    now = parse_time(now) if now is not None else utc_now()
    if not points:
        return {}
    timed = [(parse_time(p['time']), index, p['id']) for index, p in enumerate(points)]
    newest_first = sorted(timed, reverse=True)
    reasons = {}

    def keep(ident, why):
        reasons.setdefault(ident, []).append(why)

    keep(points[-1]['id'], 'newest')
    if rules.get('keep_last'):
        for when, index, ident in newest_first[:rules['keep_last']]:
            keep(ident, 'keep_last')
    if rules.get('keep_days'):
        since = now - datetime.timedelta(days=rules['keep_days'])
        for when, index, ident in newest_first:
            if when >= since:
                keep(ident, 'keep_days')
    buckets = (
        ('keep_daily', lambda when: when.date()),
        ('keep_weekly', lambda when: tuple(when.isocalendar())[:2]),
        ('keep_monthly', lambda when: (when.year, when.month)),
    )
    for name, bucket_of in buckets:
        wanted = rules.get(name)
        if not wanted:
            continue
        seen = []
        for when, index, ident in newest_first:
            bucket = bucket_of(when)
            if bucket in seen:
                continue
            seen.append(bucket)
            if len(seen) > wanted:
                break
            keep(ident, name)
    return reasons


def plan(points, keep_ids):
    """What dropping the points not in ``keep_ids`` takes: ``(drops, merges)``.

    ``drops``: ids to remove, oldest first; ``merges``: ``[(id, [the id, then the dropped ids it reads
    through, newest first])]`` for every kept point whose parent is dropped, oldest first.  The walk stops
    at a kept ancestor (the merged point is re-pointed at it) or includes the full at the chain's root (the
    point then becomes a full).
    """
    keep_ids = set(keep_ids)
    by_id = dict((p['id'], p) for p in points)
    drops = [p['id'] for p in points if p['id'] not in keep_ids]
    merges = []
    for point in points:
        if point['id'] in keep_ids and point.get('parent') and point['parent'] not in keep_ids:
            chain = [point['id']]
            current = point
            while current.get('parent') and current['parent'] not in keep_ids:
                current = by_id.get(current['parent'])
                if current is None:
                    raise RepositoryError('restore point %s depends on a point the manifest does not list'
                                          % chain[-1])
                chain.append(current['id'])
            merges.append((point['id'], chain))
    return drops, merges


def merge_method(points, chain):
    """How a merge of ``chain`` (see :func:`plan`) is done, in proportion to what it folds where it can.

    ``overlay``: a kept ancestor remains; the point's file is rewritten with the dropped points' clusters
    it does not override, backed by the ancestor's file.  ``fold``: the chain reaches the full at its root;
    the clusters of the point and the dropped ones are folded into the full's file, which then takes the
    point's name.  ``rewrite`` (a whole standalone image) only where a folded file also serves a point
    outside the chain.
    """
    by_id = dict((p['id'], p) for p in points)
    if by_id[chain[-1]].get('parent'):
        return 'overlay'
    if any(p.get('parent') in chain[1:] and p['id'] not in chain for p in points):
        return 'rewrite'
    return 'fold'


# -- recovery ---------------------------------------------------------------------------------------

def acceptable_file_sizes(manifest, point):
    """The sizes the point's file may have: the recorded one, and the merged file's while a prune's journal
    (``pending_merge``) vouches for it (interrupted after the rename; the next writing run finishes it)."""
    sizes = set([point.get('file_size')])
    journal = manifest.get(JOURNAL) or {}
    if journal.get('point') == point['id']:
        sizes.add(journal.get('file_size'))
    return sizes


def merged_view(point, journal):
    """``point`` as it reads once the merge that ``journal`` (a ``pending_merge``) describes is recorded."""
    view = dict(point)
    if 'export' not in view:
        # what the export of this point stored, before the merge overwrites it (a run's report shows it)
        view['export'] = {'type': point.get('type'), 'bytes': point.get('bytes'), 'blocks': point.get('blocks')}
    parent = journal.get('parent')
    view.update({
        'type': 'incremental' if parent else 'full',
        'parent': parent,
        'base_snapshot_uuid': journal.get('base_snapshot_uuid') if parent else None,
        'sha256': journal['sha256'],
        'blocks': journal['blocks'],
        'bytes': journal['bytes'],
        'blocks_digest': journal['blocks_digest'],
        'file_size': journal['file_size'],
        'merged': list(point.get('merged') or []) + list(journal.get('merged') or []),
    })
    if journal.get('kind') == 'fold':  # the point now lives in the full's file: its compressed clusters stay so
        view.pop('compression', None)
        if journal.get('compression'):
            view['compression'] = journal['compression']
    return view


def _finish_merge(repo, journal):
    """Record the merged point (and a run's drops) in the manifest, atomically.

    Files of points that leave the manifest (the journal's drops, a fold's chain) enter the
    ``pending_files`` journal in the same save, so that the clean-up deletes only files this
    collection recorded.
    """
    drops = set(journal.get('drops') or [])
    points = []
    for point in repo.points:
        if point['id'] == journal['point']:
            point = merged_view(point, journal)
        points.append(point)
    repo.record_pending(p['file'] for p in points if p['id'] in drops)
    repo.record_pending(record['file'] for record in journal.get('chain') or [] if record['file'] != journal.get('base_file'))
    repo.manifest['points'] = [p for p in points if p['id'] not in drops]
    repo.manifest.pop(JOURNAL, None)
    repo.save()


def _delete_leftovers(repo, checkpoint=_no_checkpoint):
    """Clean-up: delete the files the repository's journal says this collection wrote and nothing uses
    (dropped points, interrupted exports and merges). Nothing else is ever deleted."""
    if repo.leftovers():
        checkpoint('deleting')
    return repo.remove_leftovers()


def recover(repo):
    """Finish or roll back a prune that was interrupted; ``repo`` is an open, write-locked Repository.

    Returns ``{'action': 'none'|'finished'|'rolled_back', 'point': id or None, 'deleted': [file names]}``.
    Safe to call at any time under the write lock; it also deletes leftovers of interrupted runs.
    """
    if not repo.write:
        raise RepositoryError('recovering the repository %s needs its write lock (Repository(path, write=True))' % repo.path)
    journal = repo.manifest.get(JOURNAL)
    action, ident = 'none', None
    if journal and journal.get('kind') == 'fold':
        ident = journal['point']
        _recover_fold(repo, journal)
        action = 'finished'
    elif journal:
        ident = journal.get('point')
        target = None
        for point in repo.points:
            if point['id'] == ident:
                target = repo.file_path(point)
        temp = os.path.join(repo.path, os.path.basename(journal.get('temp_file') or '')) if journal.get('temp_file') else None
        if target is not None and os.path.exists(target) and file_sha256(target) == journal.get('sha256'):
            _finish_merge(repo, journal)
            action = 'finished'
        elif target is not None and temp and os.path.exists(temp) and file_sha256(temp) == journal.get('sha256'):
            os.rename(temp, target)
            fsync_directory(repo.path)
            _finish_merge(repo, journal)
            action = 'finished'
        else:
            if journal.get('temp_file'):  # written by the interrupted merge: the clean-up below removes it
                repo.record_pending([os.path.basename(journal['temp_file'])])
            repo.manifest.pop(JOURNAL, None)
            repo.save()
            action = 'rolled_back'
    deleted = _delete_leftovers(repo)
    return {'action': action, 'point': ident, 'deleted': deleted}


# -- merging: rewrite and overlay (a new file, renamed over the point's) -----------------------------

def _feed(chain, writer, offset, length, progress, defined):
    """Feed ``writer`` the content of [offset, offset+length) for the clusters ``defined(source)`` selects."""
    cs = chain.cluster_size
    for run in chain.runs(offset, length):
        run_offset, run_length, source = run[0], run[1], run[2]
        if source is not None:
            if not defined(source):
                continue
            data = bytearray(run_length)
            chain.read_run_into(memoryview(data), run)
            writer(run_offset, memoryview(data))
        else:  # zeros: unallocated (nothing to write) or zero flags, which an overlay must keep
            for start in range(run_offset, run_offset + run_length, cs):
                sources = chain.region(start // chain.region_size)[0]
                if defined(sources[(start % chain.region_size) // cs]):
                    writer(start, memoryview(bytearray(min(cs, chain.virtual_size - start))))
        if progress is not None:
            progress(run_offset, run_length)


def _data_only(source):
    """What a standalone image stores: data (zero flags and unallocated clusters read as zeros anyway)."""
    return source >= 0


def _defined_here(source):
    """What an overlay must store: every cluster the merged files define, zero flags included (they shadow)."""
    return source != SOURCE_NONE


def write_merged(chain_paths, out_fd, backing_file=None, progress=None, compression=None):
    """Write the content of ``chain_paths`` (newest first; a whole chain, or the part above ``backing_file``)
    into ``out_fd`` as one qcow2: standalone (the disk's allocated clusters) or an overlay of
    ``backing_file`` (every cluster the paths define, zero flags included), compressed like the point."""
    with Qcow2Chain(chain_paths) as chain:
        writer = Qcow2Writer(out_fd, chain.virtual_size, backing_file=backing_file, compression=compression)
        try:
            defined = _data_only if backing_file is None else _defined_here
            step = MERGE_PIECE_CLUSTERS * chain.cluster_size
            for offset in range(0, chain.virtual_size, step):
                _feed(chain, writer, offset, min(step, chain.virtual_size - offset), progress, defined)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise


def _space_error(exc, what, repo, outcome='the repository was left as it was and every restore point is intact'):
    if getattr(exc, 'errno', None) in SPACE_ERRNOS:
        return PruneError('not enough space in %s to write %s (%s); %s. Free some space (or prune with a smaller '
                          'retention from a place with room) and run again.'
                          % (repo.path, what, os.strerror(exc.errno), outcome), exc.errno)
    return None


def merge_point(repo, ident, chain_ids, method='rewrite', checkpoint=_no_checkpoint):
    """Rewrite point ``ident`` under its own file name: as a standalone full (``rewrite``) or as an overlay
    of its kept ancestor holding the dropped points' clusters (``overlay``).  Returns the journal."""
    point = repo.point(ident)
    path = repo.file_path(point)
    by_id = dict((p['id'], p) for p in repo.points)
    ancestor = by_id.get(by_id[chain_ids[-1]].get('parent')) if method == 'overlay' else None
    if method == 'overlay':
        chain = [point] + [by_id[i] for i in chain_ids[1:]]
    else:
        chain = repo.chain(point)
    repo.record_pending([point['file']])  # its temporary file .<file>.partial-* is then ours to clean up
    repo.save()
    out = AtomicFile(path, prefix=PARTIAL_MARK)
    journal = None
    try:
        halfway = [False]

        def progress(offset, length):
            if not halfway[0] and offset + length >= point['virtual_size'] // 2:
                halfway[0] = True
                checkpoint('merge-write')
        written = write_merged([repo.file_path(p) for p in chain], out.fd,
                               backing_file=ancestor['file'] if ancestor else None, progress=progress,
                               compression=point.get('compression'))
        os.fsync(out.fd)
        fsync_directory(repo.path)
        checkpoint('merge-written')
        journal = {
            'point': ident,
            'kind': method,
            'parent': ancestor['id'] if ancestor else None,
            'base_snapshot_uuid': ancestor.get('snapshot_uuid') if ancestor else None,
            'temp_file': os.path.basename(out.temp_path),
            'sha256': file_sha256(out.temp_path),
            'blocks': written.clusters_stored,
            'bytes': written.bytes_stored,
            'blocks_digest': written.digest,
            'file_size': written.file_size,
            'merged': chain_ids[1:],
            'drops': [],
        }
        repo.manifest[JOURNAL] = journal
        repo.save()
    except BaseException as exc:
        out.discard()
        if journal is not None:
            repo.manifest.pop(JOURNAL, None)
        repo.abandon_pending([point['file']])
        if isinstance(exc, (IOError, OSError)):
            error = _space_error(exc, 'the merged restore point %s' % ident, repo)
            if error is not None:
                raise error
        raise
    checkpoint('journal-saved')
    out.commit(mode=0o600)  # fsync, rename over the point's file, fsync the directory
    checkpoint('renamed')
    _finish_merge(repo, journal)
    checkpoint('manifest-saved')
    journal['bytes_written'] = written.file_size
    return journal


# -- merging: fold (the dropped full's file takes the kept point's clusters and name) -----------------

def fold_point(repo, ident, chain_ids, checkpoint=_no_checkpoint):
    """Fold point ``ident`` and the dropped points below it into the full at the chain's root, in place.

    Steps (each a kill point of the fault tests)::

        1. manifest: the dropped points leave the list; the journal (kind fold, phase writing) keeps their
           records for the readers (Repository.chain) and names the base file and its size;  fold-journaled
        2. qcow2_fold.prepare writes the folded clusters and new tables into unused clusters of the base
           file and fsyncs it; the base still reads as before;                         fold-write, fold-written
        3. the future file is hashed (qcow2.scan with the new header) and the journal becomes phase
           ready with the hashes and both header patches;                              journal-saved
        4. the header switch (one write in the first sector) and fsync;                header-switched
        5. the base file is renamed to the point's file name, fsync of the directory;  renamed
        6. manifest: the point becomes the full the journal describes, the journal goes; manifest-saved

    The point restores at every instant: before 4 through its unchanged chain, between 4 and 5 through the
    chain whose base already holds the folded clusters (the overlays above override the same clusters with
    the same data), after 5 from its merged file.  :func:`recover` redoes step 2 on (the base is first cut
    back to its size) or finishes from the journal's hashes.
    """
    point = repo.point(ident)
    by_id = dict((p['id'], p) for p in repo.points)
    records = [dict(by_id[i]) for i in chain_ids[1:]]
    # the base file changes (in unused clusters) before its header switch: its file hash is no longer the
    # recorded one, while its blocks digest and its content stay what they were
    records[-1]['sha256'] = None
    records[-1]['file_size'] = None
    base_path = repo.file_path(records[-1])
    journal = {
        'point': ident, 'kind': 'fold', 'phase': 'writing', 'parent': None,
        'base_file': records[-1]['file'], 'base_file_size': os.path.getsize(base_path),
        # the header's table fields now: while the file still has them, its header was not switched
        'base_patch': binascii.hexlify(qcow2_fold.current_patch(base_path)).decode('ascii'),
        'chain': records, 'merged': chain_ids[1:], 'drops': [],
        # the point's compression: its blocks stay compressed in the base file (with the base's compression type)
        'compression': point.get('compression'),
    }
    folded = set(chain_ids[1:])
    repo.manifest['points'] = [p for p in repo.points if p['id'] not in folded]
    repo.manifest[JOURNAL] = journal
    repo.save()
    checkpoint('fold-journaled')
    return _run_fold(repo, journal, point, checkpoint)


def _run_fold(repo, journal, point, checkpoint):
    """Steps 2-6 of :func:`fold_point` (also what recovery redoes)."""
    base_path = os.path.join(repo.path, journal['base_file'])
    target = repo.file_path(point)
    overlays = [target] + [os.path.join(repo.path, record['file']) for record in journal['chain'][:-1]]
    if os.path.getsize(base_path) > journal['base_file_size']:
        os.truncate(base_path, journal['base_file_size'])  # what an interrupted step 2 appended
    halfway = [False]

    def progress(done, total):
        if not halfway[0] and done * 2 >= total:
            halfway[0] = True
            checkpoint('fold-write')
    try:
        result = qcow2_fold.prepare(base_path, overlays, progress=progress, compress=bool(journal.get('compression')))
    except (IOError, OSError) as exc:
        if os.path.getsize(base_path) > journal['base_file_size']:
            os.truncate(base_path, journal['base_file_size'])
        error = _space_error(exc, 'the clusters folded into %s' % journal['base_file'], repo,
                             outcome='every listed restore point is intact, and the next run with room finishes '
                                     'the merge')
        if error is not None:
            raise error
        raise
    checkpoint('fold-written')
    _record_scanned(journal, base_path, header_patch=result.patch)
    journal.update({
        'phase': 'ready', 'patch': binascii.hexlify(result.patch).decode('ascii'), 'compression': result.compression,
        'restore_patch': binascii.hexlify(result.restore_patch).decode('ascii'),
    })
    repo.manifest[JOURNAL] = journal
    repo.save()
    checkpoint('journal-saved')
    qcow2_fold.switch(base_path, result.patch)
    checkpoint('header-switched')
    os.rename(base_path, target)
    fsync_directory(repo.path)
    checkpoint('renamed')
    _finish_merge(repo, journal)
    checkpoint('manifest-saved')
    journal['bytes_written'] = result.bytes_written
    return journal


def _recover_fold(repo, journal):
    """Finish an interrupted fold, from whatever the files show.

    The base file not switched yet (its header has the table fields of ``base_patch``, or of the ready
    journal's ``restore_patch``): the fold is done again (or, when ready, just switched).  Switched, or
    already renamed to the point's file: the file holds the merged disk; it is renamed and recorded, with the
    journal's hashes or, when the journal was saved before they were known, hashes taken now.
    """
    point = repo.point(journal['point'])
    target = repo.file_path(point)
    base_path = os.path.join(repo.path, journal['base_file'])
    ready = journal['phase'] == 'ready'
    if not os.path.exists(base_path):
        if not ready or file_sha256(target) != journal['sha256']:
            _record_scanned(journal, target)
        _finish_merge(repo, journal)
        return
    now = qcow2_fold.current_patch(base_path)
    original = [binascii.unhexlify(journal[key]) for key in ('base_patch', 'restore_patch') if journal.get(key)]
    if ready and now in original:
        qcow2_fold.switch(base_path, binascii.unhexlify(journal['patch']))  # prepared and fsynced before the journal
        now = binascii.unhexlify(journal['patch'])
    if now not in original:  # switched: the base file reads as the merged point
        if ready and file_sha256(base_path) != journal['sha256']:
            # not what was hashed (damaged since): back to the old tables, which the fold never touched
            qcow2_fold.switch(base_path, binascii.unhexlify(journal['restore_patch']))
        else:
            if not ready:
                _record_scanned(journal, base_path)
            os.rename(base_path, target)
            fsync_directory(repo.path)
            _finish_merge(repo, journal)
            return
    for name in ('phase', 'patch', 'restore_patch') + FILE_FACTS:
        journal.pop(name, None)
    journal['phase'] = 'writing'
    _run_fold(repo, journal, point, _no_checkpoint)


def _record_scanned(journal, path, header_patch=None):
    """Put the hashes of the merged file at ``path`` (read with ``header_patch``) into the journal (the caller
    saves it)."""
    journal.update(file_facts(qcow2.scan(path, header_patch=header_patch)))


# -- pruning ----------------------------------------------------------------------------------------

def prune(repo, rules, now=None, check_mode=False, checkpoint=None):
    """Apply the retention ``rules`` to the open Repository ``repo`` (write-locked unless ``check_mode``).

    Returns a dict: kept, removed, merged (id -> info), bytes_freed, bytes_written, reasons, recovered,
    deleted_files.  ``checkpoint``: see the module docstring.
    """
    checkpoint = checkpoint or _no_checkpoint
    recovered = {'action': 'none', 'point': None, 'deleted': []}
    if check_mode:
        pending = bool(repo.manifest.get(JOURNAL))
    else:
        recovered = recover(repo)
        pending = False
    points = list(repo.points)
    reasons = select(points, rules, now=now)
    drops, merges = plan(points, reasons)
    kept = [p['id'] for p in points if p['id'] in reasons]
    sizes = dict((p['id'], p.get('file_size') or 0) for p in points)
    methods = dict((ident, merge_method(points, chain)) for ident, chain in merges)
    by_id = dict((p['id'], p) for p in points)
    for ident, chain in merges:
        if methods[ident] == 'fold' and qcow2_fold.unsupported(repo.file_path(by_id[chain[-1]])):
            methods[ident] = 'rewrite'  # a full not written by this collection (qcow2 v2, internal snapshots...)
    result = {
        'kept': kept,
        'removed': drops,
        'reasons': dict((ident, reasons[ident]) for ident in kept),
        'merged': dict((ident, {'merged': chain[1:], 'method': methods[ident]}) for ident, chain in merges),
        'recovered': recovered,
        'changed': bool(drops) or pending or recovered['action'] != 'none' or bool(recovered['deleted']),
        'bytes_written': 0,
    }
    if check_mode:
        result['bytes_freed'] = sum(sizes[ident] for ident in drops)  # an upper bound: merged files grow
        result['recovery_pending'] = pending
        return result
    before = sum(sizes[ident] for ident in drops) + sum(sizes[ident] for ident, chain in merges)
    after = 0
    for ident, chain in merges:
        if methods[ident] == 'fold':
            journal = fold_point(repo, ident, chain, checkpoint=checkpoint)
        else:
            journal = merge_point(repo, ident, chain, method=methods[ident], checkpoint=checkpoint)
        result['merged'][ident].update(dict((key, journal[key]) for key in ('sha256', 'blocks', 'bytes', 'file_size')))
        result['bytes_written'] += journal['bytes_written']
        after += journal['file_size']
    remaining = set(drops) & set(p['id'] for p in repo.points)
    if remaining:
        repo.record_pending(p['file'] for p in repo.points if p['id'] in remaining)
        repo.manifest['points'] = [p for p in repo.points if p['id'] not in remaining]
        repo.save()
        checkpoint('drops-saved')
    result['deleted_files'] = _delete_leftovers(repo, checkpoint) if drops else []
    result['bytes_freed'] = before - after
    return result


def prune_repository(path, rules, check_mode=False):
    """The backup_prune use case for one repository: recover an interrupted run, then :func:`prune` by ``rules``.

    Returns prune's result with ``repository``, ``unknown_files``, ``warnings`` and ``before`` (the point ids before
    the prune, for a diff). Raises CbtBackupError; a failed write is ``NO_SPACE`` or ``PRUNE_FAILED``, and every
    listed point is still restorable then.
    """
    validate_rules(rules)
    try:
        with Repository(path, write=not check_mode, allow_previous=False) as repo:
            before = [p['id'] for p in repo.points]
            result = prune(repo, rules, check_mode=check_mode)
            result.update(repository=repo.path, unknown_files=repo.unknown_files(), warnings=repo.notices(),
                          before=before)
    except (IOError, OSError) as exc:
        raise PruneError('pruning the repository %s failed: %s. Every restore point listed in its manifest is still '
                         'restorable; the next run finishes or rolls back what was interrupted.' % (path, exc),
                         getattr(exc, 'errno', None))
    return result
