# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which parts of a VDI hold data: the block allocation table of its VHD export over HTTP.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

xapi-nbd answers no NBD block status, so a full export would read every byte of the disk.  The host's
``GET /export_raw_vdi?vdi=...&format=vhd`` streams the VDI as a dynamic VHD whose block allocation table
(right after the footer copy and the dynamic header) lists the 2 MiB blocks that hold data: that much is
read, then the connection is closed, so the host never sends the data itself (Xen Orchestra reads the map
the same way).  Anything that keeps the map from being read is an :class:`AllocationUnavailable` with the
reason, and the caller reads the whole disk.
"""

from __future__ import absolute_import, division, print_function

import socket
import ssl

from ..._errors import CbtBackupError
from ..._image.vhd import VhdError, read_allocation
from ..client import XenApiError
from .host_http import MAX_REDIRECTS, REDIRECTS, HostConnection, redact

try:
    import http.client as http_client
    from urllib.parse import quote
except ImportError:  # pragma: no cover - Python 2 is not supported, kept for the import sanity test
    http_client = None
    quote = None

__metaclass__ = type

SOURCE = 'vhd_bat'


class AllocationUnavailable(CbtBackupError):
    """The host gave no allocation map; the message says why (the export then reads everything)."""

    code = 'ALLOCATION_UNAVAILABLE'


def vdi_allocation(client, vdi_ref):
    """The :class:`VhdAllocation` of ``vdi_ref`` from the host's VHD export (header and table only)."""
    task_ref = client.call('task.create', 'xenserver.cbt_backup allocation map', 'export_raw_vdi header of %s' % vdi_ref)
    try:
        return _read_map(client, vdi_ref, task_ref)
    finally:
        for method in ('task.cancel', 'task.destroy'):  # the export stopped after the table: nothing to keep
            try:
                client.call(method, task_ref)
            except XenApiError:
                pass


def _read_map(client, vdi_ref, task_ref):
    query = 'session_id=%s&vdi=%s&format=vhd&task_id=%s' % (quote(client.session_id, safe=''), quote(vdi_ref, safe=''),
                                                            quote(task_ref, safe=''))
    url = client.url
    for dummy in range(MAX_REDIRECTS + 1):
        connection = HostConnection(client, url)
        try:
            try:
                connection.conn.request('GET', '/export_raw_vdi?' + query)
                response = connection.conn.getresponse()
                if response.status in REDIRECTS and response.getheader('Location'):
                    url = connection.redirected_url(response.getheader('Location'))
                    continue
                if response.status != 200:
                    raise AllocationUnavailable('the host answered HTTP %d %s to the VHD export'
                                                % (response.status, response.reason))
                return read_allocation(response.read)
            except VhdError as exc:
                raise AllocationUnavailable('the VHD export gave no usable allocation table: %s' % exc)
            except ssl.SSLCertVerificationError as exc:
                raise AllocationUnavailable('the TLS certificate of %s could not be verified: %s'
                                            % (client.url, exc.verify_message or exc))
            except socket.timeout:
                raise AllocationUnavailable('the VHD export did not answer within %s s' % client.timeout)
            except (OSError, ssl.SSLError, http_client.HTTPException) as exc:
                detail = getattr(exc, 'strerror', None) or exc
                raise AllocationUnavailable(redact('the VHD export failed: %s' % detail, client))
        finally:
            connection.close()
    raise AllocationUnavailable('the VHD export was redirected more than %d times' % MAX_REDIRECTS)
