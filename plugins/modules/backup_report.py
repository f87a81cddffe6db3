#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: backup_report
short_description: Build the report of a backup run over one pool, and write it as a JSON file
version_added: 0.1.0
description:
  - Builds the report of one backup run over one pool from what the run collected, that is the plan of
    M(xenserver.cbt_backup.backup_plan), the snapshots M(xenserver.cbt_backup.vdi_snapshot) took, and the failures
    and warnings recorded along the way.
  - For each VM and disk it tells whether the backup was full or incremental and why (from the plan), whether it
    succeeded, and for the restore point written by the run the bytes read, the bytes stored, the duration, the
    throughput and the number of restore points the repository keeps now.
  - The facts of a restore point come from the disk repository's C(manifest.json), read without taking the
    repository's lock. It is the point whose snapshot is the snapshot this run took of the disk.
  - Only the fields listed in RV(report) are copied from the inputs, so module results can be passed in as they are
    without their other keys ending up in the report.
  - With O(dest), the report is written as JSON (sorted keys, indented) under a temporary name in the same directory,
    fsynced and renamed into place, so a reader never sees a partial file.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
attributes:
  check_mode:
    description: Builds the report and returns it, and with O(dest) reports the change the write would be; writes no file.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  plan:
    description:
      - The VMs planned for the run, RV(xenserver.cbt_backup.backup_plan#module:vms) of
        M(xenserver.cbt_backup.backup_plan).
      - Of each VM, C(uuid), C(name) and C(disks) are used; of each disk C(vdi_uuid), C(vdi_name), C(userdevice),
        C(repository), C(mode), C(reason) and C(reason_code). Other keys are ignored.
    type: list
    elements: dict
    required: true
  snapshots:
    description:
      - The snapshots this run took, as RV(xenserver.cbt_backup.vdi_snapshot#module:snapshots) returns them. C(uuid)
        and C(snapshot_of) (the disk's uuid) are used; items without a C(uuid) (check mode) are ignored.
      - A disk that is not skipped and has no snapshot here is reported as C(planned) unless a failure names it.
    type: list
    elements: dict
    default: []
  consistency:
    description:
      - What each VM's snapshot got, by VM uuid. V(application) (a pre-snapshot hook quiesced the guest, with the role's
        C(incremental_backup_pre_snapshot_tasks)), V(crash) (the disks as a power cut would leave them) or V(none)
        (no snapshot was taken, for example because a failed pre-snapshot hook skipped the VM). VMs it does not
        name got V(crash).
    type: dict
    default: {}
  failures:
    description:
      - What failed during the run, each with C(vm_uuid), C(vdi_uuid), C(step) (what the run was doing) and C(msg),
        and optionally C(error_code) (the failed module's C(error_code) result).
      - A null C(vdi_uuid) concerns the whole VM (every disk of it that was not skipped fails); null C(vm_uuid) and
        C(vdi_uuid) concern the whole pool.
    type: list
    elements: dict
    default: []
  warnings:
    description:
      - Problems that did not fail a backup (for example a previous CBT anchor snapshot that could not be destroyed),
        in the same shape as O(failures).
    type: list
    elements: dict
    default: []
  started:
    description:
      - When the run started, RFC 3339 in UTC (Z) (for example C(2026-11-25T02:00:05Z)). The run ends when this module
        runs.
    type: str
    required: true
  pool:
    description:
      - A label for the pool in the report and the summary, for example the inventory hostname.
    type: str
  role_advice:
    description:
      - Add to each failure with a known C(error_code) what to do about it, in the variables of the
        C(xenserver.cbt_backup.incremental_backup) role (for example C(incremental_backup_nbd_tls) where a module
        message says C(tls)). The role sets it.
    type: bool
    default: false
  dest:
    description:
      - A file to write the report to, as JSON. Missing parent directories are created with mode C(0750); the file
        gets mode C(0640) and replaces an existing file of that name.
      - Without it, the report is only returned.
    type: path
notes:
  - The module does not connect to the XenAPI; it only reads the repositories named in the plan.
  - A disk is C(ok) when its repository records a restore point taken from the run's snapshot of it and no failure
    names it or its VM. A failed disk still shows the facts of its restore point if one was written.
  - Restore points written by older versions of the collection do not record their duration; their RV(report.vms[].disks[].seconds)
    and RV(report.vms[].disks[].throughput_mib_s) are then null.
seealso:
  - module: xenserver.cbt_backup.backup_info
  - module: xenserver.cbt_backup.vdi_export
'''

EXAMPLES = r'''
- name: Write the report of the run
  xenserver.cbt_backup.backup_report:
    plan: "{{ plan.vms }}"
    snapshots: "{{ taken | map(attribute='snapshots') | flatten }}"
    failures: "{{ run_failures }}"
    warnings: "{{ run_warnings }}"
    started: "{{ run_started }}"
    pool: "{{ inventory_hostname }}"
    dest: "/backup/reports/{{ inventory_hostname }}-{{ run_started }}.json"
  register: run_report

- name: Show the summary
  ansible.builtin.debug:
    msg: "{{ run_report.summary }}"

- name: Fail if a disk failed
  ansible.builtin.assert:
    that: run_report.report.totals.failed == 0 and run_report.report.failures | length == 0
    fail_msg: "{{ run_report.summary | select('match', 'FAILED') | list }}"
'''

RETURN = r'''
report:
  description: The report (also the content of the file written to O(dest)).
  type: dict
  returned: always
  contains:
    pool:
      description: O(pool).
      type: str
      sample: pool1
    started:
      description: When the run started (O(started)), RFC 3339 in UTC (Z).
      type: str
      sample: '2026-11-25T02:00:05Z'
    finished:
      description: When the report was built, RFC 3339 in UTC (Z).
      type: str
      sample: '2026-11-25T02:14:41Z'
    seconds:
      description: Duration of the run, from RV(report.started) to RV(report.finished).
      type: float
      sample: 876.0
    totals:
      description:
        - Counts and sums over all disks. C(full) and C(incremental) count the disks planned that way, C(skipped),
          C(failed), C(ok) and C(planned) the disks by status; C(bytes_read) and C(bytes_stored) add up the restore
          points written by the run.
      type: dict
      sample: {vms: 2, disks: 3, full: 1, incremental: 1, skipped: 1, failed: 0, ok: 2, planned: 0,
               bytes_read: 12582912, bytes_stored: 8388608}
    failures:
      description:
        - Every failure of the run (O(failures) and the disks found without a restore point), each with C(vm_uuid),
          C(vdi_uuid), C(step), C(msg), C(error_code) (null when the failure gave none) and C(advice) (with
          O(role_advice), what to do in the role's variables; else null).
      type: list
      elements: dict
      sample: [{vm_uuid: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f, vdi_uuid: null, step: snapshot, msg: VM is busy,
                error_code: OTHER_OPERATION_IN_PROGRESS, advice: null}]
    warnings:
      description: Every warning (O(warnings) and repositories that could not be read), in the same shape.
      type: list
      elements: dict
      sample: []
    vms:
      description: The VMs of the plan, in its order.
      type: list
      elements: dict
      contains:
        uuid:
          description: The VM's uuid.
          type: str
          sample: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f
        name:
          description: The VM's name.
          type: str
          sample: web01
        status:
          description:
            - C(ok) if every disk not skipped is ok, C(failed) if all failed, C(partial) if some did,
              C(skipped) if every disk was skipped, C(planned) if none was backed up (check mode).
          type: str
          sample: ok
        consistency:
          description:
            - C(application), C(crash) or C(none), as O(consistency) says.
          type: str
          sample: crash
        warnings:
          description: Warnings about the whole VM, each with C(step) and C(msg).
          type: list
          elements: dict
          sample: []
        disks:
          description: The VM's disks, in the plan's order.
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
              description: The disk's position in the VM (C(0) is usually C(xvda)).
              type: str
              sample: '0'
            repository:
              description: The disk's repository directory.
              type: str
              sample: /backup/8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f/5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10
            mode:
              description:
                - C(full), C(incremental) or C(skip), from the plan; C(full) when the plan said incremental but the
                  export found the CBT chain broken and took a full backup (its point records C(fallback_reason)).
              type: str
              sample: incremental
            reason:
              description: Why, in words, from the plan.
              type: str
              sample: the newest restore point's snapshot is the disk's CBT anchor
            reason_code:
              description: Why, as a code (C(CHAIN_OK), C(FIRST_BACKUP), ...), from the plan; C(CHAIN_BROKEN) for such a fallback.
              type: str
              sample: CHAIN_OK
            status:
              description:
                - C(ok) (a restore point was written), C(failed), C(skipped) or C(planned) (not backed up and
                  nothing failed, as in check mode).
              type: str
              sample: ok
            step:
              description: What the run was doing when the disk failed (null unless failed).
              type: str
              sample: export
            error:
              description: Why the disk failed (null unless failed).
              type: str
              sample: no restore point was recorded for this run's snapshot
            snapshot_uuid:
              description: The snapshot the run took of the disk (null if none).
              type: str
              sample: 0b7f6a3e-5d27-4c1e-9f6a-2d8e4b1c3a90
            point:
              description: Id of the restore point written from that snapshot (null if none).
              type: str
              sample: 20261125T020731Z-incr
            point_type:
              description: C(full) or C(incremental) (null if no point).
              type: str
              sample: incremental
            bytes_read:
              description: Bytes read from the disk to write the point (null if no point).
              type: int
              sample: 12582912
            bytes_stored:
              description: Guest data bytes the point stores (null if no point).
              type: int
              sample: 8388608
            seconds:
              description: How long the export of the point took (null if no point or not recorded).
              type: float
              sample: 0.4
            throughput_mib_s:
              description: RV(report.vms[].disks[].bytes_read) per second, in MiB/s (null without a duration).
              type: float
              sample: 30.0
            points_kept:
              description: Number of restore points in the repository now (null if the manifest cannot be read).
              type: int
              sample: 3
            warnings:
              description: Warnings about the disk, each with C(step) and C(msg).
              type: list
              elements: dict
              sample: []
summary:
  description:
    - Lines for the play output, one per disk, then the totals, then one per failure and per warning.
  type: list
  elements: str
  returned: always
  sample:
    - 'web01/web01-disk0 (xvda 0): incremental (CHAIN_OK) ok  12.0 MiB read, 8.0 MiB stored, 0.4 s, 30.0 MiB/s, 3 points'
    - 'pool1: 1 VM, 1 disk: 0 full, 1 incremental, 0 skipped; 1 ok, 0 failed; 12.0 MiB read, 8.0 MiB stored; 52.0 s'
path:
  description: The absolute path of O(dest) (null without O(dest)). In check mode nothing is written there.
  type: str
  returned: always
  sample: /backup/reports/pool1-20261125T020005Z.json
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup.role_advice import role_advice
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.report import (
    ReportError,
    build_report,
    summary_lines,
    write_report,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            plan=dict(type='list', elements='dict', required=True),
            snapshots=dict(type='list', elements='dict', default=[]),
            consistency=dict(type='dict', default={}),
            failures=dict(type='list', elements='dict', default=[]),
            warnings=dict(type='list', elements='dict', default=[]),
            started=dict(type='str', required=True),
            pool=dict(type='str'),
            role_advice=dict(type='bool', default=False),
            dest=dict(type='path'),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        report = build_report(params['plan'], snapshots=params['snapshots'], consistency=params['consistency'],
                              failures=params['failures'],
                              warnings=params['warnings'], started=params['started'], pool=params['pool'],
                              advice=role_advice if params['role_advice'] else None)
    except ReportError as exc:
        module.fail_json(msg=str(exc), error_code=exc.code)
    result = dict(changed=False, report=report, summary=summary_lines(report), path=None)
    if params['dest']:
        result['path'] = os.path.abspath(params['dest'])
        result['changed'] = True  # every report records when it finished: writing one is always a change
        if not module.check_mode:
            try:
                result['path'] = write_report(report, params['dest'])
            except ReportError as exc:
                result['changed'] = False
                module.fail_json(msg=str(exc), error_code=exc.code, **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
