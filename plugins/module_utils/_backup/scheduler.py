# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many exports in one run: per-host NBD connection budgets instead of waves, failover between hosts.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

A job (one disk, a prepared :class:`vdi_export.SnapshotExport`) starts as soon as one of the hosts that can
serve it has room for its connections in this run's budget (``per_host`` connections per host; xapi-nbd
closes the 17th, counted at accept). The biggest jobs start first, so that the slowest disk is not the last
one started, and each job takes the listed host with the most room (ties: the disk's own host order, a
stable hash of its snapshot). When a host refuses, drops or does not answer a connection, the job goes back to
the queue for another host (or the same one after a rest: xapi-nbd may have been full for a moment), and the
host rests RETRY_DELAY seconds times its failures in a row; after HOST_STRIKES failures in a row, or at once when
it accepts no TCP connection, it is passed over for the rest of the run. An export into a repository writes its point atomically, so starting it again
loses nothing. A job that fails fails alone: its error is its result, the others go on. An incremental that
lists no changed block holds no connection (it opens none).

With a ``cancel`` (a progress.Cancellation, set when the run's lease expires) the queue stops: jobs not started
end with its error (CANCELLED), running ones stop between two NBD requests (export.run_export) and end with it
too. ``progress``, one progress.DiskProgress per export, follows each job's state and bytes.
"""

from __future__ import absolute_import, division, print_function

import threading
import time

from . import export as _export, progress as _progress
from .._errors import Cancelled, CbtBackupError
from .._nbd.connection import FAILOVER_ERRORS, none_served
from .._nbd.errors import NbdConnectError
from .._nbd.reader import DEFAULT_REQUEST_SIZE, MAX_CONNECTIONS

__metaclass__ = type

CANCEL_POLL = 0.25  # seconds: how soon the queue stops after a cancel
# A host is passed over for the rest of the run after this many failed connections in a row. One failure alone
# is not enough: xapi-nbd frees a connection's slot only once its VBD is unplugged, so a connection opened right
# after another one closed can find the host still full (EOF before the greeting) although it is well.
HOST_STRIKES = 3
RETRY_DELAY = 1.0  # seconds a host rests after a failed connection, times its failures in a row


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
        self.strikes = {}  # host -> failed connections in a row
        self.last_failure = {}  # host -> monotonic time of its last failed connection
        self.failures = {}  # host -> failed connections in this run
        self.resting = {}  # host -> monotonic time before which no job starts there
        self.changed = threading.Condition()

    def room(self, host):
        return self.per_host - self.in_use.get(host, 0)

    def usable(self, host, now):
        return host not in self.failed and self.resting.get(host, 0) <= now

    def take(self, hosts, count, avoid=()):
        """The host of ``hosts`` (in preference order) with the most room for ``count`` connections, taken; or
        None (the caller holds ``changed``). Hosts in ``avoid`` (where the job failed) come last; resting ones
        are not taken."""
        now = time.monotonic()
        fitting = [h for h in hosts if self.usable(h, now) and self.room(h) >= count]
        if not fitting:
            return None
        # max keeps the first of equals: the disk's own order
        best = max(fitting, key=lambda h: (h not in avoid, self.room(h)))
        self.in_use[best] = self.in_use.get(best, 0) + count
        self.peak[best] = max(self.peak.get(best, 0), self.in_use[best])
        self.exports[best] = self.exports.get(best, 0) + 1
        return best

    def give_back(self, host, count, started, failure=None, down=False):
        """Return ``count`` connections of ``host``, taken at monotonic time ``started``. With ``failure`` (its
        connection failed), the host rests a while, and after HOST_STRIKES failures in a row, or at once when it
        is ``down`` (nothing accepts TCP connections there), it is passed over from now on; a served connection
        ends the row (the caller holds ``changed``). Connections that were already open when the host last
        failed count as one failure with it: a full host closes them all at once."""
        self.in_use[host] -= count
        now = time.monotonic()
        if failure is None:
            self.strikes[host] = 0
            self.changed.notify_all()
            return
        self.failures[host] = self.failures.get(host, 0) + 1
        if down or started > self.last_failure.get(host, -1.0):  # else the same moment of trouble, counted
            self.last_failure[host] = now
            self.strikes[host] = self.strikes.get(host, 0) + 1
            if down or self.strikes[host] >= HOST_STRIKES:
                self.failed.setdefault(host, failure)
            else:
                self.resting[host] = now + RETRY_DELAY * self.strikes[host]
        self.changed.notify_all()

    def next_rest_end(self, now):
        """Seconds until the first resting host may be used again, or None."""
        ends = [end - now for host, end in self.resting.items() if end > now and host not in self.failed]
        return min(ends) if ends else None

    def summary(self):
        """host -> exports started there, peak connections, failed connections, and why it was passed over
        (when it was)."""
        hosts = set(self.peak) | set(self.failed)
        return dict((host, {'exports': self.exports.get(host, 0), 'peak_connections': self.peak.get(host, 0),
                            'failed_connections': self.failures.get(host, 0), 'passed_over': self.failed.get(host)})
                    for host in hosts)


class _Job:
    def __init__(self, index, export, connections):
        self.index = index
        self.export = export
        self.hosts = [host_key(info) for info in export.nbd]
        # a small disk does not hold connections it cannot use (as run_export opens them); an incremental that
        # lists no changed block opens none
        self.connections = max(1, min(connections, -(-export.estimated_bytes // DEFAULT_REQUEST_SIZE))) \
            if export.connects else 0
        self.passed_over = []  # (host, error) of the hosts that did not serve it
        # each listed host once, and two more tries (a host that was full for a moment serves again)
        self.attempts_left = len(set(self.hosts)) + 2

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

    def work(job, host, started):
        failure = None
        down = False
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
            down = isinstance(exc, NbdConnectError)
            job.passed_over.append((host, exc))
        except CbtBackupError as exc:
            end(job, exc)
        except (IOError, OSError) as exc:
            end(job, CbtBackupError('writing the restore point failed: %s; the repository was left as '
                                    'it was' % exc, code='WRITE_FAILED'))
        finally:
            with budget.changed:
                running.remove(job)
                budget.give_back(host, job.connections, started, failure, down)
                if failure is not None:
                    job.attempts_left -= 1
                    if job.attempts_left > 0 and any(h not in budget.failed for h in job.hosts):
                        queue.insert(0, job)  # another host, or this one after its rest, may serve it
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
                host = budget.take(job.hosts, job.connections, avoid=set(h for h, dummy in job.passed_over))
                if host is None:
                    continue
                queue.remove(job)
                running.append(job)
                trackers[job.index].running()
                thread = threading.Thread(target=work, args=(job, host, time.monotonic()), name='export-%d' % job.index)
                thread.daemon = True
                thread.start()
            if queue or running:
                # with a cancel to notice, look again every CANCEL_POLL seconds even when no job ends; a queued
                # job waiting for a resting host looks again when the rest ends
                waits = [CANCEL_POLL if cancel is not None else None,
                         budget.next_rest_end(time.monotonic()) if queue else None]
                waits = [w for w in waits if w is not None]
                budget.changed.wait(min(waits) if waits else None)
    return results, budget
