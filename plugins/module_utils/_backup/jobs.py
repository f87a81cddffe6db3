# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Background jobs (a vdi_export or vdi_restore started with ``async`` and ``poll: 0``) and their records.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Ansible's async wrapper writes a job file ``<async_dir>/<jid>`` and leaves it until someone reads the result with
``async_status mode=cleanup``. A playbook that was cancelled (AWX Cancel, SIGTERM, a dead controller) never does:
the job file stays. So that the next run can remove it, the waiter (export_wait) writes a *record* while it
waits, a small JSON file that names the job (``jid``, ``async_dir``) and its progress file, and removes it
together with the job file once it has read the result. A record that is still there at the start of the next run
is what an interrupted run left: :func:`recover` removes the job file it names once the job has ended, with the
progress and lease files, and the record; it tells what the job's result said. Only files a record of this
collection names are ever removed.
"""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import re

from .._repository.store import remove_if_exists as remove, write_file_atomically
from .._time import format_utc, utc_now
from .progress import lease_path

__metaclass__ = type

RECORD_KIND = 'xenserver.cbt_backup background job'
JID = re.compile(r'^[A-Za-z0-9_.-]+$')  # what async_wrapper names job files: no path in it


def job_state(async_dir, jid):
    """``{'found', 'finished'}`` of the async job, read as ansible.builtin.async_status reads it."""
    data = _read_json(os.path.join(async_dir, jid))
    if data is _MISSING:
        return {'found': False, 'finished': False}
    if data is None:
        return {'found': True, 'finished': False}  # not written yet: the job is running
    if not isinstance(data, dict):
        return {'found': True, 'finished': True}
    return {'found': True, 'finished': 'started' not in data or bool(data.get('finished'))}


def write_record(path, jid, async_dir, progress_file):
    """Record the job at ``path`` (atomically, mode 0600) unless a record is already there."""
    if os.path.exists(path):
        return False
    record = {'kind': RECORD_KIND, 'jid': jid, 'async_dir': async_dir, 'progress_file': progress_file,
              'written': format_utc(utc_now())}
    write_file_atomically(path, json.dumps(record, sort_keys=True).encode('utf-8') + b'\n')
    return True


def forget(async_dir, jid, record=None):
    """The job's result has been read: remove its job file (and ``record``, if it names this job: a record of
    another job, still running, stays for the next run). Returns the paths removed."""
    if record and _read_json(record) is not _MISSING and (_read_json(record) or {}).get('jid') != jid:
        record = None
    return [path for path in (os.path.join(async_dir, jid), record) if path and remove(path)]


def recover(path, check_mode=False):
    """What an interrupted run left at the record ``path``, cleaned up when its job has ended (in ``check_mode``
    only told: ``removed`` lists what would be removed).

    Returns None when there is no record (nothing was left), else a dict: ``record``, ``jid``, ``written``,
    ``state`` (``ended``: the job file, progress and lease files and the record were removed; ``running``: the
    job has not ended, everything is left for a later run; ``gone``: there was no job file, the record was
    removed), ``removed`` (paths) and, once ended, ``summary`` (the items of its result by outcome)."""
    record = _read_json(path)
    if record is _MISSING:
        return None
    if not isinstance(record, dict) or record.get('kind') != RECORD_KIND or not record.get('jid') \
            or not record.get('async_dir'):
        raise ValueError('%s is not a job record of xenserver.cbt_backup; it was left as it is' % path)
    jid, async_dir = str(record['jid']), record['async_dir']
    progress_file = record.get('progress_file')
    if not JID.match(jid) or not os.path.isabs(async_dir) or (progress_file and not os.path.isabs(progress_file)):
        raise ValueError('%s names no job of this collection (jid %r, async_dir %r); it was left as it is'
                         % (path, jid, async_dir))
    found = {'record': path, 'jid': jid, 'written': record.get('written'), 'removed': []}
    job_file = os.path.join(async_dir, jid)
    state = job_state(async_dir, jid)
    if state['found'] and not state['finished']:
        found['state'] = 'running'
        return found
    if state['found']:
        found['summary'] = summarize(_read_json(job_file))
    found['state'] = 'ended' if state['found'] else 'gone'
    leftovers = [job_file] + ([progress_file, lease_path(progress_file)] if progress_file else []) + [path]
    if check_mode:
        found['removed'] = [leftover for leftover in leftovers if os.path.lexists(leftover)]
    else:
        found['removed'] = [leftover for leftover in leftovers if remove(leftover)]
    return found


def summarize(result):
    """``{'ok': n, 'cancelled': n, 'failed': n}`` of a job result's items (exports, or the one upload)."""
    counts = {'ok': 0, 'cancelled': 0, 'failed': 0}
    if not isinstance(result, dict):
        counts['failed'] = 1
        return counts
    items = result.get('exports') if isinstance(result.get('exports'), list) else [result]
    for item in items:
        if not isinstance(item, dict) or not item.get('failed'):
            counts['ok'] += 1
        elif item.get('error_code') == 'CANCELLED':
            counts['cancelled'] += 1
        else:
            counts['failed'] += 1
    return counts


_MISSING = object()


def _read_json(path):
    """The JSON document at ``path``; None when it is not JSON (yet); _MISSING when there is no file."""
    try:
        with open(path) as handle:
            text = handle.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return _MISSING
        raise
    try:
        return json.loads(text)
    except ValueError:
        return None
