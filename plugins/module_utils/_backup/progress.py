# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of a list-form export while it runs, and its cancellation by lease.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

While vdi_export's list form runs, :class:`ProgressWatch` writes a JSON document to ``progress_file`` once a
second (a new file in the same directory, fsynced, renamed over the old one: a reader never sees half a
document; mode 0600)::

    {"updated": "2026-12-02T15:43:31Z",
     "disks": [{"label": "web01/xvda", "state": "running", "bytes_done": 1048576, "bytes_total": 4194304,
                "percent": 25.0, "mib_s": 98.5, "eta_s": 1}, ...]}

``state`` is queued, running, done, failed or cancelled; ``mib_s`` is the rate of the last ten seconds (the
average of the whole export once it is done); ``eta_s`` is null while it cannot be told.

With a lease (``lease_seconds`` > 0) the same thread checks, every second, the modification time of
``progress_file + '.lease'``, which the waiting side (the export_wait action) renews about every second. Either
way the :class:`Cancellation` is set, exports not started yet are not started, running ones stop before their
next NBD request:

- a lease file older than ``lease_seconds`` means nobody waits for the run any more (the job was cancelled in
  AWX, ansible-playbook got SIGINT or SIGTERM, the controller died): the run is *abandoned*
  (``ProgressWatch.abandoned``), and nothing after it will log out the session the playbook used;
- a lease file that is gone was released on purpose (export_wait's timeout): the playbook goes on.

The watch creates the lease file when it starts, so that the waiter has ``lease_seconds`` to take over, and
removes both files when it stops.

Byte counts come from the export engine's own counting: ``export.run_export`` tells a :class:`DiskProgress` the
bytes it is about to read (``started``) and the NBD reader reports each piece it handed to the sink (``read``),
the same pieces it counts as ``bytes_read``.
"""

from __future__ import absolute_import, division, print_function

import collections
import errno
import json
import math
import os
import threading
import time

from .._errors import Cancelled
from .._repository.store import remove_if_exists, write_file_atomically
from .._time import format_utc, utc_now

__metaclass__ = type

MIB = 1024 * 1024
STATES = ('queued', 'running', 'done', 'failed', 'cancelled')
RATE_WINDOW = 10.0   # seconds of samples the rate of a running export is measured over
PERIOD = 1.0         # seconds between two writes of the progress file (and two checks of the lease)
LEASE_SUFFIX = '.lease'
MIN_LEASE_SECONDS = 2


def option_problem(progress_file, lease_seconds, logout_on_abandon=False):
    """What is wrong with a module's ``progress_file``, ``lease_seconds`` and ``logout_on_abandon`` options, or None."""
    if logout_on_abandon and not lease_seconds:
        return 'logout_on_abandon needs lease_seconds (a run is abandoned when its lease runs out)'
    if lease_seconds and not progress_file:
        return 'lease_seconds needs progress_file (the lease file is <progress_file>.lease)'
    if lease_seconds < 0 or 0 < lease_seconds < MIN_LEASE_SECONDS:
        return 'lease_seconds must be 0 (no lease) or at least %d, not %d' % (MIN_LEASE_SECONDS, lease_seconds)
    if progress_file and not os.path.isabs(progress_file):
        return ('progress_file must be an absolute path (export_wait reads it from another process), not %s'
                % progress_file)
    if progress_file and not os.path.isdir(os.path.dirname(progress_file)):
        return 'the directory of progress_file %s does not exist; create it first' % progress_file
    return None


def lease_path(progress_file):
    return progress_file + LEASE_SUFFIX


class Cancellation:
    """Set once, with the reason; ``is_set()`` is what the scheduler and the NBD reader check."""

    def __init__(self):
        self._event = threading.Event()
        self.reason = None

    def cancel(self, reason):
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self):
        return self._event.is_set()

    def error(self):
        """The error every item that this cancellation stopped (or kept from starting) ends with."""
        return Cancelled(self.reason or 'the run was cancelled')


class DiskProgress:
    """One export's state and bytes, updated from the scheduler and the reader's threads."""

    def __init__(self, label, clock=time.monotonic):
        self.label = label
        self.state = 'queued'
        self.bytes_done = 0
        self.bytes_total = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._samples = collections.deque()  # (time, bytes_done) of the last RATE_WINDOW seconds
        self._began = None   # when the current attempt started reading
        self._ended = None

    def queued(self, total=None):
        """Waiting for a host with room (again, after a host was passed over: what it read is forgotten)."""
        with self._lock:
            self.state = 'queued'
            self.bytes_done = 0
            if total is not None:
                self.bytes_total = total
            self._samples.clear()
            self._began = None

    def running(self):
        with self._lock:
            self.state = 'running'

    def started(self, total):
        """The export is planned: ``total`` bytes are to be read (export.run_export)."""
        with self._lock:
            self.bytes_total = total
            self.bytes_done = 0
            self._began = self._clock()
            self._samples.clear()
            self._samples.append((self._began, 0))

    def read(self, length):
        """``length`` more bytes arrived (the NBD reader's ``on_read``)."""
        with self._lock:
            self.bytes_done += length

    def ended(self, state):
        with self._lock:
            if state not in STATES:
                raise ValueError('unknown state %r' % (state,))
            self.state = state
            self._ended = self._clock()

    def entry(self):
        """This disk's element of the progress document (and a rate sample for the next one)."""
        with self._lock:
            now = self._clock()
            done, total, state = self.bytes_done, self.bytes_total, self.state
            rate = 0.0
            eta = None
            if state == 'running' and self._began is not None:
                self._samples.append((now, done))
                while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                    self._samples.popleft()
                since, then = self._samples[0]
                if now > since:
                    rate = (done - then) / (now - since)
                if rate > 0:
                    eta = int(math.ceil(max(0, total - done) / rate))
            elif state == 'done':
                eta = 0
                if self._began is not None and self._ended is not None and self._ended > self._began:
                    rate = done / (self._ended - self._began)
        if total > 0:
            percent = round(min(100.0, 100.0 * done / total), 1)
        else:
            percent = 100.0 if state == 'done' else 0.0
        return {'label': self.label, 'state': state, 'bytes_done': done, 'bytes_total': total, 'percent': percent,
                'mib_s': round(rate / MIB, 1), 'eta_s': eta}


class _NoProgress:
    """What the scheduler tells when nobody watches."""

    def queued(self, total=None):
        pass

    def running(self):
        pass

    def ended(self, state):
        pass


NO_PROGRESS = _NoProgress()


def document(disks):
    """The progress document of ``disks`` (DiskProgress list) now."""
    return {'updated': format_utc(utc_now()), 'disks': [disk.entry() for disk in disks]}


def write_atomically(path, data):
    """Write ``data`` (bytes) to ``path`` as every replacing write of the collection does (mode 0600, see
    store.write_file_atomically): a reader sees the old document or the new one, never a mix."""
    write_file_atomically(path, data)


def lease_state(path, lease_seconds, now=None):
    """``(state, why)`` of the lease at ``path``: ``('held', None)``, ``('released', why)`` when the file is gone
    (the waiter deleted it) or ``('abandoned', why)`` when it is older than ``lease_seconds`` (nobody renews it)."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return 'released', 'its lease file %s is gone' % path
        raise
    age = (time.time() if now is None else now) - mtime
    if age > lease_seconds:
        return 'abandoned', 'its lease file %s was last renewed %.1f seconds ago, more than lease_seconds (%d)' % (
            path, age, lease_seconds)
    return 'held', None


def lease_problem(path, lease_seconds, now=None):
    """Why the lease at ``path`` has ended (released or abandoned), or None while it holds."""
    return lease_state(path, lease_seconds, now)[1]


def cancel_reason(problem):
    return ('the run was cancelled because the playbook stopped waiting for it (%s): an AWX job cancel, SIGINT or '
            'SIGTERM to ansible-playbook, a timeout of export_wait, or a controller that died. Exports that had not '
            'started were not started, running ones were stopped before their restore point was recorded (a restore '
            'stops before its disk is complete); the next run into the same repository cleans up what they left.'
            % problem)


class ProgressWatch:
    """Writes ``path`` once a second while a run lasts and, with ``lease_seconds``, cancels the run when its
    lease expires. ``start()`` writes the first document (an OSError there is the caller's to report) and
    creates the lease file; ``stop()`` removes both files."""

    def __init__(self, path, labels, lease_seconds=0, period=PERIOD):
        self.path = os.path.abspath(path)
        self.lease = lease_path(self.path) if lease_seconds else None
        self.lease_seconds = lease_seconds
        self.period = period
        self.disks = [DiskProgress(label) for label in labels]
        self.cancellation = Cancellation()
        self.abandoned = False  # the lease ran out: nobody waits for the run, nor logs out after it
        self.file_error = None  # the last OSError writing or removing the files (the run goes on without them)
        self._stopped = threading.Event()
        self._thread = None

    def start(self):
        self.write()
        if self.lease:
            fd = os.open(self.lease, os.O_WRONLY | os.O_CREAT | getattr(os, 'O_NOFOLLOW', 0), 0o600)
            os.close(fd)
            os.utime(self.lease, None)  # a lease left by an earlier run starts afresh
        self._thread = threading.Thread(target=self._loop, name='export-progress')
        self._thread.daemon = True
        self._thread.start()
        return self

    def write(self):
        data = json.dumps(document(self.disks), sort_keys=True).encode('utf-8') + b'\n'
        write_atomically(self.path, data)

    def tick(self):
        """One second's work: check the lease, then write the document."""
        if self.lease and not self.cancellation.is_set():
            try:
                state, problem = lease_state(self.lease, self.lease_seconds)
            except OSError as exc:
                state, problem = 'released', 'its lease file %s cannot be read: %s' % (self.lease, exc)
            if problem:
                self.abandoned = state == 'abandoned'
                self.cancellation.cancel(cancel_reason(problem))
        try:
            self.write()
        except OSError as exc:
            self.file_error = exc

    def await_waiter(self, poll=0.1):
        """After the work, with a lease: find out whether anybody still waits, since an abandoned playbook may
        have gone without cancelling anything (the work ended before the lease ran out). Returns once the lease
        is renewed after now (the waiter lives; about a second), released, or older than ``lease_seconds``
        (``abandoned`` is set)."""
        if not self.lease or self.cancellation.is_set():
            return
        ended = time.time()
        while True:
            try:
                state, dummy = lease_state(self.lease, self.lease_seconds)
                renewed = state == 'held' and os.stat(self.lease).st_mtime > ended
            except OSError:
                return
            if state == 'abandoned':
                self.abandoned = True
            if state != 'held' or renewed:
                return
            time.sleep(poll)

    def _loop(self):
        while not self._stopped.wait(self.period):
            self.tick()

    def stop(self):
        """Stop writing; remove the progress file and the lease file."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for path in (self.path, self.lease):
            if path:
                try:
                    remove_if_exists(path)
                except OSError as exc:
                    self.file_error = exc
