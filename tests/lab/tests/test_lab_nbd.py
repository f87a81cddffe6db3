# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD front: purposes, TLS, tokens, xapi-nbd's handshake shape, VDI_IN_USE, connection limit."""

from __future__ import absolute_import, division, print_function

import ssl
import time

import pytest

import nbdwire
from nbdwire import refused
from labtools import require

__metaclass__ = type


@pytest.fixture(scope='module')
def nets(api):
    byname = dict((r['name_label'], ref) for ref, r in api.network.get_all_records().items())
    return byname['backup-net'], byname['Pool-wide network associated with eth0']


@pytest.fixture(scope='module')
def snap(api):
    vdi = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    api.VDI.enable_cbt(vdi)
    return api.VDI.snapshot(vdi)


def set_purpose(api, net, purpose):
    for ref in api.network.get_all():
        for old in api.network.get_purpose(ref):
            api.network.remove_purpose(ref, old)
    if purpose:
        api.network.add_purpose(net, purpose)


def tls(lab):
    return nbdwire.client_context(lab.info['ca_cert'])


def test_no_nbd_network(lab, api, nets, snap):
    set_purpose(api, nets[0], None)
    assert api.VDI.get_nbd_info(snap) == []
    assert refused(lab.info['nbd_port'])


def test_purposes_exclusive_and_idempotent(api, nets, failure):
    backup, management = nets
    set_purpose(api, backup, 'nbd')
    api.network.add_purpose(backup, 'nbd')
    assert api.network.get_purpose(backup) == ['nbd']
    with failure('NETWORK_INCOMPATIBLE_PURPOSES') as exc:
        api.network.add_purpose(management, 'insecure_nbd')
    assert exc.details[1:] == ['insecure_nbd', 'nbd']
    with failure('NETWORK_INCOMPATIBLE_PURPOSES'):
        api.network.add_purpose(backup, 'insecure_nbd')
    api.network.add_purpose(management, 'nbd')
    api.network.remove_purpose(management, 'nbd')
    api.network.remove_purpose(management, 'nbd')  # no-op


def test_nbd_info_and_tls_read(lab, api, nets, snap):
    set_purpose(api, nets[0], 'nbd')
    assert len(lab.refresh()['pids']) == 2 and lab.info['nbd_mode'] == 'tls'  # lab.json follows the front
    infos = api.VDI.get_nbd_info(snap)
    assert len(infos) == 1
    info = infos[0]
    assert sorted(info) == ['address', 'cert', 'exportname', 'port', 'subject']
    assert info['address'] == '127.0.0.1' and info['port'] == str(lab.info['nbd_port'])
    assert info['exportname'].startswith('/%s?session_id=OpaqueRef:' % api.VDI.get_uuid(snap))
    assert info['subject'] == 'lab-host-1'
    with open(lab.info['host_cert']) as handle:
        assert info['cert'] == handle.read()
    conn = nbdwire.Conn(int(info['port']))
    assert conn.handshake_flags == 1  # FIXED_NEWSTYLE only, no NO_ZEROES
    assert conn.starttls(nbdwire.client_context(cafile=None)) == nbdwire.REP_ACK
    # Pin the certificate from get_nbd_info, as XenServer clients do.
    assert conn.sock.getpeercert(True) == ssl.PEM_cert_to_DER_cert(info['cert'])
    assert conn.sock.version() == 'TLSv1.2'
    size, flags = conn.export_name(info['exportname'])
    assert size == 8 << 20 and flags == 0x0003  # HAS_FLAGS | READ_ONLY only
    content = lab.content(api.VDI.get_uuid(snap))
    for offset in (0, (4 << 20), (8 << 20) - 65536):
        assert conn.read(offset, 65536) == (0, content[offset:offset + 65536])
    error, _data = conn.read(100, 512)
    assert error == 22  # EINVAL: reads must be 512-byte aligned
    conn.close()


def test_tls_required(lab, api, nets, snap):
    set_purpose(api, nets[0], 'nbd')
    name = api.VDI.get_nbd_info(snap)[0]['exportname']
    conn = nbdwire.Conn(lab.info['nbd_port'])
    assert conn.option(nbdwire.OPT_LIST)[0] == nbdwire.ERR_TLS_REQD
    with pytest.raises(EOFError):
        conn.export_name(name)  # export over cleartext: connection closed
    conn.sock.close()


def test_tls_with_libnbd_and_ca_file(lab, api, nets, snap, tmp_path):
    require('nbd')
    import nbd  # pylint: disable=import-outside-toplevel
    set_purpose(api, nets[0], 'nbd')
    info = api.VDI.get_nbd_info(snap)[0]
    (tmp_path / 'ca-cert.pem').write_text(info['cert'] if not lab.info['ca_signed'] else open(lab.info['ca_cert']).read())
    handle = nbd.NBD()
    handle.set_tls(nbd.TLS_REQUIRE)
    handle.set_tls_certificates(str(tmp_path))
    handle.set_export_name(info['exportname'])
    handle.connect_tcp(info['address'], info['port'])
    assert handle.is_read_only() and not handle.can_multi_conn()
    assert handle.pread(4096, 0) == lab.content(api.VDI.get_uuid(snap))[:4096]
    handle.shutdown()


def test_bad_tokens_are_refused(lab, api, nets, snap):
    set_purpose(api, nets[0], 'nbd')
    good = api.VDI.get_nbd_info(snap)[0]['exportname']
    vdi_uuid = api.VDI.get_uuid(snap)
    bad = ['/%s?session_id=OpaqueRef:00000000-0000-0000-0000-000000000000' % vdi_uuid,
           '/00000000-0000-0000-0000-000000000000?' + good.split('?')[1],
           'invalid export name']
    for name in bad:
        with pytest.raises(EOFError):
            nbdwire.open_export(lab.info['nbd_port'], name, tls(lab))
    nbdwire.open_export(lab.info['nbd_port'], good, tls(lab)).close()


def test_token_dies_with_logout(lab, api, nets, snap):
    set_purpose(api, nets[0], 'nbd')
    session = lab.session()
    name = session.xenapi.VDI.get_nbd_info(snap)[0]['exportname']
    established = nbdwire.open_export(lab.info['nbd_port'], name, tls(lab))
    session.xenapi.session.logout()
    with pytest.raises(EOFError):
        nbdwire.open_export(lab.info['nbd_port'], name, tls(lab))
    # An established connection keeps working (xapi-nbd checks the session only at open).
    assert established.read(0, 512)[0] == 0
    established.close()


def test_cbt_metadata_token_refused(lab, api, nets):
    set_purpose(api, nets[0], 'nbd')
    vdi = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    snap2 = api.VDI.snapshot(vdi)
    name = api.VDI.get_nbd_info(snap2)[0]['exportname']
    api.VDI.data_destroy(snap2)
    with pytest.raises(EOFError):
        nbdwire.open_export(lab.info['nbd_port'], name, tls(lab))
    api.VDI.destroy(snap2)


def test_open_connection_blocks_cbt_calls(lab, api, nets, snap, failure):
    set_purpose(api, nets[0], 'nbd')
    vdi = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    newer = api.VDI.snapshot(vdi)
    conn = nbdwire.open_export(lab.info['nbd_port'], api.VDI.get_nbd_info(newer)[0]['exportname'], tls(lab))
    vbds = api.VDI.get_VBDs(newer)
    assert len(vbds) == 1 and api.VBD.get_currently_attached(vbds[0]) is True
    with failure('VDI_IN_USE') as exc:
        api.VDI.list_changed_blocks(snap, newer)
    assert exc.details[1:] == [newer, 'list_changed_blocks']
    with failure('VDI_IN_USE') as exc:
        api.VDI.destroy(newer)
    assert exc.details[1:] == [newer, 'destroy']
    with failure('VDI_IN_USE') as exc:
        api.VDI.data_destroy(newer)  # waits 4 s for the VBD, then gives up
    assert exc.details[1:] == [newer, 'data_destroy']
    assert api.VDI.get_type(newer) == 'user'
    conn.close()
    # Like xapi-nbd, the VBD goes away asynchronously after the client disconnects.
    deadline = time.monotonic() + 10
    while api.VDI.get_VBDs(newer) and time.monotonic() < deadline:
        time.sleep(0.05)
    api.VDI.list_changed_blocks(snap, newer)
    api.VDI.data_destroy(newer)
    assert api.VDI.get_VBDs(newer) == []
    api.VDI.destroy(newer)


def test_seventeenth_connection_refused(lab, api, nets, snap):
    set_purpose(api, nets[0], 'nbd')
    name = api.VDI.get_nbd_info(snap)[0]['exportname']
    conns = [nbdwire.open_export(lab.info['nbd_port'], name, tls(lab)) for _index in range(16)]
    try:
        with pytest.raises((EOFError, ConnectionResetError, ssl.SSLError)):
            nbdwire.open_export(lab.info['nbd_port'], name, tls(lab))
        conns.pop().close()
        # Closing one lets a new one in (once the front has seen it close).
        deadline = time.monotonic() + 10
        while True:
            try:
                conns.append(nbdwire.open_export(lab.info['nbd_port'], name, tls(lab)))
                break
            except (EOFError, ConnectionResetError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        for conn in conns:
            conn.close()


def test_insecure_nbd_is_plain(lab, api, nets, snap):
    set_purpose(api, nets[0], 'insecure_nbd')
    info = api.VDI.get_nbd_info(snap)[0]
    assert info['cert'].startswith('-----BEGIN CERTIFICATE-----') and info['subject'] == 'lab-host-1'
    conn = nbdwire.Conn(int(info['port']))
    assert conn.option(nbdwire.OPT_STARTTLS)[0] == nbdwire.ERR_POLICY
    size, flags = conn.export_name(info['exportname'])
    assert (size, flags) == (8 << 20, 3)
    assert conn.read(0, 4096)[1] == lab.content(api.VDI.get_uuid(snap))[:4096]
    conn.close()
    set_purpose(api, nets[0], None)
    assert refused(lab.info['nbd_port'])
    assert len(lab.refresh()['pids']) == 1 and lab.info['nbd_mode'] is None  # nbdkit stopped and forgotten


def test_tls_policy_current(lab, api, nets, snap):
    set_purpose(api, nets[0], 'nbd')
    name = api.VDI.get_nbd_info(snap)[0]['exportname']
    port = lab.info['nbd_port']
    ok = nbdwire.open_export(port, name, nbdwire.client_context(ciphers='ECDHE-RSA-AES256-GCM-SHA384'))
    assert ok.sock.cipher()[0] == 'ECDHE-RSA-AES256-GCM-SHA384'
    ok.close()
    ok = nbdwire.open_export(port, name, nbdwire.client_context(ciphers='ECDHE-RSA-AES128-GCM-SHA256', curve='secp384r1'))
    ok.close()
    for ctx in (nbdwire.client_context(tls13=True),
                nbdwire.client_context(ciphers='AES128-SHA256'),
                nbdwire.client_context(ciphers='ECDHE-RSA-CHACHA20-POLY1305'),
                nbdwire.client_context(ciphers='ECDHE-RSA-AES128-GCM-SHA256', curve='prime256v1')):
        with pytest.raises((ssl.SSLError, EOFError, ConnectionResetError)):
            nbdwire.open_export(port, name, ctx)
