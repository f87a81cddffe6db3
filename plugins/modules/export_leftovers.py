#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: export_leftovers
short_description: Remove the job files that background exports and restores of interrupted runs left
version_added: 0.1.0
description:
  - While M(xenserver.cbt_backup.export_wait) waits for a background M(xenserver.cbt_backup.vdi_export) or
    M(xenserver.cbt_backup.vdi_restore), it keeps a record naming the async job (its O(xenserver.cbt_backup.export_wait#module:record)),
    and removes it with the job file once it has read the result. A playbook that was cancelled (an AWX job
    cancel, SIGINT or SIGTERM to ansible-playbook, a dead controller) leaves both behind.
  - For each record given that exists, this module looks at the job it names. A job that has ended has its job
    file (in the async directory), its progress and lease files and the record removed, and what its result said
    is returned. A job still running is left alone (run again later). Files no record names are never touched.
  - The role M(xenserver.cbt_backup.incremental_backup) runs it at the start of every run and puts what it found
    into the run's report.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
attributes:
  check_mode:
    description: Tells what would be removed, removes nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  records:
    description:
      - The record files to look at (absolute paths); those that do not exist are skipped.
    type: list
    elements: path
    required: true
notes:
  - Runs on the host the background jobs ran on (for the role, the host of its tasks).
seealso:
  - module: xenserver.cbt_backup.export_wait
'''

EXAMPLES = r'''
- name: Clean up after the background exports of an interrupted run
  xenserver.cbt_backup.export_leftovers:
    records:
      - /backups/reports/.export-pool1.job
  register: leftovers
'''

RETURN = r'''
jobs:
  description: One entry per record that existed.
  type: list
  elements: dict
  returned: always
  contains:
    record:
      description: The record's path.
      type: str
      sample: /backups/reports/.export-pool1.job
    jid:
      description: The async job id.
      type: str
      sample: "j123456789.4242"
    written:
      description: When the record was written (RFC 3339 UTC), about when the job started.
      type: str
      sample: "2026-12-04T02:00:13Z"
    state:
      description:
        - C(ended) (the job had ended; its files were removed), C(running) (left alone) or C(gone) (the job file
          was already gone; the record was removed).
      type: str
      sample: ended
    summary:
      description: The items of the job's result (the exports, or the one upload) by outcome.
      type: dict
      returned: when I(state=ended)
      sample: {"ok": 3, "cancelled": 2, "failed": 0}
    removed:
      description: The files removed (in check mode, that would be removed).
      type: list
      elements: str
      sample: ["/root/.ansible_async/j123456789.4242", "/backups/reports/.export-pool1.job"]
'''

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import jobs as _jobs


def main():
    module = AnsibleModule(
        argument_spec=dict(records=dict(type='list', elements='path', required=True)),
        supports_check_mode=True,
    )
    found = []
    for path in module.params['records']:
        if not os.path.isabs(path):
            module.fail_json(msg='records take absolute paths, not %s' % path, error_code='INVALID_OPTION')
        try:
            job = _jobs.recover(path, check_mode=module.check_mode)
        except ValueError as exc:
            module.fail_json(msg=str(exc), error_code='INVALID_RECORD', jobs=found)
        except (IOError, OSError) as exc:
            module.fail_json(msg='cannot clean up after the job recorded in %s: %s' % (path, exc),
                             error_code='WRITE_FAILED', jobs=found)
        if job is not None:
            found.append(job)
    module.exit_json(changed=any(job['removed'] for job in found), jobs=found)


if __name__ == '__main__':
    main()
