# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The xenlab CLI: start/stop, lab.json, write/path, options."""

from __future__ import absolute_import, division, print_function

import os
import random
import ssl
import xmlrpc.client

import XenAPI

import nbdwire
from labtools import start_lab, xenlab

__metaclass__ = type


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open('/proc/%d/stat' % pid) as handle:
        return handle.read().split(') ')[-1][:1] != 'Z'


def test_lab_json_format(lab):
    info = lab.info
    assert info['url'] == 'https://127.0.0.1:%d' % info['api_port']
    assert {'url', 'username', 'password', 'ca_cert', 'pids'} <= set(info)
    assert os.path.isfile(info['ca_cert']) and all(alive(p) for p in info['pids'])
    with open(info['ca_cert']) as handle:
        assert handle.read().startswith('-----BEGIN CERTIFICATE-----')


def test_write_is_deterministic_and_path_shows_it(lab, api):
    vdi = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    vdi_uuid = api.VDI.get_uuid(vdi)
    lab.write(vdi_uuid, 4096, 10000, seed=7)
    content = lab.content(vdi_uuid)
    assert content[4096:14096] == random.Random(7).randbytes(10000)
    assert len(content) == 2 << 20
    result = xenlab('write', '--dir', lab.dir, '--vdi', vdi_uuid, '--offset', 2 << 20, '--length', 1, check=False)
    assert result.returncode != 0 and 'outside' in result.stderr


def test_seeded_disk0_has_data_and_zero_runs(lab, api):
    content = lab.content(api.VDI.get_uuid(api.VDI.get_by_name_label('demo-vm-disk0')[0]))
    size = len(content)
    piece = size // 32
    assert content[:piece].count(0) < piece // 2
    assert content[piece:size // 2] == bytes(size // 2 - piece)
    assert content[size - piece:].count(0) < piece // 2


def test_start_stop_leaves_nothing_and_ca_signed(tmp_path):
    lab = start_lab(tmp_path / 'ca', '--ca-signed', '--nbd-purpose', 'nbd')
    pids = lab.info['pids']
    assert len(pids) == 2  # simulator + nbdkit (backup-net has purpose nbd from the start)
    ctx = ssl.create_default_context(cafile=lab.info['ca_cert'])
    session = XenAPI.Session(lab.info['url'], transport=xmlrpc.client.SafeTransport(context=ctx))
    session.xenapi.login_with_password(lab.info['username'], lab.info['password'], '2.21', 'tests')
    vdi = session.xenapi.VDI.get_by_name_label('demo-vm-disk1')[0]
    info = session.xenapi.VDI.get_nbd_info(vdi)[0]
    with open(lab.info['ca_cert']) as handle:
        assert info['cert'] != handle.read()  # the host leaf, not the CA
    # NBD over TLS verified against the lab CA, with the host name from `subject`.
    conn = nbdwire.open_export(int(info['port']), info['exportname'], nbdwire.client_context(cafile=lab.info['ca_cert']))
    assert conn.read(0, 512)[0] == 0
    conn.close()
    session.xenapi.session.logout()
    again = xenlab('start', '--dir', lab.dir, check=False)
    assert again.returncode != 0 and 'already running' in again.stderr
    xenlab('stop', '--dir', lab.dir)
    assert not any(alive(p) for p in pids)
    xenlab('stop', '--dir', lab.dir)  # idempotent
    # The directory can host a fresh lab again; the old pool's disks are gone.
    old_disks = set(os.listdir(os.path.join(lab.dir, 'sr')))
    again = start_lab(lab.dir)
    assert not old_disks & set(os.listdir(os.path.join(lab.dir, 'sr')))
    xenlab('stop', '--dir', again.dir)
    assert not any(alive(p) for p in again.info['pids'])


def test_long_lab_path_puts_nbdkit_on_a_loopback_port(tmp_path_factory):
    """A lab directory too long for a unix socket name: nbdkit listens on 127.0.0.1 behind the front."""
    directory = tmp_path_factory.mktemp('long') / ('d' * 60) / ('e' * 60)
    directory.mkdir(parents=True)
    other = start_lab(directory, '--nbd-purpose', 'insecure_nbd')
    try:
        assert not (directory / 'nbdkit.sock').exists()
        api = other.session().xenapi
        vdi = api.VDI.get_by_name_label('demo-vm-disk1')[0]
        conn = nbdwire.open_export(other.info['nbd_port'], api.VDI.get_nbd_info(vdi)[0]['exportname'])
        assert conn.read(0, 4096) == (0, other.content(api.VDI.get_uuid(vdi))[:4096])
        conn.close()
    finally:
        xenlab('stop', '--dir', directory)
