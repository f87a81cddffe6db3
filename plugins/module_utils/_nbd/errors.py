# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions raised by the NBD client.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
No message ever contains the export name: on XenServer it carries a session reference.

Every class names its condition in ``code``, which the modules return as ``error_code`` (the class name is
returned as ``error_type``). Messages say what happened in NBD terms only; where the remedy depends on who
called (module options, role variables, XenServer's network purposes), the error carries a ``situation`` key
and the caller adds the advice (``_ansible/nbd_advice.py``).
"""

from __future__ import absolute_import, division, print_function

from .._errors import CbtBackupError

__metaclass__ = type


class NbdError(CbtBackupError):
    """Base class of every error the NBD client raises."""

    retryable = False
    code = 'NBD_ERROR'
    situation = None  # a key the caller's advice is looked up by (see the module doc), or None

    def __init__(self, message, code=None, result=None, situation=None):
        super(NbdError, self).__init__(message, code=code, result=result)
        if situation:
            self.situation = situation


class NbdOptionError(NbdError, ValueError):
    """A connection option (port, timeout, minimum rate) is outside its accepted range."""

    code = 'INVALID_OPTION'


class NbdConnectError(NbdError):
    """The TCP connection to the server could not be opened."""

    retryable = True
    code = 'NBD_CONNECT_FAILED'


class NbdProtocolError(NbdError):
    """The server sent something the protocol does not allow (bad magic, unknown cookie, ...)."""

    code = 'NBD_PROTOCOL_ERROR'


class NbdNegotiationError(NbdError):
    """The server refused an option during the handshake."""

    code = 'NBD_NEGOTIATION_FAILED'


class NbdHandshakeInterrupted(NbdNegotiationError):
    """The connection broke during the handshake (server restarting, connection limit reached, ...)."""

    retryable = True
    code = 'NBD_HANDSHAKE_INTERRUPTED'


class NbdHandshakeTimeout(NbdHandshakeInterrupted):
    """The handshake as a whole took too long (a server that trickles its replies)."""

    code = 'NBD_TIMEOUT'


class NbdTlsError(NbdNegotiationError):
    """TLS could not be set up, or the server's certificate failed verification."""

    code = 'NBD_TLS_FAILED'


class NbdExportRefused(NbdNegotiationError):
    """The server closed the connection instead of opening the export."""

    code = 'NBD_EXPORT_REFUSED'


class NbdConnectionLost(NbdError):
    """The connection broke during transmission (EOF, reset, timeout); a new one may work."""

    retryable = True
    code = 'NBD_CONNECTION_LOST'


class NbdTimeout(NbdConnectionLost):
    """The server did not answer within the timeout, or sent a reply slower than the minimum rate."""

    code = 'NBD_TIMEOUT'


class NbdServerError(NbdError):
    """The server answered a request with an error."""

    code = 'NBD_SERVER_ERROR'

    def __init__(self, message, error=None, offset=None, length=None):
        super(NbdServerError, self).__init__(message)
        self.error = error
        self.offset = offset
        self.length = length
