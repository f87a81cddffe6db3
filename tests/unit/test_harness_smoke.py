# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Smoke tests for the NBD interop harness: every server kind serves the image bytes, refuses wrong names, etc."""

from __future__ import absolute_import, division, print_function

import hashlib
import os
import ssl
import subprocess

import pytest

from cryptography import x509

from ansible_collections.xenserver.cbt_backup.tests.unit.helpers import nbd_servers
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    BLOCK,
    SERVER_KINDS,
    MissingBinaryError,
    file_sha256,
    make_disk_image,
    require_binary,
    rewrite_random_blocks,
    starttls_probe,
)
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.pki import spki_sha256

__metaclass__ = type

nbd = pytest.importorskip('nbd', reason='python3-libnbd is needed for the harness smoke tests')

pytestmark = pytest.mark.interop


def _libnbd_read(uri, size=None):
    """Read a whole export with libnbd; return (size, sha256)."""
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    try:
        total = h.get_size()
        if size is not None:
            assert total == size
        digest = hashlib.sha256()
        off = 0
        while off < total:
            n = min(1 << 20, total - off)
            digest.update(h.pread(n, off))
            off += n
        return total, digest.hexdigest()
    finally:
        h.shutdown()


def _der(pem):
    return ssl.PEM_cert_to_DER_cert(pem)


def test_each_kind_serves_image(nbd_server, nbd_image):
    info = nbd_server.nbd_info()
    assert info['address'] == '127.0.0.1'
    assert info['port'] == str(nbd_server.port)
    assert info['exportname'] == 'vdisk0'
    assert set(info) == {'address', 'port', 'exportname', 'cert', 'subject'}
    if nbd_server.tls:
        assert info['cert'].startswith('-----BEGIN CERTIFICATE-----')
        assert info['subject'] == nbd_server.subject
    size, digest = _libnbd_read(nbd_server.uri(), nbd_image.size)
    assert size == nbd_image.size
    assert digest == nbd_image.sha256


def test_each_kind_refuses_wrong_export_name(nbd_server):
    with pytest.raises(nbd.Error):
        _libnbd_read(nbd_server.uri(exportname='no-such-export'))


@pytest.mark.parametrize('server_kind', ['qemu-plain', 'nbdkit-tls', 'nbd-server-tls'])
def test_nbdcopy_cli(nbd_server, nbd_image, tmp_path):
    nbdcopy = require_binary('nbdcopy')
    out = tmp_path / 'copy.raw'
    subprocess.run([nbdcopy, nbd_server.uri(), str(out)], check=True, timeout=60)
    assert file_sha256(str(out)) == nbd_image.sha256


@pytest.mark.parametrize('server_kind', ['nbdkit-tls', 'nbdkit-tls-ca', 'qemu-tls', 'nbd-server-tls'])
def test_tls_servers_refuse_plaintext_and_wrong_ca(nbd_server, pki):
    plain = 'nbd://127.0.0.1:%d/vdisk0' % nbd_server.port
    with pytest.raises(nbd.Error):
        _libnbd_read(plain)
    wrong = nbd_server.uri().split('?')[0] + '?tls-certificates=' + pki.libnbd_wrong_dir
    with pytest.raises(nbd.Error):
        _libnbd_read(wrong)


@pytest.mark.parametrize('server_kind', ['nbd-server-tls'])
def test_nbd_server_tls_needs_client_cert(nbd_server, pki):
    assert nbd_server.client_cert and nbd_server.client_key
    no_client_cert = nbd_server.uri().split('?')[0] + '?tls-certificates=' + pki.libnbd_ca_dir
    with pytest.raises(nbd.Error):
        _libnbd_read(no_client_cert)
    ctx = ssl.create_default_context(cafile=nbd_server.ca_path)
    ctx.load_cert_chain(nbd_server.client_cert, nbd_server.client_key)
    result = starttls_probe(nbd_server.port, ctx, server_hostname=nbd_server.subject)
    assert result['peer_cert_der'] == _der(nbd_server.cert_pem)


@pytest.mark.parametrize('server_kind', ['nbdkit-tls'])
def test_self_signed_host_cert_pins(nbd_server, pki):
    assert nbd_server.cert_pem == pki.host_cert_pem
    assert nbd_server.ca_path is None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    result = starttls_probe(nbd_server.port, ctx)
    assert result['version'] == 'TLSv1.2'
    assert result['peer_cert_der'] == _der(pki.host_cert_pem)
    assert result['peer_cert_der'] != _der(pki.reissued_host_cert_pem)


def test_qemu_tls_priority_current(nbd_server_factory, nbd_image, pki):
    server = nbd_server_factory('qemu-tls-current', nbd_image.path)
    ctx = ssl.create_default_context(cafile=server.ca_path)
    result = starttls_probe(server.port, ctx, server_hostname=server.subject)
    assert result['version'] == 'TLSv1.2'
    assert result['cipher'] in ('ECDHE-RSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES128-GCM-SHA256')
    assert result['peer_cert_der'] == _der(pki.server_cert_pem)
    assert _libnbd_read(server.uri(), nbd_image.size)[1] == nbd_image.sha256


def test_qemu_tls_priority_legacy(nbd_server_factory, nbd_image):
    server = nbd_server_factory('qemu-tls-legacy', nbd_image.path)
    # A forward-secret-only client (like xapi's current policy) cannot talk to the legacy policy ...
    ecdhe_ctx = ssl.create_default_context(cafile=server.ca_path)
    ecdhe_ctx.set_ciphers('ECDHE+AESGCM')
    with pytest.raises((ssl.SSLError, OSError, EOFError)):
        starttls_probe(server.port, ecdhe_ctx, server_hostname=server.subject)
    # ... one that also offers plain-RSA AES128-SHA256 can (whether Python's default list has it depends on the build).
    legacy_ctx = ssl.create_default_context(cafile=server.ca_path)
    legacy_ctx.set_ciphers('ECDHE+AESGCM:AES128-SHA256')
    result = starttls_probe(server.port, legacy_ctx, server_hostname=server.subject)
    assert result['version'] == 'TLSv1.2'
    assert result['cipher'] == 'AES128-SHA256'
    assert server.running


@pytest.mark.parametrize('server_kind', ['qemu-plain', 'nbdkit-tls', 'nbd-server-plain'])
def test_kill_and_stop(nbd_server):
    assert nbd_server.running
    nbd_server.kill()
    assert not nbd_server.running
    with pytest.raises(nbd.Error):
        _libnbd_read(nbd_server.uri())
    nbd_server.stop()  # idempotent after kill


def test_context_manager_stops(nbd_image, pki, tmp_path):
    with nbd_servers.start_server('nbd-server-plain', nbd_image.path, tmp_path / 'cm', pki) as server:
        pid = server.pid
        assert _libnbd_read(server.uri())[1] == nbd_image.sha256
    assert not server.running
    assert not os.path.exists('/proc/%d/cmdline' % pid) or not nbd_servers.port_is_listening(server.port)


def test_disk_image_helpers(tmp_path):
    size = 40 * BLOCK + 1000
    a = make_disk_image(tmp_path / 'a.raw', size, pattern='DDZ0', seed=7)
    b = make_disk_image(tmp_path / 'b.raw', size, pattern='DDZ0', seed=7)
    c = make_disk_image(tmp_path / 'c.raw', size, pattern='DDZ0', seed=8)
    assert a.sha256 == b.sha256 != c.sha256
    assert os.path.getsize(a.path) == size
    assert a.blocks[-1] == 'D' and a.hole_blocks and a.zero_blocks
    assert os.stat(a.path).st_blocks * 512 < size  # holes are real holes
    with open(a.path, 'rb') as f:
        for i in a.zero_blocks:
            f.seek(i * BLOCK)
            assert f.read(BLOCK) == b'\0' * BLOCK
    before = open(a.path, 'rb').read()
    changed = rewrite_random_blocks(a.path, 5, seed=3)
    assert changed == rewrite_random_blocks(b.path, 5, seed=3)
    assert changed == sorted(changed) and len(set(changed)) == 5
    after = open(a.path, 'rb').read()
    assert len(after) == size
    diff = [i for i in range(len(a.blocks)) if before[i * BLOCK:(i + 1) * BLOCK] != after[i * BLOCK:(i + 1) * BLOCK]]
    assert diff == changed
    assert a.refresh() == file_sha256(b.path)


def test_missing_binary_policy(monkeypatch):
    monkeypatch.setattr(nbd_servers.shutil, 'which', lambda name: None)
    monkeypatch.setenv('CI', 'true')
    with pytest.raises(MissingBinaryError, match='qemu-utils'):
        require_binary('qemu-nbd')
    monkeypatch.delenv('CI')
    with pytest.raises(pytest.skip.Exception, match='not found'):
        require_binary('qemu-nbd')


def test_pki(pki):
    host = x509.load_pem_x509_certificate(pki.host_cert_pem.encode())
    again = x509.load_pem_x509_certificate(pki.reissued_host_cert_pem.encode())
    assert host.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = host.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [pki.host_name]
    assert spki_sha256(pki.host_cert_pem) == spki_sha256(pki.reissued_host_cert_pem)
    assert host.serial_number != again.serial_number
    assert spki_sha256(pki.wrong_cert_pem) != spki_sha256(pki.host_cert_pem)
    ca = x509.load_pem_x509_certificate(pki.ca_cert_pem.encode())
    for pem in (pki.server_cert_pem, pki.client_cert_pem):
        x509.load_pem_x509_certificate(pem.encode()).verify_directly_issued_by(ca)
    for name in ('ca-cert.pem', 'server-cert.pem', 'server-key.pem'):
        assert os.path.exists(os.path.join(pki.ca_dir, name))
        assert os.path.exists(os.path.join(pki.host_dir, name))


def test_all_kinds_listed():
    assert len(SERVER_KINDS) == 7
