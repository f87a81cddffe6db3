# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XenAPI access: log in or reuse a session, look objects up, turn failures into clear errors.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python (no Ansible imports): the modules' glue translates XenApiError into fail_json.
"""

from __future__ import absolute_import, division, print_function

import re
import socket
import ssl

from .._errors import CbtBackupError

__metaclass__ = type

try:
    import XenAPI
    HAS_XENAPI = True
    XENAPI_IMPORT_ERROR = None
except ImportError as exc:  # reported by the module glue with missing_required_lib
    XenAPI = None
    HAS_XENAPI = False
    XENAPI_IMPORT_ERROR = exc

try:
    import xmlrpc.client as xmlrpc_client
except ImportError:  # pragma: no cover - Python 2 is not supported, kept for the import sanity test
    xmlrpc_client = None

ORIGINATOR = 'xenserver.cbt_backup'
API_VERSION = '1.0'
NULL_REF = 'OpaqueRef:NULL'  # XenAPI's "no object" reference
GONE_CODES = ('UUID_INVALID', 'HANDLE_INVALID')  # the object was destroyed (or never existed)
UUID_RE = re.compile(r'^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', re.IGNORECASE)

# What each error code means for a backup engineer, and what to do. {0}, {1}... are the error's parameters.
EXPLANATIONS = {
    'SESSION_AUTHENTICATION_FAILED': 'the host rejected the user name or password',
    'SESSION_INVALID': 'the XenAPI session is not logged in (it was logged out, expired after 24 h without use, or '
                       'belongs to another pool); log in again',
    'HOST_IS_SLAVE': 'this host is a pool member; the pool coordinator is {0}',
    'HANDLE_INVALID': 'the {0} object {1} does not exist (any more)',
    'UUID_INVALID': 'there is no {0} with uuid {1}',
    'VDI_INCOMPATIBLE_TYPE': 'the disk cannot do this because of its type ({1}); a cbt_metadata snapshot has no data '
                             'left to read or export',
    'VDI_NO_CBT_METADATA': 'the disk has no CBT metadata: CBT was not enabled on it when the snapshot was taken',
    'VDI_CBT_ENABLED': 'the operation is not allowed while CBT is enabled on the disk; disable CBT first',
    'VDI_IN_USE': 'the disk is in use ({1}); close NBD connections to it, or wait until the VM or task using it '
                  'releases it, and try again',
    'VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION': 'the disk has on_boot=reset, so it is reset at every boot and '
                                                    'CBT cannot track it; set on_boot to persist',
    'VDI_IS_SHARABLE': 'the disk is sharable, which CBT does not support',
    'VDI_MISSING': 'the disk is missing from its storage repository',
    'SR_OPERATION_NOT_SUPPORTED': 'the storage repository {0} does not support this operation (snapshots and CBT '
                                  'need a storage type that supports them, such as EXT, NFS, SMB, LVM, LVMoISCSI or '
                                  'LVMoHBA)',
    'SR_NOT_ATTACHED': 'the storage repository {0} is not attached to any host',
    'SR_HAS_NO_PBDS': 'the storage repository {0} is not attached to any host',
    'SR_BACKEND_FAILURE_460': 'the changed blocks cannot be listed: {1}. The two snapshots are not part of one CBT '
                              'chain (CBT was disabled in between, a snapshot was destroyed, or they are the same '
                              'disk); take a full backup',
    'SR_BACKEND_FAILURE_459': 'the CBT logs of the two snapshots are inconsistent ({1}); take a full backup',
    'NETWORK_INCOMPATIBLE_PURPOSES': 'the purpose {0} cannot be added because the pool already has a network with '
                                     'purpose {1}: a pool serves NBD either with TLS (nbd) or without (insecure_nbd), '
                                     'not both; remove the other purpose first',
    'NETWORK_UNMANAGED': 'the network {0} is not managed by XenServer',
    'LICENCE_RESTRICTION': 'the pool licence does not include {0}',
    'OPERATION_NOT_ALLOWED': 'the host does not allow this operation: {0}',
    'OTHER_OPERATION_IN_PROGRESS': 'another operation ({2}) is running on the {0} {1}; try again when it has finished',
    'MESSAGE_METHOD_UNKNOWN': 'the host does not know the call {0}; it may be too old for CBT (XenServer 7.3 or newer '
                              'is needed)',
    'UNIMPLEMENTED_IN_SM_BACKEND': 'the storage backend does not implement this operation',
    'PERMISSION_DENIED': 'the user lacks the role for this call ({0})',
    'RBAC_PERMISSION_DENIED': 'the user lacks the role for {0}: {1}',
}


class XenApiError(CbtBackupError):
    """A XenAPI call failed; ``code`` and ``params`` keep the host's error, ``message`` explains it."""

    code = 'XENAPI_ERROR'

    def __init__(self, message, code=None, params=None, from_host=False, result=None):
        super(XenApiError, self).__init__(message, code=code, result=result)
        self.params = list(params or [])
        self.from_host = from_host  # False for conditions this collection detects itself (NOT_FOUND, ...)

    def as_dict(self):
        return {'code': self.code, 'params': self.params}


def explain(code, params):
    """A sentence for an error code and its parameters."""
    template = EXPLANATIONS.get(code)
    if template is None and code and code.startswith('SR_BACKEND_FAILURE'):
        template = 'the storage backend failed: {1}'
    if template is None:
        return 'the host answered %s %s' % (code, list(params))
    padded = list(params) + [''] * 4
    return template.format(*padded)


def normalize_url(hostname):
    """``https://`` is assumed when the host name has no scheme."""
    hostname = hostname.strip()
    if '://' not in hostname:
        hostname = 'https://' + hostname
    return hostname.rstrip('/')


def _redact(text, secrets):
    for secret in secrets:
        if secret:
            text = text.replace(secret, '********')
    return text


class _TimeoutTransport(xmlrpc_client.SafeTransport if xmlrpc_client else object):
    """HTTPS transport with a socket timeout (the stdlib one has none)."""

    def __init__(self, timeout, context):
        super(_TimeoutTransport, self).__init__(context=context)
        self._timeout = timeout

    def make_connection(self, host):
        conn = super(_TimeoutTransport, self).make_connection(host)
        conn.timeout = self._timeout
        return conn


class _PlainTimeoutTransport(xmlrpc_client.Transport if xmlrpc_client else object):
    def __init__(self, timeout):
        super(_PlainTimeoutTransport, self).__init__()
        self._timeout = timeout

    def make_connection(self, host):
        conn = super(_PlainTimeoutTransport, self).make_connection(host)
        conn.timeout = self._timeout
        return conn


class XenApiClient:
    """A XenAPI session: logged in with credentials, or attached to an existing ``session_id``.

    Use as a context manager; a session this client logged in itself is logged out on exit.
    """

    MAX_REDIRECTS = 2

    def __init__(self, hostname, username=None, password=None, session_id=None, validate_certs=True, ca_path=None,
                 timeout=60.0):
        if not HAS_XENAPI:
            raise XenApiError('the Python library "XenAPI" is missing: %s' % XENAPI_IMPORT_ERROR, code='LIBRARY_MISSING')
        if not hostname:
            raise XenApiError('no host given: set hostname (or XENSERVER_HOST)', code='INVALID_OPTION')
        if not session_id and not (username and password is not None):
            raise XenApiError('give username and password (or XENSERVER_USER / XENSERVER_PASSWORD), or a session_id',
                              code='INVALID_OPTION')
        self.url = normalize_url(hostname)
        self.username = username
        self._password = password
        self.session_id = session_id
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.timeout = timeout
        self.logged_in = False
        self._session = None

    # -- session -----------------------------------------------------------------------------------

    def tls_context(self):
        """The TLS context for this pool's HTTPS endpoints (XML-RPC and the HTTP handlers alike)."""
        if self.validate_certs:
            return ssl.create_default_context(cafile=self.ca_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _make_session(self, url):
        if url.startswith('https://'):
            transport = _TimeoutTransport(self.timeout, self.tls_context())
        else:
            transport = _PlainTimeoutTransport(self.timeout)
        return XenAPI.Session(url, transport=transport)

    def open(self):
        """Log in (following HOST_IS_SLAVE to the coordinator) or attach to ``session_id``."""
        if self.session_id:
            self._session = self._make_session(self.url)
            self._session._session = self.session_id  # pylint: disable=protected-access
            self.call('pool.get_all')  # proves the session is valid
            return self
        url = self.url
        for dummy in range(self.MAX_REDIRECTS + 1):
            session = self._make_session(url)
            try:
                self._guard(lambda: session.xenapi.login_with_password(self.username, self._password, API_VERSION,
                                                                       ORIGINATOR), 'session.login_with_password')
            except XenApiError as exc:
                if exc.code == 'HOST_IS_SLAVE' and exc.params:
                    scheme = url.split('://', 1)[0]
                    url = '%s://%s' % (scheme, exc.params[0])
                    continue
                raise
            self._session = session
            self.url = url
            self.session_id = session.handle
            self.logged_in = True
            return self
        raise XenApiError('HOST_IS_SLAVE redirected more than %d times; give the pool coordinator as hostname'
                          % self.MAX_REDIRECTS, code='HOST_IS_SLAVE')

    def sibling(self):
        """Another client on this open client's session, with a connection of its own (one XML-RPC connection
        serves one call at a time): for calls from another thread. Closing it never logs the session out."""
        other = XenApiClient(self.url, session_id=self.session_id, validate_certs=self.validate_certs,
                             ca_path=self.ca_path, timeout=self.timeout)
        other._session = other._make_session(self.url)
        other._session._session = self.session_id  # pylint: disable=protected-access
        return other

    def close(self):
        """Log out if this client logged in; never raises."""
        session, self._session = self._session, None
        if session is not None and self.logged_in:
            self.logged_in = False
            try:
                session.xenapi.session.logout()
            except Exception:  # pylint: disable=broad-except
                pass

    def logout(self):
        """Log out ``session_id`` (also one this client did not log in itself)."""
        session = self._session
        # The SDK's own logout needs a login it made; call session.logout over XML-RPC directly.
        raw = getattr(session, 'session.logout')
        reply = self._guard(lambda: raw(self.session_id), 'session.logout')
        if isinstance(reply, dict) and reply.get('Status') != 'Success':
            details = [str(d) for d in reply.get('ErrorDescription') or ['UNKNOWN']]
            raise XenApiError('session.logout failed: %s' % explain(details[0], ['********']), code=details[0])
        self.logged_in = False
        self._session = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc_info):
        self.close()

    # -- calls ---------------------------------------------------------------------------------------

    def call(self, method, *args):
        """Call ``Class.method(*args)`` (the session is added); return the value or raise XenApiError."""
        target = self._session.xenapi
        for part in method.split('.'):
            target = getattr(target, part)
        return self._guard(lambda: target(*args), method)

    def _guard(self, thunk, method):
        secrets = [self._password, self.session_id]
        try:
            return thunk()
        except XenAPI.Failure as failure:
            details = [str(d) for d in (failure.details or ['UNKNOWN'])]
            code, params = details[0], details[1:]
            if code == 'SESSION_INVALID':
                params = ['********']
            message = '%s failed: %s' % (method, explain(code, params))
            raise XenApiError(_redact(message, secrets), code=code, params=[_redact(p, secrets) for p in params],
                              from_host=True)
        except xmlrpc_client.Fault as fault:
            if fault.faultCode == 401:
                raise XenApiError('%s failed: the session_id is not logged in (it was logged out or expired); log in '
                                  'again' % method, code='SESSION_INVALID')
            raise XenApiError(_redact('%s failed: the host answered with an XML-RPC fault %s: %s'
                                      % (method, fault.faultCode, fault.faultString), secrets), code='XMLRPC_FAULT')
        except xmlrpc_client.ProtocolError as exc:
            raise XenApiError('%s failed: HTTP %s %s from %s' % (method, exc.errcode, exc.errmsg, self.url),
                              code='HTTP_ERROR')
        except ssl.SSLCertVerificationError as exc:
            raise XenApiError('cannot verify the TLS certificate of %s: %s. Give the CA (or the host certificate) in '
                              'ca_path, or set validate_certs: false' % (self.url, exc.verify_message or exc),
                              code='TLS_VERIFY_FAILED')
        except socket.timeout:
            raise XenApiError('%s failed: %s did not answer within %s s (api_timeout)' % (method, self.url, self.timeout),
                              code='API_TIMEOUT')
        except (OSError, ssl.SSLError) as exc:
            raise XenApiError('cannot reach the XenAPI at %s: %s' % (self.url, getattr(exc, 'strerror', None) or exc),
                              code='CONNECTION_FAILED')

    # -- lookups -------------------------------------------------------------------------------------

    def find(self, cls, ident, kind=None, predicate=None):
        """Return ``(ref, record)`` of the ``cls`` object whose uuid or name_label is ``ident``.

        ``predicate(record)`` narrows name lookups (e.g. no snapshots); more than one match is an error.
        """
        kind = kind or cls
        if UUID_RE.match(ident):
            try:
                ref = self.call('%s.get_by_uuid' % cls, ident)
            except XenApiError as exc:
                if exc.code != 'UUID_INVALID':
                    raise
            else:
                return ref, self.call('%s.get_record' % cls, ref)
        refs = self.call('%s.get_by_name_label' % cls, ident)
        matches = []
        for ref in refs:
            record = self.call('%s.get_record' % cls, ref)
            if predicate is None or predicate(record):
                matches.append((ref, record))
        if not matches:
            raise XenApiError('no %s has the uuid or name "%s"' % (kind, ident), code='NOT_FOUND')
        if len(matches) > 1:
            raise XenApiError('the name "%s" is ambiguous: %d objects of kind %s have it (uuids %s); name it by uuid'
                              % (ident, len(matches), kind, ', '.join(sorted(r['uuid'] for dummy, r in matches))),
                              code='AMBIGUOUS')
        return matches[0]
