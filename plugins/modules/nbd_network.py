#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: nbd_network
short_description: Let the XenServer NBD server listen on a network (network purpose nbd or insecure_nbd)
version_added: 0.1.0
description:
  - Adds the purpose V(nbd) or V(insecure_nbd) to a network (O(state=present)) or removes it (O(state=absent)).
    The NBD server of each host listens on the networks that have one of these purposes, and C(VDI.get_nbd_info)
    lists one address per such network and host.
  - A pool serves NBD either with TLS (V(nbd)) or without (V(insecure_nbd)), not both. Adding a purpose while any
    network of the pool has the other one fails with C(NETWORK_INCOMPATIBLE_PURPOSES); the message names the
    network that holds the other purpose. To switch, remove the other purpose first.
  - Warns when no attached PIF on the network has an IP or IPv6 address, because C(VDI.get_nbd_info) would then
    return an empty list.
  - The host reconfigures its firewall for NBD a few seconds after the change; the XenServer documentation
    recommends waiting at least 10 seconds, or retrying the first NBD connection.
  - Changing network purposes needs the C(pool-admin) role.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Reports what would change, including a conflict with the other NBD purpose, without changing it.
    support: full
  diff_mode:
    description: Shows the network's purpose list before and after.
    support: full
options:
  network:
    description:
      - The network, by uuid or by name label. A name that more than one network has is an error; use the uuid.
    type: str
    required: true
  purpose:
    description:
      - V(nbd) serves NBD with TLS only (recommended).
      - V(insecure_nbd) serves NBD without TLS, so disk contents cross the network without integrity or
        confidentiality. Use it only on an isolated backup network.
    type: str
    choices: [nbd, insecure_nbd]
    default: nbd
  state:
    description:
      - V(present) adds O(purpose) to the network, V(absent) removes it. Other purposes of the network are kept.
    type: str
    choices: [present, absent]
    default: present
requirements:
  - XenAPI
'''

EXAMPLES = r'''
- name: Serve NBD with TLS on the backup network
  xenserver.cbt_backup.nbd_network:
    hostname: xenserver01.example.com
    username: root
    password: "{{ vault_xenserver_password }}"
    network: backup-net
    purpose: nbd

- name: Switch the pool from insecure_nbd to nbd (the pool cannot hold both)
  module_defaults:
    group/xenserver.cbt_backup.all:
      hostname: xenserver01.example.com
      username: root
      password: "{{ vault_xenserver_password }}"
  block:
    - name: Remove insecure_nbd
      xenserver.cbt_backup.nbd_network:
        network: backup-net
        purpose: insecure_nbd
        state: absent

    - name: Add nbd
      xenserver.cbt_backup.nbd_network:
        network: backup-net
        purpose: nbd
'''

RETURN = r'''
network:
  description: The network and its purposes after the task (in check mode, the purposes it would have).
  type: dict
  returned: success
  contains:
    uuid:
      description: The network's uuid.
      type: str
      sample: 6f2e3a4b-1c2d-4e5f-8a9b-0c1d2e3f4a5b
    name:
      description: The network's name label.
      type: str
      sample: backup-net
    purpose:
      description: The network's purposes.
      type: list
      elements: str
      sample: [nbd]
    addresses:
      description:
        - IP and IPv6 addresses of the network's attached PIFs (one per host and address family), where the NBD
          server listens when the network has an NBD purpose.
      type: list
      elements: str
      sample: [192.0.2.10]
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops.network import ensure_purpose


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            network=dict(type='str', required=True),
            purpose=dict(type='str', choices=['nbd', 'insecure_nbd'], default='nbd'),
            state=dict(type='str', choices=['present', 'absent'], default='present'),
        ),
        supports_check_mode=True,
    )
    params = module.params

    def action(client):
        result = ensure_purpose(client, params['network'], purpose=params['purpose'],
                                present=params['state'] == 'present', check_mode=module.check_mode)
        diff = result.pop('diff')
        if module._diff:  # pylint: disable=protected-access
            result['diff'] = diff
        return result

    _xenapi_module.run(module, action)


if __name__ == '__main__':
    main()
