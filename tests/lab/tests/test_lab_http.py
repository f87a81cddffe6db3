# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP PUT /import_raw_vdi and GET /export_raw_vdi."""

from __future__ import absolute_import, division, print_function

import http.client
import os
import random
import ssl
import subprocess
from urllib.parse import urlencode, urlsplit

import pytest

from labtools import require

__metaclass__ = type

MIB = 1 << 20


class Http:
    def __init__(self, lab, session_ref):
        parts = urlsplit(lab.info['url'])
        self.host, self.port = parts.hostname, parts.port
        self.ctx = ssl.create_default_context(cafile=lab.info['ca_cert'])
        self.session = session_ref

    def request(self, method, path, body=None, headers=None, encode_chunked=False, **query):
        query.setdefault('session_id', self.session)
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
        conn.request(method, '%s?%s' % (path, urlencode(query)), body=body, headers=headers or {},
                     encode_chunked=encode_chunked)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response, data


@pytest.fixture(scope='module')
def web(lab):
    session = lab.session()
    yield Http(lab, session.handle), session.xenapi
    session.xenapi.session.logout()


def new_vdi(api, size, name='restore'):
    sr = api.SR.get_by_name_label('Local storage')[0]
    return api.VDI.create({'SR': sr, 'virtual_size': str(size), 'type': 'user', 'sharable': False,
                           'read_only': False, 'other_config': {}, 'name_label': name})


def test_export_raw(lab, web):
    client, api = web
    vdi = api.VDI.get_by_name_label('demo-vm-disk0')[0]
    vdi_uuid = api.VDI.get_uuid(vdi)
    response, data = client.request('GET', '/export_raw_vdi', vdi=vdi_uuid, format='raw')
    assert response.status == 200
    assert response.getheader('content-type') == 'application/octet-stream'
    assert response.getheader('content-disposition') == 'attachment; filename="%s.raw"' % vdi_uuid
    assert data == lab.content(vdi_uuid)
    task = response.getheader('task-id')
    assert api.task.get_status(task) == 'success'
    response, data = client.request('GET', '/export_raw_vdi', vdi=vdi)  # ref instead of uuid, default raw
    assert response.status == 200 and data == lab.content(vdi_uuid)


def test_import_raw_with_task(lab, web):
    client, api = web
    vdi = new_vdi(api, 2 * MIB)
    payload = random.Random(5).randbytes(MIB + 512)
    task = api.task.create('restore', 'lab test')
    response, _body = client.request('PUT', '/import_raw_vdi', body=payload, vdi=api.VDI.get_uuid(vdi),
                                     format='raw', task_id=task)
    assert response.status == 200 and response.getheader('task-id') == task
    record = api.task.get_record(task)
    assert record['status'] == 'success' and record['result'] == '<value>%s</value>' % vdi
    content = lab.content(api.VDI.get_uuid(vdi))
    assert content[:len(payload)] == payload and content[len(payload):] == bytes(2 * MIB - len(payload))
    # Too much data for the VDI: the 200 has gone out, the task carries the error.
    task = api.task.create('restore', 'too big')
    response, _body = client.request('PUT', '/import_raw_vdi', body=bytes(3 * MIB), vdi=vdi, task_id=task)
    assert response.status == 200
    assert api.task.get_status(task) == 'failure' and api.task.get_error_info(task)[0] == 'VDI_IO_ERROR'
    api.VDI.destroy(vdi)


def test_import_refusals(web):
    client, api = web
    vdi = new_vdi(api, MIB)
    response, _body = client.request('PUT', '/import_raw_vdi', body=b'x' * 512, vdi=vdi,
                                     session_id='OpaqueRef:00000000-0000-0000-0000-000000000000')
    assert response.status == 401
    chunks = iter([b'a' * 512, b'b' * 512])
    task = api.task.create('restore', 'chunked')
    response, _body = client.request('PUT', '/import_raw_vdi', body=chunks, headers={'Transfer-Encoding': 'chunked'},
                                     encode_chunked=True, vdi=vdi, task_id=task)
    assert response.status == 404
    assert api.task.get_error_info(task) == ['INTERNAL_ERROR', 'Cannot handle encoding: chunked']
    response, _body = client.request('GET', '/export_raw_vdi', vdi=vdi, session_id='OpaqueRef:bad')
    assert response.status == 401
    api.VDI.destroy(vdi)


def test_import_vhd(lab, web, tmp_path):
    require('qemu-img')
    client, api = web
    raw = tmp_path / 'disk.raw'
    data = bytearray(4 * MIB)
    data[:1000] = random.Random(1).randbytes(1000)
    data[3 * MIB:3 * MIB + 4096] = random.Random(2).randbytes(4096)
    raw.write_bytes(bytes(data))
    vdi = new_vdi(api, 4 * MIB)
    for subformat in ('dynamic', 'fixed'):
        vhd = tmp_path / ('disk-%s.vhd' % subformat)
        subprocess.check_call(['qemu-img', 'convert', '-f', 'raw', '-O', 'vpc', '-o',
                               'subformat=%s,force_size=on' % subformat, str(raw), str(vhd)])
        task = api.task.create('restore', subformat)
        with open(vhd, 'rb') as handle:
            response, _body = client.request('PUT', '/import_raw_vdi', body=handle,
                                             headers={'Content-Length': str(os.path.getsize(vhd))},
                                             vdi=vdi, format='vhd', task_id=task)
        assert response.status == 200
        assert api.task.get_status(task) == 'success', api.task.get_error_info(task)
        assert lab.content(api.VDI.get_uuid(vdi)) == bytes(data)
    api.VDI.destroy(vdi)


def test_export_vhd_lists_the_allocated_blocks(lab, web, tmp_path):
    require('qemu-img')
    client, api = web
    size = 9 * MIB
    vdi = new_vdi(api, size)
    vdi_uuid = api.VDI.get_uuid(vdi)
    data = bytearray(size)
    data[100:5000] = random.Random(3).randbytes(4900)                     # block 0
    data[5 * MIB - 10:5 * MIB + 10] = random.Random(4).randbytes(20)      # block 2
    data[9 * MIB - 512:] = random.Random(5).randbytes(512)               # block 4 (the short last one)
    response, _body = client.request('PUT', '/import_raw_vdi', body=bytes(data), vdi=vdi_uuid, format='raw')
    assert response.status == 200
    response, stream = client.request('GET', '/export_raw_vdi', vdi=vdi_uuid, format='vhd')
    assert response.status == 200 and int(response.getheader('content-length')) == len(stream)
    assert response.getheader('content-disposition') == 'attachment; filename="%s.vhd"' % vdi_uuid
    assert stream[:8] == b'conectix' and stream[512:520] == b'cxsparse'
    table_offset = int.from_bytes(stream[512 + 16:512 + 24], 'big')
    entries = int.from_bytes(stream[512 + 28:512 + 32], 'big')
    bat = [int.from_bytes(stream[table_offset + 4 * i:table_offset + 4 * i + 4], 'big') for i in range(entries)]
    assert entries == 5 and [i for i, e in enumerate(bat) if e != 0xFFFFFFFF] == [0, 2, 4]
    # a VHD that qemu reads as the disk
    vhd = tmp_path / 'export.vhd'
    vhd.write_bytes(stream)
    raw = tmp_path / 'export.raw'
    subprocess.check_call(['qemu-img', 'convert', '-f', 'vpc', '-O', 'raw', str(vhd), str(raw)])
    assert raw.read_bytes()[:size] == bytes(data)
    assert api.task.get_status(response.getheader('task-id')) == 'success'
    response, _body = client.request('GET', '/export_raw_vdi', vdi=vdi_uuid, format='vhd', session_id='OpaqueRef:bad')
    assert response.status == 401
    api.VDI.destroy(vdi)
