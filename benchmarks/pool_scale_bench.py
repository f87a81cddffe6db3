# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A mixed pool through vdi_export's list form: one big disk and many small ones on a lab of several hosts.

Measured, alternating, medians of --runs: the big disk alone, the small disks alone (their aggregate throughput),
and everything in one ``exports`` run under the per-host budget. The bound is max(the big disk alone, total bytes
/ the small disks' aggregate throughput); the target is mixed <= 1.25 x bound, at most --max-host-connections
connections per host at every instant (counted at the lab's NBD fronts) and every host used.

Reproduce: ``.venv/bin/python benchmarks/pool_scale_bench.py [--big 2G] [--small 64M] [--count 15] [--hosts 3]``
(needs nbdkit with its Python plugin, for the lab).
"""

from __future__ import absolute_import, division, print_function

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbd_export_bench import ROOT, human_size, machine_summary, parse_size, setup_collection_path  # noqa: E402

MIB = 1024 * 1024
WRITE_PIECE = 64 * MIB  # guest writes of this size fill the disks with data


def make_disks(lab, client, sizes):
    """Disks full of data, snapshotted: [(snapshot uuid, size)]."""
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
    sr = client.call('SR.get_by_name_label', 'Local storage')[0]
    made = []
    for number, size in enumerate(sizes):
        ref, record = _vdi_import.create_vdi(client, sr, 'bench-%d' % number, size)
        for offset in range(0, size, WRITE_PIECE):
            lab.write(record['uuid'], offset, min(WRITE_PIECE, size - offset), seed=number * 1000 + offset // WRITE_PIECE)
        made.append((client.call('VDI.get_uuid', client.call('VDI.snapshot', ref, {})), size))
    return made


def export_run(client, work, disks, connections, per_host):
    """One list-form run into fresh repositories: (seconds, result)."""
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
    shutil.rmtree(os.path.join(work, 'repos'), ignore_errors=True)
    items = [{'snapshot': uuid, 'repository': os.path.join(work, 'repos', uuid)} for uuid, dummy in disks]
    params = dict(exports=items, snapshot=None, base=None, nbd_network=None, repository=None, dest=None, tls=True,
                  tls_ca_path=None, timeout=60, min_rate_mib_s=1.0, connections=connections, requests_in_flight=8,
                  retries=2, on_broken_chain='fail', run=None, allocation_map='none', compress='none',
                  max_host_connections=per_host)
    started = time.monotonic()
    result = _vdi_export.export_snapshots(client, params)
    seconds = time.monotonic() - started
    failed = [r for r in result['exports'] if not isinstance(r, dict)]
    if failed:
        raise SystemExit('an export failed: %s' % failed[0])
    return seconds, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--big', type=parse_size, default=2048 * MIB)
    parser.add_argument('--small', type=parse_size, default=64 * MIB)
    parser.add_argument('--count', type=int, default=15, help='small disks')
    parser.add_argument('--hosts', type=int, default=3)
    parser.add_argument('--connections', type=int, default=4, help='per disk')
    parser.add_argument('--max-host-connections', type=int, default=16)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args(argv)
    setup_collection_path()
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiClient
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
    from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import start_lab, xenlab
    print('\n'.join(machine_summary()))
    base = os.path.join(ROOT, '.tmp') if os.path.isdir(os.path.join(ROOT, '.tmp')) else None
    work = tempfile.mkdtemp(prefix='pool-scale-', dir=base)
    lab = start_lab(os.path.join(work, 'lab'), '--hosts', args.hosts)
    try:
        info = lab.info
        with XenApiClient(info['url'], username=info['username'], password=info['password'], ca_path=info['ca_cert'],
                          timeout=60) as client:
            _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
            disks = make_disks(lab, client, [args.big] + [args.small] * args.count)
            cases = {'big alone': disks[:1], 'small alone': disks[1:], 'mixed': disks}
            times = dict((name, []) for name in cases)
            peaks = []
            for run in range(args.runs):
                order = list(cases) if run % 2 == 0 else list(reversed(list(cases)))
                for name in order:
                    xenlab('nbd-counts', '--dir', lab.dir, '--reset')
                    seconds, result = export_run(client, work, cases[name], args.connections,
                                                 args.max_host_connections)
                    times[name].append(seconds)
                    if name == 'mixed':
                        counted = json.loads(xenlab('nbd-counts', '--dir', lab.dir).stdout)['peaks']
                        peaks.append((counted, result['hosts']))
    finally:
        xenlab('stop', '--dir', lab.dir, check=False)
        shutil.rmtree(work, ignore_errors=True)
    med = dict((name, statistics.median(values)) for name, values in times.items())
    small_bytes = args.small * args.count
    total = args.big + small_bytes
    aggregate = small_bytes / med['small alone']
    bound = max(med['big alone'], total / aggregate)
    print('disks: 1 x %s + %d x %s on %d hosts, %d connections per disk, at most %d per host; medians of %d runs'
          % (human_size(args.big), args.count, human_size(args.small), args.hosts, args.connections,
             args.max_host_connections, args.runs))
    print('| case | seconds | MiB/s |')
    print('|---|---|---|')
    for name, size in (('big alone', args.big), ('small alone', small_bytes), ('mixed', total)):
        print('| %s | %.2f | %.0f |' % (name, med[name], size / MIB / med[name]))
    print('bound max(big alone, total / aggregate) = %.2f s; mixed / bound = %.2f (target <= 1.25)'
          % (bound, med['mixed'] / bound))
    worst = max(max(counted.values()) for counted, dummy in peaks)
    unused = set(h for counted, dummy in peaks for h, peak in counted.items() if not peak)
    print('peak connections per host at the fronts (mixed runs): %s; most on one host %d (limit %d); hosts unused: %s'
          % ([sorted(counted.items()) for counted, dummy in peaks], worst, args.max_host_connections,
             ', '.join(sorted(unused)) or 'none'))


if __name__ == '__main__':
    main()
