# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XenAPI wire contract: sessions, envelope, generic getters, seeded inventory."""

from __future__ import absolute_import, division, print_function

import ssl
import xmlrpc.client

import pytest
import XenAPI

__metaclass__ = type


def raw(lab, method, *params):
    """Call without the SDK's session handling, to see the raw Success/Failure envelope."""
    proxy = XenAPI.Session(lab.info['url'], ignore_ssl=True)
    return getattr(proxy, method)(*params)


def test_login_and_api_version(lab):
    session = lab.session()
    assert session.handle.startswith('OpaqueRef:')
    assert session.API_version == '2.21'
    session.xenapi.session.logout()


def test_wrong_password(lab, failure):
    session = XenAPI.Session(lab.info['url'], ignore_ssl=True)
    with failure('SESSION_AUTHENTICATION_FAILED') as exc:
        session.xenapi.login_with_password(lab.info['username'], 'wrong', '2.21', 'tests')
    assert exc.details[1] == lab.info['username']


def test_session_invalid_for_unknown_and_logged_out(lab):
    reply = raw(lab, 'VDI.get_all', 'OpaqueRef:00000000-0000-0000-0000-000000000000')
    assert reply == {'Status': 'Failure',
                     'ErrorDescription': ['SESSION_INVALID', 'OpaqueRef:00000000-0000-0000-0000-000000000000']}
    session = lab.session()
    ref = session.handle
    assert raw(lab, 'VDI.get_all', ref)['Status'] == 'Success'
    session.xenapi.session.logout()
    assert raw(lab, 'VDI.get_all', ref)['ErrorDescription'] == ['SESSION_INVALID', ref]
    # The SDK forgot its credentials on logout, so it cannot re-login behind our back.
    with pytest.raises(xmlrpc.client.Fault) as exc:
        session.xenapi.VDI.get_all()
    assert exc.value.faultCode == 401


def test_envelope_types_and_endpoints(lab, api):
    session = lab.session()
    host = api.host.get_all()[0]
    assert raw(lab, 'host.get_API_version_major', session.handle, host) == {'Status': 'Success', 'Value': '2'}
    session.xenapi.session.logout()
    # '/' as well as '/RPC2' (ServerProxy posts to /RPC2 when the URL has no path).
    slash = XenAPI.Session(lab.info['url'] + '/', ignore_ssl=True)
    slash.xenapi.login_with_password(lab.info['username'], lab.info['password'], '2.21', 'tests')
    assert slash.xenapi.host.get_name_label(host) == 'lab-host-1'
    slash.xenapi.session.logout()


def test_unknown_method_and_parameter_count(api, failure):
    with failure('MESSAGE_METHOD_UNKNOWN') as exc:
        api.VDI.no_such_call()
    assert exc.details[1] == 'VDI.no_such_call'
    with failure('MESSAGE_PARAMETER_COUNT_MISMATCH') as exc:
        api.VDI.get_all('extra')
    assert exc.details[1:] == ['VDI.get_all', '1', '2']


def test_verified_tls_with_ca_cert(lab):
    ctx = ssl.create_default_context(cafile=lab.info['ca_cert'])
    session = XenAPI.Session(lab.info['url'], transport=xmlrpc.client.SafeTransport(context=ctx))
    session.xenapi.login_with_password(lab.info['username'], lab.info['password'], '2.21', 'tests')
    assert len(session.xenapi.pool.get_all()) == 1
    session.xenapi.session.logout()


def test_seeded_inventory(api):
    pool = api.pool.get_all()[0]
    assert api.pool.get_name_label(pool) == 'lab-pool'
    host = api.pool.get_master(pool)
    assert api.host.get_record(host)['hostname'] == 'lab-host-1'
    nets = dict((r['name_label'], ref) for ref, r in api.network.get_all_records().items())
    assert sorted(nets) == ['Pool-wide network associated with eth0', 'backup-net', 'lab-private']
    for name, ref in nets.items():
        pifs = api.network.get_PIFs(ref)
        # lab-private carries VM traffic only: its PIF has no host address
        assert [api.PIF.get_IP(p) for p in pifs] == ['' if name == 'lab-private' else '127.0.0.1']
        assert api.network.get_purpose(ref) == []
    local = api.SR.get_by_name_label('Local storage')[0]
    ops = api.SR.get_allowed_operations(local)
    assert {'vdi_enable_cbt', 'vdi_list_changed_blocks', 'vdi_data_destroy'} <= set(ops)
    iso = api.SR.get_by_name_label('ISO library')[0]
    assert 'vdi_enable_cbt' not in api.SR.get_allowed_operations(iso)
    second = api.SR.get_by_name_label('Second storage')[0]
    assert api.SR.get_VDIs(second) == [] and 'vdi_create' in api.SR.get_allowed_operations(second)
    demo = api.VM.get_by_name_label('demo-vm')[0]
    disks = sorted(api.VDI.get_name_label(api.VBD.get_VDI(v)) for v in api.VM.get_VBDs(demo)
                   if api.VBD.get_type(v) == 'Disk')
    assert disks == ['demo-vm-disk0', 'demo-vm-disk1']
    other = api.VM.get_by_name_label('other-vm')[0]
    other_disks = [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(other)]
    assert [api.VDI.get_on_boot(d) for d in other_disks] == ['reset']


def test_wire_types(api):
    vdi = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    record = api.VDI.get_record(vdi)
    assert record['virtual_size'] == str(8 << 20)  # ints travel as strings
    assert record['cbt_enabled'] is False  # bools as booleans
    assert isinstance(record['snapshot_time'], xmlrpc.client.DateTime)
    assert record['snapshot_of'] == 'OpaqueRef:NULL'
    assert api.VDI.get_virtual_size(vdi) == str(8 << 20)
    assert api.VDI.get_by_uuid(record['uuid']) == vdi
    assert vdi in api.VDI.get_all_records()


def test_handle_and_uuid_invalid(api, failure):
    with failure('HANDLE_INVALID') as exc:
        api.VDI.get_record('OpaqueRef:nope')
    assert exc.details[1:] == ['VDI', 'OpaqueRef:nope']
    with failure('UUID_INVALID') as exc:
        api.network.get_by_uuid('00000000-0000-0000-0000-000000000001')
    assert exc.details[1:] == ['network', '00000000-0000-0000-0000-000000000001']


def test_async_task(api):
    vdi = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    task = api.Async.VDI.snapshot(vdi)
    record = api.task.get_record(task)
    assert record['status'] == 'success'
    snap = record['result'].replace('<value>', '').replace('</value>', '')
    assert api.VDI.get_snapshot_of(snap) == vdi
    api.VDI.destroy(snap)
    api.task.destroy(task)
