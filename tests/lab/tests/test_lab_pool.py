# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A lab pool (--hosts 3): hosts on a shared SR, one NBD front each, per-host switches for failover tests."""

from __future__ import absolute_import, division, print_function

import json
import ssl

import pytest

import nbdwire
from nbdwire import refused
from labtools import xenlab

__metaclass__ = type

HOSTS = 3


pytestmark = pytest.mark.parametrize('lab', [('--hosts', HOSTS, '--nbd-purpose', 'nbd')], indirect=True)


@pytest.fixture(scope='module')
def psnap(api):
    return api.VDI.snapshot(api.VDI.get_by_name_label('demo-vm-disk0')[0])


def tls(lab):
    return nbdwire.client_context(lab.info['ca_cert'])


def switch(lab, host, mode):
    return json.loads(xenlab('nbd-switch', '--dir', lab.dir, '--host', host, '--switch', mode).stdout)


def first_sector(lab, port, name):
    conn = nbdwire.open_export(port, name, tls(lab))
    try:
        return conn.read(0, 512)
    finally:
        conn.close()


def test_every_host_shares_the_sr_and_has_its_own_front(lab, api, psnap):
    hosts = lab.info['hosts']
    assert [h['name'] for h in hosts] == ['lab-host-%d' % n for n in range(1, HOSTS + 1)]
    assert len(set(h['nbd_port'] for h in hosts)) == HOSTS and hosts[0]['nbd_port'] == lab.info['nbd_port']
    assert all(h['nbd_mode'] == 'tls' and h['nbd_switch'] == 'serve' for h in hosts)
    master = api.pool.get_master(api.pool.get_all()[0])
    assert api.host.get_name_label(master) == 'lab-host-1'
    sr = api.SR.get_by_name_label('Local storage')[0]
    assert api.SR.get_shared(sr) is True
    pbd_hosts = set(api.PBD.get_host(p) for p in api.SR.get_PBDs(sr))
    assert set(api.host.get_name_label(h) for h in pbd_hosts) == set(h['name'] for h in hosts)
    infos = api.VDI.get_nbd_info(psnap)
    assert sorted(int(i['port']) for i in infos) == sorted(h['nbd_port'] for h in hosts)
    expected = first_sector(lab, hosts[0]['nbd_port'], infos[0]['exportname'])
    for info in infos:  # every host serves the same disk (the SR is shared)
        assert first_sector(lab, int(info['port']), info['exportname']) == expected


def test_a_connection_plugs_its_own_hosts_dom0(lab, api, psnap):
    host = lab.info['hosts'][1]
    info = [i for i in api.VDI.get_nbd_info(psnap) if int(i['port']) == host['nbd_port']][0]
    conn = nbdwire.open_export(host['nbd_port'], info['exportname'], tls(lab))
    try:
        vbds = [api.VBD.get_record(v) for v in api.VDI.get_VBDs(psnap)]
        plugged = [v for v in vbds if v['currently_attached']]
        assert len(plugged) == 1
        dom0 = api.host.get_control_domain(api.host.get_by_uuid(host['uuid']))
        assert plugged[0]['VM'] == dom0
    finally:
        conn.close()


def test_switches_refuse_and_drop_one_host_only(lab, api, psnap):
    hosts = lab.info['hosts']
    name = api.VDI.get_nbd_info(psnap)[0]['exportname']
    try:
        assert switch(lab, 'lab-host-2', 'refuse') == {'host': 'lab-host-2', 'switch': 'refuse', 'ok': True}
        assert refused(hosts[1]['nbd_port'])
        switch(lab, 'lab-host-3', 'drop')
        with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
            first_sector(lab, hosts[2]['nbd_port'], name)
        assert first_sector(lab, hosts[0]['nbd_port'], name)
        states = dict((h['name'], h['nbd_switch']) for h in lab.refresh()['hosts'])
        assert states == {'lab-host-1': 'serve', 'lab-host-2': 'refuse', 'lab-host-3': 'drop'}
        # xapi does not know that a host's NBD server is down: get_nbd_info still lists every host
        assert len(api.VDI.get_nbd_info(psnap)) == HOSTS
    finally:
        switch(lab, 'lab-host-2', 'serve')
        switch(lab, 'lab-host-3', 'serve')
    for host in hosts:
        assert first_sector(lab, host['nbd_port'], name)
    bad = xenlab('nbd-switch', '--dir', lab.dir, '--host', 'lab-host-9', '--switch', 'refuse', check=False)
    assert bad.returncode != 0 and 'no host named lab-host-9' in bad.stderr


def test_a_drop_switch_with_times_drops_that_many_connections_then_serves(lab, api, psnap):
    port = lab.info['hosts'][2]['nbd_port']
    name = api.VDI.get_nbd_info(psnap)[0]['exportname']
    try:
        out = json.loads(xenlab('nbd-switch', '--dir', lab.dir, '--host', 'lab-host-3', '--switch', 'drop',
                                '--times', '2').stdout)
        assert out == {'host': 'lab-host-3', 'switch': 'drop', 'ok': True}
        for dummy in range(2):
            with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
                first_sector(lab, port, name)
        assert first_sector(lab, port, name)  # the third connection is served
        assert first_sector(lab, port, name)
    finally:
        switch(lab, 'lab-host-3', 'serve')
    bad = xenlab('nbd-switch', '--dir', lab.dir, '--host', 'lab-host-3', '--switch', 'refuse', '--times', '1',
                 check=False)
    assert bad.returncode != 0 and 'times goes with drop' in bad.stderr


def test_the_connection_cap_counts_per_host(lab, api, psnap):
    hosts = lab.info['hosts']
    name = api.VDI.get_nbd_info(psnap)[0]['exportname']
    conns = [nbdwire.open_export(hosts[0]['nbd_port'], name, tls(lab)) for _index in range(16)]
    try:
        with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
            nbdwire.open_export(hosts[0]['nbd_port'], name, tls(lab))
        conns.append(nbdwire.open_export(hosts[1]['nbd_port'], name, tls(lab)))  # another host has its own 16
    finally:
        for conn in conns:
            conn.close()
