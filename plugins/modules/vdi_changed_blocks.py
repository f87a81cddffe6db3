#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_changed_blocks
short_description: List the blocks of a XenServer disk that changed between two CBT snapshots
version_added: 0.1.0
description:
  - Calls C(VDI.list_changed_blocks) for two snapshots of one disk with changed block tracking (CBT) enabled, and
    returns the base64 bitmap (one bit per 64 KiB block) together with the count, the bytes and the list of changed
    extents.
  - O(base) is the older snapshot, usually one reduced to CBT metadata after the previous backup
    (M(xenserver.cbt_backup.vdi_snapshot) with O(xenserver.cbt_backup.vdi_snapshot#module:state=metadata_only)),
    O(snapshot) the newer one that is about to be exported.
  - Detects a broken CBT chain, after which an incremental backup is impossible and a full backup is needed. The chain
    is broken when CBT was not enabled on the disk when one of the snapshots was taken (it was disabled, or SM disabled
    it after an error), when the base snapshot no longer exists, when the two snapshots belong to different disks, or
    when the storage backend finds them unrelated (C(SR_BACKEND_FAILURE_460), for example after CBT was disabled and
    enabled again) or their CBT logs inconsistent (C(SR_BACKEND_FAILURE_459)).
  - By default a broken chain fails the task with the explanation; with O(allow_broken_chain=true) the task succeeds
    with RV(chain_broken=true) and RV(chain_broken_reason).
  - Warns when CBT is disabled on the disk now; the two snapshots may still be comparable, but the next backup of
    the disk will have to be a full one.
  - Reads only; never reports a change.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Changes nothing, so check mode runs normally and returns the changed blocks.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  base:
    description:
      - The older snapshot, by uuid (recommended) or name (names match snapshots only; several snapshots of one disk
        share its name, which is an error). Usually a C(cbt_metadata) snapshot.
      - A uuid that names no VDI any more means the base was destroyed, which is a broken chain.
    type: str
    required: true
  snapshot:
    description:
      - The newer snapshot of the same disk, by uuid (recommended) or name (snapshots only).
      - It must not be attached, so list the changed blocks before an NBD export of it starts, or after it ended.
    type: str
    required: true
  allow_broken_chain:
    description:
      - When the CBT chain from O(base) to O(snapshot) is broken, succeed with RV(chain_broken=true) instead of
        failing, so the play can fall back to a full backup.
    type: bool
    default: false
requirements:
  - XenAPI
seealso:
  - module: xenserver.cbt_backup.vdi_snapshot
  - module: xenserver.cbt_backup.vdi_export
  - name: XenServer changed block tracking guide
    description: How CBT snapshots, list_changed_blocks and the NBD server fit together.
    link: https://docs.xenserver.com/en-us/xenserver/8/developer/changed-block-tracking-guide.html
'''

EXAMPLES = r'''
- name: Blocks changed since the previous backup
  xenserver.cbt_backup.vdi_changed_blocks:
    hostname: xenserver01.example.com
    session_id: "{{ xs.session_id }}"
    base: "{{ previous_snapshot_uuid }}"
    snapshot: "{{ snap.snapshots[0].uuid }}"
    allow_broken_chain: true
  register: changes

- name: Fall back to a full backup when the chain is broken
  ansible.builtin.debug:
    msg: "Full backup needed: {{ changes.chain_broken_reason }}"
  when: changes.chain_broken

- name: Apply the changed blocks to the previous copy
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    changed_blocks: "{{ changes.bitmap }}"
    dest: /backups/web01/disk0.raw
  when: not changes.chain_broken
'''

RETURN = r'''
bitmap:
  description:
    - The base64 bitmap from C(VDI.list_changed_blocks); block I(i) (bytes I(i)*65536 to (I(i)+1)*65536) changed when
      bit C(0x80 >> i % 8) of byte C(i // 8) is set. Pass it to the O(xenserver.cbt_backup.vdi_export#module:changed_blocks)
      option of M(xenserver.cbt_backup.vdi_export).
  type: str
  returned: success, unless RV(chain_broken)
  sample: gAAAAAAAAAAAAAAAAAAAAA==
changed_blocks:
  description: Number of changed 64 KiB blocks.
  type: int
  returned: success, unless RV(chain_broken)
  sample: 1
changed_bytes:
  description: Bytes in the changed blocks (the last block counted only up to RV(virtual_size)).
  type: int
  returned: success, unless RV(chain_broken)
  sample: 65536
virtual_size:
  description: Size of O(snapshot) in bytes.
  type: int
  returned: success
  sample: 10737418240
extents:
  description: The changed byte ranges, adjacent blocks merged, in order, clamped to RV(virtual_size).
  type: list
  elements: dict
  returned: success, unless RV(chain_broken)
  contains:
    offset:
      description: Start of the range in bytes.
      type: int
      sample: 0
    length:
      description: Length of the range in bytes (a multiple of 64 KiB, except possibly at the end of the disk).
      type: int
      sample: 65536
  sample: [{offset: 0, length: 65536}]
chain_broken:
  description: Whether the CBT chain from O(base) to O(snapshot) is broken, so only a full backup is possible.
  type: bool
  returned: success
  sample: false
chain_broken_reason:
  description: Why the chain is broken, in words; null when it is not.
  type: str
  returned: success
  sample: the base snapshot 0b7f6a3e-5d27-4c1e-9f6a-2d8e4b1c3a90 no longer exists
base:
  description: The base snapshot (null when it no longer exists).
  type: dict
  returned: success
  contains:
    uuid:
      description: Its uuid.
      type: str
    ref:
      description: Its XenAPI reference.
      type: str
    name:
      description: Its name (the same as its disk's).
      type: str
    type:
      description: Its VDI type, C(cbt_metadata) when its data was destroyed.
      type: str
    snapshot_of:
      description: The uuid of its disk (null if the disk no longer exists).
      type: str
    time:
      description: When it was taken, RFC 3339 in UTC (Z).
      type: str
    cbt_enabled:
      description: Whether it carries CBT metadata.
      type: bool
    virtual_size:
      description: Its size in bytes.
      type: int
snapshot:
  description: The newer snapshot, with the same fields as RV(base).
  type: dict
  returned: success
'''

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.ops import changed_blocks as _changed_blocks_ops
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module


def main():
    module = AnsibleModule(
        argument_spec=_xenapi_module.argument_spec(
            base=dict(type='str', required=True),
            snapshot=dict(type='str', required=True),
            allow_broken_chain=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params

    def action(client):
        try:
            return _changed_blocks_ops.list_changed_blocks(client, params['base'], params['snapshot'],
                                                           allow_broken_chain=params['allow_broken_chain'])
        except _changed_blocks_ops.ChainBroken as exc:
            # fail_json exits here; the client is still logged out by _xenapi_module.run.
            _xenapi_module.fail(module, exc, changed=False, chain_broken=True, chain_broken_reason=exc.reason)

    _xenapi_module.run(module, action)


if __name__ == '__main__':
    main()
