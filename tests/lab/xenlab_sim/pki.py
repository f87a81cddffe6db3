# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host certificate for the API and the NBD front, like /etc/xensource/xapi-ssl.pem.

Default: a self-signed leaf (basicConstraints CA:FALSE) naming the host in its SAN, as a fresh
XenServer / XCP-ng host has. With ``ca_signed`` a small lab CA signs the host leaf instead.
RSA keys, because both TLS policies of xapi-nbd use RSA authentication (plain-RSA key
exchange in the legacy one).
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


def _key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder):
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3650))


def _leaf(hostname, address, key, issuer_name, issuer_key):
    builder = x509.CertificateBuilder().subject_name(_name(hostname)).issuer_name(issuer_name)
    builder = _validity(builder).public_key(key.public_key()).serial_number(x509.random_serial_number())
    builder = builder.add_extension(x509.SubjectAlternativeName([
        x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=True, key_encipherment=True, content_commitment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
        critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _ca():
    key = _key()
    name = _name('xenlab CA')
    builder = _validity(x509.CertificateBuilder().subject_name(name).issuer_name(name))
    builder = builder.public_key(key.public_key()).serial_number(x509.random_serial_number())
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    builder = builder.add_extension(x509.KeyUsage(
        digital_signature=False, key_encipherment=False, content_commitment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
        critical=True)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return key, builder.sign(key, hashes.SHA256())


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'wb') as handle:
        handle.write(data)


def make_host_pki(directory, hostname, address, ca_signed=False):
    """Write the host's PKI into ``directory`` and return the paths.

    The directory doubles as nbdkit's --tls-certificates dir (ca-cert.pem, server-cert.pem,
    server-key.pem). ``ca_cert`` is what a client should trust: the host certificate itself
    when self-signed, the lab CA otherwise.
    """
    os.makedirs(directory, exist_ok=True)
    key = _key()
    if ca_signed:
        ca_key, ca_cert = _ca()
        leaf = _leaf(hostname, address, key, ca_cert.subject, ca_key)
        ca_pem = _pem(ca_cert)
    else:
        leaf = _leaf(hostname, address, key, _name(hostname), key)
        ca_pem = _pem(leaf)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    paths = {
        'host_cert': os.path.join(directory, 'server-cert.pem'),
        'host_key': os.path.join(directory, 'server-key.pem'),
        'ca_cert': os.path.join(directory, 'ca-cert.pem'),
        'dir': directory,
    }
    _write(paths['host_cert'], _pem(leaf))
    _write(paths['host_key'], key_pem, 0o600)
    _write(paths['ca_cert'], ca_pem)
    return paths
