# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""export_wait: wait for a vdi_export list form started with ``async`` and ``poll: 0``.

About every second the export_progress module runs on the task's host (where the export runs and writes its
files): it renews the run's lease, reads the progress file and tells whether the async job has ended. Every
``interval`` seconds the running disks are printed, one line each. Once the job has ended, its result is read
with ansible.legacy.async_status (the module the builtin async_status action runs, with the async directory that
action computes); then its job file is removed with the job's ``record`` (written at the first look, it tells the
next run what a cancelled playbook left: export_leftovers), a line per disk sums it up, and the result is returned.

The lease is only ever renewed by this loop: when the worker running it dies (SIGINT or SIGTERM forwarded by
ansible-playbook, an AWX cancel) or the controller goes away, nothing renews it, and the export cancels itself
after its ``lease_seconds``.
"""

from __future__ import absolute_import, division, print_function

import os
import time

from ansible.errors import AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

__metaclass__ = type

display = Display()

MIB = 1024 * 1024
GIB = 1024 * MIB
TICK = 1.0                 # seconds between two looks at the job (and two lease renewals)
TIMEOUT_GRACE = 60         # seconds a timed-out wait still waits for the cancelled job to end
LOOK_FAILURES = 5          # consecutive failed looks at the job before the wait gives up
PROGRESS_MODULE = 'xenserver.cbt_backup.export_progress'
ASYNC_STATUS = 'ansible.legacy.async_status'
ASYNC_KEYS = ('started', 'finished', 'results_file')  # the async bookkeeping, not the job's result
TIMEOUT_VARIABLE = 'incremental_backup_async_timeout'

ARGUMENT_SPEC = dict(
    jid=dict(type='str', required=True),
    progress_file=dict(type='str', required=True),  # a path on the task's host: export_progress expands it there
    timeout=dict(type='int', default=86400),
    interval=dict(type='int', default=5),
    record=dict(type='str'),          # a path on the task's host: see export_progress
    also_renew=dict(type='list', elements='str', default=[]),
)


def size_text(count):
    """Bytes in MiB, or GiB from 1 GiB on."""
    if count >= GIB:
        return '%.2f GiB' % (count / float(GIB))
    return '%.1f MiB' % (count / float(MIB))


def duration_text(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return '%ds' % seconds
    if seconds < 3600:
        return '%dm%02ds' % divmod(seconds, 60)
    return '%dh%02dm' % (seconds // 3600, seconds % 3600 // 60)


def progress_line(host, disk):
    """One running disk: label, percent, bytes done of bytes to read, MiB/s, ETA."""
    eta = disk.get('eta_s')
    return '[%s] %s: %.1f%%, %s of %s, %.1f MiB/s, ETA %s' % (
        host, disk.get('label'), disk.get('percent') or 0.0, size_text(disk.get('bytes_done') or 0),
        size_text(disk.get('bytes_total') or 0), disk.get('mib_s') or 0.0,
        duration_text(eta) if eta is not None else '?')


def counts_line(host, disks, elapsed):
    counts = {}
    for disk in disks:
        counts[disk.get('state')] = counts.get(disk.get('state'), 0) + 1
    shown = ', '.join('%d %s' % (counts[state], state) for state in ('running', 'queued', 'done', 'failed', 'cancelled')
                      if counts.get(state))
    return '[%s] %d disk(s): %s; waited %s' % (host, len(disks), shown or 'none yet', duration_text(elapsed))


class Seen:
    """What the progress documents showed of each disk: its last entry, and when it was first and last running."""

    def __init__(self):
        self.disks = {}

    def update(self, document, now):
        for disk in (document or {}).get('disks') or []:
            label = disk.get('label')
            entry = self.disks.setdefault(label, {'first': None, 'last': None, 'disk': disk})
            entry['disk'] = disk
            if disk.get('state') == 'running':
                if entry['first'] is None:
                    entry['first'] = now
                entry['last'] = now

    def bytes_and_seconds(self, label):
        entry = self.disks.get(label)
        if entry is None:
            return 0, 0.0
        seconds = entry['last'] - entry['first'] if entry['first'] is not None else 0.0
        return entry['disk'].get('bytes_done') or 0, seconds


def restore_lines(host, result, seen):
    """One line per disk of a restore job (vdi_restore, or vm_restore's ``disks``), labelled as its progress
    documents named it: ok with the bytes sent and seconds, or failed with the job's error code."""
    labels = list(seen.disks)
    if result.get('failed'):  # the whole job failed (a restore, or an export job that died): its disks with it
        return ['[%s] %s: failed (%s)' % (host, label, result.get('error_code') or 'error') for label in labels]
    disks = result.get('disks') if isinstance(result.get('disks'), list) else [result]
    lines = []
    for index, disk in enumerate(disk for disk in disks if isinstance(disk, dict)):
        label = disk.get('label') or (labels[index] if index < len(labels) else disk.get('name') or 'disk %d' % index)
        seconds = disk.get('seconds', seen.bytes_and_seconds(label)[1])
        method = ' (%s)' % disk['method'] if disk.get('method') else ''
        sent = size_text(disk.get('bytes_sent') or 0)
        lines.append('[%s] %s: ok, %s sent in %.1f s%s' % (host, label, sent, float(seconds or 0.0), method))
    return lines


def summary_lines(host, result, seen):
    """One line per item of the job's result: label, ok or failed, bytes read (sent, for a restore), seconds."""
    if 'exports' not in result and ('bytes_sent' in result or 'disks' in result or result.get('failed')):
        return restore_lines(host, result, seen)
    lines = []
    for entry in result.get('exports') or []:
        if not isinstance(entry, dict):
            continue
        label = entry.get('label') or entry.get('snapshot')
        if entry.get('failed'):
            done, seconds = seen.bytes_and_seconds(label)
            lines.append('[%s] %s: failed (%s), %s read in %.1f s' % (
                host, label, entry.get('error_code') or 'error', size_text(done), seconds))
        else:
            note = ' (already exported)' if entry.get('already_exported') else ''
            lines.append('[%s] %s: ok, %s read in %.1f s%s' % (
                host, label, size_text(entry.get('bytes_read') or 0), float(entry.get('seconds') or 0.0), note))
    return lines


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp  # tmp no longer has any effect
        task_vars = task_vars or {}
        dummy, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        result['ansible_job_id'] = args['jid']
        if args['timeout'] < 1 or args['interval'] < 1:
            result.update(failed=True, error_code='INVALID_OPTION',
                          msg='timeout and interval must be whole seconds of at least 1 (timeout %d, interval %d)'
                              % (args['timeout'], args['interval']))
            return result
        try:
            return self._wait(result, args, task_vars)
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    # -- one look at the job, on the task's host ----------------------------------------------------------

    def _async_dir(self):
        """Where async job files are on the task's host: what the builtin async_status action reads."""
        return self._remote_expand_user(self.get_shell_option('async_dir', default='~/.ansible_async'))

    def _look(self, args, async_dir, task_vars, lease, forget=False):
        return self._execute_module(module_name=PROGRESS_MODULE, task_vars=task_vars, module_args=dict(
            jid=args['jid'], async_dir=async_dir, progress_file=args['progress_file'], lease=lease, cleanup=True,
            also_renew=args['also_renew'], record=args['record'], forget=forget))

    def _async_status(self, jid, async_dir, mode, task_vars):
        return self._execute_module(module_name=ASYNC_STATUS, task_vars=task_vars,
                                    module_args=dict(jid=jid, mode=mode, _async_dir=async_dir))

    # -- the loop -----------------------------------------------------------------------------------------

    def _wait(self, result, args, task_vars):
        host = task_vars.get('inventory_hostname') or self._task.get_name()
        jid = args['jid']
        async_dir = self._async_dir()
        parent = os.getppid()
        seen = Seen()
        started = time.monotonic()
        deadline = started + args['timeout']
        next_print = started + args['interval']
        timed_out_at = None
        failures = 0
        lease = 'renew'
        while True:
            tick = time.monotonic()
            if os.getppid() != parent:
                # ansible-playbook is gone (killed, or the controller is going down): stop renewing the lease so
                # that the export cancels itself; nobody reads this result any more
                result.update(failed=True, error_code='WAIT_FAILED', msg='ansible-playbook went away; the lease is '
                              'no longer renewed and the export cancels itself')
                return result
            try:
                look = self._look(args, async_dir, task_vars, lease)
            except AnsibleConnectionFailure as exc:
                look = {'failed': True, 'msg': str(exc)}
            if look.get('failed'):
                failures += 1
                if failures >= LOOK_FAILURES:
                    result.update(failed=True, error_code='WAIT_FAILED', msg='cannot look at export job %s on %s (%d '
                                  'times in a row): %s. The lease is no longer renewed: a run with lease_seconds '
                                  'cancels itself.' % (jid, host, failures, look.get('msg')))
                    return result
                time.sleep(TICK)
                continue
            failures = 0
            job = look.get('job') or {}
            if not job.get('found'):
                result.update(failed=True, error_code='JOB_NOT_FOUND', msg='there is no async job %s in %s on %s: start '
                              'vdi_export with async and poll: 0 on the same host, and wait for each job once'
                              % (jid, async_dir, host))
                return result
            now = time.monotonic()
            seen.update(look.get('progress'), now)
            if job.get('finished'):
                break
            if timed_out_at is None and now >= deadline:
                timed_out_at = now
                lease = 'release'  # the run cancels itself within a second
                display.display('[%s] export_wait: timeout of %d seconds reached, cancelling the exports'
                                % (host, args['timeout']))
            elif timed_out_at is not None:
                lease = 'keep'
                if now - timed_out_at > TIMEOUT_GRACE:
                    result.update(failed=True, error_code='TIMEOUT', msg=self._timeout_msg(args, jid) + (
                        ' The job did not end within %d seconds of its cancellation; its job file was left in %s.'
                        % (TIMEOUT_GRACE, async_dir)))
                    return result
            if now >= next_print and timed_out_at is None:
                self._print_progress(host, look.get('progress'), now - started)
                next_print = now + args['interval']
            time.sleep(max(0.0, TICK - (time.monotonic() - tick)))
        return self._finish(result, args, async_dir, task_vars, host, seen, timed_out_at is not None)

    def _print_progress(self, host, document, elapsed):
        disks = (document or {}).get('disks') or []
        if not disks:
            display.display('[%s] waiting for the exports to start; waited %s' % (host, duration_text(elapsed)))
            return
        for disk in disks:
            if disk.get('state') == 'running':
                display.display(progress_line(host, disk))
        display.display(counts_line(host, disks, elapsed))

    def _timeout_msg(self, args, jid):
        return ('the exports did not end within the timeout of %d seconds, so job %s was cancelled (its lease '
                'released); the next run cleans up what it left. Raise %s (role incremental_backup) or the timeout '
                'of export_wait, and the async time limit of the vdi_export task with it.'
                % (args['timeout'], jid, TIMEOUT_VARIABLE))

    def _finish(self, result, args, async_dir, task_vars, host, seen, timed_out):
        jid = args['jid']
        job = self._async_status(jid, async_dir, 'status', task_vars)
        cleanup = self._look(args, async_dir, task_vars, 'keep', forget=True)  # the job file and the record
        if cleanup.get('failed'):
            display.warning('export_wait: the job file of %s could not be removed: %s' % (jid, cleanup.get('msg')))
        for key in ASYNC_KEYS:
            job.pop(key, None)
        for key in ('stdout', 'stderr', 'stdout_lines', 'stderr_lines'):
            if not job.get(key):
                job.pop(key, None)
        result.update(job)
        result['ansible_job_id'] = jid
        for line in summary_lines(host, result, seen):
            display.display(line)
        if timed_out:
            result.update(failed=True, error_code='TIMEOUT', msg=self._timeout_msg(args, jid))
        elif result.get('failed') and not result.get('error_code'):
            result['error_code'] = 'JOB_FAILED'  # the job died without a result of vdi_export (async time limit...)
        return result
