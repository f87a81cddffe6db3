# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Demo: a sample disk served by qemu-nbd over TLS, exported with vdi_export (full, then incremental), verified.

Run through scripts/demo.sh, which installs everything first.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import conftest  # noqa: E402,F401 pylint: disable=wrong-import-position,unused-import

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt  # noqa: E402 pylint: disable=wrong-import-position
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers import nbd_servers, pki  # noqa: E402 pylint: disable=wrong-import-position

__metaclass__ = type

DISK_SIZE = 256 * 1024 * 1024


def run_playbook(workdir, extra_vars):
    vars_file = os.path.join(workdir, 'vars.json')
    with open(vars_file, 'w') as handle:
        json.dump(extra_vars, handle)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, '.tmp', 'collections'),
               ANSIBLE_LOCALHOST_WARNING='false', ANSIBLE_INVENTORY_UNPARSED_WARNING='false')
    subprocess.run([os.path.join(ROOT, '.venv', 'bin', 'ansible-playbook'), os.path.join(ROOT, 'scripts', 'demo', 'export.yml'),
                    '-e', '@' + vars_file, '-e', 'ansible_python_interpreter=' + sys.executable], env=env, check=True)


def verify(source, copy):
    same_hash = nbd_servers.file_sha256(source) == nbd_servers.file_sha256(copy)
    compare = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', source, copy],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    verdict = 'equal' if same_hash else 'DIFFERENT'
    print('verify: sha256 %s, qemu-img compare: %s' % (verdict, compare.stdout.decode().strip()))
    return same_hash and compare.returncode == 0


def main():
    workdir = tempfile.mkdtemp(prefix='cbt-backup-demo-')
    print('demo: working in %s' % workdir)
    source = os.path.join(workdir, 'disk0.raw')
    image = nbd_servers.make_disk_image(source, DISK_SIZE, pattern='DDDD0ZZZZZZZZDD', seed=2026)
    certificates = pki.make_pki(os.path.join(workdir, 'pki'))
    server = nbd_servers.start_server('qemu-tls', source, os.path.join(workdir, 'server'), certificates,
                                      exportname='demo-vm-disk0')
    ok = False
    try:
        print('demo: qemu-nbd serves a %d MiB disk over TLS on %s:%d' % (DISK_SIZE >> 20, server.address, server.port))
        dest = os.path.join(workdir, 'backup', 'disk0.raw')
        os.makedirs(os.path.dirname(dest))
        run_playbook(workdir, {'demo_nbd': server.nbd_info(), 'demo_dest': dest})
        ok = verify(source, dest)

        changed = nbd_servers.rewrite_random_blocks(source, 64, seed=7)
        print('demo: the "guest" rewrote %d blocks of 64 KiB' % len(changed))
        run_playbook(workdir, {'demo_nbd': server.nbd_info(), 'demo_dest': dest,
                               'demo_changed_blocks': _cbt.encode(changed, image.size)})
        ok = verify(source, dest) and ok
    finally:
        server.stop()
    print('demo: %s' % ('SUCCESS: both backups equal the disk bit for bit' if ok else 'FAILED (files kept in %s)' % workdir))
    if ok:
        shutil.rmtree(workdir)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
