#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: session
short_description: Log in to a XenServer pool once and share the session between tasks
version_added: 0.1.0
description:
  - With O(state=present), logs in and returns RV(session_id) for later tasks (their O(session_id) option), so a play
    logs in once. This is what keeps export names from C(VDI.get_nbd_info) valid across tasks, as they are only valid
    while the session that asked for them is logged in.
  - With O(state=absent), logs the O(session_id) out. Use it in an C(always) section so the session never outlives
    the play.
  - Neither logging in nor logging out is reported as a change, since the pool's configuration stays as it was; a run
    that backs up nothing new reports no change.
  - The result is censored in all output (an action plugin marks it C(no_log)); register it and pass
    RV(session_id) on.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Logging in and out changes nothing on the pool, so check mode does both for real.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  state:
    description:
      - V(present) logs in and returns a session; V(absent) logs out O(session_id).
    type: str
    choices: [present, absent]
    default: present
requirements:
  - XenAPI
'''

EXAMPLES = r'''
- name: Back up with one session
  block:
    - name: Log in once
      xenserver.cbt_backup.session:
        hostname: xenserver01.example.com
        username: backup
        password: "{{ vault_xenserver_password }}"
      register: xs

    - name: Use the session in later tasks
      xenserver.cbt_backup.vdi_cbt:
        hostname: xenserver01.example.com
        session_id: "{{ xs.session_id }}"
        vm: web01
        enabled: true
  always:
    - name: Log out
      xenserver.cbt_backup.session:
        hostname: xenserver01.example.com
        session_id: "{{ xs.session_id }}"
        state: absent
      when: xs.session_id is defined
'''

RETURN = r'''
session_id:
  description: The session reference, for the O(session_id) option of later tasks. Treat it as a secret.
  type: str
  returned: O(state=present)
  sample: OpaqueRef:7c8d0e8a-0b1e-4a8f-9e1c-3f0a2d6b5c44
url:
  description: The XenAPI endpoint the session belongs to (the coordinator, after a C(HOST_IS_SLAVE) redirect).
  type: str
  returned: O(state=present)
  sample: https://xenserver01.example.com
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(state=dict(type='str', choices=['present', 'absent'], default='present')),
        required_if=[('state', 'absent', ['session_id'])],
        supports_check_mode=True,
    )
    client = _xenapi_module.make_client(module)
    if module.params['state'] == 'absent':
        try:
            client.open()
        except XenApiError as exc:
            if exc.code == 'SESSION_INVALID':
                module.exit_json(changed=False)  # already logged out
            _xenapi_module.fail(module, exc)
        try:
            client.logout()
        except XenApiError as exc:
            _xenapi_module.fail(module, exc)
        module.exit_json(changed=False)  # sessions are not configuration: see the description
    if module.params['session_id']:
        module.fail_json(msg='state=present logs in with username and password; do not pass session_id', error_code='INVALID_OPTION')
    try:
        client.open()
    except XenApiError as exc:
        _xenapi_module.fail(module, exc)
    # A login changes no configuration of the pool, so it is never reported as a change.
    module.exit_json(changed=False, session_id=client.session_id, url=client.url)


if __name__ == '__main__':
    main()
