# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_snapshot's marker (other_config ``xenserver.cbt_backup.snapshot``) against the lab, over real HTTPS XML-RPC.

First what the marking relies on, checked on the lab with plain XenAPI: VDI.add_to_other_config and
remove_from_other_config exist, a duplicate key is refused, and a snapshot copies its disk's other_config (so a
marker on a disk would be inherited). Then the marks vdi_snapshot sets, for one disk and for a VM.
"""

from __future__ import absolute_import, division, print_function

import datetime

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import model as _objects, client as _xenapi
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import snapshot as _snapshot_ops

__metaclass__ = type

MARKER = 'xenserver.cbt_backup.snapshot'


@pytest.fixture
def api(lab):
    session = lab.session()
    try:
        yield session.xenapi
    finally:
        session.xenapi.session.logout()


def disks_of(client, vm='demo-vm'):
    vm_ref, dummy = _objects.find_vm(client, vm)
    return [(ref, record) for ref, record, dummy2 in _objects.vm_disks(client, vm_ref)]


def other_config(client, uuid):
    return client.call('VDI.get_other_config', client.call('VDI.get_by_uuid', uuid))


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def parse(text):
    return datetime.datetime.strptime(text, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)


def test_the_marker_key_is_the_documented_one():
    assert _snapshot_ops.SNAPSHOT_MARKER == MARKER


# ----- what the lab does (the marking relies on it) ------------------------------------------------------------

def test_the_lab_adds_and_removes_other_config_keys_of_a_vdi(client, api):
    (disk_ref, disk), dummy = disks_of(client)
    ref = api.VDI.get_by_uuid(disk['uuid'])
    api.VDI.add_to_other_config(ref, 'probe', 'one')
    assert api.VDI.get_other_config(ref)['probe'] == 'one'
    with pytest.raises(_xenapi.XenApiError) as caught:
        client.call('VDI.add_to_other_config', disk_ref, 'probe', 'two')  # xapi refuses a key that is there
    assert caught.value.code == 'MAP_DUPLICATE_KEY' and caught.value.from_host
    assert caught.value.params == ['VDI', 'other_config', disk_ref, 'probe']
    assert api.VDI.get_other_config(ref)['probe'] == 'one'
    api.VDI.remove_from_other_config(ref, 'probe')
    api.VDI.remove_from_other_config(ref, 'probe')  # removing a key that is not there is no error
    assert 'probe' not in api.VDI.get_other_config(ref)


def test_a_snapshot_copies_its_disks_other_config_and_keeps_its_own(client, api):
    (disk_ref, disk), dummy = disks_of(client)
    ref = api.VDI.get_by_uuid(disk['uuid'])
    api.VDI.add_to_other_config(ref, 'inherited', 'yes')
    snap = api.VDI.snapshot(ref, {})
    assert api.VDI.get_other_config(snap)['inherited'] == 'yes'
    api.VDI.remove_from_other_config(ref, 'inherited')  # the disk's change does not reach the snapshot
    assert api.VDI.get_other_config(snap)['inherited'] == 'yes'
    api.VDI.destroy(snap)


# ----- the marks of vdi_snapshot -------------------------------------------------------------------------------

def test_a_disk_snapshot_is_marked_with_the_time_it_was_taken_and_the_disk_is_not(client):
    (disk_ref, disk), dummy = disks_of(client)
    before = utc_now()
    snap = _snapshot_ops.snapshot_vdi(client, disk['uuid'])['snapshots'][0]
    after = utc_now()
    marks = other_config(client, snap['uuid'])
    assert set(marks) == {MARKER}
    assert before <= parse(marks[MARKER]) <= after
    assert MARKER not in other_config(client, disk['uuid'])
    assert snap['snapshot_of'] == disk['uuid'] and snap['time']  # the description is as before


def test_every_disk_snapshot_of_a_vm_snapshot_is_marked_with_one_time(client):
    disks = disks_of(client)
    before = utc_now()
    result = _snapshot_ops.snapshot_vm(client, 'demo-vm')
    after = utc_now()
    snaps = result['snapshots']
    assert [s['snapshot_of'] for s in snaps] == [disk['uuid'] for dummy, disk in disks]
    marks = [other_config(client, s['uuid']).get(MARKER) for s in snaps]
    assert marks[0] == marks[1] and before <= parse(marks[0]) <= after
    for dummy, disk in disks:
        assert MARKER not in other_config(client, disk['uuid'])
    # the CD drive's ISO was not snapshotted, so it has no marker either
    iso = client.call('VDI.get_by_name_label', 'lab-tools.iso')[0]
    assert MARKER not in client.call('VDI.get_other_config', iso)


def test_each_new_snapshot_carries_its_own_time(client):
    (disk_ref, disk), dummy = disks_of(client)
    first = _snapshot_ops.snapshot_vdi(client, disk['uuid'])['snapshots'][0]
    # a marker is just a time: make the first one an old one, so the second cannot share it by accident
    client.call('VDI.remove_from_other_config', first['ref'], MARKER)
    client.call('VDI.add_to_other_config', first['ref'], MARKER, '2020-01-01T00:00:00Z')
    second = _snapshot_ops.snapshot_vdi(client, disk['uuid'])['snapshots'][0]
    assert other_config(client, first['uuid'])[MARKER] == '2020-01-01T00:00:00Z'
    assert parse(other_config(client, second['uuid'])[MARKER]) >= utc_now() - datetime.timedelta(minutes=1)


@pytest.mark.parametrize('form', ['vdi', 'vm'])
def test_a_marker_inherited_from_the_disk_is_replaced_by_the_new_time(client, api, form):
    """A disk copied from a marked snapshot (VDI.copy copies other_config) carries the marker; its snapshots
    inherit it, and vdi_snapshot replaces it with their own time. The disk keeps what it has."""
    disks = disks_of(client)
    for dummy, disk in disks:
        api.VDI.add_to_other_config(api.VDI.get_by_uuid(disk['uuid']), MARKER, '2020-01-01T00:00:00Z')
    before = utc_now()
    if form == 'vdi':
        snaps = _snapshot_ops.snapshot_vdi(client, disks[0][1]['uuid'])['snapshots']
    else:
        snaps = _snapshot_ops.snapshot_vm(client, 'demo-vm')['snapshots']
    for snap in snaps:
        assert before <= parse(other_config(client, snap['uuid'])[MARKER]) <= utc_now()
    for dummy, disk in disks:
        assert other_config(client, disk['uuid'])[MARKER] == '2020-01-01T00:00:00Z'


def test_the_marker_stays_when_the_snapshot_is_reduced_to_cbt_metadata(client):
    (disk_ref, disk), dummy = disks_of(client)
    client.call('VDI.enable_cbt', disk_ref)
    snap = _snapshot_ops.snapshot_vdi(client, disk['uuid'])['snapshots'][0]
    marked = other_config(client, snap['uuid'])[MARKER]
    assert _snapshot_ops.data_destroy(client, snap['uuid'])['snapshots'][0]['type'] == 'cbt_metadata'
    assert other_config(client, snap['uuid'])[MARKER] == marked


def test_check_mode_marks_nothing(client):
    disks = disks_of(client)
    _snapshot_ops.snapshot_vdi(client, disks[0][1]['uuid'], check_mode=True)
    _snapshot_ops.snapshot_vm(client, 'demo-vm', check_mode=True)
    for dummy, disk in disks:
        assert MARKER not in other_config(client, disk['uuid'])
        assert client.call('VDI.get_snapshots', client.call('VDI.get_by_uuid', disk['uuid'])) == []
