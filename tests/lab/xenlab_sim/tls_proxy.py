# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""STARTTLS front for the legacy TLS policy (RSA+AES128-SHA256), in front of a plain nbdkit.

nbdkit's GnuTLS priority ("NORMAL") has no SHA-256 MAC for CBC suites and GnuTLS's system
overrides can only take algorithms away, so nbdkit cannot offer TLS_RSA_WITH_AES_128_CBC_SHA256.
This proxy plays xapi-nbd's FORCEDTLS option phase up to NBD_OPT_STARTTLS, does the TLS handshake
with OpenSSL limited to that one suite, then hands the rest of the session to nbdkit (which still
validates the export token, limits connections and serves the data).
"""

from __future__ import absolute_import, division, print_function

import select
import socket
import ssl
import struct
import threading

__metaclass__ = type

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003e889045565a9
OPT_EXPORT_NAME, OPT_ABORT, OPT_STARTTLS = 1, 2, 5
REP_ACK, REP_ERR_TLS_REQD = 1, 0x80000005


def _recv_exact(sock, n):
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError()
        data += chunk
    return data


class StartTlsProxy:
    def __init__(self, port, backend_port, context):
        self.port = port
        self.backend_port = backend_port
        self.context = context
        self.listener = None
        self.active = set()
        self.lock = threading.Lock()

    def start(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(('127.0.0.1', self.port))
        self.listener.listen(32)
        threading.Thread(target=self._accept_loop, name='nbd-tls-proxy', daemon=True).start()

    def stop(self):
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in list(self.active):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept_loop(self):
        listener = self.listener
        while True:
            try:
                client, _addr = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, raw):
        socks = [raw]
        with self.lock:
            self.active.add(raw)
        try:
            client = self._negotiate(raw)
            if client is None:
                return
            socks.append(client)
            backend = socket.create_connection(('127.0.0.1', self.backend_port))
            socks.append(backend)
            with self.lock:
                self.active.update(socks)
            _recv_exact(backend, 18)  # nbdkit's greeting; the client already had ours
            backend.sendall(struct.pack('>I', 1))
            self._pipe(client, backend)
        except (OSError, EOFError, ValueError, ssl.SSLError):
            pass
        finally:
            for sock in socks:
                with self.lock:
                    self.active.discard(sock)
                try:
                    sock.close()
                except OSError:
                    pass

    def _negotiate(self, client):
        """xapi-nbd's FORCEDTLS option loop; returns the TLS socket, or None to hang up."""
        client.sendall(struct.pack('>QQH', NBDMAGIC, IHAVEOPT, 1))
        flags, = struct.unpack('>I', _recv_exact(client, 4))
        if not flags & 1:
            return None
        while True:
            magic, option, length = struct.unpack('>QII', _recv_exact(client, 16))
            if magic != IHAVEOPT:
                return None
            if option in (OPT_EXPORT_NAME, OPT_ABORT):
                return None  # export over cleartext, or abort: xapi-nbd just closes
            _recv_exact(client, length)
            if option != OPT_STARTTLS:
                client.sendall(struct.pack('>QIII', OPT_REPLY_MAGIC, option, REP_ERR_TLS_REQD, 0))
                continue
            client.sendall(struct.pack('>QIII', OPT_REPLY_MAGIC, option, REP_ACK, 0))
            return self.context.wrap_socket(client, server_side=True)

    @staticmethod
    def _pipe(client, backend):
        while True:
            readable = [client] if client.pending() else select.select([client, backend], [], [])[0]
            for sock in readable:
                data = sock.recv(1 << 20)
                if not data:
                    return
                (backend if sock is client else client).sendall(data)
