# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parallel extent reader: several NBD connections, several requests in flight on each.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

XenServer's server answers one request at a time per connection, so throughput comes from
several connections (one thread each; socket and TLS I/O release the GIL), while pipelining
hides the round trip on every connection.  Replies are matched by cookie because servers may
answer out of order.  Each request reads into one of a few preallocated buffers that are handed
to the sink as memoryviews and reused once the sink returns.
"""

from __future__ import absolute_import, division, print_function

import collections
import threading
import time

from .._errors import Cancelled
from .._extents import split
from .connection import NbdConnection, server_error
from .protocol import MAX_REQUEST_SIZE, REQUEST_ALIGNMENT
from .errors import NbdError, NbdExportRefused, NbdProtocolError

__metaclass__ = type

DEFAULT_CONNECTIONS = 4
MAX_CONNECTIONS = 16             # XenServer's xapi-nbd closes the 17th connection
DEFAULT_REQUESTS_IN_FLIGHT = 8
# Measured (docs/performance.md, current figures): 1 MiB x 8 in flight reads fulls faster than 256 KiB x 16 and 4 MiB x 4.
DEFAULT_REQUEST_SIZE = 1024 * 1024
BUFFER_BUDGET = 128 * 1024 * 1024  # upper bound for all read buffers together
DEFAULT_RETRIES = 3


class ReadStats:
    """What a read did."""

    def __init__(self):
        self.bytes_read = 0
        self.requests = 0
        self.reconnects = 0
        self.seconds = 0.0
        self.connections = 0
        self._lock = threading.Lock()

    def add(self, length):
        with self._lock:
            self.bytes_read += length
            self.requests += 1

    def add_reconnect(self):
        with self._lock:
            self.reconnects += 1


class _WorkQueue:
    """Requests not yet sent, shared by the connection threads."""

    def __init__(self, requests):
        self._pending = collections.deque(requests)
        self._lock = threading.Lock()
        self.failed = threading.Event()

    def take(self):
        if self.failed.is_set():
            return None
        with self._lock:
            return self._pending.popleft() if self._pending else None


class ExtentReader:
    """Reads extents of one export over up to ``connections`` connections.

    ``target`` is a ConnectionTarget.  ``first_connection`` may be an already open connection
    (used to learn the export size before planning); the reader takes ownership of it.

    ``on_read(length)``, when given, is called (from the connection threads) each time a request's data has
    been handed to the sink, with the bytes it held: what :class:`ReadStats` counts as ``bytes_read``.
    ``cancel``, when given, is checked (``cancel.is_set()``) before every request is sent and every reply
    awaited: once set, the connections stop and ``read`` raises :class:`Cancelled`.
    """

    def __init__(self, target, connections=DEFAULT_CONNECTIONS, requests_in_flight=DEFAULT_REQUESTS_IN_FLIGHT,
                 request_size=DEFAULT_REQUEST_SIZE, retries=DEFAULT_RETRIES, first_connection=None,
                 retry_delay=0.5, on_read=None, cancel=None):
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError('connections must be between 1 and %d' % MAX_CONNECTIONS)
        if requests_in_flight < 1:
            raise ValueError('requests_in_flight must be at least 1')
        if not 0 < request_size <= MAX_REQUEST_SIZE or request_size % REQUEST_ALIGNMENT:
            raise ValueError('request_size must be a multiple of %d bytes up to %d' % (REQUEST_ALIGNMENT, MAX_REQUEST_SIZE))
        self.target = target
        self.connections = connections
        self.request_size = request_size
        # Bound the memory: connections x requests in flight x request size stays within the budget.
        self.requests_in_flight = max(1, min(requests_in_flight, BUFFER_BUDGET // (connections * request_size)))
        self.retries = retries
        self.retry_delay = retry_delay
        self._first_connection = first_connection
        self.on_read = on_read
        self.cancel = cancel

    def _check_cancel(self):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled('the read from %s was cancelled' % self.target.where)

    def read(self, extents, sink):
        """Read every extent and call ``sink(offset, view)`` for each piece (from several threads).

        ``view`` is only valid during the call.  Raises the first error any connection hit, after
        stopping the others.
        """
        self._check_cancel()
        stats = ReadStats()
        started = time.monotonic()
        requests = list(split(extents, self.request_size))
        buffer_size = max([length for _offset, length in requests] or [1])
        work = _WorkQueue(requests)
        workers = min(self.connections, max(1, len(requests)))
        stats.connections = workers
        errors = []
        threads = []
        first = self._first_connection
        self._first_connection = None
        try:
            for index in range(workers):
                conn = first if index == 0 else None
                thread = threading.Thread(target=self._run_worker, args=(conn, work, sink, stats, errors, buffer_size),
                                          name='nbd-reader-%d' % index)
                thread.daemon = True
                threads.append(thread)
                thread.start()
                first = None
        finally:
            if first is not None:
                first.close()
            for thread in threads:
                thread.join()
        stats.seconds = time.monotonic() - started
        if errors:
            raise errors[0]
        expected = sum(length for _offset, length in requests)
        if stats.bytes_read != expected:  # a backstop: every byte asked for must have been delivered
            raise NbdProtocolError('%s delivered %d bytes of the %d requested' % (self.target.where, stats.bytes_read,
                                                                                  expected))
        return stats

    def close(self):
        """Close the first connection if ``read`` never took it over."""
        first, self._first_connection = self._first_connection, None
        if first is not None:
            first.close()

    def _run_worker(self, conn, work, sink, stats, errors, buffer_size):
        try:
            self._worker(conn, work, sink, stats, buffer_size)
        except BaseException as exc:  # pylint: disable=broad-except
            work.failed.set()
            errors.append(exc)

    def _worker(self, conn, work, sink, stats, buffer_size):
        # Buffers no larger than the longest request: small incrementals then allocate little.
        buffers = [bytearray(buffer_size) for _slot in range(self.requests_in_flight)]
        free = list(range(len(buffers)))
        inflight = {}          # cookie -> (offset, length, buffer index)
        retry = collections.deque()  # requests whose connection broke before they were answered
        attempts_left = self.retries
        next_cookie = 1
        try:
            while True:
                try:
                    self._check_cancel()  # between requests: a cancel stops the export within one reply
                    if conn is None:
                        conn = NbdConnection.open(self.target)
                    while free and not work.failed.is_set():
                        request = retry.popleft() if retry else work.take()
                        if request is None:
                            break
                        offset, length = request
                        # Registered before sending: if the send fails, the retry below still knows it.
                        inflight[next_cookie] = (offset, length, free.pop())
                        next_cookie += 1
                        conn.send_read(next_cookie - 1, offset, length)
                    if not inflight:
                        return
                    error, cookie = conn.recv_reply_header()
                    if cookie not in inflight:
                        raise NbdProtocolError('%s answered cookie %d, which matches no request in flight'
                                               % (self.target.where, cookie))
                    offset, length, slot = inflight[cookie]
                    if error:
                        raise server_error(self.target.where, error, offset, length)
                    view = memoryview(buffers[slot])[:length]
                    conn.recv_into(view)
                    # Only a request whose data fully arrived leaves the in-flight table.
                    del inflight[cookie]
                    sink(offset, view)
                    view.release()
                    free.append(slot)
                    stats.add(length)
                    if self.on_read is not None:
                        self.on_read(length)
                except NbdError as exc:
                    # A refused export name on a reconnect (the first handshake of this export worked) is a
                    # server going away mid-handshake as often as an expired session: worth the bounded retries.
                    retryable = exc.retryable or (isinstance(exc, NbdExportRefused) and conn is None)
                    if not retryable or attempts_left <= 0 or work.failed.is_set():
                        raise self._with_context(exc, inflight, retry)
                    # The connection broke: resend what it still owed on a new one.
                    attempts_left -= 1
                    stats.add_reconnect()
                    for offset, length, slot in inflight.values():
                        retry.append((offset, length))
                        free.append(slot)
                    inflight.clear()
                    if conn is not None:
                        conn.abort()
                        conn = None
                    time.sleep(self.retry_delay * (self.retries - attempts_left))
        finally:
            if conn is not None:
                if inflight:
                    conn.abort()
                else:
                    conn.close()

    def _with_context(self, exc, inflight, retry):
        """Name the first range that was not read, and the retries, in the message."""
        if not exc.retryable and not isinstance(exc, NbdExportRefused):
            return exc
        pending = sorted([(o, n) for o, n, _s in inflight.values()] + list(retry))
        where = ''
        if pending:
            where = ' while reading %d bytes at offset %d' % (pending[0][1], pending[0][0])
        exc.args = ('%s%s (gave up after %d reconnect attempts)' % (exc, where, self.retries),) + exc.args[1:]
        return exc
