# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared fixtures for unit and NBD interop tests.

* ``pki`` (session): test certificates, see ``helpers/pki.py``.
* ``nbd_image``: a ~4 MiB deterministic raw image with data runs, holes and a partial last 64 KiB block
  (size a multiple of 512, since qemu-nbd rounds sizes up to 512).
* ``nbd_server_factory``: ``factory(kind, image_path, exportname='vdisk0', **kwargs)`` starts a server of
  ``helpers.nbd_servers.ALL_SERVER_KINDS``; every server it started is stopped at teardown, pass or fail.
* ``server_kind``: parametrised over ``SERVER_KINDS``; override with
  ``@pytest.mark.parametrize('server_kind', [...])``.
* ``nbd_server``: a server of ``server_kind`` serving ``nbd_image`` as export ``vdisk0``.
* ``small_tmpfs``: ``mount(size_k)`` mounts a tmpfs of that size (for full-disk tests) and returns its path;
  unmounted at teardown. Fails under CI=true where mounting is impossible, else skips.
* ``lab``: a XenServer lab (tests/lab) of its own for the test; ``client``: an open XenApiClient logged in to it.
"""

from __future__ import absolute_import, division, print_function

import os
import subprocess

import pytest

from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    SERVER_KINDS,
    ServerFactory,
    make_disk_image,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import client as _xenapi
from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import start_lab, xenlab
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.pki import make_pki

__metaclass__ = type

# Not a multiple of 64 KiB (partial last block) but of 512: qemu-nbd rounds the export size up to 512 bytes.
NBD_IMAGE_SIZE = 4 * 1024 * 1024 + 25 * 512


@pytest.fixture(scope='session')
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp('pki'))


@pytest.fixture
def nbd_image(tmp_path):
    return make_disk_image(tmp_path / 'disk.raw', NBD_IMAGE_SIZE, seed=20240601)


@pytest.fixture
def nbd_server_factory(tmp_path, pki):
    factory = ServerFactory(tmp_path / 'nbd-servers', pki)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(params=SERVER_KINDS)
def server_kind(request):
    return request.param


@pytest.fixture
def nbd_server(nbd_server_factory, server_kind, nbd_image):
    return nbd_server_factory(server_kind, nbd_image.path)


def pytest_configure(config):
    # ansible-test runs pytest with its own ini file, so the markers are registered here too.
    config.addinivalue_line('markers', 'interop: talks to a real NBD server started by the test')
    config.addinivalue_line('markers', 'slow: takes more than a few seconds')


@pytest.fixture
def lab(request, tmp_path):
    # Function scope: ansible-test runs every test in a forked process, where a module-scoped lab would be
    # started again in each fork and stopped only in the last one.  Indirect parameters: more start options.
    instance = start_lab(tmp_path / 'lab', *getattr(request, 'param', ()))
    yield instance
    xenlab('stop', '--dir', instance.dir)


@pytest.fixture
def client(lab):
    with _xenapi.XenApiClient(lab.info['url'], username=lab.info['username'], password=lab.info['password'],
                              ca_path=lab.info['ca_cert'], timeout=30) as opened:
        yield opened


@pytest.fixture
def small_tmpfs(tmp_path):
    mount_point = tmp_path / 'tiny'
    mount_point.mkdir()
    mounted = []

    def mount(size_k):
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%dk' % size_k, 'tmpfs', str(mount_point)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            if os.environ.get('CI') == 'true':
                pytest.fail('cannot mount a tmpfs for the full-disk test: %s' % proc.stdout.decode())
            pytest.skip('cannot mount a tmpfs here: %s' % proc.stdout.decode())
        mounted.append(True)
        return str(mount_point)
    try:
        yield mount
    finally:
        if mounted:
            subprocess.run(['umount', str(mount_point)], check=False)
