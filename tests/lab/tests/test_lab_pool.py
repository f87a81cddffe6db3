# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lab pool (--hosts 3): hosts on a shared SR, one NBD front each, per-host switches for failover tests."""

from __future__ import absolute_import, division, print_function

import json
import socket
import ssl

import pytest

import nbdwire
from labtools import start_lab, xenlab

__metaclass__ = type

HOSTS = 3


@pytest.fixture(scope='module')
def pool(tmp_path_factory):
    instance = start_lab(tmp_path_factory.mktemp('pool'), '--hosts', HOSTS, '--nbd-purpose', 'nbd')
    yield instance
    xenlab('stop', '--dir', instance.dir)


@pytest.fixture(scope='module')
def papi(pool):
    session = pool.session()
    yield session.xenapi
    session.xenapi.session.logout()


@pytest.fixture(scope='module')
def psnap(papi):
    return papi.VDI.snapshot(papi.VDI.get_by_name_label('demo-vm-disk0')[0])


def tls(pool):
    return nbdwire.client_context(pool.info['ca_cert'])


def switch(pool, host, mode):
    return json.loads(xenlab('nbd-switch', '--dir', pool.dir, '--host', host, '--switch', mode).stdout)


def refused(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def first_sector(pool, port, name):
    conn = nbdwire.open_export(port, name, tls(pool))
    try:
        return conn.read(0, 512)
    finally:
        conn.close()


def test_every_host_shares_the_sr_and_has_its_own_front(pool, papi, psnap):
    hosts = pool.info['hosts']
    assert [h['name'] for h in hosts] == ['lab-host-%d' % n for n in range(1, HOSTS + 1)]
    assert len(set(h['nbd_port'] for h in hosts)) == HOSTS and hosts[0]['nbd_port'] == pool.info['nbd_port']
    assert all(h['nbd_mode'] == 'tls' and h['nbd_switch'] == 'serve' for h in hosts)
    master = papi.pool.get_master(papi.pool.get_all()[0])
    assert papi.host.get_name_label(master) == 'lab-host-1'
    sr = papi.SR.get_by_name_label('Local storage')[0]
    assert papi.SR.get_shared(sr) is True
    pbd_hosts = set(papi.PBD.get_host(p) for p in papi.SR.get_PBDs(sr))
    assert set(papi.host.get_name_label(h) for h in pbd_hosts) == set(h['name'] for h in hosts)
    infos = papi.VDI.get_nbd_info(psnap)
    assert sorted(int(i['port']) for i in infos) == sorted(h['nbd_port'] for h in hosts)
    expected = first_sector(pool, hosts[0]['nbd_port'], infos[0]['exportname'])
    for info in infos:  # every host serves the same disk (the SR is shared)
        assert first_sector(pool, int(info['port']), info['exportname']) == expected


def test_a_connection_plugs_its_own_hosts_dom0(pool, papi, psnap):
    host = pool.info['hosts'][1]
    info = [i for i in papi.VDI.get_nbd_info(psnap) if int(i['port']) == host['nbd_port']][0]
    conn = nbdwire.open_export(host['nbd_port'], info['exportname'], tls(pool))
    try:
        vbds = [papi.VBD.get_record(v) for v in papi.VDI.get_VBDs(psnap)]
        plugged = [v for v in vbds if v['currently_attached']]
        assert len(plugged) == 1
        dom0 = papi.host.get_control_domain(papi.host.get_by_uuid(host['uuid']))
        assert plugged[0]['VM'] == dom0
    finally:
        conn.close()


def test_switches_refuse_and_drop_one_host_only(pool, papi, psnap):
    hosts = pool.info['hosts']
    name = papi.VDI.get_nbd_info(psnap)[0]['exportname']
    try:
        assert switch(pool, 'lab-host-2', 'refuse') == {'host': 'lab-host-2', 'switch': 'refuse', 'ok': True}
        assert refused(hosts[1]['nbd_port'])
        switch(pool, 'lab-host-3', 'drop')
        with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
            first_sector(pool, hosts[2]['nbd_port'], name)
        assert first_sector(pool, hosts[0]['nbd_port'], name)
        states = dict((h['name'], h['nbd_switch']) for h in pool.refresh()['hosts'])
        assert states == {'lab-host-1': 'serve', 'lab-host-2': 'refuse', 'lab-host-3': 'drop'}
        # xapi does not know that a host's NBD server is down: get_nbd_info still lists every host
        assert len(papi.VDI.get_nbd_info(psnap)) == HOSTS
    finally:
        switch(pool, 'lab-host-2', 'serve')
        switch(pool, 'lab-host-3', 'serve')
    for host in hosts:
        assert first_sector(pool, host['nbd_port'], name)
    bad = xenlab('nbd-switch', '--dir', pool.dir, '--host', 'lab-host-9', '--switch', 'refuse', check=False)
    assert bad.returncode != 0 and 'no host named lab-host-9' in bad.stderr


def test_the_connection_cap_counts_per_host(pool, papi, psnap):
    hosts = pool.info['hosts']
    name = papi.VDI.get_nbd_info(psnap)[0]['exportname']
    conns = [nbdwire.open_export(hosts[0]['nbd_port'], name, tls(pool)) for _index in range(16)]
    try:
        with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
            nbdwire.open_export(hosts[0]['nbd_port'], name, tls(pool))
        conns.append(nbdwire.open_export(hosts[1]['nbd_port'], name, tls(pool)))  # another host has its own 16
    finally:
        for conn in conns:
            conn.close()
