# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_export's connection options and an expired pinned certificate, run by Ansible and at the library level.

Out-of-range options (``timeout`` nan/inf/0/-1, ``port`` 0/70000, a negative ``min_rate_mib_s``) fail with
``error_code: INVALID_OPTION`` and a message naming the option and its range, before anything is connected to or
written. A pinned certificate that has expired is accepted (pinning is the trust) with a warning giving the expiry
date in RFC 3339 UTC, so that the admin renews the host certificate.
"""

from __future__ import absolute_import, division, print_function

import datetime
import inspect
import re

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd import errors, tls
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import (
    ConnectionTarget,
    NbdConnection,
    validate_options,
)
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_nbd_server import FakeNbdServer, image_bytes
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    file_sha256, make_disk_image, start_nbdkit,
)
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.pki import make_expired_host_cert

__metaclass__ = type

SECRET = 'OpaqueRef:0b7e-aa31-SECRET'
RFC3339_Z = re.compile(r'\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b')

pytestmark = pytest.mark.timeout(300)


# -- validate_options (the one check every module calls) ----------------------------------------------


@pytest.mark.parametrize('kwargs, fragments', [
    (dict(port=0), ['port must be an integer from 1 to 65535', 'not 0']),
    (dict(port=70000), ['port must be an integer from 1 to 65535', 'not 70000']),
    (dict(port=-1), ['port', 'not -1']),
    (dict(port='http'), ['port', 'not http']),
    (dict(port=True), ['port']),
    (dict(port=10809.5), ['port']),
    (dict(timeout=float('nan')), ['timeout must be a finite number of seconds above 0 and at most 86400', 'not nan']),
    (dict(timeout=float('inf')), ['timeout', 'not inf']),
    (dict(timeout=float('-inf')), ['timeout', 'not -inf']),
    (dict(timeout=0), ['timeout', 'not 0']),
    (dict(timeout=-1.0), ['timeout', 'not -1.0']),
    (dict(timeout=86401), ['timeout', 'at most 86400']),
    (dict(timeout='soon'), ['timeout', 'not soon']),
    (dict(min_rate_mib_s=-0.5), ['min_rate_mib_s must be a finite number of MiB/s, 0 or more', 'not -0.5']),
    (dict(min_rate_mib_s=float('nan')), ['min_rate_mib_s', 'not nan']),
    (dict(min_rate_mib_s=float('inf')), ['min_rate_mib_s', 'not inf']),
])
def test_validate_options_refuses_out_of_range_values(kwargs, fragments):
    with pytest.raises(errors.NbdOptionError) as info:
        validate_options(**kwargs)
    assert info.value.code == 'INVALID_OPTION'
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize('kwargs', [
    dict(), dict(port=1), dict(port=65535), dict(port='10809'), dict(port=' 10809 '), dict(timeout=0.001),
    dict(timeout=86400), dict(timeout='30'), dict(min_rate_mib_s=0), dict(min_rate_mib_s=1000.0),
])
def test_validate_options_accepts_values_in_range(kwargs):
    validate_options(**kwargs)


def test_connection_target_validates_too():
    # The snapshot form takes its port from VDI.get_nbd_info (a string): it is checked there as well.
    with pytest.raises(errors.NbdOptionError):
        ConnectionTarget('127.0.0.1', '70000', SECRET)
    with pytest.raises(errors.NbdOptionError):
        _export.make_target({'address': '127.0.0.1', 'port': 0, 'exportname': SECRET}, tls=False)
    assert ConnectionTarget('127.0.0.1', '10809', SECRET).port == 10809
    assert _export.make_target({'address': '127.0.0.1', 'exportname': SECRET}, tls=False).port == 10809


def test_every_nbd_error_has_a_code():
    expected = {
        'NbdError': 'NBD_ERROR',
        'NbdOptionError': 'INVALID_OPTION',
        'NbdConnectError': 'NBD_CONNECT_FAILED',
        'NbdProtocolError': 'NBD_PROTOCOL_ERROR',
        'NbdNegotiationError': 'NBD_NEGOTIATION_FAILED',
        'NbdHandshakeInterrupted': 'NBD_HANDSHAKE_INTERRUPTED',
        'NbdHandshakeTimeout': 'NBD_TIMEOUT',
        'NbdTlsError': 'NBD_TLS_FAILED',
        'NbdExportRefused': 'NBD_EXPORT_REFUSED',
        'NbdConnectionLost': 'NBD_CONNECTION_LOST',
        'NbdTimeout': 'NBD_TIMEOUT',
        'NbdServerError': 'NBD_SERVER_ERROR',
    }
    classes = dict((name, cls) for name, cls in inspect.getmembers(errors, inspect.isclass)
                   if issubclass(cls, errors.NbdError))
    assert sorted(classes) == sorted(expected)
    for name, cls in classes.items():
        assert cls.code == expected[name], name
    assert errors.NbdServerError('x', error=5).code == 'NBD_SERVER_ERROR'


# -- through the module: out-of-range options ---------------------------------------------------------


@pytest.mark.parametrize('args, fragment', [
    ({'timeout': 'nan'}, 'timeout must be a finite number of seconds above 0'),
    ({'timeout': 'inf'}, 'not inf'),
    ({'timeout': -1}, 'not -1.0'),
    ({'timeout': 0}, 'not 0.0'),
    ({'port': 0}, 'port must be an integer from 1 to 65535, not 0'),
    ({'port': 70000}, 'port must be an integer from 1 to 65535, not 70000'),
    ({'min_rate_mib_s': -1}, 'min_rate_mib_s must be a finite number of MiB/s, 0 or more'),
    ({'min_rate_mib_s': 'nan'}, 'min_rate_mib_s'),
])
def test_out_of_range_options_fail_with_invalid_option(tmp_path, args, fragment):
    dest = tmp_path / 'out' / 'backup.raw'
    dest.parent.mkdir()
    with FakeNbdServer(image_bytes(64 * 1024)) as server:
        nbd = server.nbd_info(SECRET)
        if 'port' in args:
            nbd['port'] = args.pop('port')
        module_args = dict({'nbd': nbd, 'dest': str(dest), 'tls': False}, **args)
        result, output = run_module('vdi_export', module_args, tmp_path, verbose=True)
    assert result['failed'] is True
    assert result['error_code'] == 'INVALID_OPTION'
    assert result['error_type'] == 'NbdOptionError'
    assert fragment in result['msg']
    assert 'Traceback' not in output
    assert SECRET not in output
    assert server.connections == 0  # refused before connecting
    assert list(dest.parent.iterdir()) == []  # nothing written


# -- an expired pinned certificate -------------------------------------------------------------------


@pytest.fixture
def expired_server(nbd_server_factory, tmp_path):
    """nbdkit (TLS required) presenting a self-signed host certificate that expired 30 days ago."""
    expired = make_expired_host_cert(tmp_path / 'expired-host')
    image = make_disk_image(tmp_path / 'src.raw', 1024 * 1024 + 512, seed=5)
    server = start_nbdkit(image.path, tmp_path / 'nbdkit-expired', exportname=SECRET, kind='nbdkit-tls-expired',
                          extra_args=['--tls=require', '--tls-certificates=%s' % expired.directory])
    nbd_server_factory.servers.append(server)  # stopped with the factory's servers at teardown
    nbd = dict(server.nbd_info(), cert=expired.cert_pem, subject=expired.host_name)
    return nbd, image, expired


def _der(pem):
    import ssl
    return ssl.PEM_cert_to_DER_cert(pem)


def test_not_after_without_cryptography_matches_cryptography(pki, tmp_path):
    expired = make_expired_host_cert(tmp_path / 'expired')
    pems = [expired.cert_pem, pki.host_cert_pem, pki.ca_cert_pem, pki.server_cert_pem, pki.client_cert_pem,
            pki.reissued_host_cert_pem]
    for pem in pems:
        der = _der(pem)
        assert tls.der_not_after(der) == tls.certificate_not_after(der)
    assert tls.certificate_not_after(_der(expired.cert_pem)) == expired.not_after
    assert tls.der_not_after(b'\x30\x03\x02\x01') is None
    assert tls.der_not_after(b'') is None


def test_expiry_warning_only_for_an_expired_certificate(pki, tmp_path):
    expired = make_expired_host_cert(tmp_path / 'expired')
    message = tls.expiry_warning(_der(expired.cert_pem), 'NBD server 192.0.2.1:10809')
    assert message.startswith('NBD server 192.0.2.1:10809 presented a TLS certificate that expired on %s'
                              % expired.not_after_rfc3339)
    assert 'renew the server certificate' in message
    assert tls.expiry_warning(_der(pki.host_cert_pem), 'NBD server 192.0.2.1:10809') is None
    later = expired.not_after - datetime.timedelta(seconds=1)
    assert tls.expiry_warning(_der(expired.cert_pem), 'x', now=later) is None


@pytest.mark.interop
def test_library_accepts_an_expired_pinned_certificate_with_a_warning(expired_server):
    nbd, image, expired = expired_server
    with NbdConnection.open(_export.make_target(nbd, tls=True)) as conn:
        assert conn.tls_verified_by == 'certificate'
        assert len(conn.tls_warnings) == 1
        assert 'expired on %s' % expired.not_after_rfc3339 in conn.tls_warnings[0]
        assert conn.read(0, 4096) == open(image.path, 'rb').read(4096)


@pytest.mark.interop
def test_a_valid_pinned_certificate_gives_no_warning(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 512 * 1024, seed=6)
    server = nbd_server_factory('nbdkit-tls', image.path, exportname=SECRET)
    with NbdConnection.open(_export.make_target(server.nbd_info(), tls=True)) as conn:
        assert conn.tls_verified_by == 'certificate'
        assert conn.tls_warnings == []


@pytest.mark.interop
def test_vdi_export_with_an_expired_pinned_certificate_succeeds_and_warns(expired_server, tmp_path):
    nbd, image, expired = expired_server
    dest = str(tmp_path / 'backup.raw')
    result, output = run_module('vdi_export', {'nbd': nbd, 'dest': dest}, tmp_path, verbose=True)
    assert result['failed'] is False, result
    assert result['tls'] is True
    assert file_sha256(dest) == image.sha256
    warnings = [line for line in output.splitlines() if '[WARNING]' in line and 'expired on' in line]
    assert warnings, output
    assert expired.not_after_rfc3339 in warnings[0]
    assert RFC3339_Z.search(warnings[0])
    assert 'xe host-refresh-server-certificate' in output  # the XenServer remedy the export adds
    if 'warnings' in result:
        assert any(expired.not_after_rfc3339 in w for w in result['warnings'])
    assert 'Traceback' not in output
    assert SECRET not in output


@pytest.mark.interop
def test_vdi_export_check_mode_also_warns_about_the_expired_certificate(expired_server, tmp_path):
    nbd, dummy, expired = expired_server
    dest = tmp_path / 'backup.raw'
    result, output = run_module('vdi_export', {'nbd': nbd, 'dest': str(dest)}, tmp_path, check=True)
    assert result['failed'] is False, result
    assert not dest.exists()
    assert 'expired on %s' % expired.not_after_rfc3339 in output
    assert SECRET not in output
