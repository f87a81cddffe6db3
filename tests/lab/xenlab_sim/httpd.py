# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP front ends: the XenAPI over HTTPS (XML-RPC, import/export) and the internal control API."""

from __future__ import absolute_import, division, print_function

import base64
import json
import os
import socketserver
import time
import uuid
import xmlrpc.client
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from .lab import BROKEN_BOOT_SECTOR, GUEST_KEY_MARK, LabError
from .store import XenAPIError
from .vhd import VhdError, apply_vhd, export_stream

__metaclass__ = type

CHUNK = 1 << 20


class ThreadingServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class TLSServer(ThreadingServer):
    """HTTPS server; the TLS handshake runs in the request thread, not in accept()."""

    def __init__(self, address, handler, context):
        self.context = context
        ThreadingServer.__init__(self, address, handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        try:
            request.do_handshake()
        except (OSError, ValueError):
            return
        ThreadingServer.finish_request(self, request, client_address)


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'xapi/24.19 (xenlab)'
    sys_version = ''
    # The headers and the body go out in two writes: with Nagle's algorithm the body waited for the client's
    # delayed ACK, 40 ms on every XML-RPC call, where xapi answers in a few milliseconds.
    disable_nagle_algorithm = True
    lab = None
    dispatcher = None

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin,unused-argument
        pass  # keep lab.log for errors

    # ----- XML-RPC -------------------------------------------------------------------------------

    def do_POST(self):  # pylint: disable=invalid-name
        if urlsplit(self.path).path not in ('/', '/RPC2'):
            self._plain(404, 'Not found')
            return
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length)
        try:
            params, method = xmlrpc.client.loads(body)
        except Exception:  # pylint: disable=broad-except
            self._plain(500, '<html><body><h1>HTTP 500 internal server error</h1>Xmlrpc.Parse_error</body></html>',
                        'text/html')
            return
        envelope = self.dispatcher.call(method or '', params)
        payload = xmlrpc.client.dumps((envelope,), methodresponse=True, allow_none=True).encode('utf-8')
        self.send_response(200)
        self.send_header('Content-Type', 'text/xml')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _plain(self, code, text, ctype='text/plain', extra=None, close=False):
        payload = text.encode('utf-8')
        self.send_response(code)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(payload)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header('Connection', 'close')
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    # ----- shared by import and export ----------------------------------------------------------

    def _auth(self, query):
        cookie = SimpleCookie(self.headers.get('Cookie') or '')
        cookie_session = cookie['session_id'].value if 'session_id' in cookie else None
        basic = None
        auth = self.headers.get('Authorization') or ''
        if auth.startswith('Basic '):
            try:
                user, _sep, password = base64.b64decode(auth[6:]).decode('utf-8').partition(':')
                basic = (user, password)
            except (ValueError, UnicodeDecodeError):
                basic = None
        return self.lab.http_session(query, cookie_session, basic)

    def _prepare(self, label):
        """Auth, task and VDI lookup shared by both handlers; None after an error reply."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        session, temporary = self._auth(query)
        task = self.lab.task_start((query.get('task_id') or [None])[0], label)
        if session is None:
            self.lab.task_finish(task, error=['SESSION_AUTHENTICATION_FAILED', '', 'session invalid'])
            self._drain()
            self._plain(401, 'Unauthorised', extra={'task-id': task}, close=True)
            return None
        try:
            vdi = self.lab.vdi_ref_or_uuid((query.get('vdi') or [''])[0])
        except XenAPIError as err:
            self.lab.task_finish(task, error=err.details)
            self._drain()
            self._plain(404, 'VDI not found', extra={'task-id': task}, close=True)
            return None
        fmt = (query.get('format') or ['raw'])[0].lower()
        return {'query': query, 'session': session, 'temporary': temporary, 'task': task, 'vdi': vdi, 'format': fmt}

    def _drain(self, limit=64 << 20):
        """Read and drop a refused upload's body (up to ``limit``) so the client sees our answer
        instead of a broken pipe while it is still sending."""
        if self.command != 'PUT':
            return
        try:
            if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
                total = 0
                while total <= limit:
                    size = int(self.rfile.readline(65537).split(b';')[0].strip() or b'0', 16)
                    if size == 0:
                        while self.rfile.readline(65537) not in (b'\r\n', b'\n', b''):
                            pass
                        return
                    self.rfile.read(size + 2)
                    total += size
                return
            remaining = int(self.headers.get('Content-Length') or 0)
            while 0 < remaining <= limit:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    return
                remaining -= len(data)
        except (OSError, ValueError):
            return

    def _end_temporary(self, req):
        if req and req['temporary']:
            with self.lab.lock:
                if self.lab.store.exists('session', req['temporary']):
                    self.lab.store.destroy('session', req['temporary'])

    # ----- GET /export_raw_vdi -------------------------------------------------------------------

    def do_GET(self):  # pylint: disable=invalid-name
        if urlsplit(self.path).path != '/export_raw_vdi':
            self._plain(404, 'Not found', close=True)
            return
        req = self._prepare('VDI.export_raw_vdi')
        if req is None:
            return
        try:
            self._export(req)
        finally:
            self._end_temporary(req)

    def _export(self, req):
        lab, task, vdi = self.lab, req['task'], req['vdi']
        if req['format'] not in ('raw', 'vhd'):
            lab.task_finish(task, error=['INTERNAL_ERROR', 'Unknown format %s' % req['format']])
            self._plain(404, 'format not supported by the lab', extra={'task-id': task}, close=True)
            return
        with lab.lock:
            rec = lab.store.record('VDI', vdi)
            path = lab.paths.get(rec['uuid'])
        if rec['type'] == 'cbt_metadata' or path is None:
            lab.task_finish(task, error=['VDI_INCOMPATIBLE_TYPE', vdi, 'cbt_metadata'])
            self._plain(500, 'VDI has no data', extra={'task-id': task}, close=True)
            return
        size = rec['virtual_size']
        if req['format'] == 'vhd':
            # like vhd-tool stream: a dynamic VHD whose BAT lists the allocated 2 MiB blocks, sparse ones absent
            length, chunks = export_stream(path, size, uuid.UUID(rec['uuid']).bytes, int(time.time()) - 946684800)
        else:
            length = size

            def chunks():
                with open(path, 'rb') as handle:
                    sent = 0
                    while sent < size:
                        data = handle.read(min(CHUNK, size - sent)) or bytes(min(CHUNK, size - sent))
                        yield data
                        sent += len(data)
        self.send_response(200)
        self.send_header('task-id', task)
        self.send_header('Content-Type', 'application/octet-stream')
        self.send_header('Content-Disposition', 'attachment; filename="%s.%s"' % (rec['uuid'], req['format']))
        self.send_header('Content-Length', str(length))
        self.send_header('Connection', 'close')
        self.close_connection = True
        self.end_headers()
        try:
            for data in chunks():
                self.wfile.write(data)
            self.wfile.flush()
        except (OSError, ValueError):  # the client hung up (a reader of the allocation map stops after the BAT)
            lab.task_finish(task, error=['TASK_CANCELLED', task])
            return
        lab.task_finish(task, result='')

    # ----- PUT /import_raw_vdi -------------------------------------------------------------------

    def do_PUT(self):  # pylint: disable=invalid-name
        if urlsplit(self.path).path != '/import_raw_vdi':
            self._plain(404, 'Not found', close=True)
            return
        req = self._prepare('VDI.import_raw_vdi')
        if req is None:
            return
        try:
            self._import(req)
        finally:
            self._end_temporary(req)

    def _refuse(self, req, code, error, text):
        self.lab.task_finish(req['task'], error=error)
        self._drain()
        self._plain(code, text, extra={'task-id': req['task']}, close=True)

    def _import(self, req):
        lab, task, vdi = self.lab, req['task'], req['vdi']
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            self._refuse(req, 404, ['INTERNAL_ERROR', 'Cannot handle encoding: chunked'], 'chunked encoding refused')
            return
        if req['format'] not in ('raw', 'vhd'):
            self._refuse(req, 404, ['INTERNAL_ERROR', 'Unknown format %s' % req['format']], 'format not supported')
            return
        if self.headers.get('Content-Length') is None:
            self._refuse(req, 411, ['INTERNAL_ERROR', 'Content-Length required'], 'Content-Length required')
            return
        length = int(self.headers['Content-Length'])
        # xapi answers 200 with the task id before it reads the body; later errors go to the task.
        # No Content-Length: the response ends when the connection closes, after the import.
        self.send_response(200)
        self.send_header('task-id', task)
        self.send_header('Connection', 'close')
        self.close_connection = True
        self.end_headers()
        self.wfile.flush()
        error = self._receive(vdi, req['format'], length)
        lab.task_finish(task, result='' if error else '<value>%s</value>' % vdi, error=error)

    def _receive(self, vdi, fmt, length):
        lab = self.lab
        with lab.lock:
            rec = lab.store.record('VDI', vdi)
            path = lab.paths.get(rec['uuid'])
            busy = [v for v in lab.store.find('VBD', VDI=vdi)
                    if lab.store.raw('VBD', v)['currently_attached'] and lab.store.raw('VBD', v)['mode'] == 'RW']
        if rec['type'] == 'cbt_metadata' or path is None:
            return ['VDI_INCOMPATIBLE_TYPE', vdi, 'cbt_metadata']
        if busy:
            return ['VDI_IN_USE', vdi, 'import']
        size = rec['virtual_size']

        def write(offset, data):
            if offset + len(data) > size:
                raise VhdError('write beyond the end of the VDI')
            lab.storage.write_keep_sparse(path, offset, data)
            lab.mark_import(rec['uuid'], offset, len(data))

        try:
            if fmt == 'vhd':
                apply_vhd(self.rfile.read, length, size, write)
            else:
                self._receive_raw(length, write)
        except VhdError as err:
            return ['VDI_IO_ERROR', str(err)]
        return None

    def _receive_raw(self, length, write):
        offset = 0
        while offset < length:
            data = self.rfile.read(min(CHUNK, length - offset))
            if not data:
                raise VhdError('connection closed after %d of %d bytes' % (offset, length))
            write(offset, data)
            offset += len(data)


class ControlHandler(BaseHTTPRequestHandler):
    """Internal JSON endpoints on 127.0.0.1 for the nbdkit plugin and `xenlab write/path/nbd-switch/vm-switch...`."""

    protocol_version = 'HTTP/1.1'
    disable_nagle_algorithm = True  # as ApiHandler: no delayed-ACK wait between headers and body
    lab = None
    secret = None

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin,unused-argument
        pass

    def do_POST(self):  # pylint: disable=invalid-name
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if self.headers.get('X-Xenlab-Secret') != self.secret:
            self._reply(403, {'ok': False, 'error': 'bad secret'})
            return
        try:
            args = json.loads(body.decode('utf-8') or '{}')
            result = self._route(urlsplit(self.path).path, args)
        except (LabError, XenAPIError, ValueError, KeyError) as err:
            self._reply(200, {'ok': False, 'error': str(err)})
            return
        result['ok'] = True
        self._reply(200, result)

    def _route(self, path, args):
        lab = self.lab
        if path == '/internal/ping':
            return {'pid': os.getpid()}
        if path == '/internal/nbd/open':
            return lab.nbd_open(args['export_name'], args.get('host'))
        if path == '/internal/nbd/close':
            lab.nbd_close(args['connection'])
            return {}
        if path == '/internal/write':
            if args.get('broken_boot_sector'):  # the guest wrecks its boot sector: it never boots again
                return lab.guest_write(args['vdi'], 0, len(BROKEN_BOOT_SECTOR), 0, data=BROKEN_BOOT_SECTOR)
            if args.get('guest_key'):  # a boot script that writes xenstore control/<key> is installed
                data = GUEST_KEY_MARK + args['guest_key'].encode('ascii') + b'\n'
                return lab.guest_write(args['vdi'], 0, len(data), 0, data=data)
            return lab.guest_write(args['vdi'], int(args['offset']), int(args['length']), args.get('seed', 0))
        if path == '/internal/path':
            return {'path': lab.content_path(args['vdi'])}
        if path == '/internal/nbd/switch':
            return lab.set_nbd_switch(args['host'], args['switch'], args.get('times'))
        if path == '/internal/nbd/counts':
            return lab.nbd_connection_counts(reset=bool(args.get('reset')))
        if path == '/internal/sessions':
            return {'sessions': lab.open_sessions()}
        if path == '/internal/vm/switch':
            return lab.set_vm_switch(args['vm'], args['boot'])
        if path == '/internal/vm/info':
            return lab.vm_info(args['vm'])
        raise LabError('unknown endpoint %s' % path)

    def _reply(self, code, obj):
        payload = json.dumps(obj).encode('utf-8')
        self.send_response(code)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
