# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM's configuration in every backup run: taken with the run's VM snapshot, checked, pruned with the run.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
"""

from __future__ import absolute_import, division, print_function

import os

from .._errors import CbtBackupError
from .._repository import retention as _retention
from .._repository import vm_configs as _vm_configs
from .._repository.store import MANIFEST, Repository
from .._time import format_utc, normalize_utc, parse_utc_or_none, utc_now
from .._xenapi.ops import snapshot as _snapshot_ops
from .._xenapi.ops import vm_config as _vm_config

__metaclass__ = type


def vm_dir(repository_root, vm_uuid):
    """Where a VM's disk repositories and configurations are: ``<repository_root>/<vm uuid>`` (backup_plan's
    layout)."""
    return os.path.join(os.path.abspath(repository_root), vm_uuid)


def snapshot_vm(client, ident, skip_disks=(), repository_root=None, run=None, check_mode=False):
    """Snapshot the VM's disks (ops.snapshot.snapshot_vm) and, with ``repository_root``, keep the VM's
    configuration, read from the same VM snapshot before it is destroyed, as the run ``run``'s (default now) in
    ``<repository_root>/<vm uuid>/vm-config/``: ``vm_config`` in the result is its file (in check mode, the file
    it would be). A configuration that cannot be read or written is a warning: the disks are backed up all the
    same, and a whole-VM restore of this run is then refused."""
    capture = _vm_config.capture if repository_root else None
    result = _snapshot_ops.snapshot_vm(client, ident, check_mode=check_mode, skip_disks=skip_disks, capture=capture)
    if not repository_root:
        return result
    captured = result.pop('captured', None)
    problem = result.pop('capture_error', None)
    run = normalize_utc(run) if run else format_utc(utc_now())
    where = vm_dir(repository_root, result['vm'])
    result['vm_config'] = None
    if check_mode:
        result['vm_config'] = os.path.join(_vm_configs.directory_of(where), _vm_configs.file_name(run))
        return result
    if not result['snapshots']:
        return result  # every disk skipped: nothing was snapshotted
    if captured is None:
        result['warnings'].append('the VM configuration could not be read from the VM snapshot (%s): this run can '
                                  'restore disks, not the whole VM' % problem)
        return result
    try:
        with _vm_configs.VmConfigs(where, write=True) as store:
            result['vm_config'] = store.save(dict(captured, run=run))
    except (IOError, OSError, _vm_configs.VmConfigError) as exc:
        result['warnings'].append('the VM configuration could not be kept in %s (%s): this run can restore disks, '
                                  'not the whole VM' % (_vm_configs.directory_of(where), exc))
    return result


def disk_repositories(vm_directory):
    """The disk repositories in a VM's directory (the subdirectories with a manifest)."""
    if not os.path.isdir(vm_directory):
        return []
    return sorted(os.path.join(vm_directory, name) for name in os.listdir(vm_directory)
                  if name != _vm_configs.DIRECTORY and os.path.isfile(os.path.join(vm_directory, name, MANIFEST)))


def point_run(point):
    """The backup run a restore point belongs to, as RFC 3339 UTC text (its ``run``, else its snapshot's time), or
    None (a point of the direct form records neither)."""
    when = parse_utc_or_none(point.get('run') or point.get('snapshot_time'))
    return format_utc(when) if when else None


def runs_with_points(vm_directory, predicted=None):
    """The runs that some disk of the VM still has a restore point of (read without locking: manifests are
    replaced atomically). ``predicted``: {disk repository: the point ids a check-mode prune keeps} for the
    disks whose prune a check-mode run only predicted."""
    runs = set()
    for path in disk_repositories(vm_directory):
        with Repository(path) as repo:
            kept = (predicted or {}).get(path)
            runs.update(point_run(point) for point in repo.points if kept is None or point['id'] in kept)
    runs.discard(None)
    return runs


def prune_configurations(repository, check_mode=False, predicted=None):
    """After a prune of the disk ``repository``: delete the configurations of its VM (its parent directory) whose run
    no disk of the VM has a point of any more. Returns the runs deleted (in check mode, that would be, given the
    ``predicted`` prunes: see :func:`runs_with_points`)."""
    vm_directory = os.path.dirname(os.path.abspath(repository))
    if not os.path.isdir(_vm_configs.directory_of(vm_directory)):
        return []
    with _vm_configs.VmConfigs(vm_directory, write=not check_mode) as store:
        return store.prune(runs_with_points(vm_directory, predicted), dry_run=check_mode)


def verify_configurations(repository, newest_run=None):
    """The check of the configurations of the disk ``repository``'s VM: ``checked``, ``problems``,
    ``unknown_files`` and ``newest_run_kept`` (whether the run of the newest point has one); None when the VM has
    none at all (backups made without repository_root, or by the direct forms)."""
    vm_directory = os.path.dirname(os.path.abspath(repository))
    if not os.path.isdir(_vm_configs.directory_of(vm_directory)):
        return None
    with _vm_configs.VmConfigs(vm_directory) as store:
        checked = store.verify()
        checked['newest_run_kept'] = None if newest_run is None else \
            normalize_utc(newest_run) in set(entry['run'] for entry in store.entries())
    return checked


class Pruning:
    """The backup_prune use case over disk repositories, one after another (:meth:`one`): each one's restore points
    by the rules (retention.prune_repository), then its VM's configurations whose run has no point left
    (``vm_configs_pruned``). In check mode the prunes already predicted count as done, so the prediction names
    the same runs, on the same repository, as the real run then deletes. A configuration prune that cannot tell
    which runs are left (another disk of the VM cannot be read) deletes nothing and warns."""

    def __init__(self, rules, check_mode=False):
        self.rules = rules
        self.check_mode = check_mode
        self.predicted = {}  # disk repository -> the point ids its check-mode prune keeps

    def one(self, repository):
        result = _retention.prune_repository(repository, self.rules, check_mode=self.check_mode)
        if self.check_mode:
            self.predicted[os.path.abspath(repository)] = set(result['kept'])
        try:
            result['vm_configs_pruned'] = prune_configurations(repository, check_mode=self.check_mode,
                                                               predicted=self.predicted)
        except (CbtBackupError, IOError, OSError) as exc:
            result['vm_configs_pruned'] = []
            result['warnings'].append('the VM configurations beside %s were not pruned: %s' % (repository, exc))
        if result['vm_configs_pruned']:  # in check mode too: the prediction
            result['changed'] = True
        return result
