#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: backup_plan
short_description: Decide which disks of which VMs a backup run backs up, full or incremental, and why
version_added: 0.1.0
description:
  - Selects VMs by name or uuid (O(vms)) and by tag (O(tags)), lists their user disks (not CD drives, not suspend
    images) and decides for each disk whether the next backup is a full backup, an incremental one, or skipped,
    with a sentence that says why (RV(vms[].disks[].reason)) and a stable code for playbooks
    (RV(vms[].disks[].reason_code)).
  - Each disk's repository is C(<repository_root>/<vm uuid>/<disk uuid>) (the format is described in
    C(docs/repository.md)). Its manifest is read without the repository's lock, so a plan can be made while a
    backup writes.
  - "The decision, in this order: a disk named in O(skip_disks) is skipped (V(SKIPPED)); a disk whose storage
    repository cannot do changed block tracking (its C(allowed_operations) lack C(vdi_enable_cbt)) is always backed up
    in full (V(CBT_UNSUPPORTED)); a repository whose manifest cannot be read needs a full backup (V(REPOSITORY_DAMAGED));
    so does a repository without restore points (V(FIRST_BACKUP)), one that records another disk, whose newest
    point's file is missing or has another size than recorded, or whose CBT anchor is not the snapshot of its newest
    point (V(MANIFEST_MISMATCH)), a disk with CBT off (V(CBT_DISABLED); CBT is enabled before the snapshot), a CBT
    anchor that no longer exists (V(ANCHOR_MISSING)), is not a snapshot of the disk (V(ANCHOR_MISMATCH)) or carries
    no CBT metadata (V(ANCHOR_NO_CBT)), a disk resized since the newest point (V(SIZE_CHANGED)), and a chain that
    reached O(full_every) (V(FULL_EVERY_INCREMENTALS), V(FULL_EVERY_DAYS)). Otherwise the backup is incremental
    against the CBT anchor (V(CHAIN_OK))."
  - Also lists, per disk, the snapshots that backup runs interrupted before their cleanup left behind
    (RV(vms[].disks[].leftover_snapshots)), so that the next run can destroy them.
  - Read only; it never changes the host or a repository.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Runs normally (it only reads).
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  vms:
    description:
      - VMs to back up, by name or uuid, in this order. A name must name exactly one VM; templates, snapshots and
        control domains are not VMs here.
      - An entry that matches no VM, or a name that several VMs share, does not fail the plan; it is listed in
        RV(unresolved) with a warning, and the other VMs are planned.
    type: list
    elements: str
    default: []
  tags:
    description:
      - Also back up every VM that carries at least one of these tags (templates, snapshots and control domains
        excepted), after the VMs of O(vms), sorted by name. A VM selected twice is planned once.
      - At least one VM must be selected by O(vms) or O(tags), otherwise the module fails (error code
        C(NO_VM_SELECTED); the message also names the entries of RV(unresolved)).
    type: list
    elements: str
    default: []
  skip_disks:
    description:
      - Disks to leave out, by VDI uuid or VDI name. They are listed with mode C(skip).
      - Entries that name no disk of the selected VMs give a warning.
    type: list
    elements: str
    default: []
  repository_root:
    description:
      - The directory that holds the repositories, one per disk, at C(<repository_root>/<vm uuid>/<disk uuid>).
      - It need not exist yet (every disk is then a first backup).
    type: path
    required: true
  full_every:
    description:
      - When to take a full backup although an incremental one is possible.
    type: dict
    suboptions:
      incrementals:
        description:
          - A full backup once this many incremental backups were taken since the last full backup.
          - The last full is the newest point taken as a full backup; a point that M(xenserver.cbt_backup.backup_prune)
            turned into a full by merging does not count as one. Without such a full, every point after the oldest
            one counts.
          - V(0) makes every backup a full backup.
        type: int
      days:
        description:
          - A full backup once the last full backup (without one, the oldest restore point) is this many days old.
          - One hour less counts as reached, so a daily schedule whose start time varies a little keeps its rhythm.
          - V(0) makes every backup a full backup.
        type: int
requirements:
  - XenAPI
notes:
  - The plan says what the host and the repositories look like now; the backup itself (M(xenserver.cbt_backup.vdi_export))
    checks again and refuses an incremental that would not apply.
seealso:
  - module: xenserver.cbt_backup.vdi_snapshot
  - module: xenserver.cbt_backup.vdi_export
  - module: xenserver.cbt_backup.backup_info
'''

EXAMPLES = r'''
- name: Plan the backup of two VMs and of every VM tagged "backup"
  xenserver.cbt_backup.backup_plan:
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"
    vms:
      - web01
      - 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f
    tags:
      - backup
    skip_disks:
      - web01-scratch
    repository_root: /backups/pool1
    full_every:
      incrementals: 13
      days: 14
  register: plan

- name: Show what will happen to each disk
  ansible.builtin.debug:
    msg: "{{ item.0.name }} {{ item.1.vdi_name }}: {{ item.1.mode }} ({{ item.1.reason }})"
  loop: "{{ plan.vms | subelements('disks') }}"
  loop_control:
    label: "{{ item.1.vdi_uuid }}"

- name: Stop if an entry of vms named no VM, or a name several VMs share (the plan left it out with a warning)
  ansible.builtin.assert:
    that: plan.unresolved == []
    fail_msg: "{{ plan.unresolved | map(attribute='msg') | join('; ') }}"

- name: The disks that need CBT enabled before the snapshot
  ansible.builtin.set_fact:
    enable_cbt: "{{ plan.vms | map(attribute='disks') | flatten | selectattr('reason_code', 'eq', 'CBT_DISABLED')
                    | map(attribute='vdi_uuid') | list }}"
'''

RETURN = r'''
vms:
  description: The selected VMs, in the order of O(vms), then the tagged ones by name.
  type: list
  elements: dict
  returned: success
  contains:
    uuid:
      description: The VM's uuid.
      type: str
      sample: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f
    name:
      description: The VM's name.
      type: str
      sample: web01
    power_state:
      description: The VM's power state.
      type: str
      sample: Running
    tags:
      description: The VM's tags.
      type: list
      elements: str
      sample: [backup]
    disks:
      description: The VM's user disks, in device order, each with its decision.
      type: list
      elements: dict
      contains:
        vdi_uuid:
          description: The disk's uuid.
          type: str
          sample: 5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10
        vdi_name:
          description: The disk's name.
          type: str
          sample: web01-disk0
        userdevice:
          description: The disk's device number in the VM (the VBD's C(userdevice)).
          type: str
          sample: '0'
        virtual_size:
          description: The disk's size in bytes.
          type: int
          sample: 10737418240
        sr_uuid:
          description: The uuid of the storage repository that holds the disk.
          type: str
          sample: 0c7e3b2a-1d4f-4a5e-8b6c-9d0e1f2a3b4c
        sr_name:
          description: The name of that storage repository.
          type: str
          sample: Local storage
        cbt_enabled:
          description: Whether changed block tracking is enabled on the disk now.
          type: bool
          sample: true
        cbt_supported:
          description: Whether the storage repository can do changed block tracking (allows C(vdi_enable_cbt)).
          type: bool
          sample: true
        repository:
          description: The disk's repository directory, C(<repository_root>/<vm uuid>/<disk uuid>) (absolute).
          type: str
          sample: /backups/pool1/8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f/5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10
        mode:
          description: C(full), C(incremental) or C(skip).
          type: str
          sample: incremental
        reason:
          description: Why, in a sentence (what was found and what happens).
          type: str
          sample: >-
            The newest restore point 20261125T020009Z-incr was taken from snapshot 3f4e9a1c-7d0b-4c8e-9a55-0d6c1f3e2b7a,
            which still exists and carries CBT metadata: this backup of the disk web01-disk0
            (5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10) is incremental and reads only the blocks changed since then.
        reason_code:
          description:
            - The reason as a code, one of C(SKIPPED), C(CBT_UNSUPPORTED), C(REPOSITORY_DAMAGED), C(FIRST_BACKUP),
              C(MANIFEST_MISMATCH), C(CBT_DISABLED), C(ANCHOR_MISSING), C(ANCHOR_MISMATCH), C(ANCHOR_NO_CBT),
              C(SIZE_CHANGED), C(FULL_EVERY_INCREMENTALS), C(FULL_EVERY_DAYS), C(CHAIN_OK).
          type: str
          sample: CHAIN_OK
        base:
          description: With RV(vms[].disks[].mode=incremental), the snapshot to list the changed blocks against (the
            repository's CBT anchor); null otherwise.
          type: str
          sample: 3f4e9a1c-7d0b-4c8e-9a55-0d6c1f3e2b7a
        previous_anchor:
          description:
            - The repository's CBT anchor if it still exists on the host as a snapshot of this disk, else null.
            - Once the disk's backup succeeded it serves no more (the new snapshot is the anchor) and can be destroyed.
          type: str
          sample: 3f4e9a1c-7d0b-4c8e-9a55-0d6c1f3e2b7a
        points:
          description: Number of restore points in the repository (0 if it has none or cannot be read).
          type: int
          sample: 5
        incrementals_since_full:
          description: Incremental points taken since the last full backup (see O(full_every.incrementals)).
          type: int
          sample: 4
        last_full_time:
          description: When the last point taken as a full backup was taken (RFC 3339 in UTC, Z), null if there is none.
          type: str
          sample: '2026-11-24T02:00:11Z'
        leftover_snapshots:
          description:
            - The disk's snapshots that backup runs left behind, oldest first; empty when there are none. Listed for
              every disk, also one with RV(vms[].disks[].mode=skip).
            - "Such a snapshot carries the marker of M(xenserver.cbt_backup.vdi_snapshot) (C(other_config) key
              C(xenserver.cbt_backup.snapshot)), still holds data (its type is not C(cbt_metadata)), and is not the
              repository's CBT anchor. A run that finishes reduces its snapshots to CBT metadata or destroys them, so
              these come from runs that were interrupted before their cleanup (a cancelled job, a controller that
              died). They only cost storage; destroy them with M(xenserver.cbt_backup.vdi_snapshot)
              O(xenserver.cbt_backup.vdi_snapshot#module:state=absent)."
            - Snapshots made without M(xenserver.cbt_backup.vdi_snapshot) (no marker) and the CBT metadata the backups
              keep are never listed. When the repository cannot be read, its anchor is unknown and is not left out.
            - A backup run of the disk that is still going on (another job) also has such snapshots; destroy them
              only when no other run is.
          type: list
          elements: dict
          contains:
            uuid:
              description: The snapshot's uuid.
              type: str
              sample: 9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f
            time:
              description: When the snapshot was taken (its C(snapshot_time), RFC 3339 in UTC (Z)).
              type: str
              sample: '2026-11-25T02:00:05Z'
            type:
              description: The snapshot's VDI type (C(user) or C(system)).
              type: str
              sample: user
unresolved:
  description:
    - The entries of O(vms) that name no VM, or a name that several VMs share, in the order of O(vms) (each name
      once). They are left out of the plan, each with a warning; empty when every entry was found.
  type: list
  elements: dict
  returned: success
  contains:
    name:
      description: The entry of O(vms), as given.
      type: str
      sample: web02
    error_code:
      description: C(NOT_FOUND) (no VM has this uuid or name) or C(AMBIGUOUS) (several VMs have this name).
      type: str
      sample: NOT_FOUND
    msg:
      description: Why, in a sentence.
      type: str
      sample: no VM has the uuid or name "web02"
summary:
  description: Counts of the plan.
  type: dict
  returned: success
  contains:
    vms:
      description: VMs selected.
      type: int
      sample: 2
    disks:
      description: Disks listed.
      type: int
      sample: 3
    full:
      description: Disks that get a full backup.
      type: int
      sample: 1
    incremental:
      description: Disks that get an incremental backup.
      type: int
      sample: 1
    skip:
      description: Disks skipped.
      type: int
      sample: 1
    leftover_snapshots:
      description: Snapshots of interrupted runs listed in RV(vms[].disks[].leftover_snapshots), of all disks.
      type: int
      sample: 0
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import plan as _backup_plan
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            vms=dict(type='list', elements='str', default=[]),
            tags=dict(type='list', elements='str', default=[]),
            skip_disks=dict(type='list', elements='str', default=[]),
            repository_root=dict(type='path', required=True),
            full_every=dict(type='dict', options=dict(
                incrementals=dict(type='int'),
                days=dict(type='int'),
            )),
        ),
        supports_check_mode=True,
    )
    params = module.params
    full_every = params['full_every'] or {}
    for key in ('incrementals', 'days'):
        if full_every.get(key) is not None and full_every[key] < 0:
            module.fail_json(msg='full_every.%s must be 0 or more' % key, error_code='INVALID_OPTION')
    if not params['vms'] and not params['tags']:
        module.fail_json(msg='no VM selected: give vms (names or uuids) or tags', error_code='INVALID_OPTION')

    def action(client):
        return _backup_plan.plan(client, params['repository_root'], vms=params['vms'], tags=params['tags'],
                                 skip_disks=params['skip_disks'], full_every=full_every)

    _xenapi_module.run(module, action)


if __name__ == '__main__':
    main()
