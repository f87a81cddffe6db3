# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One NBD connection: fixed-newstyle handshake, optional STARTTLS, NBD_OPT_EXPORT_NAME, reads.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

The export is selected with NBD_OPT_EXPORT_NAME because that is the only option XenServer's
server (xapi-nbd) accepts for it; it answers GO/INFO/STRUCTURED_REPLY with NBD_REP_ERR_UNSUP.
Transmission uses simple replies only, so a READ reply is a 16-byte header followed by the data.

Two bounds keep a server that trickles data (a few bytes now and then, never silent for ``timeout``) from
hanging a run: every reply must be complete within ``timeout`` plus its size at ``min_rate_mib_s``, counted
from the moment the client starts waiting for it; and the handshake after the TCP connect (greeting, TLS,
export name) must end within ``HANDSHAKE_TIMEOUTS`` times ``timeout``.
"""

from __future__ import absolute_import, division, print_function

import math
import socket
import ssl
import time

from . import protocol as p
from .errors import (
    NbdConnectError,
    NbdConnectionLost,
    NbdExportRefused,
    NbdHandshakeInterrupted,
    NbdHandshakeTimeout,
    NbdOptionError,
    NbdProtocolError,
    NbdServerError,
    NbdTimeout,
    NbdTlsError,
)
from .tls import describe_session, is_legacy_cipher
from .watchdog import SILENT, SLOW, WATCHDOG, ReceiveWatch

__metaclass__ = type

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 86400.0
# A reply must arrive within timeout + its size at this rate; 0 leaves only the per-recv timeout.
DEFAULT_MIN_RATE_MIB_S = 1.0
# The handshake after the TCP connect must end within this many timeouts.
HANDSHAKE_TIMEOUTS = 2
# The states of a connection. Only two have a polite goodbye: OPTIONS (the client's option requests and the
# server's replies are in step, NBD_OPT_ABORT ends the session) and TRANSMISSION (NBD_CMD_DISC). In the others
# (waiting for the greeting, inside the TLS handshake, after the export name was sent, after any error that may
# have left the stream out of step) the only safe end is closing the socket.
CLOSED = 'closed'
GREETING = 'greeting'
OPTIONS = 'options'
TLS_HANDSHAKE = 'tls handshake'
EXPORT_REQUESTED = 'export requested'
TRANSMISSION = 'transmission'
BROKEN = 'broken'

GOODBYES = {
    OPTIONS: p.OPTION_REQUEST.pack(p.IHAVEOPT, p.OPT_ABORT, 0),
    TRANSMISSION: p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0),
}

# Seconds: a reply deadline this close to the per-recv timeout does not shorten the wait (see _recv).
DEADLINE_SLACK = 0.1
MIB = 1024 * 1024


def validate_options(port=None, timeout=None, min_rate_mib_s=None):
    """Check the connection options a user gave; raise NbdOptionError (code INVALID_OPTION) otherwise.

    ``port``: an integer (or a string of digits, as XenServer returns it) from 1 to 65535. ``timeout``:
    seconds, finite, above 0 and at most MAX_TIMEOUT. ``min_rate_mib_s``: MiB/s, finite, 0 or more (0 turns
    the rate bound off). Options given as None are not checked. The message names the option, the accepted
    range and the value given.
    """
    if port is not None:
        number = None
        if not isinstance(port, (bool, float)) and str(port).strip().isdigit():
            number = int(str(port).strip())
        if number is None or not 1 <= number <= 65535:
            raise NbdOptionError('port must be an integer from 1 to 65535, not %s' % _shown(port))
    if timeout is not None:
        value = _number(timeout)
        if value is None or not 0 < value <= MAX_TIMEOUT:
            raise NbdOptionError('timeout must be a finite number of seconds above 0 and at most %d, not %s'
                                 % (MAX_TIMEOUT, _shown(timeout)))
    if min_rate_mib_s is not None:
        value = _number(min_rate_mib_s)
        if value is None or value < 0:
            raise NbdOptionError('min_rate_mib_s must be a finite number of MiB/s, 0 or more (0 turns the minimum '
                                 'rate off), not %s' % _shown(min_rate_mib_s))


def _number(value):
    """``value`` as a finite float, or None."""
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _shown(value):
    text = str(value)
    return text if len(text) <= 40 else text[:40] + '...'


class ConnectionTarget:
    """Where and how to connect: address, port, export name, TLS settings (None: plain) and time bounds.

    Raises NbdOptionError when ``port``, ``timeout`` or ``min_rate_mib_s`` is out of range (validate_options).
    """

    def __init__(self, address, port, exportname, tls=None, timeout=DEFAULT_TIMEOUT,
                 min_rate_mib_s=DEFAULT_MIN_RATE_MIB_S):
        validate_options(port=port, timeout=timeout, min_rate_mib_s=min_rate_mib_s)
        self.address = address
        self.port = int(str(port).strip())
        self._exportname = exportname.encode('utf-8') if not isinstance(exportname, bytes) else exportname
        self.tls = tls
        self.timeout = timeout
        self.min_rate_mib_s = float(min_rate_mib_s or 0)

    @property
    def exportname(self):
        return self._exportname

    def __repr__(self):
        # Never show the export name: it carries a XenAPI session reference.
        return 'ConnectionTarget(%s)' % self.where

    @property
    def where(self):
        host = '[%s]' % self.address if ':' in self.address else self.address
        return 'NBD server %s:%d' % (host, self.port)


class NbdConnection:
    """An NBD connection; ``open`` returns one in TRANSMISSION. ``state`` is one of the states above."""

    def __init__(self, target):
        self.target = target
        self.state = CLOSED
        self.export_size = None
        self.transmission_flags = 0
        self.tls_description = None
        self.tls_legacy_cipher = False
        self.tls_verified_by = None
        self.tls_warnings = []
        self._sock = None
        self._header = bytearray(p.SIMPLE_REPLY.size)
        self._handshake_deadline = None
        self._reply_started = None  # when the client started waiting for the current reply
        self._watch = None  # in TRANSMISSION: the deadlines of the blocking socket (see watchdog.py)
        self._tls_read = None  # in TRANSMISSION over TLS: the read of the socket's SSL object

    @classmethod
    def open(cls, target):
        """Connect, negotiate and return a connection ready for reads."""
        conn = cls(target)
        try:
            conn._connect()
            conn._negotiate()
        except BaseException as exc:
            if isinstance(exc, NbdProtocolError):
                conn.state = BROKEN  # the server said something unexpected: the stream is out of step
            conn.close()  # NBD_OPT_ABORT when the option haggling is still in step, else just the socket
            raise
        return conn

    # -- handshake -----------------------------------------------------------------------------

    def _connect(self):
        where = self.target.where
        try:
            sock = socket.create_connection((self.target.address, self.target.port), timeout=self.target.timeout)
        except socket.timeout:
            raise NbdConnectError('%s did not accept a connection within %s s' % (where, self.target.timeout))
        except OSError as exc:
            raise NbdConnectError('cannot connect to %s: %s' % (where, exc.strerror or exc))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self.state = GREETING

    def _negotiate(self):
        where = self.target.where
        self._handshake_deadline = time.monotonic() + HANDSHAKE_TIMEOUTS * self.target.timeout
        greeting = self._recv_handshake(p.GREETING.size, 'the greeting')
        magic, newstyle, handshake_flags = p.GREETING.unpack(greeting)
        if magic != p.NBDMAGIC:
            raise NbdProtocolError('%s is not an NBD server (bad greeting magic 0x%016x)' % (where, magic))
        if newstyle == p.OLDSTYLE_MAGIC:
            raise NbdProtocolError('%s speaks the oldstyle protocol; only fixed newstyle is supported' % where)
        if newstyle != p.IHAVEOPT:
            raise NbdProtocolError('%s sent an unknown negotiation magic 0x%016x' % (where, newstyle))
        if not handshake_flags & p.FLAG_FIXED_NEWSTYLE:
            raise NbdProtocolError('%s does not support fixed newstyle negotiation' % where)
        no_zeroes = bool(handshake_flags & p.FLAG_NO_ZEROES)
        client_flags = p.FLAG_FIXED_NEWSTYLE | (p.FLAG_NO_ZEROES if no_zeroes else 0)
        self._send(p.CLIENT_FLAGS.pack(client_flags))
        self.state = OPTIONS

        if self.target.tls is not None:
            self._starttls()

        name = self.target.exportname
        self.state = EXPORT_REQUESTED  # the server answers with the export or closes: nothing to abort any more
        self._send(p.OPTION_REQUEST.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, len(name)) + name)
        reply_size = p.EXPORT_INFO.size + (0 if no_zeroes else p.EXPORT_INFO_ZEROES)
        try:
            reply = self._recv_exact_bytes(reply_size, self._handshake_deadline,
                                           self._handshake_too_slow('the reply to the export name'))
        except NbdConnectionLost as exc:
            raise self._export_refused(exc)
        self._handshake_deadline = None
        self.export_size, self.transmission_flags = p.EXPORT_INFO.unpack_from(reply)
        if self.export_size > p.MAX_EXPORT_SIZE:
            raise NbdProtocolError('%s announced an export of %d bytes, more than the %d this client accepts'
                                   % (where, self.export_size, p.MAX_EXPORT_SIZE))
        self.state = TRANSMISSION
        self._watch_receives()

    def _watch_receives(self):
        """From here on the socket blocks and the watchdog enforces the deadlines: a socket with a timeout polls
        before every receive (and TLS once per record), which costs a GIL hand-off each (watchdog.py)."""
        self._watch = ReceiveWatch(self._sock)
        WATCHDOG.add(self._watch)
        self._sock.settimeout(None)
        # CPython's SSLSocket.recv_into is two Python calls around its SSL object's read(len, buffer), once per
        # 16 KiB record; calling the read itself saved 10 % CPU with 8 connections (docs/performance.md).
        self._tls_read = getattr(getattr(self._sock, '_sslobj', None), 'read', None)

    def _export_refused(self, exc):
        where = self.target.where
        if self.target.tls is None:
            return NbdExportRefused(
                '%s closed the connection after the export name was sent in clear text (%s): the export name is '
                'unknown or no longer valid, or the server requires TLS' % (where, exc),
                situation='export_refused_plain')
        return NbdExportRefused(
            '%s closed the connection after the export name (%s): the export name is unknown or no longer valid, '
            'the export cannot be served, or the server demands a TLS client certificate' % (where, exc),
            situation='export_refused_tls')

    def _starttls(self):
        where = self.target.where
        self._send(p.OPTION_REQUEST.pack(p.IHAVEOPT, p.OPT_STARTTLS, 0))
        reply_type, _data = self._recv_option_reply(p.OPT_STARTTLS)
        if reply_type == p.REP_ERR_POLICY:
            raise NbdTlsError('%s refused STARTTLS (NBD_REP_ERR_POLICY): it serves NBD without TLS. Nothing was sent '
                              'in clear text.' % where, situation='starttls_policy')
        if reply_type != p.REP_ACK:
            raise NbdTlsError('%s refused STARTTLS (%s); the client does not fall back to clear text'
                              % (where, p.option_reply_name(reply_type)), situation='starttls_refused')
        settings = self.target.tls
        remaining = self._handshake_deadline - time.monotonic()
        if remaining <= 0:
            raise self._handshake_too_slow('the TLS handshake')(0)
        self.state = TLS_HANDSHAKE
        try:
            context = settings.make_context()
            # wrap_socket bounds the whole TLS handshake by the socket's timeout.
            self._sock.settimeout(min(self.target.timeout, remaining))
            self._sock = context.wrap_socket(self._sock, server_hostname=settings.server_hostname())
            self._sock.settimeout(self.target.timeout)
        except socket.timeout:
            raise NbdTlsError('TLS handshake with %s timed out (the handshake must end within %s s, %d times the '
                              'connection timeout)' % (where, HANDSHAKE_TIMEOUTS * self.target.timeout,
                                                       HANDSHAKE_TIMEOUTS), situation='handshake_slow')
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as exc:
            raise NbdHandshakeInterrupted(
                '%s closed the connection during the TLS handshake (%s): it is restarting, or it accepts none of the '
                'suites the client offers (TLS 1.2+ with ECDHE AES-GCM, or RSA AES128-SHA256), or it demands a TLS '
                'client certificate' % (where, exc.reason or exc))
        except ssl.SSLError as exc:
            raise NbdTlsError('TLS handshake with %s failed: %s. The client offers TLS 1.2+ with ECDHE AES-GCM and '
                              'RSA AES128-SHA256 suites.' % (where, exc.reason or exc))
        except OSError as exc:
            raise NbdHandshakeInterrupted('TLS handshake with %s failed: the connection broke (%s). A server that '
                                          'demands a TLS client certificate also closes here.' % (where, exc))
        self.state = OPTIONS
        self.tls_verified_by = settings.verify(self._sock, where)
        self.tls_warnings = settings.warnings(self._sock, where, self.tls_verified_by)
        self.tls_description = describe_session(self._sock)
        self.tls_legacy_cipher = is_legacy_cipher(self._sock)

    def _recv_option_reply(self, option):
        where = self.target.where
        header = self._recv_handshake(p.OPTION_REPLY.size, 'the reply to option %d' % option)
        magic, echoed, reply_type, length = p.OPTION_REPLY.unpack(header)
        if magic != p.OPTION_REPLY_MAGIC:
            raise NbdProtocolError('%s sent a bad option reply magic 0x%016x' % (where, magic))
        if echoed != option:
            raise NbdProtocolError('%s answered option %d while option %d was asked' % (where, echoed, option))
        if length > 65536:
            raise NbdProtocolError('%s sent an option reply of %d bytes; refusing to read it' % (where, length))
        data = self._recv_handshake(length, 'the reply to option %d' % option) if length else b''
        return reply_type, data

    def _recv_handshake(self, size, what):
        try:
            return self._recv_exact_bytes(size, self._handshake_deadline, self._handshake_too_slow(what))
        except NbdTimeout:
            raise NbdHandshakeInterrupted('%s sent nothing for %s s during the handshake, while %s was expected'
                                          % (self.target.where, self.target.timeout, what))
        except NbdConnectionLost as exc:
            raise NbdHandshakeInterrupted('%s closed the connection during the handshake, while sending %s (%s)'
                                          % (self.target.where, what, exc))

    def _handshake_too_slow(self, what):
        """A factory for the error of a handshake that passed its deadline while ``what`` was expected."""
        target = self.target

        def too_slow(received):
            return NbdHandshakeTimeout(
                '%s did not complete the NBD handshake within %s s (%d times the connection timeout): it was still '
                'sending %s (%d bytes of it had arrived). The server is overloaded or the link is far too slow.'
                % (target.where, HANDSHAKE_TIMEOUTS * target.timeout, HANDSHAKE_TIMEOUTS, what, received),
                situation='handshake_slow')
        return too_slow

    # -- transmission ----------------------------------------------------------------------------

    def send_read(self, cookie, offset, length):
        """Send one READ request; the reply is matched by ``cookie``."""
        self._send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, cookie, offset, length))

    def recv_reply_header(self):
        """Receive one simple reply header; return ``(error, cookie)``.

        Starts the clock of the reply: header and data together must arrive within ``reply_deadline``.
        """
        self._reply_started = time.monotonic()
        size = len(self._header)
        self._recv(memoryview(self._header), self.reply_deadline(size), self._reply_too_slow(None, 0))
        magic, error, cookie = p.SIMPLE_REPLY.unpack(self._header)
        if magic != p.SIMPLE_REPLY_MAGIC:
            self.state = BROKEN
            if magic == p.STRUCTURED_REPLY_MAGIC:
                raise NbdProtocolError('%s sent a structured reply, which was not negotiated' % self.target.where)
            raise NbdProtocolError('%s sent a reply with bad magic 0x%08x' % (self.target.where, magic))
        return error, cookie

    def read(self, offset, length):
        """Read one range synchronously (for small reads and tests)."""
        self.send_read(0, offset, length)
        error, cookie = self.recv_reply_header()
        if cookie != 0:
            self.state = BROKEN
            raise NbdProtocolError('%s answered cookie %d, expected 0' % (self.target.where, cookie))
        if error:
            raise server_error(self.target.where, error, offset, length)
        buf = bytearray(length)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def recv_into(self, view):
        """Fill ``view`` completely with the data of the reply whose header ``recv_reply_header`` returned.

        Raises NbdTimeout when the server is silent for ``timeout``, or when the reply (header and data) is not
        complete by ``reply_deadline``.
        """
        header = len(self._header)
        if self._reply_started is None:  # no header was received (not the way replies are read)
            self._recv(view)
            return
        self._recv(view, self.reply_deadline(header + len(view)), self._reply_too_slow(len(view), header))

    def reply_deadline(self, size):
        """The monotonic time by which a reply of ``size`` bytes (header included) must be complete, or None.

        ``timeout`` plus the time ``size`` takes at ``min_rate_mib_s``, from the moment the client started to
        wait for the reply; None when ``min_rate_mib_s`` is 0 (only the per-recv timeout applies then).
        """
        rate = self.target.min_rate_mib_s
        if not rate or self._reply_started is None:
            return None
        return self._reply_started + self.target.timeout + size / (rate * MIB)

    def _reply_too_slow(self, data_length, already):
        """A factory for the error of a reply that passed its deadline: ``data_length`` bytes of data (None while
        the header is read), ``already`` bytes of it received before."""
        target = self.target
        started = self._reply_started

        def too_slow(received):
            what = ('the reply to a read of %d bytes' % data_length if data_length is not None
                    else 'the header of a read reply')
            return NbdTimeout(
                '%s sent data too slowly: %s was not complete after %.1f s with %d bytes arrived, and a reply must '
                'arrive within the connection timeout (%s s) plus its size at the minimum rate (%g MiB/s)'
                % (target.where, what, time.monotonic() - started, already + received, target.timeout,
                   target.min_rate_mib_s), situation='reply_slow')
        return too_slow

    def _recv(self, view, deadline=None, too_slow=None):
        """Fill ``view`` from the socket; past the monotonic ``deadline``, raise ``too_slow(bytes received)``."""
        try:
            if self._watch is not None:
                self._recv_watched(view, deadline, too_slow)
            else:
                self._recv_all(self._sock, view, deadline, too_slow, self.target.timeout)
        except BaseException:
            self.state = BROKEN  # part of a message may have arrived: the stream is out of step
            raise

    def _recv_all(self, sock, view, deadline, too_slow, timeout):
        """``_recv`` without the state change."""
        bounded = False  # the socket timeout was lowered to end at the deadline
        received_total = 0
        try:
            try:
                while len(view):
                    if deadline is not None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise too_slow(received_total)
                        # Within DEADLINE_SLACK of the per-recv timeout the silence rule decides alone, so a
                        # server that sends nothing is reported as silent, not as slow.
                        if remaining < timeout - DEADLINE_SLACK:
                            sock.settimeout(remaining)
                            bounded = True
                    received = sock.recv_into(view)
                    if not received:
                        raise NbdConnectionLost('%s closed the connection' % self.target.where)
                    received_total += received
                    view = view[received:]
            finally:
                if bounded:
                    try:
                        sock.settimeout(timeout)
                    except OSError:
                        pass
        except socket.timeout:
            if bounded:  # the lowered timeout ended at the deadline
                raise too_slow(received_total)
            raise self._silent()
        except OSError as exc:
            raise self._lost(exc)

    def _recv_watched(self, view, deadline, too_slow):
        """``_recv`` on the blocking socket of TRANSMISSION: the watchdog shuts the socket down when nothing has
        arrived for ``timeout`` or the ``deadline`` passed, and the receive then ends here with end-of-file."""
        watch = self._watch
        recv_into = self._sock.recv_into
        tls_read = self._tls_read
        timeout = self.target.timeout
        received_total = 0
        try:
            watch.arm(time.monotonic() + timeout, deadline)
            try:
                while len(view):
                    if tls_read is not None:
                        try:
                            received = tls_read(len(view), view)
                        except ssl.SSLEOFError:  # as SSLSocket.recv_into says it: an end without close_notify
                            received = 0
                    else:
                        received = recv_into(view)
                    if not received:
                        break
                    received_total += received
                    view = view[received:]
                    watch.silent_after = time.monotonic() + timeout
            finally:
                expired = watch.disarm()
        except OSError as exc:  # ssl.SSLError is one
            raise self._expiry_error(expired, too_slow, received_total) or self._lost(exc)
        if len(view) or expired:  # expired: the socket was shut down, even if buffered data filled the view
            raise self._expiry_error(expired, too_slow, received_total) or NbdConnectionLost(
                '%s closed the connection' % self.target.where)

    def _expiry_error(self, expired, too_slow, received_total):
        """The timeout error for the rule that expired a receive (``disarm``'s answer), else None."""
        if expired == SILENT:
            return self._silent()
        if expired == SLOW:
            return too_slow(received_total)
        return None

    def _silent(self):
        return NbdTimeout('%s sent nothing for %s s' % (self.target.where, self.target.timeout))

    def _lost(self, exc):
        """NbdConnectionLost for a socket or TLS error."""
        if isinstance(exc, ssl.SSLError):
            return NbdConnectionLost('TLS error on the connection to %s: %s' % (self.target.where, exc.reason or exc))
        return NbdConnectionLost('connection to %s broke: %s' % (self.target.where, exc.strerror or exc))

    def _recv_exact_bytes(self, size, deadline=None, too_slow=None):
        buf = bytearray(size)
        self._recv(memoryview(buf), deadline, too_slow)
        return bytes(buf)

    def _send(self, data):
        watch = self._watch
        if watch is not None:  # a blocking socket: the watchdog ends a send the server does not take in time
            watch.arm(time.monotonic() + self.target.timeout, None)
        timed_out = False
        try:
            try:
                self._sock.sendall(data)
            finally:
                # Watched without a reply deadline, a send can only expire by silence, even if sendall returned.
                timed_out = watch is not None and watch.disarm() is not None
        except socket.timeout:
            timed_out = True
        except OSError as exc:
            if not timed_out:
                self.state = BROKEN  # part of the message may have gone out
                raise self._lost(exc)
        if timed_out:
            self.state = BROKEN
            raise NbdTimeout('%s accepted nothing for %s s' % (self.target.where, self.target.timeout))

    # -- teardown ---------------------------------------------------------------------------------

    def close(self):
        """Say goodbye as the state allows (NBD_OPT_ABORT while negotiating options, NBD_CMD_DISC in
        transmission, nothing after an error), best effort, and close the socket."""
        if self._sock is None:
            return
        goodbye = GOODBYES.get(self.state)
        if goodbye is not None:
            try:
                self._sock.settimeout(5)
                self._sock.sendall(goodbye)
            except (OSError, ValueError):
                pass
        self.abort()

    def abort(self):
        """Close the socket without a goodbye (after errors)."""
        sock, self._sock = self._sock, None
        self.state = CLOSED
        if self._watch is not None:  # before the close: the watchdog must not shut a reused descriptor down
            WATCHDOG.remove(self._watch)
            self._watch = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def server_error(where, error, offset, length):
    """Build the exception for an error reply to a READ."""
    return NbdServerError('%s answered the read of %d bytes at offset %d with %s'
                          % (where, length, offset, p.errno_name(error)), error=error, offset=offset, length=length)


# errors after which another host of the pool may serve the export; a TLS failure is not one (a host whose
# certificate does not verify is reported, not passed over)
FAILOVER_ERRORS = (NbdConnectError, NbdHandshakeInterrupted, NbdExportRefused)


def open_any(targets):
    """Open a connection to the first of ``targets`` (the hosts that can serve one export, in the order to
    try) that serves it; return ``(connection, passed_over)``, ``passed_over`` listing ``(target, error)`` of
    the hosts that did not.  When none does, the last host's error is raised, naming every host's."""
    if not targets:
        raise NbdOptionError('no NBD server to connect to')
    passed_over = []
    for target in targets:
        try:
            return NbdConnection.open(target), passed_over
        except FAILOVER_ERRORS as exc:
            passed_over.append((target, exc))
    raise none_served([exc for dummy, exc in passed_over])


def none_served(errors):
    """The error when no host served an export: the last host's (one of FAILOVER_ERRORS), naming every host's."""
    last = errors[-1]
    if len(errors) == 1:
        return last
    return last.__class__('none of the %d hosts that can serve the export did: %s'
                          % (len(errors), '; '.join(str(exc) for exc in errors)), situation=last.situation)
