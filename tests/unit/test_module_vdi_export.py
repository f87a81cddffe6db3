# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_export run by Ansible itself (ad-hoc, -vvv) against real NBD servers: results, errors, secrets."""

from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import subprocess
import sys

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _cbt
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import (
    file_sha256, make_disk_image, rewrite_random_blocks,
)

__metaclass__ = type

pytestmark = pytest.mark.interop

SECRET = 'OpaqueRef:5ec2e7-5e55-10n-SECRET'


def collections_path():
    """The directory that holds ``ansible_collections`` for the copy of the collection under test."""
    path = os.path.abspath(_cbt.__file__)  # imported through the ansible_collections tree
    while os.path.basename(path) != 'ansible_collections':
        parent = os.path.dirname(path)
        if parent == path:
            raise RuntimeError('tests are not running from an ansible_collections tree')
        path = parent
    return os.path.dirname(path)


def run_module(args, check=False, tmp_path=None):
    """Run the module through ``ansible localhost -m`` with -vvv; return (result dict, full output)."""
    ansible = shutil.which('ansible') or os.path.join(os.path.dirname(sys.executable), 'ansible')
    env = dict(os.environ,
               ANSIBLE_COLLECTIONS_PATH=collections_path(),
               ANSIBLE_LOCALHOST_WARNING='false',
               ANSIBLE_NOCOLOR='1',
               ANSIBLE_HOME=str(tmp_path / 'ansible-home'),
               ANSIBLE_LOG_PATH=str(tmp_path / 'ansible.log'))
    command = [ansible, 'localhost', '-vvv', '-m', 'xenserver.cbt_backup.vdi_export', '-a', json.dumps(args),
               '-e', 'ansible_python_interpreter=%s' % sys.executable]
    if check:
        command.append('--check')
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, check=False)
    stdout = proc.stdout.decode('utf-8', 'replace')
    output = stdout + proc.stderr.decode('utf-8', 'replace')
    if os.path.exists(str(tmp_path / 'ansible.log')):
        with open(str(tmp_path / 'ansible.log')) as log:
            output += log.read()
    assert 'localhost | ' in stdout, output
    # The ad-hoc callback prints "localhost | CHANGED => {json}"; the JSON runs to the end of the output.
    marker = stdout.index('localhost | ')
    arrow = stdout.index('=>', marker)
    result = json.loads(stdout[arrow + 2:])
    result['failed'] = 'FAILED!' in stdout[marker:arrow]
    return result, output


@pytest.fixture
def tls_server(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 2 * 1024 * 1024 + 512, seed=21)
    server = nbd_server_factory('nbdkit-tls', image.path, exportname=SECRET)
    return server, image


def test_full_then_incremental_through_ansible(tls_server, tmp_path):
    server, image = tls_server
    dest = str(tmp_path / 'backup.raw')
    result, output = run_module({'nbd': server.nbd_info(), 'dest': dest, 'connections': 2}, tmp_path=tmp_path)
    assert result['failed'] is False, result
    assert result['changed'] is True
    assert result['tls'] is True
    assert result['export_size'] == image.size
    assert file_sha256(dest) == image.sha256

    changed = rewrite_random_blocks(image.path, 3, seed=9)
    args = {'nbd': server.nbd_info(), 'dest': dest, 'changed_blocks': _cbt.encode(changed, image.size)}
    result, output2 = run_module(args, tmp_path=tmp_path)
    assert result['changed'] is True
    assert result['blocks_changed'] == 3
    assert file_sha256(dest) == image.refresh()
    for text in (output, output2):
        assert 'SECRET' not in text
        assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in text  # the invocation shows the masked export name


def test_check_mode_writes_nothing(tls_server, tmp_path):
    server, image = tls_server
    dest = tmp_path / 'backup.raw'
    result, output = run_module({'nbd': server.nbd_info(), 'dest': str(dest)}, check=True, tmp_path=tmp_path)
    assert result['changed'] is True
    assert result['bytes_to_read'] == image.size
    assert result['bytes_read'] == 0
    assert not dest.exists()
    assert 'SECRET' not in output


def test_wrong_certificate_fails_cleanly(tls_server, pki, tmp_path):
    server, dummy = tls_server
    info = dict(server.nbd_info(), cert=pki.wrong_cert_pem)
    result, output = run_module({'nbd': info, 'dest': str(tmp_path / 'backup.raw')}, tmp_path=tmp_path)
    assert result['failed'] is True
    assert 'not the one from VDI.get_nbd_info' in result['msg']
    assert 'Traceback' not in output
    assert 'SECRET' not in output


def test_plain_export_warns(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 1024 * 1024, seed=2)
    server = nbd_server_factory('nbdkit-plain', image.path, exportname=SECRET)
    dest = str(tmp_path / 'backup.raw')
    result, output = run_module({'nbd': server.nbd_info(), 'dest': dest, 'tls': False}, tmp_path=tmp_path)
    assert result['tls'] is False
    assert '[WARNING]: the export was read without TLS' in output
    assert file_sha256(dest) == image.sha256
    assert 'SECRET' not in output


@pytest.mark.parametrize('args, message', [
    ({'connections': 17}, 'between 1 and 16'),
    ({'nbd': {'address': '127.0.0.1', 'exportname': SECRET}}, 'no "cert"'),
    ({'changed_blocks': '***not base64***'}, 'base64'),
])
def test_bad_parameters_fail_with_a_message(tls_server, tmp_path, args, message):
    server, dummy = tls_server
    module_args = {'nbd': server.nbd_info(), 'dest': str(tmp_path / 'backup.raw')}
    (tmp_path / 'backup.raw').write_bytes(bytes(512))
    module_args.update(args)
    result, output = run_module(module_args, tmp_path=tmp_path)
    assert result['failed'] is True
    assert message in result['msg']
    assert 'Traceback' not in output
    assert 'SECRET' not in output
