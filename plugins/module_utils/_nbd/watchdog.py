# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deadlines for blocking receives: a watchdog thread shuts a socket down when its receive is overdue.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Why not socket timeouts: a Python socket with a timeout polls before every receive, and a TLS socket with a
timeout loops SSL_read -> WANT_READ -> poll for every record. Each step gives up and takes back the GIL; with
many connection threads that hand-off, not the data, dominates (docs/performance.md, "blocking receives").
In blocking mode one SSL_read waits inside the kernel once per record. The deadlines move here: a receive
arms its :class:`ReceiveWatch`, the watchdog checks every ``TICK`` seconds, and an overdue socket is shut down
(``shutdown(SHUT_RDWR)`` wakes the blocked read with end-of-file). The receiver then reads ``expired`` to say
which rule ended it. The thread runs only while some connection is watched.
"""

from __future__ import absolute_import, division, print_function

import os
import socket
import threading
import time

__metaclass__ = type

TICK = 0.05  # seconds between checks: the precision of every deadline
SILENT = 'silent'  # nothing arrived for the connection timeout
SLOW = 'slow'      # the reply was not complete by its deadline


class ReceiveWatch:
    """The deadlines of one connection's current receive; plain attribute writes per record, the lock per call.

    ``silent_after`` (monotonic time or None when no receive is in progress) is pushed forward by the receiver
    each time data arrives; ``deadline`` (or None) bounds the whole reply.
    """

    def __init__(self, sock):
        self._sock = sock
        self._lock = threading.Lock()  # orders the watchdog's shutdown against the owner's close
        self.silent_after = None
        self.deadline = None
        self.expired = None

    def arm(self, silent_after, deadline):
        self.deadline = deadline
        self.silent_after = silent_after

    def disarm(self):
        """End the receive (or send); return the rule that expired it, if the watchdog shut the socket down.

        Under the lock, so the watchdog either shut the socket down before (and this says so) or never will for
        this receive: data that arrived after a shutdown is not taken for a healthy reply.
        """
        with self._lock:
            self.silent_after = None
            return self.expired

    def overdue(self, now):
        """Which rule the receive broke at ``now`` (SILENT first: a silent server is reported as silent), or None."""
        silent_after = self.silent_after
        if silent_after is None:
            return None
        if now >= silent_after:
            return SILENT
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return SLOW
        return None

    def expire(self, now):
        """Shut the socket down if its receive is still overdue; the blocked receive returns end-of-file."""
        with self._lock:
            rule = self.overdue(now)
            if rule is None or self._sock is None:
                return
            self.expired = rule
            try:
                # The plain socket's shutdown: an SSLSocket's own would also drop its TLS object under the reader.
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self):
        """The socket is about to close: never touch it again (its descriptor number may be reused)."""
        with self._lock:
            self._sock = None


class Watchdog:
    """One thread for every watched receive of the process; it ends when nothing is watched."""

    def __init__(self, tick=TICK):
        self.tick = tick
        self._reset()

    def _reset(self):
        """Start empty; also in a forked child, whose copies of the parent's watches and lock are not its own."""
        self._lock = threading.Lock()
        self._watches = set()
        self._thread = None

    def add(self, watch):
        with self._lock:
            self._watches.add(watch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name='nbd-watchdog')
                self._thread.daemon = True
                self._thread.start()

    def remove(self, watch):
        watch.release()
        with self._lock:
            self._watches.discard(watch)

    def _run(self):
        while True:
            time.sleep(self.tick)
            with self._lock:
                if not self._watches:
                    self._thread = None
                    return
                watches = list(self._watches)
            now = time.monotonic()
            for watch in watches:
                if watch.overdue(now) is not None:
                    watch.expire(now)


WATCHDOG = Watchdog()
if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=WATCHDOG._reset)  # pylint: disable=protected-access
