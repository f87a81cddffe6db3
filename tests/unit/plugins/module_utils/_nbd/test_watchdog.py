# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Transmission reads block, and the watchdog keeps their deadlines: a silent TLS server is reported as silent,
a watched socket is shut down only while it is watched, and the watchdog thread ends with the last connection.

The servers are real (nbdkit with the delay filter, over TLS); the only time asserts bound a hang.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import signal
import socket
import threading
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import errors
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import watchdog
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.reader import ExtentReader
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_nbd_server import FakeNbdServer, image_bytes
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, start_nbdkit

__metaclass__ = type

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]
MIB = 1024 * 1024
IMAGE_BYTES = image_bytes(64 * 1024, seed=3)


def watchdog_threads():
    return [t for t in threading.enumerate() if t.name == 'nbd-watchdog' and t.is_alive()]


def wait_for_no_watchdog(seconds=2.0):
    deadline = time.monotonic() + seconds
    while watchdog_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not watchdog_threads()


@pytest.fixture
def image(tmp_path):
    return make_disk_image(tmp_path / 'disk.raw', 8 * MIB, seed=5)


def delayed_tls_server(image, tmp_path, pki, delay):
    return start_nbdkit(image.path, tmp_path / 'server', pki, tls=True, kind='nbdkit-tls-delay',
                        extra_args=['--filter=delay'], params=['delay-read=%s' % delay])


def tls_target(server, timeout):
    return _export.make_target(server.nbd_info(), tls=True, timeout=timeout)


def test_a_silent_tls_server_is_reported_as_silent_within_the_timeout(image, tmp_path, pki):
    server = delayed_tls_server(image, tmp_path, pki, '10')
    try:
        with NbdConnection.open(tls_target(server, timeout=1)) as conn:
            assert watchdog_threads()
            started = time.monotonic()
            with pytest.raises(errors.NbdTimeout) as info:
                conn.read(0, 4096)
            waited = time.monotonic() - started
        assert 'sent nothing for 1 s' in str(info.value)
        assert 1.0 <= waited < 3.0  # not before the timeout; and not the server's 10 s
    finally:
        server.stop()
    assert wait_for_no_watchdog(), 'the watchdog thread outlived its last connection'


def test_a_slow_but_answering_tls_server_is_read_in_full(image, tmp_path, pki):
    # 0.3 s per request, well inside the 2 s timeout: the watchdog must not cut a healthy connection.
    server = delayed_tls_server(image, tmp_path, pki, '300ms')
    out = bytearray(image.size)

    def sink(offset, view):
        out[offset:offset + len(view)] = view
    try:
        stats = ExtentReader(tls_target(server, timeout=2), connections=4, requests_in_flight=2,
                             request_size=MIB).read([(0, image.size)], sink)
    finally:
        server.stop()
    assert stats.reconnects == 0
    assert hashlib.sha256(bytes(out)).hexdigest() == image.sha256
    assert wait_for_no_watchdog()


def test_an_overdue_watch_shuts_its_socket_down():
    left, right = socket.socketpair()
    try:
        watch = watchdog.ReceiveWatch(left)
        watch.arm(time.monotonic() - 1, None)
        watch.expire(time.monotonic())
        assert watch.expired == watchdog.SILENT
        assert left.recv(1) == b''  # end-of-file: a blocked receive would wake up
    finally:
        left.close()
        right.close()


def test_a_released_or_disarmed_watch_never_touches_its_socket():
    left, right = socket.socketpair()
    try:
        disarmed = watchdog.ReceiveWatch(left)
        disarmed.arm(time.monotonic() - 1, time.monotonic() - 1)
        disarmed.disarm()
        disarmed.expire(time.monotonic())
        released = watchdog.ReceiveWatch(left)
        released.arm(time.monotonic() - 1, None)
        released.release()
        released.expire(time.monotonic())
        assert disarmed.expired is None and released.expired is None
        right.sendall(b'x')
        assert left.recv(1) == b'x'  # still open both ways
    finally:
        left.close()
        right.close()


def test_the_reply_deadline_is_slow_and_silence_wins_a_tie():
    watch = watchdog.ReceiveWatch(None)
    now = time.monotonic()
    watch.arm(now + 10, now - 1)
    assert watch.overdue(now) == watchdog.SLOW
    watch.arm(now - 1, now - 1)
    assert watch.overdue(now) == watchdog.SILENT
    watch.arm(now + 10, None)
    assert watch.overdue(now) is None


def test_a_reply_already_buffered_when_the_watchdog_fired_is_not_taken_as_healthy():
    with FakeNbdServer(IMAGE_BYTES) as server:
        target = _export.make_target(server.nbd_info('/buffered'), tls=False, timeout=5)
        with NbdConnection.open(target) as conn:
            conn.send_read(7, 0, 4096)
            time.sleep(0.3)  # the whole reply now waits in the client's socket buffer
            watch = conn._watch  # pylint: disable=protected-access
            watch.arm(time.monotonic() - 1, None)
            watch.expire(time.monotonic())  # what the watchdog does to an overdue receive
            with pytest.raises(errors.NbdTimeout) as info:
                conn.recv_reply_header()
    assert 'sent nothing for 5 s' in str(info.value)


def test_disarm_says_whether_the_watchdog_expired_the_receive():
    left, right = socket.socketpair()
    try:
        watch = watchdog.ReceiveWatch(left)
        watch.arm(time.monotonic() + 10, None)
        assert watch.disarm() is None
        watch.arm(time.monotonic() - 1, None)
        watch.expire(time.monotonic())
        assert watch.disarm() == watchdog.SILENT
    finally:
        left.close()
        right.close()


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
def test_a_forked_child_starts_with_no_watches_of_its_parent():
    with FakeNbdServer(IMAGE_BYTES) as server:
        target = _export.make_target(server.nbd_info('/fork'), tls=False, timeout=5)
        with NbdConnection.open(target):
            assert watchdog.WATCHDOG._watches  # pylint: disable=protected-access
            pid = os.fork()
            if pid == 0:  # the child: report through the exit status only
                clean = not watchdog.WATCHDOG._watches and watchdog.WATCHDOG._thread is None  # pylint: disable=protected-access
                os._exit(0 if clean else 1)  # pylint: disable=protected-access
            _pid, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_tls_server_that_dies_mid_transmission_closed_the_connection(image, tmp_path, pki):
    # SIGKILL: the kernel ends the TCP stream without a TLS close_notify (a "ragged" end).
    server = delayed_tls_server(image, tmp_path, pki, '2')
    try:
        with NbdConnection.open(tls_target(server, timeout=10)) as conn:
            conn.send_read(1, 0, 4096)
            os.kill(server.pid, signal.SIGKILL)
            started = time.monotonic()
            with pytest.raises(errors.NbdConnectionLost) as info:
                conn.recv_reply_header()
            assert time.monotonic() - started < 5
    finally:
        server.stop()
    assert 'closed the connection' in str(info.value)


def test_a_send_on_a_socket_the_watchdog_shut_down_is_a_timeout():
    with FakeNbdServer(IMAGE_BYTES) as server:
        target = _export.make_target(server.nbd_info('/send'), tls=False, timeout=5)
        with NbdConnection.open(target) as conn:
            watch = conn._watch  # pylint: disable=protected-access
            watch.arm(time.monotonic() - 1, None)
            watch.expire(time.monotonic())
            with pytest.raises(errors.NbdTimeout) as info:
                conn.send_read(1, 0, 4096)
            assert conn.state == 'broken'
    assert 'accepted nothing for 5 s' in str(info.value)
