# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Start and stop real third-party NBD servers (qemu-nbd, nbdkit, nbd-server) for interop tests.

Every server listens on a free port on 127.0.0.1 only, runs in its own session/process group, logs to a file in
its work dir, and is stopped by PID (process group) with a bounded wait. See ``SERVER_KINDS`` and ``start_server``.
Also: deterministic test disk images (``make_disk_image``, ``rewrite_random_blocks``) and a raw STARTTLS probe
(``starttls_probe``) to check which TLS version/cipher a server negotiates.
"""

from __future__ import absolute_import, division, print_function

import atexit
import errno
import hashlib
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time

from urllib.parse import quote

import pytest

__metaclass__ = type

LOCALHOST = '127.0.0.1'
BLOCK = 64 * 1024
DEFAULT_EXPORT = 'vdisk0'
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# GnuTLS priority strings imitating xapi-nbd's TLS policies (see lab-notes.md).
TLS_PRIORITY_CURRENT = 'NONE:+VERS-TLS1.2:+AES-256-GCM:+AES-128-GCM:+AEAD:+ECDHE-RSA:+SIGN-ALL:+GROUP-SECP384R1:+COMP-NULL'
TLS_PRIORITY_LEGACY = 'NONE:+VERS-TLS1.2:+AES-128-CBC:+SHA256:+RSA:+SIGN-ALL:+COMP-NULL'

# The kinds the standard interop parametrisation uses.
SERVER_KINDS = (
    'qemu-plain',        # qemu-nbd, no TLS
    'qemu-tls',          # qemu-nbd, TLS required, CA-signed leaf, verify-peer=off
    'nbdkit-plain',      # nbdkit file plugin, strict export name, no TLS
    'nbdkit-tls',        # nbdkit, TLS required, self-signed host leaf (XenServer-like)
    'nbdkit-tls-ca',     # nbdkit, TLS required, CA-signed leaf
    'nbd-server-plain',  # nbd-server 3.24, no TLS
    'nbd-server-tls',    # nbd-server 3.24, TLS required, mutual TLS (client cert mandatory)
)
# Extra kinds: qemu-nbd restricted to xapi-nbd's current / legacy cipher policy.
EXTRA_SERVER_KINDS = ('qemu-tls-current', 'qemu-tls-legacy')
ALL_SERVER_KINDS = SERVER_KINDS + EXTRA_SERVER_KINDS

_BINARY_PACKAGES = {
    'qemu-nbd': 'qemu-utils',
    'nbdkit': 'nbdkit',
    'nbd-server': 'nbd-server',
    'nbdinfo': 'libnbd-bin',
    'nbdcopy': 'libnbd-bin',
}

_LIVE = {}  # id(server) -> server, for the atexit safety net


class MissingBinaryError(RuntimeError):
    """A required NBD server/client binary is not installed (raised instead of skipping when CI=true)."""


class ServerStartError(RuntimeError):
    """A server did not become ready; the message includes its command line and log."""


def require_binary(name):
    """Return the path of ``name``; if it is missing, fail under CI (``CI=true``), else skip the test.

    This is the single place that decides between failing and skipping for missing tools.
    """
    path = shutil.which(name)
    if path:
        return path
    package = _BINARY_PACKAGES.get(name, name)
    reason = '%s not found on PATH (Debian/Ubuntu package: %s)' % (name, package)
    if os.environ.get('CI') == 'true':
        raise MissingBinaryError(reason + '; CI=true, so interop tests must not be skipped')
    pytest.skip(reason)
    return None  # not reached


def free_port():
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def port_is_listening(port, address=LOCALHOST):
    """True if something listens on address:port; reads /proc/net/tcp (no connection), else connects."""
    try:
        with open('/proc/net/tcp') as f:
            lines = f.readlines()[1:]
    except (IOError, OSError):
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return True
        except (IOError, OSError):
            return False
    want = '%s:%04X' % (''.join('%02X' % int(p) for p in reversed(address.split('.'))), port)
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1] == want and fields[3] == '0A':
            return True
    return False


def _pid_alive(pid):
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except (IOError, OSError):
        try:
            os.kill(pid, 0)
        except OSError as e:
            return e.errno == errno.EPERM
        return True
    return stat.rsplit(')', 1)[-1].split()[0] != 'Z'


def _pid_cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
    except (IOError, OSError):
        return ''


def _read_pidfile(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except (IOError, OSError):
        return None
    return int(text) if text.isdigit() else None


def _tail(path, limit=4000):
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except (IOError, OSError):
        return '<no log>'
    return data[-limit:].decode('utf-8', 'replace')


def _signal_group(pid, sig):
    """Send ``sig`` to the process group led by ``pid`` (or just ``pid`` if it leads none)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError as e:
        if e.errno != errno.ESRCH:
            raise


class NbdServer:
    """A running NBD server. Use ``stop()`` (or ``with``); ``kill()`` SIGKILLs at once."""

    address = LOCALHOST

    def __init__(self, kind, port, exportname, tls, workdir, image_path, log_path, argv,
                 cert_pem=None, subject=None, ca_path=None, client_cert=None, client_key=None,
                 client_tls_dir=None, tls_priority=None):
        self.kind = kind
        self.port = port
        self.exportname = exportname
        self.tls = tls
        self.workdir = workdir
        self.image_path = image_path
        self.log_path = log_path
        self.argv = argv
        self.cert_pem = cert_pem
        self.subject = subject
        self.ca_path = ca_path
        self.client_cert = client_cert
        self.client_key = client_key
        self.client_tls_dir = client_tls_dir
        self.tls_priority = tls_priority
        self.pid = None
        self._popen = None       # set when the server is our direct child
        self._daemon_name = None  # set for self-daemonising servers (nbd-server)
        self.returncode = None

    # ---- information -------------------------------------------------------------------------------------------
    def nbd_info(self):
        """One element of XenServer's ``VDI.get_nbd_info`` for this server (cert '' when not TLS)."""
        return {
            'address': self.address,
            'port': str(self.port),
            'exportname': self.exportname,
            'cert': self.cert_pem or '',
            'subject': self.subject or '',
        }

    def uri(self, exportname=None):
        """libnbd URI (nbd:// or nbds://...?tls-certificates=DIR); needs ``set_uri_allow_local_file(True)``."""
        name = self.exportname if exportname is None else exportname
        base = '%s://%s:%d/%s' % ('nbds' if self.tls else 'nbd', self.address, self.port, quote(name, safe=''))
        if self.tls:
            base += '?tls-certificates=' + quote(self.client_tls_dir, safe='/')
        return base

    def log(self):
        return _tail(self.log_path)

    def __repr__(self):
        return '<NbdServer %s %s:%s export=%r tls=%s pid=%s>' % (
            self.kind, self.address, self.port, self.exportname, self.tls, self.pid)

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def running(self):
        if self.pid is None:
            return False
        if self._popen is not None:
            return self._popen.poll() is None
        return _pid_alive(self.pid)

    def _is_ours(self):
        if self._popen is not None:
            return self._popen.poll() is None
        return _pid_alive(self.pid) and self._daemon_name in _pid_cmdline(self.pid)

    def _wait_gone(self, timeout):
        deadline = time.monotonic() + timeout
        if self._popen is not None:
            try:
                self.returncode = self._popen.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        while time.monotonic() < deadline:
            if not _pid_alive(self.pid):
                return True
            time.sleep(0.02)
        return not _pid_alive(self.pid)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM the server's process group, wait up to ``timeout``, then SIGKILL. Idempotent."""
        if self.pid is None:
            return
        try:
            if self._is_ours():
                _signal_group(self.pid, signal.SIGTERM)
                if not self._wait_gone(timeout):
                    _signal_group(self.pid, signal.SIGKILL)
                    self._wait_gone(timeout)
            elif self._popen is not None:
                self._wait_gone(timeout)
        finally:
            _LIVE.pop(id(self), None)

    def kill(self):
        """SIGKILL the server (and its per-connection children) immediately, e.g. to die mid-export."""
        if self.pid is None:
            return
        try:
            if self._is_ours():
                _signal_group(self.pid, signal.SIGKILL)
            self._wait_gone(STOP_TIMEOUT)
        finally:
            _LIVE.pop(id(self), None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def launch(self, pidfile, daemonizes, timeout):
        """Start ``self.argv``; wait for the pid file and a listening socket. Raises ServerStartError."""
        if os.path.exists(pidfile):
            os.unlink(pidfile)
        with open(self.log_path, 'ab') as log:
            log.write(('$ %s\n' % ' '.join(self.argv)).encode('utf-8'))
            log.flush()
            popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=self.workdir, start_new_session=True, close_fds=True)
        if daemonizes:
            self._daemon_name = os.path.basename(self.argv[0])
        else:
            self._popen = popen
            self.pid = popen.pid
        _LIVE[id(self)] = self
        deadline = time.monotonic() + timeout
        problem = None
        while time.monotonic() < deadline:
            if daemonizes and self.pid is None:
                rc = popen.poll()
                if rc is not None and rc != 0:
                    problem = 'launcher exited with status %d' % rc
                    break
                self.pid = _read_pidfile(pidfile)
            elif not daemonizes and popen.poll() is not None:
                problem = 'exited with status %d' % popen.returncode
                break
            if self.pid is not None:
                if daemonizes and not _pid_alive(self.pid):
                    problem = 'daemon %d died' % self.pid
                    break
                if _read_pidfile(pidfile) is not None and port_is_listening(self.port):
                    if daemonizes:
                        popen.wait(timeout=timeout)
                    return
            time.sleep(0.02)
        else:
            problem = 'not ready after %.0f s' % timeout
        if daemonizes:
            if self.pid is None:
                self.pid = _read_pidfile(pidfile)
            try:
                popen.wait(timeout=1)
            except subprocess.TimeoutExpired:
                _signal_group(popen.pid, signal.SIGKILL)
                popen.wait()
        self.stop(timeout=2)
        raise ServerStartError('%s on port %d: %s\ncommand: %s\nlog %s:\n%s' % (
            self.kind, self.port, problem, ' '.join(self.argv), self.log_path, _tail(self.log_path)))


@atexit.register
def _stop_leftovers():
    for server in list(_LIVE.values()):
        try:
            server.kill()
        except Exception:  # pylint: disable=broad-except
            pass


def _start(make_server, pidfile_name, daemonizes, timeout, attempts=3):
    """Call ``make_server(port)`` and launch it; retry on a fresh port if the port was taken meanwhile."""
    last = None
    for _attempt in range(attempts):
        server = make_server(free_port())
        try:
            server.launch(os.path.join(server.workdir, pidfile_name), daemonizes, timeout)
            return server
        except ServerStartError as e:
            last = e
            if 'in use' not in str(e).lower():
                raise
    raise last


def _prepare_workdir(workdir, kind):
    workdir = os.path.abspath(str(workdir))
    os.makedirs(workdir, exist_ok=True)
    return workdir, os.path.join(workdir, '%s.log' % kind)


def _tls_material(pki, cert):
    """Return (server credential dir, server cert PEM, CA path, libnbd client dir) for cert 'host' or 'ca'."""
    if pki is None:
        raise ValueError('TLS servers need a pki (helpers.pki.make_pki)')
    if cert == 'host':
        return pki.host_dir, pki.host_cert_pem, None, pki.libnbd_host_dir
    if cert == 'ca':
        return pki.ca_dir, pki.server_cert_pem, pki.ca_cert_path, pki.libnbd_ca_dir
    raise ValueError('cert must be "host" or "ca", not %r' % (cert,))


def start_qemu_nbd(image_path, workdir, pki=None, exportname=DEFAULT_EXPORT, tls=False, priority=None,
                   image_format='raw', shared=16, kind=None, timeout=START_TIMEOUT, extra_args=()):
    """qemu-nbd, read-only, ``-x exportname`` (strict), ``-e shared -t``; TLS uses the CA-signed leaf with
    verify-peer=off and an optional GnuTLS ``priority`` string (TLS_PRIORITY_CURRENT / TLS_PRIORITY_LEGACY)."""
    binary = require_binary('qemu-nbd')
    kind = kind or ('qemu-tls' if tls else 'qemu-plain')
    workdir, log_path = _prepare_workdir(workdir, kind)
    image_path = os.path.abspath(str(image_path))
    pidfile = os.path.join(workdir, '%s.pid' % kind)

    def make(port):
        argv = [binary, '-f', image_format, '-r', '-x', exportname, '-b', LOCALHOST, '-p', str(port),
                '-t', '-e', str(shared), '--pid-file=%s' % pidfile]
        info = {}
        if tls:
            cred_dir, cert_pem, ca_path, client_dir = _tls_material(pki, 'ca')
            obj = 'tls-creds-x509,id=tls0,dir=%s,endpoint=server,verify-peer=off' % cred_dir
            if priority:
                obj += ',priority=%s' % priority
            argv += ['--object', obj, '--tls-creds', 'tls0']
            info = dict(cert_pem=cert_pem, ca_path=ca_path, client_tls_dir=client_dir, tls_priority=priority)
        argv += list(extra_args) + [image_path]
        return NbdServer(kind, port, exportname, tls, workdir, image_path, log_path, argv,
                         subject=pki.host_name if pki else None, **info)

    return _start(make, os.path.basename(pidfile), False, timeout)


def start_nbdkit(image_path, workdir, pki=None, exportname=DEFAULT_EXPORT, tls=False, cert='host', strict=True,
                 kind=None, timeout=START_TIMEOUT, extra_args=(), params=()):
    """nbdkit file plugin, read-only, foreground (-f) with -P pidfile; ``strict`` adds the exportname filter
    (exportname-strict=true, only ``exportname``; without it nbdkit serves any name). TLS: --tls=require with
    the self-signed host leaf (``cert='host'``) or the CA-signed leaf (``cert='ca'``). ``extra_args`` go before
    the plugin (``--filter=rate``), ``params`` after it (the filters' ``key=value``, ``rate=32M``)."""
    binary = require_binary('nbdkit')
    kind = kind or ('nbdkit-plain' if not tls else ('nbdkit-tls' if cert == 'host' else 'nbdkit-tls-ca'))
    workdir, log_path = _prepare_workdir(workdir, kind)
    image_path = os.path.abspath(str(image_path))
    pidfile = os.path.join(workdir, '%s.pid' % kind)

    def make(port):
        argv = [binary, '-f', '--exit-with-parent', '-i', LOCALHOST, '-p', str(port), '-P', pidfile, '-r']
        info = {}
        if tls:
            cred_dir, cert_pem, ca_path, client_dir = _tls_material(pki, cert)
            argv += ['--tls=require', '--tls-certificates=%s' % cred_dir]
            info = dict(cert_pem=cert_pem, ca_path=ca_path, client_tls_dir=client_dir)
        if strict:
            argv += ['--filter=exportname']
        argv += list(extra_args) + ['file', 'file=%s' % image_path] + list(params)
        if strict:
            argv += ['exportname-strict=true', 'exportname=%s' % exportname, 'exportname-list=explicit']
        return NbdServer(kind, port, exportname, tls, workdir, image_path, log_path, argv,
                         subject=pki.host_name if pki else None, **info)

    return _start(make, os.path.basename(pidfile), False, timeout)


def start_nbd_server(image_path, workdir, pki=None, exportname=DEFAULT_EXPORT, tls=False, tlsprio=None,
                     kind=None, timeout=START_TIMEOUT):
    """nbd-server 3.24 from a generated config; export name = section name; read-only; daemonises (-p pidfile),
    stopped via that PID/process group. TLS is mutual: clients must present ``client_cert``/``client_key``."""
    binary = require_binary('nbd-server')
    kind = kind or ('nbd-server-tls' if tls else 'nbd-server-plain')
    workdir, log_path = _prepare_workdir(workdir, kind)
    image_path = os.path.abspath(str(image_path))
    pidfile = os.path.join(workdir, '%s.pid' % kind)
    conf_path = os.path.join(workdir, '%s.conf' % kind)
    if not exportname or any(c in exportname for c in '[]\n\r') or exportname == 'generic':
        raise ValueError('export name %r cannot be an nbd-server section name' % (exportname,))

    def make(port):
        generic = ['listenaddr = %s' % LOCALHOST, 'port = %d' % port, 'allowlist = true']
        export = ['exportname = %s' % image_path, 'readonly = true']
        info = {}
        if tls:
            _cred_dir, cert_pem, ca_path, _client_dir = _tls_material(pki, 'ca')
            generic += ['certfile = %s' % pki.server_cert_path, 'keyfile = %s' % pki.server_key_path,
                        'cacertfile = %s' % ca_path, 'force_tls = true']
            if tlsprio:
                generic.append('tlsprio = %s' % tlsprio)
            export.append('force_tls = true')
            info = dict(cert_pem=cert_pem, ca_path=ca_path, client_tls_dir=pki.libnbd_ca_mtls_dir, tls_priority=tlsprio,
                        client_cert=pki.client_cert_path, client_key=pki.client_key_path)
        with open(conf_path, 'w') as f:
            f.write('[generic]\n%s\n[%s]\n%s\n' % (
                '\n'.join('    ' + x for x in generic), exportname, '\n'.join('    ' + x for x in export)))
        argv = [binary, '-C', conf_path, '-p', pidfile]
        return NbdServer(kind, port, exportname, tls, workdir, image_path, log_path, argv,
                         subject=pki.host_name if pki else None, **info)

    return _start(make, os.path.basename(pidfile), True, timeout)


def start_server(kind, image_path, workdir, pki=None, exportname=DEFAULT_EXPORT, **kwargs):
    """Start a server of one of ``ALL_SERVER_KINDS``; extra keyword arguments go to the start_* function."""
    if kind == 'qemu-plain':
        return start_qemu_nbd(image_path, workdir, pki, exportname, tls=False, **kwargs)
    if kind == 'qemu-tls':
        return start_qemu_nbd(image_path, workdir, pki, exportname, tls=True, **kwargs)
    if kind == 'qemu-tls-current':
        return start_qemu_nbd(image_path, workdir, pki, exportname, tls=True, priority=TLS_PRIORITY_CURRENT,
                              kind=kind, **kwargs)
    if kind == 'qemu-tls-legacy':
        return start_qemu_nbd(image_path, workdir, pki, exportname, tls=True, priority=TLS_PRIORITY_LEGACY,
                              kind=kind, **kwargs)
    if kind == 'nbdkit-plain':
        return start_nbdkit(image_path, workdir, pki, exportname, tls=False, **kwargs)
    if kind == 'nbdkit-tls':
        return start_nbdkit(image_path, workdir, pki, exportname, tls=True, cert='host', **kwargs)
    if kind == 'nbdkit-tls-ca':
        return start_nbdkit(image_path, workdir, pki, exportname, tls=True, cert='ca', **kwargs)
    if kind == 'nbd-server-plain':
        return start_nbd_server(image_path, workdir, pki, exportname, tls=False, **kwargs)
    if kind == 'nbd-server-tls':
        return start_nbd_server(image_path, workdir, pki, exportname, tls=True, **kwargs)
    raise ValueError('unknown NBD server kind %r (known: %s)' % (kind, ', '.join(ALL_SERVER_KINDS)))


# ---- disk images ---------------------------------------------------------------------------------------------------

DEFAULT_PATTERN = 'DDZDZZ0DDDZZZZD0'


class DiskImage:
    """A generated raw image: ``path``, ``size``, ``sha256``, ``blocks`` (one code per 64 KiB block)."""

    def __init__(self, path, size, blocks, block_size=BLOCK):
        self.path = path
        self.size = size
        self.blocks = blocks
        self.block_size = block_size
        self.sha256 = file_sha256(path)

    @property
    def data_blocks(self):
        return [i for i, c in enumerate(self.blocks) if c == 'D']

    @property
    def hole_blocks(self):
        return [i for i, c in enumerate(self.blocks) if c == 'Z']

    @property
    def zero_blocks(self):
        """Blocks that read as zeros (holes and written zeros)."""
        return [i for i, c in enumerate(self.blocks) if c in 'Z0']

    def refresh(self):
        self.sha256 = file_sha256(self.path)
        return self.sha256

    def __repr__(self):
        return '<DiskImage %s size=%d blocks=%s>' % (self.path, self.size, ''.join(self.blocks))


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            data = f.read(chunk)
            if not data:
                break
            h.update(data)
    return h.hexdigest()


def _random_bytes(rng, n):
    return rng.getrandbits(n * 8).to_bytes(n, 'little') if n else b''


def make_disk_image(path, size, pattern=DEFAULT_PATTERN, seed=0, block_size=BLOCK, tail_data=True):
    """Write a deterministic raw image of ``size`` bytes and return a ``DiskImage``.

    ``pattern`` is cycled over the 64 KiB blocks: 'D' = random data (from ``seed``), 'Z' = hole (never written,
    file extended with truncate), '0' = explicitly written zeros (allocated). A partial last block (when ``size``
    is not a multiple of ``block_size``) is data if ``tail_data``, else it follows the pattern.
    Keep ``size`` a multiple of 512 for qemu-nbd: it exports raw files rounded up to 512 bytes (zero-padded).
    """
    if not pattern or set(pattern) - set('DZ0'):
        raise ValueError("pattern must use only 'D', 'Z', '0'")
    path = os.path.abspath(str(path))
    rng = random.Random(seed)
    nblocks = (size + block_size - 1) // block_size
    blocks = [pattern[i % len(pattern)] for i in range(nblocks)]
    if tail_data and size % block_size:
        blocks[-1] = 'D'
    with open(path, 'wb') as f:
        f.truncate(size)
        for i, code in enumerate(blocks):
            length = min(block_size, size - i * block_size)
            data = _random_bytes(rng, length)  # always drawn, so data depends only on (seed, index)
            if code == 'Z':
                continue
            f.seek(i * block_size)
            f.write(data if code == 'D' else b'\0' * length)
    return DiskImage(path, size, blocks, block_size)


def rewrite_random_blocks(path, count, seed=1, block_size=BLOCK, candidates=None):
    """Overwrite ``count`` distinct pseudo-random 64 KiB blocks in place (deterministic by ``seed``), as guest writes.

    ``candidates`` restricts the choice to given block indices. The file size never changes (a partial last block
    is rewritten only up to EOF). Returns the sorted list of changed block indices.
    """
    size = os.path.getsize(path)
    nblocks = (size + block_size - 1) // block_size
    pool = sorted(candidates) if candidates is not None else list(range(nblocks))
    rng = random.Random(seed)
    chosen = sorted(rng.sample(pool, count))
    with open(path, 'r+b') as f:
        for i in chosen:
            length = min(block_size, size - i * block_size)
            f.seek(i * block_size)
            old = f.read(length)
            new = _random_bytes(rng, length)
            while new == old:
                new = _random_bytes(rng, length)
            f.seek(i * block_size)
            f.write(new)
        f.flush()
        os.fsync(f.fileno())
    return chosen


# ---- raw STARTTLS probe ------------------------------------------------------------------------------------------

_IHAVEOPT = 0x49484156454F5054
_OPT_STARTTLS = 5
_OPT_ABORT = 2
_REP_ACK = 1


def _recvn(sock, n):
    buf = b''
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError('server closed the connection')
        buf += chunk
    return buf


def starttls_probe(port, context, address=LOCALHOST, server_hostname=None, timeout=10.0):
    """Do the fixed-newstyle greeting, NBD_OPT_STARTTLS and a TLS handshake with ``context``; then ABORT.

    Returns ``{'version': ..., 'cipher': ..., 'peer_cert_der': ...}``. Raises ssl.SSLError / EOFError on failure.
    """
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        _magic, opt_magic, hflags = struct.unpack('>QQH', _recvn(sock, 18))
        if opt_magic != _IHAVEOPT or not hflags & 1:
            raise ValueError('not a fixed-newstyle NBD server')
        sock.sendall(struct.pack('>I', hflags & 3))
        sock.sendall(struct.pack('>QII', _IHAVEOPT, _OPT_STARTTLS, 0))
        _rmagic, _opt, rtype, length = struct.unpack('>QIII', _recvn(sock, 20))
        _recvn(sock, length)
        if rtype != _REP_ACK:
            raise ValueError('STARTTLS refused: reply type %#x' % rtype)
        tls = context.wrap_socket(sock, server_hostname=server_hostname)
        try:
            result = {'version': tls.version(), 'cipher': tls.cipher()[0], 'peer_cert_der': tls.getpeercert(True)}
            try:
                tls.sendall(struct.pack('>QII', _IHAVEOPT, _OPT_ABORT, 0))
            except (ssl.SSLError, OSError):
                pass
            return result
        finally:
            tls.close()
    finally:
        sock.close()


class ServerFactory:
    """Start servers into numbered work dirs under ``base_dir`` and stop them all with ``stop_all()``."""

    def __init__(self, base_dir, pki=None):
        self.base_dir = os.path.abspath(str(base_dir))
        self.pki = pki
        self.servers = []

    def __call__(self, kind, image_path, exportname=DEFAULT_EXPORT, **kwargs):
        workdir = os.path.join(self.base_dir, '%s-%d' % (kind, len(self.servers)))
        server = start_server(kind, image_path, workdir, kwargs.pop('pki', self.pki), exportname, **kwargs)
        self.servers.append(server)
        return server

    def stop_all(self):
        errors = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as e:  # pylint: disable=broad-except
                errors.append('%r: %s' % (server, e))
        if errors:
            raise RuntimeError('could not stop NBD servers: ' + '; '.join(errors))
