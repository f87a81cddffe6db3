# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The NBD client and the raw-file export against real NBD servers (qemu-nbd, nbdkit, nbd-server)."""

from __future__ import absolute_import, division, print_function

import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import errors
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    SERVER_KINDS, file_sha256, make_disk_image, rewrite_random_blocks,
)

__metaclass__ = type

pytestmark = pytest.mark.interop

K64 = 64 * 1024
SECRET_EXPORT = '/6f1e3c2a-0000-4000-8000-00000000cafe?session_id=OpaqueRef:SECRET-SESSION'


def target_for(server, **overrides):
    """The ConnectionTarget a XenServer-like caller would build: pin the server's own certificate."""
    info = server.nbd_info()
    info.update(overrides.pop('info', {}))
    kwargs = dict(tls=server.tls, timeout=10)
    if server.client_cert:  # nbd-server insists on mutual TLS
        kwargs.update(client_cert=server.client_cert, client_key=server.client_key)
    kwargs.update(overrides)
    return _export.make_target(info, **kwargs)


def dir_listing(path):
    return sorted(os.listdir(path))


@pytest.mark.parametrize('server_kind', SERVER_KINDS)
def test_full_export_equals_source(nbd_server, nbd_image, tmp_path):
    dest = str(tmp_path / 'out' / 'backup.raw')
    os.mkdir(os.path.dirname(dest))
    result = _export.export_to_file(target_for(nbd_server), dest, connections=3, requests_in_flight=2)
    assert file_sha256(dest) == nbd_image.sha256
    assert result['export_size'] == nbd_image.size
    assert result['bytes_read'] == nbd_image.size
    assert result['tls'] is nbd_server.tls
    # Zero blocks became holes: only data blocks were written.
    assert result['bytes_written'] < nbd_image.size
    assert os.stat(dest).st_blocks * 512 <= result['bytes_written'] + K64
    assert dir_listing(os.path.dirname(dest)) == ['backup.raw']


@pytest.mark.parametrize('server_kind', SERVER_KINDS)
def test_incremental_export_equals_changed_source(nbd_server_factory, server_kind, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 3 * 1024 * 1024 + 512, seed=7)
    server = nbd_server_factory(server_kind, image.path)
    dest = str(tmp_path / 'backup.raw')
    _export.export_to_file(target_for(server), dest)
    assert file_sha256(dest) == image.sha256

    changed = rewrite_random_blocks(image.path, 6, seed=3)
    # A changed block that became all zeros must be applied as zeros, not skipped.
    zeroed = image.data_blocks[1]
    with open(image.path, 'r+b') as handle:
        handle.seek(zeroed * K64)
        handle.write(bytes(K64))
    changed = sorted(set(changed) | {zeroed})
    bitmap = _cbt.encode(changed, image.size)

    result = _export.export_to_file(target_for(server), dest, changed_blocks=bitmap, connections=2)
    assert file_sha256(dest) == image.refresh()
    assert result['blocks_changed'] == len(changed)
    assert result['bytes_read'] <= len(changed) * K64
    assert result['changed'] is True
    assert dir_listing(str(tmp_path)) == ['backup.raw', 'nbd-servers', 'src.raw']


def test_empty_bitmap_changes_nothing(nbd_server_factory, nbd_image, tmp_path):
    server = nbd_server_factory('nbdkit-tls', nbd_image.path)
    dest = str(tmp_path / 'backup.raw')
    _export.export_to_file(target_for(server), dest)
    before = os.stat(dest).st_mtime_ns
    result = _export.export_to_file(target_for(server), dest, changed_blocks=_cbt.encode([], nbd_image.size))
    assert result['changed'] is False
    assert result['bytes_read'] == 0
    assert os.stat(dest).st_mtime_ns == before


def test_check_mode_reads_nothing_and_writes_nothing(nbd_server_factory, nbd_image, tmp_path):
    server = nbd_server_factory('qemu-tls', nbd_image.path)
    dest = str(tmp_path / 'backup.raw')
    result = _export.export_to_file(target_for(server), dest, check_mode=True)
    assert result['bytes_to_read'] == nbd_image.size
    assert result['bytes_read'] == 0
    assert not os.path.exists(dest)


def test_incremental_needs_existing_dest_of_the_right_size(nbd_server_factory, nbd_image, tmp_path):
    server = nbd_server_factory('nbdkit-plain', nbd_image.path)
    bitmap = _cbt.encode([0], nbd_image.size)
    dest = tmp_path / 'backup.raw'
    with pytest.raises(_export.ExportError, match='does not exist'):
        _export.export_to_file(target_for(server), str(dest), changed_blocks=bitmap)
    dest.write_bytes(b'x' * 4096)
    with pytest.raises(_export.ExportError, match='resized'):
        _export.export_to_file(target_for(server), str(dest), changed_blocks=bitmap)
    assert dest.read_bytes() == b'x' * 4096


def test_bitmap_for_another_disk_size_is_refused(nbd_server_factory, nbd_image, tmp_path):
    server = nbd_server_factory('nbdkit-plain', nbd_image.path)
    dest = str(tmp_path / 'backup.raw')
    _export.export_to_file(target_for(server), dest)
    with pytest.raises(_cbt.BitmapError, match='smaller disk'):
        _export.export_to_file(target_for(server), dest, changed_blocks=_cbt.encode([0], K64))
    assert file_sha256(dest) == nbd_image.sha256


# -- TLS verification ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize('server_kind', ['nbdkit-tls', 'qemu-tls', 'nbd-server-tls'])
def test_wrong_pinned_certificate_is_refused_before_the_export_name(nbd_server, pki, tmp_path):
    dest = str(tmp_path / 'backup.raw')
    target = target_for(nbd_server, info={'cert': pki.wrong_cert_pem, 'exportname': SECRET_EXPORT})
    with pytest.raises(errors.NbdTlsError) as caught:
        _export.export_to_file(target, dest)
    message = str(caught.value)
    assert 'not the pinned certificate' in message and caught.value.situation == 'certificate_mismatch'
    assert 'SECRET' not in message
    assert not os.path.exists(dest)


def test_reissued_certificate_with_same_key_is_accepted(nbd_server_factory, nbd_image, pki):
    server = nbd_server_factory('nbdkit-tls', nbd_image.path)
    assert pki.reissued_host_cert_pem != server.cert_pem
    conn = NbdConnection.open(target_for(server, info={'cert': pki.reissued_host_cert_pem}))
    with conn:
        assert conn.tls_verified_by == 'public_key'
        assert conn.export_size == nbd_image.size


def test_exact_certificate_pin(nbd_server_factory, nbd_image):
    server = nbd_server_factory('nbdkit-tls', nbd_image.path)
    with NbdConnection.open(target_for(server)) as conn:
        assert conn.tls_verified_by == 'certificate'
        assert conn.tls_description.startswith('TLSv1.')
        assert conn.read(0, 4096) == open(nbd_image.path, 'rb').read(4096)


@pytest.mark.parametrize('server_kind', ['qemu-tls', 'nbdkit-tls-ca'])
def test_ca_bundle_fallback_when_the_pin_does_not_match(nbd_server, pki):
    target = target_for(nbd_server, info={'cert': pki.wrong_cert_pem}, ca_path=nbd_server.ca_path)
    with NbdConnection.open(target) as conn:
        assert conn.tls_verified_by == 'ca'


def test_ca_bundle_fallback_checks_the_subject(nbd_server_factory, nbd_image, pki):
    server = nbd_server_factory('qemu-tls', nbd_image.path)
    target = target_for(server, info={'cert': '', 'subject': 'some-other-host.example'}, ca_path=server.ca_path)
    with pytest.raises(errors.NbdTlsError, match='some-other-host.example'):
        NbdConnection.open(target)


def test_ca_bundle_that_did_not_sign_the_server_is_refused(nbd_server_factory, nbd_image, pki):
    server = nbd_server_factory('nbdkit-tls', nbd_image.path)  # self-signed host certificate
    target = target_for(server, info={'cert': pki.wrong_cert_pem}, ca_path=pki.ca_cert_path)
    with pytest.raises(errors.NbdTlsError, match='CA bundle'):
        NbdConnection.open(target)


def test_tls_without_cert_or_ca_is_an_error(nbd_server_factory, nbd_image):
    server = nbd_server_factory('nbdkit-tls', nbd_image.path)
    with pytest.raises(errors.NbdTlsError, match='no pinned certificate and no CA bundle'):
        target_for(server, info={'cert': ''})


@pytest.mark.parametrize('server_kind', ['qemu-plain', 'nbdkit-plain', 'nbd-server-plain'])
def test_plain_server_with_pinned_cert_is_refused_no_downgrade(nbd_server, pki, tmp_path):
    # Like a XenServer network with purpose insecure_nbd: cert and subject are filled, STARTTLS is refused.
    target = target_for(nbd_server, info={'cert': pki.host_cert_pem, 'exportname': SECRET_EXPORT}, tls=True)
    with pytest.raises(errors.NbdTlsError) as caught:
        _export.export_to_file(target, str(tmp_path / 'backup.raw'))
    message = str(caught.value)
    # NBD terms only; the situation lets the caller say "purpose insecure_nbd ... tls: false" (nbd_advice)
    assert 'NBD_REP_ERR_POLICY' in message and 'Nothing was sent in clear text' in message
    assert caught.value.situation == 'starttls_policy' and 'tls:' not in message
    assert 'SECRET' not in message


@pytest.mark.parametrize('server_kind', ['qemu-tls', 'nbdkit-tls'])
def test_tls_server_without_tls_explains(nbd_server, tmp_path):
    target = target_for(nbd_server, tls=False)
    with pytest.raises(errors.NbdError) as caught:
        _export.export_to_file(target, str(tmp_path / 'backup.raw'))
    assert 'TLS' in str(caught.value)


@pytest.mark.parametrize('server_kind', SERVER_KINDS)
def test_unknown_export_name_gives_a_clear_error(nbd_server, tmp_path):
    target = target_for(nbd_server, info={'exportname': SECRET_EXPORT})
    with pytest.raises(errors.NbdExportRefused) as caught:
        _export.export_to_file(target, str(tmp_path / 'backup.raw'))
    message = str(caught.value)
    assert 'export name' in message
    assert 'SECRET' not in message
    assert dir_listing(str(tmp_path)) == ['disk.raw', 'nbd-servers']


def test_xenserver_current_tls_policy(nbd_server_factory, nbd_image):
    server = nbd_server_factory('qemu-tls-current', nbd_image.path)
    with NbdConnection.open(target_for(server)) as conn:
        assert conn.tls_description.startswith('TLSv1.2 ECDHE-RSA-AES')
        assert not conn.tls_legacy_cipher


def test_xenserver_legacy_tls_policy_connects_with_a_warning(nbd_server_factory, nbd_image, tmp_path):
    server = nbd_server_factory('qemu-tls-legacy', nbd_image.path)
    dest = str(tmp_path / 'backup.raw')
    result = _export.export_to_file(target_for(server), dest)
    assert file_sha256(dest) == nbd_image.sha256
    assert any('forward secrecy' in warning for warning in result['warnings'])


# -- failures during the export -------------------------------------------------------------------------------------

class KillServerAfterFirstWrite:
    """Stand-in for the file writer that SIGKILLs the server once the first data arrived."""

    def __init__(self, server, writer_class):
        self.server = server
        self.writer_class = writer_class

    def __call__(self, fd, sparse, **options):
        writer = self.writer_class(fd, sparse, **options)
        server = self.server

        def write(offset, view):
            writer(offset, view)
            if server.running:
                server.kill()
        write.bytes_written = 0
        return write


@pytest.mark.parametrize('incremental', [False, True], ids=['full', 'incremental'])
def test_server_killed_mid_export_leaves_dest_as_it_was(nbd_server_factory, tmp_path, monkeypatch, incremental):
    image = make_disk_image(tmp_path / 'src.raw', 24 * 1024 * 1024, pattern='D', seed=11)
    server = nbd_server_factory('nbdkit-tls', image.path)
    dest = tmp_path / 'backup.raw'
    dest.write_bytes(b'previous backup')
    bitmap = None
    if incremental:
        _export.export_to_file(target_for(server), str(dest))
        bitmap = _cbt.encode(range(0, 300, 3), image.size)
    before = file_sha256(str(dest))
    monkeypatch.setattr(_export, 'FileWriter', KillServerAfterFirstWrite(server, _export.FileWriter))
    with pytest.raises(errors.NbdError) as caught:
        _export.export_to_file(target_for(server, timeout=5), str(dest), changed_blocks=bitmap, connections=2,
                               requests_in_flight=2, retries=2)
    message = str(caught.value)
    assert 'gave up after 2 reconnect attempts' in message
    assert file_sha256(str(dest)) == before
    assert dir_listing(str(tmp_path)) == ['backup.raw', 'nbd-servers', 'src.raw']


def test_sixteen_connections_read_the_same_export(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 10 * 1024 * 1024, seed=5)
    server = nbd_server_factory('nbdkit-tls', image.path)
    dest = str(tmp_path / 'backup.raw')
    result = _export.export_to_file(target_for(server), dest, connections=16, requests_in_flight=8)
    assert result['connections'] == 10  # 10 MiB in 1 MiB requests keeps 10 connections busy
    assert file_sha256(dest) == image.sha256
