#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_nbd_info
short_description: Get the NBD connection details of a XenServer disk or snapshot
version_added: 0.1.0
description:
  - Calls C(VDI.get_nbd_info) for a disk (usually a snapshot) and returns one connection per host and NBD network
    address, ready for the O(xenserver.cbt_backup.vdi_export#module:nbd) option.
  - B(The export names are secrets.) Each one embeds the session reference and is valid only as long as that session
    stays logged in, so use this module with O(session_id) from M(xenserver.cbt_backup.session); with a user name
    and password the module's own session is logged out when it ends, and the export names die with it.
  - The result is censored in all output (an action plugin marks it C(no_log)). Prefer M(xenserver.cbt_backup.vdi_export)
    with O(xenserver.cbt_backup.vdi_export#module:snapshot), which fetches these details itself so they never leave
    the process.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Read-only; runs normally in check mode.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  vdi:
    description:
      - The disk or snapshot, by uuid or name. A name must be unique; snapshots share their disk's name, so prefer the
        uuid for snapshots.
    type: str
    required: true
  nbd_network:
    description:
      - Return only the addresses on this network (uuid or name), for hosts with several NBD networks.
    type: str
requirements:
  - XenAPI
'''

EXAMPLES = r'''
- name: NBD details of a snapshot, in a shared session
  xenserver.cbt_backup.vdi_nbd_info:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    vdi: "{{ snapshot_uuid }}"
  register: nbd

- name: Export it
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd.nbd_info[0] }}"
    dest: /backups/disk0.raw
'''

RETURN = r'''
nbd_info:
  description:
    - One element per host and NBD address. O(xenserver.cbt_backup.vdi_export#module:nbd) takes one element.
    - C(exportname) carries the session reference; treat it as a secret.
  type: list
  elements: dict
  returned: success
  contains:
    address:
      description: IP address of the host on the NBD network.
      type: str
      sample: 192.0.2.10
    port:
      description: TCP port of the NBD server.
      type: int
      sample: 10809
    exportname:
      description: Export name for C(NBD_OPT_EXPORT_NAME); valid while the session is logged in.
      type: str
      sample: /3f4e.....?session_id=OpaqueRef:....
    cert:
      description: PEM certificate of the host's NBD server.
      type: str
      sample: "-----BEGIN CERTIFICATE-----\n..."
    subject:
      description: Host name in the certificate.
      type: str
      sample: xenserver01.example.com
    network_names:
      description: NBD networks whose PIF holds the address.
      type: list
      elements: str
      sample: [backup-net]
    network_uuids:
      description: UUIDs of those networks.
      type: list
      elements: str
      sample: [1b0c2f0e-5a4d-4c8e-9a55-0d6c1f3e2b7a]
    purposes:
      description: NBD purposes of those networks (C(nbd) means TLS, C(insecure_nbd) plain text).
      type: list
      elements: str
      sample: [nbd]
vdi:
  description: The disk whose details these are.
  type: dict
  returned: success
  sample: {uuid: 3f4e..., name: demo-vm-disk0, type: user, virtual_size: 268435456, cbt_enabled: true, is_a_snapshot: true}
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import nbd_access as _nbd_access
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import model as _objects
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module


def gather(module, client):
    ref, record = _objects.find_vdi(client, module.params['vdi'])
    infos = _nbd_access.require_nbd_info(client, ref, record, module.params['nbd_network'])
    vdi = _objects.describe_vdi(ref, record)
    vdi.pop('ref')
    result = dict(changed=False, nbd_info=infos, vdi=vdi)
    if not module.params['session_id']:
        result['warnings'] = [
            'vdi_nbd_info logged in with its own session and logs it out when it ends, so the export names it returns '
            'no longer work: log in with xenserver.cbt_backup.session and pass its session_id, or let '
            'xenserver.cbt_backup.vdi_export fetch the NBD details itself (snapshot: ...)']
    return result


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(vdi=dict(type='str', required=True),
                                                   nbd_network=dict(type='str')),
        supports_check_mode=True,
    )

    def unmask_session():
        # Export names contain the session reference. Ansible would mask that no_log value inside them and
        # return unusable names; the action plugin censors this module's whole successful result instead.
        # Only on success: a failure (whose output is shown) keeps the session ref masked.
        module.no_log_values.discard(module.params['session_id'])

    _xenapi_module.run(module, lambda client: gather(module, client),
                       on_success=unmask_session if module.params['session_id'] else None)


if __name__ == '__main__':
    main()
