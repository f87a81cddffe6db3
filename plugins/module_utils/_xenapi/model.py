# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding the XenAPI objects a backup works on: VMs, their disks, VDIs, snapshots, networks.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python over an open XenApiClient; lookups accept a uuid or a name_label.
"""

from __future__ import absolute_import, division, print_function

from .client import GONE_CODES, NULL_REF, UUID_RE, XenApiError

__metaclass__ = type

# VDI types that hold a guest's data; the rest (suspend images, crash dumps, HA/metadata/redo/rrd/PVS/CBT
# internals) are not user disks.
USER_DISK_TYPES = ('user', 'system')


def find_vm(client, ident):
    """A VM (not a template, snapshot or control domain) by uuid or name."""
    return client.find('VM', ident, kind='VM', predicate=lambda r: not (
        r['is_a_template'] or r['is_a_snapshot'] or r['is_control_domain']))


def find_vdi(client, ident, snapshot=None):
    """A managed VDI by uuid or name; ``snapshot`` True/False restricts name lookups to (non-)snapshots.

    Snapshots carry their disk's name_label, as on real hosts, so a name alone is ambiguous unless
    the caller says which kind it means.
    """
    kind = {True: 'snapshot VDI', False: 'VDI (not a snapshot)', None: 'VDI'}[snapshot]

    def wanted(record):
        if not record.get('managed', True):
            return False
        return snapshot is None or bool(record['is_a_snapshot']) == snapshot
    ref, record = client.find('VDI', ident, kind=kind, predicate=wanted)
    if snapshot is not None and bool(record['is_a_snapshot']) != snapshot:
        raise XenApiError('%s is %s' % (ident, 'not a snapshot' if snapshot else 'a snapshot, not a disk'),
                          code='WRONG_KIND')
    return ref, record


def find_snapshot_if_exists(client, ident):
    """The snapshot VDI ``ident`` names, or None when ``ident`` is a uuid that names nothing (destroyed)."""
    try:
        return find_vdi(client, ident, snapshot=True)
    except XenApiError as exc:
        if exc.code == 'NOT_FOUND' and UUID_RE.match(ident):
            return None
        raise


def is_disk_vbd(vbd):
    """Whether a VBD record plugs a disk (not a CD drive, not an empty slot)."""
    return vbd['type'] == 'Disk' and not vbd.get('empty') and vbd['VDI'] != NULL_REF


def live_vbds(client, vbd_refs):
    """``(ref, record)`` of the VBDs that still exist; one destroyed while they are walked is passed over."""
    for vbd_ref in vbd_refs:
        try:
            yield vbd_ref, client.call('VBD.get_record', vbd_ref)
        except XenApiError as exc:
            if exc.code not in GONE_CODES:
                raise


def vm_disks(client, vm_ref, vm_record=None):
    """``[(vdi_ref, vdi_record, vbd_record)]`` of a VM's user disks, in userdevice order."""
    vm_record = vm_record or client.call('VM.get_record', vm_ref)
    disks = []
    for dummy, vbd in live_vbds(client, vm_record['VBDs']):
        if not is_disk_vbd(vbd):
            continue
        vdi = client.call('VDI.get_record', vbd['VDI'])
        if vdi['type'] in USER_DISK_TYPES:
            disks.append((vbd['VDI'], vdi, vbd))
    disks.sort(key=lambda item: _userdevice_key(item[2].get('userdevice', '')))
    return disks


def _userdevice_key(userdevice):
    return (0, int(userdevice)) if str(userdevice).isdigit() else (1, str(userdevice))


def find_network(client, ident):
    return client.find('network', ident, kind='network')


def sr_allows(client, sr_ref, operation):
    """Whether the SR advertises a storage operation such as ``vdi_enable_cbt``.

    VDI.allowed_operations never lists the CBT operations; the SR's allowed_operations do.
    """
    return operation in client.call('SR.get_allowed_operations', sr_ref)


def describe_vdi(ref, record):
    """The fields modules return for a disk."""
    return {
        'uuid': record['uuid'],
        'name': record['name_label'],
        'ref': ref,
        'type': record['type'],
        'virtual_size': int(record['virtual_size']),
        'cbt_enabled': bool(record['cbt_enabled']),
        'is_a_snapshot': bool(record['is_a_snapshot']),
    }
