# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A byte-level NBD client for contract tests: fixed newstyle, STARTTLS, NBD_OPT_EXPORT_NAME.

libnbd hides the handshake (it tries NBD_OPT_GO first); these tests need to see exactly what
xapi-nbd sends, e.g. EOF instead of export info for a bad token.
"""

from __future__ import absolute_import, division, print_function

import socket
import ssl
import struct

__metaclass__ = type

IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003e889045565a9
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK = 1
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_TLS_REQD = 0x80000001, 0x80000002, 0x80000003, 0x80000005
REQUEST_MAGIC, REPLY_MAGIC = 0x25609513, 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 0, 1, 2, 3, 4, 5, 6, 7


def recv_exact(sock, n):
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        try:
            count = sock.recv_into(view[got:])
        except ConnectionResetError:
            count = 0  # a reset is a close too (the server dropped us)
        if not count:
            raise EOFError('server closed the connection after %d of %d bytes' % (got, n))
        got += count
    return bytes(data)


def client_context(cafile=None, ciphers=None, curve=None, tls13=False):
    """TLS 1.2 client (xapi-nbd speaks 1.2); verifies against ``cafile`` when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if not tls13:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ciphers:
        ctx.set_ciphers(ciphers)
    if curve:
        ctx.set_ecdh_curve(curve)
    return ctx


def connect(port, host='127.0.0.1', timeout=10, rcvbuf=None):
    """A TCP connection to the front; ``rcvbuf`` fixes the receive buffer (set before connecting, so the
    kernel does not grow it)."""
    if rcvbuf is None:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Conn:
    def __init__(self, port, host='127.0.0.1', timeout=10, rcvbuf=None):
        self.sock = connect(port, host, timeout, rcvbuf)
        magic, opt_magic, self.handshake_flags = struct.unpack('>QQH', recv_exact(self.sock, 18))
        assert magic == 0x4e42444d41474943 and opt_magic == IHAVEOPT
        self.sock.sendall(struct.pack('>I', 1))  # NBD_FLAG_C_FIXED_NEWSTYLE only
        self.size = self.flags = None

    def option(self, opt, data=b''):
        """Send an option and return (reply type, payload) of its single reply."""
        self.sock.sendall(struct.pack('>QII', IHAVEOPT, opt, len(data)) + data)
        magic, _opt, rtype, length = struct.unpack('>QIII', recv_exact(self.sock, 20))
        assert magic == OPT_REPLY_MAGIC
        return rtype, recv_exact(self.sock, length)

    def starttls(self, ctx, server_hostname='lab-host-1'):
        rtype, _payload = self.option(OPT_STARTTLS)
        if rtype != REP_ACK:
            return rtype
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return rtype

    def export_name(self, name):
        """NBD_OPT_EXPORT_NAME; EOFError when the server refuses (xapi-nbd closes)."""
        name = name.encode('utf-8')
        self.sock.sendall(struct.pack('>QII', IHAVEOPT, OPT_EXPORT_NAME, len(name)) + name)
        self.size, self.flags = struct.unpack('>QH', recv_exact(self.sock, 10))
        # This client never sets NBD_FLAG_C_NO_ZEROES, so the 124 zero bytes always follow.
        assert recv_exact(self.sock, 124) == bytes(124)
        return self.size, self.flags

    def read(self, offset, length, handle=1):
        """One NBD_CMD_READ; returns (error, data)."""
        self.send_request(CMD_READ, offset, length, handle)
        error = self.reply(handle)
        return error, (recv_exact(self.sock, length) if error == 0 else b'')

    def send_request(self, command, offset, length, handle=1, flags=0, payload=b''):
        self.sock.sendall(request(command, offset, length, handle, flags) + payload)

    def reply(self, handle=None):
        """The next simple reply's error (its data, if any, is still to be read); checks the handle."""
        magic, error, got = struct.unpack('>IIQ', recv_exact(self.sock, 16))
        assert magic == REPLY_MAGIC, hex(magic)
        assert handle is None or got == handle, (got, handle)
        return error

    def close(self):
        try:
            self.sock.sendall(struct.pack('>IHHQQI', REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        self.sock.close()


def request(command, offset, length, handle=1, flags=0):
    """A 28-byte NBD request header."""
    return struct.pack('>IHHQQI', REQUEST_MAGIC, flags, command, handle, offset, length)


def open_export(port, name, ctx=None, rcvbuf=None):
    """Connect, STARTTLS when ``ctx`` is given, select ``name``; returns the Conn."""
    conn = Conn(port, rcvbuf=rcvbuf)
    try:
        if ctx is not None:
            assert conn.starttls(ctx) == REP_ACK
        conn.export_name(name)
    except BaseException:
        conn.sock.close()
        raise
    return conn


def refused(port):
    """Nothing listens on 127.0.0.1:``port`` (the connection is refused)."""
    try:
        socket.create_connection(('127.0.0.1', port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False
