#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: export_wait
short_description: Wait for a background vdi_export, print its progress, and cancel it if the playbook stops
version_added: 0.1.0
description:
  - Waits for a M(xenserver.cbt_backup.vdi_export) list form that was started with C(async) and C(poll=0), and
    returns its result, like M(ansible.builtin.async_status) with C(until), but prints progress instead of
    C(FAILED - RETRYING) lines.
  - About every second it runs M(xenserver.cbt_backup.export_progress) on the task's host, which renews the run's
    lease (C(<progress_file>.lease), see O(xenserver.cbt_backup.vdi_export#module:lease_seconds)), reads
    O(progress_file) and tells whether the job has ended.
  - Every O(interval) seconds it prints one line per disk being exported, with its label, percentage, bytes read
    of the bytes to read (MiB or GiB), rate (MiB/s) and estimated time left, and one line with how many disks are
    queued, running and ended.
  - When the job has ended it removes the async job file (as M(ansible.builtin.async_status) with C(mode=cleanup)
    does) and the O(record), prints one line per disk (label, ok or failed, bytes read, seconds) and returns the job's result.
  - If the playbook stops waiting (an AWX job cancel, SIGINT or SIGTERM to ansible-playbook, a controller that
    dies), nobody renews the lease any more, and a run started with O(xenserver.cbt_backup.vdi_export#module:lease_seconds)
    cancels itself within that many seconds. The next run cleans up what the cancelled exports left.
  - This is an action plugin; the task runs on the controller and the look at the job runs on the task's host,
    where the export runs.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
attributes:
  check_mode:
    description: Waits the same way in check mode (the export it waits for runs in check mode too).
    support: full
  diff_mode:
    description: Not supported.
    support: none
  async:
    description: Not supported; it is what waits for an async task.
    support: none
options:
  jid:
    description:
      - The async job id of the vdi_export task, C(ansible_job_id) of its registered result.
    type: str
    required: true
  progress_file:
    description:
      - The O(xenserver.cbt_backup.vdi_export#module:progress_file) given to the vdi_export task. Its lease file
        C(<progress_file>.lease) is renewed while this task waits.
    type: path
    required: true
  timeout:
    description:
      - Seconds to wait at most. When they are up, the task releases the lease (the run cancels itself), waits up to
        a minute for the job to end, and fails with C(error_code=TIMEOUT).
      - In the role C(xenserver.cbt_backup.incremental_backup) it is C(incremental_backup_async_timeout).
    type: int
    default: 86400
  interval:
    description:
      - Seconds between two rounds of progress lines.
    type: int
    default: 5
  record:
    description:
      - A file on the task's host that names the job while this task waits (written at the first look, mode
        0600) and is removed with the job file at the end. When the playbook is cancelled, it is left behind;
        M(xenserver.cbt_backup.export_leftovers) given the same path then removes the job file the cancelled
        run left in the async directory, once the job has ended.
      - An absolute path; the role uses C(<incremental_backup_report_dir>/.export-<inventory_hostname>.job).
    type: path
  also_renew:
    description:
      - The progress files of other background runs whose leases this task renews as well while it waits, for
        example the other disks of a VM restored at once with M(xenserver.cbt_backup.vdi_restore), so that their
        leases hold while the wait is on the first disk.
    type: list
    elements: path
    default: []
notes:
  - The job's result is returned once, and its job file is removed; a second wait for the same O(jid) fails with
    C(error_code=JOB_NOT_FOUND).
  - A job killed by its C(async) time limit cannot clean up; this task then removes O(progress_file) and its lease
    file, and fails with the job's C(msg) and C(error_code=JOB_FAILED).
seealso:
  - module: xenserver.cbt_backup.vdi_export
  - module: xenserver.cbt_backup.export_progress
  - module: xenserver.cbt_backup.export_leftovers
  - module: ansible.builtin.async_status
'''

EXAMPLES = r'''
- name: Start the exports in the background
  xenserver.cbt_backup.vdi_export:
    exports:
      - snapshot: "{{ snapshot_uuid }}"
        repository: /backups/web01/xvda
        label: web01/xvda
    progress_file: /backups/progress-nightly.json
    lease_seconds: 60
  async: 86400
  poll: 0
  register: export_job

- name: Wait for them, printing progress every 10 seconds
  xenserver.cbt_backup.export_wait:
    jid: "{{ export_job.ansible_job_id }}"
    progress_file: /backups/progress-nightly.json
    timeout: 86400
    interval: 10
  register: exported
'''

RETURN = r'''
exports:
  description:
    - The job's result, RV(xenserver.cbt_backup.vdi_export#module:exports) of M(xenserver.cbt_backup.vdi_export).
  type: list
  elements: dict
  returned: when the job ended with a result
  sample: [{"snapshot": "2f0e0c5a-8d1e-4a4b-9a71-6d3f1c0a9b11", "label": "web01/xvda", "failed": false, "bytes_read": 6291456}]
hosts:
  description: The job's result, RV(xenserver.cbt_backup.vdi_export#module:hosts).
  type: dict
  returned: when the job ended with a result
  sample: {"192.0.2.10:10809": {"exports": 5, "peak_connections": 16, "passed_over": null}}
bytes_read:
  description: The job's result, RV(xenserver.cbt_backup.vdi_export#module:bytes_read).
  type: int
  returned: when the job ended with a result
  sample: 6291456
msg:
  description: Why the job or the wait failed.
  type: str
  returned: failure
  sample: "1 of 2 exports failed: web02/xvda: ..."
error_code:
  description:
    - The job's C(error_code) (C(EXPORTS_FAILED) when an item failed; C(JOB_FAILED) when the job ended without
      one, for example killed by its C(async) time limit), or C(TIMEOUT) (O(timeout) ran out), C(JOB_NOT_FOUND)
      (no async job O(jid) on the host), C(WAIT_FAILED) (the look at the job failed five times in a row, or
      ansible-playbook went away) or C(INVALID_OPTION).
  type: str
  returned: failure
  sample: TIMEOUT
ansible_job_id:
  description: The O(jid) waited for.
  type: str
  returned: always
  sample: j351927106394
'''
