# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small, deliberately misbehaving NBD server for tests.

``FakeNbdServer(image, **misbehaviour)`` serves the bytes ``image`` on 127.0.0.1 (a free port) with the
fixed-newstyle handshake, NBD_OPT_EXPORT_NAME and simple replies, one thread per connection.  Use it as a
context manager: leaving it closes the listening socket and every client socket and joins all threads with
bounded waits (``stop`` raises if a thread is still alive).  With no keyword arguments it behaves.

Misbehaviours (keyword arguments, all off by default):

Handshake
  ``greeting``             raw bytes sent instead of the 18-byte greeting, then the connection is closed
  ``greeting_magic``       first magic of the greeting (NBDMAGIC)
  ``negotiation_magic``    second magic (IHAVEOPT; OLDSTYLE_MAGIC imitates an oldstyle server)
  ``handshake_flags``      (FIXED_NEWSTYLE | NO_ZEROES)
  ``stall_greeting``       accept the connection and never send anything
  ``starttls_reply``       reply type for NBD_OPT_STARTTLS (ERR_UNSUP); REP_ACK is followed by a close (no TLS here)
  ``option_reply_magic``   magic of option replies
  ``option_reply_length``  length announced in option replies (no data follows)
  ``exportname``           the only export name accepted; any other makes the server close the connection
  ``export_info``          raw bytes sent instead of the NBD_OPT_EXPORT_NAME reply, then the connection is closed
  ``export_size``          size announced for the export (default ``len(image)``)

Transmission
  ``reply_magic``          magic of simple replies (STRUCTURED_REPLY_MAGIC imitates unnegotiated structured replies)
  ``cookie_xor``           reply cookies are the request cookies XOR this value (non-zero: unknown cookies)
  ``errors``               ``{offset: errno}``: a READ covering ``offset`` gets an error reply
  ``stall_reads``          never answer a READ
  ``reorder``              gather up to this many requests and answer them last-first
  ``drop_after``           after this many replies on a connection, close it instead of answering
  ``short_after``          after this many replies on a connection, send one reply header with half of its
                           data, then close the connection
  ``reset_after``          after this many replies on a connection, pause briefly (the client reads the last reply),
                           then reset the connection (RST) without waiting for the next request
  ``max_faults``           how many drop/short/reset faults in total (None: on every connection); afterwards behave

Reads beyond the image get EINVAL.  What happened is recorded in ``connections``, ``options``, ``export_names``,
``requests``, ``replies``, ``out_of_order``, ``faults``, ``fault_offsets`` (offsets of the
requests that were dropped or cut short; for a reset, of the last request answered), ``disconnects``
(connections whose serving thread ended) and ``goodbyes`` (the NBD_OPT_ABORT and NBD_CMD_DISC clients sent).
"""

from __future__ import absolute_import, division, print_function

import random
import select
import socket
import struct
import threading

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import protocol as p

__metaclass__ = type

LOCALHOST = '127.0.0.1'
JOIN_TIMEOUT = 5.0
POLL_INTERVAL = 0.02
SEND_TIMEOUT = 10.0
MAX_OPTION_DATA = 64 * 1024
EINVAL = 22
RESET_DELAY = 0.1
TRANSMISSION_FLAGS = 0x0003  # HAS_FLAGS | READ_ONLY


class _Closed(Exception):
    """The peer closed the connection, or the server is stopping."""


class FakeNbdServer:
    """An in-memory NBD server whose misbehaviours are chosen by keyword arguments (see the module doc)."""

    def __init__(self, image, exportname=None, greeting=None, greeting_magic=p.NBDMAGIC, negotiation_magic=p.IHAVEOPT,
                 handshake_flags=p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES, stall_greeting=False,
                 starttls_reply=p.REP_ERR_UNSUP, option_reply_magic=p.OPTION_REPLY_MAGIC, option_reply_length=None,
                 export_info=None, export_size=None, reply_magic=p.SIMPLE_REPLY_MAGIC, cookie_xor=0, errors=None,
                 stall_reads=False, reorder=0, drop_after=None, short_after=None, reset_after=None,
                 max_faults=None):
        self.image = bytes(image)
        self.exportname = exportname.encode('utf-8') if isinstance(exportname, str) else exportname
        self.greeting = greeting
        self.greeting_magic = greeting_magic
        self.negotiation_magic = negotiation_magic
        self.handshake_flags = handshake_flags
        self.stall_greeting = stall_greeting
        self.starttls_reply = starttls_reply
        self.option_reply_magic = option_reply_magic
        self.option_reply_length = option_reply_length
        self.export_info = export_info
        self.export_size = len(self.image) if export_size is None else export_size
        self.reply_magic = reply_magic
        self.cookie_xor = cookie_xor
        self.errors = dict(errors or {})
        self.stall_reads = stall_reads
        self.reorder = reorder
        self.drop_after = drop_after
        self.short_after = short_after
        self.reset_after = reset_after
        self.max_faults = max_faults
        # What happened.
        self.connections = 0
        self.options = []
        self.export_names = []
        self.requests = []
        self.replies = 0
        self.out_of_order = 0
        self.faults = 0
        self.fault_offsets = []
        self.disconnects = 0
        self.goodbyes = []  # NBD_OPT_ABORT / NBD_CMD_DISC, as the clients sent them
        self.port = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = None
        self._accept_thread = None
        self._threads = []
        self._clients = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOCALHOST, 0))
        listener.listen(32)
        listener.settimeout(POLL_INTERVAL)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name='fake-nbd-accept')
        self._accept_thread.daemon = True
        self._accept_thread.start()
        return self

    def stop(self):
        """Close every socket and join every thread; raise RuntimeError if a thread does not end in time."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(JOIN_TIMEOUT)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
            threads = list(self._threads)
        for sock in clients:
            _shutdown(sock)
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        for sock in clients:
            sock.close()
        alive = [t.name for t in threads + [self._accept_thread] if t is not None and t.is_alive()]
        if alive:
            raise RuntimeError('fake NBD server threads did not stop: %s' % ', '.join(alive))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def nbd_info(self, exportname):
        """An element of ``VDI.get_nbd_info`` pointing at this server (no TLS material)."""
        return {'address': LOCALHOST, 'port': self.port, 'exportname': exportname}

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(SEND_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                self.connections += 1
                thread = threading.Thread(target=self._serve, args=(sock,), name='fake-nbd-%d' % self.connections)
                thread.daemon = True
                self._clients.append(sock)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock):
        try:
            if self._negotiate(sock):
                self._transmit(sock)
        except (_Closed, OSError):
            pass
        finally:
            _shutdown(sock)
            with self._lock:
                self.disconnects += 1

    # -- socket helpers --------------------------------------------------------------------------

    def _wait_readable(self, sock, timeout=None):
        """Wait until ``sock`` has data (True), ``timeout`` passes (False) or the server stops (_Closed)."""
        waited = 0.0
        while not self._stopping.is_set():
            readable = select.select([sock], [], [], POLL_INTERVAL)[0]
            if readable:
                return True
            waited += POLL_INTERVAL
            if timeout is not None and waited >= timeout:
                return False
        raise _Closed()

    def _recv_exact(self, sock, size):
        buf = bytearray()
        while len(buf) < size:
            self._wait_readable(sock)
            chunk = sock.recv(size - len(buf))
            if not chunk:
                raise _Closed()
            buf += chunk
        return bytes(buf)

    def _stall(self):
        while not self._stopping.wait(POLL_INTERVAL):
            pass
        raise _Closed()

    def _take_fault(self, offset):
        with self._lock:
            if self.max_faults is not None and self.faults >= self.max_faults:
                return False
            self.faults += 1
            self.fault_offsets.append(offset)
            return True

    # -- handshake -------------------------------------------------------------------------------

    def _negotiate(self, sock):
        """Run the handshake; return True when the connection reached transmission."""
        if self.stall_greeting:
            self._stall()
        if self.greeting is not None:
            sock.sendall(self.greeting)
            return False
        sock.sendall(p.GREETING.pack(self.greeting_magic, self.negotiation_magic, self.handshake_flags))
        client_flags = p.CLIENT_FLAGS.unpack(self._recv_exact(sock, p.CLIENT_FLAGS.size))[0]
        no_zeroes = bool(client_flags & p.FLAG_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_REQUEST.unpack(self._recv_exact(sock, p.OPTION_REQUEST.size))
            if magic != p.IHAVEOPT or length > MAX_OPTION_DATA:
                return False
            data = self._recv_exact(sock, length) if length else b''
            with self._lock:
                self.options.append(option)
            if option == p.OPT_EXPORT_NAME:
                return self._export_name(sock, data, no_zeroes)
            if option == p.OPT_STARTTLS:
                self._option_reply(sock, option, self.starttls_reply)
                if self.starttls_reply == p.REP_ACK:
                    return False  # a TLS handshake would start here; this server has no TLS
            elif option == p.OPT_ABORT:
                with self._lock:
                    self.goodbyes.append('NBD_OPT_ABORT')
                self._option_reply(sock, option, p.REP_ACK)
                return False
            else:
                self._option_reply(sock, option, p.REP_ERR_UNSUP)

    def _option_reply(self, sock, option, reply_type):
        length = 0 if self.option_reply_length is None else self.option_reply_length
        sock.sendall(p.OPTION_REPLY.pack(self.option_reply_magic, option, reply_type, length))

    def _export_name(self, sock, name, no_zeroes):
        with self._lock:
            self.export_names.append(name)
        if self.exportname is not None and name != self.exportname:
            return False  # unknown export: the protocol only allows closing the connection
        if self.export_info is not None:
            sock.sendall(self.export_info)
            return False
        reply = p.EXPORT_INFO.pack(self.export_size, TRANSMISSION_FLAGS)
        sock.sendall(reply if no_zeroes else reply + bytes(p.EXPORT_INFO_ZEROES))
        return True

    # -- transmission ----------------------------------------------------------------------------

    def _recv_request(self, sock):
        magic, _flags, command, cookie, offset, length = p.REQUEST.unpack(self._recv_exact(sock, p.REQUEST.size))
        if magic != p.REQUEST_MAGIC:
            raise _Closed()
        return command, cookie, offset, length

    def _transmit(self, sock):
        answered = 0
        while True:
            batch = [self._recv_request(sock)]
            while len(batch) < self.reorder and self._wait_readable(sock, timeout=0.2):
                batch.append(self._recv_request(sock))
            if len(batch) > 1:
                batch.reverse()
                with self._lock:
                    self.out_of_order += 1
            for command, cookie, offset, length in batch:
                if command == p.CMD_DISC:
                    with self._lock:
                        self.goodbyes.append('NBD_CMD_DISC')
                    return
                self._answer(sock, answered, command, cookie, offset, length)
                answered += 1
                if self.reset_after is not None and answered >= self.reset_after and self._take_fault(offset):
                    self._stopping.wait(RESET_DELAY)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
                    sock.close()  # with a zero linger time: RST
                    raise _Closed()

    def _answer(self, sock, answered, command, cookie, offset, length):
        with self._lock:
            self.requests.append((offset, length))
        if self.stall_reads:
            self._stall()
        if self.drop_after is not None and answered >= self.drop_after and self._take_fault(offset):
            raise _Closed()
        error = 0
        if command != p.CMD_READ or offset + length > len(self.image):
            error = EINVAL
        for bad_offset, errno in self.errors.items():
            if offset <= bad_offset < offset + length:
                error = errno
        header = p.SIMPLE_REPLY.pack(self.reply_magic, error, cookie ^ self.cookie_xor)
        data = b'' if error else self.image[offset:offset + length]
        if data and self.short_after is not None and answered >= self.short_after and self._take_fault(offset):
            sock.sendall(header + data[:len(data) // 2])
            raise _Closed()
        sock.sendall(header + data)
        with self._lock:
            self.replies += 1


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def image_bytes(size, seed=1, zero_blocks=(), block_size=64 * 1024):
    """Deterministic pseudo-random bytes of ``size``, with the given ``block_size`` blocks all zero."""
    image = bytearray(random.Random(seed).getrandbits(size * 8).to_bytes(size, 'little'))
    for block in zero_blocks:
        start = min(size, block * block_size)
        stop = min(size, start + block_size)
        image[start:stop] = bytes(stop - start)
    return bytes(image)
