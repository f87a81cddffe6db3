# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the vdi_nbd_info module and censors its result: it carries secrets (see plugin_utils._secret_result)."""

from __future__ import absolute_import, division, print_function

from ansible_collections.xenserver.cbt_backup.plugins.plugin_utils._secret_result import SecretResultAction

__metaclass__ = type


class ActionModule(SecretResultAction):
    pass
