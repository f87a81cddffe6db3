#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_restore
short_description: Restore a point of a backup repository to a raw file, a new VDI or an existing VDI
version_added: 0.1.0
description:
  - Reads a restore point of a disk's backup repository (written by M(xenserver.cbt_backup.vdi_export) with
    O(xenserver.cbt_backup.vdi_export#module:repository)) through its chain of qcow2 files and writes the disk it held.
  - Before a byte is restored, the sha256 of every file of the point's chain is compared with the manifest; a damaged
    chain is refused, naming the bad point (run M(xenserver.cbt_backup.backup_verify) to see every affected point).
  - B(To a file:) O(dest) becomes a sparse raw image (areas that are zero in the point stay holes), written under a
    temporary name, fsynced and renamed into place. No XenAPI connection is needed.
  - B(To a new VDI:) O(sr) gets a new user disk of the point's size (C(VDI.create)), then the point is uploaded with
    C(PUT /import_raw_vdi). If the upload fails the new VDI is destroyed, so no half-restored disk is left behind.
  - B(Onto an existing VDI:) O(vdi) is overwritten; its size must equal the point's, and it must not be attached to a
    running VM unless O(force=true).
  - Uploads use a dynamic VHD generated on the fly (O(format=vhd)); into a new VDI only the 2 MiB blocks that hold
    data travel. O(format=raw) sends the whole disk, zeros included. Disks larger than 2040 GiB, which a VHD cannot
    hold, are always sent raw (with a warning).
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: >-
      Validates everything (repository, point, chain checksums, O(dest), SR or VDI) but transfers nothing and creates
      nothing; reports a change.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  repository:
    description:
      - One disk's backup repository directory (the one holding C(manifest.json)).
    type: path
    required: true
  point:
    description:
      - Id of the restore point (as listed by M(xenserver.cbt_backup.backup_info)), or V(latest) for the newest.
    type: str
    default: latest
  dest:
    description:
      - Raw image file to create. Mutually exclusive with O(sr) and O(vdi); one of the three is required.
      - An existing file is refused unless O(force=true).
    type: path
  sr:
    description:
      - Storage repository (uuid or name) in which to create a new VDI holding the point.
      - Needs the XenAPI connection options.
    type: str
  name:
    description:
      - With O(sr), the name of the new VDI. Default is the disk's name followed by C((restored <point id>)).
    type: str
  vdi:
    description:
      - Existing VDI (uuid or name, not a snapshot) to overwrite with the point. Its virtual size must equal the
        point's.
      - Needs the XenAPI connection options.
    type: str
  format:
    description:
      - Upload format for O(sr) and O(vdi).
      - V(vhd) sends a dynamic VHD. Into a new VDI it holds only the 2 MiB blocks that contain data. Onto an existing
        VDI it holds every block, zeros included, because the host leaves the blocks a VHD omits as they were.
      - V(raw) sends every byte.
      - Disks larger than 2040 GiB are always sent raw.
    type: str
    choices: [vhd, raw]
    default: vhd
  force:
    description:
      - With O(dest), replace an existing file. A O(dest) that already holds the restore point byte for byte is left
        as it is, with or without O(force) (C(changed=false), RV(already_restored=true)), so re-running the same task
        is ok.
      - With O(vdi), overwrite the VDI even when it is attached to a running VM (which corrupts what the guest sees;
        the host may refuse anyway).
    type: bool
    default: false
  progress_file:
    description:
      - With O(sr) or O(vdi), a JSON file the module rewrites once a second while it uploads, and removes when it
        ends, in the format of M(xenserver.cbt_backup.vdi_export)'s O(xenserver.cbt_backup.vdi_export#module:progress_file)
        (one disk, labelled O(label)). Run the task with C(async) and C(poll=0) and wait for it with
        M(xenserver.cbt_backup.export_wait), which prints the restore's progress (percent, bytes, MiB/s, ETA).
      - An absolute path in a directory that exists.
    type: path
  label:
    description:
      - The disk's name in the progress lines (for example C(web01/xvda)); default the repository's directory name.
    type: str
  lease_seconds:
    description:
      - With O(progress_file), stop the upload when nobody waits for it any more, as
        O(xenserver.cbt_backup.vdi_export#module:lease_seconds) does (an AWX cancel, SIGINT or SIGTERM to
        ansible-playbook, a dead controller); the task then fails with C(error_code=CANCELLED), and a VDI it created
        is destroyed (a VDI given in O(vdi) is left partly overwritten, as after any failed upload).
      - V(0) (the default) turns the lease off; otherwise at least 2.
    type: int
    default: 0
  logout_on_abandon:
    description:
      - With O(lease_seconds), log out the XenAPI session given in O(session_id) when the upload was abandoned
        (its lease file grew older than O(lease_seconds)), after the upload has stopped and its new VDI was
        destroyed; see O(xenserver.cbt_backup.vdi_export#module:logout_on_abandon). Only for a session no other
        task still uses; when several uploads share a session, let each log in with O(username) and O(password)
        instead (a session the module logged in itself is always logged out when it ends).
    type: bool
    default: false
requirements:
  - XenAPI (for O(sr) and O(vdi))
notes:
  - The repository is only read; restores can run while another run writes a new point.
seealso:
  - module: xenserver.cbt_backup.vdi_export
  - module: xenserver.cbt_backup.backup_verify
'''

EXAMPLES = r'''
- name: Restore the newest point to a raw file
  xenserver.cbt_backup.vdi_restore:
    repository: /backups/vm1/disk0
    dest: /restore/disk0.raw

- name: Restore a given point into a new VDI on an SR
  xenserver.cbt_backup.vdi_restore:
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"
    repository: /backups/vm1/disk0
    point: 20261124T140101Z-full
    sr: Local storage
  register: restored

- name: Restore into a new VDI in the background, printing its progress while it runs
  xenserver.cbt_backup.vdi_restore:
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"
    repository: /backups/vm1/disk0
    sr: Local storage
    progress_file: /backups/reports/.restore-vm1-disk0.json
    label: vm1/xvda
    lease_seconds: 60
  async: 86400
  poll: 0
  register: restore_job

- name: Wait for the restore
  xenserver.cbt_backup.export_wait:
    jid: "{{ restore_job.ansible_job_id }}"
    progress_file: /backups/reports/.restore-vm1-disk0.json
  register: restored

- name: Overwrite a disk of a halted VM with the newest point
  xenserver.cbt_backup.vdi_restore:
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"
    repository: /backups/vm1/disk0
    vdi: 5a2d0c6e-8f1b-4e3a-9c77-2b1d3e4f5a6b
'''

RETURN = r'''
point:
  description: Id of the restored point.
  type: str
  returned: success
  sample: 20261125T140233Z-incr
chain:
  description: Ids of the points read, newest first (the point, its parent, ... the full).
  type: list
  elements: str
  returned: success
  sample: [20261125T140233Z-incr, 20261124T140101Z-full]
virtual_size:
  description: Size of the restored disk in bytes.
  type: int
  returned: success
  sample: 67108864
dest:
  description: The raw file written.
  type: str
  returned: with O(dest)
  sample: /restore/disk0.raw
already_restored:
  description: O(dest) already held the restore point byte for byte, so nothing was written.
  type: bool
  returned: with O(dest), when it already held the point
  sample: true
bytes_written:
  description: Bytes written to O(dest) (zero areas are holes and not counted).
  type: int
  returned: with O(dest)
  sample: 41943040
bytes_to_write:
  description: Bytes of data the point holds, which O(dest) needs on disk (the rest are holes).
  type: int
  returned: with O(dest)
  sample: 41943040
vdi:
  description: The VDI restored into (C(uuid) is null in check mode for a new VDI).
  type: dict
  returned: with O(sr) or O(vdi)
  sample: {uuid: 5a2d0c6e-8f1b-4e3a-9c77-2b1d3e4f5a6b, name: disk0 (restored 20261125T140233Z-incr), sr: 9f3c...}
format:
  description: Upload format used (V(raw) when the disk is too large for VHD).
  type: str
  returned: with O(sr) or O(vdi)
  sample: vhd
bytes_to_send:
  description: Length of the upload body.
  type: int
  returned: with O(sr) or O(vdi)
  sample: 4196864
bytes_sent:
  description: Bytes uploaded (0 in check mode).
  type: int
  returned: with O(sr) or O(vdi)
  sample: 4196864
seconds:
  description: Time spent writing or uploading, in seconds.
  type: float
  returned: success
  sample: 0.8
throughput_mib_s:
  description: Disk size restored per second, in MiB/s.
  type: float
  returned: success
  sample: 512.3
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import Cancelled
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.qcow2 import Qcow2Error
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.restore import (
    RestoreError,
    RestoreSource,
    restore_to_file,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image.vhd import VhdError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            repository=dict(type='path', required=True),
            point=dict(type='str', default='latest'),
            dest=dict(type='path'),
            sr=dict(type='str'),
            name=dict(type='str'),
            vdi=dict(type='str'),
            format=dict(type='str', choices=['vhd', 'raw'], default='vhd'),
            force=dict(type='bool', default=False),
            progress_file=dict(type='path'),
            label=dict(type='str'),
            lease_seconds=dict(type='int', default=0),
            logout_on_abandon=dict(type='bool', default=False),
        ),
        mutually_exclusive=[('dest', 'sr', 'vdi'), ('name', 'vdi'), ('name', 'dest')],
        required_one_of=[('dest', 'sr', 'vdi')],
        supports_check_mode=True,
    )
    params = module.params
    if not params['dest'] and not params['hostname']:
        module.fail_json(msg='sr and vdi need the XenAPI connection: set hostname (or XENSERVER_HOST)', error_code='INVALID_OPTION')
    if (params['progress_file'] or params['lease_seconds']) and params['dest']:
        module.fail_json(msg='progress_file and lease_seconds go with sr or vdi (an upload to a host), not dest',
                         error_code='INVALID_OPTION')
    problem = _progress.option_problem(params['progress_file'], params['lease_seconds'], params['logout_on_abandon'])
    if problem:
        module.fail_json(msg=problem, error_code='INVALID_OPTION')
    try:
        source = RestoreSource(params['repository'], params['point'])
    except RestoreError as exc:
        _xenapi_module.fail(module, exc)
    except (Qcow2Error, IOError, OSError) as exc:
        module.fail_json(msg='cannot read the repository %s: %s' % (params['repository'], exc), error_type=type(exc).__name__,
                         error_code='REPOSITORY_DAMAGED' if isinstance(exc, Qcow2Error) else 'READ_FAILED')
    try:
        with source:
            if params['dest']:
                result = restore_to_file(source, params['dest'], force=params['force'], check_mode=module.check_mode)
            else:
                result = restore_to_vdi(module, source)
    except (RestoreError, XenApiError, Cancelled) as exc:
        _xenapi_module.fail(module, exc)
    except (Qcow2Error, VhdError) as exc:
        module.fail_json(msg='reading restore point %s failed: %s. Run xenserver.cbt_backup.backup_verify on %s'
                         % (source.point['id'], exc, params['repository']), error_type=type(exc).__name__,
                         error_code='POINT_DAMAGED')
    except (IOError, OSError) as exc:
        where = params['dest'] or params['repository']
        module.fail_json(msg='restoring to %s failed: %s' % (where, exc), error_type=type(exc).__name__,
                         error_code='WRITE_FAILED')
    for warning in source.warnings + result.pop('warnings', []):
        module.warn(warning)
    module.exit_json(**result)


def restore_to_vdi(module, source):
    params = module.params
    label = params['label'] or os.path.basename(os.path.normpath(params['repository']))
    watch = None if module.check_mode else _xenapi_module.start_progress(
        module, params['progress_file'], [label], params['lease_seconds'], 'nothing was restored')
    tracker = watch.disks[0] if watch else None
    client = _xenapi_module.make_client(module)
    state = 'failed'
    try:
        client.open()
        if tracker:
            tracker.running()
        result = _vdi_import.restore_to_vdi(client, source, sr=params['sr'], vdi=params['vdi'], name=params['name'],
                                            fmt=params['format'], force=params['force'], check_mode=module.check_mode,
                                            progress=tracker, cancel=watch.cancellation if watch else None)
        state = 'done'
        return result
    finally:
        if watch:
            tracker.ended(state if not watch.cancellation.is_set() else 'cancelled')
        _xenapi_module.close_after_progress(module, client, watch, params['logout_on_abandon'])


if __name__ == '__main__':
    main()
