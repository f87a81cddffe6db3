# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD client against a deliberately misbehaving server (helpers/fake_nbd_server.py).

Every test checks the exception class, a clear message (offset and server error name where relevant), that the
export name (it carries a XenAPI session reference) appears in no message, that nothing hangs, and for exports
that the destination is left untouched with no temporary file beside it.  Retry cases check the data by sha256.
"""

from __future__ import absolute_import, division, print_function

import gc
import hashlib
import os
import threading
import time
import traceback

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import errors
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import protocol as p
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import connection
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.reader import DEFAULT_REQUEST_SIZE, ExtentReader
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_nbd_server import FakeNbdServer, image_bytes

__metaclass__ = type

KIB = 1024
MIB = 1024 * KIB
BLOCK = 64 * KIB
SECRET_NAME = '/7f3c9e1a-uuid?session_id=OpaqueRef:SECRET-5e1d'
SECRET = 'SECRET'
TIMEOUT = 1
# Three 4 MiB requests for export_to_file (the last one partial), with a few all-zero blocks (sparse writes).
IMAGE = image_bytes(10 * MIB + BLOCK, seed=7, zero_blocks=(3, 4, 100))
IMAGE_SHA256 = hashlib.sha256(IMAGE).hexdigest()
OLD_CONTENT = b'previous backup\n' * 4096

pytestmark = pytest.mark.timeout(30)


# -- helpers ---------------------------------------------------------------------------------------


def _sockets_open():
    try:
        names = os.listdir('/proc/self/fd')
    except OSError:
        return 0
    count = 0
    for name in names:
        try:
            if os.readlink(os.path.join('/proc/self/fd', name)).startswith('socket:'):
                count += 1
        except OSError:
            pass
    return count


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a thread or a socket behind (client or fake server)."""
    threads_before = set(threading.enumerate())
    sockets_before = _sockets_open()
    yield
    deadline = time.monotonic() + 1
    while True:
        gc.collect()
        extra_threads = [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]
        extra_sockets = _sockets_open() - sockets_before
        if (not extra_threads and extra_sockets <= 0) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not extra_threads, 'threads left running: %s' % extra_threads
    assert extra_sockets <= 0, '%d sockets left open' % extra_sockets


def check_secret_kept(exc):
    """Neither the message of ``exc`` nor of any exception chained to it, nor the traceback, names the export."""
    text = ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert SECRET not in text
    seen = exc
    while seen is not None:
        assert SECRET not in str(seen)
        assert SECRET not in repr(seen)
        seen = seen.__cause__ or seen.__context__


def plain_target(server, timeout=TIMEOUT):
    return _export.make_target(server.nbd_info(SECRET_NAME), tls=False, timeout=timeout)


def tls_target(server, tmp_path):
    # The CA bundle is never read: every test using this target fails before certificates are checked.
    return _export.make_target(server.nbd_info(SECRET_NAME), tls=True, ca_path=str(tmp_path / 'unused-ca.pem'),
                               timeout=TIMEOUT)


def open_fails(target, exc_class, *fragments):
    started = time.monotonic()
    with pytest.raises(exc_class) as info:
        NbdConnection.open(target)
    assert time.monotonic() - started < 10
    check_secret_kept(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def read_fails(server, offset, length, exc_class, *fragments):
    with NbdConnection.open(plain_target(server)) as conn:
        with pytest.raises(exc_class) as info:
            conn.read(offset, length)
    check_secret_kept(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def read_all(server, connections=2, requests_in_flight=3, retries=2, request_size=BLOCK, extents=None):
    """Read the whole export with ExtentReader into memory; return ``(bytes, stats)``."""
    out = bytearray(len(IMAGE))

    def sink(offset, view):
        out[offset:offset + len(view)] = view

    reader = ExtentReader(plain_target(server), connections=connections, requests_in_flight=requests_in_flight,
                          request_size=request_size, retries=retries, retry_delay=0.01)
    stats = reader.read(extents or [(0, len(IMAGE))], sink)
    return bytes(out), stats


def reader_fails(server, exc_class, *fragments, **kwargs):
    started = time.monotonic()
    with pytest.raises(exc_class) as info:
        read_all(server, **kwargs)
    assert time.monotonic() - started < 20
    check_secret_kept(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def sha256_file(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def dest_dir(tmp_path):
    """A directory holding a previous backup ``disk.raw`` (OLD_CONTENT)."""
    directory = tmp_path / 'backups'
    directory.mkdir()
    (directory / 'disk.raw').write_bytes(OLD_CONTENT)
    return directory


def export_fails(server, directory, exc_class, *fragments, **kwargs):
    """export_to_file must raise ``exc_class`` and leave ``directory`` exactly as it was."""
    before = {name: (directory / name).read_bytes() for name in os.listdir(str(directory))}
    kwargs.setdefault('connections', 1)
    kwargs.setdefault('retries', 1)
    started = time.monotonic()
    with pytest.raises(exc_class) as info:
        _export.export_to_file(plain_target(server), str(directory / 'disk.raw'), **kwargs)
    assert time.monotonic() - started < 20
    check_secret_kept(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)
    after = {name: (directory / name).read_bytes() for name in os.listdir(str(directory))}
    assert sorted(after) == sorted(before), 'files left in the destination directory'
    assert after == before, 'the destination was modified'
    return info.value


def export_ok(server, directory, **kwargs):
    dest = str(directory / 'disk.raw')
    result = _export.export_to_file(plain_target(server), dest, **kwargs)
    assert sha256_file(dest) == IMAGE_SHA256
    assert os.listdir(str(directory)) == ['disk.raw']
    return result


# -- a well-behaved fake server (controls) -------------------------------------------------------------


def test_well_behaved_server_exports_the_image(dest_dir):
    with FakeNbdServer(IMAGE, exportname=SECRET_NAME) as server:
        result = export_ok(server, dest_dir, connections=2, requests_in_flight=2)
    assert result['export_size'] == len(IMAGE)
    assert result['reconnects'] == 0
    assert server.faults == 0


def test_server_without_no_zeroes_sends_124_zero_bytes():
    with FakeNbdServer(IMAGE, handshake_flags=p.FLAG_FIXED_NEWSTYLE) as server:
        with NbdConnection.open(plain_target(server)) as conn:
            assert conn.export_size == len(IMAGE)
            assert conn.read(BLOCK, 4096) == IMAGE[BLOCK:BLOCK + 4096]


# -- handshake -------------------------------------------------------------------------------------


def test_bad_greeting_magic():
    with FakeNbdServer(IMAGE, greeting=b'HTTP/1.1 400 Bad Request\r\n\r\n') as server:
        open_fails(plain_target(server), errors.NbdProtocolError, 'not an NBD server', 'bad greeting magic')


def test_truncated_greeting():
    with FakeNbdServer(IMAGE, greeting=b'NBDMAGIC') as server:
        open_fails(plain_target(server), errors.NbdNegotiationError, 'closed the connection during the handshake',
                   'greeting')


def test_oldstyle_server():
    with FakeNbdServer(IMAGE, negotiation_magic=p.OLDSTYLE_MAGIC) as server:
        open_fails(plain_target(server), errors.NbdProtocolError, 'oldstyle')
    assert server.options == []


def test_unknown_negotiation_magic():
    with FakeNbdServer(IMAGE, negotiation_magic=0x1122334455667788) as server:
        open_fails(plain_target(server), errors.NbdProtocolError, 'negotiation magic 0x1122334455667788')


def test_no_fixed_newstyle_flag():
    with FakeNbdServer(IMAGE, handshake_flags=0) as server:
        open_fails(plain_target(server), errors.NbdProtocolError, 'fixed newstyle')
    assert server.export_names == []


def test_stalled_greeting_times_out():
    with FakeNbdServer(IMAGE, stall_greeting=True) as server:
        started = time.monotonic()
        open_fails(plain_target(server), errors.NbdNegotiationError, 'sent nothing for 1 s', 'greeting')
        assert time.monotonic() - started < TIMEOUT + 3


def test_stalled_greeting_is_not_reported_as_a_close():
    with FakeNbdServer(IMAGE, stall_greeting=True) as server:
        exc = open_fails(plain_target(server), errors.NbdNegotiationError, 'sent nothing for 1 s')
    assert 'closed the connection' not in str(exc)


@pytest.mark.parametrize('reply_type, name', [
    (p.REP_ERR_POLICY, 'NBD_REP_ERR_POLICY'),
    (p.REP_ERR_UNSUP, 'NBD_REP_ERR_UNSUP'),
])
def test_starttls_refused_sends_nothing_in_clear(tmp_path, reply_type, name):
    with FakeNbdServer(IMAGE, starttls_reply=reply_type) as server:
        open_fails(tls_target(server, tmp_path), errors.NbdTlsError, 'refused STARTTLS', name)
        wait_disconnected(server)
    # The option haggling was still in step: the client ends it with NBD_OPT_ABORT, not by hanging up.
    assert server.options == [p.OPT_STARTTLS, p.OPT_ABORT]
    assert server.goodbyes == ['NBD_OPT_ABORT']
    assert server.export_names == []


def wait_disconnected(server, seconds=5):
    deadline = time.monotonic() + seconds
    while server.disconnects < server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.disconnects == server.connections


def test_a_finished_connection_says_goodbye_with_disc():
    with FakeNbdServer(IMAGE) as server:
        conn = NbdConnection.open(plain_target(server))
        assert conn.state == connection.TRANSMISSION
        assert conn.read(0, BLOCK) == IMAGE[:BLOCK]
        conn.close()
        assert conn.state == connection.CLOSED
        wait_disconnected(server)
    assert server.goodbyes == ['NBD_CMD_DISC'] and server.options == [p.OPT_EXPORT_NAME]


def test_a_reply_out_of_step_ends_without_a_goodbye():
    with FakeNbdServer(IMAGE, reply_magic=0x12345678) as server:
        conn = NbdConnection.open(plain_target(server))
        with pytest.raises(errors.NbdProtocolError):
            conn.read(0, BLOCK)
        assert conn.state == connection.BROKEN  # the data that followed the bad header is still in the socket
        conn.close()
        wait_disconnected(server)
    assert server.goodbyes == []


@pytest.mark.parametrize('fault', [{'option_reply_magic': 0x0102030405060708}, {'option_reply_length': 0xFFFFFFFF}])
def test_an_option_reply_out_of_step_ends_without_a_goodbye(tmp_path, fault):
    # The server keeps reading options after its bad reply: an NBD_OPT_ABORT sent now would reach it.
    with FakeNbdServer(IMAGE, starttls_reply=p.REP_ERR_UNSUP, **fault) as server:
        open_fails(tls_target(server, tmp_path), errors.NbdProtocolError)
        wait_disconnected(server)
    assert server.options == [p.OPT_STARTTLS] and server.goodbyes == []


def test_starttls_acked_then_closed(tmp_path):
    with FakeNbdServer(IMAGE, starttls_reply=p.REP_ACK) as server:
        open_fails(tls_target(server, tmp_path), errors.NbdNegotiationError, 'TLS handshake')
    assert server.export_names == []


def test_option_reply_with_huge_length(tmp_path):
    with FakeNbdServer(IMAGE, starttls_reply=p.REP_ACK, option_reply_length=0xFFFFFFFF) as server:
        open_fails(tls_target(server, tmp_path), errors.NbdProtocolError, 'option reply of 4294967295 bytes')
    assert server.export_names == []


def test_option_reply_with_bad_magic(tmp_path):
    with FakeNbdServer(IMAGE, starttls_reply=p.REP_ACK, option_reply_magic=0x0102030405060708) as server:
        open_fails(tls_target(server, tmp_path), errors.NbdProtocolError, 'bad option reply magic 0x0102030405060708')
    assert server.export_names == []


def test_unknown_export_name_closes():
    with FakeNbdServer(IMAGE, exportname='/another-export') as server:
        open_fails(plain_target(server), errors.NbdExportRefused, 'closed the connection after the export name')
    assert server.export_names == [SECRET_NAME.encode('utf-8')]


def test_unknown_export_name_leaves_dest_untouched(dest_dir):
    with FakeNbdServer(IMAGE, exportname='/another-export') as server:
        export_fails(server, dest_dir, errors.NbdExportRefused)


def test_truncated_export_info():
    with FakeNbdServer(IMAGE, export_info=b'\x00\x00\x00\x00\x00') as server:
        open_fails(plain_target(server), errors.NbdExportRefused)


def test_huge_export_size_is_refused(dest_dir):
    with FakeNbdServer(IMAGE, export_size=2 ** 64 - 1) as server:
        exc = export_fails(server, dest_dir, (errors.NbdError, _export.ExportError))
    assert str(2 ** 64 - 1) in str(exc)


def test_export_size_larger_than_the_server_can_serve(dest_dir):
    # The server announces one more block than it has: the read of the last request fails with EINVAL.
    last_request = (len(IMAGE) + BLOCK - 1) // DEFAULT_REQUEST_SIZE * DEFAULT_REQUEST_SIZE
    with FakeNbdServer(IMAGE, export_size=len(IMAGE) + BLOCK) as server:
        exc = export_fails(server, dest_dir, errors.NbdServerError, 'at offset %d' % last_request, 'EINVAL')
    assert exc.offset == last_request
    assert exc.error == 22


# -- transmission: one connection ------------------------------------------------------------------------


def test_bad_reply_magic():
    with FakeNbdServer(IMAGE, reply_magic=0xDEADBEEF) as server:
        read_fails(server, 0, 4096, errors.NbdProtocolError, 'bad magic 0xdeadbeef')


def test_structured_reply_not_negotiated():
    with FakeNbdServer(IMAGE, reply_magic=p.STRUCTURED_REPLY_MAGIC) as server:
        read_fails(server, 0, 4096, errors.NbdProtocolError, 'structured reply')


def test_reply_with_unknown_cookie():
    with FakeNbdServer(IMAGE, cookie_xor=0x4000) as server:
        read_fails(server, 0, 4096, errors.NbdProtocolError, 'cookie 16384')


def test_error_reply_names_offset_and_errno():
    with FakeNbdServer(IMAGE, errors={2 * BLOCK + 10: 5}) as server:
        exc = read_fails(server, 2 * BLOCK, BLOCK, errors.NbdServerError, 'EIO', 'offset %d' % (2 * BLOCK),
                         '%d bytes' % BLOCK)
    assert (exc.error, exc.offset, exc.length) == (5, 2 * BLOCK, BLOCK)


def test_error_reply_with_unknown_errno():
    with FakeNbdServer(IMAGE, errors={0: 1234}) as server:
        exc = read_fails(server, 0, BLOCK, errors.NbdServerError, 'error 1234 (treated as EINVAL)', 'offset 0')
    assert exc.error == 1234


def test_connection_still_usable_after_error_reply():
    with FakeNbdServer(IMAGE, errors={0: 5}) as server:
        with NbdConnection.open(plain_target(server)) as conn:
            with pytest.raises(errors.NbdServerError):
                conn.read(0, BLOCK)
            assert conn.read(BLOCK, BLOCK) == IMAGE[BLOCK:2 * BLOCK]


# -- transmission: ExtentReader and export_to_file --------------------------------------------------------


def test_reader_unknown_cookie():
    with FakeNbdServer(IMAGE, cookie_xor=0x10000) as server:
        reader_fails(server, errors.NbdProtocolError, 'matches no request in flight')


def test_export_bad_reply_magic_leaves_dest_untouched(dest_dir):
    with FakeNbdServer(IMAGE, reply_magic=0x12345678) as server:
        export_fails(server, dest_dir, errors.NbdProtocolError, 'bad magic 0x12345678')


def test_export_error_reply_leaves_dest_untouched(dest_dir):
    failing_request = 5 * MIB // DEFAULT_REQUEST_SIZE * DEFAULT_REQUEST_SIZE  # the request holding 5 MiB
    with FakeNbdServer(IMAGE, errors={5 * MIB: 5}) as server:
        exc = export_fails(server, dest_dir, errors.NbdServerError, 'EIO', 'at offset %d' % failing_request,
                           connections=2, requests_in_flight=2)
    assert (exc.error, exc.offset) == (5, failing_request)


def _incremental_setup(directory, changed):
    """A dest holding IMAGE with the ``changed`` blocks rewritten, and the bitmap that marks them."""
    old = bytearray(IMAGE)
    for block in changed:
        old[block * BLOCK:(block + 1) * BLOCK] = b'\xa5' * len(old[block * BLOCK:(block + 1) * BLOCK])
    (directory / 'disk.raw').write_bytes(bytes(old))
    return _cbt.encode(changed, len(IMAGE))


def test_incremental_error_reply_leaves_dest_untouched(dest_dir):
    bitmap = _incremental_setup(dest_dir, [0, 1, 80, 160])
    with FakeNbdServer(IMAGE, errors={80 * BLOCK: 5}) as server:
        exc = export_fails(server, dest_dir, errors.NbdServerError, 'EIO', 'at offset %d' % (80 * BLOCK),
                           changed_blocks=bitmap)
    assert exc.offset == 80 * BLOCK


def test_out_of_order_replies_are_matched_by_cookie():
    with FakeNbdServer(IMAGE, reorder=4) as server:
        data, stats = read_all(server, connections=2, requests_in_flight=4)
    assert server.out_of_order > 0
    assert hashlib.sha256(data).hexdigest() == IMAGE_SHA256
    assert stats.bytes_read == len(IMAGE)


def test_export_with_out_of_order_replies(dest_dir):
    with FakeNbdServer(IMAGE, reorder=3) as server:
        export_ok(server, dest_dir, connections=1, requests_in_flight=3)
    assert server.out_of_order > 0


# The drop tests keep one request in flight: with more, the client may send on a connection the server has just
# reset, and a failed send loses the request (see test_reset_between_replies_loses_no_request).


def test_drop_once_is_retried_and_data_is_right():
    with FakeNbdServer(IMAGE, drop_after=5, max_faults=1) as server:
        data, stats = read_all(server, connections=3, requests_in_flight=1)
    assert server.faults == 1
    assert stats.reconnects == 1
    assert hashlib.sha256(data).hexdigest() == IMAGE_SHA256


def test_export_drop_once_is_retried(dest_dir):
    with FakeNbdServer(IMAGE, drop_after=1, max_faults=1) as server:
        result = export_ok(server, dest_dir, connections=1, requests_in_flight=1, retries=1)
    assert result['reconnects'] == 1
    assert server.connections == 2


def test_incremental_drop_once_is_retried(dest_dir):
    bitmap = _incremental_setup(dest_dir, [0, 1, 80, 160])
    with FakeNbdServer(IMAGE, drop_after=1, max_faults=1) as server:
        result = export_ok(server, dest_dir, changed_blocks=bitmap, connections=1, requests_in_flight=1, retries=1)
    assert result['reconnects'] == 1
    assert result['bytes_read'] == 4 * BLOCK


def test_drop_always_gives_up_with_a_clear_error():
    with FakeNbdServer(IMAGE, drop_after=2) as server:
        exc = reader_fails(server, errors.NbdConnectionLost, 'closed the connection', 'gave up after 2 reconnect attempts',
                           'while reading %d bytes at offset ' % BLOCK, connections=1, requests_in_flight=1, retries=2)
    assert server.faults == 3
    assert 'at offset %d ' % server.fault_offsets[-1] in str(exc)


def test_export_drop_always_leaves_dest_untouched(dest_dir):
    with FakeNbdServer(IMAGE, drop_after=0) as server:
        export_fails(server, dest_dir, errors.NbdConnectionLost, 'gave up after 1 reconnect attempts',
                     'at offset 0', retries=1)
    assert server.replies == 0


def test_stalled_reads_time_out(dest_dir):
    with FakeNbdServer(IMAGE, stall_reads=True) as server:
        started = time.monotonic()
        export_fails(server, dest_dir, errors.NbdTimeout, 'sent nothing for 1 s', 'at offset 0',
                     'gave up after 1 reconnect attempts', retries=1)
        assert time.monotonic() - started < 2 * TIMEOUT + 3
    assert server.connections == 2


def test_short_data_once_is_retried_and_data_is_right():
    with FakeNbdServer(IMAGE, short_after=5, max_faults=1) as server:
        data, stats = read_all(server, connections=1, requests_in_flight=2)
    assert server.faults == 1
    assert stats.reconnects == 1
    assert stats.bytes_read == len(IMAGE)
    assert hashlib.sha256(data).hexdigest() == IMAGE_SHA256


def test_export_short_data_once_is_retried(dest_dir):
    with FakeNbdServer(IMAGE, short_after=1, max_faults=1) as server:
        export_ok(server, dest_dir, connections=1, requests_in_flight=2, retries=1)


def test_short_data_always_gives_up_naming_the_offset():
    with FakeNbdServer(IMAGE, short_after=1) as server:
        exc = reader_fails(server, errors.NbdConnectionLost, 'closed the connection', 'gave up after 2 reconnect attempts',
                           connections=1, requests_in_flight=1, retries=2)
    assert 'at offset %d ' % server.fault_offsets[-1] in str(exc)


def test_reset_between_replies_loses_no_request():
    # The sink is slow on the first piece, so the server's RST arrives before the client sends the next request.
    out = bytearray(len(IMAGE))
    calls = []

    def slow_sink(offset, view):
        calls.append(offset)
        if len(calls) == 1:
            time.sleep(0.5)
        out[offset:offset + len(view)] = view

    with FakeNbdServer(IMAGE, reset_after=1, max_faults=1) as server:
        reader = ExtentReader(plain_target(server), connections=1, requests_in_flight=1, request_size=MIB, retries=1,
                              retry_delay=0.01)
        stats = reader.read([(0, len(IMAGE))], slow_sink)
    assert server.faults == 1
    assert stats.reconnects == 1
    assert stats.bytes_read == len(IMAGE)
    assert hashlib.sha256(out).hexdigest() == IMAGE_SHA256


def test_a_missing_dest_directory_is_refused_before_connecting(tmp_path):
    with FakeNbdServer(IMAGE) as server:
        with pytest.raises(_export.ExportError) as info:
            _export.export_to_file(plain_target(server), str(tmp_path / 'missing-dir' / 'disk.raw'), connections=1)
        assert info.value.code == 'DEST_PARENT_MISSING'
        assert server.connections == 0


def test_unwritable_destination_closes_the_connection(small_tmpfs):
    # A filesystem far smaller than the image: the writes fail (ENOSPC) after the connection is open.
    dest = os.path.join(small_tmpfs(256), 'disk.raw')
    with FakeNbdServer(IMAGE) as server:
        # Keep the exception (and so its traceback) alive: dropping it would let the garbage collector close the socket.
        with pytest.raises(OSError) as info:
            _export.export_to_file(plain_target(server), dest, connections=1)
        deadline = time.monotonic() + 2
        while server.disconnects < server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.connections == 1
        assert server.disconnects == 1, 'the NBD connection is still open after %r' % info.value
    assert not os.listdir(os.path.dirname(dest)), 'the partial file is removed'
