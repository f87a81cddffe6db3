# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshots of disks for CBT backups: take them, reduce them to CBT metadata, destroy them.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python over an open XenApiClient (no Ansible imports); failures are XenApiError.
"""

from __future__ import absolute_import, division, print_function

import time

from ..._time import format_utc, parse_utc_or_none, utc_now
from ..model import find_snapshot_if_exists, find_vdi, find_vm, is_disk_vbd, vm_disks
from ..client import GONE_CODES, NULL_REF, XenApiError

__metaclass__ = type

VM_SNAPSHOT_NAME = '%s (xenserver.cbt_backup, disks only)'
# The other_config key that marks a disk snapshot as taken by vdi_snapshot (state=present); its value is the UTC
# time it was taken. A marked snapshot that still holds data after its run is a leftover of an interrupted run
# (backup_plan lists them).
SNAPSHOT_MARKER = 'xenserver.cbt_backup.snapshot'


class PartialSnapshotError(XenApiError):
    """A snapshot of a disk or a VM was taken, but a later step (marking it, reading it, ...) failed.

    ``snapshots``: the disk snapshot, or every disk snapshot of the snapshot VM that could still be found (described
    as they were read, then listed once more after the failure), so that the caller can destroy them.
    """

    def __init__(self, exc, message, snapshots):
        # The result says what exists now: something was created (changed) and what to destroy.
        super(PartialSnapshotError, self).__init__(message, code=exc.code, params=exc.params,
                                                   from_host=getattr(exc, 'from_host', False),
                                                   result={'changed': True, 'snapshots': snapshots})
        self.snapshots = snapshots


def mark_snapshot(client, snap_ref, when):
    """Mark a disk snapshot as taken by this collection at ``when``: ``other_config[SNAPSHOT_MARKER] = when``.

    A snapshot inherits its disk's other_config (xapi copies it), so a disk that carries the marker (it was made
    from a marked snapshot, e.g. with VDI.copy) hands it on: VDI.add_to_other_config then refuses the key
    (MAP_DUPLICATE_KEY), and the inherited value is replaced by this snapshot's time.
    """
    try:
        client.call('VDI.add_to_other_config', snap_ref, SNAPSHOT_MARKER, when)
    except XenApiError as exc:
        if exc.code != 'MAP_DUPLICATE_KEY':
            raise
        client.call('VDI.remove_from_other_config', snap_ref, SNAPSHOT_MARKER)
        client.call('VDI.add_to_other_config', snap_ref, SNAPSHOT_MARKER, when)


def rewrap(exc, message):
    """The same error (code, parameters, origin) with a more helpful message."""
    return XenApiError(message, code=exc.code, params=exc.params, from_host=getattr(exc, 'from_host', False))


def xenapi_time(value):
    """A XenAPI datetime (xmlrpc DateTime ``20240102T03:04:05Z``, datetime or str) as RFC 3339 UTC text, or None.

    None also for xapi's "never" (1970-01-01) and for text that is no time at all.
    """
    when = parse_utc_or_none(value)
    if when is None or when.year <= 1970:
        return None
    return format_utc(when)


def _uuid_of(client, ref):
    if not ref or ref == NULL_REF:
        return None
    try:
        return client.call('VDI.get_uuid', ref)
    except XenApiError as exc:
        if exc.code in GONE_CODES:
            return None
        raise


def _snapshot_view(record, uuid, ref, snapshot_of, time):
    """The fields modules return for a snapshot; ``record`` is the snapshot's (or, planned, its disk's) record."""
    return {
        'uuid': uuid,
        'ref': ref,
        'name': record['name_label'],
        'snapshot_of': snapshot_of,
        'time': time,
        'type': record['type'],
        'cbt_enabled': bool(record['cbt_enabled']),
        'virtual_size': int(record['virtual_size']),
    }


def describe_snapshot(client, ref, record, time_override=None, snapshot_of=None):
    """What the module returns for one snapshot; ``snapshot_of``: its disk's uuid when the caller knows it."""
    return _snapshot_view(record, record['uuid'], ref, snapshot_of or _uuid_of(client, record.get('snapshot_of')),
                          time_override or xenapi_time(record.get('snapshot_time')))


def describe_planned(ref, record):
    """What check mode returns for a disk that would be snapshotted (no uuid, ref or time yet)."""
    return _snapshot_view(record, None, None, record['uuid'], None)


def _no_cbt_warnings(snapshots):
    return ['CBT is not enabled on the disk %s (%s): its snapshot cannot be used to list changed blocks or be '
            'reduced to CBT metadata; enable CBT (xenserver.cbt_backup.vdi_cbt) before the next snapshot'
            % (s['name'], s['snapshot_of']) for s in snapshots if not s['cbt_enabled']]


def snapshot_vdi(client, ident, check_mode=False):
    """Snapshot one disk (named by uuid, or by the name of a disk that is not a snapshot) and mark the snapshot.

    A failure after VDI.snapshot (marking or reading the snapshot) raises PartialSnapshotError with the snapshot.
    """
    ref, record = find_vdi(client, ident, snapshot=False)
    if check_mode:
        snapshots = [describe_planned(ref, record)]
        return {'changed': True, 'snapshots': snapshots, 'warnings': _no_cbt_warnings(snapshots)}
    snap_ref = client.call('VDI.snapshot', ref, {})
    when = format_utc(utc_now())
    try:
        mark_snapshot(client, snap_ref, when)
        snapshots = [describe_snapshot(client, snap_ref, client.call('VDI.get_record', snap_ref),
                                       snapshot_of=record['uuid'])]
    except XenApiError as exc:
        raise PartialSnapshotError(
            exc, '%s. The snapshot %s of the disk %s (%s) was taken, but marking or reading it failed: destroy it '
            '(state=absent)' % (exc.message, snap_ref, record['name_label'], record['uuid']),
            [_describe_after_failure(client, snap_ref, record, when)])
    return {'changed': True, 'snapshots': snapshots, 'warnings': _no_cbt_warnings(snapshots)}


def _describe_after_failure(client, snap_ref, disk, when):
    """The snapshot ``snap_ref`` of ``disk`` as well as it can still be read; without its record, only its ref
    and its disk's facts (uuid null)."""
    try:
        return describe_snapshot(client, snap_ref, client.call('VDI.get_record', snap_ref), snapshot_of=disk['uuid'])
    except XenApiError:
        described = describe_planned(snap_ref, disk)
        described.update(ref=snap_ref, time=when)
        return described


def skip_matches(record, skip_disks):
    """The entries of ``skip_disks`` that name the VDI ``record``: its uuid (any case) or its name."""
    return [entry for entry in skip_disks or ()
            if entry == record['name_label'] or str(entry).lower() == record['uuid'].lower()]


def snapshot_vm(client, ident, check_mode=False, skip_disks=(), capture=None):
    """Snapshot all user disks of a VM at one point in time; keep the disk snapshots, drop the VM record.

    VM.snapshot captures every disk at once. The snapshot VM's VBDs would make a later VDI.data_destroy
    fail with VDI_IN_USE, so the snapshot VM is destroyed: VM.destroy removes the VM and its VBDs, never
    its VDIs.

    ``skip_disks``: uuids or names of disks to leave out (VM.snapshot's ignore_vdis); entries that name no
    disk of this VM are ignored. When every disk is left out, nothing is snapshotted and nothing changes.

    ``capture(client, snap_vm_record, vm_record)``, when given, reads what it needs of the VM snapshot before it
    is destroyed (the VM's configuration); its value is ``captured`` in the result, or, if it raised a
    XenApiError, ``capture_error`` says why (the disk snapshots are kept all the same).
    """
    vm_ref, vm_record = find_vm(client, ident)
    disks = vm_disks(client, vm_ref, vm_record)
    if not disks:
        raise XenApiError('the VM %s (%s) has no user disks to snapshot' % (vm_record['name_label'], vm_record['uuid']),
                          code='NO_DISKS')
    skipped = [(ref, record) for ref, record, dummy in disks if skip_matches(record, skip_disks)]
    skipped_refs = [ref for ref, dummy in skipped]
    disks = [disk for disk in disks if disk[0] not in skipped_refs]
    result = {'vm': vm_record['uuid'], 'skipped_disks': [record['uuid'] for dummy, record in skipped]}
    if not disks:
        result.update(changed=False, snapshots=[], warnings=[])
        return result
    if check_mode:
        snapshots = [describe_planned(ref, record) for ref, record, dummy in disks]
        result.update(changed=True, snapshots=snapshots, warnings=_no_cbt_warnings(snapshots))
        return result

    disk_order = dict((ref, n) for n, (ref, dummy, dummy2) in enumerate(disks))
    disk_uuids = dict((ref, record['uuid']) for ref, record, dummy in disks)
    name = VM_SNAPSHOT_NAME % vm_record['name_label']
    if skipped_refs:
        snap_vm = client.call('VM.snapshot', vm_ref, name, skipped_refs)
    else:
        snap_vm = client.call('VM.snapshot', vm_ref, name)
    marker = _Marker(client, format_utc(utc_now()))
    found = {}  # snapshot VDI ref -> (disk order, description), filled as each one is read
    try:
        snap_vm_record = client.call('VM.get_record', snap_vm)
        when = xenapi_time(snap_vm_record.get('snapshot_time'))
        _collect_disk_snapshots(client, snap_vm_record, disk_order, disk_uuids, when, found, marker)
        if capture is not None:
            try:
                result['captured'] = capture(client, snap_vm_record, vm_record)
            except XenApiError as exc:
                result['capture_error'] = exc.message
        client.call('VM.destroy', snap_vm)
    except XenApiError as exc:
        try:  # best effort, once more: the failure may have been passing, or may have stopped the listing half-way
            snap_vm_record = client.call('VM.get_record', snap_vm)
            _collect_disk_snapshots(client, snap_vm_record, disk_order, disk_uuids,
                                    xenapi_time(snap_vm_record.get('snapshot_time')), found, marker, tolerant=True)
        except XenApiError:
            pass  # the snapshot VM itself cannot be read (any more): report what was found before
        raise PartialSnapshotError(
            exc, '%s. The VM snapshot %s of %s was taken but not cleaned up: destroy the snapshot VM (it keeps its '
            'disks) before reducing its disks to CBT metadata' % (exc.message, snap_vm, vm_record['name_label']),
            _in_disk_order(found))
    snapshots = _in_disk_order(found)
    missing = [record['uuid'] for ref, record, dummy in disks
               if record['uuid'] not in [s['snapshot_of'] for s in snapshots]]
    warnings = _no_cbt_warnings(snapshots)
    if missing:
        warnings.append('VM.snapshot made no snapshot of the disk(s) %s' % ', '.join(missing))
    result.update(changed=True, snapshots=snapshots, warnings=warnings)
    return result


class _Marker:
    """Marks the disk snapshots of one VM snapshot (mark_snapshot), each once, all with the time ``when``."""

    def __init__(self, client, when):
        self.client = client
        self.when = when
        self.marked = set()

    def __call__(self, snap_ref, tolerant=False):
        if snap_ref in self.marked:
            return
        try:
            mark_snapshot(self.client, snap_ref, self.when)
        except XenApiError:
            if not tolerant:
                raise
            return
        self.marked.add(snap_ref)


def _collect_disk_snapshots(client, snap_vm_record, disk_order, disk_uuids, when, found, marker, tolerant=False):
    """Add the disk snapshots of a snapshot VM to ``found`` (VDI ref -> (order, description)), one by one, and
    mark each (``marker``) as soon as it is recorded.

    Each snapshot is recorded as soon as it is read, so a call that fails later leaves the earlier ones in
    ``found``; snapshots already there are not read again (only marked, if that failed before). ``when``
    overrides the snapshots' time. ``tolerant``: a VBD or VDI that cannot be read, or a snapshot that cannot be
    marked, is passed over instead of raising (the best-effort listing after a failure).
    """
    for vbd_ref in snap_vm_record['VBDs']:
        try:
            vbd = client.call('VBD.get_record', vbd_ref)
            vdi_ref = vbd['VDI']
            if vdi_ref in found:
                marker(vdi_ref, tolerant=tolerant)
                continue
            if not is_disk_vbd(vbd):
                continue
            record = client.call('VDI.get_record', vdi_ref)
        except XenApiError:
            if not tolerant:
                raise
            continue
        if not record['is_a_snapshot'] or record['snapshot_of'] not in disk_order:
            continue  # e.g. a disk of another kind that xapi snapshots along
        described = describe_snapshot(client, vdi_ref, record, time_override=when,
                                      snapshot_of=disk_uuids[record['snapshot_of']])
        found[vdi_ref] = (disk_order[record['snapshot_of']], described)
        marker(vdi_ref, tolerant=tolerant)


def _in_disk_order(found):
    return [described for dummy, described in sorted(found.values(), key=lambda item: item[0])]


def _call_while_in_use(client, method, ref, retries, delay, sleep, explain):
    """``method(ref)``, called again while the host answers VDI_IN_USE (at most ``retries`` more times,
    ``delay`` seconds apart); returns the number of calls.

    ``explain(exc, attempts)`` turns the final VDI_IN_USE, and a VDI_NO_CBT_METADATA, into the error to raise;
    other errors propagate with ``attempts`` set on them.
    """
    attempts = 0
    while True:
        attempts += 1
        try:
            client.call(method, ref)
            return attempts
        except XenApiError as exc:
            exc.attempts = attempts
            if exc.code == 'VDI_NO_CBT_METADATA' or (exc.code == 'VDI_IN_USE' and attempts > retries):
                raise explain(exc, attempts)
            if exc.code != 'VDI_IN_USE':
                raise
            sleep(delay)


def data_destroy(client, ident, check_mode=False, retries=10, delay=2.0, sleep=time.sleep):
    """Reduce a snapshot to its CBT metadata (VDI.data_destroy), waiting out VDI_IN_USE.

    Returns the result dict; ``attempts`` counts the data_destroy calls.
    """
    found = find_snapshot_if_exists(client, ident)
    if found is None:
        raise XenApiError('there is no VDI with uuid %s: the snapshot was destroyed (or never existed), so it has no '
                          'CBT metadata left to keep' % ident, code='NOT_FOUND')
    ref, record = found
    if record['type'] == 'cbt_metadata':
        return {'changed': False, 'snapshots': [describe_snapshot(client, ref, record)], 'attempts': 0}
    if check_mode and not record['cbt_enabled']:  # the host would refuse: say so without asking it
        raise XenApiError('VDI.data_destroy refused: the snapshot %s (%s) has no CBT metadata: CBT was not enabled on '
                          'its disk when it was taken. It cannot serve as the base of an incremental backup; '
                          'destroy it (state=absent) instead' % (record['uuid'], record['name_label']),
                          code='VDI_NO_CBT_METADATA', params=[ref])
    if check_mode:
        planned = describe_snapshot(client, ref, record)
        planned['type'] = 'cbt_metadata'
        return {'changed': True, 'snapshots': [planned], 'attempts': 0}

    def explain(exc, attempts):
        if exc.code == 'VDI_NO_CBT_METADATA':
            return rewrap(exc, '%s. It cannot serve as the base of an incremental backup; destroy the snapshot '
                               '(state=absent) instead' % exc.message)
        return rewrap(exc, 'VDI.data_destroy failed %d times: the snapshot %s (%s) is still in use. Usually an NBD '
                           'connection to it is still open (xapi removes its VBD a few seconds after the client '
                           'disconnects), or the snapshot still belongs to a snapshot VM (destroy that VM record '
                           'first; its disks are kept). Close the NBD connection and try again, or raise '
                           'retries/delay' % (attempts, record['uuid'], record['name_label']))
    attempts = _call_while_in_use(client, 'VDI.data_destroy', ref, retries, delay, sleep, explain)
    record = client.call('VDI.get_record', ref)
    return {'changed': True, 'snapshots': [describe_snapshot(client, ref, record)], 'attempts': attempts}


def destroy(client, ident, check_mode=False, retries=10, delay=2.0, sleep=time.sleep):
    """Destroy a snapshot (with or without data), waiting out VDI_IN_USE; a snapshot already gone is no change.

    Returns the result dict; ``attempts`` counts the VDI.destroy calls (0 when there was nothing to do, or in
    check mode).
    """
    found = find_snapshot_if_exists(client, ident)
    if found is None:
        return {'changed': False, 'snapshots': [], 'attempts': 0}
    ref, record = found
    described = describe_snapshot(client, ref, record)
    if check_mode:
        return {'changed': True, 'snapshots': [described], 'attempts': 0}

    def explain(exc, attempts):
        return rewrap(exc, '%s. The snapshot %s (%s) was still in use after %d attempt(s), %g s apart: an NBD '
                           'connection to the snapshot may still be open (xapi removes its VBD a few seconds after '
                           'the client disconnects). Close it and try again, or raise retries/delay'
                      % (exc.message, record['uuid'], record['name_label'], attempts, delay))
    try:
        attempts = _call_while_in_use(client, 'VDI.destroy', ref, retries, delay, sleep, explain)
    except XenApiError as exc:
        if exc.code in GONE_CODES:  # destroyed by someone else in the meantime
            return {'changed': False, 'snapshots': [], 'attempts': getattr(exc, 'attempts', 1)}
        raise
    return {'changed': True, 'snapshots': [described], 'attempts': attempts}
