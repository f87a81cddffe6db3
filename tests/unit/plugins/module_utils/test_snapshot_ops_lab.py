# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vdi_snapshot against the lab, over real HTTPS XML-RPC: a VM or disk snapshot whose later steps (reading, marking)
fail, and destroying a snapshot an NBD connection still holds.

Failures are real: the lab answers them because another session changed something at the wrong moment (it destroyed
the snapshot VM, one of its VBDs or the snapshot), or because the host did not answer in time (the simulator is
stopped with SIGSTOP for one call). ``Interposed`` only decides *when* that happens: it is the real client, and
before its n-th call of a method made after ``VM.snapshot`` (or ``VDI.snapshot``) it runs the given action.
"""

from __future__ import absolute_import, division, print_function

import os
import signal
import time

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import export as _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import (
    nbd_access as _nbd_access,
    network as _network_ops,
    snapshot as _snapshot_ops,
)
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import model as _objects, client as _xenapi
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection

__metaclass__ = type


class Interposed(_xenapi.XenApiClient):
    """A real client of the lab; ``at[(method, n)] = action(real_call, *args)`` runs instead of the n-th call of
    ``method`` after VM.snapshot or VDI.snapshot (``real_call()`` makes the call)."""

    def __init__(self, lab, timeout=30):
        super(Interposed, self).__init__(lab.info['url'], username=lab.info['username'],
                                         password=lab.info['password'], ca_path=lab.info['ca_cert'], timeout=timeout)
        self.at = {}
        self.counts = None
        self.snap_vm = None
        self.snap_vdi = None
        self.calls = []

    def call(self, method, *args):
        real = super(Interposed, self).call
        if self.counts is not None:
            self.calls.append(method)
            number = self.counts[method] = self.counts.get(method, 0) + 1
            action = self.at.pop((method, number), None)
            if action is not None:
                return action(lambda: real(method, *args), *args)
        result = real(method, *args)
        if method == 'VM.snapshot':
            self.counts, self.snap_vm = {}, result
        if method == 'VDI.snapshot':
            self.counts, self.snap_vdi = {}, result
        return result


@pytest.fixture
def interposed(lab):
    with Interposed(lab) as opened:
        yield opened


def disks_of(client, vm='demo-vm'):
    vm_ref, dummy = _objects.find_vm(client, vm)
    return [record for dummy, record, dummy2 in _objects.vm_disks(client, vm_ref)]


def snapshot_uuids(client, disk):
    """The uuids of the disk's snapshots that exist on the lab."""
    refs = client.call('VDI.get_snapshots', client.call('VDI.get_by_uuid', disk['uuid']))
    return sorted(client.call('VDI.get_uuid', ref) for ref in refs)


def snapshot_vms(client):
    return [ref for ref, rec in client.call('VM.get_all_records').items() if rec['is_a_snapshot']]


def destroy_reported(client, snapshots):
    """What the role's cleanup does with the snapshots of a failed result."""
    for snap in snapshots:
        assert _snapshot_ops.destroy(client, snap['uuid'], retries=0)['changed'] is True


def snap_vm_vbds(client, snap_vm):
    """The snapshot VM's disk VBDs, in its VBD order: [(vbd ref, disk snapshot uuid)]."""
    result = []
    for vbd in client.call('VM.get_VBDs', snap_vm):
        record = client.call('VBD.get_record', vbd)
        if record['type'] == 'Disk':
            result.append((vbd, client.call('VDI.get_uuid', record['VDI'])))
    return result


# ----- VM.snapshot succeeded, a later call failed -----------------------------------------------------------

def test_the_snapshot_vm_destroyed_half_way_through_the_listing(lab, client, interposed):
    """Another session destroys the snapshot VM (and so its VBDs) between the reads of its two disk VBDs.

    The first disk's snapshot was read before the failure and is reported; the second one's can no longer be found
    (its VBD is gone with the VM), and the listing once more fails at once (the VM is gone).
    """
    disk0, disk1 = disks_of(client)

    def destroy_snapshot_vm_first(real, vbd):
        client.call('VM.destroy', interposed.snap_vm)
        return real()
    interposed.at[('VBD.get_record', 2)] = destroy_snapshot_vm_first
    with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
        _snapshot_ops.snapshot_vm(interposed, 'demo-vm')
    error = caught.value
    assert error.code == 'HANDLE_INVALID' and error.from_host
    assert 'was taken but not cleaned up' in error.message and interposed.snap_vm in error.message
    assert [s['snapshot_of'] for s in error.snapshots] == [disk0['uuid']]
    reported = error.snapshots[0]
    assert snapshot_uuids(client, disk0) == [reported['uuid']]
    assert reported['name'] == 'demo-vm-disk0' and reported['time'] and reported['ref'].startswith('OpaqueRef:')
    assert interposed.calls[-1] == 'VM.get_record'  # the best-effort listing was tried
    destroy_reported(client, error.snapshots)
    assert snapshot_uuids(client, disk0) == []
    assert len(snapshot_uuids(client, disk1)) == 1  # lost with its VBD: nothing ties it to this run any more


def test_a_vbd_that_cannot_be_read_the_listing_once_more_finds_the_others(lab, client, interposed):
    """Another session destroys the first disk VBD of the snapshot VM just before it is read: nothing was found yet,
    and the listing once more finds the second disk's snapshot through the VBDs that are left."""
    disk0, disk1 = disks_of(client)

    def destroy_the_vbd_first(real, vbd):
        client.call('VBD.destroy', vbd)
        return real()
    interposed.at[('VBD.get_record', 1)] = destroy_the_vbd_first
    with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
        _snapshot_ops.snapshot_vm(interposed, 'demo-vm')
    error = caught.value
    assert error.code == 'HANDLE_INVALID'
    assert [s['snapshot_of'] for s in error.snapshots] == [disk1['uuid']]
    assert [s['uuid'] for s in error.snapshots] == snapshot_uuids(client, disk1)
    assert snapshot_vms(client) == [interposed.snap_vm]  # never destroyed: the message says to
    destroy_reported(client, error.snapshots)
    assert snapshot_uuids(client, disk1) == []


def test_the_host_does_not_answer_reading_the_snapshot_vm(lab, client):
    """The first call after VM.snapshot times out (the host is stopped); the listing once more finds every disk
    snapshot, with the VM snapshot's time."""
    disk0, disk1 = disks_of(client)
    simulator = lab.info['pids'][0]

    def host_stalls(real, vm):
        os.kill(simulator, signal.SIGSTOP)
        try:
            return real()
        finally:
            os.kill(simulator, signal.SIGCONT)
    with Interposed(lab, timeout=3) as stalled:
        stalled.at[('VM.get_record', 1)] = host_stalls
        with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
            _snapshot_ops.snapshot_vm(stalled, 'demo-vm')
        snap_vm = stalled.snap_vm
    error = caught.value
    assert error.code == 'API_TIMEOUT' and 'did not answer within 3' in error.message
    assert [s['snapshot_of'] for s in error.snapshots] == [disk0['uuid'], disk1['uuid']]
    assert [[s['uuid']] for s in error.snapshots] == [snapshot_uuids(client, disk0), snapshot_uuids(client, disk1)]
    when = _snapshot_ops.xenapi_time(client.call('VM.get_snapshot_time', snap_vm))
    assert [s['time'] for s in error.snapshots] == [when, when]
    assert snapshot_vms(client) == [snap_vm]
    destroy_reported(client, error.snapshots)  # VDI.destroy also removes the snapshot VM's unplugged VBDs
    assert snapshot_uuids(client, disk0) == snapshot_uuids(client, disk1) == []


def test_vm_destroy_fails(lab, client, interposed):
    """Every disk snapshot was read before VM.destroy failed: all are reported."""
    disk0, disk1 = disks_of(client)

    def destroyed_by_someone_else(real, vm):
        client.call('VM.destroy', vm)
        return real()
    interposed.at[('VM.destroy', 1)] = destroyed_by_someone_else
    with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
        _snapshot_ops.snapshot_vm(interposed, 'demo-vm')
    error = caught.value
    assert error.code == 'HANDLE_INVALID' and error.params[0] == 'VM'
    assert [s['snapshot_of'] for s in error.snapshots] == [disk0['uuid'], disk1['uuid']]
    destroy_reported(client, error.snapshots)
    assert snapshot_uuids(client, disk0) == snapshot_uuids(client, disk1) == []


def test_without_a_failure_the_calls_are_as_before(lab, client, interposed):
    result = _snapshot_ops.snapshot_vm(interposed, 'demo-vm')
    assert len(result['snapshots']) == 2 and snapshot_vms(client) == []
    # read once each: the VM, its three VBDs (two disks, the CD), the two disk snapshots, each marked as soon as it
    # was read; no uuid lookups
    expected = (['VM.get_record'] + ['VBD.get_record', 'VDI.get_record', 'VDI.add_to_other_config'] * 2
                + ['VBD.get_record', 'VM.destroy'])
    assert interposed.calls == expected


# ----- marking a new snapshot fails ---------------------------------------------------------------------------

MARKER = _snapshot_ops.SNAPSHOT_MARKER


def stopped(pid):
    """Whether every thread of ``pid`` is stopped (state T): a signalled stop takes effect asynchronously."""
    states = []
    for task in os.listdir('/proc/%d/task' % pid):
        with open('/proc/%d/task/%s/stat' % (pid, task)) as handle:
            states.append(handle.read().rsplit(')', 1)[1].split()[0])
    return all(state in ('T', 't') for state in states)


def stall_host(lab):
    """An action that stops the simulator for one call, so that the client times out."""
    simulator = lab.info['pids'][0]

    def host_stalls(real, *args):
        os.kill(simulator, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not stopped(simulator) and time.monotonic() < deadline:  # on a loaded machine the stop can lag
            time.sleep(0.01)
        assert stopped(simulator), 'the lab simulator did not stop'
        try:
            return real()
        finally:
            os.kill(simulator, signal.SIGCONT)
    return host_stalls


def test_marking_a_disk_snapshot_fails_it_is_still_returned(lab, client):
    """The host does not answer VDI.add_to_other_config: the snapshot is reported (read once it answers again), so
    that the caller can destroy it."""
    disk0, disk1 = disks_of(client)
    with Interposed(lab, timeout=3) as stalled:
        stalled.at[('VDI.add_to_other_config', 1)] = stall_host(lab)
        with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
            _snapshot_ops.snapshot_vdi(stalled, disk0['uuid'])
        snap_ref = stalled.snap_vdi
    error = caught.value
    assert error.code == 'API_TIMEOUT' and 'did not answer within 3' in error.message
    assert 'was taken, but marking or reading it failed: destroy it' in error.message and snap_ref in error.message
    assert [s['uuid'] for s in error.snapshots] == snapshot_uuids(client, disk0)
    assert error.snapshots[0]['ref'] == snap_ref and error.snapshots[0]['snapshot_of'] == disk0['uuid']
    destroy_reported(client, error.snapshots)
    assert snapshot_uuids(client, disk0) == []


def test_the_snapshot_destroyed_before_it_is_marked(lab, client, interposed):
    """Another session destroys the new disk snapshot before it is marked: it cannot be read any more, so only its
    ref and its disk's facts are reported (nothing is left to destroy)."""
    disk0, disk1 = disks_of(client)

    def destroyed_by_someone_else(real, vdi, key, value):
        client.call('VDI.destroy', vdi)
        return real()
    interposed.at[('VDI.add_to_other_config', 1)] = destroyed_by_someone_else
    with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
        _snapshot_ops.snapshot_vdi(interposed, 'demo-vm-disk0')
    error = caught.value
    assert error.code == 'HANDLE_INVALID' and error.from_host
    reported, = error.snapshots
    assert reported['uuid'] is None and reported['ref'] == interposed.snap_vdi
    assert (reported['snapshot_of'], reported['name']) == (disk0['uuid'], 'demo-vm-disk0')
    assert reported['time'] and snapshot_uuids(client, disk0) == []


def test_marking_a_disk_snapshot_of_a_vm_snapshot_fails(lab, client):
    """The host does not answer when the first disk snapshot is marked: the listing once more finds both disk
    snapshots and marks them (the snapshot VM is left, as after any failure), and both are reported."""
    disk0, disk1 = disks_of(client)
    with Interposed(lab, timeout=3) as stalled:
        stalled.at[('VDI.add_to_other_config', 1)] = stall_host(lab)
        with pytest.raises(_snapshot_ops.PartialSnapshotError) as caught:
            _snapshot_ops.snapshot_vm(stalled, 'demo-vm')
        snap_vm = stalled.snap_vm
    error = caught.value
    assert error.code == 'API_TIMEOUT' and 'did not answer within 3' in error.message
    assert [s['snapshot_of'] for s in error.snapshots] == [disk0['uuid'], disk1['uuid']]
    assert [[s['uuid']] for s in error.snapshots] == [snapshot_uuids(client, disk0), snapshot_uuids(client, disk1)]
    marks = [client.call('VDI.get_other_config', s['ref']).get(MARKER) for s in error.snapshots]
    assert marks[0] and marks[0] == marks[1]
    assert snapshot_vms(client) == [snap_vm]
    destroy_reported(client, error.snapshots)
    assert snapshot_uuids(client, disk0) == snapshot_uuids(client, disk1) == []


# ----- destroy while an NBD connection holds the snapshot --------------------------------------------------------

@pytest.fixture
def held(lab, client):
    """A snapshot of demo-vm-disk1 and an open NBD connection to it (its dom0 VBD is attached)."""
    _network_ops.ensure_purpose(client, 'backup-net', 'nbd')
    disk = disks_of(client)[1]
    snap = _snapshot_ops.snapshot_vdi(client, disk['uuid'])['snapshots'][0]
    snap_ref, snap_record = _objects.find_vdi(client, snap['uuid'], snapshot=True)
    info = _nbd_access.in_order(_nbd_access.require_nbd_info(client, snap_ref, snap_record))[0]
    conn = NbdConnection.open(_export.make_target(info, tls=True, timeout=10))
    try:
        vbds = client.call('VDI.get_VBDs', snap_ref)
        assert len(vbds) == 1 and client.call('VBD.get_currently_attached', vbds[0]) is True
        yield snap, conn
    finally:
        conn.close()


def test_destroy_without_retries_fails_while_the_connection_is_open(client, held):
    snap, conn = held
    with pytest.raises(_xenapi.XenApiError) as caught:
        _snapshot_ops.destroy(client, snap['uuid'], retries=0, delay=0.1)
    error = caught.value
    assert error.code == 'VDI_IN_USE' and error.from_host and error.params[1] == 'destroy'
    assert error.message == (
        'VDI.destroy failed: the disk is in use (destroy); close NBD connections to it, or wait until the VM or task '
        'using it releases it, and try again. The snapshot %s (demo-vm-disk1) was still in use after 1 attempt(s), '
        '0.1 s apart: an NBD connection to the snapshot may still be open (xapi removes its VBD a few seconds after '
        'the client disconnects). Close it and try again, or raise retries/delay' % snap['uuid'])
    assert client.call('VDI.get_uuid', client.call('VDI.get_by_uuid', snap['uuid'])) == snap['uuid']  # still there
    with pytest.raises(_xenapi.XenApiError) as caught:
        _snapshot_ops.destroy(client, snap['uuid'], retries=2, delay=0.05)
    assert caught.value.code == 'VDI_IN_USE' and 'after 3 attempt(s), 0.05 s apart' in caught.value.message


def test_destroy_waits_until_the_connection_is_closed(client, held):
    snap, conn = held
    waits = []

    def wait(seconds):  # the export finishes while destroy waits: its NBD connection closes
        if not waits:
            conn.close()
        waits.append(seconds)
        _snapshot_ops.time.sleep(seconds)
    result = _snapshot_ops.destroy(client, snap['uuid'], retries=50, delay=0.05, sleep=wait)
    assert result['changed'] is True and result['attempts'] >= 2 and len(waits) == result['attempts'] - 1
    assert result['snapshots'][0]['uuid'] == snap['uuid']
    with pytest.raises(_xenapi.XenApiError) as caught:
        client.call('VDI.get_by_uuid', snap['uuid'])
    assert caught.value.code == 'UUID_INVALID'
    assert _snapshot_ops.destroy(client, snap['uuid']) == {'changed': False, 'snapshots': [], 'attempts': 0}
