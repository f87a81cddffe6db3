# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only views of repositories: listing points with sizes and ages, verifying files and chains.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Nothing here takes a repository's write lock or changes a file, so it can run next to a backup in
progress: files of an unfinished point (``.<id>.qcow2.partial-*``) are never restore points and are
only reported as leftovers.
"""

from __future__ import absolute_import, division, print_function

import os
import random

from . import retention, vm_configs
from .._image import qcow2
from .._image.qcow2 import Qcow2Chain, Qcow2Error, Qcow2Image
from .store import FILE_FACTS, MANIFEST, MANIFEST_PREV, MARKER, Repository, RepositoryError, file_sha256
from .._time import parse_utc_or_none, utc_now

__metaclass__ = type

DEFAULT_MAX_DEPTH = 4
SPOT_BLOCK = 64 * 1024


# -- listing -----------------------------------------------------------------------------------------

def find_repositories(root, max_depth=DEFAULT_MAX_DEPTH):
    """Sorted directories at or below ``root`` (at most ``max_depth`` levels down) that hold a manifest.

    A repository's own subdirectories are not searched, symbolic links to directories are not
    followed, hidden directories and the VMs' ``vm-config`` directories are skipped.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise RepositoryError('%s is not a directory: give a repository directory or a directory that holds '
                              'repositories' % root)
    found = []
    base_depth = root.rstrip(os.sep).count(os.sep)
    for current, dirs, files in os.walk(root, onerror=None, followlinks=False):
        depth = current.rstrip(os.sep).count(os.sep) - base_depth
        if MANIFEST in files or MARKER in files or MANIFEST_PREV in files:  # a lost manifest shows as damaged
            found.append(current)
            dirs[:] = []
            continue
        if depth >= max_depth:
            dirs[:] = []
        else:
            # a VM's directory also holds its configurations (vm-config, with a manifest of its own): not a disk
            dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d != vm_configs.DIRECTORY)
    return sorted(found)


def _chain_length(by_id, point):
    length, current, seen = 1, point, set()
    while current.get('parent'):
        if current['id'] in seen:
            return None
        seen.add(current['id'])
        current = by_id.get(current['parent'])
        if current is None:
            return None
        length += 1
    return length


def describe_repository(path, now=None):
    """One repository as backup_info returns it; a manifest that cannot be read gives ``error`` instead of points."""
    now = now or utc_now()
    result = {'path': os.path.abspath(path)}
    try:
        with Repository(path) as repo:
            manifest = repo.manifest  # validated by load(): every point has its fields with their types
            points = repo.points
            by_id = dict((p['id'], p) for p in points)
            listed = []
            total = 0
            for point in points:
                file_path = repo.file_path(point)
                present = os.path.isfile(file_path)
                file_size = point.get('file_size')
                if file_size is None and present:
                    file_size = os.path.getsize(file_path)
                total += file_size or 0
                when = parse_utc_or_none(point.get('time'))
                listed.append({
                    'id': point['id'],
                    'time': point.get('time'),
                    'type': point.get('type'),
                    'parent': point.get('parent'),
                    'file': point['file'],
                    'file_present': present,
                    'snapshot_uuid': point.get('snapshot_uuid'),
                    'snapshot_time': point.get('snapshot_time'),
                    'run': point.get('run') or point.get('snapshot_time'),
                    'virtual_size': point.get('virtual_size'),
                    'blocks': point.get('blocks'),
                    'bytes': point.get('bytes'),
                    'file_size': file_size,
                    'age_seconds': int((now - when).total_seconds()) if when else None,
                    'chain_length': _chain_length(by_id, point),
                })
            result.update({
                'disk': manifest.get('disk') or {},
                'cbt_anchor': manifest.get('cbt_anchor'),
                'points': listed,
                'newest': listed[-1]['id'] if listed else None,
                'total_bytes': total,
                'leftovers': repo.leftovers(),
                'unknown_files': repo.unknown_files(),
                'manifest_damaged': repo.from_previous,
                'warnings': list(repo.warnings),
            })
    except (RepositoryError, OSError) as exc:
        result['error'] = str(exc)
        result['error_code'] = getattr(exc, 'code', None) or 'REPOSITORY_UNREADABLE'
    return result


def list_repositories(path, max_depth=DEFAULT_MAX_DEPTH, now=None):
    """``{'repositories': [...]}`` for a repository directory or a tree of them."""
    if not os.path.exists(path):
        raise RepositoryError('%s does not exist: give a repository directory or a directory that holds repositories'
                              % path)
    now = now or utc_now()
    repositories = [describe_repository(found, now=now) for found in find_repositories(path, max_depth)]
    return {'repositories': repositories, 'vm_configs': describe_vm_configs(path, repositories)}


def describe_vm_configs(path, repositories):
    """The VM configurations kept beside the repositories found (in their parent directories, and in ``path``
    itself when it is a VM's directory): per VM directory, the runs kept, and what was wrong reading them."""
    directories = set(os.path.dirname(r['path']) for r in repositories) | set([os.path.abspath(path)])
    found = []
    for directory in sorted(directories):
        if not os.path.isdir(vm_configs.directory_of(directory)):
            continue
        with vm_configs.VmConfigs(directory) as store:
            found.append({'path': store.path, 'vm_uuid': os.path.basename(directory), 'configs': store.entries(),
                          'problems': store.problems})
    return found


# -- verification ------------------------------------------------------------------------------------

def _check_point(repo, point, by_id, position, read_data=True):
    """The problems of one point (empty list: its file and its link to the parent are sound).

    ``read_data`` false checks what the tables say (sizes, structure, links, the number of stored blocks)
    without reading the data: no file hash, no blocks digest.
    """
    problems = []
    if os.path.basename(point['file']) != point['file'] or point['file'] in ('', '.', '..'):
        return ['its file name %r is not a plain name inside the repository directory' % point['file']]
    path = repo.file_path(point)
    if not os.path.isfile(path):
        return ['its file %s is missing' % point['file']]
    size = os.path.getsize(path)
    if point.get('file_size') is not None and size != point['file_size']:
        problems.append('its file has %d bytes but the manifest recorded %d (truncated or rewritten)'
                        % (size, point['file_size']))
    scanned = None
    if read_data:
        try:
            scanned = qcow2.scan(path)  # one read of the file for its hash and the stored blocks' digest
            sha = scanned.sha256
        except qcow2.Qcow2Error:
            sha = None
        except OSError as exc:
            return problems + ['its file cannot be read: %s' % exc]
        try:
            sha = sha or file_sha256(path)
        except OSError as exc:
            return problems + ['its file cannot be read: %s' % exc]
    if read_data and point.get('sha256') and sha != point['sha256']:
        problems.append('sha256 of the file is %s but the manifest recorded %s' % (sha, point['sha256']))
    problems.extend('qcow2 structure: %s' % text for text in qcow2.check(path))

    parent = None
    if point.get('parent'):
        parent = by_id.get(point['parent'])
        if parent is None:
            problems.append('its parent %s is not listed in the manifest' % point['parent'])
        elif position[parent['id']] >= position[point['id']]:
            problems.append('its parent %s is not older than it in the manifest' % parent['id'])
    if point.get('type') == 'full' and point.get('parent'):
        problems.append('it is a full point but names the parent %s' % point['parent'])
    if point.get('type') == 'incremental' and not point.get('parent'):
        problems.append('it is an incremental point without a parent')

    try:
        with Qcow2Image(path) as image:
            if point.get('virtual_size') is not None and image.virtual_size != point['virtual_size']:
                problems.append('the image has a virtual size of %d bytes but the manifest recorded %d'
                                % (image.virtual_size, point['virtual_size']))
            if parent is not None and parent.get('virtual_size') is not None \
                    and image.virtual_size != parent['virtual_size']:
                problems.append('its virtual size (%d) differs from its parent\'s (%d)'
                                % (image.virtual_size, parent['virtual_size']))
            if not point.get('parent') and image.backing_file is not None:
                problems.append('it has the backing file %s but is listed without a parent' % image.backing_file)
            if parent is not None and image.backing_file != parent['file']:
                problems.append('its backing file is %s but its parent\'s file is %s'
                                % (image.backing_file, parent['file']))
            if point.get('parent') and parent is None and image.backing_file is None:
                problems.append('it has no backing file')
            stored = scanned.clusters_stored if scanned else sum(1 for dummy in image.iter_clusters())
            if point.get('blocks') is not None and stored != point['blocks']:
                problems.append('the image stores %d blocks but the manifest recorded %d' % (stored, point['blocks']))
            digest = scanned.digest if scanned else (image.digest() if read_data else None)
            if digest and point.get('blocks_digest') and digest != point['blocks_digest']:
                problems.append('the digest of the stored blocks is %s but the manifest recorded %s'
                                % (digest, point['blocks_digest']))
    except (Qcow2Error, OSError) as exc:
        if not any(str(exc) in text for text in problems):  # the structure check may have said it already
            problems.append('the image cannot be read: %s' % exc)
    return problems


def _settled(repo, point):
    """The point as verify must check it: a prune interrupted between renaming a merged file over the point's
    and recording it left a ``pending_merge`` journal that vouches for the new file (restore honours it too);
    the point is then checked as the standalone full the journal describes."""
    journal = repo.manifest.get(retention.JOURNAL)
    if not journal or journal.get('point') != point['id']:
        return point
    if not journal.get('sha256'):
        if journal.get('kind') == 'fold' and not os.path.exists(os.path.join(repo.path, journal['base_file'])):
            # a fold renamed the merged file over the point's after the last manifest save that verify can read
            # (manifest.json.prev, from before the hashes were known): its structure is checked, not its hashes
            unknown = dict((key, None) for key in FILE_FACTS)
            return retention.merged_view(point, dict(journal, **unknown))
        return point  # a fold still writing: the point's file is untouched
    try:
        if file_sha256(repo.file_path(point)) != journal['sha256']:
            return point  # the rename did not happen: the old file is still the point's
    except OSError:
        return point
    return retention.merged_view(point, journal)


def verify_repository(path, point=None, read_data=True):
    """Verify a repository's points (or the chain of ``point``), oldest first; return the report.

    ``read_data`` false: structure, sizes and links only (see :func:`_check_point`).

    ``{'repository', 'points': [{id, ok, problems}], 'first_bad', 'affected', 'ok', 'leftovers', 'message'}``;
    ``affected`` lists the bad points and every point that depends on them, in manifest order.
    """
    with Repository(path) as repo:
        if not repo.points and not os.path.isfile(os.path.join(repo.path, MANIFEST)):
            raise RepositoryError('%s holds no %s: it is not a backup repository, or no backup into it has finished '
                                  'yet (backup_info lists the repositories below a directory)' % (repo.path, MANIFEST),
                                  code='REPOSITORY_NOT_FOUND')
        by_id = dict((p['id'], _settled(repo, p)) for p in repo.points)
        position = dict((p['id'], index) for index, p in enumerate(repo.points))
        # points a prune is folding away: no longer listed, still read by the point the journal merges
        for depth, record in enumerate((repo.manifest.get(retention.JOURNAL) or {}).get('chain') or []):
            by_id.setdefault(record['id'], record)
            position.setdefault(record['id'], -1 - depth)
        if point is None:
            selected = list(repo.points)
        else:
            wanted = repo.point(point)
            selected, current = [], wanted
            while current is not None:  # the point and what it needs, stopping at a missing parent
                selected.append(current)
                current = by_id.get(current.get('parent')) if current.get('parent') else None
                if current is not None and current in selected:
                    break
            selected.reverse()
        report = []
        bad = []
        for entry in selected:
            problems = _check_point(repo, by_id[entry['id']], by_id, position, read_data)
            report.append({'id': entry['id'], 'ok': not problems, 'problems': problems})
            if problems:
                bad.append(entry['id'])
        affected = set(bad)
        for ident in bad:
            affected.update(repo.dependents(ident))
        affected = [p['id'] for p in repo.points if p['id'] in affected]
        result = {
            'repository': repo.path,
            'points': report,
            'first_bad': bad[0] if bad else None,
            'affected': affected,
            # a manifest read from manifest.json.prev because manifest.json is damaged is no verified repository
            'ok': not bad and not repo.from_previous,
            'manifest_damaged': repo.from_previous,
            'leftovers': repo.leftovers(),
            'unknown_files': repo.unknown_files(),
            'warnings': list(repo.warnings),
            'newest': repo.newest()['id'] if repo.points else None,
            'data_read': bool(read_data),
        }
        if point is not None:
            result['point'] = selected[-1]['id'] if selected else point
        result['message'] = verify_message(result)
        return result


def verify_message(result):
    if result.get('manifest_damaged'):
        return ('%s Restore points it lists: %d, of which these verified: %s.'
                % (' '.join(result['warnings']), len(result['points']),
                   ', '.join(p['id'] for p in result['points'] if p['ok']) or 'none'))
    if not result['points']:
        return 'the repository %s has no restore point to verify' % result['repository']
    if result['ok']:
        return 'all %d restore points of %s verified' % (len(result['points']), result['repository'])
    first = [p for p in result['points'] if p['id'] == result['first_bad']][0]
    sound = [p['id'] for p in result['points'] if p['id'] not in result['affected']]
    return ('restore point %s of %s is bad: %s. These restore points cannot be trusted: %s. %s Take a new full backup '
            'so that the next points do not build on a bad one.'
            % (first['id'], result['repository'], '; '.join(first['problems']), ', '.join(result['affected']),
               'These verified and stay restorable: %s.' % ', '.join(sound) if sound else 'No verified point is left.'))


# -- spot check against a live snapshot --------------------------------------------------------------

def pick_blocks(chain, count, rng=None):
    """``count`` distinct random block offsets: half among blocks the chain stores data for, the rest anywhere."""
    rng = rng or random.SystemRandom()
    total = -(-chain.virtual_size // SPOT_BLOCK)
    count = min(count, total)
    allocated = sorted(set(offset - offset % SPOT_BLOCK for offset in chain.iter_allocated()))
    chosen = set(rng.sample(allocated, min(len(allocated), -(-count // 2))))
    while len(chosen) < count:
        chosen.add(rng.randrange(total) * SPOT_BLOCK)
    return sorted(chosen)


def spot_check(path, point, open_connection, count, rng=None):
    """Compare ``count`` random 64 KiB blocks of ``point``'s chain with what ``open_connection()`` serves.

    ``open_connection``: a callable returning an open connection with ``export_size``, ``read(offset, length)``
    and ``close()`` (an NbdConnection on the snapshot the point was taken from).
    Returns ``{'checked', 'blocks', 'mismatches', 'ok'}``.
    """
    with Repository(path) as repo:
        entry = repo.point(point)
        file_path = repo.file_path(entry)
    with Qcow2Chain.open(file_path) as chain:
        offsets = pick_blocks(chain, count, rng)
        conn = open_connection()
        try:
            if conn.export_size != chain.virtual_size:
                return {'checked': 0, 'blocks': [], 'mismatches': [], 'ok': False, 'point': entry['id'],
                        'message': 'the snapshot has %d bytes but restore point %s has %d'
                                   % (conn.export_size, entry['id'], chain.virtual_size)}
            mismatches = []
            for offset in offsets:
                length = min(SPOT_BLOCK, chain.virtual_size - offset)
                if conn.read(offset, length) != chain.read(offset, length):
                    mismatches.append(offset)
        finally:
            conn.close()
    result = {'checked': len(offsets), 'blocks': offsets, 'mismatches': mismatches, 'ok': not mismatches,
              'point': entry['id']}
    if mismatches:
        result['message'] = ('%d of %d blocks of restore point %s differ from the snapshot it was taken from (first '
                             'at offset %d): that restore point cannot be trusted'
                             % (len(mismatches), len(offsets), entry['id'], mismatches[0]))
    else:
        result['message'] = '%d random blocks of restore point %s match the snapshot' % (len(offsets), entry['id'])
    return result
