# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD front of a host: xapi-nbd's protocol (nbd_proxy) on the public port, nbdkit behind it.

nbdkit (python plugin, plain, on a private unix socket) validates the export tokens, plugs the dom0 VBDs
and reads the VDI files; the proxy in front plays xapi-nbd on the wire (option answers, TLS with the lab's
policy, one request at a time, hang-up after an error reply, 16 connections counted at accept).

xapi-nbd decides per connection from the networks' purposes: FORCEDTLS with `nbd`, NOTLS with
`insecure_nbd`, refuse with neither. The lab restarts the front whenever the mode changes (and runs none
when no network has an NBD purpose).
"""

from __future__ import absolute_import, division, print_function

import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time

from . import tls_policy
from .nbd_proxy import CONNECTION_LIMIT, XapiNbdProxy

__metaclass__ = type

UNIX_PATH_MAX = 100  # sun_path holds 108 bytes; a longer lab path uses a loopback port instead
PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'nbd_plugin.py')


def reserve_port(port=0):
    """A bound, never listening loopback socket that keeps ``port`` (0: a free one) ours.

    A port picked early and bound only when NBD is enabled could be taken in between by any
    other process (parallel test workers, outgoing connections). While this socket stays bound
    the kernel hands the port to nobody else, connections to it are refused as on a host
    without NBD, and a listener of ours (SO_REUSEADDR, like nbdkit's) may still bind it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(('127.0.0.1', port))
    except OSError:
        sock.close()
        raise
    return sock


class FrontError(Exception):
    pass


class NbdFront:
    def __init__(self, workdir, port, pki_dir, control_url, secret, policy, on_change=None, on_stop=None, host=None):
        self.workdir = workdir
        self.host = host  # the uuid of the host this front plays (the plugin names it to the simulator)
        self.port = port
        self.pki_dir = pki_dir
        self.control_url = control_url
        self.secret = secret
        self.policy = policy
        self.on_change = on_change or (lambda: None)
        self.on_stop = on_stop or (lambda: None)
        self.process = None
        self.proxy = None
        self.backend = None  # nbdkit's private socket path or (host, port)
        self.mode = None
        self._backend_port = None  # the reservation of nbdkit's loopback port, when a socket path is too long
        # nbdkit runs with --exit-with-parent (PR_SET_PDEATHSIG), which fires when the *thread*
        # that forked it ends; so one long-lived thread does every start and stop.
        self._jobs = queue.Queue()
        threading.Thread(target=self._worker, name='nbd-front', daemon=True).start()

    def _worker(self):
        while True:
            func, args, done = self._jobs.get()
            try:
                done['result'] = func(*args)
            except Exception as err:  # pylint: disable=broad-except
                done['error'] = err
            done['event'].set()

    def _run(self, func, *args):
        done = {'event': threading.Event()}
        self._jobs.put((func, args, done))
        done['event'].wait()
        if 'error' in done:
            raise done['error']
        return done.get('result')

    @property
    def pid(self):
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def apply(self, mode):
        """Make the front serve ``mode`` ('tls', 'plain' or None); returns when it is ready."""
        self._run(self._apply, mode)

    def reconcile(self, mode_source):
        """Like apply, with the mode read by the worker: the last change always wins."""
        self._run(lambda: self._apply(mode_source()))

    def stop(self):
        self._run(self._stop)

    def _apply(self, mode):
        if mode == self.mode and (mode is None or self.pid):
            return
        self._stop()
        if mode is not None:
            self._start(mode)
        self.on_change()

    def command(self, backend):
        """nbdkit, plain and private: ``backend`` is a unix socket path or a loopback port."""
        nbdkit = shutil.which('nbdkit')
        if nbdkit is None:
            raise FrontError('nbdkit is not installed')
        cmd = [nbdkit, '--foreground', '--exit-with-parent', '--readonly', '--no-sr', '--mask-handshake=1',
               '--tls=off', '--pidfile', self._pidfile()]
        if isinstance(backend, str):
            cmd += ['--unix', backend]
        else:
            cmd += ['--ipaddr', '127.0.0.1', '--port', str(backend[1])]
        # One request at a time per connection (the proxy sends no more, the plugin says so as well).
        cmd += ['--filter=noparallel', 'python', PLUGIN, 'serialize=requests']
        return cmd

    def _pidfile(self):
        return os.path.join(self.workdir, 'nbdkit.pid')

    def _backend(self):
        path = os.path.join(self.workdir, 'nbdkit.sock')
        if len(path.encode('utf-8')) <= UNIX_PATH_MAX:
            if os.path.exists(path):
                os.unlink(path)
            return path
        if self._backend_port is None:
            self._backend_port = reserve_port()
        return ('127.0.0.1', self._backend_port.getsockname()[1])

    def _start(self, mode):
        env = dict(os.environ, XENLAB_CONTROL_URL=self.control_url, XENLAB_CONTROL_SECRET=self.secret)
        if self.host:
            env['XENLAB_HOST'] = self.host
        backend = self.backend = self._backend()
        pidfile = self._pidfile()
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        log = open(os.path.join(self.workdir, 'nbdkit.log'), 'ab')
        try:
            self.process = subprocess.Popen(self.command(backend), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, close_fds=True)
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while not os.path.exists(pidfile) or os.path.getsize(pidfile) == 0:
            if self.process.poll() is not None:
                raise FrontError('nbdkit exited with %s, see nbdkit.log' % self.process.returncode)
            if time.monotonic() > deadline:
                self._stop()
                raise FrontError('nbdkit did not become ready')
            time.sleep(0.02)
        context = None
        if mode == 'tls':
            context = tls_policy.server_context(self.policy, os.path.join(self.pki_dir, 'server-cert.pem'),
                                                os.path.join(self.pki_dir, 'server-key.pem'))
        self.proxy = XapiNbdProxy(self.port, backend, mode, context, CONNECTION_LIMIT)
        try:
            self.proxy.start()
        except OSError:
            self.proxy = None
            self._stop()
            raise
        self.mode = mode

    def _stop(self):
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            self.on_stop()
        if isinstance(self.backend, str) and os.path.exists(self.backend):
            os.unlink(self.backend)
        self.backend = None
        self.mode = None
