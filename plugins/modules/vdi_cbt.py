#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_cbt
short_description: Enable or disable changed block tracking (CBT) on XenServer disks
version_added: 0.1.0
description:
  - Enables or disables CBT on one disk (O(vdi)) or on every user disk of a VM (O(vm)). CBT can be switched while
    the VM runs.
  - With CBT enabled, each snapshot of the disk records which blocks changed since the previous one, so backups
    after the first can copy only those blocks.
  - Disabling CBT breaks the chain between the disk and its older snapshots for good; the next backup after
    enabling it again must be a full one.
  - Before changing anything, every disk that needs a change is checked. The task fails, naming the disk, when its
    storage repository cannot do CBT (C(SR_OPERATION_NOT_SUPPORTED)) or it has C(on_boot=reset)
    (C(VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION)); with O(vm), no disk is changed then.
  - Disks that already are in the wanted state are left alone, also when their storage cannot do CBT.
  - Needs the C(vm-admin) role.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Reports which disks would change, and fails where the real run would, without changing anything.
    support: full
  diff_mode:
    description: Shows each disk's CBT state before and after.
    support: full
options:
  vdi:
    description:
      - The disk, by uuid or by name label. Snapshots are not accepted (CBT is switched on the disk itself).
      - A name that more than one disk has is an error; use the uuid.
      - Exactly one of O(vdi), O(vdis) and O(vm) is required.
    type: str
  vdis:
    description:
      - The list form of O(vdi), for many disks in one task (a few at a time, in one session), each entry as O(vdi) takes
        it. An entry that fails fails alone; the others are still handled, and each entry's result is in RV(vdis).
    type: list
    elements: str
  vm:
    description:
      - A VM, by uuid or by name label; all its user and system disks are handled (CD drives and empty drives are
        skipped).
      - Exactly one of O(vdi), O(vdis) and O(vm) is required.
    type: str
  enabled:
    description: Whether CBT should be enabled.
    type: bool
    default: true
requirements:
  - XenAPI
'''

EXAMPLES = r'''
- name: Enable CBT on all disks of a VM
  xenserver.cbt_backup.vdi_cbt:
    hostname: xenserver01.example.com
    username: root
    password: "{{ vault_xenserver_password }}"
    vm: web01

- name: Disable CBT on one disk, named by uuid
  xenserver.cbt_backup.vdi_cbt:
    hostname: xenserver01.example.com
    username: root
    password: "{{ vault_xenserver_password }}"
    vdi: 2f1c8a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
    enabled: false

- name: Enable CBT on many disks in one task
  xenserver.cbt_backup.vdi_cbt:
    hostname: xenserver01.example.com
    username: root
    password: "{{ vault_xenserver_password }}"
    vdis:
      - 2f1c8a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
      - web01-data
'''

RETURN = r'''
disks:
  description:
    - The disks handled, in the VM's device order.
    - When the host refuses a change, the failure result lists the disks handled before the one that failed.
  type: list
  elements: dict
  returned: success, and on a change the host refused
  contains:
    uuid:
      description: The disk's uuid.
      type: str
      sample: 2f1c8a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
    name:
      description: The disk's name label.
      type: str
      sample: web01-disk0
    cbt_enabled:
      description: Whether CBT is enabled on the disk after the task (in check mode, whether it would be).
      type: bool
      sample: true
    changed:
      description: Whether the task changed (in check mode, would change) the disk's CBT state.
      type: bool
      sample: true
vdis:
  description:
    - With O(vdis), one result per entry, in the order given, with C(vdi) (as given), C(failed), and RV(disks) as this
      module returns it for O(vdi); a failed entry holds C(msg) and C(error_code) instead, and the module fails after
      every entry was handled.
  type: list
  elements: dict
  returned: O(vdis) is given
  sample: [{vdi: web01-data, failed: false, changed: true, disks: [{uuid: 2f1c8a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b,
           name: web01-data, cbt_enabled: true, changed: true}]}]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops.cbt import ensure_cbt


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            vdi=dict(type='str'),
            vm=dict(type='str'),
            vdis=dict(type='list', elements='str'),
            enabled=dict(type='bool', default=True),
        ),
        mutually_exclusive=[('vdi', 'vm', 'vdis')],
        required_one_of=[('vdi', 'vm', 'vdis')],
        supports_check_mode=True,
    )
    params = module.params

    def one(client, vdi=None, vm=None):
        # A CbtError's result (disks handled so far, changed) comes back with the failure.
        result = ensure_cbt(client, vdi=vdi, vm=vm, enabled=params['enabled'], check_mode=module.check_mode)
        diff = result.pop('diff')
        if module._diff:  # pylint: disable=protected-access
            result['diff'] = diff
        return result

    if params['vdis'] is not None:
        _xenapi_module.run_items(module, 'vdis', params['vdis'], lambda client, vdi: one(client, vdi=vdi), 'vdi',
                                 'CBT_FAILED', 'CBT changes')
    _xenapi_module.run(module, lambda client: one(client, vdi=params['vdi'], vm=params['vm']))


if __name__ == '__main__':
    main()
