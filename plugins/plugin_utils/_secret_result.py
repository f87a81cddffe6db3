# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin base for modules whose result carries secrets (session refs, NBD export names).

Note that this plugin util is **PRIVATE** to the collection. It can have breaking changes at any time.

A module cannot mark its own result as no_log; an action plugin can.  The result is still
registered in full for later tasks, but callbacks (the play output, -vvv, logs) show it censored.
Failures stay readable: their messages never contain secrets.
"""

from __future__ import absolute_import, division, print_function

from ansible.plugins.action import ActionBase

__metaclass__ = type


class SecretResultAction(ActionBase):
    """Run the module of the same name and censor its result in every output."""

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super(SecretResultAction, self).run(tmp, task_vars)
        result.update(self._execute_module(module_name=self._task.action, task_vars=task_vars,
                                           wrap_async=self._task.async_val))
        if not result.get('failed'):  # error messages never hold secrets and must stay readable
            result['_ansible_no_log'] = True
        return result
