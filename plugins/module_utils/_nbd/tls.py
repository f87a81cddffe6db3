# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TLS for NBD STARTTLS: the client context and the server certificate check.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

The handshake itself verifies nothing (CERT_NONE); the peer certificate is then checked here,
before any NBD data (above all the export name, which carries a session reference) is sent.
Accepted, in this order:
  1. the server certificate is exactly the one ``VDI.get_nbd_info`` returned (``cert``);
  2. its public key (SubjectPublicKeyInfo) is that certificate's (a re-issued host certificate);
  3. if the user names a CA bundle: it chains to that bundle and names ``subject`` in its SAN.
Pinning deliberately ignores expiry and CA flags: XenServer hosts serve self-signed certificates. A pinned
certificate (or one with the pinned public key) that has expired is still accepted, with a warning
(``TlsSettings.warnings``) that gives its expiry date so that the admin renews the host certificate.
"""

from __future__ import absolute_import, division, print_function

import datetime
import hashlib
import ipaddress
import ssl

__metaclass__ = type

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by the module glue
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = exc

from .errors import NbdTlsError
from .._time import format_utc

# Current XenServer hosts offer TLS 1.2 ECDHE-RSA AES-GCM only; older xapi-nbd releases offer only
# plain-RSA AES128-SHA256, which OpenSSL's default client list leaves out.  Keep the secure default
# list first and add that one legacy suite at the end so both generations connect.
CIPHERS = 'ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:AES128-SHA256:!DSS:!aNULL'
LEGACY_CIPHERS = ('AES128-SHA256',)


class TlsSettings:
    """What the client needs to know to verify one NBD server.

    ``pinned_cert_pem`` is the ``cert`` of get_nbd_info; ``subject`` its ``subject``; ``ca_path`` an
    optional CA bundle for the fallback check.  ``client_cert``/``client_key`` are only needed by
    servers that demand mutual TLS (XenServer does not).
    """

    def __init__(self, pinned_cert_pem=None, subject=None, ca_path=None, client_cert=None, client_key=None):
        if not pinned_cert_pem and not ca_path:
            raise NbdTlsError('TLS needs something to verify the server against: no pinned certificate and no CA '
                              'bundle was given.', situation='nothing_to_verify')
        self.pinned_der = None
        if pinned_cert_pem:
            try:
                self.pinned_der = ssl.PEM_cert_to_DER_cert(pinned_cert_pem.strip() + '\n')
            except ValueError:
                raise NbdTlsError('the "cert" of the NBD connection is not a PEM certificate')
        self.subject = subject
        self.ca_path = ca_path
        self.client_cert = client_cert
        self.client_key = client_key

    def make_context(self):
        """Return an SSLContext for the STARTTLS handshake (TLS 1.2 or newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.set_ciphers(CIPHERS)
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def server_hostname(self):
        """SNI name to send: the subject when it is a DNS name (IP literals are never sent as SNI)."""
        if not self.subject:
            return None
        try:
            ipaddress.ip_address(self.subject)
            return None
        except ValueError:
            return self.subject

    def verify(self, tls_socket, where):
        """Check the peer certificate of ``tls_socket``; return how it was accepted.

        Returns ``'certificate'``, ``'public_key'`` or ``'ca'``; raises NbdTlsError otherwise.
        """
        peer_der = tls_socket.getpeercert(binary_form=True)
        if not peer_der:
            raise NbdTlsError('%s sent no TLS certificate' % where)
        if self.pinned_der is not None:
            if peer_der == self.pinned_der:
                return 'certificate'
            if HAS_CRYPTOGRAPHY and _spki(peer_der) == _spki(self.pinned_der):
                return 'public_key'
        if self.ca_path:
            self._verify_chain(peer_der, tls_socket, where)
            return 'ca'
        raise NbdTlsError(
            '%s presented a TLS certificate (sha256 %s) that is not the pinned certificate (sha256 %s) and has '
            'another public key. Refusing to send the export name.'
            % (where, _fingerprint(peer_der), _fingerprint(self.pinned_der)), situation='certificate_mismatch')

    def warnings(self, tls_socket, where, verified_by, now=None):
        """Warnings about a certificate ``verify`` accepted: an expired pinned certificate is named, with its date.

        ``now`` (an aware datetime) is for tests. Returns a list of messages (empty when all is well).
        """
        if verified_by not in ('certificate', 'public_key'):
            return []  # a CA-verified certificate was checked for expiry by the chain verification
        message = expiry_warning(tls_socket.getpeercert(binary_form=True), where, now=now)
        return [message] if message else []

    def _verify_chain(self, peer_der, tls_socket, where):
        if not HAS_CRYPTOGRAPHY:
            raise NbdTlsError('verifying %s against a CA bundle needs the Python "cryptography" library' % where)
        try:
            from cryptography.x509 import verification
        except ImportError:
            raise NbdTlsError('verifying %s against a CA bundle needs cryptography >= 42' % where)
        if not self.subject:
            raise NbdTlsError('verifying %s against a CA bundle needs the "subject" of the connection' % where)
        with open(self.ca_path, 'rb') as handle:
            roots = x509.load_pem_x509_certificates(handle.read())
        leaf = x509.load_der_x509_certificate(peer_der)
        intermediates = []
        get_chain = getattr(tls_socket, 'get_unverified_chain', None)  # Python 3.13+
        if get_chain is not None:
            chain = get_chain() or []
            intermediates = [x509.load_der_x509_certificate(c) for c in chain[1:] if isinstance(c, bytes)]
        try:
            name = x509.IPAddress(ipaddress.ip_address(self.subject))
        except ValueError:
            name = x509.DNSName(self.subject)
        verifier = (verification.PolicyBuilder()
                    .store(verification.Store(roots))
                    .time(datetime.datetime.now(datetime.timezone.utc))
                    .build_server_verifier(name))
        try:
            verifier.verify(leaf, intermediates)
        except Exception as exc:  # cryptography raises VerificationError with the reason
            raise NbdTlsError(
                '%s presented a TLS certificate (sha256 %s) that is neither the pinned certificate nor valid for "%s" '
                'under the CA bundle %s: %s' % (where, _fingerprint(peer_der), self.subject, self.ca_path, exc),
                situation='certificate_mismatch')


def expiry_warning(der, where, now=None):
    """The warning for a pinned certificate (DER) that has expired by ``now`` (default: the current time), or None."""
    not_after = certificate_not_after(der)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not_after is None or not_after > now:
        return None
    return ('%s presented a TLS certificate that expired on %s (sha256 %s). It was accepted because it is the '
            'pinned certificate (or has its public key), but renew the server certificate before clients that check '
            'expiry refuse it.' % (where, format_utc(not_after), _fingerprint(der)))


def certificate_not_after(der):
    """The end of validity (notAfter) of a DER certificate as an aware UTC datetime; None if it cannot be read.

    With ``cryptography`` when it is installed, otherwise from the DER itself.
    """
    if HAS_CRYPTOGRAPHY:
        try:
            cert = x509.load_der_x509_certificate(der)
            value = getattr(cert, 'not_valid_after_utc', None)  # cryptography >= 42
            if value is None:
                value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
            return value
        except ValueError:
            return None
    return der_not_after(der)


def _der_item(data, pos):
    """Tag, start and end of the content of the DER item at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError('truncated DER')
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7f
        if not 1 <= count <= 4 or pos + count > len(data):
            raise ValueError('bad DER length')
        length = int.from_bytes(data[pos:pos + count], 'big')
        pos += count
    if pos + length > len(data):
        raise ValueError('truncated DER')
    return tag, pos, pos + length


def der_not_after(der):
    """notAfter of a DER X.509 certificate, parsed without ``cryptography``; None if it cannot be read."""
    try:
        _tag, tbs, _end = _der_item(der, 0)        # Certificate ::= SEQUENCE
        _tag, pos, _end = _der_item(der, tbs)      # tbsCertificate ::= SEQUENCE
        tag, _start, end = _der_item(der, pos)
        if tag == 0xa0:                            # [0] version
            pos = end
        for expected in (0x02, 0x30, 0x30):        # serialNumber, signature, issuer
            tag, _start, pos = _der_item(der, pos)
            if tag != expected:
                return None
        tag, validity, _end = _der_item(der, pos)  # Validity ::= SEQUENCE { notBefore, notAfter }
        if tag != 0x30:
            return None
        _tag, _start, pos = _der_item(der, validity)
        tag, start, end = _der_item(der, pos)
        text = bytes(der[start:end]).decode('ascii')
        if tag == 0x17:                            # UTCTime YYMMDDHHMMSSZ, RFC 5280: YY >= 50 is 19YY
            year = int(text[:2])
            text = '%d%s' % (1900 + year if year >= 50 else 2000 + year, text[2:])
        elif tag != 0x18:                          # GeneralizedTime YYYYMMDDHHMMSSZ
            return None
        when = datetime.datetime.strptime(text, '%Y%m%d%H%M%SZ')
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    return when.replace(tzinfo=datetime.timezone.utc)


def _fingerprint(der):
    return hashlib.sha256(der).hexdigest()


def _spki(der):
    """The DER SubjectPublicKeyInfo of a certificate."""
    cert = x509.load_der_x509_certificate(der)
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def describe_session(tls_socket):
    """``TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384``-style summary of a TLS session."""
    cipher = tls_socket.cipher()
    return '%s %s' % (tls_socket.version(), cipher[0] if cipher else '?')


def is_legacy_cipher(tls_socket):
    """True when the session uses a suite without forward secrecy (old xapi-nbd policy)."""
    cipher = tls_socket.cipher()
    return bool(cipher) and cipher[0] in LEGACY_CIPHERS
