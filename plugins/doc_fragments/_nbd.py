# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Note that this doc fragment is **PRIVATE** to the collection. It can have breaking changes at any time.

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment:
    """Options of the modules that read a disk over NBD."""

    DOCUMENTATION = r'''
options:
  connections:
    description:
      - Number of NBD connections to read over in parallel.
      - XenServer's NBD server answers one request at a time per connection, so parallel connections are what
        makes an export fast. A XenServer host accepts at most 16 NBD connections in total, across all clients.
    type: int
    default: 4
  requests_in_flight:
    description:
      - Read requests kept in flight on each connection, to hide the network round trip.
      - Each request reads up to 1 MiB; the reader lowers this number if all buffers together would exceed 128 MiB.
    type: int
    default: 8
  tls:
    description:
      - Use TLS (C(NBD_OPT_STARTTLS)) and verify the server certificate before the export name is sent.
      - The certificate is accepted if it is the C(cert) that C(VDI.get_nbd_info) returned, or has the same public key,
        or (only when O(tls_ca_path) is set) chains to that CA bundle and names the connection's C(subject).
      - A server that refuses STARTTLS is refused in turn; the client never falls back to clear text.
      - Set to V(false) only for networks with purpose C(insecure_nbd); the result then carries a warning.
    type: bool
    default: true
  tls_ca_path:
    description:
      - PEM bundle of CA certificates for the fallback check of the server certificate, for hosts whose certificate
        was replaced by a CA-signed one after C(VDI.get_nbd_info) was called.
    type: path
  timeout:
    description:
      - Seconds to wait for the NBD server to accept a connection or answer a request.
    type: float
    default: 60
  retries:
    description:
      - How many times a connection that breaks in the middle of an export is replaced by a new one before the
        export fails. Handshake failures (wrong certificate, unknown export) are never retried.
    type: int
    default: 3
'''
