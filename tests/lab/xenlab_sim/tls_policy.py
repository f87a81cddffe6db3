# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The two TLS policies xapi-nbd has shipped, as OpenSSL server contexts (the NBD fronts and the API).

current: TLS 1.2 only, ECDHE-RSA with AES-256-GCM / AES-128-GCM, curve secp384r1 only, server preference
(xen-api ocaml/xapi-consts/tls_policy.ml).
legacy: TLS 1.2 only, RSA+AES128-SHA256 (older xapi-nbd and xapi's test tools).
"""

from __future__ import absolute_import, division, print_function

import ssl

__metaclass__ = type

POLICIES = ('current', 'legacy')

OPENSSL_CURRENT = 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256'
OPENSSL_LEGACY = 'AES128-SHA256'


def server_context(policy, cert, key):
    """An OpenSSL server context limited to ``policy`` (TLS 1.2 only in both)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if policy == 'legacy':
        ctx.set_ciphers(OPENSSL_LEGACY)
    else:
        ctx.set_ciphers(OPENSSL_CURRENT)
        ctx.set_ecdh_curve('secp384r1')
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx
