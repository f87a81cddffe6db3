# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""--tls-policy legacy: the front offers only RSA+AES128-SHA256 over TLS 1.2, as older xapi-nbd did."""

from __future__ import absolute_import, division, print_function

import ssl

import pytest

import nbdwire
from labtools import start_lab, xenlab

__metaclass__ = type


@pytest.fixture(scope='module')
def legacy(tmp_path_factory):
    lab = start_lab(tmp_path_factory.mktemp('legacy'), '--tls-policy', 'legacy', '--nbd-purpose', 'nbd')
    session = lab.session()
    yield lab, session.xenapi
    session.xenapi.session.logout()
    xenlab('stop', '--dir', lab.dir)


def test_legacy_suite_only(legacy):
    lab, api = legacy
    vdi = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    info = api.VDI.get_nbd_info(vdi)[0]
    port = int(info['port'])
    conn = nbdwire.open_export(port, info['exportname'], nbdwire.client_context(ciphers='AES128-SHA256'))
    assert conn.sock.cipher()[0] == 'AES128-SHA256' and conn.sock.version() == 'TLSv1.2'
    assert conn.sock.getpeercert(True) == ssl.PEM_cert_to_DER_cert(info['cert'])
    assert (conn.size, conn.flags) == (2 << 20, 3)
    assert conn.read(0, 4096)[1] == lab.content(api.VDI.get_uuid(vdi))[:4096]
    conn.close()
    # A client limited to forward-secret suites (upstream Python's default list) cannot connect.
    for ctx in (nbdwire.client_context(ciphers='ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES'),
                nbdwire.client_context(tls13=True),
                nbdwire.client_context(ciphers='ECDHE-RSA-AES256-GCM-SHA384')):
        with pytest.raises((ssl.SSLError, EOFError, ConnectionResetError)):
            nbdwire.open_export(port, info['exportname'], ctx)


def test_legacy_front_still_forces_tls_and_checks_tokens(legacy):
    _lab, api = legacy
    vdi = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    info = api.VDI.get_nbd_info(vdi)[0]
    conn = nbdwire.Conn(int(info['port']))
    assert conn.handshake_flags == 1
    assert conn.option(nbdwire.OPT_LIST)[0] == nbdwire.ERR_TLS_REQD
    with pytest.raises(EOFError):
        conn.export_name(info['exportname'])
    conn.sock.close()
    with pytest.raises(EOFError):
        nbdwire.open_export(int(info['port']), '/%s?session_id=OpaqueRef:bad' % api.VDI.get_uuid(vdi),
                            nbdwire.client_context(ciphers='AES128-SHA256'))
