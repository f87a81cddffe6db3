# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A whole-VM restore (vm_restore as a new VM): its disks uploaded one at a time against several at once.

On a fresh lab whose demo-vm has two disks of ``--disk-size`` filled with random data: one backup run (vdi_snapshot
with the VM configuration, then vdi_export of both disks into repositories), then ``restore_new_vm`` ``--runs``
times with one upload worker and as many with ``--workers``, alternating, the restored VM and its disks destroyed
after each and the page cache written back before the next. Medians of the wall time, and the ratio one-at-a-time /
at-once. There is no peer: the baseline is the
engine's former behaviour (one upload after another). The lab serves XenAPI and the uploads on the same machine,
so on a small one the gain is a floor.

Reproduce: ``.venv/bin/python benchmarks/vm_restore_bench.py [--disk-size 256M] [--runs 3] [--workers 4]``
(needs nbdkit with its Python plugin, for the lab).
"""

from __future__ import absolute_import, division, print_function

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbd_export_bench import human_size, machine_summary, parse_size, setup_collection_path  # noqa: E402

WRITE_CHUNK = 16 * 1024 * 1024  # xenlab write: one guest write per call


def fill_disks(client, lab, xenlab):
    """Random data over every disk of demo-vm (the lab's guest writes)."""
    vm = client.call('VM.get_by_name_label', 'demo-vm')[0]
    for vbd in client.call('VM.get_VBDs', vm):
        if client.call('VBD.get_type', vbd) != 'Disk':
            continue
        vdi = client.call('VBD.get_VDI', vbd)
        uuid = client.call('VDI.get_uuid', vdi)
        size = int(client.call('VDI.get_virtual_size', vdi))
        for offset in range(0, size, WRITE_CHUNK):
            xenlab('write', '--dir', lab.dir, '--vdi', uuid, '--offset', offset,
                   '--length', min(WRITE_CHUNK, size - offset), '--seed', offset // WRITE_CHUNK + 1)


def destroy_restored(vm_restore, client, result):
    """Destroy a restored VM (its drives and interfaces go with it) and its disks, as a health check does."""
    created = vm_restore.Created(client)
    for disk in result['disks']:
        created.add('VDI by uuid', disk['vdi'])
    created.add('VM', client.call('VM.get_by_uuid', result['vm']['uuid']))
    left_behind = created.rollback()
    if left_behind:
        raise SystemExit('destroying the restored VM failed: %s' % '; '.join(left_behind))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--disk-size', default='256M', help='size of each of demo-vm\'s two disks (default 256M)')
    parser.add_argument('--runs', type=int, default=3, help='restores per worker count (default 3)')
    parser.add_argument('--workers', type=int, default=4, help='upload workers of the "at once" runs (default 4)')
    args = parser.parse_args(argv)
    size = parse_size(args.disk_size)

    setup_collection_path()
    import pathlib
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_restore as _vm_restore
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiClient
    from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import start_lab, xenlab
    from ansible_collections.xenserver.cbt_backup.tests.unit.plugins.module_utils.test_vm_restore import back_up

    for line in machine_summary():
        print('# ' + line)
    work = tempfile.mkdtemp(prefix='vm-restore-bench.')
    lab = start_lab(pathlib.Path(work) / 'lab', '--disk0-size', str(size), '--disk1-size', str(size))
    try:
        with XenApiClient(lab.info['url'], username=lab.info['username'], password=lab.info['password'],
                          ca_path=lab.info['ca_cert'], timeout=60) as client:
            fill_disks(client, lab, xenlab)
            root = pathlib.Path(work) / 'backups'
            snap = back_up(lab, client, root, pathlib.Path(work))  # the unit tests' backup run of demo-vm
            chosen = _vm_restore.chosen_run(str(root / snap['vm']))
            print('# demo-vm: %d disks of %s, random data; %d runs per worker count, alternating'
                  % (len(_vm_restore.disk_vbds(chosen[0])), human_size(size), args.runs))
            seconds = {1: [], args.workers: []}
            for number in range(args.runs):
                for workers in (1, args.workers) if number % 2 == 0 else (args.workers, 1):
                    _vm_restore.UPLOAD_WORKERS = workers
                    os.sync()  # the previous run's writeback does not land in this one
                    started = time.monotonic()
                    result = _vm_restore.restore_new_vm(client, chosen, name='bench-%d-%d' % (number, workers),
                                                        default_sr='Local storage')
                    seconds[workers].append(time.monotonic() - started)
                    sent = sum(disk['bytes_sent'] for disk in result['disks'])
                    destroy_restored(_vm_restore, client, result)
                    print('  run %d  %d upload worker(s)  %6.2f s  %5.0f MiB sent  %6.0f MiB/s'
                          % (number + 1, workers, seconds[workers][-1], sent / 1048576.0,
                             sent / 1048576.0 / seconds[workers][-1]))
                    sys.stdout.flush()
            one, many = statistics.median(seconds[1]), statistics.median(seconds[args.workers])
            print('median: one at a time %.2f s, %d at once %.2f s: %.2fx' % (one, args.workers, many, one / many))
    finally:
        xenlab('stop', '--dir', lab.dir)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
