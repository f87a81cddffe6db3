# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD front: an nbdkit process (python plugin + limit filter) restarted when purposes change.

xapi-nbd decides per connection from the networks' purposes: FORCEDTLS with `nbd`, NOTLS with
`insecure_nbd`, refuse with neither. nbdkit fixes TLS at start, so the lab restarts it on the same
port whenever the mode changes (and runs none when no network has an NBD purpose).
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
from .tls_proxy import StartTlsProxy

__metaclass__ = type

CONNECTION_LIMIT = 16
PLUGIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'nbd_plugin.py')


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


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
        self.mode = None
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

    def _legacy_proxy(self, mode):
        return mode == 'tls' and self.policy == 'legacy'

    def command(self, mode, port=None):
        nbdkit = shutil.which('nbdkit')
        if nbdkit is None:
            raise FrontError('nbdkit is not installed')
        cmd = [nbdkit, '--foreground', '--exit-with-parent', '--ipaddr', '127.0.0.1', '--port', str(port or self.port),
               '--readonly', '--no-sr', '--mask-handshake=1', '--pidfile', self._pidfile(),
               '--filter=limit']
        if mode == 'tls' and not self._legacy_proxy(mode):
            cmd += ['--tls=require', '--tls-certificates=' + self.pki_dir]
        else:
            cmd += ['--tls=off']
        cmd += ['python', PLUGIN, 'limit=%d' % CONNECTION_LIMIT]
        return cmd

    def _pidfile(self):
        return os.path.join(self.workdir, 'nbdkit.pid')

    def _start(self, mode):
        env = dict(os.environ, XENLAB_CONTROL_URL=self.control_url, XENLAB_CONTROL_SECRET=self.secret)
        if self.host:
            env['XENLAB_HOST'] = self.host
        backend_port = None
        if self._legacy_proxy(mode):
            backend_port = free_port()
        elif mode == 'tls':
            env.update(tls_policy.gnutls_env(self.policy, self.workdir))
        pidfile = self._pidfile()
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        log = open(os.path.join(self.workdir, 'nbdkit.log'), 'ab')
        try:
            self.process = subprocess.Popen(self.command(mode, backend_port), stdin=subprocess.DEVNULL, stdout=log,
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
        if backend_port:
            self.proxy = StartTlsProxy(self.port, backend_port, tls_policy.server_context(
                'legacy', os.path.join(self.pki_dir, 'server-cert.pem'), os.path.join(self.pki_dir, 'server-key.pem')))
            self.proxy.start()
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
        self.mode = None
