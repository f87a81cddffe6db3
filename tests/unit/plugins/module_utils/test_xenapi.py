# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The XenAPI layer against the lab's simulator, over real HTTPS XML-RPC through the XenAPI package."""

from __future__ import absolute_import, division, print_function

import threading

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import nbd_access as _nbd_access
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import model as _objects, client as _xenapi

__metaclass__ = type


def client_for(lab, **overrides):
    kwargs = dict(username=lab.info['username'], password=lab.info['password'], ca_path=lab.info['ca_cert'], timeout=30)
    kwargs.update(overrides)
    return _xenapi.XenApiClient(kwargs.pop('hostname', lab.info['url']), **kwargs)


def test_login_find_and_logout(lab):
    with client_for(lab) as client:
        assert client.logged_in
        assert client.session_id.startswith('OpaqueRef:')
        vm_ref, vm = _objects.find_vm(client, 'demo-vm')
        assert vm['name_label'] == 'demo-vm'
        disks = _objects.vm_disks(client, vm_ref)
        assert [d[1]['name_label'] for d in disks] == ['demo-vm-disk0', 'demo-vm-disk1']
        ref, record = _objects.find_vdi(client, disks[0][1]['uuid'])
        assert ref == disks[0][0] and record['name_label'] == 'demo-vm-disk0'
        session_id = client.session_id
    # Logged out on exit: the session can no longer be used.
    with pytest.raises(_xenapi.XenApiError) as caught:
        client_for(lab, username=None, password=None, session_id=session_id).open()
    assert caught.value.code == 'SESSION_INVALID'
    assert session_id not in str(caught.value)


def test_host_name_without_scheme_means_https(lab):
    hostport = lab.info['url'].split('://', 1)[1]
    with client_for(lab, hostname=hostport) as client:
        assert client.url == lab.info['url']


def test_wrong_password_is_explained_without_the_password(lab):
    with pytest.raises(_xenapi.XenApiError) as caught:
        client_for(lab, password='not-the-password').open()
    assert caught.value.code == 'SESSION_AUTHENTICATION_FAILED'
    assert caught.value.from_host
    assert 'rejected the user name or password' in str(caught.value)
    assert 'not-the-password' not in str(caught.value) + repr(caught.value.params)


def test_untrusted_certificate_says_what_to_do(lab):
    with pytest.raises(_xenapi.XenApiError, match='ca_path'):
        client_for(lab, ca_path=None).open()
    with client_for(lab, ca_path=None, validate_certs=False) as client:
        assert client.call('pool.get_all')


def test_unreachable_host(lab):
    with pytest.raises(_xenapi.XenApiError, match='cannot reach'):
        client_for(lab, hostname='https://127.0.0.1:1').open()


def test_shared_session_is_not_logged_out_by_its_user(lab):
    with client_for(lab) as owner:
        with client_for(lab, username=None, password=None, session_id=owner.session_id) as user:
            assert not user.logged_in
            assert user.call('pool.get_all')
        # still valid for its owner, until someone logs it out explicitly
        assert owner.call('pool.get_all')
        with client_for(lab, username=None, password=None, session_id=owner.session_id) as user:
            user.logout()
    with pytest.raises(_xenapi.XenApiError) as caught:
        client_for(lab, username=None, password=None, session_id=owner.session_id).open()
    assert caught.value.code == 'SESSION_INVALID'


def test_failures_become_explained_errors(lab):
    with client_for(lab) as client:
        with pytest.raises(_xenapi.XenApiError) as caught:
            client.call('VDI.get_record', 'OpaqueRef:00000000-0000-0000-0000-000000000000')
        assert caught.value.code == 'HANDLE_INVALID'
        assert 'does not exist' in caught.value.message
        with pytest.raises(_xenapi.XenApiError, match='no VDI has the uuid or name "no-such-disk"') as caught:
            _objects.find_vdi(client, 'no-such-disk')
        assert caught.value.code == 'NOT_FOUND' and not caught.value.from_host


def test_ambiguous_name_lists_the_uuids(lab):
    with client_for(lab) as client:
        ref, record = _objects.find_vdi(client, 'demo-vm-disk1', snapshot=False)
        snapshot_ref = client.call('VDI.snapshot', ref, {})
        try:
            snapshot_uuid = client.call('VDI.get_uuid', snapshot_ref)
            with pytest.raises(_xenapi.XenApiError, match='ambiguous') as caught:
                _objects.find_vdi(client, 'demo-vm-disk1')
            assert record['uuid'] in caught.value.message and snapshot_uuid in caught.value.message
            # Saying which kind is meant resolves it.
            assert _objects.find_vdi(client, 'demo-vm-disk1', snapshot=True)[0] == snapshot_ref
            assert _objects.find_vdi(client, 'demo-vm-disk1', snapshot=False)[0] == ref
        finally:
            client.call('VDI.destroy', snapshot_ref)


def test_nbd_info_explains_an_empty_list_and_names_networks(lab):
    with client_for(lab) as client:
        ref, record = _objects.find_vdi(client, 'demo-vm-disk1', snapshot=False)
        with pytest.raises(_xenapi.XenApiError, match='no network of the pool has purpose "nbd"'):
            _nbd_access.require_nbd_info(client, ref, record)
        network_ref, dummy = _objects.find_network(client, 'backup-net')
        client.call('network.add_purpose', network_ref, 'nbd')
        try:
            infos = _nbd_access.require_nbd_info(client, ref, record, network='backup-net')
            assert [i['network_names'] for i in infos] == [['backup-net']]
            assert infos[0]['purposes'] == ['nbd']
            assert isinstance(infos[0]['port'], int)
            with pytest.raises(_xenapi.XenApiError, match='no NBD address of the disk is on the network "other"'):
                _nbd_access.require_nbd_info(client, ref, record, network='other')
        finally:
            client.call('network.remove_purpose', network_ref, 'nbd')


def test_explain_keeps_unknown_codes_readable():
    assert _xenapi.explain('SOMETHING_NEW', ['a', 'b']) == "the host answered SOMETHING_NEW ['a', 'b']"
    assert 'storage backend failed: boom' in _xenapi.explain('SR_BACKEND_FAILURE_99', ['', 'boom', ''])
    assert _xenapi.normalize_url('host.example/') == 'https://host.example'
    assert _xenapi.normalize_url('http://10.0.0.1') == 'http://10.0.0.1'


class _FakeHost:
    """A minimal XenAPI endpoint over real HTTP XML-RPC: a pool member that redirects, or a coordinator.

    Only what cannot exist in the lab (a second host of the same pool) is faked here.
    """

    def __init__(self, master_address=None):
        from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer  # pylint: disable=import-outside-toplevel

        class Handler(SimpleXMLRPCRequestHandler):
            rpc_paths = ('/', '/RPC2')

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.logins = 0
        self.server = SimpleXMLRPCServer(('127.0.0.1', 0), requestHandler=Handler, allow_none=True, logRequests=False)
        self.server.register_function(self._login, 'session.login_with_password')
        self.server.register_function(self._logout, 'session.logout')
        self.server.register_function(lambda session: {'Status': 'Success', 'Value': ['OpaqueRef:pool']}, 'pool.get_all')
        self.master_address = master_address
        self.url = 'http://127.0.0.1:%d' % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _login(self, *args):
        self.logins += 1
        if self.master_address:
            return {'Status': 'Failure', 'ErrorDescription': ['HOST_IS_SLAVE', self.master_address]}
        return {'Status': 'Success', 'Value': 'OpaqueRef:11111111-2222-3333-4444-555555555555'}

    def _logout(self, *args):
        return {'Status': 'Success', 'Value': ''}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_host_is_slave_is_followed_to_the_coordinator():
    coordinator = _FakeHost()
    member = _FakeHost(master_address=coordinator.url.split('://', 1)[1])
    try:
        with _xenapi.XenApiClient(member.url, username='backup', password='secret') as client:
            assert client.url == coordinator.url
            assert client.call('pool.get_all') == ['OpaqueRef:pool']
        assert member.logins == 1 and coordinator.logins == 1
    finally:
        member.stop()
        coordinator.stop()


def test_redirect_loops_are_bounded():
    member = _FakeHost()
    member.master_address = member.url.split('://', 1)[1]  # a member that names itself as coordinator
    try:
        with pytest.raises(_xenapi.XenApiError, match='HOST_IS_SLAVE redirected more than'):
            _xenapi.XenApiClient(member.url, username='backup', password='secret').open()
    finally:
        member.stop()
