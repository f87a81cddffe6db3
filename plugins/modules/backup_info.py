#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: backup_info
short_description: List the restore points of backup repositories with their sizes and ages
version_added: 0.1.0
description:
  - Reads the C(manifest.json) of a disk's backup repository (written by M(xenserver.cbt_backup.vdi_export) with
    O(xenserver.cbt_backup.vdi_export#module:repository)), or of every repository found in a directory tree, and lists
    the restore points with their sizes, ages and chain lengths.
  - Read only. It takes no lock and can run while a backup writes a repository; files of an unfinished or interrupted
    run are listed as RV(repositories[].leftovers), never as restore points.
  - A repository whose manifest cannot be read is reported with RV(repositories[].error) instead of failing the whole
    listing.
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
  path:
    description:
      - A repository directory (one disk, holding C(manifest.json)) or a directory below which repositories are
        searched.
      - Below a repository nothing more is searched; hidden directories and symbolic links to directories are skipped.
    type: path
    required: true
  max_depth:
    description:
      - How many directory levels below O(path) are searched for repositories.
    type: int
    default: 4
notes:
  - The XenAPI connection options are accepted so that C(group/xenserver.cbt_backup.all) in C(module_defaults) can
    set them for every module of the collection; this module does not connect to the XenAPI and ignores them.
  - The repository format is described in C(docs/repository.md).
seealso:
  - module: xenserver.cbt_backup.backup_verify
  - module: xenserver.cbt_backup.vdi_export
'''

EXAMPLES = r'''
- name: List every repository below /backups
  xenserver.cbt_backup.backup_info:
    path: /backups
  register: backups

- name: Show the newest restore point of each disk
  ansible.builtin.debug:
    msg: "{{ item.path }}: {{ item.newest }} ({{ item.points | length }} points, {{ item.total_bytes | human_readable }})"
  loop: "{{ backups.repositories | rejectattr('error', 'defined') }}"
'''

RETURN = r'''
repositories:
  description: The repositories found, sorted by path.
  type: list
  elements: dict
  returned: always
  contains:
    path:
      description: The repository directory.
      type: str
      sample: /backups/vm1/disk0
    error:
      description: Why the manifest could not be read (the other keys except RV(repositories[].path) are then absent).
      type: str
      returned: when the manifest is damaged
      sample: the manifest /backups/vm1/disk0/manifest.json is damaged (Expecting value...)
    error_code:
      description: The condition behind RV(repositories[].error), e.g. C(REPOSITORY_DAMAGED) or C(REPOSITORY_FOREIGN).
      type: str
      returned: when the manifest is damaged
      sample: REPOSITORY_DAMAGED
    disk:
      description: The disk the repository backs up (C(vdi_uuid), C(name), ...), as recorded in the manifest.
      type: dict
      sample: {vdi_uuid: 1b0c2f0e-5a4d-4c8e-9a55-0d6c1f3e2b7a, name: disk0}
    cbt_anchor:
      description: The snapshot uuid the next incremental must be compared against (the newest point's snapshot).
      type: str
      sample: 3f4e9a1c-7d0b-4c8e-9a55-0d6c1f3e2b7a
    newest:
      description: Id of the newest restore point (null when there is none).
      type: str
      sample: 20261125T140233Z-incr
    total_bytes:
      description: Sum of the file sizes of the restore points, in bytes.
      type: int
      sample: 4294967296
    leftovers:
      description:
        - Files of interrupted or running backups in the directory (never restore points), which the next backup or
          prune deletes (only files the repository's journal says this collection wrote).
      type: list
      elements: str
      sample: [.20261125T140233Z-incr.qcow2.partial-x1y2z3]
    unknown_files:
      description: Files in the directory that this collection did not write; never deleted.
      type: list
      elements: str
      sample: []
    manifest_damaged:
      description:
        - C(manifest.json) is damaged and the points listed are those of C(manifest.json.prev), the manifest before the
          last save. Backups and prunes refuse the repository until M(xenserver.cbt_backup.backup_verify) with
          O(xenserver.cbt_backup.backup_verify#module:rebuild_manifest=true) has written a new manifest.
      type: bool
      sample: false
    warnings:
      description: What a reader should know, e.g. that C(manifest.json) was damaged and C(manifest.json.prev) was read.
      type: list
      elements: str
      sample: []
    points:
      description: The restore points, oldest first.
      type: list
      elements: dict
      contains:
        id:
          description: Point id.
          type: str
          sample: 20261125T140233Z-incr
        time:
          description: When the point was written (RFC 3339 in UTC, Z).
          type: str
          sample: '2026-11-25T14:02:33Z'
        type:
          description: C(full) or C(incremental).
          type: str
          sample: incremental
        parent:
          description: Id of the point an incremental builds on (null for a full).
          type: str
          sample: 20261124T140101Z-full
        file:
          description: The qcow2 file name, in the repository directory.
          type: str
          sample: 20261125T140233Z-incr.qcow2
        file_present:
          description: Whether the file exists (use M(xenserver.cbt_backup.backup_verify) to check its content).
          type: bool
          sample: true
        snapshot_uuid:
          description: The snapshot the point was exported from.
          type: str
          sample: 3f4e9a1c-7d0b-4c8e-9a55-0d6c1f3e2b7a
        snapshot_time:
          description:
            - When that snapshot was taken, as the XenAPI reports it (null for points of the direct form of
              M(xenserver.cbt_backup.vdi_export)). The disks of one VM snapshot share it.
          type: str
          sample: 20261125T14:02:30Z
        run:
          description:
            - The backup run that wrote the point (the O(xenserver.cbt_backup.vdi_export#module:run) it was given; the
              role passes the UTC time its run started), else its RV(repositories[].points[].snapshot_time).
            - The points of the disks of one VM snapshot share it.
          type: str
          sample: 20261125T14:02:00Z
        virtual_size:
          description: Size of the disk, in bytes.
          type: int
          sample: 10737418240
        blocks:
          description: Number of 64 KiB blocks the file stores.
          type: int
          sample: 12
        bytes:
          description: Guest bytes stored (blocks recorded as all zero cost nothing).
          type: int
          sample: 786432
        file_size:
          description: Size of the file, in bytes.
          type: int
          sample: 917504
        age_seconds:
          description: Seconds since RV(repositories[].points[].time) (null if the time cannot be read).
          type: int
          sample: 3600
        chain_length:
          description: Number of files a restore of this point reads (1 for a full; null if a parent is not listed).
          type: int
          sample: 3
vm_configs:
  description:
    - The VM configurations kept beside the repositories found (M(xenserver.cbt_backup.vdi_snapshot)'s
      O(xenserver.cbt_backup.vdi_snapshot#module:repository_root)), one entry per VM directory that has them.
  type: list
  elements: dict
  returned: always
  contains:
    path:
      description: The directory of the configurations (C(<repository_root>/<vm uuid>/vm-config)).
      type: str
      sample: /backups/8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f/vm-config
    vm_uuid:
      description: The uuid of the VM (the name of its directory).
      type: str
      sample: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f
    configs:
      description: One per backup run, oldest first, with C(run), C(file), C(sha256), C(snapshot_time) and C(vm_name).
      type: list
      elements: dict
      sample: [{run: "2026-11-25T02:00:00Z", file: 20261125T020000Z.json, vm_name: web01,
                snapshot_time: "2026-11-25T02:00:04Z", sha256: 9f2c0e4b7a1d3c5e}]
    problems:
      description: What was wrong reading them (a lost or damaged manifest; the files are then listed from the directory).
      type: list
      elements: str
      sample: []
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.inspection import (
    DEFAULT_MAX_DEPTH,
    list_repositories,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.store import RepositoryError


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(  # accepted (and unused) for module_defaults of the group
            path=dict(type='path', required=True),
            max_depth=dict(type='int', default=DEFAULT_MAX_DEPTH),
        ),
        supports_check_mode=True,
    )
    if module.params['max_depth'] < 0:
        module.fail_json(msg='max_depth must be 0 or more', error_code='INVALID_OPTION')
    try:
        result = list_repositories(module.params['path'], max_depth=module.params['max_depth'])
    except RepositoryError as exc:
        _xenapi_module.fail(module, exc)
    except OSError as exc:
        module.fail_json(msg='reading %s failed: %s' % (module.params['path'], exc), error_code='READ_FAILED')
    for repository in result['repositories']:
        for warning in repository.get('warnings') or []:
            module.warn(warning)
    module.exit_json(changed=False, **result)


if __name__ == '__main__':
    main()
