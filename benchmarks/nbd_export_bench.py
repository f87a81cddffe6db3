# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark vdi_export's NBD engine against nbdcopy and python3-libnbd on the same server.

Run from the repository root with the venv interpreter::

    .venv/bin/python benchmarks/nbd_export_bench.py [--size 2G] [--connections 4] [--server nbdkit-tls[,qemu-tls...]]
                                                   [--runs 3] [--output null|file|both] [--tuning 1M:16,...]

One image (random data with zero runs: holes and written zeros) is made in a temporary directory and served by
the test harness (``tests/unit/helpers/nbd_servers.py``: 127.0.0.1 only, stopped by PID). For every server kind,
each case runs ``--runs`` times, the two peers alternating (and swapping who goes first on every run):

* ``full/null``: our ExtentReader with a no-op sink vs ``nbdcopy -C N -T N --no-extents URI null:``.
* ``full/repository``: ``vdi_export repository=``'s engine (a full qcow2 restore point, its sha256 and the manifest) vs
  nbdcopy to a raw file (target ratio 0.8).
* ``restore/file``: ``vdi_restore dest=``'s engine (chain hashes checked, sparse raw file, fsync) vs ``qemu-img convert``
  of the same point (target 0.8, no target was set by the issue: a reference only).
* ``full/file``: ``export_to_file`` (sparse temp file, fsync, rename) vs ``nbdcopy -C N -T N --no-extents --flush
  URI FILE`` (sparse by zero detection, fsync); the destination file is removed before each run.
* ``scattered/null``: a random 10 % of the 64 KiB blocks (fixed seed) as a CBT bitmap; our ExtentReader over the
  extents ``_cbt.to_extents`` makes of it vs python3-libnbd ``aio_pread`` of the same requests on N handles with
  the same number of requests in flight per handle, data discarded.
* ``scattered/file``: ``export_to_file(changed_blocks=...)`` onto an existing destination (staged, copied, fsynced)
  vs libnbd ``aio_pread`` + ``os.pwrite`` straight into an existing destination + fsync.

* ``xapi-like-1ms`` / ``xapi-like-5ms`` (``-tls``): servers that behave like XenServer's xapi-nbd, nbdkit with
  ``noparallel serialize=requests`` (one request at a time per connection) and the ``delay`` filter (every read
  waits 1 or 5 ms), where throughput comes from connections. Only ``full/null`` runs there, at every count of
  ``--connection-counts`` (``full/null c=N``), the engine vs ``nbdcopy -C N -T N --no-extents --request-size``
  with the engine's request size (the clients compared, not their defaults), on an image of ``--xapi-size``.
  The report adds each peer's scaling: MiB/s at 8 connections over MiB/s at 1.
  nbdcopy hands its threads work in ranges of 128 MiB (``THREAD_WORK_SIZE`` in its sources), so on an image of
  fewer than N ranges some of its N threads (and their connections) never get any: the default ``--xapi-size``
  is the largest count times 128 MiB, and a smaller one is refused, as is a ``--size`` under ``--connections``
  times 128 MiB.

``--no-extents`` keeps nbdcopy from skipping the holes through NBD block status, which our engine does not use:
both sides read every byte. Every peer runs in a child process; our engine's time is measured inside the child,
from opening the first connection to the end (interpreter start-up excluded), nbdcopy's as the wall time of its
process. Peak RSS comes from ``os.wait4`` (ru_maxrss) of each child. Ratios are ours / peer, of the medians.
The exit status is 0 whatever the results; each ratio is printed with PASS or BELOW TARGET.
"""

from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

__metaclass__ = type

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024
# nbdcopy gives each thread 128 MiB of the disk at a time: a smaller disk leaves some of -T N threads idle.
NBDCOPY_THREAD_WORK = 128 * MIB
BLOCK = 64 * 1024
# 64 blocks (4 MiB) per cycle: 56 random data, 4 holes, 4 written zeros -> 12.5 % of the image reads as zeros.
IMAGE_PATTERN = 'D' * 28 + 'Z' * 4 + 'D' * 28 + '0' * 4
TARGETS = {'full': 0.9, 'scattered': 0.8, 'full/repository': 0.8, 'restore': 0.8}
RSS_TARGET_MIB = 200
DEFAULT_SERVERS = 'qemu-plain,qemu-tls,xapi-like-1ms,xapi-like-5ms,xapi-like-1ms-tls,xapi-like-5ms-tls'
XAPI_LIKE = 'xapi-like-'
SCALING_TARGET = 6.0  # 8 connections over 1 on a server that answers one request at a time per connection


def setup_collection_path():
    """Make ``ansible_collections.xenserver.cbt_backup`` importable, as the repository's conftest.py does."""
    parts = ROOT.split(os.sep)
    if parts[-3:] == ['ansible_collections', 'xenserver', 'cbt_backup']:
        base = os.sep.join(parts[:-3]) or os.sep
    else:
        base = os.path.join(ROOT, '.tmp', 'collections')
        link_dir = os.path.join(base, 'ansible_collections', 'xenserver')
        link = os.path.join(link_dir, 'cbt_backup')
        if not os.path.islink(link):
            os.makedirs(link_dir, exist_ok=True)
            os.symlink(ROOT, link)
    if base not in sys.path:
        sys.path.insert(0, base)


def parse_size(text):
    text = text.strip().upper().rstrip('B').rstrip('I')
    factor = 1
    for suffix, value in (('K', 1024), ('M', MIB), ('G', 1024 * MIB), ('T', 1024 * 1024 * MIB)):
        if text.endswith(suffix):
            text, factor = text[:-1], value
            break
    return int(float(text) * factor)


def human_size(value):
    for suffix, unit in (('G', 1024 * MIB), ('M', MIB), ('K', 1024)):
        if value >= unit and value % unit == 0:
            return '%d%s' % (value // unit, suffix)
    return str(value)


def read_status_kib(field):
    """A ``VmXXX`` line of /proc/self/status in KiB (0 if unavailable)."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except (IOError, OSError, ValueError):
        pass
    return 0


# ---- child process: one measured transfer ----------------------------------------------------------------------

def worker_main():
    """Child: read a JSON spec on stdin, do one transfer, print a JSON result on stdout."""
    import resource
    spec = json.loads(sys.stdin.read())
    setup_collection_path()
    result = {'rss_start_kib': read_status_kib('VmRSS')}
    before = resource.getrusage(resource.RUSAGE_SELF)
    if spec['peer'] == 'engine':
        result.update(run_engine(spec))
    else:
        result.update(run_libnbd(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU of the transfer alone (all threads), without the interpreter start-up and imports.
    result['transfer_cpu'] = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result['vmhwm_kib'] = read_status_kib('VmHWM')
    sys.stdout.write(json.dumps(result))


def _engine_target(spec):
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
    kwargs = {'timeout': spec['timeout']} if 'timeout' in spec else {}
    return _export.make_target(spec['info'], tls=spec['tls'], client_cert=spec.get('client_cert'),
                               client_key=spec.get('client_key'), **kwargs)


def _null_sink(offset, view):  # pylint: disable=unused-argument
    return None


def run_engine(spec):
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import reader as reader_mod
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection

    target = _engine_target(spec)
    connections = spec['connections']
    rif = spec['requests_in_flight']
    request_size = spec['request_size']
    if spec['mode'] == 'null':
        started = time.monotonic()
        first = NbdConnection.open(target)
        size = first.export_size
        tls = first.tls_description
        if spec['bitmap'] is None:
            extents = [(0, size)]
        else:
            extents = _cbt.to_extents(_cbt.decode(spec['bitmap']), size)
        reader = reader_mod.ExtentReader(target, connections=connections, requests_in_flight=rif,
                                         request_size=request_size, first_connection=first)
        stats = reader.read(extents, _null_sink)
        seconds = time.monotonic() - started
        return {'bytes': stats.bytes_read, 'seconds': seconds, 'connections': stats.connections,
                'requests': stats.requests, 'tls_session': tls,
                'effective_requests_in_flight': reader.requests_in_flight}
    if request_size != reader_mod.DEFAULT_REQUEST_SIZE:
        # export_to_file does not take a request size: give it a reader class with another default.
        original = _export.ExtentReader

        def make_reader(*args, **kwargs):
            kwargs.setdefault('request_size', request_size)
            return original(*args, **kwargs)
        _export.ExtentReader = make_reader
    started = time.monotonic()
    if spec['mode'] == 'restore':
        from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import restore
        with restore.RestoreSource(spec['repository']) as source:
            result = restore.restore_to_file(source, spec['dest'], force=True)
        seconds = time.monotonic() - started
        size = os.path.getsize(spec['dest'])
        return {'bytes': size, 'seconds': seconds, 'connections': 0, 'bytes_written': result.get('bytes_written')}
    if spec['mode'] == 'repository':
        from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.backup import export_to_repository
        result = export_to_repository(target, spec['dest'], snapshot={'uuid': 'benchmark'}, connections=connections,
                                      requests_in_flight=rif)
        seconds = time.monotonic() - started
        return {'bytes': result['bytes_read'], 'seconds': seconds, 'connections': result['connections'],
                'read_seconds': result['seconds'], 'bytes_written': result['bytes_written']}
    result = _export.export_to_file(target, spec['dest'], changed_blocks=spec['bitmap'], connections=connections,
                                    requests_in_flight=rif)
    seconds = time.monotonic() - started
    return {'bytes': result['bytes_read'], 'seconds': seconds, 'connections': result['connections'],
            'read_seconds': result['seconds'], 'bytes_written': result['bytes_written']}


class _Requests:
    """Requests not yet sent, shared by the libnbd handle threads."""

    def __init__(self, requests):
        self._pending = list(reversed(requests))
        self._lock = threading.Lock()

    def take(self):
        with self._lock:
            return self._pending.pop() if self._pending else None


def _libnbd_handle_loop(handle, uri, work, depth, out_fd, counters, errors):
    import nbd
    inflight = {}
    pool = {}  # length -> free nbd.Buffer objects: reused, as the engine reuses its buffers
    try:
        if not handle.aio_is_ready():
            handle.connect_uri(uri)  # the GIL is released: the handles connect in parallel, as the engine's do
        while True:
            while len(inflight) < depth:
                request = work.take()
                if request is None:
                    break
                offset, length = request
                free = pool.get(length)
                buf = free.pop() if free else nbd.Buffer(length)
                inflight[handle.aio_pread(buf, offset)] = (offset, length, buf)
            if not inflight:
                return
            handle.poll(-1)
            for cookie in [c for c in inflight if handle.aio_command_completed(c)]:
                offset, length, buf = inflight.pop(cookie)
                if out_fd is not None:
                    data = buf.to_bytearray()
                    view = memoryview(data)
                    position = offset
                    while len(view):
                        done = os.pwrite(out_fd, view, position)
                        view = view[done:]
                        position += done
                pool.setdefault(length, []).append(buf)
                counters[0] += length
                counters[1] += 1
    except BaseException as exc:  # pylint: disable=broad-except
        errors.append(exc)


def run_libnbd(spec):
    import nbd
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._extents import split

    started = time.monotonic()
    handles = []
    for index in range(spec['connections']):
        handle = nbd.NBD()
        handle.set_handle_name('bench%d' % index)
        handle.set_uri_allow_local_file(True)
        if hasattr(handle, 'set_pread_initialize'):
            handle.set_pread_initialize(False)  # our engine does not zero its buffers either
        handles.append(handle)
    handles[0].connect_uri(spec['uri'])  # like the engine: one connection learns the size, then the others open
    size = handles[0].get_size()
    if spec['bitmap'] is None:
        extents = [(0, size)]
    else:
        extents = _cbt.to_extents(_cbt.decode(spec['bitmap']), size)
    requests = list(split(extents, spec['request_size']))
    work = _Requests(requests)
    out_fd = os.open(spec['dest'], os.O_WRONLY) if spec['mode'] == 'file' else None
    errors = []
    counters = [[0, 0] for _handle in handles]
    threads = [threading.Thread(target=_libnbd_handle_loop,
                                args=(handle, spec['uri'], work, spec['requests_in_flight'], out_fd, counters[index],
                                      errors))
               for index, handle in enumerate(handles)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if out_fd is not None:
            os.fsync(out_fd)
    finally:
        if out_fd is not None:
            os.close(out_fd)
    for handle in handles:
        if handle.aio_is_ready():
            handle.shutdown()
    seconds = time.monotonic() - started
    if errors:
        raise errors[0]
    return {'bytes': sum(c[0] for c in counters), 'requests': sum(c[1] for c in counters), 'seconds': seconds,
            'connections': len(handles), 'tls_negotiated': handles[0].get_tls_negotiated() if spec['tls'] else False}


# ---- parent: orchestration ----------------------------------------------------------------------------------------

def run_child(argv, stdin_text=None):
    """Run ``argv``; return (exit code, stdout, stderr, wall seconds, peak RSS in KiB, CPU seconds) from wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                                stdout=out, stderr=err, close_fds=True)
        if stdin_text is not None:
            proc.stdin.write(stdin_text.encode('utf-8'))
            proc.stdin.close()
        pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status) if pid == proc.pid else -1
        out.seek(0)
        err.seek(0)
        return (proc.returncode, out.read().decode('utf-8', 'replace'), err.read().decode('utf-8', 'replace'),
                wall, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


def measure_worker(spec):
    code, out, err, wall, maxrss, cpu = run_child([sys.executable, os.path.abspath(__file__), '--worker'],
                                                  json.dumps(spec))
    if code != 0:
        raise RuntimeError('%s worker failed (%d): %s' % (spec['peer'], code, err.strip()[-2000:]))
    result = json.loads(out)
    result.update(wall=wall, maxrss_kib=maxrss, cpu=cpu)
    return result


def measure_qemu_img_convert(point_file, dest):
    """qemu-img convert of a restore point (following its backing chain) to a raw file, with fsync."""
    argv = ['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', '-t', 'none', point_file, dest]
    code, out, err, wall, maxrss, cpu = run_child(argv)
    if code != 0:
        raise RuntimeError('qemu-img convert failed: %s%s' % (out, err))
    return {'seconds': wall, 'maxrss_kib': maxrss, 'cpu': cpu, 'argv': argv}


def measure_nbdcopy(server, dest, connections, extra_args):
    argv = ['nbdcopy', '-C', str(connections), '-T', str(connections), '--no-extents'] + list(extra_args)
    if dest == 'null:':
        argv += [server.uri(), 'null:']
    else:
        argv += ['--flush', server.uri(), dest]
    code, out, err, wall, maxrss, cpu = run_child(argv)
    if code != 0:
        raise RuntimeError('%s failed (%d): %s %s' % (' '.join(argv), code, out, err))
    return {'seconds': wall, 'wall': wall, 'maxrss_kib': maxrss, 'cpu': cpu, 'argv': argv}


def remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def make_sparse_file(path, size):
    with open(path, 'wb') as handle:
        handle.truncate(size)


class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.results = []   # dicts: server, case, peer, runs (MiB/s), rss (KiB), extra
        self.scaling = []   # dicts: server, peer, scaling_8_over_1

    def record(self, server_kind, case, peer, mib_s, rss_kib, extra=None):
        for row in self.results:
            if (row['server'], row['case'], row['peer']) == (server_kind, case, peer):
                break
        else:
            row = {'server': server_kind, 'case': case, 'peer': peer, 'runs': [], 'rss_kib': [], 'extra': []}
            self.results.append(row)
        row['runs'].append(mib_s)
        row['rss_kib'].append(rss_kib)
        row['extra'].append(extra or {})
        return row

    def cases(self, server, image_size, bitmap):
        """Yield (case, [(peer label, callable returning (bytes, seconds, rss KiB, CPU s, extra))])."""
        args = self.args
        outputs = ['null', 'file'] if args.output == 'both' else [args.output]
        common = {'info': server.nbd_info(), 'tls': server.tls, 'client_cert': server.client_cert,
                  'client_key': server.client_key, 'uri': server.uri(), 'connections': args.connections}
        default_tuning = (args.request_size, args.requests_in_flight)
        tunings = [default_tuning] + [t for t in args.tuning if t != default_tuning]
        out_file = os.path.join(self.workdir, 'out.raw')
        inc_dest = os.path.join(self.workdir, 'incremental.raw')

        def engine(mode, bitmap_value, request_size, rif, dest=None, prepare=None, connections=None):
            def run():
                if prepare:
                    prepare()
                spec = dict(common, peer='engine', mode=mode, bitmap=bitmap_value, request_size=request_size,
                            requests_in_flight=rif, dest=dest)
                if connections:
                    spec['connections'] = connections
                result = measure_worker(spec)
                return result['bytes'], result['seconds'], result['maxrss_kib'], result['transfer_cpu'], result
            return run

        def libnbd(mode, dest=None, prepare=None):
            def run():
                if prepare:
                    prepare()
                spec = dict(common, peer='libnbd', mode=mode, bitmap=bitmap, request_size=args.request_size,
                            requests_in_flight=args.requests_in_flight, dest=dest)
                result = measure_worker(spec)
                return result['bytes'], result['seconds'], result['maxrss_kib'], result['transfer_cpu'], result
            return run

        def nbdcopy(dest, prepare=None, connections=None, extra=()):
            def run():
                if prepare:
                    prepare()
                result = measure_nbdcopy(server, dest, connections or args.connections, list(args.nbdcopy_args) + list(extra))
                if dest != 'null:':
                    remove(dest)
                return image_size, result['seconds'], result['maxrss_kib'], result['cpu'], {'argv': ' '.join(result['argv'])}
            return run

        def fresh_out():
            remove(out_file)
            os.sync()

        def fresh_inc():
            if not os.path.exists(inc_dest) or os.path.getsize(inc_dest) != image_size:
                make_sparse_file(inc_dest, image_size)
            os.sync()

        def label(request_size, rif):
            return 'engine rs=%s rif=%d' % (human_size(request_size), rif)

        if server.kind.startswith(XAPI_LIKE):
            for count in args.connection_counts:
                yield 'full/null c=%d' % count, [
                    (label(args.request_size, args.requests_in_flight),
                     engine('null', None, args.request_size, args.requests_in_flight, connections=count)),
                    ('nbdcopy', nbdcopy('null:', connections=count,
                                        extra=['--request-size=%d' % args.request_size]))]
            return
        if not args.skip_full:
            if 'null' in outputs:
                peers = [(label(rs, rif), engine('null', None, rs, rif)) for rs, rif in tunings]
                if args.libnbd_full:
                    peers.append(('libnbd aio', libnbd_full(common, args)))
                peers.append(('nbdcopy', nbdcopy('null:')))
                yield 'full/null', peers
            if 'file' in outputs:
                yield 'full/file', [(label(args.request_size, args.requests_in_flight),
                                     engine('file', None, args.request_size, args.requests_in_flight, out_file,
                                            fresh_out)),
                                    ('nbdcopy', nbdcopy(out_file, fresh_out))]
            if 'file' in outputs:
                # A full backup into a repository (qcow2 point, sha256, manifest) vs nbdcopy to a raw file.
                repo_dir = os.path.join(self.workdir, 'repository')

                def fresh_repo():
                    shutil.rmtree(repo_dir, ignore_errors=True)
                    os.sync()
                yield 'full/repository', [(label(args.request_size, args.requests_in_flight),
                                           engine('repository', None, args.request_size, args.requests_in_flight,
                                                  repo_dir, fresh_repo)),
                                          ('nbdcopy', nbdcopy(out_file, fresh_out))]

                # Restoring that point to a raw file vs qemu-img convert of the same point.
                def restore_engine():
                    fresh_out()
                    spec = dict(common, peer='engine', mode='restore', repository=repo_dir, dest=out_file,
                                bitmap=None, request_size=args.request_size, requests_in_flight=args.requests_in_flight)
                    result = measure_worker(spec)
                    remove(out_file)
                    return result['bytes'], result['seconds'], result['maxrss_kib'], result['transfer_cpu'], result

                def restore_qemu():
                    fresh_out()
                    with open(os.path.join(repo_dir, 'manifest.json')) as handle:
                        newest = json.load(handle)['points'][-1]['file']
                    result = measure_qemu_img_convert(os.path.join(repo_dir, newest), out_file)
                    remove(out_file)
                    return image_size, result['seconds'], result['maxrss_kib'], result['cpu'], {'argv': ' '.join(result['argv'])}
                yield 'restore/file', [('engine restore', restore_engine), ('qemu-img convert', restore_qemu)]
        if not args.skip_scattered:
            if 'null' in outputs:
                peers = [(label(rs, rif), engine('null', bitmap, rs, rif)) for rs, rif in tunings]
                peers.append(('libnbd aio', libnbd('null')))
                yield 'scattered/null', peers
            if 'file' in outputs:
                yield 'scattered/file', [(label(args.request_size, args.requests_in_flight),
                                          engine('file', bitmap, args.request_size, args.requests_in_flight, inc_dest,
                                                 fresh_inc)),
                                         ('libnbd aio', libnbd('file', inc_dest, fresh_inc))]

    def run_server(self, kind, image, pki, bitmap):
        server = start_bench_server(kind, image.path, os.path.join(self.workdir, 'server-' + kind), pki)
        try:
            print('== %s (pid %d, %s:%d, tls=%s)' % (kind, server.pid, server.address, server.port, server.tls))
            sys.stdout.flush()
            cases = list(self.cases(server, image.size, bitmap))
            for run in range(self.args.runs):
                for case, peers in cases:
                    order = peers if run % 2 == 0 else list(reversed(peers))
                    for peer, func in order:
                        load = os.getloadavg()[0]
                        nbytes, seconds, rss, cpu, extra = func()
                        mib_s = nbytes / MIB / seconds
                        cpu_per_gib = cpu / (nbytes / (1024.0 * MIB))
                        extra = dict(extra, loadavg=load, cpu=cpu, cpu_per_gib=cpu_per_gib, bytes=nbytes)
                        self.record(kind, case, peer, mib_s, rss, extra)
                        print('  run %d %-15s %-22s %8.1f MiB/s  %6.2f s  CPU %5.2f s/GiB  RSS %5.1f MiB  load %.1f'
                              % (run + 1, case, peer, mib_s, seconds, cpu_per_gib, rss / 1024.0, load))
                        sys.stdout.flush()
        finally:
            server.stop()

    def report(self):
        """Print the table; ratio = median(ours) / median(peer), paired = median of the per-run ratios."""
        print()
        header = ('server', 'case', 'peer', 'MiB/s per run', 'median', 'CPU s/GiB', 'RSS MiB', 'ratio', 'paired',
                  'verdict')
        line = '%-13s %-15s %-22s %-20s %7s %9s %7s %6s %6s  %s'
        print(line % header)
        for row in self.results:
            row['median'] = statistics.median(row['runs'])
            row['rss_max_mib'] = max(row['rss_kib']) / 1024.0
            row['cpu_per_gib'] = statistics.median(extra['cpu_per_gib'] for extra in row['extra'])
        for row in self.results:
            peer_row = self._peer_of(row)
            ratio = paired = verdict = ''
            if peer_row is not None and row['peer'].startswith('engine'):
                value = row['median'] / peer_row['median']
                pairs = [ours / theirs for ours, theirs in zip(row['runs'], peer_row['runs'])]
                target = TARGETS.get(row['case'], TARGETS[row['case'].split('/')[0]])
                ratio = '%.2f' % value
                paired = '%.2f' % statistics.median(pairs)
                verdict = '%s (>= %.2f vs %s)' % ('PASS' if value >= target else 'BELOW TARGET', target, peer_row['peer'])
                row.update(ratio=value, paired_ratio=statistics.median(pairs), ratio_peer=peer_row['peer'])
            if row['peer'].startswith('engine'):
                rss_ok = row['rss_max_mib'] < RSS_TARGET_MIB
                verdict += '%sRSS %s' % ('; ' if verdict else '', 'PASS' if rss_ok else 'BELOW TARGET')
            print(line % (row['server'], row['case'], row['peer'], ' '.join('%.0f' % v for v in row['runs']),
                          '%.0f' % row['median'], '%.2f' % row['cpu_per_gib'], '%.0f' % row['rss_max_mib'], ratio,
                          paired, verdict))
        self.report_scaling()
        print()
        print('targets: ratio >= %.1f full, >= %.1f scattered (engine / reference peer, medians); engine peak RSS < %d '
              'MiB. CPU s/GiB: client CPU (user + sys, all threads) per GiB read; the engine and libnbd rows count '
              'the transfer only, nbdcopy its whole process.' % (TARGETS['full'], TARGETS['scattered'], RSS_TARGET_MIB))

    def report_scaling(self):
        """Per xapi-like server and peer: MiB/s at 8 connections over MiB/s at 1 (target SCALING_TARGET)."""
        medians = {}
        for row in self.results:
            if row['case'].startswith('full/null c='):
                count = int(row['case'].split('=')[1])
                medians.setdefault((row['server'], row['peer']), {})[count] = row['median']
        for (server, peer), by_count in sorted(medians.items()):
            if 1 in by_count and 8 in by_count:
                scaling = by_count[8] / by_count[1]
                verdict = ''
                if peer.startswith('engine'):
                    verdict = '  %s (>= %.0fx)' % ('PASS' if scaling >= SCALING_TARGET else 'BELOW TARGET', SCALING_TARGET)
                self.scaling.append({'server': server, 'peer': peer, 'scaling_8_over_1': scaling})
                print('scaling %-18s %-22s 8 connections / 1: %.2fx%s' % (server, peer, scaling, verdict))

    def _peer_of(self, row):
        if row['case'].startswith('restore'):
            wanted = 'qemu-img convert'
        else:
            wanted = 'nbdcopy' if row['case'].startswith('full') else 'libnbd aio'
        for other in self.results:
            if (other['server'], other['case'], other['peer']) == (row['server'], row['case'], wanted):
                return other
        return None


def start_bench_server(kind, image_path, workdir, pki):
    """A harness server, or an xapi-nbd-like one: ``xapi-like-<delay>[-tls]`` (module docstring)."""
    from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import start_nbdkit, start_server
    if not kind.startswith(XAPI_LIKE):
        return start_server(kind, image_path, workdir, pki)
    delay = kind[len(XAPI_LIKE):].split('-')[0]
    return start_nbdkit(image_path, workdir, pki, tls=kind.endswith('-tls'), kind=kind,
                        extra_args=['--filter=noparallel', '--filter=delay'],
                        params=['serialize=requests', 'delay-read=%s' % delay])


def libnbd_full(common, args):
    def run():
        spec = dict(common, peer='libnbd', mode='null', bitmap=None, request_size=args.request_size,
                    requests_in_flight=args.requests_in_flight, dest=None)
        result = measure_worker(spec)
        return result['bytes'], result['seconds'], result['maxrss_kib'], result['transfer_cpu'], result
    return run


def parse_tuning(text):
    tunings = []
    for item in filter(None, (part.strip() for part in text.split(','))):
        size, rif = item.split(':')
        tunings.append((parse_size(size), int(rif)))
    return tunings


def machine_summary():
    lines = []
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            models = [line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name')]
        lines.append('cpu: %d x %s' % (len(models), models[0] if models else '?'))
    except (IOError, OSError):
        pass
    lines.append('os.cpu_count(): %s, python %s' % (os.cpu_count(), sys.version.split()[0]))
    for argv in (['nbdcopy', '--version'], ['nbdkit', '--version'], ['qemu-nbd', '--version']):
        try:
            out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False).stdout
            lines.append(out.decode('utf-8', 'replace').splitlines()[0])
        except OSError:
            lines.append('%s: not found' % argv[0])
    return lines


def check_room_for_nbdcopy(parser, option, size, connections):
    """Refuse an image on which some of nbdcopy's ``connections`` threads would get no 128 MiB range to read."""
    needed = connections * NBDCOPY_THREAD_WORK
    if size < needed:
        parser.error('%s must be at least %s (%d connections x 128M): nbdcopy hands each thread 128 MiB at a time, '
                     'so on a smaller image some of its connections would stay idle'
                     % (option, human_size(needed), connections))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--size', default='2G', help='export size (default 2G)')
    parser.add_argument('--connections', type=int, default=4, help='NBD connections for every peer (default 4)')
    parser.add_argument('--server', default=DEFAULT_SERVERS,
                        help='comma-separated harness server kinds (default %s)' % DEFAULT_SERVERS)
    parser.add_argument('--runs', type=int, default=5, help='runs per peer and case (default 5)')
    parser.add_argument('--output', choices=('null', 'file', 'both'), default='both',
                        help='discard the data (null), write a file (file) or both (default)')
    parser.add_argument('--request-size', default='1M', help="engine (and libnbd peer) request size, default 1M (the engine's)")
    parser.add_argument('--requests-in-flight', type=int, default=8,
                        help="engine (and libnbd peer) requests in flight per connection, default 8 (the engine's)")
    parser.add_argument('--connection-counts', default='1,4,8,16',
                        help='xapi-like servers: the connection counts to compare (default 1,4,8,16)')
    parser.add_argument('--xapi-size', default='',
                        help='xapi-like servers: export size (default: the largest connection count x 128M, so '
                             'every nbdcopy thread gets work)')
    parser.add_argument('--tuning', default='', help='extra engine variants for the null cases, e.g. 1M:8,256K:16')
    parser.add_argument('--changed', type=float, default=0.10, help='scattered case: fraction of 64 KiB blocks')
    parser.add_argument('--seed', type=int, default=20240601, help='image and scattered-block seed')
    parser.add_argument('--nbdcopy-args', default='', help='extra nbdcopy arguments (space separated)')
    parser.add_argument('--libnbd-full', action='store_true', help='also run the libnbd aio peer on the full case')
    parser.add_argument('--skip-full', action='store_true')
    parser.add_argument('--skip-scattered', action='store_true')
    parser.add_argument('--workdir', help='directory for the image and outputs (default: a new temp dir)')
    parser.add_argument('--keep', action='store_true', help='keep the work directory')
    parser.add_argument('--json', help='write the raw results to this file')
    args = parser.parse_args(argv)
    args.request_size = parse_size(args.request_size)
    args.tuning = parse_tuning(args.tuning)
    args.connection_counts = [int(c) for c in args.connection_counts.split(',') if c.strip()]
    args.nbdcopy_args = args.nbdcopy_args.split()
    most = max(args.connection_counts or [1])
    args.xapi_size = parse_size(args.xapi_size) if args.xapi_size else most * NBDCOPY_THREAD_WORK
    check_room_for_nbdcopy(parser, '--xapi-size', args.xapi_size, most)
    size = parse_size(args.size)
    if size % 512:
        parser.error('--size must be a multiple of 512 (qemu-nbd rounds exports up to 512 bytes)')
    check_room_for_nbdcopy(parser, '--size', size, args.connections)
    if shutil.which('nbdcopy') is None:
        parser.error('nbdcopy not found (Debian package libnbd-bin)')

    setup_collection_path()
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._extents import total_length
    from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image
    from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.pki import make_pki

    workdir = args.workdir or tempfile.mkdtemp(prefix='nbd-export-bench.')
    os.makedirs(workdir, exist_ok=True)
    try:
        for line in machine_summary():
            print('# ' + line)
        started = time.monotonic()
        image = make_disk_image(os.path.join(workdir, 'disk.raw'), size, pattern=IMAGE_PATTERN, seed=args.seed)
        zero = len(image.zero_blocks) * BLOCK
        print('# image %s: %s, %.1f %% zero blocks (holes + written zeros), made in %.1f s'
              % (image.path, human_size(size), 100.0 * zero / size, time.monotonic() - started))
        nblocks = _cbt.block_count(size)
        chosen = random.Random(args.seed + 1).sample(range(nblocks), int(round(nblocks * args.changed)))
        bitmap = _cbt.encode(chosen, size)
        extents = _cbt.to_extents(_cbt.decode(bitmap), size)
        scattered_bytes = total_length(extents)
        print('# scattered: %d of %d blocks (%.1f %%), %d extents after coalescing, %.1f MiB'
              % (len(chosen), nblocks, 100.0 * len(chosen) / nblocks, len(extents), scattered_bytes / MIB))
        print('# connections %d, engine request size %s, requests in flight %d; nbdcopy -C %d -T %d --no-extents %s'
              % (args.connections, human_size(args.request_size), args.requests_in_flight, args.connections,
                 args.connections, ' '.join(args.nbdcopy_args)))
        sys.stdout.flush()
        pki = make_pki(os.path.join(workdir, 'pki'))
        bench = Bench(args, workdir)
        xapi_image = None
        for kind in filter(None, (k.strip() for k in args.server.split(','))):
            if kind.startswith(XAPI_LIKE):
                if xapi_image is None:
                    xapi_image = make_disk_image(os.path.join(workdir, 'xapi-like.raw'), args.xapi_size,
                                                 pattern=IMAGE_PATTERN, seed=args.seed)
                    print('# xapi-like image: %s (nbdcopy: %d work ranges of 128M for up to %d threads)'
                          % (human_size(args.xapi_size), args.xapi_size // NBDCOPY_THREAD_WORK, most))
                    sys.stdout.flush()
                bench.run_server(kind, xapi_image, pki, bitmap)
            else:
                bench.run_server(kind, image, pki, bitmap)
        bench.report()
        if args.json:
            with open(args.json, 'w') as handle:
                json.dump({'size': size, 'connections': args.connections, 'runs': args.runs, 'scaling': bench.scaling,
                           'machine': machine_summary(), 'results': bench.results}, handle, indent=1)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    if sys.argv[1:] == ['--worker']:
        worker_main()
    else:
        sys.exit(main())
