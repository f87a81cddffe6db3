# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Demo of the incremental_backup role against the XenServer lab.

Starts a lab, then runs the collection's playbooks the way a backup engineer would: a full backup,
guest writes, an incremental, more writes, a second incremental, a prune, a verify, a restore to new
VDIs, and proves the restored disks equal the source bit for bit (sha256 and qemu-img compare).
Prints the run reports and stops the lab. Run through scripts/demo.sh, which installs everything first.

``LabPlaybooks`` is also what the role's end-to-end tests drive (tests/e2e).
"""

from __future__ import absolute_import, division, print_function

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XENLAB = os.path.join(ROOT, 'tests', 'lab', 'xenlab')
BIN = os.path.dirname(os.path.abspath(sys.executable))
sys.path.insert(0, ROOT)
import conftest  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import

# The repository's own file hash: the demo checks restored disks the way backup_verify checks points.
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.store import file_sha256 as sha256

__metaclass__ = type


class LabPlaybooks:
    """A running lab plus an inventory with one pool host, and ways to run the collection against it.

    The password reaches the playbooks through XENSERVER_PASSWORD only, never through a file.
    """

    def __init__(self, workdir, lab_args=(), host_vars=None, verbose=True):
        self.workdir = workdir
        self.verbose = verbose
        self.lab_dir = os.path.join(workdir, 'lab')
        self.backups = os.path.join(workdir, 'backups')
        self.logs = []
        self._start_lab(lab_args)
        self.inventory = os.path.join(workdir, 'inventory.yml')
        self.write_inventory(host_vars or {})

    # -- lab -----------------------------------------------------------------------------------------
    def _start_lab(self, lab_args):
        env = dict(os.environ, XENLAB_PYTHON=sys.executable)
        subprocess.run([XENLAB, 'start', '--dir', self.lab_dir] + list(lab_args), env=env, check=True,
                       stdout=subprocess.DEVNULL)
        with open(os.path.join(self.lab_dir, 'lab.json')) as handle:
            self.lab = json.load(handle)

    def stop(self):
        subprocess.run([XENLAB, 'stop', '--dir', self.lab_dir], env=dict(os.environ, XENLAB_PYTHON=sys.executable),
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def xenlab(self, *args):
        out = subprocess.run([XENLAB] + list(args) + ['--dir', self.lab_dir], check=True, stdout=subprocess.PIPE,
                             env=dict(os.environ, XENLAB_PYTHON=sys.executable))
        return out.stdout.decode().strip()

    def guest_write(self, vdi_uuid, offset, length, seed):
        return json.loads(self.xenlab('write', '--vdi', vdi_uuid, '--offset', str(offset), '--length', str(length),
                                      '--seed', str(seed)))

    def vdi_file(self, vdi_uuid):
        return self.xenlab('path', '--vdi', vdi_uuid)

    def xenapi(self):
        """A logged-in XenAPI session (the caller logs it out)."""
        import ssl
        import xmlrpc.client
        import XenAPI
        context = ssl.create_default_context(cafile=self.lab['ca_cert'])
        session = XenAPI.Session(self.lab['url'], transport=xmlrpc.client.SafeTransport(context=context))
        session.xenapi.login_with_password(self.lab['username'], self.lab['password'], '2.21', 'lab-demo')
        return session

    def vdis(self):
        """{uuid: record} of every VDI of the lab."""
        session = self.xenapi()
        try:
            return dict((r['uuid'], r) for r in session.xenapi.VDI.get_all_records().values())
        finally:
            session.xenapi.session.logout()

    # -- ansible -------------------------------------------------------------------------------------
    def write_inventory(self, host_vars):
        pool = {
            'ansible_connection': 'local',
            'ansible_python_interpreter': sys.executable,
            'incremental_backup_hostname': self.lab['url'],
            'incremental_backup_ca_path': self.lab['ca_cert'],
            'incremental_backup_username': self.lab['username'],
            'incremental_backup_repository': self.backups,
            'incremental_backup_nbd_network': 'backup-net',
            'incremental_backup_configure_nbd_network': True,
            'incremental_backup_nbd_settle_seconds': 1,
            'incremental_backup_poll_interval': 1,
        }
        pool.update(host_vars)
        with open(self.inventory, 'w') as handle:
            json.dump({'xenserver_pools': {'hosts': {'lab-pool': pool}}}, handle, indent=2)

    def env(self):
        collections = os.path.join(self.workdir, 'collections')
        link = os.path.join(collections, 'ansible_collections', 'xenserver', 'cbt_backup')
        if not os.path.islink(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(ROOT, link)
        return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, XENSERVER_PASSWORD=self.lab['password'],
                    ANSIBLE_ASYNC_DIR=os.path.join(self.workdir, 'async'), ANSIBLE_NOCOLOR='1',
                    ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_RETRY_FILES_ENABLED='false',
                    PATH=BIN + os.pathsep + os.environ.get('PATH', ''))

    def _run(self, argv, name, check):
        log = os.path.join(self.workdir, 'log-%02d-%s.txt' % (len(self.logs) + 1, name))
        self.logs.append(log)
        with open(log, 'wb') as handle:
            proc = subprocess.run(argv, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
            handle.write(proc.stdout)
        if self.verbose:
            sys.stdout.write(proc.stdout.decode(errors='replace'))
            sys.stdout.flush()
        if check and proc.returncode != 0:
            if not self.verbose:
                sys.stdout.write(proc.stdout.decode(errors='replace')[-6000:])
            raise SystemExit('%s failed (exit %d), log: %s' % (name, proc.returncode, log))
        return proc.returncode, proc.stdout.decode(errors='replace')

    def playbook(self, name, extra_vars=None, options=(), check=True):
        path = name if os.path.isabs(name) else os.path.join(ROOT, 'playbooks', name + '.yml')
        argv = [os.path.join(BIN, 'ansible-playbook'), path, '-i', self.inventory] + list(options)
        if extra_vars:
            vars_file = os.path.join(self.workdir, 'extra-vars-%d.json' % (len(self.logs) + 1))
            with open(vars_file, 'w') as handle:
                json.dump(extra_vars, handle)
            argv += ['-e', '@' + vars_file]
        return self._run(argv, os.path.basename(name).replace('.yml', ''), check)

    def module(self, module, args, check=True):
        argv = [os.path.join(BIN, 'ansible'), 'localhost', '-i', 'localhost,', '-c', 'local',
                '-e', 'ansible_python_interpreter=' + sys.executable, '-m', 'xenserver.cbt_backup.' + module,
                '-a', json.dumps(args)]
        return self._run(argv, module, check)

    def reports(self):
        """The run reports, oldest first."""
        paths = sorted(glob.glob(os.path.join(self.backups, 'reports', '*.json')), key=os.path.getmtime)
        reports = []
        for path in paths:
            with open(path) as handle:
                reports.append(json.load(handle))
        return reports

    def repositories(self):
        return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(self.backups, '*', '*', 'manifest.json')))


def disk_modes(report):
    return dict((d['vdi_name'], (d['mode'], d['reason_code'], d['status']))
                for vm in report['vms'] for d in vm['disks'])


def check(condition, message):
    if not condition:
        raise SystemExit('demo: FAILED: ' + message)
    print('demo: ok: ' + message)


def step(text):
    print('\n' + '=' * 100 + '\n== ' + text + '\n' + '=' * 100, flush=True)


def run_demo(lab):
    vdis = lab.vdis()
    disks = dict((r['name_label'], uuid) for uuid, r in vdis.items()
                 if r['name_label'].startswith('demo-vm-disk') and not r['is_a_snapshot'])
    disk0, disk1 = disks['demo-vm-disk0'], disks['demo-vm-disk1']

    step('1. Full backup of demo-vm (both disks): playbooks/backup.yml')
    lab.playbook('backup')
    modes = disk_modes(lab.reports()[-1])
    check(all(m[0] == 'full' and m[2] == 'ok' for m in modes.values()), 'first run: full backups %s' % modes)

    step('2. The guest writes 1 MiB to disk0 and 192 KiB to disk1')
    print(lab.guest_write(disk0, 8 << 20, 1 << 20, 1))
    print(lab.guest_write(disk1, 0, 192 << 10, 2))

    step('3. Incremental backup: only the changed blocks cross the network')
    lab.playbook('backup')
    report = lab.reports()[-1]
    modes = disk_modes(report)
    check(all(m[0] == 'incremental' and m[2] == 'ok' for m in modes.values()), 'second run: incrementals %s' % modes)
    read = dict((d['vdi_name'], d['bytes_read']) for vm in report['vms'] for d in vm['disks'])
    check(read['demo-vm-disk0'] == 1 << 20 and read['demo-vm-disk1'] == 192 << 10,
          'the incremental read exactly the changed blocks %s' % read)

    step('4. More guest writes, then a second incremental')
    print(lab.guest_write(disk0, 100 << 20, 512 << 10, 3))
    print(lab.guest_write(disk0, (256 << 20) - (64 << 10), 64 << 10, 4))
    lab.playbook('backup')
    modes = disk_modes(lab.reports()[-1])
    check(all(m[0] == 'incremental' and m[2] == 'ok' for m in modes.values()), 'third run: incrementals %s' % modes)

    step('5. Prune: keep the newest 2 restore points of each disk (older ones are merged forward)')
    for repository in lab.repositories():
        lab.module('backup_prune', {'repository': repository, 'keep_last': 2})
    counts = []
    for repository in lab.repositories():
        with open(os.path.join(repository, 'manifest.json')) as handle:
            counts.append(len(json.load(handle)['points']))
    check(counts == [2, 2], 'every repository keeps 2 points')

    step('6. Verify every repository: playbooks/verify.yml')
    lab.playbook('verify')

    step('7. Restore demo-vm to new VDIs from the newest points: playbooks/restore.yml')
    before = set(lab.vdis())
    lab.playbook('restore', {'incremental_backup_restore_vm': 'demo-vm',
                             'incremental_backup_restore_sr': 'Local storage'})
    after = lab.vdis()
    restored = dict((after[u]['name_label'], u) for u in set(after) - before)
    check(sorted(restored) == ['demo-vm-disk0 (restored)', 'demo-vm-disk1 (restored)'],
          'two new VDIs %s' % sorted(restored))

    step('8. The restored disks equal the source disks, bit for bit')
    for name, source in (('demo-vm-disk0', disk0), ('demo-vm-disk1', disk1)):
        src, copy = lab.vdi_file(source), lab.vdi_file(restored[name + ' (restored)'])
        same = sha256(src) == sha256(copy)
        compare = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', src, copy],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        check(same and compare.returncode == 0, '%s: sha256 %s, qemu-img compare: %s'
              % (name, 'equal' if same else 'DIFFERENT', compare.stdout.decode().strip()))

    step('9. Run reports (JSON files in %s)' % os.path.join(lab.backups, 'reports'))
    for number, report in enumerate(lab.reports(), 1):
        print('-- run %d' % number)
        for vm in report['vms']:
            for d in vm['disks']:
                print('   %-14s %-11s %-24s read %9d B  stored %9d B  %6s s  %s points'
                      % (d['vdi_name'], d['mode'], d['reason_code'], d['bytes_read'] or 0, d['bytes_stored'] or 0,
                         d['seconds'], d['points_kept']))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--workdir', help='directory to work in (default: a new temporary one)')
    parser.add_argument('--keep', action='store_true', help='keep the work directory (repositories, logs)')
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix='cbt-backup-lab-demo-')
    os.makedirs(workdir, exist_ok=True)
    print('demo: working in %s' % workdir)
    lab = LabPlaybooks(workdir, host_vars={'incremental_backup_vms': ['demo-vm']})
    try:
        run_demo(lab)
    finally:
        lab.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print('\ndemo: full, incremental, incremental, prune, verify and restore all worked; the lab is stopped.')


if __name__ == '__main__':
    main()
