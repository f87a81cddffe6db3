#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: backup_health_check
short_description: Prove that a backup run boots, in a temporary VM that is destroyed afterwards
version_added: 0.1.0
description:
  - Restores one backup run of a VM (as M(xenserver.cbt_backup.vm_restore) does) into a temporary VM with no network
    interface, starts it, and waits up to O(timeout) seconds for its guest agent to report (the VM's guest metrics
    carry an OS or PV driver version), or for the key O(guest_key) that the guest writes. Then it shuts the VM down hard and destroys it and its disks, whatever
    happened.
  - Integrity hashes prove that the backup holds what was read; only a boot proves that the VM can run from it.
  - A VM that does not boot within O(timeout) is a result (RV(booted) false, RV(reason)), not a failure of the task;
    set O(fail_on_no_boot) to fail it.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
  - xenserver.cbt_backup._vm_backup
attributes:
  check_mode:
    description: Chooses the run and resolves the SRs, creates and starts nothing; RV(booted) is null.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  sr:
    description:
      - The SR (name or uuid) of the temporary disks; default an SR of the same uuid or name as the disks were on.
    type: str
  timeout:
    description: Seconds to wait for the guest agent after the start.
    type: int
    default: 300
  guest_key:
    description:
      - Wait for a key the guest itself writes, instead of the guest agent's report. A boot script in the guest (a
        systemd unit that runs once the application is up, for example) writes xenstore C(control/<guest_key>)
        (C(xenstore-write control/backup-ok 1)); xapi copies every C(control/*) key of the guest into the VM's
        guest metrics (C(other)), where this module looks for it.
      - This proves more than a boot (the application came up), and works for guests whose agent reports late.
    type: str
  fail_on_no_boot:
    description: Fail the task when the VM does not boot (the temporary VM is destroyed all the same).
    type: bool
    default: false
requirements:
  - XenAPI
notes:
  - The temporary VM is named C(<VM name> (health check <run>)) and has no network interface, so it cannot clash
    with the running original (same addresses, same services).
  - The VM's guest agent (the XenServer VM Tools, or a Linux guest agent) must be installed for it to report.
seealso:
  - module: xenserver.cbt_backup.vm_restore
  - module: xenserver.cbt_backup.backup_verify
'''

EXAMPLES = r'''
- name: Prove that last night's backup of web01 boots
  xenserver.cbt_backup.backup_health_check:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    repository_root: /backups
    vm: web01
    timeout: 600
    fail_on_no_boot: true
'''

RETURN = r'''
booted:
  description: Whether the guest agent reported within O(timeout) (null in check mode).
  returned: success
  type: bool
  sample: true
seconds_to_agent:
  description: Seconds from the start to the guest agent's first report (null when it did not boot).
  returned: success
  type: float
  sample: 23.5
reason:
  description: Why the VM is not considered booted (null when it booted).
  returned: success
  type: str
  sample: the guest agent did not report within 300 seconds of the start
run:
  description: The backup run checked (RFC 3339 UTC).
  returned: success
  type: str
  sample: "2026-11-25T02:00:00Z"
vm_name:
  description: The name the temporary VM had.
  returned: success
  type: str
  sample: web01 (health check 2026-11-25T02:00:00Z)
left_behind:
  description: What could not be destroyed afterwards (empty when nothing is left); destroy these by hand.
  returned: success
  type: list
  elements: str
  sample: []
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vm_restore as _vm_restore


def main():
    spec = _xenapi_module.argument_spec(
        sr=dict(type='str'),
        timeout=dict(type='int', default=300),
        guest_key=dict(type='str', no_log=False),
        fail_on_no_boot=dict(type='bool', default=False),
    )
    spec.update(_xenapi_module.vm_backup_argument_spec())  # the xenserver.cbt_backup._vm_backup doc fragment
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    params = module.params
    if params['timeout'] < 1:
        module.fail_json(msg='timeout must be at least 1 second, not %d' % params['timeout'], error_code='INVALID_OPTION')

    def check(client):
        chosen = _vm_restore.chosen_run(_vm_restore.find_vm_directory(params['repository_root'], params['vm']),
                                        params['point'])
        result = _vm_restore.health_check(client, chosen, default_sr=params['sr'], timeout=params['timeout'],
                                          check_mode=module.check_mode, guest_key=params['guest_key'])
        if params['fail_on_no_boot'] and result['booted'] is False:
            raise _vm_restore.VmRestoreError('the backup run %s of %s did not boot: %s. The temporary VM was destroyed'
                                             % (result['run'], params['vm'], result['reason']), code='NO_BOOT',
                                             result=result)
        return result

    _xenapi_module.run(module, check)


if __name__ == '__main__':
    main()
