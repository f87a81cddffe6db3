#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vm_restore
short_description: Restore a whole VM from a backup run, as a new VM (on this pool or another) or in place
version_added: 0.1.0
description:
  - Builds a VM again from one backup run, its VM configuration (kept with every run by
    M(xenserver.cbt_backup.vdi_snapshot)'s O(xenserver.cbt_backup.vdi_snapshot#module:repository_root), which the
    role M(xenserver.cbt_backup.incremental_backup) sets) and the restore points of its disks.
  - The run is the newest at or before O(point) that has a configuration and a restore point of every disk the
    configuration lists (the disks of one run come from one VM snapshot, so the VM is consistent).
  - The new VM gets the saved settings (description, tags, vCPUs, memory, boot policy and parameters, platform,
    C(other_config), PV/PVH/UEFI settings and NVRAM), a new disk per saved disk with the restored content and the
    saved userdevice, mode and bootable flag, an empty CD drive where the VM had a CD drive, and an interface per
    saved interface with its device and MTU, on the network O(network_map) or the pool gives it.
  - Everything the restore needs of the target pool (an SR per disk, a network per interface) is looked up before
    anything is created. If a step fails after that, everything created (VM, disks, drives, interfaces) is
    destroyed again, so no half VM is left; the error says so, or names what could not be destroyed.
  - To restore onto another pool, connect to that pool (O(hostname)); the repository is read where the module runs.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
  - xenserver.cbt_backup._vm_backup
attributes:
  check_mode:
    description: >-
      Chooses the run, checks its configuration and resolves every SR and network, then reports the VM, disks,
      drives and interfaces it would create, creating nothing.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  mode:
    description:
      - V(new) builds a new VM (the rest of this page). V(in_place) overwrites the disks of an existing, halted VM
        (O(target_vm), default the VM the run backed up), matched by userdevice, and changes nothing else; a running
        VM is refused. Where the disk's CBT chain still reaches the run's snapshot (the newest run's, which the
        role keeps as the next run's base), only the blocks written since are sent (C(method=changed_blocks) in
        RV(disks)); else the whole disk (C(method=full), and C(why_full) says why).
    type: str
    choices: [new, in_place]
    default: new
  target_vm:
    description:
      - With O(mode=in_place), the VM whose disks to overwrite, by uuid or name; default the VM the run backed up.
    type: str
  name:
    description:
      - The new VM's name; default the saved name followed by O(name_suffix).
      - With O(name), the new disks keep their saved names (restoring a lost VM as it was).
    type: str
  name_suffix:
    description:
      - Added to the saved name when O(name) is not given, and then to the names of the new disks too, so that
        they cannot be mistaken for the original's.
    type: str
    default: " (restored)"
  sr_map:
    description:
      - The SR (name or uuid) of each restored disk, keyed by the disk's uuid, its name, or its userdevice (as a
        string, for example C("1")).
      - Disks it does not name go to O(default_sr), else to an SR of the same uuid or name as the one the disk was on.
    type: dict
    default: {}
  default_sr:
    description:
      - The SR (name or uuid) of the disks O(sr_map) does not name.
    type: str
  network_map:
    description:
      - The network (name or uuid) of each interface, keyed by the name or uuid of the network it was on. The value
        V(none) leaves such interfaces out.
      - Interfaces on other networks go to O(default_network), else to a network of the same uuid or name.
    type: dict
    default: {}
  default_network:
    description:
      - The network (name or uuid) of the interfaces O(network_map) does not name; V(none) leaves them out.
    type: str
  mac:
    description:
      - V(regenerate) gives every interface a new MAC address (the host generates it), so that the restored VM can
        run beside the original; V(keep) keeps the saved ones (restoring a lost VM on its own network).
    type: str
    choices: [regenerate, keep]
    default: regenerate
  start:
    description:
      - Start the new VM once it is complete.
    type: bool
    default: false
  progress_file:
    description:
      - A JSON file the module rewrites once a second while it uploads the disks, one entry per disk labelled
        C(VM/disk), in the format of M(xenserver.cbt_backup.vdi_export)'s
        O(xenserver.cbt_backup.vdi_export#module:progress_file); removed when the module ends. Run the task with
        C(async) and C(poll=0) and wait for it with M(xenserver.cbt_backup.export_wait), which prints the progress.
      - An absolute path in a directory that exists.
    type: path
  lease_seconds:
    description:
      - With O(progress_file), stop when nobody waits any more, as
        O(xenserver.cbt_backup.vdi_export#module:lease_seconds) does; the restore then fails with
        C(error_code=CANCELLED) and everything it created is destroyed. V(0) (the default) turns the lease off.
    type: int
    default: 0
requirements:
  - XenAPI
notes:
  - Up to four disks of a new VM are uploaded at once, each as M(xenserver.cbt_backup.vdi_restore) uploads into a new
    VDI, on a connection of its own. When one upload fails, the others stop, and everything the restore created is
    destroyed. A restore in place (O(mode=in_place)) writes the disks one after another.
  - A CD drive is restored empty (the ISO it held belongs to a library of the source pool); RV(cds) names the ISO.
seealso:
  - module: xenserver.cbt_backup.vdi_restore
  - module: xenserver.cbt_backup.vdi_snapshot
  - module: xenserver.cbt_backup.backup_info
'''

EXAMPLES = r'''
- name: Restore the newest backup of web01 as a new VM on another SR and network, and start it
  xenserver.cbt_backup.vm_restore:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    repository_root: /backups
    vm: web01
    default_sr: fast-ssd
    network_map:
      "Pool-wide network associated with eth0": restore-lan
    start: true
  register: restored

- name: Restore the VM as it was before an upgrade, with its MAC addresses, onto the DR pool
  xenserver.cbt_backup.vm_restore:
    hostname: dr-pool.example.com
    username: root
    password: "{{ vault_dr_password }}"
    repository_root: /backups
    vm: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f
    point: "2026-11-25T02:00:00Z"
    name: web01
    default_sr: Local storage
    default_network: dr-lan
    mac: keep
'''

RETURN = r'''
vm:
  description: The new VM (in check mode its uuid is null).
  returned: success
  type: dict
  contains:
    uuid:
      description: The new VM's uuid.
      type: str
      sample: 2f9b7d3e-1c4a-4e8b-9a6d-5c0e1f2a3b4c
    name:
      description: Its name.
      type: str
      sample: web01 (restored)
    power_state:
      description: C(Halted), or C(Running) with O(start).
      type: str
      sample: Halted
run:
  description: The backup run restored (RFC 3339 UTC).
  returned: success
  type: str
  sample: "2026-11-25T02:00:00Z"
source_vm:
  description: The VM the run backed up, C(vm_uuid), C(pool_uuid) and C(pool_name).
  returned: success
  type: dict
  sample: {vm_uuid: 8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f, pool_uuid: 4c1e2d3f-5a6b-4c7d-8e9f-0a1b2c3d4e5f, pool_name: paris}
disks:
  description:
    - One per restored disk, in userdevice order.
    - With O(mode=in_place), each also has C(method) (C(changed_blocks) or C(full)), C(why_full) (why not only
      the changed blocks, or null), C(blocks) (2 MiB blocks sent) and C(changed_blocks) (64 KiB blocks written
      since the run's snapshot).
  returned: success
  type: list
  elements: dict
  sample: [{userdevice: "0", source_disk: 5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10, name: web01-disk0, label: web01/web01-disk0,
            repository: /backups/8d2f.../5f0c..., point: 20261125T020004Z-incr, sr: 0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d,
            vdi: 7e6d5c4b-3a29-4b1c-8d0e-1f2a3b4c5d6e, bytes_sent: 1073741824}]
vifs:
  description: One per interface created, with its C(device), C(network) (uuid) and C(MAC).
  returned: with O(mode=new)
  type: list
  elements: dict
  sample: [{device: "0", network: 6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d, MAC: "2a:1f:33:0c:9e:41"}]
cds:
  description: One per CD drive, restored empty, with the ISO it held (C(was)).
  returned: with O(mode=new)
  type: list
  elements: dict
  sample: [{userdevice: "3", empty: true, was: guest-tools.iso}]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_restore as _vm_restore
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import CbtBackupError


def main():
    spec = _xenapi_module.argument_spec(
        name=dict(type='str'),
        name_suffix=dict(type='str', default=' (restored)'),
        sr_map=dict(type='dict', default={}),
        default_sr=dict(type='str'),
        network_map=dict(type='dict', default={}),
        default_network=dict(type='str'),
        mac=dict(type='str', choices=['regenerate', 'keep'], default='regenerate'),
        start=dict(type='bool', default=False),
        mode=dict(type='str', choices=['new', 'in_place'], default='new'),
        target_vm=dict(type='str'),
        progress_file=dict(type='path'),
        lease_seconds=dict(type='int', default=0),
    )
    spec.update(_xenapi_module.vm_backup_argument_spec())  # the xenserver.cbt_backup._vm_backup doc fragment
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params
    if params['target_vm'] and params['mode'] != 'in_place':
        module.fail_json(msg='target_vm names the VM a restore in place overwrites: it needs mode: in_place',
                         error_code='INVALID_OPTION')
    problem = _progress.option_problem(params['progress_file'], params['lease_seconds'])
    if problem:
        module.fail_json(msg=problem, error_code='INVALID_OPTION')
    try:  # the run first: its disks name the progress file's entries
        chosen = _vm_restore.chosen_run(_vm_restore.find_vm_directory(params['repository_root'], params['vm']),
                                        params['point'])
    except CbtBackupError as exc:
        _xenapi_module.fail(module, exc)
    watch = None if module.check_mode else _xenapi_module.start_progress(
        module, params['progress_file'], _vm_restore.disk_labels(chosen[0]), params['lease_seconds'],
        'nothing was restored')

    def restore(client):
        if params['mode'] == 'in_place':
            return _vm_restore.restore_in_place(
                client, chosen, target_vm=params['target_vm'], check_mode=module.check_mode,
                disk_progress=watch.disks if watch else None, cancel=watch.cancellation if watch else None)
        return _vm_restore.restore_new_vm(
            client, chosen, name=params['name'], name_suffix=params['name_suffix'],
            sr_map=dict((str(k), str(v)) for k, v in params['sr_map'].items()), default_sr=params['default_sr'],
            network_map=dict((str(k), str(v)) for k, v in params['network_map'].items()),
            default_network=params['default_network'], keep_macs=params['mac'] == 'keep', start=params['start'],
            check_mode=module.check_mode, disk_progress=watch.disks if watch else None,
            cancel=watch.cancellation if watch else None)

    try:
        _xenapi_module.run(module, restore)
    finally:  # also when the login failed: no progress or lease file is left
        if watch is not None:
            watch.stop()


if __name__ == '__main__':
    main()
