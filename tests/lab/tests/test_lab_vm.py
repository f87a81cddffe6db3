# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VM.snapshot / VM.destroy, VBD records, VDI.create for restores."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def disks(api, vm):
    result = {}
    for vbd in api.VM.get_VBDs(vm):
        record = api.VBD.get_record(vbd)
        if record['type'] == 'Disk' and not record['empty']:
            result[record['userdevice']] = record
    return result


def test_default_lab_has_only_the_two_seeded_vms(api):
    """Without --extra-vms / --vm-tags the inventory is exactly docs/lab.md's (no lab-vm-NN, no tags)."""
    vms = dict((r['name_label'], r) for r in api.VM.get_all_records().values() if not r['is_a_snapshot'])
    assert sorted(vms) == ['Control domain on host: lab-host-1', 'demo-vm', 'other-vm']
    assert [r['domid'] for r in (vms['demo-vm'], vms['other-vm'])] == ['1', '2']
    assert all(r['tags'] == [] for r in vms.values())
    vdis = sorted(r['name_label'] for r in api.VDI.get_all_records().values() if not r['is_a_snapshot'])
    assert vdis == ['demo-vm-disk0', 'demo-vm-disk1', 'lab-tools.iso', 'other-vm-scratch']
    assert api.VM.get_by_name_label('lab-vm-01') == []


def test_vbds_link_disks_to_vms(api):
    demo = api.VM.get_by_name_label('demo-vm')[0]
    records = disks(api, demo)
    assert sorted(records) == ['0', '1']
    for record in records.values():
        assert record['VM'] == demo and record['currently_attached'] is True and record['mode'] == 'RW'
        assert api.VDI.get_VBDs(record['VDI']) == [api.VBD.get_by_uuid(record['uuid'])]
    assert api.VM.get_power_state(demo) == 'Running'


def test_vm_snapshot_and_data_destroy_flow(lab, api, failure):
    demo = api.VM.get_by_name_label('demo-vm')[0]
    disk0 = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    api.VDI.enable_cbt(disk0)
    snap_vm = api.VM.snapshot(demo, 'backup-1')
    record = api.VM.get_record(snap_vm)
    assert record['is_a_snapshot'] is True and record['snapshot_of'] == demo and record['name_label'] == 'backup-1'
    assert snap_vm in api.VM.get_snapshots(demo)
    snap_disks = disks(api, snap_vm)
    assert sorted(snap_disks) == ['0', '1']
    snap0 = snap_disks['0']['VDI']
    assert api.VDI.get_snapshot_of(snap0) == disk0 and api.VDI.get_cbt_enabled(snap0) is True
    assert snap_disks['0']['currently_attached'] is False
    assert lab.content(api.VDI.get_uuid(snap0)) == lab.content(api.VDI.get_uuid(disk0))
    # The snapshot VM's VBDs keep data_destroy from finishing (after xapi's 4 s wait).
    with failure('VDI_IN_USE') as exc:
        api.VDI.data_destroy(snap0)
    assert exc.details[1:] == [snap0, 'data_destroy']
    # ...but they do not block list_changed_blocks (VBDs of snapshot VMs are exempt).
    lab.write(api.VDI.get_uuid(disk0), 0, 1)
    snap_vm2 = api.VM.snapshot(demo, 'backup-2')
    snap0_2 = disks(api, snap_vm2)['0']['VDI']
    assert api.VDI.list_changed_blocks(snap0, snap0_2).startswith('g')
    for vm in (snap_vm, snap_vm2):
        vdis = [r['VDI'] for r in disks(api, vm).values()]
        api.VM.destroy(vm)
        for vdi in vdis:
            assert api.VDI.get_VBDs(vdi) == []  # VM.destroy keeps the VDIs
    api.VDI.data_destroy(snap0)
    assert api.VDI.get_type(snap0) == 'cbt_metadata'
    api.VDI.disable_cbt(disk0)


def test_vm_errors(api, failure):
    other = api.VM.get_by_name_label('other-vm')[0]
    with failure('VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION'):
        api.VM.snapshot(other, 'nope')
    demo = api.VM.get_by_name_label('demo-vm')[0]
    with failure('VM_BAD_POWER_STATE') as exc:
        api.VM.destroy(demo)
    # xapi's expected states for destroy (Xapi_vm_lifecycle.allowed_power_states), lowercase, joined by ', '
    assert exc.details[1:] == [demo, 'halted, suspended', 'running']


def test_vdi_create_and_vbd_for_restore(lab, api, failure):
    sr = api.SR.get_by_name_label('Local storage')[0]
    vdi = api.VDI.create({'SR': sr, 'virtual_size': str(3 << 20), 'type': 'user', 'sharable': False,
                          'read_only': False, 'other_config': {}, 'name_label': 'restored'})
    record = api.VDI.get_record(vdi)
    assert record['virtual_size'] == str(3 << 20) and record['SR'] == sr and record['cbt_enabled'] is False
    assert lab.content(record['uuid']) == bytes(3 << 20)
    iso = api.SR.get_by_name_label('ISO library')[0]
    with failure('SR_OPERATION_NOT_SUPPORTED'):
        api.VDI.create({'SR': iso, 'virtual_size': '1048576', 'type': 'user', 'sharable': False,
                        'read_only': False, 'other_config': {}, 'name_label': 'x'})
    demo = api.VM.get_by_name_label('demo-vm')[0]
    vbd = api.VBD.create({'VM': demo, 'VDI': vdi, 'userdevice': '5', 'bootable': False, 'mode': 'RW', 'type': 'Disk',
                          'unpluggable': True, 'empty': False, 'other_config': {}, 'qos_algorithm_type': '',
                          'qos_algorithm_params': {}})
    assert api.VBD.get_VDI(vbd) == vdi and api.VBD.get_currently_attached(vbd) is False
    api.VBD.destroy(vbd)
    api.VDI.destroy(vdi)


def test_snapshots_do_not_share_maps_or_tags_with_their_origin(api):
    demo = api.VM.get_by_name_label('demo-vm')[0]
    disk1 = api.VDI.get_by_name_label('demo-vm-disk1')[0]
    api.VM.add_tags(demo, 'before')
    api.VDI.add_to_other_config(disk1, 'before', '1')
    snap_vm = api.VM.snapshot(demo, 'copies')
    snap1 = disks(api, snap_vm)['1']['VDI']
    assert api.VM.get_tags(snap_vm) == ['before'] and api.VDI.get_other_config(snap1) == {'before': '1'}
    api.VM.add_tags(demo, 'after')
    api.VDI.add_to_other_config(disk1, 'after', '1')
    assert api.VM.get_tags(snap_vm) == ['before'] and api.VDI.get_other_config(snap1) == {'before': '1'}
    api.VM.remove_tags(demo, 'before')
    api.VM.remove_tags(demo, 'after')
    api.VDI.remove_from_other_config(disk1, 'before')
    api.VDI.remove_from_other_config(disk1, 'after')
    vdis = [r['VDI'] for r in disks(api, snap_vm).values()]
    api.VM.destroy(snap_vm)
    for vdi in vdis:
        api.VDI.destroy(vdi)
