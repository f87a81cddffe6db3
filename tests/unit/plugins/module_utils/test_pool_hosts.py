# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exports over every host of a pool: disks spread over the hosts get_nbd_info lists, a host that refuses or drops
the connection is passed over for the next, against the lab started with --hosts 3."""

from __future__ import absolute_import, division, print_function

import hashlib
import json

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.errors import NbdError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import nbd_access as _nbd_access
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vdi_import as _vdi_import
from ansible_collections.xenserver.cbt_backup.tests.lab.tests.labtools import xenlab

__metaclass__ = type

MIB = 1024 * 1024
HOSTS = 3


pytestmark = pytest.mark.parametrize('lab', [('--hosts', HOSTS)], indirect=True)


@pytest.fixture
def pool_client(client):
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    return client


def params(**overrides):
    base = dict(snapshot=None, base=None, nbd_network=None, repository=None, dest=None, tls=True, tls_ca_path=None,
                timeout=10, min_rate_mib_s=1.0, connections=2, requests_in_flight=4, retries=1, on_broken_chain='fail',
                run=None, allocation_map='none')
    base.update(overrides)
    return base


def first_port(client, uuid):
    """The NBD port of the host a snapshot's export goes to first (a stable hash of its uuid picks it)."""
    return _nbd_access.in_order(_nbd_access.nbd_info(client, client.call('VDI.get_by_uuid', uuid)), key=uuid)[0]['port']


def snapshots(lab, client, count, first_on=()):
    """``count`` 4 MiB disks with data, snapshotted: [(snapshot uuid, sha256 of its content)]; more (up to 60)
    until every port of ``first_on`` is the first host of at least one of them (uuids are random: without it a
    test would now and then get no disk meant for the host it is about)."""
    sr = client.call('SR.get_by_name_label', 'Local storage')[0]
    made = []
    number = 0
    while number < count or (number < 60 and set(first_on) - set(first_port(client, uuid) for uuid, dummy in made)):
        ref, record = _vdi_import.create_vdi(client, sr, 'spread-%d' % number, 4 * MIB)
        lab.write(record['uuid'], number * 64 * 1024, 64 * 1024, seed=number + 1)
        uuid = client.call('VDI.get_uuid', client.call('VDI.snapshot', ref, {}))
        with open(lab.path(uuid), 'rb') as handle:
            made.append((uuid, hashlib.sha256(handle.read().ljust(4 * MIB, b'\0')).hexdigest()))
        number += 1
    return made


def exported(client, tmp_path, uuid, name):
    dest = str(tmp_path / ('%s.raw' % name))
    result = _vdi_export.export_snapshot(client, params(snapshot=uuid, dest=dest))
    with open(dest, 'rb') as handle:
        return result, hashlib.sha256(handle.read()).hexdigest()


def port_of(result):
    return int(result['nbd_address'].rsplit(':', 1)[1])


def switch(lab, host, mode):
    xenlab('nbd-switch', '--dir', lab.dir, '--host', host, '--switch', mode)


def test_disks_spread_over_every_host_and_keep_their_host(lab, pool_client, tmp_path):
    ports = dict((h['nbd_port'], h['name']) for h in lab.info['hosts'])
    used = {}
    for uuid, digest in snapshots(lab, pool_client, 9, first_on=ports):
        result, got = exported(pool_client, tmp_path, uuid, uuid)
        assert got == digest and 'nbd_failover' not in result
        used[uuid] = ports[port_of(result)]
        # the order is a stable hash of the snapshot's uuid: the same host again next time
        snap_ref = pool_client.call('VDI.get_by_uuid', uuid)
        infos = _nbd_access.nbd_info(pool_client, snap_ref)
        assert _nbd_access.in_order(infos, key=uuid)[0]['port'] == port_of(result)
        assert _nbd_access.in_order(list(reversed(infos)), key=uuid) == _nbd_access.in_order(infos, key=uuid)
    assert set(used.values()) == set(ports.values())  # 9 disks over 3 hosts: each host serves some


@pytest.mark.parametrize('mode', ['refuse', 'drop'])
def test_a_host_that_fails_is_passed_over(lab, pool_client, tmp_path, mode):
    ports = dict((h['name'], h['nbd_port']) for h in lab.info['hosts'])
    made = snapshots(lab, pool_client, 6, first_on=[ports['lab-host-2']])
    switch(lab, 'lab-host-2', mode)
    try:
        results = []
        for uuid, digest in made:
            result, got = exported(pool_client, tmp_path, uuid, uuid)
            assert got == digest  # every disk is read whole, from a host that serves
            assert port_of(result) != ports['lab-host-2']
            results.append(result)
        failed_over = [r for r in results if 'nbd_failover' in r]
        assert failed_over, 'a disk meant for lab-host-2 was read from it'
        for result in failed_over:
            assert [f['nbd_address'] for f in result['nbd_failover']] == ['127.0.0.1:%d' % ports['lab-host-2']]
            assert any('read from NBD server 127.0.0.1:%d instead' % port_of(result) in w for w in result['warnings'])
            text = json.dumps(result)
            assert 'session_id' not in text and 'OpaqueRef' not in text  # the export name stays secret
    finally:
        switch(lab, 'lab-host-2', 'serve')


def test_when_no_host_serves_every_host_is_named(lab, pool_client, tmp_path):
    (uuid, dummy), = snapshots(lab, pool_client, 1)
    for number in range(1, HOSTS + 1):
        switch(lab, 'lab-host-%d' % number, 'refuse')
    with pytest.raises(NbdError) as caught:
        exported(pool_client, tmp_path, uuid, 'none')
    message = str(caught.value)
    assert caught.value.code == 'NBD_CONNECT_FAILED'
    assert message.startswith('none of the 3 hosts that can serve the export did')
    for host in lab.info['hosts']:
        assert '127.0.0.1:%d' % host['nbd_port'] in message
    assert 'session_id' not in message
