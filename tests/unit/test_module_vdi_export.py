# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_export run by Ansible itself (ad-hoc, -vvv) against real NBD servers: results, errors, secrets."""

from __future__ import absolute_import, division, print_function


import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    file_sha256, make_disk_image, rewrite_random_blocks,
)

__metaclass__ = type

pytestmark = pytest.mark.interop

SECRET = 'OpaqueRef:5ec2e7-5e55-10n-SECRET'


@pytest.fixture
def tls_server(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 2 * 1024 * 1024 + 512, seed=21)
    server = nbd_server_factory('nbdkit-tls', image.path, exportname=SECRET)
    return server, image


def test_full_then_incremental_through_ansible(tls_server, tmp_path):
    server, image = tls_server
    dest = str(tmp_path / 'backup.raw')
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'dest': dest, 'connections': 2}, tmp_path, verbose=True)
    assert result['failed'] is False, result
    assert result['changed'] is True
    assert result['tls'] is True
    assert result['export_size'] == image.size
    assert file_sha256(dest) == image.sha256

    changed = rewrite_random_blocks(image.path, 3, seed=9)
    args = {'nbd': server.nbd_info(), 'dest': dest, 'changed_blocks': _cbt.encode(changed, image.size)}
    result, output2 = run_module('vdi_export', args, tmp_path, verbose=True)
    assert result['changed'] is True
    assert result['blocks_changed'] == 3
    assert file_sha256(dest) == image.refresh()
    for text in (output, output2):
        assert 'SECRET' not in text
        assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in text  # the invocation shows the masked export name


def test_check_mode_writes_nothing(tls_server, tmp_path):
    server, image = tls_server
    dest = tmp_path / 'backup.raw'
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'dest': str(dest)}, tmp_path, check=True, verbose=True)
    assert result['changed'] is True
    assert result['bytes_to_read'] == image.size
    assert result['bytes_read'] == 0
    assert not dest.exists()
    assert 'SECRET' not in output


def test_wrong_certificate_fails_cleanly(tls_server, pki, tmp_path):
    server, dummy = tls_server
    info = dict(server.nbd_info(), cert=pki.wrong_cert_pem)
    result, output = run_module('vdi_export', {'nbd': info, 'dest': str(tmp_path / 'backup.raw')}, tmp_path, verbose=True)
    assert result['failed'] is True
    # the NBD layer's words, then the module's advice in XenServer terms
    assert 'not the pinned certificate' in result['msg'] and 'the one VDI.get_nbd_info returned' in result['msg']
    assert 'Traceback' not in output
    assert 'SECRET' not in output


def test_plain_export_warns(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 1024 * 1024, seed=2)
    server = nbd_server_factory('nbdkit-plain', image.path, exportname=SECRET)
    dest = str(tmp_path / 'backup.raw')
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'dest': dest, 'tls': False}, tmp_path, verbose=True)
    assert result['tls'] is False
    assert '[WARNING]: the export was read without TLS' in output
    assert file_sha256(dest) == image.sha256
    assert 'SECRET' not in output


@pytest.mark.parametrize('args, message', [
    ({'connections': 17}, 'between 1 and 16'),
    ({'nbd': {'address': '127.0.0.1', 'exportname': SECRET}}, 'no "cert"'),
    ({'changed_blocks': '***not base64***'}, 'base64'),
    ({'compress': 'zstd'}, 'compress: zstd needs repository'),
])
def test_bad_parameters_fail_with_a_message(tls_server, tmp_path, args, message):
    server, dummy = tls_server
    module_args = {'nbd': server.nbd_info(), 'dest': str(tmp_path / 'backup.raw')}
    (tmp_path / 'backup.raw').write_bytes(bytes(512))
    module_args.update(args)
    result, output = run_module('vdi_export', module_args, tmp_path, verbose=True)
    assert result['failed'] is True
    assert message in result['msg']
    assert 'Traceback' not in output
    assert 'SECRET' not in output


def test_a_compressed_repository_point_through_ansible(tls_server, tmp_path):
    server, image = tls_server
    repo = str(tmp_path / 'repo')
    result, output = run_module('vdi_export', {'nbd': server.nbd_info(), 'repository': repo, 'compress': 'zstd'},
                                tmp_path)
    assert result['failed'] is False and result['point']['compression'] == 'zstd', result
    restored = str(tmp_path / 'restored.raw')
    result, output = run_module('vdi_restore', {'repository': repo, 'dest': restored}, tmp_path)
    assert result['failed'] is False, result
    assert file_sha256(restored) == image.sha256
