# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test PKI for NBD interop tests, generated with ``cryptography``.

``make_pki(directory)`` writes (RSA 2048 keys, SHA-256 signatures)::

    host/            self-signed host leaf (CA:FALSE), like a fresh XenServer host certificate
        server-cert.pem, server-key.pem, ca-cert.pem (= server-cert.pem)   -> nbdkit --tls-certificates
    ca/              private CA + server leaf signed by it
        ca-cert.pem, server-cert.pem, server-key.pem                       -> qemu-nbd tls-creds-x509 dir, nbd-server
    ca-private/ca-key.pem
    client/          client certificate signed by the CA (nbd-server requires mutual TLS)
        client-cert.pem, client-key.pem
    libnbd-host/     ca-cert.pem = host leaf                 (libnbd ``tls-certificates`` dir, self-signed host)
    libnbd-ca/       ca-cert.pem = CA                        (libnbd dir, qemu-nbd / nbdkit-ca)
    libnbd-ca-mtls/  ca-cert.pem + client-cert.pem + client-key.pem       (libnbd dir, nbd-server)
    libnbd-wrong/    ca-cert.pem = unrelated self-signed certificate      (must fail verification)
    wrong/cert.pem, wrong/key.pem      unrelated self-signed certificate
    reissued/cert.pem                  same key as the host leaf, new serial and validity

The result is cached per (directory, host name) for the life of the process.
"""

from __future__ import absolute_import, division, print_function

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__metaclass__ = type

DEFAULT_HOST_NAME = 'xenhost01.lab.test'
KEY_SIZE = 2048

_CACHE = {}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def new_key():
    """Return a fresh RSA private key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


def key_pem(key):
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode('ascii')


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')


def _name(common_name, org='xenserver.cbt_backup tests'):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def build_cert(subject_cn, key, issuer_cert=None, issuer_key=None, ca=False, san_dns=(), san_ips=(),
               server=False, client=False, not_before=None, days=365, serial=None):
    """Build and sign one certificate.

    Self-signed when ``issuer_cert`` is None. ``san_dns``/``san_ips`` fill subjectAltName.
    """
    not_before = not_before or (_now() - datetime.timedelta(minutes=5))
    subject = _name(subject_cn)
    issuer = issuer_cert.subject if issuer_cert is not None else subject
    signing_key = issuer_key if issuer_key is not None else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False), critical=True)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    alt = [x509.DNSName(n) for n in san_dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in san_ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False)
    return builder.sign(private_key=signing_key, algorithm=hashes.SHA256())


class PkiBundle:
    """Paths and PEM texts of a generated test PKI (see module docstring for the layout)."""

    def __init__(self, directory, host_name):
        self.directory = directory
        self.host_name = host_name
        # filled by make_pki
        self.host_cert_pem = self.host_key_pem = None
        self.ca_cert_pem = self.ca_key_pem = None
        self.server_cert_pem = self.server_key_pem = None
        self.client_cert_pem = self.client_key_pem = None
        self.wrong_cert_pem = self.wrong_key_pem = None
        self.reissued_host_cert_pem = None

    def path(self, *parts):
        return os.path.join(self.directory, *parts)

    # server credential dirs
    @property
    def host_dir(self):
        """nbdkit ``--tls-certificates`` dir with the self-signed host leaf."""
        return self.path('host')

    @property
    def ca_dir(self):
        """qemu-nbd / nbdkit dir with ca-cert.pem + CA-signed server-cert.pem/server-key.pem."""
        return self.path('ca')

    @property
    def ca_cert_path(self):
        return self.path('ca', 'ca-cert.pem')

    @property
    def host_cert_path(self):
        return self.path('host', 'server-cert.pem')

    @property
    def host_key_path(self):
        return self.path('host', 'server-key.pem')

    @property
    def server_cert_path(self):
        return self.path('ca', 'server-cert.pem')

    @property
    def server_key_path(self):
        return self.path('ca', 'server-key.pem')

    @property
    def client_cert_path(self):
        return self.path('client', 'client-cert.pem')

    @property
    def client_key_path(self):
        return self.path('client', 'client-key.pem')

    @property
    def wrong_cert_path(self):
        return self.path('wrong', 'cert.pem')

    @property
    def wrong_key_path(self):
        return self.path('wrong', 'key.pem')

    @property
    def reissued_host_cert_path(self):
        return self.path('reissued', 'cert.pem')

    # libnbd client dirs (tls-certificates=DIR)
    @property
    def libnbd_host_dir(self):
        return self.path('libnbd-host')

    @property
    def libnbd_ca_dir(self):
        return self.path('libnbd-ca')

    @property
    def libnbd_ca_mtls_dir(self):
        return self.path('libnbd-ca-mtls')

    @property
    def libnbd_wrong_dir(self):
        return self.path('libnbd-wrong')

    def as_dict(self):
        keys = [k for k in dir(self) if not k.startswith('_') and k not in ('path', 'as_dict')]
        return dict((k, getattr(self, k)) for k in keys)


def _write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, mode)


def make_pki(directory, host_name=DEFAULT_HOST_NAME):
    """Generate the test PKI under ``directory`` (created if needed) and return a ``PkiBundle``."""
    directory = os.path.abspath(str(directory))
    key = (directory, host_name)
    if key in _CACHE:
        return _CACHE[key]
    b = PkiBundle(directory, host_name)
    now = _now()

    host_key = new_key()
    host_cert = build_cert(host_name, host_key, san_dns=[host_name], san_ips=['127.0.0.1'], server=True,
                           not_before=now - datetime.timedelta(days=1), days=3650)
    reissued = build_cert(host_name, host_key, san_dns=[host_name], san_ips=['127.0.0.1'], server=True,
                          not_before=now - datetime.timedelta(hours=1), days=730)

    ca_key = new_key()
    ca_cert = build_cert('xenserver.cbt_backup test CA', ca_key, ca=True, days=3650,
                         not_before=now - datetime.timedelta(days=1))
    srv_key = new_key()
    srv_cert = build_cert(host_name, srv_key, issuer_cert=ca_cert, issuer_key=ca_key, san_dns=[host_name],
                          san_ips=['127.0.0.1'], server=True, not_before=now - datetime.timedelta(days=1))
    cli_key = new_key()
    cli_cert = build_cert('nbd-backup-client', cli_key, issuer_cert=ca_cert, issuer_key=ca_key, client=True,
                          not_before=now - datetime.timedelta(days=1))

    wrong_key = new_key()
    wrong_cert = build_cert(host_name, wrong_key, san_dns=[host_name], san_ips=['127.0.0.1'], server=True,
                            not_before=now - datetime.timedelta(days=1))

    b.host_cert_pem, b.host_key_pem = cert_pem(host_cert), key_pem(host_key)
    b.reissued_host_cert_pem = cert_pem(reissued)
    b.ca_cert_pem, b.ca_key_pem = cert_pem(ca_cert), key_pem(ca_key)
    b.server_cert_pem, b.server_key_pem = cert_pem(srv_cert), key_pem(srv_key)
    b.client_cert_pem, b.client_key_pem = cert_pem(cli_cert), key_pem(cli_key)
    b.wrong_cert_pem, b.wrong_key_pem = cert_pem(wrong_cert), key_pem(wrong_key)

    files = [
        (('host', 'server-cert.pem'), b.host_cert_pem, 0o644),
        (('host', 'server-key.pem'), b.host_key_pem, 0o600),
        (('host', 'ca-cert.pem'), b.host_cert_pem, 0o644),
        (('ca', 'ca-cert.pem'), b.ca_cert_pem, 0o644),
        (('ca', 'server-cert.pem'), b.server_cert_pem, 0o644),
        (('ca', 'server-key.pem'), b.server_key_pem, 0o600),
        (('ca-private', 'ca-key.pem'), b.ca_key_pem, 0o600),
        (('client', 'client-cert.pem'), b.client_cert_pem, 0o644),
        (('client', 'client-key.pem'), b.client_key_pem, 0o600),
        (('libnbd-host', 'ca-cert.pem'), b.host_cert_pem, 0o644),
        (('libnbd-ca', 'ca-cert.pem'), b.ca_cert_pem, 0o644),
        (('libnbd-ca-mtls', 'ca-cert.pem'), b.ca_cert_pem, 0o644),
        (('libnbd-ca-mtls', 'client-cert.pem'), b.client_cert_pem, 0o644),
        (('libnbd-ca-mtls', 'client-key.pem'), b.client_key_pem, 0o600),
        (('libnbd-wrong', 'ca-cert.pem'), b.wrong_cert_pem, 0o644),
        (('wrong', 'cert.pem'), b.wrong_cert_pem, 0o644),
        (('wrong', 'key.pem'), b.wrong_key_pem, 0o600),
        (('reissued', 'cert.pem'), b.reissued_host_cert_pem, 0o644),
    ]
    for parts, text, mode in files:
        _write(b.path(*parts), text, mode)
    _CACHE[key] = b
    return b


def spki_sha256(pem_text):
    """SHA-256 (hex) of the DER SubjectPublicKeyInfo of a PEM certificate, for pinning tests."""
    cert = x509.load_pem_x509_certificate(pem_text.encode('ascii'))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return digest.finalize().hex()


class ExpiredHostCert:
    """A self-signed host certificate whose validity ended in the past (see ``make_expired_host_cert``)."""

    def __init__(self, directory, host_name, cert_pem, key_pem, not_after):
        self.directory = directory      # nbdkit --tls-certificates dir: server-cert.pem, server-key.pem, ca-cert.pem
        self.host_name = host_name
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.not_after = not_after      # aware UTC datetime, whole seconds

    @property
    def cert_path(self):
        return os.path.join(self.directory, 'server-cert.pem')

    @property
    def not_after_rfc3339(self):
        return self.not_after.strftime('%Y-%m-%dT%H:%M:%SZ')


def make_expired_host_cert(directory, host_name=DEFAULT_HOST_NAME, expired_days_ago=30, valid_days=365):
    """Write a self-signed host leaf that expired ``expired_days_ago`` days ago under ``directory``.

    Laid out like ``host/`` of ``make_pki`` (server-cert.pem, server-key.pem, ca-cert.pem = the leaf) so that it
    can be given to nbdkit ``--tls-certificates``. Returns an ``ExpiredHostCert``.
    """
    directory = os.path.abspath(str(directory))
    not_after = _now() - datetime.timedelta(days=expired_days_ago)
    not_before = not_after - datetime.timedelta(days=valid_days)
    key = new_key()
    cert = build_cert(host_name, key, san_dns=[host_name], san_ips=['127.0.0.1'], server=True,
                      not_before=not_before, days=valid_days)
    bundle = ExpiredHostCert(directory, host_name, cert_pem(cert), key_pem(key), not_after)
    _write(os.path.join(directory, 'server-cert.pem'), bundle.cert_pem)
    _write(os.path.join(directory, 'server-key.pem'), bundle.key_pem, 0o600)
    _write(os.path.join(directory, 'ca-cert.pem'), bundle.cert_pem)
    return bundle
