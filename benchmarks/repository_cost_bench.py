# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a retention merge and a verification cost, against what they fold and what they read.

Run from the repository root with the venv interpreter::

    .venv/bin/python benchmarks/repository_cost_bench.py [--size 512M] [--data 0.5] [--incrementals 4]
                                                         [--changed 2M] [--keep-last 2] [--runs 5]

A raw image (``--data`` of it random data, the rest holes) is served by qemu-nbd (test harness, 127.0.0.1, stopped
by PID) and exported into a repository: a full, then ``--incrementals`` incrementals of ``--changed`` bytes of
rewritten 64 KiB blocks each.  On fresh copies of that repository, alternating, ``--runs`` times:

* ``prune/fold``: ``backup_prune keep_last: N``'s engine (retention.prune): the dropped full takes the kept point's
  clusters in place;
* ``prune/rewrite``: the merge the collection did before (the kept point rewritten as a whole standalone image);
* ``qemu-img commit``: the peer, committing the same overlays into a copy of the full (``-d``, then a rename, as
  the fold does).

``full/allocated`` (``--full-size``, default 1 GiB, ``--allocated`` of it written by the guest in 8 regions) runs in
the XenServer lab: a full ``vdi_export`` into a repository with ``allocation_map: auto`` (the VHD allocation table
first, then NBD reads of the listed 2 MiB blocks) and with ``allocation_map: none`` (every byte), alternating.

``compress/*`` (``--compress-size``, default 256 MiB of a guest-like mix: 70 % log text, 15 % written zeros, 15 %
random) is a full export from qemu-nbd into a repository with ``compress: none``, ``zlib`` and ``zstd``, alternating:
seconds, CPU and the point file's size against the raw data.

Bytes written are what each child wrote through system calls (``wchar`` of ``/proc/self/io``, manifest saves
included); for qemu-img, ``wchar`` is sampled from ``/proc/PID/io`` until it exits.  ``verify`` runs backup_verify's
engine on the repository and reports ``rchar`` over the size of the files.  Targets (issue "costs that follow
the change"): prune writes <= 4 x the folded points' data + 16 MiB on a disk holding >= 20 x that; verify reads
<= 1.05 x the files; zstd points of a text-heavy disk <= 40 % of the raw data at >= 0.7 x the uncompressed export's
throughput; the full of a 10 % allocated disk reads <= 1.1 x the allocated bytes rounded up to 2 MiB
blocks.  The exit status is 0 whatever the results; each ratio is printed with PASS or BELOW TARGET.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbd_export_bench import ROOT, human_size, machine_summary, parse_size, setup_collection_path  # noqa: E402

__metaclass__ = type

MIB = 1024 * 1024
BLOCK = 64 * 1024

CHILD = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import inspection, retention, store
task, repo_dir, keep = sys.argv[2], sys.argv[3], int(sys.argv[4])


def io():
    with open('/proc/self/io') as handle:
        return dict((k, int(v)) for k, v in (line.split(': ') for line in handle))


start_io, start, cpu = io(), time.monotonic(), time.process_time()
out = {}
if task == 'verify':
    out['ok'] = inspection.verify_repository(repo_dir)['ok']
else:
    with store.Repository(repo_dir, write=True) as repo:
        if task == 'rewrite':
            real = retention.merge_method
            retention.merge_method = lambda points, chain: 'rewrite'
        result = retention.prune(repo, {'keep_last': keep})
        out['bytes_written'] = result['bytes_written']
        out['methods'] = sorted(set(m['method'] for m in result['merged'].values()))
end_io = io()
out.update(seconds=time.monotonic() - start, cpu=time.process_time() - cpu,
           wchar=end_io['wchar'] - start_io['wchar'], rchar=end_io['rchar'] - start_io['rchar'])
print(json.dumps(out))
'''


def collections_root():
    setup_collection_path()
    return next(p for p in sys.path if os.path.isdir(os.path.join(p, 'ansible_collections')))


def build_repository(work, size, data_ratio, incrementals, changed):
    """The repository (a full and the incrementals) and the bytes of data each incremental stored."""
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup, store
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
    from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
        ServerFactory, make_disk_image, rewrite_random_blocks,
    )
    data_blocks = max(1, int(round(data_ratio * 16)))
    image = make_disk_image(os.path.join(work, 'disk.raw'), size, pattern='D' * data_blocks + 'Z' * (16 - data_blocks))
    factory = ServerFactory(os.path.join(work, 'servers'))
    repo_dir = os.path.join(work, 'pristine')
    try:
        server = factory('qemu-plain', image.path)
        target = _export.make_target(server.nbd_info(), tls=False, timeout=60)
        backup.export_to_repository(target, repo_dir, snapshot={'uuid': 'snap-0'})
        for number in range(1, incrementals + 1):
            blocks = rewrite_random_blocks(image.path, changed // BLOCK, seed=number)
            target = _export.make_target(server.nbd_info(), tls=False, timeout=60)
            backup.export_to_repository(target, repo_dir, changed_blocks=_cbt.encode(blocks, size),
                                        snapshot={'uuid': 'snap-%d' % number}, base_uuid='snap-%d' % (number - 1))
    finally:
        factory.stop_all()
    with store.Repository(repo_dir) as repo:
        points = list(repo.points)
    return repo_dir, points


def run_ours(task, repo_dir, keep):
    proc = subprocess.run([sys.executable, '-c', CHILD, collections_root(), task, repo_dir, str(keep)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode:
        raise RuntimeError('%s failed: %s' % (task, proc.stderr.decode()[-2000:]))
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def run_qemu_commit(repo_dir, points, keep):
    """qemu-img commit of the overlays the prune folds into a copy of the full, then the rename."""
    folded = points[:len(points) - keep + 1]  # the full, the dropped incrementals and the oldest kept point
    top = os.path.join(repo_dir, folded[-1]['file'])
    base = os.path.join(repo_dir, folded[0]['file'])
    samples = []
    start = time.monotonic()
    proc = subprocess.Popen(['qemu-img', 'commit', '-q', '-d', '-b', base, top])

    def sample():
        path = '/proc/%d/io' % proc.pid
        while proc.poll() is None:
            try:
                with open(path) as handle:
                    samples.append(dict((k, int(v)) for k, v in (line.split(': ') for line in handle)))
            except (IOError, OSError, ValueError):
                pass
            time.sleep(0.002)
    watcher = threading.Thread(target=sample)
    watcher.start()
    pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = status
    watcher.join()
    seconds = time.monotonic() - start
    if status:
        raise RuntimeError('qemu-img commit failed with status %d' % status)
    os.rename(base, top)
    return {'seconds': seconds, 'cpu': usage.ru_utime + usage.ru_stime,
            'wchar': samples[-1]['wchar'] if samples else None}


def make_guest_mix(path, size):
    """A raw image of log text (70 %), written zeros (15 %) and random data (15 %), in 64 KiB blocks."""
    rnd = random.Random(7)
    with open(path, 'wb') as handle:
        for index in range(size // BLOCK):
            pick = index % 20
            if pick < 14:
                line = b'2026-12-03T02:%02d:%02dZ web-%d GET /api/v1/items/%d 200 %d ms\n' % (
                    index % 60, pick, index % 7, rnd.randint(1, 10 ** 6), rnd.randint(1, 900))
                handle.write((line * (BLOCK // len(line) + 1))[:BLOCK])
            elif pick < 17:
                handle.write(bytes(BLOCK))
            else:
                handle.write(rnd.randbytes(BLOCK))


def bench_compression(work, size, runs):
    """Full exports of a guest-like image with each compression: {name: [(seconds, cpu, file size)]}."""
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import backup
    from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import ServerFactory
    image = os.path.join(work, 'mix.raw')
    make_guest_mix(image, size)
    factory = ServerFactory(os.path.join(work, 'servers-mix'))
    rows = dict((name, []) for name in ('none', 'zlib', 'zstd'))
    try:
        server = factory('qemu-plain', image)
        for run in range(runs):
            order = ['none', 'zlib', 'zstd'] if run % 2 == 0 else ['zstd', 'zlib', 'none']
            for name in order:
                repo = os.path.join(work, 'mix-%s' % name)
                shutil.rmtree(repo, ignore_errors=True)
                target = _export.make_target(server.nbd_info(), tls=False, timeout=60)
                started, cpu = time.monotonic(), time.process_time()
                result = backup.export_to_repository(target, repo, snapshot={'uuid': 'mix'},
                                                     compression=None if name == 'none' else name)
                rows[name].append((time.monotonic() - started, time.process_time() - cpu,
                                   result['point']['file_size'] if 'point' in result else None))
    finally:
        factory.stop_all()
    return rows


def bench_allocated_fulls(work, size, allocated_ratio, runs):
    """Full exports from the lab with and without the allocation map: rows of (case, seconds, bytes_read)."""
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiClient
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
    from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import start_lab, xenlab
    lab = start_lab(os.path.join(work, 'lab'))
    rows = {'auto': [], 'none': []}
    try:
        info = lab.info
        with XenApiClient(info['url'], username=info['username'], password=info['password'], ca_path=info['ca_cert'],
                          timeout=60) as client:
            _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
            sr = client.call('SR.get_by_name_label', 'Local storage')[0]
            ref, record = _vdi_import.create_vdi(client, sr, 'bench-thin', size)
            region = int(size * allocated_ratio) // 8
            for number in range(8):
                lab.write(record['uuid'], number * (size // 8) + 12345 * 512 % (size // 8 - region), region, seed=number)
            snap = client.call('VDI.get_uuid', client.call('VDI.snapshot', ref, {}))
            blocks = set()
            for number in range(8):
                start = number * (size // 8) + 12345 * 512 % (size // 8 - region)
                blocks.update(range(start // (2 * MIB), (start + region - 1) // (2 * MIB) + 1))
            allocated = len(blocks) * 2 * MIB
            for run in range(runs):
                for mode in (('auto', 'none') if run % 2 == 0 else ('none', 'auto')):
                    repo = os.path.join(work, 'full-%s' % mode)
                    shutil.rmtree(repo, ignore_errors=True)
                    params = dict(snapshot=snap, base=None, nbd_network=None, repository=repo, dest=None, tls=True,
                                  tls_ca_path=None, timeout=60, min_rate_mib_s=1.0, connections=4, requests_in_flight=8,
                                  retries=2, on_broken_chain='fail', run=None, allocation_map=mode)
                    started = time.monotonic()
                    result = _vdi_export.export_snapshot(client, params)
                    rows[mode].append((time.monotonic() - started, result['bytes_read'], result['allocation_source']))
    finally:
        xenlab('stop', '--dir', lab.dir, check=False)
    return rows, allocated


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--size', type=parse_size, default=512 * MIB)
    parser.add_argument('--data', type=float, default=0.5, help='fraction of the disk holding data')
    parser.add_argument('--incrementals', type=int, default=4)
    parser.add_argument('--changed', type=parse_size, default=2 * MIB, help='bytes rewritten per incremental')
    parser.add_argument('--keep-last', type=int, default=2)
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--full-size', type=parse_size, default=1024 * MIB, help='disk of the allocation-map case')
    parser.add_argument('--allocated', type=float, default=0.1, help='fraction of that disk the guest wrote')
    parser.add_argument('--no-lab', action='store_true', help='skip the allocation-map case (it starts the lab)')
    parser.add_argument('--compress-size', type=parse_size, default=256 * MIB, help='image of the compression case')
    args = parser.parse_args(argv)
    if shutil.which('qemu-img') is None or shutil.which('qemu-nbd') is None:
        sys.exit('qemu-img and qemu-nbd are needed (apt install qemu-utils)')
    setup_collection_path()
    print('\n'.join(machine_summary()))
    work = tempfile.mkdtemp(prefix='repo-cost-', dir=os.path.join(ROOT, '.tmp') if os.path.isdir(os.path.join(ROOT, '.tmp')) else None)
    try:
        repo_dir, points = build_repository(work, args.size, args.data, args.incrementals, args.changed)
        dropped = points[:len(points) - args.keep_last]
        folded = sum(p['bytes'] for p in dropped[1:]) + points[len(dropped)]['bytes']  # incrementals + kept point
        held = points[0]['bytes']
        files = sum(p['file_size'] for p in points)
        print('disk %s, full holds %s, %d incrementals of %s, keep_last %d: the prune folds %s of data (disk/folded %.0fx)'
              % (human_size(args.size), human_size(held), args.incrementals, human_size(args.changed), args.keep_last,
                 human_size(folded), held / float(folded)))
        results = {'prune/fold': [], 'prune/rewrite': [], 'qemu-img commit': [], 'verify': []}
        for run in range(args.runs):
            order = ['prune/fold', 'prune/rewrite', 'qemu-img commit']
            if run % 2:
                order.reverse()
            for name in order:
                copy = os.path.join(work, 'run')
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(repo_dir, copy)
                if name == 'qemu-img commit':
                    results[name].append(run_qemu_commit(copy, points, args.keep_last))
                else:
                    results[name].append(run_ours('fold' if name == 'prune/fold' else 'rewrite', copy, args.keep_last))
            results['verify'].append(run_ours('verify', repo_dir, 0))
        print('%-16s %10s %10s %12s %14s' % ('case', 'seconds', 'CPU s', 'written', 'written/folded'))
        for name in ('prune/fold', 'prune/rewrite', 'qemu-img commit'):
            rows = results[name]
            sampled = [r['wchar'] for r in rows if r['wchar'] is not None]
            written = statistics.median(sampled) if sampled else None
            print('%-16s %10.3f %10.3f %12s %14s' % (name, statistics.median(r['seconds'] for r in rows),
                                                     statistics.median(r['cpu'] for r in rows),
                                                     human_size(int(written)) if written is not None else 'n/a',
                                                     '%.2f' % (written / folded) if written is not None else 'n/a'))
        fold_written = statistics.median(r['wchar'] for r in results['prune/fold'])
        limit = 4 * folded + 16 * MIB
        print('target prune/fold: written %s <= 4 x folded + 16 MiB = %s (disk holds >= 20 x folded: %s): %s'
              % (human_size(int(fold_written)), human_size(limit), 'yes' if held >= 20 * folded else 'NO',
                 'PASS' if fold_written <= limit else 'BELOW TARGET'))
        read = statistics.median(r['rchar'] for r in results['verify'])
        print('verify: read %s of %s of files (%.3fx, target <= 1.05x): %s; %.3f s, CPU %.2f s/GiB'
              % (human_size(int(read)), human_size(files), read / float(files), 'PASS' if read <= 1.05 * files
                 else 'BELOW TARGET', statistics.median(r['seconds'] for r in results['verify']),
                 statistics.median(r['cpu'] for r in results['verify']) / (files / float(1 << 30))))
        rows = bench_compression(work, args.compress_size, args.runs)
        plain = statistics.median(r[0] for r in rows['none'])
        print('compress (guest mix of %s: 70 %% text, 15 %% written zeros, 15 %% random; raw data = the image)'
              % human_size(args.compress_size))
        for name in ('none', 'zlib', 'zstd'):
            seconds = statistics.median(r[0] for r in rows[name])
            stored = statistics.median(r[2] for r in rows[name])
            print('  %-5s %8.3f s  %7.1f MiB/s (%.2fx none)  CPU %.2f s/GiB  point %.1f MiB = %.1f %% of the raw data'
                  % (name, seconds, args.compress_size / MIB / seconds, plain / seconds,
                     statistics.median(r[1] for r in rows[name]) / (args.compress_size / float(1 << 30)),
                     stored / float(MIB), 100.0 * stored / args.compress_size))
        zstd_size = statistics.median(r[2] for r in rows['zstd'])
        zstd_speed = plain / statistics.median(r[0] for r in rows['zstd'])
        print('target compress/zstd: <= 40 %% of the raw data: %s; >= 0.7 x uncompressed throughput: %s'
              % ('PASS' if zstd_size <= 0.4 * args.compress_size else 'BELOW TARGET',
                 'PASS' if zstd_speed >= 0.7 else 'BELOW TARGET'))
        if not args.no_lab:
            rows, allocated = bench_allocated_fulls(work, args.full_size, args.allocated, args.runs)
            print('full/allocated: disk %s, %s allocated in 2 MiB blocks' % (human_size(args.full_size), human_size(allocated)))
            for mode in ('auto', 'none'):
                print('  allocation_map %-5s %8.3f s  read %s (%.3fx allocated)  allocation_source %s'
                      % (mode, statistics.median(r[0] for r in rows[mode]),
                         human_size(int(statistics.median(r[1] for r in rows[mode]))),
                         statistics.median(r[1] for r in rows[mode]) / float(allocated), rows[mode][0][2]))
            read = statistics.median(r[1] for r in rows['auto'])
            print('target full/allocated: read <= 1.1 x allocated: %s' % ('PASS' if read <= 1.1 * allocated
                                                                          else 'BELOW TARGET'))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
