# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The blocks that changed between two CBT snapshots, and whether their chain still holds.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python over an open XenApiClient (no Ansible imports); failures are XenApiError.
"""

from __future__ import absolute_import, division, print_function

from .. import cbt_bitmap as _cbt
from ..model import find_snapshot_if_exists, find_vdi
from .snapshot import describe_snapshot, rewrap
from ..client import GONE_CODES, NULL_REF, XenApiError

__metaclass__ = type

BROKEN_CHAIN_CODES = ('SR_BACKEND_FAILURE_460', 'SR_BACKEND_FAILURE_459', 'VDI_NO_CBT_METADATA') + GONE_CODES
FULL_BACKUP_ADVICE = 'take a full backup to start a new chain'


class ChainBroken(XenApiError):
    """The two snapshots are not (any more) on one CBT chain; ``reason`` says why in words."""

    def __init__(self, reason, cause=None):
        super(ChainBroken, self).__init__(
            'the CBT chain is broken: %s. The changed blocks cannot be listed; %s (or set allow_broken_chain to get '
            'chain_broken=true instead of a failure)' % (reason, FULL_BACKUP_ADVICE),
            code=cause.code if cause else 'CBT_CHAIN_BROKEN', params=cause.params if cause else None,
            from_host=getattr(cause, 'from_host', False))
        self.reason = reason


def _disk_warnings(client, snap_record):
    """Warn when CBT is off on the snapshot's disk now: the chain ends there, whatever these two snapshots say."""
    disk = snap_record.get('snapshot_of')
    if not disk or disk == NULL_REF:
        return []
    try:
        enabled = client.call('VDI.get_cbt_enabled', disk)
    except XenApiError as exc:
        if exc.code in GONE_CODES:
            return []
        raise
    if enabled:
        return []
    return ['CBT is disabled on the disk %s (%s) now: the next snapshot of it cannot be compared with these, so the '
            'next backup must be a full one; enable CBT again (xenserver.cbt_backup.vdi_cbt) before that snapshot'
            % (snap_record['name_label'], client.call('VDI.get_uuid', disk))]


def _pre_check(base, snap):
    """A reason why the chain is broken, judged from the records alone, or None."""
    if not snap['cbt_enabled']:
        return ('CBT was not enabled on the disk when the snapshot %s was taken (it was disabled, or SM disabled '
                'it after an error)' % snap['uuid'])
    if not base['cbt_enabled']:
        return 'the base snapshot %s has no CBT metadata (CBT was not enabled on its disk when it was taken)' % (
            base['uuid'])
    if base['snapshot_of'] and snap['snapshot_of'] and base['snapshot_of'] != snap['snapshot_of']:
        return 'the base %s and the snapshot %s are snapshots of different disks (%s and %s)' % (
            base['uuid'], snap['uuid'], base['snapshot_of'], snap['snapshot_of'])
    return None


def _reason_from_error(exc, base_ident):
    if exc.code in GONE_CODES:
        return 'the base snapshot %s no longer exists (%s)' % (base_ident, exc.message)
    if exc.code == 'VDI_NO_CBT_METADATA':
        return 'one of the snapshots has no CBT metadata (%s)' % exc.message
    if exc.code == 'SR_BACKEND_FAILURE_459':
        return 'the CBT logs are inconsistent (%s)' % (exc.params[1] if len(exc.params) > 1 else exc.message)
    detail = exc.params[1] if len(exc.params) > 1 else exc.message
    return ('the snapshots are unrelated for the storage backend: CBT was disabled and re-enabled in between, or '
            'the chain was cut (%s)' % detail)


def list_changed_blocks(client, base_ident, snapshot_ident, allow_broken_chain=False):
    """Changed blocks from ``base`` (older) to ``snapshot`` (newer); a result dict for the module.

    A broken chain raises ChainBroken, or with ``allow_broken_chain`` returns ``chain_broken: True``.
    """
    snap_ref, snap_record = find_vdi(client, snapshot_ident, snapshot=True)
    snap = describe_snapshot(client, snap_ref, snap_record)
    result = {'changed': False, 'chain_broken': False, 'chain_broken_reason': None,
              'virtual_size': snap['virtual_size'], 'snapshot': snap, 'base': None,
              'warnings': _disk_warnings(client, snap_record)}

    def broken(reason, exc=None):
        if not allow_broken_chain:
            raise ChainBroken(reason, exc)
        result.update(chain_broken=True, chain_broken_reason=reason)
        return result

    found = find_snapshot_if_exists(client, base_ident)
    if found is None:
        return broken('the base snapshot %s no longer exists' % base_ident)
    base_ref, base_record = found
    base = describe_snapshot(client, base_ref, base_record)
    result['base'] = base
    if base_ref == snap_ref:
        raise XenApiError('base and snapshot are the same VDI (%s); base must be the older snapshot' % base['uuid'],
                          code='SAME_VDI')
    if base['time'] and snap['time'] and base['time'] > snap['time']:
        raise XenApiError('the base %s (taken %s) is newer than the snapshot %s (taken %s): base is the older '
                          'snapshot; swap them' % (base['uuid'], base['time'], snap['uuid'], snap['time']),
                          code='WRONG_ORDER')
    reason = _pre_check(base, snap)
    if reason:
        return broken(reason)
    try:
        bitmap = client.call('VDI.list_changed_blocks', base_ref, snap_ref)
    except XenApiError as exc:
        if exc.code in BROKEN_CHAIN_CODES:
            return broken(_reason_from_error(exc, base_ident), exc)
        if exc.code == 'VDI_IN_USE':
            raise rewrap(exc, '%s. list_changed_blocks is refused while the newer snapshot is attached, usually by an '
                              'open NBD connection: list the changed blocks before exporting, or close the connection '
                              'first' % exc.message)
        raise
    try:
        raw = _cbt.decode(bitmap)
        extents = _cbt.to_extents(raw, snap['virtual_size'])
    except _cbt.BitmapError as exc:
        raise XenApiError('VDI.list_changed_blocks returned an unusable bitmap: %s' % exc, code='BAD_BITMAP')
    result.update(
        bitmap=bitmap,
        changed_blocks=bin(int.from_bytes(raw, 'big')).count('1') if raw else 0,
        changed_bytes=sum(length for dummy, length in extents),
        extents=[{'offset': offset, 'length': length} for offset, length in extents],
    )
    return result
