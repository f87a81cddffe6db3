# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rebuild a lost or damaged manifest from the restore point files themselves.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Every file whose name has the form of a point file (``<YYYYmmddTHHMMSSZ>-full|incr[-N].qcow2``) is read:
its qcow2 header gives the virtual size and the backing file (its parent), its clusters give ``blocks``,
``bytes`` and the stored-blocks digest, and the file's sha256 and size are taken.  A point whose image
cannot be read, or whose backing file is not a readable point of the same size, cannot be restored and is
left out of the manifest (its file stays; the result lists it).  What the files cannot tell (the snapshot
a point was taken from, the disk's facts, the run) is carried over from manifest.json.prev for every
point whose file still has the sha256 recorded there.  The CBT anchor is kept only when the newest point
is the one the previous manifest ended with; otherwise it is null and the next backup is a full one.

Nothing is deleted: the new manifest is saved the usual way, a damaged manifest.json is kept as
manifest.json.damaged, and manifest.json.prev stays.
"""

from __future__ import absolute_import, division, print_function

import os

from .._image import qcow2
from .._image.qcow2 import Qcow2Error, Qcow2Image
from .store import FILE_FACTS, Repository, empty_manifest, file_facts
from .._time import normalize_utc

__metaclass__ = type

# what only the previous manifest knows about a point (the files cannot tell)
CARRIED = ('snapshot_uuid', 'snapshot_time', 'base_snapshot_uuid', 'source_vdi_uuid', 'source_vdi_name', 'run',
           'bytes_read', 'seconds', 'fallback_reason', 'export', 'merged')


def _time_of(ident):
    return normalize_utc(ident[:16])  # a point id starts with its creation time (compact form)


def _read_point(path):
    """The facts of one point file, or ``(None, problem)``."""
    try:
        with Qcow2Image(path) as image:
            problems = image.check()
            if problems:
                return None, 'its qcow2 structure is damaged: %s' % problems[0]
            facts = {'virtual_size': image.virtual_size, 'backing_file': image.backing_file}
        facts.update(file_facts(qcow2.scan(path)))  # one read of the file for every hash
        return facts, None
    except (Qcow2Error, OSError) as exc:
        return None, 'it cannot be read as a qcow2 image: %s' % exc


def _ordered(found):
    """Names with parents before children (oldest first among equals)."""
    done, ordered = set(), []
    pending = sorted(found)
    while pending:
        progressed = False
        for name in list(pending):
            parent = found[name]['backing_file']
            if parent is None or parent in done:
                ordered.append(name)
                done.add(name)
                pending.remove(name)
                progressed = True
        if not progressed:  # a cycle of backing files: none of them can be restored
            return ordered, pending
    return ordered, []


def _keep_unfinished_fold(repo, previous, result, check_mode):
    """The previous manifest holds a prune's unfinished fold: the folded points' files no longer hold their
    snapshots (the full's file may already hold the merged disk), so the files cannot tell the points apart.
    The previous manifest, journal included, is the truth; the next writing run finishes the fold."""
    result.update({'changed': True, 'points': [p['id'] for p in previous.get('points') or []],
                   'cbt_anchor': previous.get('cbt_anchor'), 'carried': [p['id'] for p in previous.get('points') or []]})
    if not check_mode:
        repo.manifest = previous
        repo.save()
    result['message'] = ('%s: the manifest of %s %s restored from manifest.json.prev, which records a merge that '
                         'backup_prune had not finished (its files cannot be told apart by their content); the next '
                         'backup_prune or vdi_export finishes the merge'
                         % (repo.damage, repo.path, 'would be' if check_mode else 'was'))
    return result


def rebuild_manifest(path, check_mode=False):
    """Rebuild the manifest of the repository ``path`` if it is missing or damaged; return what was done.

    ``{'changed', 'repository', 'damage', 'points': [ids], 'unrestorable': [{file, problem}], 'carried': [ids],
    'cbt_anchor', 'message'}``.  A sound manifest is left alone (``changed`` false).
    """
    with Repository(path, write=not check_mode, repair=True) as repo:
        result = {'repository': repo.path, 'damage': repo.damage, 'changed': False, 'unrestorable': [],
                  'carried': [], 'points': [p['id'] for p in repo.points], 'cbt_anchor': repo.manifest.get('cbt_anchor')}
        if repo.damage is None:
            result['message'] = 'the manifest of %s is sound; nothing was rebuilt' % repo.path
            return result
        previous = repo.manifest  # manifest.json.prev when it could be read, else empty
        if (previous.get('pending_merge') or {}).get('kind') == 'fold':
            return _keep_unfinished_fold(repo, previous, result, check_mode)
        known = dict((p['file'], p) for p in previous.get('points') or [])

        found, unrestorable = {}, []
        for name in repo.point_files():
            facts, problem = _read_point(os.path.join(repo.path, name))
            if facts is None:
                unrestorable.append({'file': name, 'problem': problem})
            else:
                found[name] = facts
        # a point needs its whole chain: a missing or unreadable parent, or another size, makes it unrestorable
        changed_any = True
        while changed_any:
            changed_any = False
            for name, facts in sorted(found.items()):
                parent = facts['backing_file']
                problem = None
                if parent is not None and parent not in found:
                    problem = 'its backing file %s is not a readable restore point of this repository' % parent
                elif parent is not None and found[parent]['virtual_size'] != facts['virtual_size']:
                    problem = 'its virtual size differs from its backing file %s' % parent
                if problem:
                    unrestorable.append({'file': name, 'problem': problem})
                    del found[name]
                    changed_any = True
        ordered, cyclic = _ordered(found)
        unrestorable.extend({'file': name, 'problem': 'its backing files form a cycle'} for name in cyclic)

        manifest = empty_manifest()
        manifest['disk'] = previous.get('disk') or {}
        for name in ordered:
            facts = found[name]
            ident = name[:-len('.qcow2')]
            parent = facts['backing_file']
            point = {
                'id': ident,
                'file': name,
                'time': _time_of(ident),
                'type': 'incremental' if parent else 'full',
                'parent': parent[:-len('.qcow2')] if parent else None,
            }
            point.update((key, facts[key]) for key in ('virtual_size',) + FILE_FACTS)
            old = known.get(name)
            if old is not None and old.get('sha256') == facts['sha256']:
                point.update((key, old[key]) for key in CARRIED if key in old)
                point['time'] = old.get('time') or point['time']
                result['carried'].append(ident)
            manifest['points'].append(point)
        newest = manifest['points'][-1] if manifest['points'] else None
        old_points = previous.get('points') or []
        if newest is not None and old_points and old_points[-1]['file'] == newest['file'] \
                and newest['id'] in result['carried']:
            manifest['cbt_anchor'] = previous.get('cbt_anchor')
        result.update({
            'changed': True,
            'points': [p['id'] for p in manifest['points']],
            'unrestorable': sorted(unrestorable, key=lambda entry: entry['file']),
            'cbt_anchor': manifest['cbt_anchor'],
        })
        if not check_mode:
            repo.manifest = manifest
            repo.save()
        result['message'] = (
            '%s: the manifest of %s %s rebuilt from %d restore point file(s)%s; %s'
            % (repo.damage, repo.path, 'would be' if check_mode else 'was', len(manifest['points']),
               ' (%d left out as unrestorable, their files kept)' % len(unrestorable) if unrestorable else '',
               'the CBT anchor was kept' if manifest['cbt_anchor'] else
               'the next backup is a full one (the CBT anchor is not known)'))
        return result
