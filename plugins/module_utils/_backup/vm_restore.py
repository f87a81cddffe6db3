# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whole-VM restore: a backup run's VM configuration and disks into a new VM, on this pool or another one.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

The run is the newest one (at or before a time) that has a VM configuration and a restore point of every disk
the configuration lists (``choose_run``). Everything the configuration needs of the target pool is resolved
before anything is created (``plan_new_vm``: an SR per disk, a network per interface), so a wrong map fails
at once. Then the VM, its disks, drives and interfaces are created, each recorded in a :class:`Created` journal;
if anything fails, everything in the journal is destroyed again (newest first) and the error says whether that
worked, so no half VM is left.
"""

from __future__ import absolute_import, division, print_function

import os
import threading
import time

from .._errors import Cancelled, CbtBackupError
from .._extents import CBT_BLOCK_SIZE
from .._repository import vm_configs as _vm_configs
from .._repository.restore import RestoreSource
from .._repository.store import Repository
from .._time import normalize_utc
from .._xenapi.client import NULL_REF, UUID_RE, XenApiError
from .._xenapi import cbt_bitmap as _cbt
from .._xenapi import model as _objects
from .._xenapi.ops import vdi_import as _vdi_import
from . import vm_configuration as _vm_configuration
from .each import XENAPI_WORKERS, run_each_with_client

__metaclass__ = type

# Fields VM.create needs that a configuration does not carry (they belong to one VM on one pool).
VM_CREATE_DEFAULTS = {
    'is_a_template': False, 'affinity': NULL_REF, 'ha_always_run': False, 'ha_restart_priority': '',
    'blocked_operations': {}, 'protection_policy': NULL_REF, 'is_snapshot_from_vmpp': False,
    'appliance': NULL_REF, 'start_delay': '0', 'shutdown_delay': '0', 'order': '0', 'suspend_SR': NULL_REF,
    'version': '0', 'memory_target': '0',
}
# Configuration fields not given to VM.create for a new VM: a new VM is a new generation (Windows' VM generation
# id must change when a VM is copied), and its name is the restore's.
NOT_COPIED_TO_A_NEW_VM = ('generation_id', 'name_label')
VBD_CREATE_FIELDS = ('userdevice', 'bootable', 'mode', 'type', 'unpluggable', 'other_config',
                     'qos_algorithm_type', 'qos_algorithm_params')
VIF_CREATE_FIELDS = ('device', 'MTU', 'other_config', 'qos_algorithm_type', 'qos_algorithm_params',
                     'locking_mode', 'ipv4_allowed', 'ipv6_allowed')
NO_NETWORK = 'none'
# Disks of a new VM uploaded at once, each an HTTP PUT of its own (import_raw_vdi) on a connection of its own.
UPLOAD_WORKERS = XENAPI_WORKERS


class VmRestoreError(CbtBackupError):
    """A whole-VM restore that cannot be done as asked."""

    code = 'VM_RESTORE_FAILED'


# -- the backup run ----------------------------------------------------------------------------------------


def find_vm_directory(repository_root, vm):
    """The directory of the VM ``vm`` (its uuid, or the name it had when it was backed up) below the root."""
    root = os.path.abspath(repository_root)
    if UUID_RE.match(vm) and os.path.isdir(os.path.join(root, vm)):
        return os.path.join(root, vm)
    if not os.path.isdir(root):
        raise VmRestoreError('the repository root %s does not exist' % root, code='NOT_FOUND')
    named = []
    unreadable = []  # another VM's store that cannot be read may hold the same name
    for entry in sorted(os.listdir(root)):
        directory = os.path.join(root, entry)
        if not os.path.isdir(_vm_configs.directory_of(directory)):
            continue
        try:
            with _vm_configs.VmConfigs(directory) as store:
                names = set(config.get('vm_name') for config in store.entries())
        except (OSError, CbtBackupError) as exc:
            unreadable.append('%s (%s)' % (entry, exc))
            continue
        if vm in names:
            named.append(directory)
    if unreadable:
        raise VmRestoreError('the VM configurations of %s below %s could not be read, so which VM had the name "%s" is '
                             'not certain: give the VM\'s uuid instead (the directory name below %s), or repair them'
                             % ('; '.join(unreadable), root, vm, root), code='REPOSITORY_ERROR')
    if not named:
        raise VmRestoreError('no VM with the uuid or name "%s" has a VM configuration below %s: back it up with the '
                             'role (or vdi_snapshot with repository_root) first' % (vm, root), code='NOT_FOUND')
    if len(named) > 1:
        raise VmRestoreError('several VMs named "%s" have backups below %s (%s): give the uuid' % (
            vm, root, ', '.join(os.path.basename(d) for d in named)), code='AMBIGUOUS')
    return named[0]


def disk_vbds(config):
    return [vbd for vbd in config['vbds'] if vbd.get('disk')]


def _point_ids_by_run(repository):
    """{run: id of the newest restore point of that run} of a disk repository (empty when there is none)."""
    if not os.path.isdir(repository):
        return {}
    with Repository(repository) as repo:
        return dict((_vm_configuration.point_run(p), p['id']) for p in repo.points)


def choose_run(vm_directory, point='latest'):
    """``(config, {disk uuid: (repository, point id)})`` of the newest run at or before ``point`` (RFC 3339 UTC
    text, or 'latest') that has a configuration and a restore point of every disk it lists."""
    with _vm_configs.VmConfigs(vm_directory) as store:
        entries = store.entries()
        if point and point != 'latest':
            entries = [e for e in entries if e['run'] <= normalize_utc(point)]
        incomplete = []
        by_run = {}  # disk repository -> _point_ids_by_run, each manifest read once however many runs are tried
        for entry in reversed(entries):
            try:
                config = store.load(entry['run'])
            except _vm_configs.VmConfigError as exc:  # a damaged one: an older run may still do
                incomplete.append('%s (%s)' % (entry['run'], exc.message))
                continue
            points = {}
            for vbd in disk_vbds(config):
                repository = os.path.join(vm_directory, vbd['disk']['disk_uuid'])
                if repository not in by_run:
                    by_run[repository] = _point_ids_by_run(repository)
                points[vbd['disk']['disk_uuid']] = (repository, by_run[repository].get(entry['run']))
            missing = sorted(uuid for uuid, (dummy, point_id) in points.items() if point_id is None)
            if not missing:
                return config, points
            incomplete.append('%s (no restore point of %s)' % (entry['run'], ', '.join(missing)))
    raise VmRestoreError('no backup run of the VM in %s%s has its configuration and a restore point of every disk%s'
                         % (vm_directory, ' at or before %s' % point if point and point != 'latest' else '',
                            ': ' + '; '.join(incomplete) if incomplete else ' (there is no VM configuration)'),
                         code='NO_COMPLETE_RUN')


# -- what the target pool provides ---------------------------------------------------------------------------


def _lookup(mapping, *keys):
    for key in keys:
        if key is not None and str(key) in mapping:
            return mapping[str(key)]
    return None


def _existing(client, cls, uuid, name):
    """``(ref, record)`` of the ``cls`` object with this uuid, else with this name, else None."""
    for ident in (uuid, name):
        if not ident:
            continue
        try:
            return client.find(cls, ident)
        except XenApiError as exc:
            if exc.code not in ('NOT_FOUND', 'AMBIGUOUS'):
                raise
    return None


def plan_new_vm(client, config, sr_map=None, default_sr=None, network_map=None, default_network=None):
    """Resolve an SR for every disk and a network (or none) for every interface; raise naming the option when one
    cannot be found. Returns ``{'disks': [(vbd, sr ref, sr record)], 'vifs': [(vif, network ref or None, record)]}``."""
    sr_map = sr_map or {}
    network_map = network_map or {}
    disks = []
    for vbd in disk_vbds(config):
        disk = vbd['disk']
        wanted = _lookup(sr_map, disk['disk_uuid'], disk['name_label'], vbd['userdevice']) or default_sr
        if wanted:
            try:
                ref, record = _vdi_import.find_sr(client, wanted)
            except XenApiError as exc:
                raise VmRestoreError('the SR "%s" for the disk %s (userdevice %s): %s; fix sr_map or default_sr' % (
                    wanted, disk['name_label'], vbd['userdevice'], exc.message), code=exc.code)
        else:
            found = _existing(client, 'SR', disk.get('sr_uuid'), disk.get('sr_name'))
            if found is None:
                raise VmRestoreError('the disk %s (userdevice %s) was on the SR %s (%s), which this pool does not have: '
                                     'give default_sr or map the disk in sr_map' % (
                                         disk['name_label'], vbd['userdevice'], disk.get('sr_name'), disk.get('sr_uuid')),
                                     code='SR_NOT_FOUND')
            ref, record = found
        disks.append((vbd, ref, record))
    vifs = []
    for vif in config['vifs']:
        source = vif['network']
        wanted = _lookup(network_map, source.get('uuid'), source.get('name_label'))
        if wanted is None and default_network is None:
            found = _existing(client, 'network', source.get('uuid'), source.get('name_label'))
            if found is None:
                raise VmRestoreError('the interface %s was on the network %s (%s), which this pool does not have: map it '
                                     'in network_map, or give default_network (a network, or none to leave such '
                                     'interfaces out)' % (vif['device'], source.get('name_label'), source.get('uuid')),
                                     code='NETWORK_NOT_FOUND')
            vifs.append((vif,) + found)
            continue
        wanted = default_network if wanted is None else wanted
        if wanted == NO_NETWORK or wanted == '':
            vifs.append((vif, None, None))
            continue
        try:
            vifs.append((vif,) + client.find('network', wanted))
        except XenApiError as exc:
            raise VmRestoreError('the network "%s" for the interface %s: %s; fix network_map or default_network' % (
                wanted, vif['device'], exc.message), code=exc.code)
    return {'disks': disks, 'vifs': vifs}


# -- creating, and undoing it --------------------------------------------------------------------------------


class Created:
    """What a restore created, newest last, so that a failure can destroy it again."""

    def __init__(self, client):
        self.client = client
        self.items = []  # (kind, ref)

    def add(self, kind, ref):
        self.items.append((kind, ref))
        return ref

    def rollback(self):
        """Destroy everything, newest first; returns the problems (empty: nothing is left)."""
        problems = []
        for kind, ref in reversed(self.items):
            try:
                if kind == 'VM':
                    if self.client.call('VM.get_power_state', ref) != 'Halted':
                        self.client.call('VM.hard_shutdown', ref)
                    self.client.call('VM.destroy', ref)
                elif kind == 'VDI':
                    self.client.call('VDI.destroy', ref)
                elif kind == 'VDI by uuid':
                    self.client.call('VDI.destroy', self.client.call('VDI.get_by_uuid', ref))
                else:
                    self.client.call('%s.destroy' % kind, ref)
            except XenApiError as exc:
                if exc.code not in ('HANDLE_INVALID', 'UUID_INVALID'):  # already gone
                    problems.append('%s %s: %s' % (kind, ref, exc.message))
        self.items = []
        return problems


def vm_record(config, name, keep_generation=False):
    """The VM.create argument of a configuration."""
    record = dict(VM_CREATE_DEFAULTS)
    for field, value in config['vm'].items():
        if field not in NOT_COPIED_TO_A_NEW_VM or (keep_generation and field == 'generation_id'):
            record[field] = value
    record['name_label'] = name
    return record


def chosen_run(vm_directory, point='latest'):
    """:func:`choose_run`, with a repository that cannot be read as a VmRestoreError."""
    try:
        return choose_run(vm_directory, point)
    except (IOError, OSError) as exc:
        raise VmRestoreError('reading the backups in %s failed: %s' % (vm_directory, exc), code='READ_FAILED')


def disk_labels(config):
    """The progress labels of the disks a restore of ``config`` uploads, in order: VM/disk."""
    return ['%s/%s' % (config['vm'].get('name_label'), vbd['disk']['name_label']) for vbd in disk_vbds(config)]


def restore_new_vm(client, chosen, name=None, name_suffix=' (restored)', sr_map=None, default_sr=None,
                   network_map=None, default_network=None, keep_macs=False, start=False, check_mode=False,
                   disk_progress=None, cancel=None):
    """Restore the run ``chosen`` (:func:`chosen_run`'s ``(config, points)``) as a new VM (see the module
    docstring); the result dict. ``disk_progress``: a progress.DiskProgress per disk (in :func:`disk_labels`
    order); ``cancel``: a progress.Cancellation that stops the upload running (which fails the restore)."""
    config, points = chosen
    plan = plan_new_vm(client, config, sr_map=sr_map, default_sr=default_sr, network_map=network_map,
                       default_network=default_network)
    # a copy beside the original (the name made with the suffix) gets the suffix on its disks' names too, so that
    # names still tell the original's disks from the copy's; a VM restored under a name given keeps the saved ones
    disk_suffix = '' if name else (name_suffix or '')
    name = name or (config['vm'].get('name_label') or 'vm') + (name_suffix or '')
    result = {'changed': True, 'run': config['run'], 'source_vm': config['source'], 'warnings': [],
              'vm': {'uuid': None, 'name': name, 'power_state': 'Running' if start else 'Halted'},
              'disks': [], 'vifs': [], 'cds': []}
    for vbd, dummy, sr in plan['disks']:
        repository, point_id = points[vbd['disk']['disk_uuid']]
        result['disks'].append({'userdevice': vbd['userdevice'], 'source_disk': vbd['disk']['disk_uuid'],
                                'name': vbd['disk']['name_label'], 'repository': repository, 'point': point_id,
                                'label': '%s/%s' % (config['vm'].get('name_label'), vbd['disk']['name_label']),
                                'sr': sr['uuid'], 'vdi': None, 'bytes_sent': 0})
    for vif, dummy, network in plan['vifs']:
        if network is None:
            result['warnings'].append('the interface %s (network %s) is left out: it is mapped to no network'
                                      % (vif['device'], vif['network'].get('name_label')))
            continue
        result['vifs'].append({'device': vif['device'], 'network': network['uuid'],
                               'MAC': vif['MAC'] if keep_macs else None})
    for vbd in config['vbds']:
        if not vbd.get('disk') and vbd.get('type') == 'CD':
            result['cds'].append({'userdevice': vbd['userdevice'], 'empty': True,
                                  'was': (vbd.get('iso') or {}).get('name_label')})
    if check_mode:
        return result
    created = Created(client)
    failed_disk = None  # the disk whose upload failed first (not one stopped by it, nor a cancelled run)
    try:
        vm_ref = created.add('VM', client.call('VM.create', vm_record(config, name)))
        result['vm']['uuid'] = client.call('VM.get_uuid', vm_ref)
        uploads = _upload_disks(client, plan['disks'], result['disks'], disk_suffix, disk_progress, cancel)
        for uploaded in uploads.results:  # every VDI made is journaled before the first error is raised
            if isinstance(uploaded, dict):
                created.add('VDI by uuid', uploaded['vdi']['uuid'])
        if uploads.first_error is not None:
            if not isinstance(uploads.first_error, Cancelled):
                failed_disk = uploads.failed_disk
            raise uploads.first_error
        for (vbd, sr_ref, sr), disk, uploaded in zip(plan['disks'], result['disks'], uploads.results):
            disk.update(vdi=uploaded['vdi']['uuid'], bytes_sent=uploaded.get('bytes_sent', 0))
            vdi_ref = client.call('VDI.get_by_uuid', uploaded['vdi']['uuid'])
            result['warnings'].extend(uploaded.get('warnings') or [])
            created.add('VBD', client.call('VBD.create', _vbd_record(vbd, vm_ref, vdi_ref)))
        for vbd in config['vbds']:
            if not vbd.get('disk') and vbd.get('type') == 'CD':
                created.add('VBD', client.call('VBD.create', _vbd_record(vbd, vm_ref, NULL_REF, empty=True)))
        for (vif, network_ref, network) in plan['vifs']:
            if network_ref is not None:
                created.add('VIF', client.call('VIF.create', _vif_record(vif, vm_ref, network_ref, keep_macs)))
        for entry, vif_ref in zip(result['vifs'], [ref for kind, ref in created.items if kind == 'VIF']):
            entry['MAC'] = client.call('VIF.get_MAC', vif_ref)
    except (CbtBackupError, IOError, OSError) as exc:
        problems = created.rollback()
        message = getattr(exc, 'message', None) or str(exc)
        if failed_disk is not None:
            message = 'the disk %s: %s' % (failed_disk, message)
        raise VmRestoreError('restoring %s as a new VM failed: %s. %s' % (
            config['vm'].get('name_label'), message.rstrip('.'),
            'Everything it had created was destroyed again.' if not problems else
            'Destroying what it had created failed for: %s; destroy these by hand.' % '; '.join(problems)),
            code=getattr(exc, 'code', None) or 'VM_RESTORE_FAILED')
    # the VM is complete: a start that fails (no host with room) leaves it halted, it does not undo the restore
    result['vm']['power_state'] = 'Halted'
    if start:
        try:
            client.call('VM.start', vm_ref, False, False)
            result['vm']['power_state'] = 'Running'
        except XenApiError as exc:
            result['warnings'].append('the restored VM %s could not be started: %s; it is complete, start it when the '
                                      'pool has room' % (name, exc.message))
    return result


class _Uploads:
    """The uploads of one new VM's disks: their results, and the first error, which stops the others.

    ``is_set()`` / ``error()`` are the cancel every upload checks between its pieces: set by the run's ``cancel``
    (the progress lease ran out) or by the first upload that failed, so that a restore that cannot succeed stops
    sending the other disks."""

    def __init__(self, cancel):
        self._cancel = cancel
        self._lock = threading.Lock()
        self.first_error = None   # the exception itself (a CbtBackupError or an OSError reading the repository)
        self.failed_disk = None
        self.results = []

    def failed(self, name, exc):
        if not isinstance(exc, (CbtBackupError, IOError, OSError)):  # still an answer, and still rolled back
            exc = CbtBackupError('unexpected error uploading the disk %s: %s: %s' % (name, type(exc).__name__, exc),
                                 code='UNEXPECTED_ERROR')
        with self._lock:
            if self.first_error is None:
                self.failed_disk = name  # before first_error: is_set() and error() read without the lock
                self.first_error = exc

    def is_set(self):
        return self.first_error is not None or (self._cancel is not None and self._cancel.is_set())

    def error(self):
        if self._cancel is not None and self._cancel.is_set():
            return self._cancel.error()
        return Cancelled('stopped because the upload of the disk %s failed' % self.failed_disk)


def _upload_disks(client, plan_disks, disks, disk_suffix, disk_progress, cancel):
    """Upload every disk of a new VM into a new VDI, UPLOAD_WORKERS at once; an :class:`_Uploads` whose
    ``results`` are, per disk in plan order, restore_to_vdi's result dict or the error that ended it.

    An upload that fails destroys its own VDI (restore_to_vdi) and stops the ones still running; the VDIs of those
    that finished are the caller's to journal and destroy."""
    uploads = _Uploads(cancel)

    def name_of(index):
        return '%s (device %s)' % (disks[index]['name'], disks[index]['userdevice'])

    def upload_one(worker_client, index):
        (vbd, dummy, sr), disk = plan_disks[index], disks[index]
        progress = disk_progress[index] if disk_progress else None
        try:
            if uploads.is_set():  # not started: a disk before it failed, or the run was cancelled
                raise uploads.error()
            if progress is not None:
                progress.running()
            with RestoreSource(disk['repository'], disk['point']) as source:
                uploaded = _vdi_import.restore_to_vdi(worker_client, source, sr=sr['uuid'],
                                                      name=vbd['disk']['name_label'] + disk_suffix,
                                                      progress=progress, cancel=uploads)
        except Exception as exc:  # pylint: disable=broad-except
            uploads.failed(name_of(index), exc)
            if progress is not None:
                progress.ended('cancelled' if isinstance(exc, Cancelled) else 'failed')
            raise
        if progress is not None:
            progress.ended('done')
        return uploaded

    uploads.results = run_each_with_client(client, range(len(disks)), upload_one, UPLOAD_WORKERS)
    for index, outcome in enumerate(uploads.results):
        if not isinstance(outcome, dict):  # also a worker that never ran upload_one (no connection of its own)
            uploads.failed(name_of(index), outcome if isinstance(outcome, BaseException) else CbtBackupError(
                'the upload did not end', code='UNEXPECTED_ERROR'))
    return uploads


def _vbd_record(vbd, vm_ref, vdi_ref, empty=False):
    record = dict((field, vbd[field]) for field in VBD_CREATE_FIELDS if field in vbd)
    record.update(VM=vm_ref, VDI=vdi_ref, empty=empty)
    record.setdefault('other_config', {})
    record.setdefault('qos_algorithm_type', '')
    record.setdefault('qos_algorithm_params', {})
    return record


def _vif_record(vif, vm_ref, network_ref, keep_mac):
    record = dict((field, vif[field]) for field in VIF_CREATE_FIELDS if field in vif)
    record.update(VM=vm_ref, network=network_ref, MAC=vif['MAC'] if keep_mac else '')
    record.setdefault('other_config', {})
    record.setdefault('qos_algorithm_type', '')
    record.setdefault('qos_algorithm_params', {})
    return record


# -- health check --------------------------------------------------------------------------------------------


def agent_reported(client, vm_ref, guest_key=None):
    """Whether the VM's guest agent has reported (VM_guest_metrics with an OS or PV driver version), or, with
    ``guest_key``, whether the guest has written xenstore ``control/<guest_key>`` (xapi copies every control/* key
    of the guest into VM_guest_metrics.other)."""
    metrics = client.call('VM.get_guest_metrics', vm_ref)
    if not metrics or metrics == NULL_REF:
        return False
    try:
        record = client.call('VM_guest_metrics.get_record', metrics)
    except XenApiError as exc:
        if exc.code == 'HANDLE_INVALID':
            return False
        raise
    if guest_key:
        return guest_key in (record.get('other') or {})
    return bool(record.get('os_version') or record.get('PV_drivers_version'))


def health_check(client, chosen, default_sr=None, sr_map=None, timeout=300, poll=1.0, check_mode=False,
                 clock=None, sleep=None, guest_key=None):
    """Restore the run ``chosen`` into a temporary VM with no network, start it, wait up to ``timeout`` seconds
    for its guest agent to report, then destroy everything it created. The result says whether it booted
    (``booted``, ``seconds_to_agent``) or why not (``reason``); a VM that does not boot is a result, not an error."""
    clock = clock or time.monotonic
    sleep = sleep or time.sleep
    config = chosen[0]
    name = '%s (health check %s)' % (config['vm'].get('name_label'), config['run'])
    restored = restore_new_vm(client, chosen, name_suffix=' (health check %s)' % config['run'], sr_map=sr_map,
                              default_sr=default_sr, default_network=NO_NETWORK, network_map={}, start=False,
                              check_mode=check_mode)
    # nothing it creates outlives it: no change, like a verification
    result = {'changed': False, 'run': config['run'], 'source_vm': config['source'], 'vm_name': name,
              'booted': None, 'seconds_to_agent': None, 'reason': None, 'timeout': timeout,
              'left_behind': [], 'warnings': [w for w in restored['warnings'] if 'is left out' not in w]}
    if check_mode:
        return result
    vm_ref = None
    try:
        vm_ref = client.call('VM.get_by_uuid', restored['vm']['uuid'])
        client.call('VM.start', vm_ref, False, False)
        started = clock()
        while True:
            if agent_reported(client, vm_ref, guest_key):
                result.update(booted=True, seconds_to_agent=round(clock() - started, 1))
                break
            if clock() - started >= timeout:
                result.update(booted=False, reason=(
                    'the guest did not write xenstore control/%s within %d seconds of the start' % (guest_key, timeout)
                    if guest_key else 'the guest agent did not report within %d seconds of the start (no OS or PV '
                                      'driver version in its guest metrics)' % timeout))
                break
            sleep(poll)
    except XenApiError as exc:
        result.update(booted=False, reason='the VM could not be started: %s' % exc.message)
    finally:
        # destroyed newest first: the VM (shut down; its drives and interfaces go with it), then its disks
        created = Created(client)
        for disk in restored['disks']:
            try:
                created.add('VDI', client.call('VDI.get_by_uuid', disk['vdi']))
            except XenApiError as exc:
                result['left_behind'].append('VDI %s: %s' % (disk['vdi'], exc.message))
        if vm_ref is not None:
            created.add('VM', vm_ref)
        else:
            result['left_behind'].append('VM %s' % restored['vm']['uuid'])
        result['left_behind'] += created.rollback()
        result['changed'] = bool(result['left_behind'])  # something of it outlives the check
    if result['left_behind']:
        result['warnings'].append('the health check could not destroy everything it created: %s; destroy these by '
                                  'hand' % '; '.join(result['left_behind']))
    return result


# -- in place ------------------------------------------------------------------------------------------------


def _target_disks(client, vm_ref, vm):
    """userdevice -> (VDI ref, VDI record) of the VM's disks."""
    found = {}
    for vbd_ref in vm['VBDs']:
        vbd = client.call('VBD.get_record', vbd_ref)
        if vbd['type'] == 'Disk' and not vbd.get('empty') and vbd['VDI'] != NULL_REF:
            found[vbd['userdevice']] = (vbd['VDI'], client.call('VDI.get_record', vbd['VDI']))
    return found


def delta_basis(client, snapshot_uuid, vdi_ref, vdi):
    """``(snapshot ref, None)`` when the disk's CBT chain still reaches the run's snapshot ``snapshot_uuid`` (so the
    blocks changed since can be listed), else ``(None, why not)``."""
    if not snapshot_uuid:
        return None, 'the restore point does not record its snapshot'
    if not vdi.get('cbt_enabled'):
        return None, 'CBT is off on the disk'
    try:
        snap_ref = client.call('VDI.get_by_uuid', snapshot_uuid)
    except XenApiError as exc:
        if exc.code == 'UUID_INVALID':
            return None, 'the run\'s snapshot %s no longer exists (only the newest run\'s snapshot is kept)' % snapshot_uuid
        raise
    if client.call('VDI.get_snapshot_of', snap_ref) != vdi_ref:
        return None, 'the run\'s snapshot %s is not a snapshot of this disk' % snapshot_uuid
    if not client.call('VDI.get_cbt_enabled', snap_ref):
        return None, 'the run\'s snapshot %s carries no CBT metadata' % snapshot_uuid
    return snap_ref, None


def changed_since(client, snap_ref, vdi_ref, size):
    """The ``(offset, length)`` extents of the 64 KiB blocks written to the disk since the snapshot ``snap_ref``: a new snapshot of
    the (halted) disk, VDI.list_changed_blocks against it, the new snapshot destroyed again. None when the host
    cannot list them (the caller then writes everything)."""
    now_ref = client.call('VDI.snapshot', vdi_ref, {})
    try:
        raw = _cbt.decode(client.call('VDI.list_changed_blocks', snap_ref, now_ref))
        return _cbt.to_extents(raw, size)
    except (XenApiError, _cbt.BitmapError):
        return None
    finally:
        try:
            client.call('VDI.destroy', now_ref)
        except XenApiError:
            pass


def restore_in_place(client, chosen, target_vm=None, check_mode=False, disk_progress=None, cancel=None):
    """Overwrite the disks of the (halted) VM ``target_vm`` (default the VM the run backed up) with the run's
    restore points, matched by userdevice. Where the disk's CBT chain still reaches the run's snapshot, only the
    blocks written since are sent (``method: changed_blocks``); else the whole disk (``method: full``)."""
    config, points = chosen
    ident = target_vm or config['source']['vm_uuid']
    vm_ref, vm = _objects.find_vm(client, ident)
    if vm['power_state'] != 'Halted':
        raise VmRestoreError('the VM %s is %s: a restore in place overwrites its disks, so shut it down first (or '
                             'restore as a new VM)' % (vm['name_label'], vm['power_state']), code='VM_NOT_HALTED')
    targets = _target_disks(client, vm_ref, vm)
    result = {'changed': True, 'run': config['run'], 'source_vm': config['source'], 'warnings': [],
              'vm': {'uuid': vm['uuid'], 'name': vm['name_label'], 'power_state': vm['power_state']}, 'disks': []}
    plans = []
    for vbd in disk_vbds(config):
        disk = vbd['disk']
        if vbd['userdevice'] not in targets:
            raise VmRestoreError('the VM %s has no disk at userdevice %s, where the backup had %s: restore as a new VM, '
                                 'or restore that disk with vdi_restore'
                                 % (vm['name_label'], vbd['userdevice'], disk['name_label']), code='DISK_NOT_FOUND')
        vdi_ref, vdi = targets[vbd['userdevice']]
        if int(vdi['virtual_size']) != int(disk['virtual_size']):
            raise VmRestoreError('the disk %s at userdevice %s has %s bytes, the backup %s: they must be equal; restore '
                                 'as a new VM' % (vdi['name_label'], vbd['userdevice'], vdi['virtual_size'],
                                                  disk['virtual_size']), code='VDI_SIZE_MISMATCH')
        repository, point_id = points[disk['disk_uuid']]
        with Repository(repository) as repo:
            snapshot_uuid = repo.point(point_id).get('snapshot_uuid')
        snap_ref, why = delta_basis(client, snapshot_uuid, vdi_ref, vdi)
        plans.append((vbd, vdi_ref, vdi, repository, point_id, snap_ref))
        result['disks'].append({'userdevice': vbd['userdevice'], 'vdi': vdi['uuid'], 'name': vdi['name_label'],
                                'label': '%s/%s' % (config['vm'].get('name_label'), disk['name_label']),
                                'repository': repository, 'point': point_id,
                                'method': 'changed_blocks' if snap_ref else 'full', 'why_full': why,
                                'bytes_sent': 0, 'blocks': None})
    if check_mode:
        return result
    for index, ((vbd, vdi_ref, vdi, repository, point_id, snap_ref), entry) in enumerate(zip(plans, result['disks'])):
        progress = disk_progress[index] if disk_progress else None
        if progress is not None:
            progress.running()
        offsets = changed_since(client, snap_ref, vdi_ref, int(vdi['virtual_size'])) if snap_ref else None
        if snap_ref and offsets is None:
            entry.update(method='full', why_full='the host could not list the blocks changed since the run\'s snapshot')
        try:
            _write_disk(client, repository, point_id, vdi, offsets, entry, result, progress, cancel)
        except (CbtBackupError, IOError, OSError) as exc:
            done = ', '.join(d['name'] for d in result['disks'][:index]) or 'none'
            cause = (getattr(exc, 'message', None) or str(exc)).rstrip('.')
            raise VmRestoreError('restoring the disk %s of %s in place failed: %s. That disk was partly overwritten and '
                                 'does not hold the backup (disks restored before it: %s). Run the restore again.'
                                 % (vdi['name_label'], vm['name_label'], cause, done),
                                 code=getattr(exc, 'code', None) or 'VM_RESTORE_FAILED')
        if progress is not None:
            progress.ended('done')
    return result


def _write_disk(client, repository, point_id, vdi, offsets, entry, result, progress, cancel):
    """One disk of a restore in place: the changed blocks (``offsets``) or, when None, the whole disk."""
    with RestoreSource(repository, point_id) as source:
        if offsets is not None:
            sent = _vdi_import.restore_blocks_to_vdi(client, source, vdi['uuid'], offsets, progress=progress,
                                                     cancel=cancel)
            entry.update(bytes_sent=sent['bytes_sent'], blocks=sent['blocks'],
                         changed_blocks=sum(-(-length // CBT_BLOCK_SIZE) for dummy, length in offsets))
        else:
            sent = _vdi_import.restore_to_vdi(client, source, vdi=vdi['uuid'], progress=progress, cancel=cancel)
            entry.update(bytes_sent=sent['bytes_sent'])
            result['warnings'].extend(sent.get('warnings') or [])
