#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_export
short_description: Export a XenServer virtual disk, or only its changed blocks, over NBD
version_added: 0.1.0
description:
  - Reads a virtual disk (usually a snapshot) from the NBD server of a XenServer or XCP-ng host and writes it to a raw
    image file.
  - Without O(changed_blocks) it makes a full copy in O(dest), written as a sparse file (all-zero 64 KiB blocks become
    holes) under a temporary name, fsynced and renamed into place.
  - With O(changed_blocks), the bitmap that C(VDI.list_changed_blocks) returns, it reads only the changed 64 KiB blocks
    and applies them to an existing O(dest) that holds the previous copy. The blocks are staged first, so O(dest) is
    only touched once every changed block arrived.
  - This module takes one element of the list that C(VDI.get_nbd_info) returns. Its C(exportname) carries the XenAPI
    session reference and is valid only while that session stays logged in.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._nbd
attributes:
  check_mode:
    description: Connects and negotiates (which validates address, certificate and export name) but reads no data.
    support: full
  diff_mode:
    description: Not supported.
    support: none
  action_group:
    description: Use C(group/xenserver.cbt_backup.all) in C(module_defaults) to set common options once.
    support: full
    membership:
      - xenserver.cbt_backup.all
options:
  nbd:
    description:
      - One element of the list returned by C(VDI.get_nbd_info) (for example from M(xenserver.cbt_backup.vdi_nbd_info)).
    type: dict
    required: true
    suboptions:
      address:
        description: IP address or host name of the NBD server.
        type: str
        required: true
      port:
        description: TCP port of the NBD server (XenServer returns it as a string).
        type: int
        default: 10809
      exportname:
        description:
          - The export name. On XenServer it embeds a session reference, so it is treated as a secret.
        type: str
        required: true
      cert:
        description: PEM certificate of the host's NBD server; the server must present it (or one with its public key).
        type: str
      subject:
        description: Name in the certificate, used for SNI and for the O(tls_ca_path) fallback check.
        type: str
  changed_blocks:
    description:
      - Base64 bitmap from C(VDI.list_changed_blocks), one bit per 64 KiB block, most significant bit first.
      - When set, only these blocks are read and applied to the existing O(dest), which must have the export's size.
      - A bitmap for a larger disk is accepted only if all bits beyond this disk's last block are zero.
    type: str
  dest:
    description: Raw image file to create (full export) or to update (with O(changed_blocks)).
    type: path
    required: true
requirements:
  - cryptography >= 42 (when O(tls=true))
notes:
  - Use C(no_log) on tasks that register C(VDI.get_nbd_info) results; this module already hides O(nbd.exportname).
seealso:
  - name: XenServer changed block tracking guide
    description: How CBT snapshots, list_changed_blocks and the NBD server fit together.
    link: https://docs.xenserver.com/en-us/xenserver/8/developer/changed-block-tracking-guide.html
'''

EXAMPLES = r'''
- name: Full export of a snapshot over TLS, pinned to the host certificate
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    dest: /backups/vm1/disk0.raw
    connections: 4

- name: Apply the blocks that changed since the previous snapshot
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    changed_blocks: "{{ bitmap }}"
    dest: /backups/vm1/disk0.raw

- name: Export from a network with purpose insecure_nbd (no TLS; the result carries a warning)
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    dest: /backups/vm1/disk0.raw
    tls: false
'''

RETURN = r'''
export_size:
  description: Size of the export in bytes.
  type: int
  returned: success
  sample: 10737418240
blocks_changed:
  description: Number of 64 KiB blocks read (all blocks of the disk for a full export).
  type: int
  returned: success
  sample: 1024
bytes_to_read:
  description: Bytes that would be read.
  type: int
  returned: check mode
  sample: 67108864
bytes_read:
  description: Bytes read from the NBD server.
  type: int
  returned: success
  sample: 67108864
bytes_written:
  description: Bytes written to O(dest) (zero blocks of a full export are left as holes and not counted).
  type: int
  returned: success
  sample: 41943040
seconds:
  description: Time spent reading and writing, in seconds.
  type: float
  returned: success
  sample: 1.5
throughput_mib_s:
  description: RV(bytes_read) per second, in MiB/s.
  type: float
  returned: success
  sample: 420.5
tls:
  description: Whether the data crossed the network inside TLS.
  type: bool
  returned: success
  sample: true
connections:
  description: NBD connections used.
  type: int
  returned: success
  sample: 4
reconnects:
  description: Connections that broke during the export and were replaced.
  type: int
  returned: success
  sample: 0
'''

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._cbt import BitmapError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.errors import NbdError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.reader import MAX_CONNECTIONS
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.tls import (
    CRYPTOGRAPHY_IMPORT_ERROR, HAS_CRYPTOGRAPHY,
)


def argument_spec():
    return dict(
        nbd=dict(type='dict', required=True, options=dict(
            address=dict(type='str', required=True),
            port=dict(type='int', default=10809),
            exportname=dict(type='str', required=True, no_log=True),
            cert=dict(type='str'),
            subject=dict(type='str'),
        )),
        changed_blocks=dict(type='str'),
        dest=dict(type='path', required=True),
        connections=dict(type='int', default=4),
        requests_in_flight=dict(type='int', default=4),
        tls=dict(type='bool', default=True),
        tls_ca_path=dict(type='path'),
        timeout=dict(type='float', default=60),
        retries=dict(type='int', default=3),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    if params['tls'] and not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=str(CRYPTOGRAPHY_IMPORT_ERROR))
    if not 1 <= params['connections'] <= MAX_CONNECTIONS:
        module.fail_json(msg='connections must be between 1 and %d (a XenServer host accepts at most %d NBD '
                             'connections in total)' % (MAX_CONNECTIONS, MAX_CONNECTIONS))
    if params['requests_in_flight'] < 1 or params['retries'] < 0 or params['timeout'] <= 0:
        module.fail_json(msg='requests_in_flight must be at least 1, retries at least 0 and timeout positive')
    nbd = params['nbd']
    if params['tls'] and not nbd.get('cert') and not params['tls_ca_path']:
        module.fail_json(msg='tls is true but nbd has no "cert" (the PEM from VDI.get_nbd_info) and no tls_ca_path '
                             'was given, so the server certificate cannot be verified. Pass the whole get_nbd_info '
                             'element, or tls_ca_path, or tls: false for an insecure_nbd network.')
    try:
        target = _export.make_target(nbd, tls=params['tls'], ca_path=params['tls_ca_path'], timeout=params['timeout'])
        result = _export.export_to_file(
            target, params['dest'], changed_blocks=params['changed_blocks'], connections=params['connections'],
            requests_in_flight=params['requests_in_flight'], retries=params['retries'], check_mode=module.check_mode)
    except (NbdError, BitmapError, _export.ExportError) as exc:
        module.fail_json(msg=str(exc), error_type=type(exc).__name__)
    except (IOError, OSError) as exc:
        module.fail_json(msg='writing %s failed: %s; %s was left as it was' % (params['dest'], exc, params['dest']))
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
