# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one root of every error the collection raises.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

``code`` names the condition (modules return it as ``error_code``), ``message`` says what happened and what
to do, ``result`` holds facts a caller should see next to the failure (returned with it by the modules).
Domain errors (NBD, XenAPI, images, repository, export) subclass this; the Ansible adapter catches only it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class CbtBackupError(Exception):
    """Root of the collection's errors; subclasses set a class-level default ``code``."""

    code = 'CBT_BACKUP_ERROR'

    def __init__(self, message, code=None, result=None):
        super(CbtBackupError, self).__init__(message)
        if code:
            self.code = code
        self.result = dict(result or {})

    # The message lives in args[0], so that callers that add to it (``exc.args = (...)``) and callers that
    # set ``exc.message`` see and change the same text.
    @property
    def message(self):
        return str(self.args[0]) if self.args else ''

    @message.setter
    def message(self, text):
        self.args = (text,) + tuple(self.args[1:])


class Cancelled(CbtBackupError):
    """Work stopped because its caller cancelled it (vdi_export: the lease of ``progress_file`` expired)."""

    code = 'CANCELLED'
