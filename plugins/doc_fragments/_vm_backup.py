# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Note that this doc fragment is **PRIVATE** to the collection. It can have breaking changes at any time.

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Options of the modules that use one backup run of a whole VM."""

    DOCUMENTATION = r'''
options:
  repository_root:
    description:
      - The directory holding the VMs' backups (the role's C(incremental_backup_repository)); the VM's are in
        C(<repository_root>/<vm uuid>).
    type: path
    required: true
  vm:
    description:
      - The VM as it was backed up, by uuid or by the name it had then.
    type: str
    required: true
  point:
    description:
      - V(latest), or an RFC 3339 UTC time (for example C(2026-11-25T02:00:00Z)) to use the newest backup run at or
        before it.
    type: str
    default: latest
'''
