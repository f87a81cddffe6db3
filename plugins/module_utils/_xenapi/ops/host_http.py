# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP(S) requests to a host's handlers (``/import_raw_vdi``, ``/export_raw_vdi``) with the XenAPI client's
TLS settings and session.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
"""

from __future__ import absolute_import, division, print_function

try:
    import http.client as http_client
    from urllib.parse import urlsplit
except ImportError:  # pragma: no cover - Python 2 is not supported, kept for the import sanity test
    http_client = None
    urlsplit = None

__metaclass__ = type

MAX_REDIRECTS = 2
REDIRECTS = (301, 302, 303, 307, 308)


class HostConnection:
    """One HTTP(S) connection to the host at ``url``, with the XenAPI client's TLS settings."""

    def __init__(self, client, url):
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        host, port = parts.hostname, parts.port
        if parts.scheme == 'https':
            self.conn = http_client.HTTPSConnection(host, port, timeout=client.timeout, context=client.tls_context())
        else:
            self.conn = http_client.HTTPConnection(host, port, timeout=client.timeout)

    def redirected_url(self, location):
        """The base URL a ``Location`` header sends the request to (the host that can serve it)."""
        parts = urlsplit(location)
        return '%s://%s' % (parts.scheme or self.scheme, parts.netloc or self.netloc)

    def close(self):
        self.conn.close()


def redact(text, client):
    """``text`` without the client's session reference (it appears in request URLs)."""
    return text.replace(client.session_id, '********') if client.session_id else text
