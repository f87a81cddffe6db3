# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD front behaves like xapi-nbd on the wire (reference: xenapi.md section 5), in plain and TLS mode.

* option phase: only NBD_OPT_EXPORT_NAME selects an export; GO, INFO, STRUCTURED_REPLY, the meta
  context options and unknown options get NBD_REP_ERR_UNSUP, LIST gets NBD_REP_ERR_POLICY, and the
  session goes on;
* one request at a time: pipelined requests are answered in order, and the next request is read
  only once the previous reply has been sent;
* any error reply is the last thing the server sends (then it closes); a read past the end is
  answered "no error" and then dropped part way;
* 16 connections per host, counted at TCP accept: the 17th is closed before the greeting.
"""

from __future__ import absolute_import, division, print_function

import socket
import struct
import time

import pytest

import nbdwire
from nbdwire import recv_exact

__metaclass__ = type

DISK0 = 32 << 20
MODES = ('plain', 'tls')
# disk0 bigger than the lab's default test size: one read must be larger than every socket buffer between
# the server and a client with a small receive buffer (net.ipv4.tcp_wmem's maximum is 4 MiB on Linux)
pytestmark = pytest.mark.parametrize('lab', [('--disk0-size', '32M')], indirect=True)


@pytest.fixture(scope='module')
def nets(api):
    byname = dict((r['name_label'], ref) for ref, r in api.network.get_all_records().items())
    return byname['backup-net']


@pytest.fixture(scope='module')
def live(api):
    """demo-vm-disk0 (live: `xenlab write` can change it under an open connection)."""
    return api.VDI.get_by_name_label('demo-vm-disk0')[0]


def use(api, net, mode):
    """Give backup-net the purpose for ``mode`` (plain: insecure_nbd, tls: nbd) unless it has it already."""
    purpose = 'nbd' if mode == 'tls' else 'insecure_nbd'
    if api.network.get_purpose(net) == [purpose]:
        return
    for ref in api.network.get_all():
        for old in api.network.get_purpose(ref):
            api.network.remove_purpose(ref, old)
    api.network.add_purpose(net, purpose)


def connect(lab, mode, rcvbuf=None):
    """A Conn past the greeting, inside TLS in tls mode, still in the option phase."""
    conn = nbdwire.Conn(lab.info['nbd_port'], rcvbuf=rcvbuf)
    if mode == 'tls':
        assert conn.starttls(nbdwire.client_context(lab.info['ca_cert'])) == nbdwire.REP_ACK
    return conn


def export(lab, api, net, vdi, mode, rcvbuf=None):
    use(api, net, mode)
    conn = connect(lab, mode, rcvbuf)
    conn.export_name(api.VDI.get_nbd_info(vdi)[0]['exportname'])
    return conn


def closed(sock, timeout=5):
    """The server closed the connection: the next read gives EOF (or a reset), nothing else."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b''
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def name_data(name):
    """The data of NBD_OPT_GO / INFO / *_META_CONTEXT: u32 name length + name + (u16 | u32) 0."""
    return struct.pack('>I', len(name)) + name


@pytest.mark.parametrize('mode', MODES)
def test_only_export_name_selects_an_export(lab, api, nets, live, mode):
    use(api, nets, mode)
    name = api.VDI.get_nbd_info(live)[0]['exportname'].encode('utf-8')
    conn = connect(lab, mode)
    assert conn.handshake_flags == 1  # FIXED_NEWSTYLE only
    unsupported = [
        (nbdwire.OPT_GO, name_data(name) + struct.pack('>H', 0)),
        (nbdwire.OPT_INFO, name_data(name) + struct.pack('>H', 0)),
        (nbdwire.OPT_STRUCTURED_REPLY, b''),
        (nbdwire.OPT_LIST_META_CONTEXT, name_data(name) + struct.pack('>I', 0)),
        (nbdwire.OPT_SET_META_CONTEXT, name_data(name) + struct.pack('>II', 1, 15) + b'base:allocation'),
        (42, b'anything'),
    ]
    # Each gets exactly one reply (the next option's reply follows directly) and the session goes on.
    for option, data in unsupported:
        assert conn.option(option, data) == (nbdwire.ERR_UNSUP, b''), option
    assert conn.option(nbdwire.OPT_LIST) == (nbdwire.ERR_POLICY, b'')
    # STARTTLS: refused by policy in plain mode, invalid once TLS is up.
    assert conn.option(nbdwire.OPT_STARTTLS)[0] == (nbdwire.ERR_INVALID if mode == 'tls' else nbdwire.ERR_POLICY)
    assert conn.option(nbdwire.OPT_GO, name_data(name) + struct.pack('>H', 0))[0] == nbdwire.ERR_UNSUP
    size, flags = conn.export_name(name.decode('utf-8'))  # checks the 124 zero bytes
    assert (size, flags) == (DISK0, 0x0003)
    assert conn.read(0, 4096) == (0, lab.content(api.VDI.get_uuid(live))[:4096])
    conn.close()


def test_options_before_starttls(lab, api, nets, live):
    use(api, nets, 'tls')
    name = api.VDI.get_nbd_info(live)[0]['exportname'].encode('utf-8')
    conn = connect(lab, 'plain')  # no STARTTLS yet
    for option, data in ((nbdwire.OPT_GO, name_data(name) + struct.pack('>H', 0)), (nbdwire.OPT_INFO, b''),
                         (nbdwire.OPT_LIST, b''), (nbdwire.OPT_STRUCTURED_REPLY, b''), (42, b'')):
        assert conn.option(option, data) == (nbdwire.ERR_TLS_REQD, b''), option
    conn.sock.sendall(struct.pack('>QII', nbdwire.IHAVEOPT, nbdwire.OPT_ABORT, 0))
    assert closed(conn.sock)  # abort before TLS: closed without a reply
    conn.sock.close()


@pytest.mark.parametrize('mode', MODES)
def test_abort_is_acknowledged_then_closed(lab, api, nets, mode):
    use(api, nets, mode)
    conn = connect(lab, mode)
    assert conn.option(nbdwire.OPT_ABORT) == (nbdwire.REP_ACK, b'')
    assert closed(conn.sock)
    conn.sock.close()


def test_client_without_fixed_newstyle(lab, api, nets):
    for mode, served in (('tls', False), ('plain', True)):
        use(api, nets, mode)
        sock = socket.create_connection(('127.0.0.1', lab.info['nbd_port']), timeout=10)
        recv_exact(sock, 18)
        sock.sendall(struct.pack('>I', 0))
        if served:  # NOTLS: xapi-nbd logs and goes on
            sock.sendall(struct.pack('>QII', nbdwire.IHAVEOPT, nbdwire.OPT_LIST, 0))
            assert struct.unpack('>QIII', recv_exact(sock, 20))[2] == nbdwire.ERR_POLICY
        else:  # FORCEDTLS: closed
            assert closed(sock)
        sock.close()


@pytest.mark.parametrize('mode', MODES)
def test_pipelined_reads_are_answered_in_order(lab, api, nets, live, mode):
    content = lab.content(api.VDI.get_uuid(live))
    conn = export(lab, api, nets, live, mode)
    reads = [(handle, (handle * 3 % 64) << 19, length)
             for handle, length in enumerate((4 << 20, 512, 65536, 1 << 20, 4096, 2 << 20, 512, 8 << 20), 1)]
    conn.sock.sendall(b''.join(nbdwire.request(nbdwire.CMD_READ, offset, length, handle)
                               for handle, offset, length in reads))
    for handle, offset, length in reads:
        assert conn.reply(handle) == 0  # replies come back in request order
        assert recv_exact(conn.sock, length) == content[offset:offset + length], handle
    conn.close()


@pytest.mark.parametrize('mode', MODES)
def test_next_request_is_read_after_the_reply(lab, api, nets, live, mode):
    """Request 2 is read only once reply 1 has been sent: observed through its data.

    Reply 1 (16 MiB) is larger than the socket buffers towards a client that does not read (its
    receive buffer is fixed at 64 KiB), so sending it blocks. A guest write then changes the block that
    request 2 reads. Request 2 sees the new data only if the server read it after reply 1 was out;
    a server that reads ahead and serves requests in parallel answers it with the old data.
    """
    uuid = api.VDI.get_uuid(live)
    where = 20 << 20
    before = lab.content(uuid)[where:where + 65536]
    conn = export(lab, api, nets, live, mode, rcvbuf=65536)
    conn.sock.sendall(nbdwire.request(nbdwire.CMD_READ, 0, 16 << 20, 1) +
                      nbdwire.request(nbdwire.CMD_READ, where, 65536, 2))
    time.sleep(1)  # a parallel server has long answered request 2 by now
    lab.write(uuid, where, 65536, seed=13 + MODES.index(mode))  # new data each time
    after = lab.content(uuid)[where:where + 65536]
    assert after != before
    assert conn.reply(1) == 0
    recv_exact(conn.sock, 16 << 20)
    assert conn.reply(2) == 0
    assert recv_exact(conn.sock, 65536) == after
    conn.close()


ERRORS = [
    # (what, flags, command, offset, length, payload, error)
    ('unaligned offset', 0, nbdwire.CMD_READ, 100, 512, b'', 22),
    ('unaligned length', 0, nbdwire.CMD_READ, 0, 100, b'', 22),
    ('write', 0, nbdwire.CMD_WRITE, 0, 512, bytes(512), 1),
    ('flush', 0, nbdwire.CMD_FLUSH, 0, 0, b'', 22),
    ('trim', 0, nbdwire.CMD_TRIM, 0, 512, b'', 22),
    ('cache', 0, nbdwire.CMD_CACHE, 0, 512, b'', 22),
    ('write zeroes', 0, nbdwire.CMD_WRITE_ZEROES, 0, 512, b'', 22),
    ('block status', 0, nbdwire.CMD_BLOCK_STATUS, 0, 512, b'', 22),
    ('read with FUA flag', 1, nbdwire.CMD_READ, 0, 512, b'', 22),
    ('unknown command', 0, 99, 0, 0, b'', 22),
]


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('what,flags,command,offset,length,payload,error', ERRORS, ids=[e[0] for e in ERRORS])
def test_an_error_reply_ends_the_session(lab, api, nets, live, mode, what, flags, command, offset, length,
                                         payload, error):
    conn = export(lab, api, nets, live, mode)
    assert conn.read(0, 512)[0] == 0
    # The failing request with a good read pipelined behind it: the read is never answered.
    conn.sock.sendall(nbdwire.request(command, offset, length, 7, flags) + payload +
                      nbdwire.request(nbdwire.CMD_READ, 0, 512, 8))
    assert conn.reply(7) == error, what
    assert closed(conn.sock), what
    conn.sock.close()


@pytest.mark.parametrize('mode', MODES)
def test_read_past_the_end_drops_the_connection(lab, api, nets, live, mode):
    """xapi-nbd sends the reply header (no error) first, streams 512 KiB pieces, and hangs up at the first
    piece it cannot read: the client gets fewer bytes than it asked for, then EOF."""
    content = lab.content(api.VDI.get_uuid(live))
    conn = export(lab, api, nets, live, mode)
    # Nothing pipelined behind it: closing a socket with unread input makes the kernel reset the
    # connection and discard what is still queued for the client (with xapi-nbd as here).
    conn.send_request(nbdwire.CMD_READ, DISK0 - (1 << 20), 2 << 20, 1)
    assert conn.reply(1) == 0
    assert recv_exact(conn.sock, 1 << 20) == content[-(1 << 20):]  # the two pieces inside the disk
    assert closed(conn.sock)
    conn.sock.close()
    conn = export(lab, api, nets, live, mode)
    conn.send_request(nbdwire.CMD_READ, DISK0, 512, 3)
    assert conn.reply(3) == 0
    assert closed(conn.sock)
    conn.sock.close()


@pytest.mark.parametrize('mode', MODES)
def test_disconnect_closes(lab, api, nets, live, mode):
    conn = export(lab, api, nets, live, mode)
    conn.sock.sendall(nbdwire.request(nbdwire.CMD_DISC, 0, 0, 1) + nbdwire.request(nbdwire.CMD_READ, 0, 512, 2))
    assert closed(conn.sock)
    conn.sock.close()


def greeting_or_eof(port):
    """Connect; return (socket, the first bytes the server sends: b'' for EOF)."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=10)
    try:
        data = sock.recv(18)
    except ConnectionResetError:
        data = b''
    return sock, data


@pytest.mark.parametrize('mode', MODES)
def test_seventeenth_connection_is_closed_at_accept(lab, api, nets, live, mode):
    """16 TCP connections that have not even read the greeting fill the host: the 17th gets EOF before any
    NBD magic. Closing one lets a new one in; the 16 keep working."""
    use(api, nets, mode)
    name = api.VDI.get_nbd_info(live)[0]['exportname']
    port = lab.info['nbd_port']
    bare = [socket.create_connection(('127.0.0.1', port), timeout=10) for _index in range(16)]
    extra = []
    try:
        for _attempt in range(3):
            sock, data = greeting_or_eof(port)
            extra.append(sock)
            assert data == b''
        bare.pop().close()
        deadline = time.monotonic() + 10
        while True:
            sock, data = greeting_or_eof(port)
            extra.append(sock)
            if data:
                break
            assert time.monotonic() < deadline, 'no connection got in after one of 16 closed'
            time.sleep(0.05)
        assert data[:16] == b'NBDMAGICIHAVEOPT'
        # A connection that was counted at accept goes on to select the export.
        conn = nbdwire.Conn.__new__(nbdwire.Conn)
        conn.sock = bare[0]
        assert struct.unpack('>QQH', recv_exact(conn.sock, 18))[2] == 1
        conn.sock.sendall(struct.pack('>I', 1))
        conn.handshake_flags = 1
        if mode == 'tls':
            assert conn.starttls(nbdwire.client_context(lab.info['ca_cert'])) == nbdwire.REP_ACK
        assert conn.export_name(name) == (DISK0, 3)
        assert conn.read(0, 512)[0] == 0
        bare[0] = conn.sock
    finally:
        for sock in bare + extra:
            sock.close()
