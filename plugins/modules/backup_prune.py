#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: backup_prune
short_description: Remove old restore points from a backup repository, keeping every kept point restorable
version_added: 0.1.0
description:
  - Applies retention rules to the restore points of one disk's repository (a directory written by
    M(xenserver.cbt_backup.vdi_export) with O(xenserver.cbt_backup.vdi_export#module:repository)).
  - A point is kept if any rule keeps it. The newest point is always kept, it is the CBT anchor the next incremental
    backup builds on. Days, weeks and months are UTC and taken from each point's C(time); periods without a point do
    not count, so a repository whose backups stopped is not emptied by the passing of time.
  - A kept incremental point whose older points are removed is merged, at the cost of the blocks the merge folds,
    not of the disk. When the removed points reach the chain's full, the kept point's blocks and those of the removed
    incrementals are folded into the full's file in place (into unused space, then one header write switches the file
    over), and that file takes the kept point's name, so the points built on it stay unchanged; the point becomes a
    full (RV(merged) method C(fold)). When a kept older point remains, the kept point's file is rewritten as an
    overlay of it holding the removed points' blocks it does not override (method C(overlay)). Only where a removed
    point's file also serves a point outside the chain is the kept point rewritten as a whole full image
    (method C(rewrite)). The removed files are deleted last.
  - The merge is journaled in the manifest. If a run is interrupted at any moment every kept point stays restorable,
    and the next run (of this module or any run that calls the recovery) finishes or rolls back the merge and
    deletes files that no longer belong to a restore point.
  - Holds the repository's write lock; fails if another run writes the repository.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Reports what would be kept, removed and merged; touches nothing.
    support: full
  diff_mode:
    description: Shows the list of restore points before and after.
    support: full
options:
  repository:
    description:
      - The repository directory of one disk (the one that holds C(manifest.json)).
      - Exactly one of O(repository) and O(repositories) is required.
    type: path
  repositories:
    description:
      - The list form of O(repository), for many repositories pruned by the same rules in one task, one after another.
      - A repository whose prune fails fails alone; the others are still pruned, and each one's result is in
        RV(repositories).
    type: list
    elements: path
  keep_last:
    description:
      - Keep the N newest restore points.
    type: int
  keep_days:
    description:
      - Keep every restore point taken during the last N days (N times 24 hours before now).
    type: int
  keep_daily:
    description:
      - Keep the newest restore point of each of the N most recent days (UTC) that have one.
    type: int
  keep_weekly:
    description:
      - Keep the newest restore point of each of the N most recent ISO weeks (Monday to Sunday, UTC) that have one.
    type: int
  keep_monthly:
    description:
      - Keep the newest restore point of each of the N most recent calendar months (UTC) that have one.
    type: int
notes:
  - The XenAPI connection options are accepted so that C(group/xenserver.cbt_backup.all) in C(module_defaults) can
    set them for every module of the collection; this module does not connect to the XenAPI and ignores them.
  - At least one of O(keep_last), O(keep_days), O(keep_daily), O(keep_weekly) and O(keep_monthly) is required.
  - A merge needs free space for the blocks it folds (a fold or an overlay) or for a whole image (a rewrite). Without
    it the module fails with a message saying so; every listed point stays restorable and the next run with room
    finishes a fold that had started.
  - A fold writes the folded blocks plus the image's tables (2 bytes of refcounts per 64 KiB of the file, 3 MiB per
    100 GiB), then reads the merged file once to record its sha256 and block digest.
  - The ids of merged points keep their suffix (for example C(-incr)); their C(type) in the manifest becomes C(full)
    after a fold or a rewrite and stays C(incremental), with the kept older point as parent, after an overlay.
'''

EXAMPLES = r'''
- name: Keep a week of daily points and a year of monthly ones
  xenserver.cbt_backup.backup_prune:
    repository: /backup/web01/xvda
    keep_daily: 7
    keep_monthly: 12

- name: Keep only the last three restore points
  xenserver.cbt_backup.backup_prune:
    repository: /backup/web01/xvda
    keep_last: 3
  check_mode: true
  register: preview

- name: Apply one retention to many repositories in one task
  xenserver.cbt_backup.backup_prune:
    repositories:
      - /backup/web01/xvda
      - /backup/db01/xvda
    keep_last: 7
'''

RETURN = r'''
repositories:
  description:
    - With O(repositories), one result per repository, in the order given, each holding C(failed) and what this
      module returns for O(repository) (C(msg) and C(error_code) instead of the lists when it failed). The other
      keys are then not returned at the top level, except RV(bytes_written) and RV(bytes_freed) (their sums).
  type: list
  elements: dict
  returned: O(repositories) is given
  sample: [{repository: /backup/web01/xvda, failed: false, changed: true, kept: [20261125T020000Z-incr], removed: []}]
repository:
  description: Absolute path of the repository.
  type: str
  returned: O(repository) is given
  sample: /backup/web01/xvda
kept:
  description: Ids of the restore points that are kept, oldest first.
  type: list
  elements: str
  returned: success, with O(repository)
  sample: [20261120T020000Z-full, 20261125T020000Z-incr]
removed:
  description: Ids of the restore points removed (in check mode, that would be removed), oldest first.
  type: list
  elements: str
  returned: success, with O(repository)
  sample: [20261119T020000Z-incr]
reasons:
  description: For each kept point, the rules that keep it (C(newest) for the newest point).
  type: dict
  returned: success, with O(repository)
  sample: {20261125T020000Z-incr: [newest, keep_last]}
merged:
  description:
    - Kept points whose removed parents were merged into them, by id. C(merged) lists the points whose blocks were
      folded in, C(method) how (C(fold), C(overlay) or C(rewrite), see the description); outside check mode
      C(sha256), C(blocks), C(bytes) and C(file_size) describe the point's new file.
  type: dict
  returned: success, with O(repository)
  sample: {20261121T020000Z-incr: {merged: [20261120T020000Z-incr, 20261119T020000Z-full], method: fold, blocks: 310,
           bytes: 20316160, file_size: 20578304, sha256: 5d41402abc4b2a76b9719d911017c592}}
bytes_written:
  description:
    - Bytes the merges wrote into repository files (folded blocks and image tables; a whole image for a rewrite).
      Manifest saves are not counted. 0 in check mode.
  type: int
  returned: success
  sample: 6566335
bytes_freed:
  description:
    - Bytes of repository files freed (removed files minus the growth of merged ones). In check mode the size of the
      files that would be removed, an upper bound.
  type: int
  returned: success
  sample: 104857600
recovered:
  description:
    - What was done about an interrupted earlier run before pruning. C(action) is C(none), C(finished) (the merge of
      C(point) was completed) or C(rolled_back); C(deleted) lists the files of interrupted runs that were deleted
      (only files the repository's journal says this collection wrote).
  type: dict
  returned: success, with O(repository)
  sample: {action: none, point: null, deleted: []}
unknown_files:
  description:
    - Files in the repository directory that this collection did not write (not listed, not in its journal). They are
      never deleted; a warning names them.
  type: list
  elements: str
  returned: success, with O(repository)
  sample: [notes.txt]
recovery_pending:
  description: In check mode, whether an interrupted earlier run would be finished or rolled back first.
  type: bool
  returned: check mode
  sample: false
vm_configs_pruned:
  description:
    - The runs whose VM configuration was deleted (in check mode, would be) beside the repository, because no
      disk of the VM has a restore point of that run any more. A configuration newer than every point is kept
      (its run is still going, or its exports failed). When another disk of the VM cannot be read, nothing is
      deleted and a warning says why.
  type: list
  elements: str
  returned: success, for each repository
  sample: ["2026-11-18T02:00:00Z"]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_configuration as _vm_configuration
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup.each import run_each
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import CbtBackupError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import retention


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(  # accepted (and unused) for module_defaults of the group
            repository=dict(type='path'),
            repositories=dict(type='list', elements='path'),
            keep_last=dict(type='int'),
            keep_days=dict(type='int'),
            keep_daily=dict(type='int'),
            keep_weekly=dict(type='int'),
            keep_monthly=dict(type='int'),
        ),
        mutually_exclusive=[('repository', 'repositories')],
        required_one_of=[retention.RULES, ('repository', 'repositories')],
        supports_check_mode=True,
    )
    params = module.params
    rules = dict((name, params[name]) for name in retention.RULES)

    pruning = _vm_configuration.Pruning(rules, check_mode=module.check_mode)

    def one(path):
        result = pruning.one(path)
        before = result.pop('before')
        if module._diff:  # pylint: disable=protected-access
            result['diff'] = {'before': '\n'.join(before) + '\n' if before else '',
                              'after': '\n'.join(result['kept']) + '\n' if result['kept'] else ''}
        return result

    if params['repositories'] is not None:
        try:
            retention.validate_rules(rules)  # once, before any repository is touched
        except CbtBackupError as exc:
            _xenapi_module.fail(module, exc)
        # One repository after another: merges on one storage do not gain from running side by side.
        outcomes = run_each(params['repositories'], one)
        entries = _xenapi_module.item_entries(module, outcomes, lambda index: {'repository': params['repositories'][index]})
        _xenapi_module.exit_with_items(module, 'repositories', entries, 'PRUNE_FAILED', 'prunes', 'repository',
                                       bytes_written=sum(entry.get('bytes_written', 0) for entry in entries),
                                       bytes_freed=sum(entry.get('bytes_freed', 0) for entry in entries))
    try:
        result = one(params['repository'])
    except CbtBackupError as exc:
        _xenapi_module.fail(module, exc, repository=params['repository'])
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
