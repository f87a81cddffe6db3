# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-VM orchestration cost of the incremental_backup role: a first full run and unchanged runs of N VMs.

For each N (``--vms``), on a fresh lab with N running VMs of one small disk each (so the time is orchestration,
not data): the collection's backup playbook once (the first, full run), then ``--runs`` unchanged runs (nothing
written in between). Next to it, alternating with the unchanged runs, the floor: the XenAPI calls one unchanged
VM needs at least (VM.snapshot, reading the snapshot, VDI.get_nbd_info, VDI.list_changed_blocks against the
anchor, VDI.data_destroy of the new snapshot, VDI.destroy of the old anchor, VM.destroy of the snapshot VM record),
made one after another by one Python client over the same HTTPS XML-RPC, with no Ansible and no data. Medians;
per VM; the ratio role / floor. Targets (issue 13): unchanged <= 1.0 s per VM at N=16 and N=64, not growing with
N; first full run <= 1.5 s per VM of orchestration (here the data is 4 MiB per VM, so the whole run is counted).

Reproduce: ``.venv/bin/python benchmarks/role_scale_bench.py [--vms 16,64] [--runs 3] [--disk-size 4M]``
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
from nbd_export_bench import ROOT, machine_summary, setup_collection_path  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, 'scripts', 'demo'))
from lab_demo import LabPlaybooks  # noqa: E402 pylint: disable=wrong-import-position


def start(work, count, disk_size, batch_size):
    lab_args = ['--extra-vms', str(count), '--extra-vm-disk-size', disk_size, '--auth-failure-delay', '0']
    for number in range(1, count + 1):
        lab_args += ['--vm-tags', 'lab-vm-%02d=nightly' % number]
    return LabPlaybooks(work, lab_args=lab_args, verbose=False,
                        host_vars={'incremental_backup_vm_tags': ['nightly'], 'incremental_backup_batch_size': batch_size})


def timed_backup(lab):
    started = time.monotonic()
    rc, out = lab.playbook('backup', check=False)
    if rc != 0:
        raise SystemExit('the backup run failed:\n%s' % out[-4000:])
    return time.monotonic() - started


def xenapi_floor(lab):
    """Seconds for the XenAPI calls of one unchanged VM, for every VM, one after another (one client)."""
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiClient
    info = lab.lab
    with XenApiClient(info['url'], username=info['username'], password=info['password'], ca_path=info['ca_cert'],
                      timeout=60) as client:
        vms = [ref for ref, rec in client.call('VM.get_all_records').items()
               if rec['name_label'].startswith('lab-vm-') and not rec['is_a_snapshot']]
        started = time.monotonic()
        for vm in vms:
            snap_vm = client.call('VM.snapshot', vm, 'floor')
            vbd = [v for v in client.call('VM.get_VBDs', snap_vm) if client.call('VBD.get_type', v) == 'Disk'][0]
            snap = client.call('VBD.get_VDI', vbd)
            record = client.call('VDI.get_record', snap)
            anchors = [s for s in client.call('VDI.get_snapshots', record['snapshot_of'])
                       if client.call('VDI.get_type', s) == 'cbt_metadata']
            client.call('VDI.get_nbd_info', snap)
            client.call('VDI.list_changed_blocks', anchors[0], snap)
            client.call('VM.destroy', snap_vm)
            client.call('VDI.data_destroy', snap)
            client.call('VDI.destroy', snap)  # the role destroys the old anchor; keep the lab's chain as it was
        return time.monotonic() - started, len(vms)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--vms', default='16,64', help='comma-separated VM counts (at most 99)')
    parser.add_argument('--runs', type=int, default=3, help='unchanged runs (and floor runs) per count')
    parser.add_argument('--disk-size', default='4M')
    parser.add_argument('--batch-size', type=int, default=16, help='incremental_backup_batch_size')
    args = parser.parse_args(argv)
    setup_collection_path()
    print('\n'.join(machine_summary()))
    rows = []
    for count in [int(n) for n in args.vms.split(',')]:
        work = tempfile.mkdtemp(prefix='role-scale-')
        lab = start(work, count, args.disk_size, args.batch_size)
        try:
            full = timed_backup(lab)
            unchanged, floor = [], []
            for dummy in range(args.runs):
                unchanged.append(timed_backup(lab))
                seconds, vms = xenapi_floor(lab)
                assert vms == count
                floor.append(seconds)
        finally:
            lab.stop()
            shutil.rmtree(work, ignore_errors=True)
        rows.append((count, full / count, statistics.median(unchanged) / count, statistics.median(floor) / count))
    print('lab, 1 host, %s disk per VM, batch size %d, medians of %d unchanged runs'
          % (args.disk_size, args.batch_size, args.runs))
    print('| VMs | first full run, s/VM | unchanged run, s/VM | XenAPI floor, s/VM | unchanged / floor |')
    print('|---|---|---|---|---|')
    for count, full, unchanged, floor in rows:
        print('| %d | %.2f | %.2f | %.3f | %.0f x |' % (count, full, unchanged, floor, unchanged / floor))
    met = all(unchanged <= 1.0 for dummy, dummy2, unchanged, dummy3 in rows)
    print('unchanged <= 1.0 s/VM at every N: %s; first full <= 1.5 s/VM: %s' % (
        'yes' if met else 'NO', 'yes' if all(full <= 1.5 for dummy, full, dummy2, dummy3 in rows) else 'NO'))


if __name__ == '__main__':
    main()
