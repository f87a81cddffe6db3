# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan a backup run: which VMs and disks, and for each disk a full or an incremental backup, and why.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python over an open XenApiClient (no Ansible imports); failures are XenApiError.

Read only: the host is only asked (records, no changes) and each disk's repository manifest is read
without the repository's write lock, so a plan can be made while a backup writes.
"""

from __future__ import absolute_import, division, print_function

import os

from .._xenapi.model import find_vm, vm_disks
from .._time import parse_utc_or_none, utc_now
from .._repository.retention import acceptable_file_sizes
from .._repository.store import MANIFEST, Repository, RepositoryError
from .._xenapi.ops.snapshot import SNAPSHOT_MARKER, xenapi_time, skip_matches
from .._xenapi.client import GONE_CODES, UUID_RE, XenApiError

__metaclass__ = type

FULL, INCREMENTAL, SKIP = 'full', 'incremental', 'skip'
REASON_CODES = ('SKIPPED', 'CBT_UNSUPPORTED', 'REPOSITORY_DAMAGED', 'FIRST_BACKUP', 'MANIFEST_MISMATCH', 'CBT_DISABLED',
                'ANCHOR_MISSING', 'ANCHOR_MISMATCH', 'ANCHOR_NO_CBT', 'SIZE_CHANGED', 'FULL_EVERY_INCREMENTALS',
                'FULL_EVERY_DAYS', 'CHAIN_OK')
# An entry of vms that fails with one of these is left out of the plan (listed in unresolved), not fatal.
UNRESOLVED_CODES = ('NOT_FOUND', 'AMBIGUOUS')
# A schedule's start time wanders a little: a full "every 7 days" is still due when the last one is 7 days
# old minus this much.
DAYS_GRACE_SECONDS = 3600
DAY_SECONDS = 86400


# -- selecting VMs -----------------------------------------------------------------------------------

def _is_guest(record):
    return not (record['is_a_template'] or record['is_a_snapshot'] or record['is_control_domain'])


def select_vms(client, vms=(), tags=()):
    """``([(ref, record)], unresolved)``: the VMs named in ``vms`` (in that order), then every VM carrying one of
    ``tags`` (sorted by name), each VM once. Templates, snapshots and control domains are never selected by tag.

    An entry of ``vms`` that matches no VM (NOT_FOUND) or several (AMBIGUOUS) does not stop the selection: it is
    listed in ``unresolved`` as ``{'name', 'error_code', 'msg'}`` (once per name, in the order of ``vms``). Only
    when no VM at all is selected is that an error (NO_VM_SELECTED, naming the unresolved entries).
    """
    selected, seen = [], set()
    unresolved, unresolved_names = [], set()

    def add(ref, record):
        if record['uuid'] not in seen:
            seen.add(record['uuid'])
            selected.append((ref, record))

    for ident in vms or ():
        try:
            found = find_vm(client, ident)
        except XenApiError as exc:
            if exc.code not in UNRESOLVED_CODES:
                raise
            if ident not in unresolved_names:
                unresolved_names.add(ident)
                unresolved.append({'name': ident, 'error_code': exc.code, 'msg': exc.message})
            continue
        add(*found)
    if tags:
        wanted = set(tags)
        tagged = [(ref, record) for ref, record in client.call('VM.get_all_records').items()
                  if _is_guest(record) and wanted.intersection(record.get('tags') or [])]
        tagged.sort(key=lambda item: (item[1]['name_label'], item[1]['uuid']))
        for ref, record in tagged:
            add(ref, record)
    if not selected:
        if not vms and not tags:
            message = 'no VM selected: give vms (names or uuids) or tags'
        else:
            reasons = []
            if unresolved:
                reasons.append('no entry of vms names exactly one VM (%s)' % '; '.join(
                    '%s: %s' % (entry['error_code'], entry['msg']) for entry in unresolved))
            if tags:
                reasons.append('no VM carries any of the tags %s (templates, snapshots and control domains are never '
                               'selected)' % ', '.join(sorted(tags)))
            message = 'no VM selected: %s' % '; and '.join(reasons)
        raise XenApiError(message, code='NO_VM_SELECTED')
    return selected, unresolved


def unresolved_warning(entry):
    """The warning for an entry of ``vms`` that was left out."""
    return 'the VM "%s" of vms is left out of this run: %s' % (entry['name'], entry['msg'])


# -- reading a repository ------------------------------------------------------------------------------

class RepositoryState:
    """What a disk's repository holds, read without its lock. ``error`` is set when it cannot be read."""

    def __init__(self, path):
        self.path = path
        self.manifest = None
        self.error = None
        self.exists = False
        self._read()

    def _read(self):
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            self.error = '%s exists but is not a directory' % self.path
            return
        try:
            # load() validates the manifest's shape; a damaged one is an error here as it is for the export
            with Repository(self.path, missing_ok=True, allow_previous=False) as repo:
                self.exists = repo.exists and os.path.exists(os.path.join(self.path, MANIFEST))
                self.manifest = repo.manifest
        except (RepositoryError, OSError) as exc:
            self.error = str(exc)

    @property
    def points(self):
        return self.manifest['points'] if self.manifest else []

    @property
    def newest(self):
        return self.points[-1] if self.points else None

    @property
    def anchor(self):
        return self.manifest.get('cbt_anchor') if self.manifest else None


def chain_facts(points):
    """``(incrementals_since_full, last_full_point, reference_point)`` of a repository's points.

    The last full is the newest point taken as a full backup; a point backup_prune turned into a full by
    merging (it has ``merged``) was taken as an incremental and does not count. Without such a full, every
    point after the first counts and the first point is the reference for the age.
    """
    taken = [n for n, point in enumerate(points) if point.get('type') == 'full' and 'merged' not in point]
    if taken:
        last = taken[-1]
        return len(points) - last - 1, points[last], points[last]
    if not points:
        return 0, None, None
    return len(points) - 1, None, points[0]


# -- deciding ------------------------------------------------------------------------------------------

def _lookup_vdi(client, uuid):
    """``(ref, record)`` of the VDI with this uuid, or None when none exists (any more)."""
    if not isinstance(uuid, str) or not UUID_RE.match(uuid):
        return None
    try:
        ref = client.call('VDI.get_by_uuid', uuid)
        return ref, client.call('VDI.get_record', ref)
    except XenApiError as exc:
        if exc.code in GONE_CODES:
            return None
        raise


def _size_text(size):
    return '%d bytes (%.1f GiB)' % (size, size / 1024.0 ** 3) if size >= 1024 ** 3 else '%d bytes' % size


def _file_problem(state, newest):
    """Why the newest point's file does not match the manifest, or None."""
    path = os.path.join(state.path, newest['file'])
    if not os.path.isfile(path):
        return 'the file %s of the newest restore point %s is missing' % (newest['file'], newest['id'])
    actual = os.path.getsize(path)
    recorded = newest.get('file_size')
    if recorded is None or actual in acceptable_file_sizes(state.manifest, newest):
        return None
    return ('the file %s of the newest restore point %s has %d bytes, but the manifest records %d'
            % (newest['file'], newest['id'], actual, recorded))


def decide(client, vdi_ref, vdi, cbt_supported, state, skipped, full_every, now):
    """``(mode, reason_code, reason, anchor)`` for one disk; ``anchor`` is the usable CBT anchor's uuid or None."""
    disk = 'the disk %s (%s)' % (vdi['name_label'], vdi['uuid'])
    if skipped:
        return SKIP, 'SKIPPED', ('%s is listed in skip_disks, so it is left out of this run: no snapshot and no backup '
                                 'are taken.' % _cap(disk)), None
    if not cbt_supported:
        return FULL, 'CBT_UNSUPPORTED', (
            'The storage repository of %s does not support changed block tracking (its allowed operations lack '
            'vdi_enable_cbt), so no changed blocks can be listed: every backup of this disk is a full backup.'
            % disk), None
    if state.error:
        return FULL, 'REPOSITORY_DAMAGED', (
            'The repository %s of %s cannot be read: %s. Its restore points cannot be trusted, so the next backup '
            'must be a full one; the export refuses to write into it until the manifest is repaired or the repository '
            'is moved aside.' % (state.path, disk, state.error)), None
    newest = state.newest
    if newest is None:
        return FULL, 'FIRST_BACKUP', ('The repository %s has no restore point yet, so this first backup of %s is a '
                                      'full backup.' % (state.path, disk)), None
    recorded_disk = (state.manifest.get('disk') or {}).get('vdi_uuid')
    if recorded_disk != vdi['uuid']:
        return FULL, 'MANIFEST_MISMATCH', (
            'The repository %s records the disk %s, not %s, so its restore points cannot be continued: this backup '
            'is a full backup.' % (state.path, recorded_disk or '(none)', disk)), None
    problem = _file_problem(state, newest)
    if problem:
        return FULL, 'MANIFEST_MISMATCH', ('In the repository %s, %s: an incremental cannot build on it, so this '
                                           'backup of %s is a full backup.' % (state.path, problem, disk)), None
    if state.anchor != newest.get('snapshot_uuid'):
        return FULL, 'MANIFEST_MISMATCH', (
            'The repository %s names %s as its CBT anchor, but its newest restore point %s was taken from snapshot '
            '%s: the manifest contradicts itself, so this backup of %s is a full backup.'
            % (state.path, state.anchor, newest['id'], newest.get('snapshot_uuid'), disk)), None
    if not vdi['cbt_enabled']:
        extra = ''
        if vdi.get('on_boot') == 'reset':
            extra = (' Note: the disk has on_boot=reset, so CBT cannot be enabled on it and VM.snapshot refuses it; '
                     'set on_boot to persist or add the disk to skip_disks.')
        return FULL, 'CBT_DISABLED', (
            'Changed block tracking is off on %s, so the blocks written since the last backup are unknown: CBT is '
            'enabled before the snapshot and this backup is a full backup.%s' % (disk, extra)), None
    anchor = state.anchor
    found = _lookup_vdi(client, anchor)
    if found is None:
        return FULL, 'ANCHOR_MISSING', (
            'The snapshot %s of the newest restore point %s (the CBT anchor) no longer exists on the host, so the '
            'changed blocks cannot be listed against it: this backup of %s is a full backup.'
            % (anchor or '(none recorded)', newest['id'], disk)), None
    anchor_ref, anchor_record = found
    if not anchor_record['is_a_snapshot'] or anchor_record['snapshot_of'] != vdi_ref:
        what = 'a snapshot of another disk' if anchor_record['is_a_snapshot'] else 'not a snapshot'
        return FULL, 'ANCHOR_MISMATCH', (
            'The CBT anchor %s of the repository %s is %s (%s), not a snapshot of %s, so its changed blocks would not '
            'apply: this backup is a full backup.' % (anchor, state.path, what, anchor_record['name_label'], disk)), None
    if not anchor_record['cbt_enabled']:
        return FULL, 'ANCHOR_NO_CBT', (
            'The CBT anchor %s carries no CBT metadata (CBT was off on %s when it was taken), so no changed blocks can '
            'be listed against it: this backup is a full backup.' % (anchor, disk)), None
    live_size = int(vdi['virtual_size'])
    if live_size != newest['virtual_size']:
        return FULL, 'SIZE_CHANGED', (
            '%s has %s now but %s in the newest restore point %s (it was resized), so an incremental would not fit: '
            'this backup is a full backup.' % (_cap(disk), _size_text(live_size), _size_text(newest['virtual_size']),
                                               newest['id'])), None
    since, last_full, reference = chain_facts(state.points)
    limit = full_every.get('incrementals')
    if limit is not None and since >= limit:
        return FULL, 'FULL_EVERY_INCREMENTALS', (
            '%d incremental backup(s) of %s were taken since the last full backup, and full_every.incrementals is %d: '
            'this backup is a full backup.' % (since, disk, limit)), None
    days = full_every.get('days')
    if days is not None:
        when = parse_utc_or_none(reference.get('time'))
        what = 'last full backup' if last_full is not None else 'oldest restore point (no full backup is kept)'
        if when is None:
            return FULL, 'FULL_EVERY_DAYS', (
                'The time of the %s %s of %s cannot be read, so its age against full_every.days (%d) is unknown: '
                'this backup is a full backup.' % (what, reference['id'], disk, days)), None
        age = (now - when).total_seconds()
        if age >= days * DAY_SECONDS - DAYS_GRACE_SECONDS:
            return FULL, 'FULL_EVERY_DAYS', (
                'The %s %s of %s is %.1f days old (taken %s), and full_every.days is %d: this backup is a full backup.'
                % (what, reference['id'], disk, age / DAY_SECONDS, reference.get('time'), days)), None
    return INCREMENTAL, 'CHAIN_OK', (
        'The newest restore point %s was taken from snapshot %s, which still exists and carries CBT metadata: this '
        'backup of %s is incremental and reads only the blocks changed since then.' % (newest['id'], anchor, disk)), \
        anchor


def _cap(text):
    return text[:1].upper() + text[1:]


def previous_anchor(client, vdi_ref, state):
    """The repository's CBT anchor when it still exists on the host as a snapshot of this disk, else None.

    Only a snapshot of this very disk is named: the role destroys it after the disk's backup.
    """
    if state.manifest is None:
        return None
    found = _lookup_vdi(client, state.anchor)
    if found is None:
        return None
    dummy, record = found
    if record['is_a_snapshot'] and record['snapshot_of'] == vdi_ref:
        return record['uuid']
    return None


def leftover_snapshots(client, vdi, state):
    """The snapshots of the disk ``vdi`` (its VDI.snapshots) that interrupted runs left behind:
    ``[{'uuid', 'time', 'type'}]``, oldest first.

    Such a snapshot carries vdi_snapshot's marker (other_config SNAPSHOT_MARKER), still holds data (its type is
    not cbt_metadata), and is not the repository's CBT anchor. Snapshots made otherwise (without the marker), the
    CBT metadata the backups keep, and the anchor are never listed. ``time`` is the snapshot's snapshot_time, else
    the marker's value.
    """
    anchor = state.anchor
    found = []
    for ref in vdi.get('snapshots') or []:
        try:
            record = client.call('VDI.get_record', ref)
        except XenApiError as exc:
            if exc.code in GONE_CODES:  # destroyed in the meantime
                continue
            raise
        other_config = record.get('other_config') or {}
        if SNAPSHOT_MARKER not in other_config or not record['is_a_snapshot'] or record['type'] == 'cbt_metadata':
            continue
        if anchor is not None and record['uuid'] == anchor:
            continue
        when = xenapi_time(record.get('snapshot_time')) or other_config[SNAPSHOT_MARKER] or None
        found.append({'uuid': record['uuid'], 'time': when, 'type': record['type']})
    found.sort(key=lambda item: (item['time'] or '', item['uuid']))
    return found


# -- the plan ------------------------------------------------------------------------------------------

def plan(client, repository_root, vms=(), tags=(), skip_disks=(), full_every=None, now=None):
    """The plan of a backup run: ``{'vms': [...], 'summary': {...}, 'unresolved': [...], 'warnings': [...]}``
    (backup_plan's RETURN)."""
    full_every = dict((k, v) for k, v in (full_every or {}).items() if v is not None)
    for key, value in full_every.items():
        if key not in ('incrementals', 'days') or not isinstance(value, int) or value < 0:
            raise XenApiError('full_every.%s must be a whole number, 0 or more (got %r)' % (key, value),
                              code='BAD_ARGUMENT')
    now = now or utc_now()
    root = os.path.abspath(repository_root)
    skip_disks = list(skip_disks or [])
    used_skips = set()
    srs = {}
    summary = {'vms': 0, 'disks': 0, FULL: 0, INCREMENTAL: 0, SKIP: 0, 'leftover_snapshots': 0}
    result_vms = []
    selected, unresolved = select_vms(client, vms, tags)
    for vm_ref, vm in selected:
        disks = []
        for vdi_ref, vdi, vbd in vm_disks(client, vm_ref, vm):
            sr_ref = vdi['SR']
            if sr_ref not in srs:
                srs[sr_ref] = client.call('SR.get_record', sr_ref)
            sr = srs[sr_ref]
            cbt_supported = 'vdi_enable_cbt' in (sr.get('allowed_operations') or [])
            matched = skip_matches(vdi, skip_disks)
            used_skips.update(matched)
            path = os.path.join(root, vm['uuid'], vdi['uuid'])
            state = RepositoryState(path)
            mode, code, reason, base = decide(client, vdi_ref, vdi, cbt_supported, state, bool(matched), full_every, now)
            since, last_full, dummy = chain_facts(state.points)
            leftovers = leftover_snapshots(client, vdi, state)
            summary['leftover_snapshots'] += len(leftovers)
            disks.append({
                'vdi_uuid': vdi['uuid'],
                'vdi_name': vdi['name_label'],
                'userdevice': vbd.get('userdevice'),
                'virtual_size': int(vdi['virtual_size']),
                'sr_uuid': sr['uuid'],
                'sr_name': sr['name_label'],
                'cbt_enabled': bool(vdi['cbt_enabled']),
                'cbt_supported': cbt_supported,
                'repository': path,
                'mode': mode,
                'reason': reason,
                'reason_code': code,
                'base': base,
                'previous_anchor': previous_anchor(client, vdi_ref, state),
                'points': len(state.points),
                'incrementals_since_full': since,
                'last_full_time': last_full.get('time') if last_full else None,
                'leftover_snapshots': leftovers,
            })
            summary[mode] += 1
        summary['vms'] += 1
        summary['disks'] += len(disks)
        result_vms.append({
            'uuid': vm['uuid'],
            'name': vm['name_label'],
            'power_state': vm.get('power_state'),
            'tags': list(vm.get('tags') or []),
            'disks': disks,
        })
    warnings = [unresolved_warning(entry) for entry in unresolved]
    unused = [entry for entry in skip_disks if entry not in used_skips]
    if unused:
        warnings.append('skip_disks names no disk of the selected VMs: %s' % ', '.join(unused))
    return {'changed': False, 'vms': result_vms, 'summary': summary, 'unresolved': unresolved, 'warnings': warnings}
