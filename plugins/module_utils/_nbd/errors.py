# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions raised by the NBD client.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
No message ever contains the export name: on XenServer it carries a session reference.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class NbdError(Exception):
    """Base class of every error the NBD client raises."""

    retryable = False


class NbdConnectError(NbdError):
    """The TCP connection to the server could not be opened."""

    retryable = True


class NbdProtocolError(NbdError):
    """The server sent something the protocol does not allow (bad magic, unknown cookie, ...)."""


class NbdNegotiationError(NbdError):
    """The server refused an option during the handshake."""


class NbdHandshakeInterrupted(NbdNegotiationError):
    """The connection broke during the handshake (server restarting, connection limit reached, ...)."""

    retryable = True


class NbdTlsError(NbdNegotiationError):
    """TLS could not be set up, or the server's certificate failed verification."""


class NbdExportRefused(NbdNegotiationError):
    """The server closed the connection instead of opening the export."""


class NbdConnectionLost(NbdError):
    """The connection broke during transmission (EOF, reset, timeout); a new one may work."""

    retryable = True


class NbdTimeout(NbdConnectionLost):
    """The server did not answer within the timeout."""


class NbdServerError(NbdError):
    """The server answered a request with an error."""

    def __init__(self, message, error=None, offset=None, length=None):
        super(NbdServerError, self).__init__(message)
        self.error = error
        self.offset = offset
        self.length = length
