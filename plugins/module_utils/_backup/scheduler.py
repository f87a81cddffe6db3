# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many exports in one run: per-host NBD connection budgets instead of waves, failover between hosts.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

A job (one disk, a prepared :class:`vdi_export.SnapshotExport`) starts as soon as one of the hosts that can
serve it has room for its connections in this run's budget (``per_host`` connections per host; xapi-nbd
closes the 17th, counted at accept). The biggest jobs start first, so that the slowest disk is not the last
one started, and each job takes the listed host with the most room (ties: the disk's own host order, a
stable hash of its snapshot). A host that refuses, drops or does not answer a connection is passed over for
the rest of the run and the job goes back to the queue for another host: an export into a repository writes
its point atomically, so starting it again loses nothing. A job that fails fails alone: its error is its
result, the others go on.

With a ``cancel`` (a progress.Cancellation, set when the run's lease expires) the queue stops: jobs not started
end with its error (CANCELLED), running ones stop between two NBD requests (export.run_export) and end with it
too. ``progress``, one progress.DiskProgress per export, follows each job's state and bytes.
"""

from __future__ import absolute_import, division, print_function

import threading

from . import export as _export, progress as _progress
from .._errors import Cancelled, CbtBackupError
from .._nbd.connection import FAILOVER_ERRORS, none_served
from .._nbd.reader import DEFAULT_REQUEST_SIZE, MAX_CONNECTIONS

__metaclass__ = type

CANCEL_POLL = 0.25  # seconds: how soon the queue stops after a cancel


def host_key(info):
    """``address:port`` of a get_nbd_info element: what the budget counts by."""
    return '%s:%d' % (info['address'], int(info.get('port') or 10809))


class HostBudget:
    """NBD connections this run holds per host, their peak, and the hosts passed over (all under one lock)."""

    def __init__(self, per_host):
        if not 1 <= per_host <= MAX_CONNECTIONS:
            raise CbtBackupError('max_host_connections must be between 1 and %d (xapi-nbd serves at most %d '
                                 'connections per host)' % (MAX_CONNECTIONS, MAX_CONNECTIONS), code='INVALID_OPTION')
        self.per_host = per_host
        self.in_use = {}
        self.peak = {}
        self.exports = {}
        self.failed = {}  # host -> what its connection did
        self.changed = threading.Condition()

    def room(self, host):
        return self.per_host - self.in_use.get(host, 0)

    def take(self, hosts, count):
        """The host of ``hosts`` (in preference order) with the most room for ``count`` connections, taken; or
        None (the caller holds ``changed``)."""
        fitting = [h for h in hosts if h not in self.failed and self.room(h) >= count]
        if not fitting:
            return None
        best = max(fitting, key=self.room)  # max keeps the first of equals: the disk's own order
        self.in_use[best] = self.in_use.get(best, 0) + count
        self.peak[best] = max(self.peak.get(best, 0), self.in_use[best])
        self.exports[best] = self.exports.get(best, 0) + 1
        return best

    def give_back(self, host, count, failure=None):
        """Return ``count`` connections of ``host``; with ``failure``, pass the host over from now on (the caller
        holds ``changed``)."""
        self.in_use[host] -= count
        if failure is not None:
            self.failed.setdefault(host, failure)
        self.changed.notify_all()

    def summary(self):
        """host -> exports started there, peak connections, and why it was passed over (when it was)."""
        hosts = set(self.peak) | set(self.failed)
        return dict((host, {'exports': self.exports.get(host, 0), 'peak_connections': self.peak.get(host, 0),
                            'passed_over': self.failed.get(host)}) for host in hosts)


class _Job:
    def __init__(self, index, export, connections):
        self.index = index
        self.export = export
        self.hosts = [host_key(info) for info in export.nbd]
        # a small disk does not hold connections it cannot use (as run_export opens them)
        self.connections = max(1, min(connections, -(-export.estimated_bytes // DEFAULT_REQUEST_SIZE)))
        self.passed_over = []  # (host, error) of the hosts that did not serve it

    def info(self, host):
        return [info for info in self.export.nbd if host_key(info) == host][0]


def _state(result):
    if isinstance(result, Cancelled):
        return 'cancelled'
    return 'failed' if isinstance(result, BaseException) else 'done'


def run_exports(exports, connections, per_host, check_mode=False, progress=None, cancel=None):
    """Run the prepared ``exports`` (list of SnapshotExport) under a :class:`HostBudget`; return
    ``(results, budget)``, ``results`` in the order of ``exports``: each a vdi_export result or the
    :class:`CbtBackupError` that ended it.

    ``progress``: a progress.DiskProgress per export (in their order), or None. ``cancel``: a
    progress.Cancellation, or None."""
    budget = HostBudget(per_host)
    jobs = [_Job(index, export, min(connections, per_host)) for index, export in enumerate(exports)]
    results = [None] * len(jobs)
    trackers = list(progress) if progress is not None else [_progress.NO_PROGRESS] * len(jobs)
    for job in jobs:
        trackers[job.index].queued(job.export.estimated_bytes)
    queue = sorted(jobs, key=lambda job: -job.export.estimated_bytes)
    running = []

    def end(job, result):
        results[job.index] = result
        trackers[job.index].ended(_state(result))

    def work(job, host):
        failure = None
        tracker = trackers[job.index]
        try:
            result = job.export.run(check_mode=check_mode, nbd=[job.info(host)], connections=job.connections,
                                    progress=None if tracker is _progress.NO_PROGRESS else tracker, cancel=cancel)
            if job.passed_over:
                _export.record_failover(result, job.passed_over, 'NBD server %s' % host)
            end(job, result)
        except Cancelled as exc:
            end(job, cancel.error() if cancel is not None and cancel.is_set() else exc)
        except FAILOVER_ERRORS as exc:
            failure = str(exc)
            job.passed_over.append((host, exc))
        except CbtBackupError as exc:
            end(job, exc)
        except (IOError, OSError) as exc:
            end(job, CbtBackupError('writing the restore point failed: %s; the repository was left as '
                                    'it was' % exc, code='WRITE_FAILED'))
        finally:
            with budget.changed:
                running.remove(job)
                budget.give_back(host, job.connections, failure)
                if failure is not None:
                    if any(h not in budget.failed for h in job.hosts):
                        queue.insert(0, job)  # another host may serve it
                        tracker.queued()
                    else:
                        end(job, none_served([exc for dummy, exc in job.passed_over]))

    with budget.changed:
        while queue or running:
            if cancel is not None and cancel.is_set():
                for job in queue:  # never started
                    end(job, cancel.error())
                del queue[:]
            for job in list(queue):
                if all(host in budget.failed for host in job.hosts):  # passed over while the job waited
                    queue.remove(job)
                    end(job, none_served([exc for dummy, exc in job.passed_over]) if job.passed_over else CbtBackupError(
                        'every host that can serve the export was passed over in this run: %s' % '; '.join(
                            '%s: %s' % (host, budget.failed[host]) for host in job.hosts), code='NBD_CONNECT_FAILED'))
                    continue
                host = budget.take(job.hosts, job.connections)
                if host is None:
                    continue
                queue.remove(job)
                running.append(job)
                trackers[job.index].running()
                thread = threading.Thread(target=work, args=(job, host), name='export-%d' % job.index)
                thread.daemon = True
                thread.start()
            if queue or running:
                # with a cancel to notice, look again every CANCEL_POLL seconds even when no job ends
                budget.changed.wait(None if cancel is None else CANCEL_POLL)
    return results, budget
