# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A server that trickles data (a few bytes now and then, never silent for ``timeout``) must not hang a run.

Every reply must be complete within ``timeout`` plus its size at ``min_rate_mib_s``, and the handshake within
``HANDSHAKE_TIMEOUTS`` times ``timeout``; past that the client raises NbdTimeout (code NBD_TIMEOUT, retried on a
new connection like a broken one) naming what was too slow and the options to change. Checked with the library
and through the vdi_export module run by Ansible. The only time asserts bound a hang.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import errors
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import (
    HANDSHAKE_TIMEOUTS,
    NbdConnection,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.reader import ExtentReader
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_nbd_server import FakeNbdServer, image_bytes

__metaclass__ = type

KIB = 1024
SECRET_NAME = '/3a9c-uuid?session_id=OpaqueRef:SECRET-77aa'
SECRET = 'SECRET'
TIMEOUT = 1
IMAGE = image_bytes(256 * KIB, seed=11)
IMAGE_SHA256 = hashlib.sha256(IMAGE).hexdigest()

pytestmark = pytest.mark.timeout(120)


class _TrickleSocket:
    """A server-side socket whose ``sendall`` sends ``chunk`` bytes, then waits ``interval``, and so on."""

    def __init__(self, sock, server):
        self._sock = sock
        self._server = server

    def sendall(self, data):
        view = memoryview(data)
        for start in range(0, len(view), self._server.chunk):
            if start and self._server._stopping.wait(self._server.interval):
                raise OSError('server stopping')
            self._sock.sendall(view[start:start + self._server.chunk])

    def __getattr__(self, name):
        return getattr(self._sock, name)


class TrickleServer(FakeNbdServer):
    """FakeNbdServer whose first ``trickle_connections`` connections (None: all) trickle what they send.

    ``handshake``: trickle the handshake too (otherwise only the transmission phase trickles).
    """

    def __init__(self, image, chunk=64, interval=0.2, handshake=False, trickle_connections=None, **kwargs):
        super(TrickleServer, self).__init__(image, **kwargs)
        self.chunk = chunk
        self.interval = interval
        self.handshake = handshake
        self.trickle_connections = trickle_connections
        self.trickled = 0
        self._served = 0
        self._local = threading.local()

    def _serve(self, sock):
        with self._lock:
            self._served += 1
            trickle = self.trickle_connections is None or self._served <= self.trickle_connections
            if trickle:
                self.trickled += 1
        self._local.trickle = trickle and not self.handshake
        if trickle and self.handshake:
            sock = _TrickleSocket(sock, self)
        return super(TrickleServer, self)._serve(sock)

    def _transmit(self, sock):
        if self._local.trickle:
            sock = _TrickleSocket(sock, self)
        return super(TrickleServer, self)._transmit(sock)


def target(server, timeout=TIMEOUT, min_rate_mib_s=1.0):
    return _export.make_target(server.nbd_info(SECRET_NAME), tls=False, timeout=timeout, min_rate_mib_s=min_rate_mib_s)


def check_clean(exc):
    assert SECRET not in str(exc)
    assert SECRET not in repr(exc)


@pytest.fixture(autouse=True)
def no_thread_leaks():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        extra = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        if not extra:
            break
        time.sleep(0.05)
    assert not extra, 'threads left running: %s' % extra


# -- the library ------------------------------------------------------------------------------------


def test_trickled_reply_data_times_out_with_a_clear_message():
    # 64 bytes every 0.2 s: the header arrives at once, the data never pauses for a whole second.
    with TrickleServer(IMAGE) as server:
        with NbdConnection.open(target(server)) as conn:
            started = time.monotonic()
            with pytest.raises(errors.NbdTimeout) as info:
                conn.read(0, 64 * KIB)
            assert time.monotonic() - started < 10  # bounds a hang
    exc = info.value
    check_clean(exc)
    assert exc.code == 'NBD_TIMEOUT'
    assert exc.retryable
    message = str(exc)
    assert 'sent data too slowly' in message
    assert 'the reply to a read of %d bytes was not complete after' % (64 * KIB) in message
    assert 'the minimum rate (1 MiB/s)' in message and exc.situation == 'reply_slow'
    assert 'min_rate_mib_s' not in message  # the caller names its own option (nbd_advice)
    assert 'sent nothing' not in message


def test_trickled_reply_header_times_out():
    with TrickleServer(IMAGE, chunk=1, interval=0.3) as server:
        with NbdConnection.open(target(server)) as conn:
            started = time.monotonic()
            with pytest.raises(errors.NbdTimeout) as info:
                conn.read(0, 4 * KIB)
            assert time.monotonic() - started < 10
    check_clean(info.value)
    assert 'the header of a read reply was not complete' in str(info.value)


def test_min_rate_zero_leaves_only_the_per_recv_timeout():
    # 2 KiB at 64 bytes per 0.1 s takes about 3 s, longer than timeout + 2 KiB at 1 MiB/s, but never pauses for 1 s.
    with TrickleServer(IMAGE, chunk=64, interval=0.1) as server:
        with NbdConnection.open(target(server, min_rate_mib_s=0)) as conn:
            assert conn.read(4096, 2048) == IMAGE[4096:4096 + 2048]
        with NbdConnection.open(target(server)) as conn:
            with pytest.raises(errors.NbdTimeout):
                conn.read(4096, 2048)


def test_a_prompt_server_is_within_even_a_tight_bound():
    with FakeNbdServer(IMAGE) as server:
        with NbdConnection.open(target(server, min_rate_mib_s=1000)) as conn:
            assert conn.read(0, len(IMAGE)) == IMAGE


def test_reader_reconnects_after_a_trickling_connection_and_reads_everything():
    with TrickleServer(IMAGE, trickle_connections=1) as server:
        out = bytearray(len(IMAGE))

        def sink(offset, view):
            out[offset:offset + len(view)] = view

        reader = ExtentReader(target(server), connections=1, requests_in_flight=2, request_size=64 * KIB,
                              retries=2, retry_delay=0.01)
        started = time.monotonic()
        stats = reader.read([(0, len(IMAGE))], sink)
        assert time.monotonic() - started < 20
    assert hashlib.sha256(bytes(out)).hexdigest() == IMAGE_SHA256
    assert stats.reconnects == 1
    assert server.trickled == 1
    assert server.connections == 2


def test_reader_gives_up_after_the_retries_on_a_server_that_always_trickles(tmp_path):
    dest = tmp_path / 'disk.raw'
    with TrickleServer(IMAGE) as server:
        started = time.monotonic()
        with pytest.raises(errors.NbdTimeout) as info:
            _export.export_to_file(target(server), str(dest), connections=1, retries=1)
        assert time.monotonic() - started < 20
    check_clean(info.value)
    message = str(info.value)
    assert 'sent data too slowly' in message
    assert 'gave up after 1 reconnect attempts' in message
    assert 'at offset 0' in message
    assert server.connections == 2
    assert os.listdir(str(tmp_path)) == []


def test_trickled_handshake_ends_within_its_deadline():
    # One byte of the 18-byte greeting every 0.2 s: never silent for 0.5 s, but 3.6 s in total.
    with TrickleServer(IMAGE, chunk=1, interval=0.2, handshake=True) as server:
        started = time.monotonic()
        with pytest.raises(errors.NbdHandshakeTimeout) as info:
            NbdConnection.open(target(server, timeout=0.5))
        assert time.monotonic() - started < 10
    exc = info.value
    check_clean(exc)
    assert exc.code == 'NBD_TIMEOUT'
    assert isinstance(exc, errors.NbdHandshakeInterrupted) and exc.retryable
    assert 'did not complete the NBD handshake within %s s' % (HANDSHAKE_TIMEOUTS * 0.5) in str(exc)
    assert 'the greeting' in str(exc)


def test_a_stalled_greeting_is_still_reported_as_silence():
    with FakeNbdServer(IMAGE, stall_greeting=True) as server:
        with pytest.raises(errors.NbdHandshakeInterrupted) as info:
            NbdConnection.open(target(server))
    assert info.type is errors.NbdHandshakeInterrupted
    assert 'sent nothing for 1 s' in str(info.value)


# -- through the module ------------------------------------------------------------------------------


def test_vdi_export_against_a_trickling_server_fails_with_nbd_timeout(tmp_path):
    dest = tmp_path / 'out' / 'disk.raw'
    dest.parent.mkdir()
    with TrickleServer(IMAGE) as server:
        args = {'nbd': server.nbd_info(SECRET_NAME), 'dest': str(dest), 'tls': False, 'timeout': TIMEOUT,
                'retries': 1, 'connections': 1}
        started = time.monotonic()
        result, output = run_module('vdi_export', args, tmp_path, verbose=True)
        assert time.monotonic() - started < 90  # bounds a hang: the run was endless before
    assert result['failed'] is True
    assert result['error_code'] == 'NBD_TIMEOUT'
    assert result['error_type'] == 'NbdTimeout'
    assert 'sent data too slowly' in result['msg']
    assert 'min_rate_mib_s' in result['msg']
    assert 'gave up after 1 reconnect attempts' in result['msg']
    assert 'Traceback' not in output
    assert SECRET not in output
    assert server.connections == 2  # the first connection and one reconnect
    assert os.listdir(str(dest.parent)) == []


def test_vdi_export_with_min_rate_zero_waits_for_a_slow_but_steady_server(tmp_path):
    image = image_bytes(4 * KIB, seed=3)
    dest = tmp_path / 'disk.raw'
    with TrickleServer(image, chunk=512, interval=0.25) as server:
        args = {'nbd': server.nbd_info(SECRET_NAME), 'dest': str(dest), 'tls': False, 'timeout': TIMEOUT,
                'retries': 0, 'connections': 1, 'min_rate_mib_s': 0}
        result, output = run_module('vdi_export', args, tmp_path)
    assert result['failed'] is False, result
    assert result['reconnects'] == 0
    assert dest.read_bytes() == image
    assert SECRET not in output
