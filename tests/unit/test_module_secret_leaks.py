# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""No session ref in -vvv output, on success or failure; api_timeout range (issue 10, items 7 and 8)."""

from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import client as _xenapi
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import lab_connection as connection, run_module

__metaclass__ = type


@pytest.fixture
def session_ref(lab):
    client = _xenapi.XenApiClient(lab.info['url'], username=lab.info['username'], password=lab.info['password'],
                                  ca_path=lab.info['ca_cert'], timeout=30)
    client.open()
    try:
        yield client.session_id
    finally:
        client.close()


def test_vdi_nbd_info_never_prints_the_session_ref(lab, session_ref, tmp_path):
    assert session_ref and session_ref.startswith('OpaqueRef:')
    args = {'hostname': lab.info['url'], 'ca_path': lab.info['ca_cert'], 'session_id': session_ref}
    failed, output = run_module('vdi_nbd_info', dict(args, vdi='no-such-disk'), tmp_path, verbose=True)
    assert failed['failed'] is True and failed['error_code'] == 'NOT_FOUND', output
    assert session_ref not in output and 'Traceback' not in output
    no_address, output = run_module('vdi_nbd_info', dict(args, vdi='demo-vm-disk0'), tmp_path, verbose=True)
    assert no_address['error_code'] == 'NO_NBD_ADDRESS' and session_ref not in output, output
    purpose, output = run_module('nbd_network', dict(connection(lab), network='backup-net', purpose='nbd'), tmp_path)
    assert purpose['failed'] is False, output
    ok, output = run_module('vdi_nbd_info', dict(args, vdi='demo-vm-disk0'), tmp_path, verbose=True)
    assert ok['failed'] is False, output
    assert session_ref not in output
    assert 'no longer work' not in output, 'a shared session keeps the export names alive: no warning'
    own, output = run_module('vdi_nbd_info', dict(connection(lab), vdi='demo-vm-disk0'), tmp_path)
    assert own['failed'] is False and 'export names it returns no longer work' in output, output


@pytest.mark.parametrize('value', ['nan', 'inf', '0', '-1'])
def test_api_timeout_out_of_range_is_invalid_option(lab, tmp_path, value):
    result, output = run_module('vdi_nbd_info', dict(connection(lab), vdi='demo-vm-disk0', api_timeout=value),
                                tmp_path, verbose=True)
    assert result['failed'] is True and result['error_code'] == 'INVALID_OPTION', output
    assert 'api_timeout' in result['msg'] and 'Traceback' not in output
    assert lab.info['password'] not in output
