# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nbd_network logic over the fake XenAPI (tests/unit/helpers/fake_xenapi.py)."""
from __future__ import absolute_import, division, print_function

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import network as _network_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.fake_xenapi import FakeXenApi

__metaclass__ = type

UUID_A = '11111111-1111-4111-8111-111111111111'
UUID_B = '22222222-2222-4222-8222-222222222222'


class FakeClient(FakeXenApi):
    """Networks and PIFs, purposes with xapi's pool-wide exclusion left to the code under test."""

    def __init__(self):
        super(FakeClient, self).__init__({
            'network': {
                'OpaqueRef:a': {'uuid': UUID_A, 'name_label': 'backup-net', 'purpose': [], 'PIFs': ['OpaqueRef:pa'],
                                'managed': True},
                'OpaqueRef:b': {'uuid': UUID_B, 'name_label': 'mgmt', 'purpose': [], 'PIFs': ['OpaqueRef:pb'],
                                'managed': True},
            },
            'PIF': {
                'OpaqueRef:pa': {'currently_attached': True, 'IP': '192.0.2.10', 'IPv6': []},
                'OpaqueRef:pb': {'currently_attached': True, 'IP': '', 'IPv6': ['2001:db8::1/64']},
            },
        })

    def _network_add_purpose(self, network, purpose):
        self.objects['network'][network]['purpose'].insert(0, purpose)
        return ''

    def _network_remove_purpose(self, network, purpose):
        self.objects['network'][network]['purpose'].remove(purpose)
        return ''

    def changes(self):
        return [method for method in self.methods() if method.endswith('_purpose') and method != 'network.get_purpose']


@pytest.fixture
def client():
    return FakeClient()


def test_add_then_idempotent(client):
    result = _network_ops.ensure_purpose(client, 'backup-net', 'nbd', present=True)
    assert result['changed'] is True
    assert result['network'] == {'uuid': UUID_A, 'name': 'backup-net', 'purpose': ['nbd'], 'addresses': ['192.0.2.10']}
    assert result['diff'] == {'before': {'purpose': []}, 'after': {'purpose': ['nbd']}}
    assert result['warnings'] == []
    again = _network_ops.ensure_purpose(client, UUID_A, 'nbd', present=True)
    assert again['changed'] is False
    assert client.changes() == ['network.add_purpose']


def test_check_mode_changes_nothing(client):
    result = _network_ops.ensure_purpose(client, 'backup-net', 'insecure_nbd', present=True, check_mode=True)
    assert result['changed'] is True
    assert result['network']['purpose'] == ['insecure_nbd']
    assert client.objects['network']['OpaqueRef:a']['purpose'] == []
    assert client.changes() == []


def test_new_purpose_is_prepended_like_xapi(client):
    client.objects['network']['OpaqueRef:a']['purpose'] = ['other']
    result = _network_ops.ensure_purpose(client, 'backup-net', 'nbd', check_mode=True)
    assert result['diff']['after']['purpose'] == ['nbd', 'other']


def test_remove(client):
    client.objects['network']['OpaqueRef:a']['purpose'] = ['nbd']
    check = _network_ops.ensure_purpose(client, 'backup-net', 'nbd', present=False, check_mode=True)
    assert check['changed'] and check['network']['purpose'] == []
    assert client.changes() == []
    result = _network_ops.ensure_purpose(client, 'backup-net', 'nbd', present=False)
    assert result['changed'] and result['diff'] == {'before': {'purpose': ['nbd']}, 'after': {'purpose': []}}
    assert _network_ops.ensure_purpose(client, 'backup-net', 'nbd', present=False)['changed'] is False


def test_removing_never_warns_about_addresses(client):
    client.objects['PIF']['OpaqueRef:pa']['IP'] = ''
    assert _network_ops.ensure_purpose(client, 'backup-net', 'nbd', present=False)['warnings'] == []


@pytest.mark.parametrize('check_mode', [False, True])
def test_incompatible_purpose_names_the_holder(client, check_mode):
    client.objects['network']['OpaqueRef:a']['purpose'] = ['nbd']
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'mgmt', 'insecure_nbd', check_mode=check_mode)
    exc = info.value
    assert exc.code == 'NETWORK_INCOMPATIBLE_PURPOSES'
    assert exc.params == ['insecure_nbd', 'nbd']
    assert 'network "backup-net" (uuid %s)' % UUID_A in exc.message
    assert 'network=%s, purpose=nbd, state=absent' % UUID_A in exc.message
    assert client.changes() == []


def test_incompatible_purpose_on_the_same_network(client):
    client.objects['network']['OpaqueRef:a']['purpose'] = ['insecure_nbd']
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    assert 'serves insecure_nbd on this network' in info.value.message


def test_incompatible_purpose_reported_by_the_host(client):
    # Another client added the other purpose between our read and our call.
    def racing_add():
        client.objects['network']['OpaqueRef:b']['purpose'] = ['insecure_nbd']
        return XenApiError(from_host=True, message='network.add_purpose failed', code='NETWORK_INCOMPATIBLE_PURPOSES',
                           params=['nbd', 'insecure_nbd'])
    client.fail['network.add_purpose'] = [racing_add()]
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    assert info.value.code == 'NETWORK_INCOMPATIBLE_PURPOSES'
    assert 'network "mgmt"' in info.value.message


def test_other_host_errors_name_the_network(client):
    client.fail['network.add_purpose'] = [XenApiError(from_host=True, message='x', code='RBAC_PERMISSION_DENIED',
                                                      params=['network.add_purpose', 'no role'])]
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    assert info.value.code == 'RBAC_PERMISSION_DENIED'
    assert 'backup-net' in info.value.message and 'lacks the role' in info.value.message


def test_unmanaged_network(client):
    client.objects['network']['OpaqueRef:a']['managed'] = False
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'backup-net', 'nbd', check_mode=True)
    assert info.value.code == 'NETWORK_UNMANAGED'


@pytest.mark.parametrize('pif', [
    {'currently_attached': True, 'IP': '', 'IPv6': []},
    {'currently_attached': False, 'IP': '192.0.2.10', 'IPv6': []},
])
def test_warns_without_an_address(client, pif):
    client.objects['PIF']['OpaqueRef:pa'] = pif
    result = _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    assert result['network']['addresses'] == []
    assert len(result['warnings']) == 1
    assert 'get_nbd_info returns an empty list' in result['warnings'][0]
    # also when nothing changed
    assert len(_network_ops.ensure_purpose(client, 'backup-net', 'nbd')['warnings']) == 1


def test_ipv6_address_counts(client):
    result = _network_ops.ensure_purpose(client, 'mgmt', 'nbd')
    assert result['network']['addresses'] == ['2001:db8::1']
    assert result['warnings'] == []


def test_network_without_pifs_warns(client):
    client.objects['network']['OpaqueRef:a']['PIFs'] = []
    assert len(_network_ops.ensure_purpose(client, 'backup-net', 'nbd')['warnings']) == 1


def test_ambiguous_and_unknown_names(client):
    client.objects['network']['OpaqueRef:b']['name_label'] = 'backup-net'
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    assert info.value.code == 'AMBIGUOUS'
    with pytest.raises(XenApiError) as info:
        _network_ops.ensure_purpose(client, 'nope', 'nbd')
    assert info.value.code == 'NOT_FOUND'


def test_rejects_unknown_purpose(client):
    with pytest.raises(XenApiError):
        _network_ops.ensure_purpose(client, 'backup-net', 'bogus')
