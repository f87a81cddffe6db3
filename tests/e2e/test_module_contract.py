# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The module contract, for every module of the collection, run ad hoc (``ansible -m``) against the lab.

For each task the way a backup engineer would run it:
- check mode predicts ``changed`` exactly as the real run then reports it, and changes nothing (the lab's
  objects and the files on disk are compared before and after);
- ``changed`` is true exactly when something was created, written or destroyed;
- running the same task again is idempotent where the task names an end state (it reports ok, changes
  nothing), and its check mode then predicts no change either.

The tests run in file order on one lab and build on each other's state, like one backup night.
"""

from __future__ import absolute_import, division, print_function

import hashlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts', 'demo'))
from lab_demo import BIN, LabPlaybooks  # noqa: E402 pylint: disable=wrong-import-position
from test_role_incremental_backup import disk_uuid, require_tools  # noqa: E402 pylint: disable=wrong-import-position

__metaclass__ = type

MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(ROOT, 'plugins', 'modules'))
                 if name.endswith('.py') and not name.startswith('_'))
COVERED = set()


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    require_tools()
    instance = LabPlaybooks(str(tmp_path_factory.mktemp('contract')), lab_args=['--auth-failure-delay', '0'],
                            verbose=False)
    instance.state = {}
    yield instance
    instance.stop()


def run(lab, module, args, check_mode=False, options=()):
    """One ad-hoc run of ``module``; returns its result (with ``rc``, the exit status of ansible). ``options``:
    more options of ansible (``-B 600 -P 0`` starts the module in the background)."""
    COVERED.add(module)
    argv = [os.path.join(BIN, 'ansible'), 'localhost', '-i', 'localhost,', '-c', 'local',
            '-e', 'ansible_python_interpreter=' + sys.executable, '-m', 'xenserver.cbt_backup.' + module,
            '-a', json.dumps(args)] + (['--check'] if check_mode else []) + list(options)
    env = dict(lab.env(), ANSIBLE_LOAD_CALLBACK_PLUGINS='1', ANSIBLE_STDOUT_CALLBACK='minimal',
               XENSERVER_HOST=lab.lab['url'], XENSERVER_USER=lab.lab['username'])
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    out = proc.stdout.decode(errors='replace')
    try:
        # minimal: "localhost | CHANGED => {...}" (FAILED! =>, SUCCESS =>)
        result = json.loads(out[out.index(' => ') + 4:])
    except ValueError:
        errors = proc.stderr.decode(errors='replace')[-3000:]
        raise AssertionError('%s printed no result (exit %d): %s %s' % (module, proc.returncode, out[-3000:], errors))
    result['rc'] = proc.returncode
    return result


def xenapi_args(lab, **args):
    args['ca_path'] = lab.lab['ca_cert']
    return args


def lab_state(lab):
    """What the lab holds that a module could change: VDIs (with CBT and snapshot state) and network purposes."""
    session = lab.xenapi()
    try:
        vdis = dict((r['uuid'], (r['cbt_enabled'], r['type'], r['is_a_snapshot']))
                    for r in session.xenapi.VDI.get_all_records().values())
        networks = dict((r['uuid'], sorted(r['purpose'])) for r in session.xenapi.network.get_all_records().values())
        return {'vdis': vdis, 'networks': networks}
    finally:
        session.xenapi.session.logout()


def files_under(directory):
    """{relative path: sha256} of every file below ``directory`` (empty when it does not exist)."""
    found = {}
    for base, dummy, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            with open(path, 'rb') as handle:
                found[os.path.relpath(path, directory)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def world(lab):
    return lab_state(lab), files_under(lab.backups)


def ok(result, module):
    assert result['rc'] == 0 and not result.get('failed'), '%s failed: %s' % (module, result.get('msg', result))
    return result


def contract(lab, module, args, changes, idempotent=True):
    """Check mode predicts ``changes`` and changes nothing; the real run reports ``changes``; with ``idempotent``,
    the same task again reports no change in check mode and for real, and changes nothing. Returns the real run's
    result."""
    before = world(lab)
    predicted = ok(run(lab, module, args, check_mode=True), module)
    assert predicted['changed'] is changes, '%s check mode: changed=%s, expected %s' % (module, predicted['changed'],
                                                                                        changes)
    assert world(lab) == before, '%s changed something in check mode' % module
    result = ok(run(lab, module, args), module)
    assert result['changed'] is changes, '%s: changed=%s, expected %s' % (module, result['changed'], changes)
    if not changes:
        assert world(lab) == before, '%s reported no change but changed something' % module
    else:
        assert world(lab) != before, '%s reported a change but nothing changed' % module
    if idempotent:
        after = world(lab)
        again = ok(run(lab, module, args, check_mode=True), module)
        assert again['changed'] is False, '%s check mode of a repeated task predicts a change' % module
        again = ok(run(lab, module, args), module)
        assert again['changed'] is False, '%s repeated: changed=%s' % (module, again['changed'])
        assert world(lab) == after, '%s repeated changed something' % module
    return result


def session_is_valid(lab, ref):
    """Whether the lab accepts ``ref`` (a raw XML-RPC call: the XenAPI package would log in again by itself)."""
    session = lab.xenapi()
    try:
        reply = getattr(session, 'VM.get_all')(ref)
    finally:
        session.xenapi.session.logout()
    return reply.get('Status') == 'Success'


def test_session_login_and_logout_are_not_changes(lab):
    login = contract(lab, 'session', xenapi_args(lab, state='present'), changes=False, idempotent=False)
    assert 'session_id' not in login and login.get('censored'), 'the session ref must not reach the output'
    session = lab.xenapi()
    ref = session._session  # pylint: disable=protected-access
    logout = xenapi_args(lab, state='absent', session_id=ref)
    # Check mode logs in for real (later tasks need the session), so it logs out for real too: a play run with
    # --check must not leave its session behind on the pool.
    assert ok(run(lab, 'session', logout, check_mode=True), 'session')['changed'] is False
    assert not session_is_valid(lab, ref)
    assert ok(run(lab, 'session', logout), 'session')['changed'] is False  # already logged out: ok


def test_nbd_network_purpose(lab):
    contract(lab, 'nbd_network', xenapi_args(lab, network='backup-net', purpose='nbd'), changes=True)


def test_vdi_cbt_enable(lab):
    result = contract(lab, 'vdi_cbt', xenapi_args(lab, vdi='demo-vm-disk0', enabled=True), changes=True)
    assert [d['cbt_enabled'] for d in result['disks']] == [True]


def test_vdi_snapshot_creates_one_snapshot(lab):
    # Each run of state=present takes a new snapshot: a creation, not an end state.
    result = contract(lab, 'vdi_snapshot', xenapi_args(lab, vdi='demo-vm-disk0'), changes=True, idempotent=False)
    lab.state['snapshot1'] = result['snapshots'][0]['uuid']


def test_vdi_nbd_info_reads_only(lab):
    contract(lab, 'vdi_nbd_info', xenapi_args(lab, vdi=lab.state['snapshot1'], nbd_network='backup-net'),
             changes=False)


def test_vdi_export_full_then_the_same_export_again(lab):
    repository = os.path.join(lab.backups, 'demo-vm', 'disk0')
    lab.state['repository'] = repository
    result = contract(lab, 'vdi_export', xenapi_args(lab, snapshot=lab.state['snapshot1'], repository=repository,
                                                     nbd_network='backup-net'), changes=True)
    assert result['point_type'] == 'full'


def test_vdi_export_incremental(lab):
    lab.guest_write(disk_uuid(lab, 'demo-vm-disk0'), 0, 128 * 1024, seed=7)
    snapshot = ok(run(lab, 'vdi_snapshot', xenapi_args(lab, vdi='demo-vm-disk0')), 'vdi_snapshot')
    lab.state['snapshot2'] = snapshot['snapshots'][0]['uuid']
    contract(lab, 'vdi_changed_blocks', xenapi_args(lab, base=lab.state['snapshot1'],
                                                    snapshot=lab.state['snapshot2']), changes=False)
    result = contract(lab, 'vdi_export', xenapi_args(lab, snapshot=lab.state['snapshot2'], base=lab.state['snapshot1'],
                                                     repository=lab.state['repository'], nbd_network='backup-net'),
                      changes=True)
    assert result['point_type'] == 'incremental'


def test_read_only_repository_modules(lab):
    contract(lab, 'backup_info', {'path': lab.backups}, changes=False)
    contract(lab, 'backup_verify', {'repository': lab.state['repository']}, changes=False)
    plan = contract(lab, 'backup_plan', xenapi_args(lab, vms=['demo-vm'], repository_root=lab.backups),
                    changes=False)
    lab.state['plan'] = plan['vms']


def test_backup_report_writes_its_file(lab):
    dest = os.path.join(lab.backups, 'reports', 'contract.json')
    args = {'plan': lab.state['plan'], 'started': '2026-12-03T10:00:00Z', 'dest': dest}
    # A report is written on every run (it records when it was finished): a creation, not an end state.
    contract(lab, 'backup_report', args, changes=True, idempotent=False)
    assert os.path.isfile(dest)


def test_vdi_restore_to_a_file(lab):
    dest = os.path.join(lab.backups, 'restored', 'disk0.raw')
    os.makedirs(os.path.dirname(dest))
    contract(lab, 'vdi_restore', {'repository': lab.state['repository'], 'dest': dest}, changes=True)


def test_backup_prune(lab):
    contract(lab, 'backup_prune', {'repository': lab.state['repository'], 'keep_last': 5}, changes=False)
    result = contract(lab, 'backup_prune', {'repository': lab.state['repository'], 'keep_last': 1}, changes=True)
    assert len(result['kept']) == 1


def test_export_wait_for_a_background_export(lab):
    """vdi_export started with async and poll 0, then export_wait: the pair is held to the contract (check mode
    predicts the change and changes nothing, the real run changes, the same pair again changes nothing)."""
    progress = os.path.join(lab.workdir, 'progress-contract.json')
    export = xenapi_args(lab, exports=[{'snapshot': lab.state['snapshot2'], 'label': 'demo-vm/xvda',
                                        'repository': os.path.join(lab.backups, 'async', 'disk0')}],
                         nbd_network='backup-net', progress_file=progress, lease_seconds=30)

    def export_and_wait(check_mode=False):
        job = ok(run(lab, 'vdi_export', export, check_mode=check_mode, options=['-B', '600', '-P', '0']), 'vdi_export')
        return ok(run(lab, 'export_wait', {'jid': job['ansible_job_id'], 'progress_file': progress, 'interval': 1},
                      check_mode=check_mode), 'export_wait')

    before = world(lab)
    assert export_and_wait(check_mode=True)['changed'] is True
    assert world(lab) == before, 'export_wait (and vdi_export) changed something in check mode'
    result = export_and_wait()
    assert result['changed'] is True and world(lab) != before
    assert result['exports'][0]['label'] == 'demo-vm/xvda' and result['exports'][0]['point_type'] == 'full'
    after = world(lab)
    assert export_and_wait(check_mode=True)['changed'] is False
    again = export_and_wait()
    assert again['changed'] is False and again['exports'][0]['already_exported'] and world(lab) == after
    assert not os.path.exists(progress) and not os.path.exists(progress + '.lease')
    # one look renews an existing lease (outside the repositories) and changes nothing else
    open(progress + '.lease', 'w').close()
    looked = contract(lab, 'export_progress', {'progress_file': progress}, changes=False)
    assert looked['lease'] == 'renewed'
    os.unlink(progress + '.lease')


def test_export_leftovers_after_a_cancelled_wait(lab):
    """A background export whose wait was cancelled after its first look (which wrote the job's record): the next
    run's export_leftovers removes the job file and the record once the job has ended, and then has nothing to do."""
    progress = os.path.join(lab.workdir, 'progress-leftovers.json')
    record = os.path.join(lab.backups, 'reports', '.export-contract.job')
    os.makedirs(os.path.dirname(record), exist_ok=True)
    async_dir = os.path.join(lab.workdir, 'async')
    export = xenapi_args(lab, exports=[{'snapshot': lab.state['snapshot2'],
                                        'repository': os.path.join(lab.backups, 'async', 'disk0')}],
                         nbd_network='backup-net', progress_file=progress, lease_seconds=30)
    job = ok(run(lab, 'vdi_export', export, options=['-B', '600', '-P', '0']), 'vdi_export')
    look = {'jid': job['ansible_job_id'], 'async_dir': async_dir, 'progress_file': progress, 'record': record}
    for dummy in range(600):
        looked = ok(run(lab, 'export_progress', look), 'export_progress')
        if looked['job']['finished']:
            break
    assert os.path.exists(record) and os.path.exists(os.path.join(async_dir, job['ansible_job_id']))
    result = contract(lab, 'export_leftovers', {'records': [record]}, changes=True)
    assert [(j['jid'], j['state']) for j in result['jobs']] == [(job['ansible_job_id'], 'ended')]
    assert not os.path.exists(record) and not os.path.exists(os.path.join(async_dir, job['ansible_job_id']))


def test_whole_vm_restore_and_health_check(lab):
    """A backup run of demo-vm with its configuration, then vm_restore (a new VM each time: not idempotent) and
    backup_health_check (its temporary VM is gone afterwards: no change)."""
    root = os.path.join(lab.backups, 'whole-vm')
    run_id = '2026-11-25T02:00:00Z'
    snap = ok(run(lab, 'vdi_snapshot', xenapi_args(lab, vm='demo-vm', repository_root=root, run=run_id)), 'vdi_snapshot')
    exports = [{'snapshot': s['uuid'], 'repository': os.path.join(root, snap['vm'], s['snapshot_of'])}
               for s in snap['snapshots']]
    ok(run(lab, 'vdi_export', xenapi_args(lab, exports=exports, run=run_id, nbd_network='backup-net')), 'vdi_export')
    restored = contract(lab, 'vm_restore', xenapi_args(lab, repository_root=root, vm='demo-vm', default_sr='Local storage'),
                        changes=True, idempotent=False)
    assert restored['run'] == run_id and len(restored['disks']) == 2
    checked = contract(lab, 'backup_health_check', xenapi_args(lab, repository_root=root, vm='demo-vm',
                                                               sr='Local storage', timeout=60), changes=False)
    assert checked['booted'] is True


def test_vdi_snapshot_reduce_and_destroy(lab):
    contract(lab, 'vdi_snapshot', xenapi_args(lab, vdi=lab.state['snapshot2'], state='metadata_only'), changes=True)
    contract(lab, 'vdi_snapshot', xenapi_args(lab, vdi=lab.state['snapshot1'], state='absent'), changes=True)


def test_cleanup_disables_cbt_and_removes_the_purpose(lab):
    contract(lab, 'vdi_cbt', xenapi_args(lab, vdi='demo-vm-disk0', enabled=False), changes=True)
    contract(lab, 'nbd_network', xenapi_args(lab, network='backup-net', purpose='nbd', state='absent'), changes=True)


def test_every_module_was_held_to_the_contract():
    assert COVERED == set(MODULES), 'modules without a contract test: %s' % sorted(set(MODULES) - COVERED)
