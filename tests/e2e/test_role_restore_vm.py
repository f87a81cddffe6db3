# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whole-VM protection end to end through the role's playbooks: demo-vm (two disks, a CD drive, two interfaces,
non-default settings) backed up by the backup playbook, which keeps its configuration with the run; then the
restore_vm playbook rebuilds it as a new VM on another SR and another network. The new VM's record matches the
saved configuration field by field (except uuids, name and the regenerated MACs) and its disks equal the source
disks bit for bit (sha256 and qemu-img compare); the disaster-recovery walkthrough of docs/guide.md, run."""

from __future__ import absolute_import, division, print_function

import glob
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts', 'demo'))
from lab_demo import BIN, XENLAB, LabPlaybooks  # noqa: E402 pylint: disable=wrong-import-position
from test_role_incremental_backup import require_tools  # noqa: E402 pylint: disable=wrong-import-position
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import restore, vm_configs  # noqa: E402
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import vm_config  # noqa: E402
from ansible_collections.xenserver.cbt_backup.tests.lab.xenlab_sim.storage import guest_bytes  # noqa: E402

__metaclass__ = type


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    require_tools()
    instance = LabPlaybooks(str(tmp_path_factory.mktemp('restore-vm')), lab_args=['--auth-failure-delay', '0'],
                            verbose=False, host_vars={'incremental_backup_vms': ['demo-vm']})
    yield instance
    instance.stop()


def records(lab, cls):
    session = lab.xenapi()
    try:
        return getattr(session.xenapi, cls).get_all_records()
    finally:
        session.xenapi.session.logout()


def by_name(lab, cls, name):
    return [(ref, r) for ref, r in records(lab, cls).items() if r.get('name_label') == name]


def test_a_lost_vm_is_rebuilt_from_its_backup_on_another_sr_and_network(lab, tmp_path):
    lab.playbook('backup')
    report = lab.reports()[-1]
    (vm_ref, vm), = by_name(lab, 'VM', 'demo-vm')
    store_dir = os.path.join(lab.backups, vm['uuid'])
    with vm_configs.VmConfigs(store_dir) as store:
        config = store.load(report['started'])  # the run's configuration, named by the run
    assert len(config['vifs']) == 2 and sorted(v['type'] for v in config['vbds']) == ['CD', 'Disk', 'Disk']

    rc, out = lab.playbook('restore_vm', {
        'incremental_backup_restore_vm': 'demo-vm', 'incremental_backup_restore_sr': 'Second storage',
        'incremental_backup_restore_network_map': {'Pool-wide network associated with eth0': 'backup-net'},
        'incremental_backup_restore_vm_name': 'demo-vm-dr'}, check=False)
    assert rc == 0, out[-4000:]
    assert 'Restored demo-vm (backup run %s) as demo-vm-dr' % report['started'] in out
    assert 'FAILED - RETRYING' not in out
    assert re.search(r'\] demo-vm/demo-vm-disk0: ok, [0-9.]+ MiB sent in', out), out[-3000:]  # export_wait's summary

    (new_ref, new), = by_name(lab, 'VM', 'demo-vm-dr')
    new['other_config'] = vm_config.other_config_subset(new['other_config'])
    for field, value in config['vm'].items():
        if field not in ('name_label', 'generation_id'):
            assert new[field] == value, field
    vbds, vdis = records(lab, 'VBD'), records(lab, 'VDI')
    srs = dict((ref, r['name_label']) for ref, r in records(lab, 'SR').items())
    networks = dict((ref, r['name_label']) for ref, r in records(lab, 'network').items())
    restored = sorted((vbds[ref] for ref in new['VBDs']), key=lambda v: int(v['userdevice']))
    assert [(v['userdevice'], v['type'], v['mode'], v['bootable'], v['empty']) for v in restored] == \
        [(s['userdevice'], s['type'], s['mode'], s['bootable'], s['type'] == 'CD') for s in config['vbds']]
    for saved, vbd in zip(config['vbds'], restored):
        if not saved['disk']:
            continue
        assert srs[vdis[vbd['VDI']]['SR']] == 'Second storage'
        copy, source = lab.vdi_file(vdis[vbd['VDI']]['uuid']), lab.vdi_file(saved['disk']['disk_uuid'])
        size = saved['disk']['virtual_size']
        with open(copy, 'rb') as a, open(source, 'rb') as b:
            assert hashlib.sha256(a.read().ljust(size, b'\0')).digest() == hashlib.sha256(b.read().ljust(size, b'\0')).digest()
        compare = subprocess.run(['qemu-img', 'compare', '-f', 'raw', '-F', 'raw', copy, source],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        assert compare.returncode == 0, compare.stdout
    vifs = records(lab, 'VIF')
    new_vifs = sorted((vifs[ref] for ref in new['VIFs']), key=lambda v: int(v['device']))
    mapped = {'Pool-wide network associated with eth0': 'backup-net'}
    assert [(v['device'], v['MTU'], networks[v['network']]) for v in new_vifs] == \
        [(s['device'], s['MTU'], mapped.get(s['network']['name_label'], s['network']['name_label']))
         for s in config['vifs']]
    assert not set(v['MAC'] for v in new_vifs) & set(s['MAC'] for s in config['vifs'])  # regenerated
    assert new['power_state'] == 'Halted'
    assert json.dumps(config).find(lab.lab['password']) < 0


def test_the_verify_playbook_boots_the_newest_backup_and_leaves_nothing(lab):
    vms_before = set(records(lab, 'VM'))
    vdis_before = set(records(lab, 'VDI'))
    rc, out = lab.playbook('verify', {'incremental_backup_health_check': True,
                                      'incremental_backup_health_check_timeout': 60}, check=False)
    assert rc == 0, out[-4000:]
    reports = sorted(glob.glob(os.path.join(lab.backups, 'reports', 'lab-pool-health-*.json')))
    assert len(reports) == 1
    with open(reports[0]) as handle:
        health = json.load(handle)['health_checks']
    assert [(h['vm_name'], h['booted'], h['left_behind']) for h in health] == [('demo-vm', True, [])]
    assert health[0]['seconds_to_agent'] is not None and health[0]['run']
    assert set(records(lab, 'VM')) == vms_before and set(records(lab, 'VDI')) == vdis_before


# -- guest-consistent snapshots: hooks run against the guest, around the snapshot ---------------------------------

HOOK_SEED, AFTER_SEED = 4242, 4343


def guest_write_task(lab, vdi_uuid, seed, name):
    """A hook task: the guest (xenlab guest-exec, logged) writes 64 KiB of ``seed`` at the start of the disk."""
    return {'name': name, 'ansible.builtin.command': {'argv': [
        XENLAB, 'guest-exec', '--dir', lab.lab_dir, '--vm', 'demo-vm', '--', XENLAB, 'write', '--dir', lab.lab_dir,
        '--vdi', vdi_uuid, '--offset', '0', '--length', '65536', '--seed', str(seed)]}}


def backup_with_hooks(lab, tmp_path, pre_tasks, post_tasks, policy, vm='demo-vm', guests=None):
    """The backup playbook with a guest host for ``vm`` in the inventory and the hooks as task files.

    ``guests``: VM name -> inventory variables of its guest host, instead of one local guest for ``vm``."""
    hooks = {}
    for phase, tasks in (('pre', pre_tasks), ('post', post_tasks)):
        hooks[phase] = str(tmp_path / ('%s.yml' % phase))
        with open(hooks[phase], 'w') as handle:
            json.dump(tasks, handle)  # JSON is YAML
    with open(lab.inventory) as handle:
        inventory = json.load(handle)
    pool = inventory['xenserver_pools']['hosts']['lab-pool']
    guests = guests or {vm: {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable}}
    guest_hosts = dict((name, 'guest-of-%s' % name) for name in guests)
    pool.update(incremental_backup_vms=sorted(guests), incremental_backup_guest_hosts=guest_hosts,
                incremental_backup_pre_snapshot_tasks=hooks['pre'],
                incremental_backup_post_snapshot_tasks=hooks['post'], incremental_backup_pre_snapshot_failure=policy,
                incremental_backup_fail_on_error=False, incremental_backup_hook_timeout=60)
    inventory['guests'] = {'hosts': dict(('guest-of-%s' % name, host_vars) for name, host_vars in guests.items())}
    path = str(tmp_path / 'inventory-hooks.json')
    with open(path, 'w') as handle:
        json.dump(inventory, handle)
    return lab._run([os.path.join(BIN, 'ansible-playbook'), os.path.join(ROOT, 'playbooks', 'backup.yml'), '-i', path],
                    'backup-hooks', False)  # pylint: disable=protected-access


def guest_log(lab):
    path = os.path.join(lab.lab_dir, 'guest-exec.log')
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_a_pre_snapshot_hook_gets_into_the_backup_and_the_post_hook_runs_after(lab, tmp_path):
    disk1 = [u for u, r in ((r['uuid'], r) for r in records(lab, 'VDI').values())
             if r['name_label'] == 'demo-vm-disk1' and not r['is_a_snapshot']][0]
    logged = len(guest_log(lab))
    rc, out = backup_with_hooks(lab, tmp_path, [guest_write_task(lab, disk1, HOOK_SEED, 'flush the database')],
                                [guest_write_task(lab, disk1, AFTER_SEED, 'resume writing')], 'crash_consistent')
    assert rc == 0, out[-4000:]
    report = lab.reports()[-1]
    (vm,) = [v for v in report['vms'] if v['name'] == 'demo-vm']
    assert vm['consistency'] == 'application' and vm['status'] == 'ok'
    # what the guest wrote before the snapshot is in the backup; what it wrote after is not, but on the disk
    repository = [r for r in lab.repositories() if r.endswith(disk1)][0]
    out_file = str(tmp_path / 'disk1.raw')
    with restore.RestoreSource(repository) as source:
        restore.restore_to_file(source, out_file, force=True)
    with open(out_file, 'rb') as handle:
        assert handle.read(65536) == guest_bytes(65536, HOOK_SEED)
    with open(lab.vdi_file(disk1), 'rb') as handle:
        assert handle.read(65536) == guest_bytes(65536, AFTER_SEED)
    assert [entry['exit_code'] for entry in guest_log(lab)[logged:]] == [0, 0]


@pytest.mark.parametrize('policy, consistency, backed_up', [('crash_consistent', 'crash', True), ('skip', 'none', False)])
def test_a_failed_pre_snapshot_hook_follows_the_policy(lab, tmp_path, policy, consistency, backed_up):
    logged = len(guest_log(lab))
    failing = {'name': 'freeze the file systems', 'ansible.builtin.command': {'argv': [
        XENLAB, 'guest-exec', '--dir', lab.lab_dir, '--vm', 'demo-vm', '--', 'false']}}
    thaw = {'name': 'thaw', 'ansible.builtin.command': {'argv': [
        XENLAB, 'guest-exec', '--dir', lab.lab_dir, '--vm', 'demo-vm', '--', 'true']}}
    rc, out = backup_with_hooks(lab, tmp_path, [failing], [thaw], policy)
    assert rc == 0, out[-4000:]  # incremental_backup_fail_on_error: false
    report = lab.reports()[-1]
    (vm,) = [v for v in report['vms'] if v['name'] == 'demo-vm']
    assert vm['consistency'] == consistency
    assert (vm['status'] == 'ok') is backed_up
    hook_records = [r for r in report['failures'] + report['warnings'] if r['step'] in ('pre_snapshot', 'guest_hook')]
    assert len(hook_records) == 1 and 'freeze the file systems' in hook_records[0]['msg']
    assert [e['argv'] for e in guest_log(lab)[logged:]] == [['false'], ['true']]  # the post hook ran all the same


def test_the_post_snapshot_hook_runs_also_when_the_snapshot_fails(lab, tmp_path):
    # other-vm's disk resets on boot: VM.snapshot refuses it (VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION)
    logged = len(guest_log(lab))
    hook = [{'name': 'mark', 'ansible.builtin.command': {'argv': [
        XENLAB, 'guest-exec', '--dir', lab.lab_dir, '--vm', 'other-vm', '--', 'true']}}]
    rc, out = backup_with_hooks(lab, tmp_path, hook, hook, 'crash_consistent', vm='other-vm')
    assert rc == 0, out[-4000:]
    report = lab.reports()[-1]
    (vm,) = [v for v in report['vms'] if v['name'] == 'other-vm']
    assert vm['status'] == 'failed' and any(f['step'] == 'snapshot' for f in report['failures'])
    assert [(e['vm'], e['exit_code']) for e in guest_log(lab)[logged:]] == [('other-vm', 0), ('other-vm', 0)]


def test_an_unreachable_guest_fails_its_hook_and_the_other_guests_are_still_thawed(lab, tmp_path):
    # other-vm's guest host cannot be reached (its ssh exits 255, as ssh does when the host refuses); before the fix
    # the run ended there for the pool host: no report, and demo-vm's guest stayed frozen
    ssh = tmp_path / 'unreachable-ssh'
    ssh.write_text('#!/bin/sh\necho "ssh: connect to host guest port 22: Connection refused" >&2\nexit 255\n')
    ssh.chmod(0o755)
    logged = len(guest_log(lab))

    def hook(word):
        return [{'name': word, 'ansible.builtin.command': {'argv': [
            XENLAB, 'guest-exec', '--dir', lab.lab_dir, '--vm', '{{ __incremental_backup_hook_vm.name }}', '--',
            'true', word]}}]
    rc, out = backup_with_hooks(lab, tmp_path, hook('freeze'), hook('thaw'), 'skip', guests={
        'demo-vm': {'ansible_connection': 'local', 'ansible_python_interpreter': sys.executable},
        'other-vm': {'ansible_connection': 'ssh', 'ansible_host': '127.0.0.1', 'ansible_ssh_executable': str(ssh)}})
    assert rc == 0, out[-4000:]  # incremental_backup_fail_on_error: false
    report = lab.reports()[-1]
    by_name = dict((v['name'], v) for v in report['vms'])
    assert by_name['demo-vm']['consistency'] == 'application' and by_name['demo-vm']['status'] == 'ok'
    assert by_name['other-vm']['consistency'] == 'none'  # the policy: skip
    (unreached,) = [r for r in report['failures'] if r['step'] == 'pre_snapshot']
    assert unreached['vm_uuid'] == by_name['other-vm']['uuid']
    assert 'could not be reached before its tasks' in unreached['msg'] and 'guest-of-other-vm' in unreached['msg']
    expected = [('demo-vm', ['true', 'freeze']), ('demo-vm', ['true', 'thaw'])]
    assert [(e['vm'], e['argv']) for e in guest_log(lab)[logged:]] == expected


def test_a_restore_in_place_through_the_role_sends_only_the_changed_blocks(lab, tmp_path):
    disk0 = [r['uuid'] for r in records(lab, 'VDI').values()
             if r['name_label'] == 'demo-vm-disk0' and not r['is_a_snapshot']][0]
    repository = [r for r in lab.repositories() if r.endswith(disk0)][0]
    point = str(tmp_path / 'point.raw')
    with restore.RestoreSource(repository) as source:
        restore.restore_to_file(source, point, force=True)
        size = source.virtual_size
    lab.xenlab('write', '--vdi', disk0, '--offset', str(1024 * 1024), '--length', '65536', '--seed', '99')
    session = lab.xenapi()
    try:
        session.xenapi.VM.hard_shutdown(session.xenapi.VM.get_by_name_label('demo-vm')[0])
    finally:
        session.xenapi.session.logout()
    rc, out = lab.playbook('restore_vm', {'incremental_backup_restore_vm': 'demo-vm',
                                          'incremental_backup_restore_mode': 'in_place'}, check=False)
    assert rc == 0, out[-4000:]
    assert 'in place onto demo-vm' in out and 'demo-vm-disk0: changed_blocks' in out
    with open(point, 'rb') as a, open(lab.vdi_file(disk0), 'rb') as b:
        assert hashlib.sha256(a.read().ljust(size, b'\0')).digest() == hashlib.sha256(b.read().ljust(size, b'\0')).digest()
