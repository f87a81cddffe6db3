# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The two TLS policies xapi-nbd has shipped, imposed on nbdkit (GnuTLS) and on the API (OpenSSL).

nbdkit 1.32 has no priority option and uses GnuTLS's built-in "NORMAL" priority. GnuTLS reads a
system configuration file whose [overrides] section can disable versions, ciphers, MACs, key
exchanges and groups for every priority string; GNUTLS_SYSTEM_PRIORITY_FILE points it at our own
file, so the policy applies to nbdkit alone.

current: TLS 1.2 only, ECDHE-RSA with AES-256-GCM / AES-128-GCM, curve secp384r1 only.
"""

from __future__ import absolute_import, division, print_function

import os
import ssl

__metaclass__ = type

POLICIES = ('current', 'legacy')

_CURRENT = """# xenlab: xapi's current TLS policy (ocaml/xapi-consts/tls_policy.ml)
[overrides]
disabled-version = tls1.3
disabled-version = tls1.1
disabled-version = tls1.0
tls-disabled-cipher = CHACHA20-POLY1305
tls-disabled-cipher = AES-128-CCM
tls-disabled-cipher = AES-256-CCM
tls-disabled-cipher = AES-128-CBC
tls-disabled-cipher = AES-256-CBC
tls-disabled-kx = RSA
tls-disabled-kx = DHE-RSA
tls-disabled-kx = ECDHE-ECDSA
tls-disabled-group = GROUP-SECP256R1
tls-disabled-group = GROUP-SECP521R1
tls-disabled-group = GROUP-X25519
tls-disabled-group = GROUP-FFDHE2048
tls-disabled-group = GROUP-FFDHE3072
tls-disabled-group = GROUP-FFDHE4096
tls-disabled-group = GROUP-FFDHE6144
tls-disabled-group = GROUP-FFDHE8192
"""

OPENSSL_CURRENT = 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256'
OPENSSL_LEGACY = 'AES128-SHA256'


def gnutls_env(policy, workdir):
    """Environment for nbdkit so that its GnuTLS offers only ``policy``."""
    if policy != 'current':
        return {}
    path = os.path.join(workdir, 'gnutls-current.conf')
    with open(path, 'w') as handle:
        handle.write(_CURRENT)
    # Fail loudly if this GnuTLS cannot parse the file, rather than silently offering more.
    return {'GNUTLS_SYSTEM_PRIORITY_FILE': path, 'GNUTLS_SYSTEM_PRIORITY_FAIL_ON_INVALID': '1'}


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
