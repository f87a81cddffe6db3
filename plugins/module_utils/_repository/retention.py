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

Dropping (:func:`prune`): a kept point whose parent is dropped is merged forward.  Its complete
content is read through its chain and written as a standalone full image (only non-zero clusters)
to a temporary file, which then replaces the point's file under the same name; the point's
children name that file as their backing file and read the same content from it.  Step by step::

    0. journal the point's file in ``pending_files`` (so its temporary file is known to be ours);
    1. write the merged image to .<file>.partial-XXXX, fsync it and the directory, hash it;
    2. journal: manifest['pending_merge'] = {point, temp_file, sha256, blocks, bytes, blocks_digest,
       file_size, merged, drops}, saved atomically (Repository.save);
    3. rename the temporary file over <file>, fsync the directory;
    4. manifest: the point becomes a full (parent null, new sha256/blocks/bytes/blocks_digest/file_size;
       ``export`` keeps the type/bytes/blocks its export stored, unless it has one already), the
       journal's drops leave the list, the journal is removed; saved atomically;
    5. (after the last merge, or at once when nothing needs merging) delete the dropped files, fsync the directory.

Only the last merge of a run carries the drops; a manifest saved between merges is consistent on
its own.  :func:`recover` finishes or rolls back an interrupted run: if the point's file already
has the journal's sha256 it finishes step 4; elif the temporary file exists with that sha256 it
renames it (step 3) and finishes; else it drops the journal (the old files are intact).  Then the files
the repository's ``pending_files`` journal names and no listed point uses are deleted (the dropped points,
journaled in the save that unlists them; temporary files of journaled names); nothing else is touched.  At any moment every
point of the manifest is restorable: before step 3 the old files are untouched, after it the
point's file holds the same disk content as before.

Fault injection: ``prune(..., checkpoint=f)`` calls ``f(step)`` at each step of :data:`KILL_POINTS`
(tests pass a callable that kills the process there); without it nothing is called.
"""

from __future__ import absolute_import, division, print_function

import datetime
import os

from .._image.qcow2 import Qcow2Chain, Qcow2Writer
from .._image.raw_file import AtomicFile, fsync_directory
from .store import PARTIAL_MARK, SPACE_ERRNOS, RepositoryError, file_sha256
from .._time import TimeFormatError, parse_utc, utc_now

__metaclass__ = type

JOURNAL = 'pending_merge'
RULES = ('keep_last', 'keep_days', 'keep_daily', 'keep_weekly', 'keep_monthly')
KILL_POINTS = ('merge-write', 'merge-written', 'journal-saved', 'renamed', 'manifest-saved', 'deleting')
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

    ``drops``: ids to remove, oldest first; ``merges``: ``[(id, [ids read through, newest first])]``
    for every kept point whose parent is dropped (it becomes a standalone full), oldest first.
    """
    keep_ids = set(keep_ids)
    by_id = dict((p['id'], p) for p in points)
    drops = [p['id'] for p in points if p['id'] not in keep_ids]
    merges = []
    for point in points:
        if point['id'] in keep_ids and point.get('parent') and point['parent'] not in keep_ids:
            chain = [point['id']]
            current = point
            while current.get('parent'):
                current = by_id.get(current['parent'])
                if current is None:
                    raise RepositoryError('restore point %s depends on a point the manifest does not list'
                                          % chain[-1])
                chain.append(current['id'])
            merges.append((point['id'], chain))
    return drops, merges


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
    view.update({
        'type': 'full',
        'parent': None,
        'base_snapshot_uuid': None,
        'sha256': journal['sha256'],
        'blocks': journal['blocks'],
        'bytes': journal['bytes'],
        'blocks_digest': journal['blocks_digest'],
        'file_size': journal['file_size'],
        'merged': journal.get('merged') or [],
    })
    return view


def _finish_merge(repo, journal):
    """Step 4: record the merged point and the drops in the manifest (atomically).

    The dropped points' files enter the ``pending_files`` journal in the same save that unlists them,
    so that the clean-up (step 5) deletes only files this collection recorded.
    """
    drops = set(journal.get('drops') or [])
    points = []
    for point in repo.points:
        if point['id'] == journal['point']:
            point = merged_view(point, journal)
        points.append(point)
    repo.record_pending(p['file'] for p in points if p['id'] in drops)
    repo.manifest['points'] = [p for p in points if p['id'] not in drops]
    repo.manifest.pop(JOURNAL, None)
    repo.save()


def _delete_leftovers(repo, checkpoint=_no_checkpoint):
    """Step 5 (and clean-up): delete the files the repository's journal says this collection wrote and no
    listed point uses (dropped points, interrupted exports and merges). Nothing else is ever deleted."""
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
    if journal:
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


# -- pruning ----------------------------------------------------------------------------------------

def write_merged(chain_path, out_fd, progress=None):
    """Write the complete content of the chain ending at ``chain_path`` as a standalone qcow2 into ``out_fd``."""
    with Qcow2Chain.open(chain_path) as chain:
        size = chain.virtual_size
        cs = chain.cluster_size
        writer = Qcow2Writer(out_fd, size)
        try:
            run_start, run_len = None, 0

            def flush(start, length):
                if length:
                    writer(start, chain.read(start, length))
                    if progress is not None:
                        progress(start, length)

            for offset in chain.iter_allocated():
                length = min(cs, size - offset)
                if run_start is not None and run_start + run_len == offset and run_len < MERGE_PIECE_CLUSTERS * cs:
                    run_len += length
                    continue
                flush(run_start, run_len)
                run_start, run_len = offset, length
            flush(run_start, run_len)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise


def _space_error(exc, what, repo):
    if getattr(exc, 'errno', None) in SPACE_ERRNOS:
        return PruneError('not enough space in %s to write %s (%s); the repository was left as it was and every '
                          'restore point is intact. Free some space (or prune with a smaller retention from a place '
                          'with room) and run again.' % (repo.path, what, os.strerror(exc.errno)), exc.errno)
    return None


def merge_point(repo, ident, chain_ids, drops=None, checkpoint=_no_checkpoint):
    """Merge point ``ident`` forward into a standalone full under its own file name (steps 1-4)."""
    point = repo.point(ident)
    path = repo.file_path(point)
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
        written = write_merged(path, out.fd, progress)
        os.fsync(out.fd)
        fsync_directory(repo.path)
        checkpoint('merge-written')
        journal = {
            'point': ident,
            'temp_file': os.path.basename(out.temp_path),
            'sha256': file_sha256(out.temp_path),
            'blocks': written.clusters_stored,
            'bytes': written.bytes_stored,
            'blocks_digest': written.digest,
            'file_size': written.file_size,
            'merged': chain_ids[1:],
            'drops': list(drops or []),
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
    return journal


def prune(repo, rules, now=None, check_mode=False, checkpoint=None):
    """Apply the retention ``rules`` to the open Repository ``repo`` (write-locked unless ``check_mode``).

    Returns a dict: kept, removed, merged (id -> info), bytes_freed, reasons, recovered, deleted_files.
    ``checkpoint``: see the module docstring.
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
    result = {
        'kept': kept,
        'removed': drops,
        'reasons': dict((ident, reasons[ident]) for ident in kept),
        'merged': dict((ident, {'merged': chain[1:]}) for ident, chain in merges),
        'recovered': recovered,
        'changed': bool(drops) or pending or recovered['action'] != 'none' or bool(recovered['deleted']),
    }
    if check_mode:
        result['bytes_freed'] = sum(sizes[ident] for ident in drops)  # an upper bound: merged files grow
        result['recovery_pending'] = pending
        return result
    before = sum(sizes[ident] for ident in drops) + sum(sizes[ident] for ident, chain in merges)
    after = 0
    for number, (ident, chain) in enumerate(merges):
        last = number == len(merges) - 1
        journal = merge_point(repo, ident, chain, drops=drops if last else None, checkpoint=checkpoint)
        result['merged'][ident].update(dict((key, journal[key]) for key in ('sha256', 'blocks', 'bytes', 'file_size')))
        after += journal['file_size']
    if drops and not merges:
        drop_set = set(drops)
        repo.record_pending(p['file'] for p in repo.points if p['id'] in drop_set)
        repo.manifest['points'] = [p for p in repo.points if p['id'] not in drop_set]
        repo.save()
        checkpoint('manifest-saved')
    result['deleted_files'] = _delete_leftovers(repo, checkpoint) if drops else []
    result['bytes_freed'] = before - after
    return result
