# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""xapi-nbd's protocol behaviour, in front of a plain nbdkit that checks tokens and serves the data.

nbdkit 1.32 cannot be made to answer like xapi-nbd (reference xenapi.md section 5, xapi-project/nbd
lib/server.ml): it accepts NBD_OPT_GO / INFO / LIST, keeps a session open after an error reply, and its
limit filter counts connections that opened an export. So each host's front is this proxy on the public
port, and nbdkit listens privately behind it. Per accepted TCP connection the proxy:

* counts it at accept: with 16 already open, closes the socket before the greeting (the client sees EOF);
* sends the greeting (FIXED_NEWSTYLE only) and runs xapi-nbd's option loop: FORCEDTLS ('tls', OpenSSL
  with the lab's TLS policy) or NOTLS ('plain'); only NBD_OPT_EXPORT_NAME selects an export;
* opens the export on nbdkit with the same name (nbdkit's python plugin validates the token and plugs the
  dom0 VBD; when it refuses, the client gets EOF) and answers size + flags 0x0003 + 124 zero bytes;
* serves one request at a time: reads a request, answers it completely, then reads the next. READ must be
  512-byte aligned; the reply header (no error) goes out first, then the data in 512 KiB pieces; a piece
  the device cannot give (past the end) ends the connection. WRITE gets EPERM, any other command or any
  command flag EINVAL, and an error reply is the last thing sent. NBD_CMD_DISC closes.
"""

from __future__ import absolute_import, division, print_function

import errno
import socket
import ssl
import struct
import threading

__metaclass__ = type

CONNECTION_LIMIT = 16  # xapi-nbd's Consts.connection_limit
NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003e889045565a9
REQUEST_MAGIC, REPLY_MAGIC = 0x25609513, 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
REP_ACK = 1
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID, REP_ERR_TLS_REQD = 0x80000001, 0x80000002, 0x80000003, 0x80000005
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
FLAG_FIXED_NEWSTYLE = 1
EXPORT_FLAGS = 0x0003  # HAS_FLAGS | READ_ONLY, whatever nbdkit would offer
SECTOR = 512
PIECE = 512 * 1024  # xapi-nbd streams a read through a 128-page (512 KiB) buffer
BACKEND_READ = 32 << 20  # largest read asked of nbdkit at once (its own limit is 64 MiB)
RELAY = 1 << 20
MAX_OPTION_DATA = 1 << 20  # the lab hangs up on larger option data (xapi-nbd would allocate it)

GREETING = struct.Struct('>QQH')
OPTION = struct.Struct('>QII')
OPTION_REPLY = struct.Struct('>QIII')
REQUEST = struct.Struct('>IIQQI')  # the type is one u32: command flags make it an unknown command
REPLY = struct.Struct('>IIQ')
EXPORT_INFO = struct.Struct('>QH')


class Hangup(Exception):
    """End this connection (the peer closed, or xapi-nbd would close now)."""


def recv_exact(sock, n):
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:])
        if not count:
            raise Hangup('EOF')
        got += count
    return bytes(data)


def readable_length(size, offset, length):
    """How much of READ(offset, length) xapi-nbd sends before it fails: the 512 KiB pieces (counted from
    ``offset``) that lie wholly inside the device."""
    if offset + length <= size:
        return length
    if offset >= size:
        return 0
    return (size - offset) // PIECE * PIECE


class XapiNbdProxy:
    """One host's NBD front: 'tls' (FORCEDTLS with ``context``) or 'plain' (NOTLS), relaying exports to the
    nbdkit at ``backend`` (a path: unix socket, or a (host, port) tuple)."""

    def __init__(self, port, backend, mode, context=None, limit=CONNECTION_LIMIT):
        if mode not in ('tls', 'plain') or (mode == 'tls') != (context is not None):
            raise ValueError('mode tls needs a context, plain none')
        self.port = port
        self.backend = backend
        self.mode = mode
        self.context = context
        self.limit = limit
        self.listener = None
        self.lock = threading.Lock()
        self.active = 0  # connections accepted and not yet closed (xapi-nbd's counter)
        self.sockets = set()  # every socket a connection uses, shut down by stop()

    def start(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), name='nbd-front-%d' % self.port,
                         daemon=True).start()

    def stop(self):
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass

    def _accept_loop(self, listener):
        while True:
            try:
                client, _addr = listener.accept()
            except OSError as err:
                if err.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.EINTR):
                    continue
                return  # the listener was closed
            with self.lock:
                full = self.active >= self.limit
                if not full:
                    self.active += 1
            if full:
                client.close()  # before the greeting: the client sees EOF
                continue
            try:
                threading.Thread(target=self._serve, args=(client,), name='nbd-conn', daemon=True).start()
            except RuntimeError:  # no thread for it: as if refused
                with self.lock:
                    self.active -= 1
                client.close()

    def _track(self, sock):
        with self.lock:
            self.sockets.add(sock)
        return sock

    def _serve(self, raw):
        socks = [self._track(raw)]
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client, name = self._negotiate(raw, socks)
            backend = self._track(self._connect_backend())
            socks.append(backend)
            size = self._open_export(backend, name)
            client.sendall(EXPORT_INFO.pack(size, EXPORT_FLAGS) + bytes(124))
            self._transmission(client, backend, size)
        except (Hangup, OSError, ValueError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                self.active -= 1
                for sock in socks:
                    self.sockets.discard(sock)
            for sock in reversed(socks):
                try:
                    sock.close()
                except OSError:
                    pass

    # ----- option phase (xapi-project/nbd Server.connect) -------------------------------------

    def _negotiate(self, sock, socks):
        """Returns (the socket to talk on, the export name), or raises Hangup."""
        sock.sendall(GREETING.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE))
        client_flags, = struct.unpack('>I', recv_exact(sock, 4))
        if self.mode == 'tls' and not client_flags & FLAG_FIXED_NEWSTYLE:
            raise Hangup('FORCEDTLS needs a fixed-newstyle client')
        tls = False
        while True:
            magic, option, length = OPTION.unpack(recv_exact(sock, OPTION.size))
            if magic != IHAVEOPT or length > MAX_OPTION_DATA:
                raise Hangup('bad option request')
            data = recv_exact(sock, length)
            if self.mode == 'tls' and not tls:
                if option in (OPT_EXPORT_NAME, OPT_ABORT):
                    raise Hangup('export over cleartext, or abort, before TLS')
                if option != OPT_STARTTLS:
                    self._reply(sock, option, REP_ERR_TLS_REQD)
                    continue
                self._reply(sock, option, REP_ACK)
                sock = self.context.wrap_socket(sock, server_side=True)  # the plain socket is detached
                socks.append(self._track(sock))
                tls = True
                continue
            if option == OPT_EXPORT_NAME:
                return sock, data
            if option == OPT_ABORT:
                self._reply(sock, option, REP_ACK)
                raise Hangup('abort')
            if option == OPT_STARTTLS:
                self._reply(sock, option, REP_ERR_INVALID if tls else REP_ERR_POLICY)
            elif option == OPT_LIST:
                self._reply(sock, option, REP_ERR_POLICY)  # xapi-nbd offers no export list
            else:
                self._reply(sock, option, REP_ERR_UNSUP)  # GO, INFO, STRUCTURED_REPLY, meta contexts, others

    @staticmethod
    def _reply(sock, option, reply_type):
        sock.sendall(OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply_type, 0))

    # ----- nbdkit behind -----------------------------------------------------------------------

    def _connect_backend(self):
        if isinstance(self.backend, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.backend)
            except OSError:
                sock.close()
                raise
            return sock
        sock = socket.create_connection(self.backend)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    @staticmethod
    def _open_export(backend, name):
        """NBD_OPT_EXPORT_NAME on nbdkit; its plugin refusing the token closes the connection (Hangup)."""
        magic, _ihaveopt, _flags = GREETING.unpack(recv_exact(backend, GREETING.size))
        if magic != NBDMAGIC:
            raise Hangup('not nbdkit')
        backend.sendall(struct.pack('>I', FLAG_FIXED_NEWSTYLE) + OPTION.pack(IHAVEOPT, OPT_EXPORT_NAME, len(name)) + name)
        size, _flags = EXPORT_INFO.unpack(recv_exact(backend, EXPORT_INFO.size))
        recv_exact(backend, 124)  # nbdkit runs with --mask-handshake=1: no NO_ZEROES
        return size

    # ----- transmission phase (xapi-project/nbd Server.serve) ---------------------------------

    def _transmission(self, client, backend, size):
        buf = bytearray(RELAY)
        cookie = 0
        while True:
            magic, command, handle, offset, length = REQUEST.unpack(recv_exact(client, REQUEST.size))
            if magic != REQUEST_MAGIC:
                return
            if command == CMD_DISC:
                backend.sendall(REQUEST.pack(REQUEST_MAGIC, CMD_DISC, 0, 0, 0))
                return
            if command == CMD_WRITE:
                client.sendall(REPLY.pack(REPLY_MAGIC, errno.EPERM, handle))  # read-only; payload not read
                return
            if command != CMD_READ or offset % SECTOR or length % SECTOR:
                client.sendall(REPLY.pack(REPLY_MAGIC, errno.EINVAL, handle))
                return
            client.sendall(REPLY.pack(REPLY_MAGIC, 0, handle))  # xapi-nbd answers "no error" before reading
            good = readable_length(size, offset, length)
            done = 0
            while done < good:
                cookie += 1
                count = min(BACKEND_READ, good - done)
                self._relay_read(backend, client, cookie, offset + done, count, buf)
                done += count
            if good < length:
                return  # "Partial failure during a Block.read": the connection is dropped

    @staticmethod
    def _relay_read(backend, client, cookie, offset, length, buf):
        backend.sendall(REQUEST.pack(REQUEST_MAGIC, CMD_READ, cookie, offset, length))
        magic, error, handle = REPLY.unpack(recv_exact(backend, REPLY.size))
        if magic != REPLY_MAGIC or handle != cookie or error:
            raise Hangup('nbdkit read failed (%d)' % error)  # after the reply header: drop the connection
        view = memoryview(buf)
        left = length
        while left:
            count = backend.recv_into(view[:min(left, len(buf))])
            if not count:
                raise Hangup('nbdkit closed')
            client.sendall(view[:count])
            left -= count
