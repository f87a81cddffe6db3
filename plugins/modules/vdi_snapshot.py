#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_snapshot
short_description: Take, reduce to CBT metadata, or destroy snapshots of XenServer virtual disks
version_added: 0.1.0
description:
  - With O(state=present), snapshots one disk (O(vdi)) or every user disk of a VM (O(vm)). On a disk with changed
    block tracking (CBT) enabled, the snapshot closes the disk's CBT log, so the blocks written between two snapshots
    can be listed with M(xenserver.cbt_backup.vdi_changed_blocks).
  - For O(vm), all disks are captured at one point in time with C(VM.snapshot). The snapshot VM record is then
    destroyed, which removes its VBDs but keeps its disk snapshots, so the snapshots cannot block
    C(VDI.data_destroy) later. Disks named in O(skip_disks) are left out (C(VM.snapshot)'s C(ignore_vdis)).
  - O(state=present) is not idempotent by nature; every run takes a new snapshot and reports a change. Check mode
    reports which disks would be snapshotted without taking a snapshot. When O(skip_disks) leaves out every disk of
    the VM, no snapshot is taken and nothing changes.
  - With O(state=metadata_only), runs C(VDI.data_destroy) on the snapshot O(vdi) after it was exported; its data is
    deleted and its CBT metadata kept (its type becomes C(cbt_metadata)), so it can serve as the base of the next
    incremental backup at almost no storage cost. A snapshot that is already C(cbt_metadata) is no change.
  - With O(state=absent), destroys the snapshot O(vdi) (with or without its data), retrying while it is in use
    (O(retries), O(delay)). A snapshot that no longer exists is no change. Destroying a snapshot in the middle of a
    CBT chain keeps the chain intact (its changed blocks are merged into the next snapshot's log).
  - A snapshot has the same name as its disk. For O(state=present), a name in O(vdi) therefore only matches disks
    that are not snapshots; for O(state=metadata_only) and O(state=absent), only snapshots. Name snapshots by uuid.
  - O(state=present) marks every disk snapshot it takes (see the notes), so that the snapshots of a run that was
    interrupted before its cleanup can be found later
    (RV(xenserver.cbt_backup.backup_plan#module:vms[].disks[].leftover_snapshots)).
  - The list forms O(vms) and O(vdis) do the same for many VMs or disks in one task (a few at a time, in one
    session), so a run over a pool costs one task per step instead of one per disk. An item that fails fails
    alone; the others go on, and each item's result is in RV(vms) or RV(vdis).
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Looks the objects up and reports what would change, without changing anything.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  vdi:
    description:
      - With O(state=present), the disk to snapshot, by uuid or by name (names match disks that are not snapshots).
      - With O(state=metadata_only) or O(state=absent), the snapshot, by uuid (recommended) or by name (names match
        snapshots only; several snapshots of one disk share its name, which is an error).
      - Exactly one of O(vdi), O(vm), O(vms) and O(vdis) is required.
    type: str
  vdis:
    description:
      - The list form of O(vdi), for any O(state); each entry as O(vdi) would take it.
      - Returns one result per entry in RV(vdis).
    type: list
    elements: str
  vms:
    description:
      - The list form of O(vm) (only with O(state=present)); each entry a VM and the disks to leave out of its snapshot.
      - Returns one result per entry in RV(vms).
    type: list
    elements: dict
    suboptions:
      vm:
        description: The VM, by uuid or name, as O(vm).
        type: str
        required: true
      skip_disks:
        description: Disks of this VM to leave out, as O(skip_disks).
        type: list
        elements: str
        default: []
  vm:
    description:
      - The VM whose user disks (not CD drives, not suspend images) are snapshotted together, by uuid or name.
      - Only with O(state=present).
    type: str
  skip_disks:
    description:
      - With O(vm), disks of the VM to leave out of the snapshot, by VDI uuid or by VDI name (the disk's name, not
        the VBD's device).
      - Entries that name no disk of the VM are ignored, so one list can serve several VMs.
      - Only with O(vm).
    type: list
    elements: str
    default: []
  repository_root:
    description:
      - With O(vm) or O(vms), also keep the VM's configuration of this backup run (name, description, tags, vCPUs,
        memory, boot policy and parameters, platform, C(other_config), PV/PVH/UEFI settings and NVRAM, its drives
        with userdevice, mode, bootable and type, empty CD drives included, and its network interfaces with
        device, network, MAC and MTU), read from the same VM snapshot as the disks, before its record is destroyed.
      - It is written (atomically) to C(<repository_root>/<vm uuid>/vm-config/<run>.json), beside the VM's disk
        repositories, which is where M(xenserver.cbt_backup.backup_plan) puts them. M(xenserver.cbt_backup.backup_info)
        lists the configurations, M(xenserver.cbt_backup.backup_verify) checks them and
        M(xenserver.cbt_backup.backup_prune) deletes them with their run.
      - A configuration that cannot be read or written is a warning, not a failure; the disks are backed up all
        the same (RV(vm_config) is then null).
    type: path
  run:
    description:
      - With O(repository_root), the backup run the configuration belongs to, an RFC 3339 UTC time (for example
        C(2026-11-25T02:00:00Z)); give the same value as M(xenserver.cbt_backup.vdi_export)'s
        O(xenserver.cbt_backup.vdi_export#module:run), so that the configuration and the run's restore points
        belong together. Default now.
    type: str
  state:
    description:
      - V(present) takes a snapshot.
      - V(metadata_only) deletes the data of the snapshot O(vdi) and keeps its CBT metadata (C(VDI.data_destroy)).
      - V(absent) destroys the snapshot O(vdi) (C(VDI.destroy)).
    type: str
    choices: [present, metadata_only, absent]
    default: present
  retries:
    description:
      - With O(state=metadata_only) or O(state=absent), how many times to retry C(VDI.data_destroy) or
        C(VDI.destroy) while the host answers C(VDI_IN_USE).
      - The usual cause is the NBD connection of the export that just finished; XenServer removes its dom0 VBD a
        few seconds after the client disconnects.
      - After the last attempt the module fails with error code C(VDI_IN_USE) and a message that names the likely
        cause.
      - Ignored with O(state=present).
    type: int
    default: 10
  delay:
    description: Seconds to wait between the O(retries).
    type: float
    default: 2
requirements:
  - XenAPI
notes:
  - Enable CBT on the disks (M(xenserver.cbt_backup.vdi_cbt)) before the first snapshot of a backup chain; a
    snapshot taken without CBT carries a warning, cannot be reduced to CBT metadata, and cannot serve as a base.
  - "Every disk snapshot taken with O(state=present) (O(vdi) and O(vm)) is marked in its C(other_config): the key
    C(xenserver.cbt_backup.snapshot) holds the UTC time it was taken, for example C(2026-11-25T02:00:05Z), by the
    clock of the machine that runs the module. It is set with C(VDI.add_to_other_config) right after the
    snapshot; for O(vm), as soon as each disk snapshot is found, before the snapshot VM record is destroyed. The
    disk itself is never marked. A snapshot inherits its disk's C(other_config); a marker inherited that way (from a disk
    copied from a marked snapshot) is replaced by the new snapshot's time. The marker stays when the snapshot is
    reduced to CBT metadata."
  - If marking or reading a new snapshot fails, the module fails and still returns the snapshot in RV(snapshots),
    so that it can be destroyed (O(state=absent)).
seealso:
  - module: xenserver.cbt_backup.vdi_cbt
  - module: xenserver.cbt_backup.vdi_changed_blocks
  - name: XenServer changed block tracking guide
    description: How CBT snapshots, list_changed_blocks and the NBD server fit together.
    link: https://docs.xenserver.com/en-us/xenserver/8/developer/changed-block-tracking-guide.html
'''

EXAMPLES = r'''
- name: Snapshot all disks of a VM at one point in time
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"
    vm: web01
  register: snap

- name: Snapshot a VM's disks except its scratch disk
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vm: web01
    skip_disks:
      - web01-scratch
  register: snap

- name: Snapshot a VM's disks and keep its configuration of the run beside its disk repositories
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vm: web01
    repository_root: /backups
    run: "2026-11-25T02:00:00Z"
  register: snap

- name: Snapshot one disk, by uuid
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vdi: 5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10

- name: After the export, keep only the CBT metadata of each snapshot
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vdi: "{{ item.uuid }}"
    state: metadata_only
  loop: "{{ snap.snapshots }}"

- name: Snapshot many VMs in one task (a few at a time), each with its own disks left out
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vms:
      - vm: web01
        skip_disks: [web01-scratch]
      - vm: db01
  register: snaps
  ignore_errors: true  # the VMs that could be snapshotted are in snaps.vms with failed=false

- name: Reduce all of them to CBT metadata in one task
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vdis: "{{ snaps.vms | rejectattr('failed') | map(attribute='snapshots') | flatten | map(attribute='uuid') }}"
    state: metadata_only

- name: Destroy a metadata-only snapshot older than the retention
  xenserver.cbt_backup.vdi_snapshot:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vdi: "{{ previous_base_uuid }}"
    state: absent
'''

RETURN = r'''
snapshots:
  description:
    - The snapshots taken (O(state=present)), reduced to CBT metadata (O(state=metadata_only)) or destroyed
      (O(state=absent), empty when it was already gone), one per disk, in the VM's disk order.
    - In check mode with O(state=present), the disks that would be snapshotted; RV(snapshots[].uuid),
      RV(snapshots[].ref) and RV(snapshots[].time) are then null.
    - When C(VM.snapshot) succeeded for O(vm) but a later step failed (reading the snapshot VM, its VBDs or its
      disk snapshots, marking them, or destroying its record), the module fails and still returns here every disk
      snapshot it could find, so that they can be destroyed (O(state=absent)).
    - Likewise for O(vdi) when C(VDI.snapshot) succeeded but marking or reading the snapshot failed. If it cannot be
      read at all, only its RV(snapshots[].ref) and its disk's facts are known (RV(snapshots[].uuid) is null).
  type: list
  elements: dict
  returned: success, and on failure after C(VDI.snapshot) or C(VM.snapshot) succeeded
  contains:
    uuid:
      description: The snapshot's uuid.
      type: str
      sample: 0b7f6a3e-5d27-4c1e-9f6a-2d8e4b1c3a90
    ref:
      description: The snapshot's XenAPI reference.
      type: str
      sample: OpaqueRef:2a6e4b8c-1d3f-4e5a-9b7c-0d1e2f3a4b5c
    name:
      description: The snapshot's name (the same as its disk's).
      type: str
      sample: web01-disk0
    snapshot_of:
      description: The uuid of the disk the snapshot was taken of (null if that disk no longer exists).
      type: str
      sample: 5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10
    time:
      description:
        - When the snapshot was taken, RFC 3339 in UTC (Z).
        - For O(vm), the time of the VM snapshot, the same for all its disks.
      type: str
      sample: '2024-05-01T02:00:00Z'
    type:
      description: The snapshot's VDI type; C(cbt_metadata) once its data was destroyed.
      type: str
      sample: user
    cbt_enabled:
      description: Whether the snapshot carries CBT metadata (CBT was enabled on its disk when it was taken).
      type: bool
      sample: true
    virtual_size:
      description: Size of the disk in bytes.
      type: int
      sample: 10737418240
vm:
  description: The uuid of the VM whose disks were snapshotted.
  type: str
  returned: O(vm) is given
  sample: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f
skipped_disks:
  description:
    - The uuids of the VM's disks that O(skip_disks) left out, in the VM's disk order (empty when none was).
    - When it lists every disk of the VM, RV(snapshots) is empty and nothing changed.
  type: list
  elements: str
  returned: O(vm) is given
  sample: [2c9d7e1f-3b4a-4c5d-8e6f-7a8b9c0d1e2f]
attempts:
  description:
    - How many times C(VDI.data_destroy) (O(state=metadata_only)) or C(VDI.destroy) (O(state=absent)) was called
      (0 when there was nothing to do, or in check mode).
  type: int
  returned: O(state=metadata_only) or O(state=absent)
  sample: 1
vm_config:
  description:
    - With O(repository_root), the file that holds the VM's configuration of this run (in check mode, the file
      it would be); null when it could not be read or written (see the warnings) or no disk was snapshotted.
  type: str
  returned: O(vm) and O(repository_root) are given
  sample: /backups/8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f/vm-config/20261125T020000Z.json
vms:
  description:
    - With O(vms), one result per entry, in the order given. Each holds RV(vm), RV(snapshots), RV(vm_config) and RV(skipped_disks)
      as this module returns them for O(vm), and C(failed).
    - A failed entry holds C(failed=true), C(msg) and C(error_code) instead (and RV(snapshots) when its VM snapshot
      succeeded and a later step failed); the module then fails after every entry was tried.
  type: list
  elements: dict
  returned: O(vms) is given
  sample: [{vm: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f, failed: false, changed: true, snapshots: [], skipped_disks: []}]
vdis:
  description:
    - With O(vdis), one result per entry, in the order given, with C(vdi) (as given), C(failed), and what this module
      returns for O(vdi) (RV(snapshots), RV(attempts)), or C(msg) and C(error_code) for a failed entry.
  type: list
  elements: dict
  returned: O(vdis) is given
  sample: [{vdi: 0b7f6a3e-5d27-4c1e-9f6a-2d8e4b1c3a90, failed: false, changed: true, attempts: 1, snapshots: []}]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_configuration as _vm_configuration
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._time import parse_utc_or_none
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import snapshot as _snapshot_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            vdi=dict(type='str'),
            vm=dict(type='str'),
            vdis=dict(type='list', elements='str'),
            vms=dict(type='list', elements='dict', options=dict(
                vm=dict(type='str', required=True),
                skip_disks=dict(type='list', elements='str', default=[]),
            )),
            state=dict(type='str', choices=['present', 'metadata_only', 'absent'], default='present'),
            retries=dict(type='int', default=10),
            delay=dict(type='float', default=2),
            skip_disks=dict(type='list', elements='str', default=[]),
            repository_root=dict(type='path'),
            run=dict(type='str'),
        ),
        mutually_exclusive=[('vdi', 'vm', 'vms', 'vdis')],
        required_one_of=[('vdi', 'vm', 'vms', 'vdis')],
        required_if=[('state', 'metadata_only', ['vdi', 'vdis'], True), ('state', 'absent', ['vdi', 'vdis'], True)],
        supports_check_mode=True,
    )
    params = module.params
    if params['retries'] < 0 or params['delay'] < 0:
        module.fail_json(msg='retries and delay must not be negative', error_code='INVALID_OPTION')
    if params['skip_disks'] and not params['vm']:
        module.fail_json(msg='skip_disks leaves disks out of a VM snapshot: it needs vm (with state=present); with vms, '
                             'give each entry its own skip_disks', error_code='INVALID_OPTION')
    if params['vms'] is not None and params['state'] != 'present':
        module.fail_json(msg='vms takes VM snapshots (state=present); reduce or destroy snapshots with vdis',
                         error_code='INVALID_OPTION')
    if (params['repository_root'] or params['run']) and not (params['vm'] or params['vms'] is not None):
        module.fail_json(msg='repository_root and run keep a VM configuration: they need vm or vms', error_code='INVALID_OPTION')
    if params['run'] and not params['repository_root']:
        module.fail_json(msg='run names the backup run of the VM configuration kept in repository_root: give '
                             'repository_root too', error_code='INVALID_OPTION')
    if params['run'] and parse_utc_or_none(params['run']) is None:
        module.fail_json(msg='run must be an RFC 3339 UTC time such as 2026-11-25T02:00:00Z, not %s' % params['run'],
                         error_code='INVALID_OPTION')
    check_mode = module.check_mode

    def one_vdi(client, vdi):
        if params['state'] == 'metadata_only':
            return _snapshot_ops.data_destroy(client, vdi, check_mode=check_mode,
                                              retries=params['retries'], delay=params['delay'])
        if params['state'] == 'absent':
            return _snapshot_ops.destroy(client, vdi, check_mode=check_mode,
                                         retries=params['retries'], delay=params['delay'])
        return _snapshot_ops.snapshot_vdi(client, vdi, check_mode=check_mode)

    def one_vm(client, entry):
        # A PartialSnapshotError's result (changed, snapshots) comes back with the failure.
        return _vm_configuration.snapshot_vm(client, entry['vm'], skip_disks=entry['skip_disks'],
                                             repository_root=params['repository_root'], run=params['run'],
                                             check_mode=check_mode)

    if params['vms'] is not None:
        _xenapi_module.run_items(module, 'vms', params['vms'], one_vm, 'vm', 'SNAPSHOTS_FAILED', 'VM snapshots',
                                 name_of=lambda entry: entry['vm'])
    elif params['vdis'] is not None:
        _xenapi_module.run_items(module, 'vdis', params['vdis'], one_vdi, 'vdi', 'SNAPSHOTS_FAILED', 'snapshot operations')
    elif params['vdi']:
        _xenapi_module.run(module, lambda client: one_vdi(client, params['vdi']))
    else:
        _xenapi_module.run(module, lambda client: one_vm(client, {'vm': params['vm'], 'skip_disks': params['skip_disks']}))


if __name__ == '__main__':
    main()
