# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Enabling or disabling changed block tracking on disks: the logic of the vdi_cbt module.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python over an open XenApiClient (no Ansible imports).
"""

from __future__ import absolute_import, division, print_function

from ..model import USER_DISK_TYPES, find_vdi, find_vm, sr_allows, vm_disks
from ..client import XenApiError, explain

__metaclass__ = type

CBT_SR_TYPES = 'EXT, NFS, SMB, LVM, LVMoISCSI or LVMoHBA'


class CbtError(XenApiError):
    """A XenApiError that also carries the disks handled before the failure (``disks``, also in ``result``)."""

    def __init__(self, message, code=None, params=None, disks=None, from_host=False):
        self.disks = list(disks or [])
        super(CbtError, self).__init__(message, code=code, params=params, from_host=from_host,
                                       result={'disks': self.disks, 'changed': any(d['changed'] for d in self.disks)})


def _label(record):
    return 'disk "%s" (uuid %s)' % (record['name_label'], record['uuid'])


def _verb(enabled):
    return 'enable' if enabled else 'disable'


def select_disks(client, vdi=None, vm=None):
    """``[(ref, record)]``: the non-snapshot disk ``vdi``, or the user disks of ``vm`` (uuid or name)."""
    if (vdi is None) == (vm is None):
        raise XenApiError('give either vdi or vm')
    if vdi is not None:
        return [find_vdi(client, vdi, snapshot=False)]
    vm_ref, vm_record = find_vm(client, vm)
    return [(ref, record) for ref, record, dummy in vm_disks(client, vm_ref, vm_record)]


class _Srs:
    """What the disks' SRs allow (read once per SR), and their records for messages."""

    def __init__(self, client, operation):
        self.client = client
        self.operation = operation
        self.allowed = {}
        self.records = {}

    def allows(self, sr_ref):
        if sr_ref not in self.allowed:
            self.allowed[sr_ref] = sr_allows(self.client, sr_ref, self.operation)
        return self.allowed[sr_ref]

    def record(self, sr_ref):
        if sr_ref not in self.records:
            try:
                self.records[sr_ref] = self.client.call('SR.get_record', sr_ref)
            except XenApiError:
                self.records[sr_ref] = {'name_label': sr_ref, 'type': 'unknown'}
        return self.records[sr_ref]


def sr_unsupported_error(record, sr_record, sr_ref, enabled):
    return XenApiError('cannot %s CBT on %s: its storage repository "%s" (type %s) does not support changed block '
                       'tracking. CBT needs a storage repository of a type with CBT support, such as %s; move the '
                       'disk to one' % (_verb(enabled), _label(record), sr_record.get('name_label', sr_ref),
                                        sr_record.get('type', 'unknown'), CBT_SR_TYPES),
                       code='SR_OPERATION_NOT_SUPPORTED', params=[sr_ref])


def on_boot_error(record, enabled):
    return XenApiError('cannot %s CBT on %s: the disk has on_boot=reset, so it is reset at every boot and CBT cannot '
                       'track it. Set on_boot to persist first (xe vdi-param-set uuid=%s on-boot=persist) or leave '
                       'this disk out' % (_verb(enabled), _label(record), record['uuid']),
                       code='VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION', params=[])


def precheck(srs, record, enabled):
    """Raise the error the host would give for toggling CBT on this disk, in xapi's check order."""
    sr_ref = record['SR']
    if not srs.allows(sr_ref):
        raise sr_unsupported_error(record, srs.record(sr_ref), sr_ref, enabled)
    if record['is_a_snapshot']:
        raise XenApiError('cannot %s CBT on %s: it is a snapshot; CBT is switched on the disk itself, and its '
                          'snapshots inherit it' % (_verb(enabled), _label(record)),
                          code='OPERATION_NOT_ALLOWED', params=['VDI is a snapshot'])
    if record['type'] not in USER_DISK_TYPES:
        raise XenApiError('cannot %s CBT on %s: CBT only tracks user and system disks, this one has type %s'
                          % (_verb(enabled), _label(record), record['type']),
                          code='VDI_INCOMPATIBLE_TYPE', params=['', record['type']])
    if record.get('on_boot') == 'reset':
        raise on_boot_error(record, enabled)


def translate(exc, srs, record, enabled):
    """A host error from VDI.enable_cbt / disable_cbt, said about the disk."""
    if exc.code == 'SR_OPERATION_NOT_SUPPORTED':
        sr_ref = record['SR']
        return sr_unsupported_error(record, srs.record(sr_ref), sr_ref, enabled)
    if exc.code == 'VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION':
        return on_boot_error(record, enabled)
    if not exc.from_host:
        return exc
    return XenApiError('cannot %s CBT on %s: %s' % (_verb(enabled), _label(record), explain(exc.code, exc.params)),
                       code=exc.code, params=exc.params)


def _state(record, cbt_enabled):
    return {'uuid': record['uuid'], 'name': record['name_label'], 'cbt_enabled': cbt_enabled}


def _entry(record, cbt_enabled, changed):
    entry = _state(record, cbt_enabled)
    entry['changed'] = changed
    return entry


def ensure_cbt(client, vdi=None, vm=None, enabled=True, check_mode=False):
    """Enable or disable CBT on the disk ``vdi`` or on every user disk of ``vm``.

    Every disk that needs a change is checked first, so a VM with one disk that cannot do CBT changes nothing.
    Returns the module result: ``changed``, ``disks`` (uuid, name, cbt_enabled, changed) and ``diff``.
    Raises CbtError (with the disks already handled) when the host refuses a change.
    """
    disks = select_disks(client, vdi=vdi, vm=vm)
    srs = _Srs(client, 'vdi_enable_cbt' if enabled else 'vdi_disable_cbt')
    todo = []
    for ref, record in disks:
        if bool(record['cbt_enabled']) != enabled:
            precheck(srs, record, enabled)
            todo.append(ref)

    results = []
    for ref, record in disks:
        changed = ref in todo
        if changed and not check_mode:
            try:
                client.call('VDI.%s_cbt' % _verb(enabled), ref)
                state = bool(client.call('VDI.get_cbt_enabled', ref))
            except XenApiError as exc:
                error = translate(exc, srs, record, enabled)
                raise CbtError(error.message, code=error.code, params=error.params, disks=results,
                               from_host=error.from_host)
        else:
            state = enabled if changed else bool(record['cbt_enabled'])
        results.append(_entry(record, state, changed))

    return {
        'changed': bool(todo),
        'disks': results,
        'diff': {
            'before': {'disks': [_state(record, bool(record['cbt_enabled'])) for dummy, record in disks]},
            'after': {'disks': [_state(record, entry['cbt_enabled']) for (dummy, record), entry in zip(disks, results)]},
        },
    }
