# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing a disk into a VDI: VDI.create on an SR, and ``PUT /import_raw_vdi`` with a streamed body.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Plain Python (no Ansible imports) over an open XenApiClient (``url``, ``session_id``, ``validate_certs``,
``ca_path``, ``timeout``).

The upload follows xapi's contract: a ``Content-Length`` is required (HTTP chunked encoding is refused),
the host answers ``200`` with a ``task-id`` header before it reads the body, and errors after that
only show in the task. So a task is created first (``task.create``) and passed as ``task_id``; once the
host closed the connection its status and error_info say whether the import worked.
"""

from __future__ import absolute_import, division, print_function

import socket
import ssl
import time

from ..model import live_vbds
from .host_http import MAX_REDIRECTS, REDIRECTS, HostConnection, redact
from ..client import NULL_REF, XenApiError, explain

try:
    import http.client as http_client
    from urllib.parse import quote
except ImportError:  # pragma: no cover - Python 2 is not supported, kept for the import sanity test
    http_client = None
    quote = None

from ..._errors import Cancelled, CbtBackupError

__metaclass__ = type

TASK_POLL = 0.5


def find_sr(client, ident):
    """An SR by uuid or name that can hold a new VDI."""
    ref, record = client.find('SR', ident, kind='SR')
    allowed = record.get('allowed_operations') or []
    if allowed and 'vdi_create' not in allowed:
        raise XenApiError('the SR %s (%s, type %s) does not allow creating disks; choose another SR'
                          % (record['name_label'], record['uuid'], record.get('type')), code='SR_OPERATION_NOT_SUPPORTED')
    if record.get('content_type') == 'iso' or record.get('type') == 'iso':
        raise XenApiError('the SR %s is an ISO library; choose an SR for virtual disks' % record['name_label'],
                          code='SR_OPERATION_NOT_SUPPORTED')
    return ref, record


def create_vdi(client, sr_ref, name, virtual_size, description=''):
    """VDI.create a user disk of ``virtual_size`` bytes; return ``(ref, record)``."""
    record = {
        'name_label': name,
        'name_description': description,
        'SR': sr_ref,
        'virtual_size': str(virtual_size),
        'type': 'user',
        'sharable': False,
        'read_only': False,
        'other_config': {},
        'xenstore_data': {},
        'sm_config': {},
        'tags': [],
    }
    ref = client.call('VDI.create', record)
    return ref, client.call('VDI.get_record', ref)


def destroy_vdi(client, ref):
    """VDI.destroy; return None or the reason it failed (never raises)."""
    try:
        client.call('VDI.destroy', ref)
    except XenApiError as exc:
        return exc.message
    return None


def attached_to_running_vms(client, vdi_record):
    """Names of the VMs (other than the control domain) whose VBD of this VDI is currently attached."""
    users = []
    for dummy, vbd in live_vbds(client, vdi_record.get('VBDs') or []):
        if not vbd.get('currently_attached'):
            continue
        name = vbd['VM']
        if vbd['VM'] != NULL_REF:
            try:
                vm = client.call('VM.get_record', vbd['VM'])
                name = '%s (%s)' % (vm['name_label'], vm.get('power_state'))
            except XenApiError:
                pass
        users.append(name)
    return users


class SourceError(CbtBackupError):
    """Producing the upload body failed (reading the restore point); ``error`` is the original exception."""

    code = 'READ_FAILED'

    def __init__(self, error):
        super(SourceError, self).__init__(str(error), code=getattr(error, 'code', None))
        self.error = error


class UploadResult:
    def __init__(self, bytes_sent, seconds, task_result):
        self.bytes_sent = bytes_sent
        self.seconds = seconds
        self.task_result = task_result


def _mib_s(size, seconds):
    return round(size / 1048576.0 / seconds, 1) if seconds > 0 else 0.0


def restore_to_vdi(client, source, sr=None, vdi=None, name=None, fmt='vhd', force=False, check_mode=False,
                   progress=None, cancel=None):
    """Write a restore point (``source``: a restore.RestoreSource) into a new VDI on ``sr`` or over ``vdi``.

    Returns the result dict (with ``warnings``).  A failed upload into a VDI created here destroys that VDI.
    ``progress`` (optional): told ``started(bytes to send)``, then ``read(length)`` for every piece sent.
    ``cancel`` (optional, ``is_set()``/``error()``): checked before every piece; once set, the upload stops with
    its error, as a failed upload does.
    """
    point = source.point
    size = source.virtual_size
    result = dict(source.info(), changed=True, warnings=[])
    if vdi:
        vdi_ref, record = find_target_vdi(client, vdi, size, force)
        sr_uuid = client.call('SR.get_uuid', record['SR'])
        result['vdi'] = {'uuid': record['uuid'], 'name': record['name_label'], 'sr': sr_uuid}
        created = False
    else:
        sr_ref, sr_record = find_sr(client, sr)
        disk_name = (source.disk or {}).get('name') or point.get('source_vdi_name') or 'disk'
        name = name or '%s (restored %s)' % (disk_name, point['id'])
        result['vdi'] = {'uuid': None, 'name': name, 'sr': sr_record['uuid']}
        created = True
    actual_fmt, length, chunks, warning = source.upload_stream(fmt, overwrite=not created)
    if warning:
        result['warnings'].append(warning)
    result.update(format=actual_fmt, bytes_to_send=length, bytes_sent=0, seconds=0.0, throughput_mib_s=0.0)
    if check_mode:
        return result
    if progress is not None or cancel is not None:
        chunks = _watched(chunks, progress, cancel)
        if progress is not None:
            progress.started(length)
    if created:
        description = 'Restored by xenserver.cbt_backup from restore point %s of %s' % (point['id'], source.path)
        vdi_ref, record = create_vdi(client, sr_ref, name, size, description)
        result['vdi']['uuid'] = record['uuid']
    try:
        uploaded = upload(client, vdi_ref, actual_fmt, length, chunks,
                          task_label='xenserver.cbt_backup restore %s' % point['id'])
    except Exception as exc:  # pylint: disable=broad-except
        cause = exc.error if isinstance(exc, SourceError) else exc  # what stopped the body being sent
        if isinstance(exc, XenApiError):
            error = exc
        elif isinstance(cause, Cancelled):
            error = cause
        else:  # reading the repository failed while the body was being sent (Qcow2Error, VhdError, OSError)
            error = XenApiError('the upload stopped because reading restore point %s failed: %s. Run '
                                'xenserver.cbt_backup.backup_verify on %s' % (point['id'], cause, source.path),
                                code='RESTORE_READ_FAILED')
        if created:
            problem = destroy_vdi(client, vdi_ref)
            error.message = ('%s. The new VDI %s was %s, so no half-restored disk is left behind'
                             % (error.message.rstrip('.'), record['uuid'],
                                'destroyed' if problem is None else 'NOT destroyed (%s): destroy it by hand' % problem))
        else:
            error.message = ('%s. The VDI %s was (partly) overwritten and does not hold restore point %s: run the '
                             'restore again' % (error.message.rstrip('.'), record['uuid'], point['id']))
        error.args = (error.message,)
        if error is exc:
            raise
        raise error
    except BaseException:  # interrupted (KeyboardInterrupt, SystemExit): still no half-restored new VDI
        if created:
            destroy_vdi(client, vdi_ref)
        raise
    result.update(bytes_sent=uploaded.bytes_sent, seconds=round(uploaded.seconds, 3),
                  throughput_mib_s=_mib_s(size, uploaded.seconds))
    return result


def restore_blocks_to_vdi(client, source, vdi, extents, progress=None, cancel=None):
    """Write only the 2 MiB blocks of the restore point ``source`` that ``extents`` (``(offset, length)``, the
    changed blocks) touch over the existing VDI ``vdi`` (checked as :func:`find_target_vdi` does, never forced):
    a VHD with just those blocks, whole, zeros included; the importer leaves the blocks it omits as they are.
    Returns ``bytes_sent``, ``seconds`` and ``blocks`` (2 MiB blocks sent)."""
    vdi_ref, record = find_target_vdi(client, vdi, source.virtual_size, force=False)
    stream = source.vhd_stream_of(offset for start, length in extents for offset in range(start, start + length, 65536))
    chunks = stream.chunks
    if progress is not None or cancel is not None:
        chunks = _watched(chunks, progress, cancel)
        if progress is not None:
            progress.started(stream.length)
    uploaded = upload(client, vdi_ref, 'vhd', stream.length, chunks,
                      task_label='xenserver.cbt_backup restore %s (changed blocks)' % source.point['id'])
    return {'vdi': record['uuid'], 'bytes_sent': uploaded.bytes_sent, 'seconds': round(uploaded.seconds, 3),
            'blocks': len(stream.blocks)}


def _watched(chunks, progress, cancel):
    """The chunk factory ``chunks`` telling ``progress`` what it sent and stopping once ``cancel`` is set."""
    def watched():
        for chunk in chunks():
            if cancel is not None and cancel.is_set():
                raise cancel.error()
            yield chunk
            if progress is not None:
                progress.read(len(chunk))
    return watched


def find_target_vdi(client, ident, size, force):
    """The existing VDI to overwrite: a disk (not a snapshot) of the point's size, writable, not in use."""
    ref, record = client.find('VDI', ident, kind='VDI (not a snapshot)',
                              predicate=lambda r: r.get('managed', True) and not r['is_a_snapshot'])
    if record['is_a_snapshot']:
        raise XenApiError('%s is a snapshot; restore onto a disk, or into a new VDI with sr' % ident, code='WRONG_KIND')
    if record.get('read_only'):
        raise XenApiError('the VDI %s (%s) is read-only' % (record['name_label'], record['uuid']), code='VDI_READ_ONLY')
    if record['type'] not in ('user', 'system'):
        raise XenApiError('the VDI %s is of type %s, not a user disk' % (record['uuid'], record['type']),
                          code='VDI_INCOMPATIBLE_TYPE')
    if int(record['virtual_size']) != size:
        raise XenApiError('the VDI %s (%s) has %d bytes but the restore point has %d: they must be equal. Restore into a '
                          'new VDI with sr instead' % (record['name_label'], record['uuid'], int(record['virtual_size']),
                                                       size), code='VDI_SIZE_MISMATCH')
    users = attached_to_running_vms(client, record)
    if users and not force:
        message = ('the VDI %s (%s) is attached to %s; overwriting a disk in use corrupts it. Shut the VM down (or '
                   'unplug the disk), or set force: true' % (record['name_label'], record['uuid'], ', '.join(users)))
        raise XenApiError(message, code='VDI_IN_USE')
    return ref, record


def upload(client, vdi_ref, fmt, length, chunks, task_label='xenserver.cbt_backup restore'):
    """``PUT /import_raw_vdi`` ``length`` bytes from ``chunks()`` (an iterable factory) into ``vdi_ref``.

    Returns an UploadResult; raises XenApiError explaining what went wrong (HTTP status, or the task's
    error_info).  ``chunks`` is called again if the host redirects (the SR is not visible from it).
    """
    task_ref = client.call('task.create', task_label, 'import_raw_vdi of %s' % vdi_ref)
    try:
        started = time.monotonic()
        sent = _put(client, vdi_ref, fmt, length, chunks, task_ref)
        seconds = time.monotonic() - started
        result = wait_task(client, task_ref, 'import_raw_vdi')
        return UploadResult(sent, seconds, result)
    finally:
        try:
            client.call('task.destroy', task_ref)
        except XenApiError:
            pass


def _put(client, vdi_ref, fmt, length, chunks, task_ref):
    url = client.url
    query = 'session_id=%s&vdi=%s&format=%s&task_id=%s' % (quote(client.session_id, safe=''), quote(vdi_ref, safe=''),
                                                           fmt, quote(task_ref, safe=''))
    for dummy in range(MAX_REDIRECTS + 1):
        connection = HostConnection(client, url)
        try:
            status, reason, location, sent = _send(connection, '/import_raw_vdi?' + query, length, chunks, client)
        finally:
            connection.close()
        if status in REDIRECTS and location:
            url = connection.redirected_url(location)
            continue
        if status == 200:
            return sent
        what = {
            401: 'the host refused the session (HTTP 401): it is not logged in any more (logged out or expired); '
                 'log in again',
            403: 'the host refused the upload (HTTP 403): the user lacks the role to import disks',
            404: 'the host answered HTTP 404: it does not know the VDI, or refused the format %s or the encoding' % fmt,
            411: 'the host needs a Content-Length (HTTP 411)',
        }.get(status, 'the host answered HTTP %s %s' % (status, reason))
        detail = _task_failure(client, task_ref)
        raise XenApiError('import_raw_vdi failed: %s%s' % (what, ('; the task says: %s' % detail) if detail else ''),
                          code='SESSION_INVALID' if status == 401 else 'IMPORT_HTTP_%s' % status)
    raise XenApiError('import_raw_vdi failed: redirected more than %d times' % MAX_REDIRECTS, code='IMPORT_REDIRECTS')


def _send(connection, path, length, chunks, client):
    """Send the request and the body; return (status, reason, location, bytes sent)."""
    conn = connection.conn
    sent = 0
    send_error = None
    try:
        conn.putrequest('PUT', path, skip_accept_encoding=True)
        conn.putheader('Content-Length', str(length))
        conn.putheader('Content-Type', 'application/octet-stream')
        conn.endheaders()
        iterator = iter(chunks())
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                break
            except Exception as exc:  # pylint: disable=broad-except
                raise SourceError(exc)
            conn.send(chunk)
            sent += len(chunk)
    except ssl.SSLCertVerificationError as exc:
        raise XenApiError('cannot verify the TLS certificate of %s: %s. Give the CA (or the host certificate) in '
                          'ca_path, or set validate_certs: false' % (client.url, exc.verify_message or exc))
    except socket.timeout:
        raise XenApiError('import_raw_vdi failed: %s did not take data for %s s (after %d of %d bytes)'
                          % (client.url, client.timeout, sent, length), code='IMPORT_TIMEOUT')
    except (OSError, ssl.SSLError) as exc:
        send_error = exc  # the host may have answered and closed early: read its status below
    try:
        response = conn.getresponse()
        status, reason, location = response.status, response.reason, response.getheader('Location')
        try:
            while response.read(65536):  # the host ends the response when the import finished
                pass
        except (OSError, http_client.HTTPException):
            pass
    except (OSError, http_client.HTTPException) as exc:
        error = send_error or exc
        raise XenApiError(redact('import_raw_vdi failed: the connection to %s broke after %d of %d bytes: %s'
                                 % (client.url, sent, length, getattr(error, 'strerror', None) or error), client),
                          code='IMPORT_CONNECTION_LOST')
    if status == 200 and sent != length:
        raise XenApiError('import_raw_vdi failed: the connection broke after %d of %d bytes: %s'
                          % (sent, length, send_error), code='IMPORT_CONNECTION_LOST')
    return status, reason, location, sent


def _task_failure(client, task_ref):
    """The task's error explained, if it failed; '' otherwise."""
    try:
        if client.call('task.get_status', task_ref) != 'failure':
            return ''
        info = [str(item) for item in client.call('task.get_error_info', task_ref)] or ['UNKNOWN']
    except XenApiError:
        return ''
    return '%s (%s)' % (explain(info[0], info[1:]), ' '.join(info))


def wait_task(client, task_ref, what, timeout=None):
    """Wait until the task is no longer pending; return its result, or raise XenApiError with its error_info."""
    deadline = time.monotonic() + (timeout if timeout is not None else max(60.0, client.timeout))
    while True:
        status = client.call('task.get_status', task_ref)
        if status != 'pending':
            break
        if time.monotonic() > deadline:
            raise XenApiError('%s: the host still reports the task as pending; check the task %s on the host'
                              % (what, task_ref), code='TASK_PENDING')
        time.sleep(TASK_POLL)
    if status == 'success':
        return client.call('task.get_result', task_ref)
    info = [str(item) for item in client.call('task.get_error_info', task_ref)] or ['UNKNOWN']
    if status == 'cancelled':
        raise XenApiError('%s was cancelled on the host' % what, code='TASK_CANCELLED')
    raise XenApiError('%s failed on the host: %s' % (what, explain(info[0], info[1:])), code=info[0], params=info[1:],
                      from_host=True)
