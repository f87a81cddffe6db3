# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vdi_export use case: a snapshot (or given NBD details) into a repository point or a raw file.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

``params`` is a plain dict with the module's option names (snapshot, base, nbd, repository, dest, tls, ...);
nothing here knows Ansible, so the XenAPI logic (purpose checks, changed-block fallback, which VM uses the
disk) is tested without an Ansible run.
"""

from __future__ import absolute_import, division, print_function

from .._xenapi.ops import allocation as _allocation, changed_blocks as _changed_blocks_ops, nbd_access as _nbd_access
from .._xenapi.ops import snapshot as _snapshot_ops
from . import export as _export, progress as _progress, scheduler as _scheduler
from .._errors import CbtBackupError
from .._extents import total_length
from .._xenapi import cbt_bitmap as _cbt
from .._xenapi import model as _objects
from .._repository.backup import already_exported, export_to_repository
from .._xenapi.client import GONE_CODES, NULL_REF, XenApiError

__metaclass__ = type


def export_nbd(params, nbd, changed_blocks, snapshot=None, base_uuid=None, disk=None, check_mode=False,
               allocation=None, progress=None, cancel=None, size=None):
    """Read the export ``nbd`` (address, port, exportname, cert, subject; or a list of them, the hosts to try
    in order) into the repository or dest.

    ``allocation``: what a full reads (export.full_extents); None reads everything. ``progress``, ``cancel``:
    see export.run_export."""
    targets = [_export.make_target(info, tls=params['tls'], ca_path=params['tls_ca_path'], timeout=params['timeout'],
                                   min_rate_mib_s=params['min_rate_mib_s'])
               for info in (nbd if isinstance(nbd, list) else [nbd])]
    options = dict(connections=params['connections'], requests_in_flight=params['requests_in_flight'],
                   retries=params['retries'], check_mode=check_mode, allocation=allocation, progress=progress,
                   cancel=cancel, size=size)
    if params['repository']:
        if params.get('compress') not in (None, 'none'):
            options['compression'] = params['compress']
        if snapshot is None and params['run']:
            snapshot = {'run': params['run']}  # the nbd form records the run too
        result = export_to_repository(targets, params['repository'], changed_blocks=changed_blocks, snapshot=snapshot,
                                      base_uuid=base_uuid, disk=disk, **options)
    else:
        result = _export.export_to_file(targets, params['dest'], changed_blocks=changed_blocks, **options)
    return result


def check_purpose(info, tls):
    """Refuse early when the network's purpose and the tls option cannot work together."""
    where = '%s (network %s)' % (info['address'], ', '.join(info.get('network_names') or []) or '?')
    if tls and 'insecure_nbd' in info['purposes'] and 'nbd' not in info['purposes']:
        raise XenApiError(
            'the NBD address %s is on a network with purpose insecure_nbd: its server refuses TLS. Either give the '
            'network purpose nbd (TLS, recommended; xenserver.cbt_backup.nbd_network) or set tls: false to read '
            'the disk unencrypted.' % where, code='NBD_TLS_UNAVAILABLE')
    if not tls and 'nbd' in info['purposes'] and 'insecure_nbd' not in info['purposes']:
        raise XenApiError('tls is false but the NBD address %s is on a network with purpose nbd, whose server only '
                          'talks TLS: remove tls: false' % where, code='NBD_TLS_REQUIRED')


def changed_blocks_or_fallback(client, base, snap_ref, snap, on_broken_chain='fail'):
    """The bitmap against ``base``, the base's uuid and None; or, when the CBT chain is broken and
    ``on_broken_chain`` is full, (None, None, the reason) so that a full export starts a new chain."""
    if on_broken_chain != 'full':
        base_ref, base_record = _objects.find_vdi(client, base, snapshot=True)
        # Before any NBD connection: an open one makes list_changed_blocks fail with VDI_IN_USE.
        return client.call('VDI.list_changed_blocks', base_ref, snap_ref), base_record['uuid'], None
    listed = _changed_blocks_ops.list_changed_blocks(client, base, snap['uuid'], allow_broken_chain=True)
    if listed['chain_broken']:
        return None, None, listed['chain_broken_reason']
    return listed['bitmap'], listed['base']['uuid'], None


def export_snapshot(client, params, check_mode=False):
    """The snapshot form: everything the export needs comes from the XenAPI in this one session."""
    prepared = prepare_snapshot_export(client, params)
    if isinstance(prepared, dict):
        return prepared  # a re-run of the same task: ok, nothing read
    return prepared.run(check_mode=check_mode)


class SnapshotExport:
    """One snapshot's export, with everything the XenAPI said about it (:func:`prepare_snapshot_export`):
    ``nbd`` lists the hosts that serve it (in the order to try), ``estimated_bytes`` is what it will read."""

    def __init__(self, params, nbd, changed_blocks, snapshot, base_uuid, disk, allocation, estimated_bytes, size=None):
        self.params = params
        self.size = size
        self.nbd = nbd
        self.changed_blocks = changed_blocks
        self.snapshot = snapshot
        self.base_uuid = base_uuid
        self.disk = disk
        self.allocation = allocation
        self.estimated_bytes = estimated_bytes

    @property
    def connects(self):
        """False for an incremental whose bitmap lists no changed block: it opens no NBD connection."""
        return not (self.changed_blocks is not None and self.size is not None and self.estimated_bytes == 0)

    def run(self, check_mode=False, nbd=None, connections=None, progress=None, cancel=None):
        """Read it (from ``nbd``, default every listed host in order; with ``connections``, default the
        params'); return the vdi_export result. ``progress``, ``cancel``: see export.run_export."""
        snapshot = self.snapshot
        params = self.params if connections is None else dict(self.params, connections=connections)
        result = export_nbd(params, self.nbd if nbd is None else nbd, self.changed_blocks, snapshot=snapshot,
                            base_uuid=self.base_uuid, disk=self.disk, check_mode=check_mode, allocation=self.allocation,
                            progress=progress, cancel=cancel, size=self.size)
        result['snapshot'] = snapshot['uuid']
        if self.base_uuid is not None:
            result['base'] = self.base_uuid
        if snapshot.get('fallback_reason'):
            result['fallback_reason'] = snapshot['fallback_reason']
            result['warnings'].append('the CBT chain from %s is broken (%s): a full backup was taken instead, which '
                                      'starts a new chain' % (self.params['base'], snapshot['fallback_reason']))
        return result


def prepare_snapshot_export(client, params):
    """Ask the XenAPI everything the export of ``params['snapshot']`` needs, before any NBD connection (an
    open one makes list_changed_blocks fail with VDI_IN_USE); return a :class:`SnapshotExport`, or the
    result of the export the repository already holds."""
    snap_ref, snap = _objects.find_vdi(client, params['snapshot'], snapshot=True)
    if params['repository']:
        done = already_exported(params['repository'], snap['uuid'])
        if done is not None:
            return done
    changed_blocks = base_uuid = fallback_reason = None
    if params['base']:
        changed_blocks, base_uuid, fallback_reason = changed_blocks_or_fallback(
            client, params['base'], snap_ref, snap, params['on_broken_chain'])
    allocation = None
    if changed_blocks is None and params.get('allocation_map', 'auto') == 'auto':
        # before any NBD connection, as for list_changed_blocks
        allocation = full_allocation(client, snap_ref)
    infos = _nbd_access.in_order(_nbd_access.require_nbd_info(client, snap_ref, snap), params['nbd_network'],
                                 key=snap['uuid'])
    check_purpose(infos[0], params['tls'])
    nbd = [dict((key, info[key]) for key in ('address', 'port', 'exportname', 'cert', 'subject')) for info in infos]
    snapshot = {
        'uuid': snap['uuid'],
        'snapshot_of': client.call('VDI.get_uuid', snap['snapshot_of']) if snap['snapshot_of'] != NULL_REF else None,
        'name': snap['name_label'],
        'time': _snapshot_ops.xenapi_time(snap.get('snapshot_time')),
    }
    disk = disk_user(client, snap['snapshot_of']) if params['repository'] else None
    if fallback_reason:
        snapshot['fallback_reason'] = fallback_reason
    if params['run']:
        snapshot['run'] = params['run']
    size = int(snap['virtual_size'])
    if changed_blocks is not None:
        estimated = total_length(_cbt.to_extents(_cbt.decode(changed_blocks), size))
    elif allocation and allocation.get('map') is not None:
        estimated = allocation['map'].allocated_bytes
    else:
        estimated = size
    return SnapshotExport(params, nbd, changed_blocks, snapshot, base_uuid, disk, allocation, estimated, size)


def full_allocation(client, snap_ref):
    """What a full export of the snapshot may skip: ``{'map': VhdAllocation}``, or ``{'reason': why not}``."""
    try:
        return {'map': _allocation.vdi_allocation(client, snap_ref), 'source': _allocation.SOURCE}
    except (_allocation.AllocationUnavailable, XenApiError) as exc:
        return {'reason': str(exc)}


def disk_user(client, disk_ref):
    """``vm_uuid``, ``vm_name`` and ``userdevice`` of the VM that uses the disk (null when none does).

    Snapshot VMs, templates and control domains (which plug disks for NBD or backups) do not count; a VM
    whose VBD is plugged wins over one whose VBD is not, then the lowest VM uuid.
    """
    found = []
    try:
        vbd_refs = client.call('VDI.get_VBDs', disk_ref) if disk_ref and disk_ref != NULL_REF else []
    except XenApiError as exc:
        if exc.code not in GONE_CODES:  # the disk is gone
            raise
        vbd_refs = []
    for dummy, vbd in _objects.live_vbds(client, vbd_refs):
        try:
            vm = client.call('VM.get_record', vbd['VM']) if _objects.is_disk_vbd(vbd) else None
        except XenApiError as exc:
            if exc.code not in GONE_CODES:  # unplugged and destroyed meanwhile
                raise
            continue
        if vm is None or vm['is_a_snapshot'] or vm['is_a_template'] or vm['is_control_domain']:
            continue
        found.append((not vbd.get('currently_attached'), vm['uuid'], vm['name_label'], vbd.get('userdevice')))
    if not found:
        return {'vm_uuid': None, 'vm_name': None, 'userdevice': None}
    dummy, vm_uuid, vm_name, userdevice = sorted(found)[0]
    return {'vm_uuid': vm_uuid, 'vm_name': vm_name, 'userdevice': userdevice}


def export_snapshots(client, params, check_mode=False, progress=None, cancel=None):
    """The list form (``params['exports']``: snapshot, repository, base, run): first every item's XenAPI
    questions, one after another in this session, then all exports at once under one per-host connection
    budget (scheduler.run_exports).  Returns ``{'exports': [result or CbtBackupError, ...], 'hosts': ...}``
    in the order of the items.

    ``progress``: a progress.DiskProgress per item (in their order), or None. ``cancel``: a
    progress.Cancellation; once set, the items not asked about or not started yet end with its error
    (CANCELLED) and the running ones stop (scheduler.run_exports)."""
    outcomes = [None] * len(params['exports'])
    trackers = list(progress) if progress is not None else [_progress.NO_PROGRESS] * len(outcomes)
    prepared = []
    for index, item in enumerate(params['exports']):
        if cancel is not None and cancel.is_set():
            outcomes[index] = cancel.error()
            trackers[index].ended('cancelled')
            continue
        item_params = dict(params, exports=None, snapshot=item['snapshot'], base=item.get('base'),
                           repository=item['repository'], dest=None, run=item.get('run') or params['run'])
        try:
            export = prepare_snapshot_export(client, item_params)
        except CbtBackupError as exc:
            outcomes[index] = exc
            trackers[index].ended('failed')
            continue
        except (IOError, OSError) as exc:
            outcomes[index] = CbtBackupError('reading the repository %s failed: %s' % (item['repository'], exc),
                                             code='READ_FAILED')
            trackers[index].ended('failed')
            continue
        if isinstance(export, dict):
            outcomes[index] = export  # already in the repository
            trackers[index].ended('done')
        else:
            prepared.append((index, export))
            trackers[index].queued(export.estimated_bytes)
    ran, budget = _scheduler.run_exports([export for dummy, export in prepared], params['connections'],
                                         params['max_host_connections'], check_mode=check_mode,
                                         progress=None if progress is None else [trackers[i] for i, dummy in prepared],
                                         cancel=cancel)
    for (index, dummy), outcome in zip(prepared, ran):
        outcomes[index] = outcome
    return {'exports': outcomes, 'hosts': budget.summary()}
