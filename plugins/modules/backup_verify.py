#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: backup_verify
short_description: Verify the restore points of a backup repository (hashes, stored blocks, chain, qcow2 structure)
version_added: 0.1.0
description:
  - Checks every restore point of a disk's backup repository (or the chain of one point), oldest first, that the file
    exists and has the recorded size; that its sha256 equals the one in C(manifest.json); that its qcow2 structure is
    sound (aligned tables inside the file, no cluster used twice, refcounts matching, no leaks); that the digest of the
    blocks it stores equals the recorded one; and that the chain is consistent (the parent is listed, the image's
    backing file is the parent's file, the virtual sizes agree, a full point has no backing file).
  - If any point is bad the module fails, naming the first bad point, what is wrong with it and every restore point
    that cannot be trusted (the bad points and all points that build on them). The same fields as on success are
    returned with the failure.
  - With O(spot_check), also reads random 64 KiB blocks of the snapshot the newest verified point was taken from, over
    NBD, and compares them with the content of the point. This needs the XenAPI connection options and a snapshot
    that still holds data; after a normal backup run the snapshot has been reduced to C(cbt_metadata), and the spot
    check is then reported as skipped, not failed.
  - Read only (unless O(rebuild_manifest)). It takes no lock, so it can run while a backup writes the repository;
    files of that run are not restore points and are ignored.
  - When C(manifest.json) is damaged, the points of C(manifest.json.prev) are verified and the module fails with
    RV(manifest_damaged) set, because the previous manifest may lack the newest point. Rebuild the manifest with
    O(rebuild_manifest).
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Runs normally (it only reads); with O(rebuild_manifest), reports what would be rebuilt.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  repository:
    description:
      - One disk's repository directory (the one holding C(manifest.json)).
      - Exactly one of O(repository) and O(repositories) is required.
    type: path
  repositories:
    description:
      - The list form of O(repository), for many repositories in one task, one after another, each verified as
        O(repository) would be with the same other options. A repository that fails verification fails alone; the
        others are still verified, and each one's result is in RV(repositories).
    type: list
    elements: path
  point:
    description:
      - Verify only this restore point (its id, or V(latest)) and the points it builds on.
      - By default every point of the repository is verified.
    type: str
  read_data:
    description:
      - V(true) (the default) reads every file completely, once, for its sha256 and the digest of its stored blocks.
      - V(false) checks only what the image tables say (file sizes, qcow2 structure and refcounts, the number of stored
        blocks, the chain links) and reads no data, which costs a few milliseconds per point whatever the disk size. The
        role uses it right after an export, whose hashes were just taken from the file it wrote
        (C(incremental_backup_verify=structure)).
    type: bool
    default: true
  rebuild_manifest:
    description:
      - When C(manifest.json) is missing or damaged, rebuild it from the restore point files (their qcow2 headers,
        backing files and stored blocks), then verify the result. What only the old manifest knew (the snapshot of
        each point, the disk's facts) is taken from C(manifest.json.prev) where a file is unchanged.
      - Point files that cannot be read, or whose backing file is missing, are left out of the manifest (RV(rebuilt.unrestorable))
        and kept. Nothing is deleted; the damaged manifest is kept as C(manifest.json.damaged).
      - Unless the newest point is the one the previous manifest ended with, the CBT anchor is unknown and the next
        backup of the disk is a full one.
      - A sound manifest is left alone (C(changed=false)). Takes the repository's lock.
    type: bool
    default: false
  spot_check:
    description:
      - Number of random 64 KiB blocks of the newest verified point to re-read from its snapshot over NBD and compare
        (half of them among the blocks the chain stores data for, the rest anywhere on the disk).
      - V(0) (the default) reads nothing over the network and needs no XenAPI connection.
    type: int
    default: 0
  nbd_network:
    description:
      - With O(spot_check), read through this network (uuid or name) when the host has several NBD addresses.
    type: str
  tls:
    description:
      - With O(spot_check), use TLS to the NBD server and verify its certificate (the one C(VDI.get_nbd_info) returns).
      - Set to V(false) only for networks with purpose C(insecure_nbd).
    type: bool
    default: true
  tls_ca_path:
    description:
      - With O(spot_check), a PEM bundle of CA certificates for the fallback check of the NBD server certificate.
    type: path
  timeout:
    description:
      - With O(spot_check), seconds to wait for the NBD server to accept a connection or answer a request.
    type: float
    default: 60
notes:
  - Verification reads every file of the repository completely, once (the file hash and the stored blocks' digest
    come from the same read), so it takes about as long as reading the repository from its storage; with
    O(read_data=false) it reads only the tables.
  - The repository format is described in C(docs/repository.md).
seealso:
  - module: xenserver.cbt_backup.backup_info
  - module: xenserver.cbt_backup.vdi_export
'''

EXAMPLES = r'''
- name: Verify every restore point of a disk
  xenserver.cbt_backup.backup_verify:
    repository: /backups/vm1/disk0

- name: Check the structure of the newest point's chain without reading its data (right after a backup)
  xenserver.cbt_backup.backup_verify:
    repository: /backups/vm1/disk0
    point: latest
    read_data: false

- name: Verify the newest point's chain and compare 32 blocks with its snapshot, if it still holds data
  xenserver.cbt_backup.backup_verify:
    repository: /backups/vm1/disk0
    point: latest
    spot_check: 32
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"

- name: Check the newest chains of many repositories in one task
  xenserver.cbt_backup.backup_verify:
    repositories:
      - /backups/vm1/disk0
      - /backups/vm2/disk0
    point: latest
    read_data: false

- name: Report instead of failing, e.g. to alert and schedule a full backup
  xenserver.cbt_backup.backup_verify:
    repository: /backups/vm1/disk0
  register: verified
  ignore_errors: true
'''

RETURN = r'''
repositories:
  description:
    - With O(repositories), one result per repository, in the order given, each holding C(failed) and what this
      module returns for O(repository) (C(msg) and C(error_code) too when it failed). The other keys of this list
      are then not returned at the top level, except RV(ok) (whether every repository is sound).
  type: list
  elements: dict
  returned: O(repositories) is given
  sample: [{repository: /backups/vm1/disk0, failed: false, ok: true, points: [], first_bad: null, affected: []}]
ok:
  description:
    - Whether every verified point is sound (and the spot check, if it ran, found no difference).
    - With O(repositories), whether every repository is.
  type: bool
  returned: always
  sample: true
data_read:
  description: Whether the files were read and hashed (O(read_data)), or only their tables checked.
  type: bool
  returned: O(repository) is given
  sample: true
points:
  description: The verified points, oldest first.
  type: list
  elements: dict
  returned: O(repository) is given
  contains:
    id:
      description: Point id.
      type: str
      sample: 20261125T140233Z-incr
    ok:
      description: Whether this point's own file and its link to its parent are sound.
      type: bool
      sample: false
    problems:
      description: What is wrong with this point (empty when RV(points[].ok)).
      type: list
      elements: str
      sample: ['sha256 of the file is 0a73... but the manifest recorded 9b1c...']
first_bad:
  description: Id of the oldest bad point, or null.
  type: str
  returned: O(repository) is given
  sample: 20261125T140233Z-incr
affected:
  description: The restore points that cannot be trusted, in manifest order; the bad points and every point that builds
    on one of them.
  type: list
  elements: str
  returned: O(repository) is given
  sample: [20261125T140233Z-incr, 20261126T140112Z-incr]
leftovers:
  description:
    - Files of interrupted or running backups in the directory, which were not verified (never restore points); the next
      backup or prune deletes them (only files the repository's journal says this collection wrote).
  type: list
  elements: str
  returned: O(repository) is given
  sample: []
unknown_files:
  description: Files in the directory that this collection did not write; never verified, never deleted.
  type: list
  elements: str
  returned: O(repository) is given
  sample: []
manifest_damaged:
  description:
    - Whether C(manifest.json) was missing or damaged and the points of C(manifest.json.prev) were verified instead (the
      module then fails; rebuild the manifest with O(rebuild_manifest)).
  type: bool
  returned: O(repository) is given
  sample: false
rebuilt:
  description: What O(rebuild_manifest) did.
  type: dict
  returned: when O(rebuild_manifest=true)
  contains:
    damage:
      description: What was wrong with the manifest (null when it was sound and was left alone).
      type: str
      sample: the manifest /backup/vm1/disk0/manifest.json is missing
    points:
      description: Ids of the points the rebuilt manifest lists, oldest first.
      type: list
      elements: str
      sample: [20261125T020000Z-full, 20261126T020000Z-incr]
    unrestorable:
      description: Point files left out because they cannot be restored (C(file), C(problem)); their files are kept.
      type: list
      elements: dict
      sample: []
    carried:
      description: Points whose snapshot facts were taken from C(manifest.json.prev) (their file is unchanged).
      type: list
      elements: str
      sample: [20261125T020000Z-full]
    cbt_anchor:
      description: The CBT anchor of the rebuilt manifest; null means the next backup is a full one.
      type: str
      sample: null
    message:
      description: What was rebuilt, in one sentence.
      type: str
      sample: "the manifest /backup/vm1/disk0/manifest.json is missing: the manifest of /backup/vm1/disk0 was rebuilt
        from 2 restore point file(s); the next backup is a full one (the CBT anchor is not known)"
repository:
  description: The repository directory (absolute).
  type: str
  returned: O(repository) is given
  sample: /backups/vm1/disk0
message:
  description: A one-line summary.
  type: str
  returned: O(repository) is given
  sample: all 3 restore points of /backups/vm1/disk0 verified
spot_check:
  description: The spot check against the live snapshot.
  type: dict
  returned: when O(spot_check) > 0
  contains:
    skipped:
      description: Whether the spot check did not run.
      type: bool
      sample: true
    reason:
      description: Why it did not run.
      type: str
      returned: when skipped
      sample: snapshot 3f4e... holds no data any more (cbt_metadata)
    point:
      description: The point that was compared.
      type: str
      sample: 20261125T140233Z-incr
    checked:
      description: Number of blocks compared.
      type: int
      returned: when it ran
      sample: 32
    mismatches:
      description: Guest offsets of the blocks that differ.
      type: list
      elements: int
      returned: when it ran
      sample: []
    ok:
      description: Whether every compared block is equal.
      type: bool
      returned: when it ran
      sample: true
vm_configs:
  description:
    - The check of the VM configurations beside the repository (in its parent directory, the VM's), null when the
      VM has none. Each listed configuration is read and compared with its checksum.
    - A damaged or missing configuration is a warning, not a failure of the verification; the restore points
      are sound, only a whole-VM restore of that run is refused.
  type: dict
  returned: success, for each repository
  contains:
    checked:
      description: How many configurations were checked.
      type: int
      sample: 7
    problems:
      description: What is wrong with them.
      type: list
      elements: str
      sample: []
    unknown_files:
      description: Files in the configuration directory that it does not list (never touched).
      type: list
      elements: str
      sample: []
    newest_run_kept:
      description: Whether the run of the newest restore point has a configuration (null without points).
      type: bool
      sample: true
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import verify as _verify
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup.each import run_each
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import CbtBackupError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import validate_options
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.errors import NbdOptionError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.tls import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
)


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            repository=dict(type='path'),
            repositories=dict(type='list', elements='path'),
            point=dict(type='str'),
            read_data=dict(type='bool', default=True),
            rebuild_manifest=dict(type='bool', default=False),
            spot_check=dict(type='int', default=0),
            nbd_network=dict(type='str'),
            tls=dict(type='bool', default=True),
            tls_ca_path=dict(type='path'),
            timeout=dict(type='float', default=60),
        ),
        mutually_exclusive=[('repository', 'repositories')],
        required_one_of=[('repository', 'repositories')],
        supports_check_mode=True,
    )
    params = module.params
    if params['spot_check'] < 0:
        module.fail_json(msg='spot_check must be 0 or more, not %d' % params['spot_check'], error_code='INVALID_OPTION')
    try:
        validate_options(timeout=params['timeout'])
    except NbdOptionError as exc:
        _xenapi_module.fail(module, exc)
    if params['spot_check']:
        if not params['hostname']:
            module.fail_json(msg='spot_check needs the XenAPI connection to find the snapshot: set hostname (or '
                                 'XENSERVER_HOST), or spot_check: 0', error_code='INVALID_OPTION')
        if params['tls'] and not HAS_CRYPTOGRAPHY:
            module.fail_json(msg=missing_required_lib('cryptography'), exception=str(CRYPTOGRAPHY_IMPORT_ERROR), error_code='LIBRARY_MISSING')

    def one(path):
        return _verify.verify(path, point=params['point'], read_data=params['read_data'],
                              rebuild_manifest=params['rebuild_manifest'], spot_check=params['spot_check'],
                              make_client=lambda: _xenapi_module.make_client(module), nbd_network=params['nbd_network'],
                              tls=params['tls'], tls_ca_path=params['tls_ca_path'], timeout=params['timeout'],
                              check_mode=module.check_mode)

    if params['repositories'] is not None:
        # Repositories are read one after another: verifying several at once on one storage only adds seeks.
        outcomes = run_each(params['repositories'], one)
        entries = _xenapi_module.item_entries(module, outcomes, lambda index: {'repository': params['repositories'][index]})
        _xenapi_module.exit_with_items(module, 'repositories', entries, 'VERIFY_FAILED', 'verifications', 'repository',
                                       ok=all(entry.get('ok') for entry in entries))
    try:
        result = one(params['repository'])
    except CbtBackupError as exc:
        _xenapi_module.fail(module, exc)
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
