# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""xenlab start --extra-vms / --extra-vm-disk-size / --vm-tags: more VMs for roles that back up many."""

from __future__ import absolute_import, division, print_function

import os
import random
import time

import pytest

import nbdwire
from labtools import start_lab, xenlab

__metaclass__ = type

MIB = 1 << 20
BLOCK = 64 << 10
EXTRA = 8
DOM0 = 'Control domain on host: lab-host-1'
TAGS = ['--vm-tags', 'lab-vm-02=gold,daily', '--vm-tags', 'demo-vm=critical', '--vm-tags', 'lab-vm-02=daily, weekly',
        '--vm-tags', 'lab-vm-08=-starts-with-dash']


def names(count):
    return ['lab-vm-%02d' % n for n in range(1, count + 1)]


def expected_content(number, size):
    """The documented seed of lab-vm-NN-disk0: 64 KiB blocks 0, NN and the last one (indices modulo the
    block count, a short last block filled to the end) hold random.Random(1000 * NN + k) bytes, k counting
    the distinct blocks in order; zeros elsewhere."""
    blocks = -(-size // BLOCK)
    data = bytearray(size)
    for k, index in enumerate(sorted({0, number % blocks, blocks - 1})):
        offset = index * BLOCK
        length = min(BLOCK, size - offset)
        data[offset:offset + length] = random.Random(1000 * number + k).randbytes(length)
    return bytes(data)


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    """Overrides conftest's lab: eight extra VMs with the default 16M disks, and tags."""
    began = time.monotonic()
    instance = start_lab(tmp_path_factory.mktemp('lab'), '--extra-vms', str(EXTRA), *TAGS)
    instance.start_seconds = time.monotonic() - began
    yield instance
    xenlab('stop', '--dir', instance.dir)


def vm(api, name):
    refs = api.VM.get_by_name_label(name)
    assert len(refs) == 1, (name, refs)
    return refs[0]


def only_disk(api, vm_ref):
    vbds = api.VM.get_VBDs(vm_ref)
    assert len(vbds) == 1
    return api.VBD.get_record(vbds[0])


def test_starts_quickly(lab):
    # Typically well under a second (the host key dominates); the bound only catches gross regressions.
    assert lab.start_seconds < 10, lab.start_seconds


def test_extra_vms_are_running_with_one_disk(api):
    records = api.VM.get_all_records()
    live = sorted(r['name_label'] for r in records.values() if not r['is_a_snapshot'])
    assert live == sorted([DOM0, 'demo-vm', 'other-vm'] + names(EXTRA))
    host = api.host.get_all()[0]
    local = api.SR.get_by_name_label('Local storage')[0]
    for number, name in enumerate(names(EXTRA), 1):
        ref = vm(api, name)
        record = records[ref]
        assert record['power_state'] == 'Running' and record['resident_on'] == host
        assert record['is_a_template'] is False and record['is_control_domain'] is False
        assert record['domid'] == str(2 + number)
        vbd = only_disk(api, ref)
        assert vbd['userdevice'] == '0' and vbd['device'] == 'xvda' and vbd['type'] == 'Disk'
        assert vbd['mode'] == 'RW' and vbd['currently_attached'] is True and vbd['bootable'] is True
        assert vbd['empty'] is False
        vdi = api.VDI.get_record(vbd['VDI'])
        assert vdi['name_label'] == name + '-disk0' and api.VDI.get_by_name_label(name + '-disk0') == [vbd['VDI']]
        assert vdi['virtual_size'] == str(16 * MIB) and vdi['SR'] == local and vdi['type'] == 'user'
        assert vdi['on_boot'] == 'persist' and vdi['read_only'] is False and vdi['cbt_enabled'] is False
        assert vdi['is_a_snapshot'] is False and vdi['VBDs'] == [api.VBD.get_by_uuid(vbd['uuid'])]


def test_extra_disks_hold_distinct_sparse_data(lab, api):
    contents = set()
    for number, name in enumerate(names(EXTRA), 1):
        uuid = api.VDI.get_uuid(api.VDI.get_by_name_label(name + '-disk0')[0])
        content = lab.content(uuid)
        assert content == expected_content(number, 16 * MIB), name
        for index in (0, number, 255):
            assert content[index * BLOCK:(index + 1) * BLOCK] != bytes(BLOCK)
        contents.add(content)
        # Sparse on disk: only the three data blocks are allocated (plus filesystem slack).
        assert os.stat(lab.path(uuid)).st_blocks * 512 <= 4 * BLOCK
    assert len(contents) == EXTRA


def test_tags_from_start_in_records(api):
    records = api.VM.get_all_records()
    tags = dict((r['name_label'], r['tags']) for r in records.values() if not r['is_a_snapshot'])
    # Repeated --vm-tags for one VM add up, without duplicates, in the order given.
    assert tags.pop('lab-vm-02') == ['gold', 'daily', 'weekly']
    assert tags.pop('demo-vm') == ['critical']
    assert tags.pop('lab-vm-08') == ['-starts-with-dash']
    assert all(value == [] for value in tags.values()), tags
    ref = vm(api, 'lab-vm-02')
    assert api.VM.get_record(ref)['tags'] == ['gold', 'daily', 'weekly']
    assert api.VM.get_tags(ref) == ['gold', 'daily', 'weekly']


def test_tags_can_still_be_changed(api):
    ref = vm(api, 'lab-vm-05')
    api.VM.add_tags(ref, 'later')
    api.VM.add_tags(ref, 'later')  # already there: no-op
    assert api.VM.get_tags(ref) == ['later']
    tagged = vm(api, 'lab-vm-02')
    api.VM.add_tags(tagged, 'monthly')
    api.VM.remove_tags(tagged, 'gold')
    assert api.VM.get_tags(tagged) == ['daily', 'weekly', 'monthly']
    records = api.VM.get_all_records()
    assert records[ref]['tags'] == ['later'] and records[tagged]['tags'] == ['daily', 'weekly', 'monthly']
    api.VM.remove_tags(ref, 'later')
    api.VM.set_tags(tagged, ['gold', 'daily', 'weekly'])
    assert api.VM.get_tags(ref) == [] and api.VM.get_tags(tagged) == ['gold', 'daily', 'weekly']


def test_every_extra_vm_snapshots_and_exports_over_nbd(lab, api):
    backup = [n for n in api.network.get_all() if api.network.get_name_label(n) == 'backup-net'][0]
    api.network.add_purpose(backup, 'nbd')
    snapshots = []
    try:
        for number, name in enumerate(names(EXTRA), 1):
            ref = vm(api, name)
            snap_vm = api.VM.snapshot(ref, name + '-backup')
            snapshots.append(snap_vm)
            record = api.VM.get_record(snap_vm)
            assert record['is_a_snapshot'] is True and record['snapshot_of'] == ref
            assert record['tags'] == api.VM.get_tags(ref)
            vbd = only_disk(api, snap_vm)
            assert vbd['userdevice'] == '0' and vbd['currently_attached'] is False
            snap_vdi = vbd['VDI']
            assert api.VDI.get_snapshot_of(snap_vdi) == api.VDI.get_by_name_label(name + '-disk0')[0]
            assert api.VDI.get_virtual_size(snap_vdi) == str(16 * MIB)
            infos = api.VDI.get_nbd_info(snap_vdi)
            assert len(infos) == 1
            conn = nbdwire.open_export(int(infos[0]['port']), infos[0]['exportname'],
                                       nbdwire.client_context(lab.info['ca_cert']))
            try:
                assert conn.size == 16 * MIB
                exported = b''.join(conn.read(offset, 4 * MIB)[1] for offset in range(0, 16 * MIB, 4 * MIB))
            finally:
                conn.close()
            assert exported == expected_content(number, 16 * MIB), name
        # A tag added to the VM later does not change the snapshot taken before.
        api.VM.add_tags(vm(api, 'lab-vm-02'), 'after-snapshot')
        assert 'after-snapshot' not in api.VM.get_tags(snapshots[1])
        api.VM.remove_tags(vm(api, 'lab-vm-02'), 'after-snapshot')
    finally:
        api.network.remove_purpose(backup, 'nbd')
        for snap_vm in snapshots:
            vdis = [api.VBD.get_VDI(v) for v in api.VM.get_VBDs(snap_vm)]
            api.VM.destroy(snap_vm)
            for vdi in vdis:
                deadline = time.monotonic() + 10  # the NBD front's dom0 VBD goes a moment after close
                while api.VDI.get_VBDs(vdi) and time.monotonic() < deadline:
                    time.sleep(0.05)
                api.VDI.destroy(vdi)


def test_extra_vm_disk_size_option(tmp_path):
    # 200K: four 64 KiB blocks, the last one 8 KiB long. Tags also work on the control domain.
    small = start_lab(tmp_path / 'small', '--extra-vms', '2', '--extra-vm-disk-size', '200K',
                      '--vm-tags', DOM0 + '=dom0', '--vm-tags', 'lab-vm-01=a,b')
    try:
        session = small.session()
        api = session.xenapi
        for number, name in enumerate(names(2), 1):
            vdi = api.VDI.get_by_name_label(name + '-disk0')[0]
            assert api.VDI.get_virtual_size(vdi) == str(200 << 10)
            assert small.content(api.VDI.get_uuid(vdi)) == expected_content(number, 200 << 10)
        assert api.VM.get_by_name_label('lab-vm-03') == []
        assert api.VM.get_tags(vm(api, DOM0)) == ['dom0'] and api.VM.get_tags(vm(api, 'lab-vm-01')) == ['a', 'b']
        session.xenapi.session.logout()
    finally:
        xenlab('stop', '--dir', small.dir)


@pytest.mark.parametrize('args, message', [
    (['--extra-vms', '100'], 'must be 0..99'),
    (['--extra-vms', '-1'], 'must be 0..99'),
    (['--extra-vms', 'two'], 'not a number'),
    (['--extra-vm-disk-size', '1000'], 'multiple of 512'),
    (['--vm-tags', 'demo-vm'], 'NAME=TAG'),
    (['--vm-tags', 'demo-vm='], 'NAME=TAG'),
    (['--vm-tags', 'demo-vm=a,,b'], 'NAME=TAG'),
    (['--vm-tags', '=a'], 'NAME=TAG'),
    (['--vm-tags', 'lab-vm-01=a'], "no seeded VM named 'lab-vm-01'"),
    (['--extra-vms', '2', '--vm-tags', 'lab-vm-03=a'], "no seeded VM named 'lab-vm-03'"),
])
def test_bad_options_start_nothing(tmp_path, args, message):
    result = xenlab('start', '--dir', tmp_path / 'bad', *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / 'bad' / 'lab.json')
