# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One NBD connection: fixed-newstyle handshake, optional STARTTLS, NBD_OPT_EXPORT_NAME, reads.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

The export is selected with NBD_OPT_EXPORT_NAME because that is the only option XenServer's
server (xapi-nbd) accepts for it; it answers GO/INFO/STRUCTURED_REPLY with NBD_REP_ERR_UNSUP.
Transmission uses simple replies only, so a READ reply is a 16-byte header followed by the data.
"""

from __future__ import absolute_import, division, print_function

import socket
import ssl

from . import protocol as p
from .errors import (
    NbdConnectError, NbdConnectionLost, NbdExportRefused, NbdHandshakeInterrupted,
    NbdProtocolError, NbdServerError, NbdTimeout, NbdTlsError,
)
from .tls import describe_session, is_legacy_cipher

__metaclass__ = type

DEFAULT_TIMEOUT = 60.0


class ConnectionTarget:
    """Where and how to connect: address, port, export name and TLS settings (None: plain)."""

    def __init__(self, address, port, exportname, tls=None, timeout=DEFAULT_TIMEOUT):
        self.address = address
        self.port = int(port)
        self._exportname = exportname.encode('utf-8') if not isinstance(exportname, bytes) else exportname
        self.tls = tls
        self.timeout = timeout

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
    """An open NBD connection in transmission phase."""

    def __init__(self, target):
        self.target = target
        self.export_size = None
        self.transmission_flags = 0
        self.tls_description = None
        self.tls_legacy_cipher = False
        self.tls_verified_by = None
        self._sock = None
        self._header = bytearray(p.SIMPLE_REPLY.size)

    @classmethod
    def open(cls, target):
        """Connect, negotiate and return a connection ready for reads."""
        conn = cls(target)
        try:
            conn._connect()
            conn._negotiate()
        except BaseException:
            conn.abort()
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

    def _negotiate(self):
        where = self.target.where
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

        if self.target.tls is not None:
            self._starttls()

        name = self.target.exportname
        self._send(p.OPTION_REQUEST.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, len(name)) + name)
        reply_size = p.EXPORT_INFO.size + (0 if no_zeroes else p.EXPORT_INFO_ZEROES)
        try:
            reply = self._recv_exact_bytes(reply_size)
        except NbdConnectionLost as exc:
            raise NbdExportRefused(self._export_refused_message(exc))
        self.export_size, self.transmission_flags = p.EXPORT_INFO.unpack_from(reply)
        if self.export_size > p.MAX_EXPORT_SIZE:
            raise NbdProtocolError('%s announced an export of %d bytes, more than the %d this client accepts'
                                   % (where, self.export_size, p.MAX_EXPORT_SIZE))

    def _export_refused_message(self, exc):
        where = self.target.where
        if self.target.tls is None:
            return ('%s closed the connection after the export name was sent in clear text (%s): the export name '
                    'is unknown, its XenAPI session is no longer logged in, or the server requires TLS '
                    '(its network has purpose "nbd"; use tls: true)' % (where, exc))
        return ('%s closed the connection after the export name (%s): the export name is unknown, the disk '
                'cannot be exported (for example a cbt_metadata snapshot), or the XenAPI session that called '
                'VDI.get_nbd_info is no longer logged in (the export name is only valid while it is). A server that '
                'demands a TLS client certificate also closes here.' % (where, exc))

    def _starttls(self):
        where = self.target.where
        self._send(p.OPTION_REQUEST.pack(p.IHAVEOPT, p.OPT_STARTTLS, 0))
        reply_type, _data = self._recv_option_reply(p.OPT_STARTTLS)
        if reply_type == p.REP_ERR_POLICY:
            raise NbdTlsError(
                '%s refused STARTTLS (NBD_REP_ERR_POLICY): it serves NBD without TLS. On XenServer this means the '
                'network has purpose "insecure_nbd" (get_nbd_info still returns cert and subject for such networks). '
                'Give the network purpose "nbd" to keep the export encrypted, or set tls: false to accept an '
                'unencrypted export. Nothing was sent in clear text.' % where)
        if reply_type != p.REP_ACK:
            raise NbdTlsError('%s refused STARTTLS (%s); with tls: true the client does not fall back to clear text'
                              % (where, p.option_reply_name(reply_type)))
        settings = self.target.tls
        try:
            context = settings.make_context()
            self._sock = context.wrap_socket(self._sock, server_hostname=settings.server_hostname())
        except socket.timeout:
            raise NbdTlsError('TLS handshake with %s timed out' % where)
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
        self.tls_verified_by = settings.verify(self._sock, where)
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
            return self._recv_exact_bytes(size)
        except NbdTimeout:
            raise NbdHandshakeInterrupted('%s sent nothing for %s s during the handshake, while %s was expected'
                                          % (self.target.where, self.target.timeout, what))
        except NbdConnectionLost as exc:
            raise NbdHandshakeInterrupted('%s closed the connection during the handshake, while sending %s (%s)'
                                          % (self.target.where, what, exc))

    # -- transmission ----------------------------------------------------------------------------

    def send_read(self, cookie, offset, length):
        """Send one READ request; the reply is matched by ``cookie``."""
        self._send(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, cookie, offset, length))

    def recv_reply_header(self):
        """Receive one simple reply header; return ``(error, cookie)``."""
        self.recv_into(memoryview(self._header))
        magic, error, cookie = p.SIMPLE_REPLY.unpack(self._header)
        if magic != p.SIMPLE_REPLY_MAGIC:
            if magic == p.STRUCTURED_REPLY_MAGIC:
                raise NbdProtocolError('%s sent a structured reply, which was not negotiated' % self.target.where)
            raise NbdProtocolError('%s sent a reply with bad magic 0x%08x' % (self.target.where, magic))
        return error, cookie

    def read(self, offset, length):
        """Read one range synchronously (for small reads and tests)."""
        self.send_read(0, offset, length)
        error, cookie = self.recv_reply_header()
        if cookie != 0:
            raise NbdProtocolError('%s answered cookie %d, expected 0' % (self.target.where, cookie))
        if error:
            raise server_error(self.target.where, error, offset, length)
        buf = bytearray(length)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def recv_into(self, view):
        """Fill ``view`` completely from the socket."""
        sock = self._sock
        try:
            while len(view):
                received = sock.recv_into(view)
                if not received:
                    raise NbdConnectionLost('%s closed the connection' % self.target.where)
                view = view[received:]
        except socket.timeout:
            raise NbdTimeout('%s sent nothing for %s s' % (self.target.where, self.target.timeout))
        except ssl.SSLError as exc:
            raise NbdConnectionLost('TLS error on the connection to %s: %s' % (self.target.where, exc.reason or exc))
        except OSError as exc:
            raise NbdConnectionLost('connection to %s broke: %s' % (self.target.where, exc.strerror or exc))

    def _recv_exact_bytes(self, size):
        buf = bytearray(size)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def _send(self, data):
        try:
            self._sock.sendall(data)
        except socket.timeout:
            raise NbdTimeout('%s accepted nothing for %s s' % (self.target.where, self.target.timeout))
        except OSError as exc:
            raise NbdConnectionLost('connection to %s broke: %s' % (self.target.where, exc.strerror or exc))

    # -- teardown ---------------------------------------------------------------------------------

    def close(self):
        """Say goodbye with NBD_CMD_DISC (best effort) and close the socket."""
        if self._sock is None:
            return
        try:
            self._sock.settimeout(5)
            self._sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
        except (OSError, ValueError):
            pass
        self.abort()

    def abort(self):
        """Close the socket without a goodbye (after errors)."""
        sock, self._sock = self._sock, None
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
