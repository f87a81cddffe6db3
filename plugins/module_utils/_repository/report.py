# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The report of one backup run over one pool: per VM and disk, what was planned, what happened, what it cost.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Inputs are what the role collected during the run: the plan (``backup_plan``'s ``vms``), the snapshots
the run took (``vdi_snapshot``'s items), and failure and warning records ``{vm_uuid, vdi_uuid, step,
msg}`` (``vdi_uuid`` null: the whole VM; both null: the whole pool). The facts of each restore point
come from the disk repository's manifest, read without the lock: the point whose ``snapshot_uuid`` is
the snapshot this run took of the disk.

Only the fields named here are copied into the report, never whole input dicts: the role passes module
results through, and nothing else of them (connection details, session ids...) may end up in a file.
"""

from __future__ import absolute_import, division, print_function

import json
import os

from .._image.raw_file import AtomicFile, pwrite_all
from .store import SPACE_ERRNOS, Repository, RepositoryError
from .._errors import CbtBackupError
from .._time import format_utc, parse_utc_or_none, utc_now

__metaclass__ = type

MIB = 1024 * 1024
REPORT_MODE = 0o640
DIRECTORY_MODE = 0o750
REPORT_STEP = 'report'
NO_POINT = "no restore point was recorded for this run's snapshot"
SKIP = 'skip'

DISK_STATUSES = ('ok', 'failed', 'skipped', 'planned')
VM_STATUSES = ('ok', 'failed', 'partial', 'skipped', 'planned')


class ReportError(CbtBackupError):
    """The inputs cannot make a report (e.g. an unreadable start time)."""

    code = 'INVALID_OPTION'


# -- small helpers -----------------------------------------------------------------------------------

def _text(value):
    """A string field of an input dict: strings and numbers as text; anything else (dicts, lists) is dropped."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value):
    """A numeric field of a manifest point, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _dicts(items):
    return [item for item in (items or []) if isinstance(item, dict)]


def _record(item):
    """A warning record with only its four fields."""
    return {
        'vm_uuid': _text(item.get('vm_uuid')) or None,
        'vdi_uuid': _text(item.get('vdi_uuid')) or None,
        'step': _text(item.get('step')),
        'msg': _text(item.get('msg')) or '',
    }


def _failure_record(item, advice=None):
    """A failure record: a warning's fields plus ``error_code`` and ``advice`` (``advice(code)``, or None)."""
    record = _record(item)
    record['error_code'] = _text(item.get('error_code')) or None
    record['advice'] = advice(record['error_code']) if advice and record['error_code'] else None
    return record


def _read_points(repository):
    """(points, error): the manifest's points of a repository (empty if it has none yet), or the read error."""
    if not repository:
        return None, 'the plan names no repository for this disk'
    try:
        return Repository(repository, missing_ok=True, allow_previous=False).load()['points'], None
    except RepositoryError as exc:
        return None, str(exc)
    except (IOError, OSError) as exc:
        return None, 'reading the manifest of %s failed: %s' % (repository, exc)


def _point_of(points, snapshot_uuids):
    """The newest point taken from one of ``snapshot_uuids``, or None."""
    found = None
    for point in points or []:
        if isinstance(point, dict) and point.get('snapshot_uuid') in snapshot_uuids:
            found = point
    return found


def _throughput(bytes_read, seconds):
    if bytes_read is None or not seconds or seconds <= 0:
        return None
    return round(bytes_read / seconds / MIB, 1)


CHAIN_BROKEN = 'CHAIN_BROKEN'


# -- building ----------------------------------------------------------------------------------------

def _disk_report(vm_uuid, disk, snapshots_by_disk, failures, warnings, report_failures, report_warnings):
    vdi_uuid = _text(disk.get('vdi_uuid'))
    entry = {
        'vdi_uuid': vdi_uuid,
        'vdi_name': _text(disk.get('vdi_name')),
        'userdevice': _text(disk.get('userdevice')),
        'repository': _text(disk.get('repository')),
        'mode': _text(disk.get('mode')),
        'reason': _text(disk.get('reason')),
        'reason_code': _text(disk.get('reason_code')),
        'status': None,
        'step': None,
        'error': None,
        'snapshot_uuid': None,
        'point': None,
        'point_type': None,
        'bytes_read': None,
        'bytes_stored': None,
        'seconds': None,
        'throughput_mib_s': None,
        'points_kept': None,
        'warnings': [{'step': w['step'], 'msg': w['msg']} for w in warnings],
    }
    points, read_error = _read_points(entry['repository'])
    if points is not None:
        entry['points_kept'] = len(points)

    def warn(msg):
        entry['warnings'].append({'step': REPORT_STEP, 'msg': msg})
        report_warnings.append({'vm_uuid': vm_uuid, 'vdi_uuid': vdi_uuid, 'step': REPORT_STEP, 'msg': msg})

    if entry['mode'] == SKIP:
        entry['status'] = 'skipped'
        if read_error and entry['repository']:
            warn(read_error)
        return entry

    snapshot_uuids = snapshots_by_disk.get(vdi_uuid, [])
    point = _point_of(points, snapshot_uuids) if snapshot_uuids else None
    if point is not None:
        entry['snapshot_uuid'] = _text(point.get('snapshot_uuid'))
        entry['point'] = _text(point.get('id'))
        # backup_prune may have merged older points into this one right after the export, rewriting its type
        # and bytes; ``export`` keeps what the export itself stored, which is what this run did.
        export = point.get('export') if isinstance(point.get('export'), dict) else point
        entry['point_type'] = _text(export.get('type'))
        entry['bytes_read'] = _number(point.get('bytes_read'))
        entry['bytes_stored'] = _number(export.get('bytes'))
        entry['seconds'] = _number(point.get('seconds'))
        entry['throughput_mib_s'] = _throughput(entry['bytes_read'], entry['seconds'])
        if point.get('fallback_reason') and entry['mode'] == 'incremental':
            # planned as an incremental, but vdi_export found the CBT chain broken and took a full backup
            entry['mode'] = 'full'
            entry['reason_code'] = CHAIN_BROKEN
            entry['reason'] = ('the CBT chain was broken (%s); a full backup was taken instead and starts a new chain'
                               % _text(point.get('fallback_reason')))
    elif snapshot_uuids:
        entry['snapshot_uuid'] = snapshot_uuids[0]

    if failures:
        entry['status'] = 'failed'
        entry['step'] = failures[0]['step']
        entry['error'] = failures[0]['msg']
        if read_error:
            warn(read_error)
    elif point is not None:
        entry['status'] = 'ok'
    elif not snapshot_uuids:
        entry['status'] = 'planned'
        if read_error:
            warn(read_error)
    else:
        entry['status'] = 'failed'
        entry['step'] = REPORT_STEP
        entry['error'] = read_error or NO_POINT
        report_failures.append(_failure_record({'vm_uuid': vm_uuid, 'vdi_uuid': vdi_uuid, 'step': REPORT_STEP,
                                                'msg': entry['error']}))
    return entry


def _for_disk(records, vm_uuid, vdi_uuid):
    """The records about one disk (a record that names the disk but no VM counts too)."""
    return [r for r in records if vdi_uuid and r['vdi_uuid'] == vdi_uuid and r['vm_uuid'] in (None, vm_uuid)]


def _vm_status(disks, vm_failures):
    statuses = set(d['status'] for d in disks if d['status'] != 'skipped')
    if not statuses:
        return 'failed' if vm_failures else 'skipped'
    if len(statuses) == 1:
        return statuses.pop()
    return 'partial'


CONSISTENCIES = ('application', 'crash', 'none')


def build_report(plan, snapshots=None, failures=None, warnings=None, started=None, pool=None, now=None, advice=None,
                 consistency=None):
    """The report dict (see the ``backup_report`` module's RETURN for its fields).

    ``now``: the run's end (an aware datetime; default: the current time). ``advice``: a function from an error
    code to the remedy in the caller's vocabulary (or None), added to each failure as ``advice``.
    ``consistency``: VM uuid -> what its snapshot got (``CONSISTENCIES``: ``application`` when a pre-snapshot hook
    quiesced the guest, ``none`` when no snapshot was taken); VMs it does not name got ``crash``.
    """
    consistency = consistency or {}
    for vm_uuid, value in consistency.items():
        if value not in CONSISTENCIES:
            raise ReportError('the consistency of %s must be one of %s, not %r' % (vm_uuid, ', '.join(CONSISTENCIES),
                                                                                   value))
    started_at = parse_utc_or_none(started)
    if started_at is None:
        raise ReportError('started must be an RFC 3339 time (for example 2026-11-25T02:00:05Z), not %r' % (started,))
    finished_at = now or utc_now()

    snapshots_by_disk = {}
    for snap in _dicts(snapshots):
        uuid, disk = _text(snap.get('uuid')), _text(snap.get('snapshot_of'))
        if uuid and disk:  # check mode snapshots have no uuid: nothing was taken
            snapshots_by_disk.setdefault(disk, [])
            if uuid not in snapshots_by_disk[disk]:
                snapshots_by_disk[disk].append(uuid)
    failure_records = [_failure_record(item, advice) for item in _dicts(failures)]
    warning_records = [_record(item) for item in _dicts(warnings)]
    found_failures, found_warnings = [], []

    vms = []
    for vm in _dicts(plan):
        vm_uuid = _text(vm.get('uuid'))
        vm_failures = [f for f in failure_records if not f['vdi_uuid'] and vm_uuid and f['vm_uuid'] == vm_uuid]
        vm_warnings = [w for w in warning_records if not w['vdi_uuid'] and vm_uuid and w['vm_uuid'] == vm_uuid]

        disks = []
        for disk in _dicts(vm.get('disks')):
            vdi_uuid = _text(disk.get('vdi_uuid'))
            disks.append(_disk_report(vm_uuid, disk, snapshots_by_disk,
                                      _for_disk(failure_records, vm_uuid, vdi_uuid) + vm_failures,
                                      _for_disk(warning_records, vm_uuid, vdi_uuid), found_failures, found_warnings))
        vms.append({
            'uuid': vm_uuid,
            'name': _text(vm.get('name')),
            'status': _vm_status(disks, vm_failures),
            'consistency': consistency.get(vm_uuid, 'crash'),
            'warnings': [{'step': w['step'], 'msg': w['msg']} for w in vm_warnings],
            'disks': disks,
        })

    all_disks = [d for vm in vms for d in vm['disks']]

    def count(key, value):
        return sum(1 for d in all_disks if d[key] == value)

    def total(key):
        return sum(d[key] for d in all_disks if d[key] is not None)

    seconds = (finished_at - started_at).total_seconds()
    return {
        'pool': _text(pool),
        'started': format_utc(started_at),
        'finished': format_utc(finished_at),
        'seconds': round(max(seconds, 0.0), 1),
        'totals': {
            'vms': len(vms),
            'disks': len(all_disks),
            'full': count('mode', 'full'),
            'incremental': count('mode', 'incremental'),
            'skipped': count('status', 'skipped'),
            'failed': count('status', 'failed'),
            'ok': count('status', 'ok'),
            'planned': count('status', 'planned'),
            'bytes_read': total('bytes_read'),
            'bytes_stored': total('bytes_stored'),
        },
        'vms': vms,
        'failures': failure_records + found_failures,
        'warnings': warning_records + found_warnings,
    }


# -- human lines -------------------------------------------------------------------------------------

def human_bytes(count):
    """1023 B, 1.0 KiB, 12.0 MiB, 3.2 GiB..."""
    if count < 1024:
        return '%d B' % count
    value = float(count)
    for unit in ('KiB', 'MiB', 'GiB', 'TiB'):
        value /= 1024
        if value < 1024 or unit == 'TiB':
            return '%.1f %s' % (value, unit)
    return '%d B' % count  # not reached


def _plural(count, word):
    return '%d %s%s' % (count, word, '' if count == 1 else 's')


def _device(userdevice):
    """The guest's usual device name for a userdevice number (0 -> xvda), or None."""
    if userdevice is not None and userdevice.isdigit() and int(userdevice) < 26:
        return 'xvd' + chr(ord('a') + int(userdevice))
    return None


def _one_line(text, limit=400):
    text = ' '.join((text or '').split())
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _disk_label(vm, disk):
    return '%s/%s' % (vm['name'] or vm['uuid'], disk['vdi_name'] or disk['vdi_uuid'])


def _disk_line(vm, disk):
    where = ' '.join(part for part in (_device(disk['userdevice']), disk['userdevice']) if part)
    status = disk['status']
    if status == 'failed' and disk['step']:
        status += ' at %s' % disk['step']
    facts = []
    if disk['bytes_read'] is not None:
        facts.append('%s read' % human_bytes(disk['bytes_read']))
    if disk['bytes_stored'] is not None:
        facts.append('%s stored' % human_bytes(disk['bytes_stored']))
    if disk['seconds'] is not None:
        facts.append('%.1f s' % disk['seconds'])
    if disk['throughput_mib_s'] is not None:
        facts.append('%.1f MiB/s' % disk['throughput_mib_s'])
    if disk['points_kept'] is not None:
        facts.append(_plural(disk['points_kept'], 'point'))
    line = '%s%s: %s (%s) %s' % (_disk_label(vm, disk), ' (%s)' % where if where else '', disk['mode'],
                                 disk['reason_code'], status)
    return line + ('  ' + ', '.join(facts) if facts else '')


def summary_lines(report):
    """Short lines for the play output: one per disk, the totals, one per failure and warning."""
    lines = []
    labels = {}
    for vm in report['vms']:
        labels[(vm['uuid'], None)] = vm['name'] or vm['uuid']
        for disk in vm['disks']:
            labels[(vm['uuid'], disk['vdi_uuid'])] = _disk_label(vm, disk)
            lines.append(_disk_line(vm, disk))
    totals = report['totals']
    states = ['%d ok' % totals['ok'], '%d failed' % totals['failed']]
    if totals['planned']:
        states.append('%d planned' % totals['planned'])
    lines.append('%s: %s, %s: %d full, %d incremental, %d skipped; %s; %s read, %s stored; %.1f s' % (
        report['pool'] or 'pool', _plural(totals['vms'], 'VM'), _plural(totals['disks'], 'disk'), totals['full'],
        totals['incremental'], totals['skipped'], ', '.join(states), human_bytes(totals['bytes_read']),
        human_bytes(totals['bytes_stored']), report['seconds']))

    def label(record):
        vm_uuid, vdi_uuid = record['vm_uuid'], record['vdi_uuid']
        if (vm_uuid, vdi_uuid) in labels:
            return labels[(vm_uuid, vdi_uuid)]
        for (_vm_uuid, known_vdi), text in labels.items():  # a disk record that did not name its VM
            if vdi_uuid and known_vdi == vdi_uuid:
                return text
        parts = [labels.get((vm_uuid, None)) or vm_uuid, vdi_uuid]
        return '/'.join(part for part in parts if part) or report['pool'] or 'pool'

    for kind, records in (('FAILED', report['failures']), ('WARNING', report['warnings'])):
        for record in records:
            line = '%s %s at %s: %s' % (kind, label(record), record['step'] or 'unknown step', _one_line(record['msg']))
            lines.append(line + (' What to do: %s' % record['advice'] if record.get('advice') else ''))
    return lines


# -- writing -----------------------------------------------------------------------------------------

def _make_directories(directory):
    """Create ``directory`` and its missing parents, each with mode 0750 (less what the umask takes away)."""
    missing = []
    while not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for current in reversed(missing):
        try:
            os.mkdir(current, DIRECTORY_MODE)
        except FileExistsError:
            if not os.path.isdir(current):
                raise


def write_report(report, dest):
    """Write ``report`` as JSON to ``dest`` atomically (temporary name, fsync, rename, fsync the directory).

    Missing parent directories are created (mode 0750); the file gets mode 0640. Returns the absolute path.
    Raises ReportError (``NO_SPACE`` or ``REPORT_WRITE_FAILED``) when it cannot be written; an older report at
    ``dest`` stays whole then.
    """
    path = os.path.abspath(dest)
    data = json.dumps(report, indent=2, sort_keys=True).encode('utf-8') + b'\n'
    try:
        _make_directories(os.path.dirname(path))
        out = AtomicFile(path)
        try:
            pwrite_all(out.fd, data, 0)
            out.commit(mode=REPORT_MODE)
        except BaseException:
            out.discard()
            raise
    except (IOError, OSError) as exc:
        raise ReportError('writing the report to %s failed: %s; the previous report there, if any, is unchanged'
                          % (path, exc.strerror or exc),
                          code='NO_SPACE' if exc.errno in SPACE_ERRNOS else 'REPORT_WRITE_FAILED')
    return path
