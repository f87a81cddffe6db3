#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: export_progress
short_description: Read the progress of a background vdi_export, renew its lease, and tell whether its job ended
version_added: 0.1.0
description:
  - One look at a M(xenserver.cbt_backup.vdi_export) list form started with C(async) and C(poll=0), on the host
    where it runs. M(xenserver.cbt_backup.export_wait) runs this module about every second while it waits; use
    M(xenserver.cbt_backup.export_wait) in playbooks rather than this module.
  - In one go it tells whether the async job O(jid) has ended (as M(ansible.builtin.async_status) reads the job
    file), renews the run's lease (O(xenserver.cbt_backup.vdi_export#module:lease_seconds)) by setting the
    modification time of C(<progress_file>.lease) to now, and returns the document in O(progress_file).
  - A lease file is never created here, only renewed (M(xenserver.cbt_backup.vdi_export) creates it when it starts
    and removes it when it ends), so a renewal that comes too late cannot leave one behind.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
attributes:
  check_mode:
    description: Runs normally in check mode (the export it watches runs in check mode too, and needs its lease).
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  progress_file:
    description:
      - The O(xenserver.cbt_backup.vdi_export#module:progress_file) of the run.
    type: path
    required: true
  jid:
    description:
      - The async job id of the run (C(ansible_job_id) of the task started with C(poll=0)). Without it, RV(job)
        is not returned.
    type: str
  async_dir:
    description:
      - The directory of the async job files on this host, as Ansible's C(async_dir) shell option sets it.
      - M(xenserver.cbt_backup.export_wait) passes the directory M(ansible.builtin.async_status) would read.
    type: path
    default: ~/.ansible_async
  lease:
    description:
      - V(renew) sets the modification time of an existing lease file to now. V(release) deletes the lease file,
        which makes the run cancel itself within a second. V(keep) leaves it alone.
      - Not done once the job has ended.
    type: str
    choices: [renew, release, keep]
    default: renew
  also_renew:
    description:
      - The progress files of other runs whose leases to renew at the same time (with O(lease=renew), while the
        job O(jid) has not ended). M(xenserver.cbt_backup.export_wait) passes the uploads of one VM started
        together, so that the lease of the second disk holds while the wait is on the first.
    type: list
    elements: path
    default: []
  record:
    description:
      - A file naming the job (its O(jid), O(async_dir) and O(progress_file)), written once (atomically, mode
        0600) when the job is found and the file is not there yet. If the playbook is cancelled, the record
        tells the next run which job file to remove (M(xenserver.cbt_backup.export_leftovers)).
      - Needs O(jid).
    type: path
  forget:
    description:
      - The job's result has been read (with M(ansible.builtin.async_status)), so remove its job file from
        O(async_dir) and the O(record). Needs O(jid).
    type: bool
    default: false
  cleanup:
    description:
      - Once the job has ended, remove O(progress_file) and its lease file if they are still there (the module
        removes them itself unless it was killed, for example by the C(async) time limit).
    type: bool
    default: true
notes:
  - The files are read and written on the host the task runs on, like the export itself.
seealso:
  - module: xenserver.cbt_backup.export_wait
  - module: xenserver.cbt_backup.vdi_export
  - module: xenserver.cbt_backup.export_leftovers
'''

EXAMPLES = r'''
- name: Look at a background export once
  xenserver.cbt_backup.export_progress:
    jid: "{{ export_job.ansible_job_id }}"
    progress_file: /backups/progress-nightly.json
  register: look
'''

RETURN = r'''
progress:
  description:
    - The document in O(progress_file) (see O(xenserver.cbt_backup.vdi_export#module:progress_file)), or null
      when there is none (the run has not written it yet, or has ended).
  type: dict
  returned: always
  sample: {"updated": "2026-12-02T15:43:31Z", "disks": [{"label": "web01/xvda", "state": "running",
           "bytes_done": 1048576, "bytes_total": 4194304, "percent": 25.0, "mib_s": 98.5, "eta_s": 1}]}
lease:
  description:
    - What happened to the lease file, C(renewed), C(released), C(kept), C(missing) (there was none to renew or
      release) or C(ended) (the job has ended, the lease was left to the clean-up).
  type: str
  returned: always
  sample: renewed
job:
  description: The async job O(jid).
  type: dict
  returned: when O(jid) is given
  contains:
    found:
      description: Whether the job file exists in O(async_dir).
      type: bool
      sample: true
    finished:
      description: Whether the job has ended (its result is in the job file; read it with M(ansible.builtin.async_status)).
      type: bool
      sample: false
removed:
  description: Files removed by O(cleanup) and O(forget).
  type: list
  elements: str
  returned: always
  sample: []
'''

import errno
import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import jobs as _jobs
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress


def read_progress(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    except ValueError:
        return None  # written atomically, so this is not a progress file of this collection


def renew(lease_file):
    """Set the lease's modification time to now, never creating it: 'renewed' or 'missing'."""
    try:
        os.utime(lease_file, None)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return 'missing'
    return 'renewed'


def look(params, result):
    """One look at the job, its lease and its progress (see DOCUMENTATION), into ``result``."""
    lease_file = _progress.lease_path(params['progress_file'])
    ended = False
    if params['jid']:
        result['job'] = _jobs.job_state(params['async_dir'], params['jid'])
        ended = result['job']['finished']
        if params['forget']:
            result['removed'] += _jobs.forget(params['async_dir'], params['jid'], params['record'])
        elif params['record'] and result['job']['found']:
            result['changed'] = _jobs.write_record(params['record'], params['jid'], params['async_dir'],
                                                   params['progress_file'])
    if ended:
        result['lease'] = 'ended'
        if params['cleanup']:
            result['removed'] += [path for path in (params['progress_file'], lease_file) if _jobs.remove(path)]
    elif params['lease'] == 'renew':
        result['lease'] = renew(lease_file)
    elif params['lease'] == 'release':
        result['lease'] = 'released' if _jobs.remove(lease_file) else 'missing'
    if not ended and params['lease'] == 'renew':
        for other in params['also_renew']:
            renew(_progress.lease_path(other))
    result['progress'] = None if ended else read_progress(params['progress_file'])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            progress_file=dict(type='path', required=True),
            jid=dict(type='str'),
            async_dir=dict(type='path', default='~/.ansible_async'),
            lease=dict(type='str', default='renew', choices=['renew', 'release', 'keep']),
            also_renew=dict(type='list', elements='path', default=[]),
            cleanup=dict(type='bool', default=True),
            record=dict(type='path'),
            forget=dict(type='bool', default=False),
        ),
        required_by={'record': 'jid'},
        supports_check_mode=True,
    )
    params = module.params
    for path in [params['progress_file'], params['record']] + params['also_renew']:
        if path and not os.path.isabs(path):
            module.fail_json(msg='progress_file, also_renew and record take absolute paths (as given to vdi_export '
                                 'and export_wait), not %s' % path, error_code='INVALID_OPTION')
    result = dict(changed=False, removed=[], lease='kept')
    try:
        look(params, result)
    except (IOError, OSError) as exc:
        module.fail_json(msg='cannot read or renew the progress of the export (%s): %s' % (params['progress_file'], exc),
                         error_code='READ_FAILED', **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
