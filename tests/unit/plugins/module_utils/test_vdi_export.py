# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vdi_export use case without Ansible: purpose checks and which VM uses a disk (against the lab's XenAPI)."""

from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import NULL_REF, XenApiError

__metaclass__ = type


def info(purposes):
    return {'address': '192.0.2.10', 'network_names': ['backup-net'], 'purposes': purposes}


@pytest.mark.parametrize('purposes, tls, code', [
    (['insecure_nbd'], True, 'NBD_TLS_UNAVAILABLE'),
    (['nbd'], False, 'NBD_TLS_REQUIRED'),
])
def test_a_purpose_that_cannot_work_with_tls_is_refused_before_connecting(purposes, tls, code):
    with pytest.raises(XenApiError) as caught:
        _vdi_export.check_purpose(info(purposes), tls)
    assert caught.value.code == code and 'backup-net' in caught.value.message


@pytest.mark.parametrize('purposes, tls', [(['nbd'], True), (['insecure_nbd'], False),
                                           (['nbd', 'insecure_nbd'], True), (['nbd', 'insecure_nbd'], False)])
def test_matching_purposes_pass(purposes, tls):
    _vdi_export.check_purpose(info(purposes), tls)


def test_the_disk_user_is_the_vm_not_its_snapshot_or_dom0(client):
    disk_ref = client.call('VDI.get_by_name_label', 'demo-vm-disk0')[0]
    vm_ref = client.call('VM.get_by_name_label', 'demo-vm')[0]
    client.call('VM.snapshot', vm_ref, 'a snapshot VM that also has a VBD of a disk copy')
    user = _vdi_export.disk_user(client, disk_ref)
    assert user == {'vm_uuid': client.call('VM.get_uuid', vm_ref), 'vm_name': 'demo-vm', 'userdevice': '0'}
    assert _vdi_export.disk_user(client, NULL_REF) == {'vm_uuid': None, 'vm_name': None, 'userdevice': None}
