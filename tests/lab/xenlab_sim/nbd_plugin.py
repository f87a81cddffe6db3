# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""nbdkit python plugin (API_VERSION 2) playing xapi-nbd's part for the lab.

Runs inside nbdkit's embedded interpreter (Debian's python3, standard library only): it must
not import the simulator. Every connection asks the simulator's internal endpoint whether the
export name is a valid token, and tells it when the connection closes, so the simulator can keep
the dom0 VBD that xapi-nbd would have plugged (VDI_IN_USE).
"""

from __future__ import absolute_import, division, print_function

import errno
import json
import os
import urllib.request

import nbdkit  # pylint: disable=import-error

__metaclass__ = type

API_VERSION = 2
SECTOR = 512
_CONFIG = {}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def config(key, value):
    _CONFIG[key] = value


def config_complete():
    # The simulator passes its control endpoint through the environment (not argv, which ps shows).
    _CONFIG.setdefault('control', os.environ.get('XENLAB_CONTROL_URL'))
    _CONFIG.setdefault('secret', os.environ.get('XENLAB_CONTROL_SECRET'))
    _CONFIG.setdefault('host', os.environ.get('XENLAB_HOST'))  # the uuid of the host this front plays
    for key in ('control', 'secret'):
        if not _CONFIG.get(key):
            raise RuntimeError('xenlab plugin needs %s= or XENLAB_CONTROL_URL/SECRET' % key)


def thread_model():
    # xapi-nbd handles one request at a time per connection.
    return nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS


def _control(path, payload):
    request = urllib.request.Request(_CONFIG['control'] + path, data=json.dumps(payload).encode('utf-8'),
                                     headers={'Content-Type': 'application/json', 'X-Xenlab-Secret': _CONFIG['secret']})
    # No proxies: the endpoint is on 127.0.0.1 whatever http_proxy says.
    with _OPENER.open(request, timeout=30) as response:
        return json.loads(response.read().decode('utf-8'))


def open(readonly):  # pylint: disable=redefined-builtin,unused-argument
    reply = _control('/internal/nbd/open', {'export_name': nbdkit.export_name(), 'host': _CONFIG.get('host')})
    if not reply.get('ok'):
        # Raising here makes nbdkit drop the connection after NBD_OPT_EXPORT_NAME: the client
        # sees EOF, as with xapi-nbd and a bad token.
        raise RuntimeError('export refused: %s' % reply.get('error'))
    return {'fd': os.open(reply['path'], os.O_RDONLY), 'size': reply['size'], 'connection': reply['connection']}


def close(h):
    try:
        os.close(h['fd'])
    finally:
        _control('/internal/nbd/close', {'connection': h['connection']})


def get_size(h):
    return h['size']


def can_write(h):  # pylint: disable=unused-argument
    return False


def can_flush(h):  # pylint: disable=unused-argument
    return False


def can_trim(h):  # pylint: disable=unused-argument
    return False


def can_zero(h):  # pylint: disable=unused-argument
    return False


def can_fast_zero(h):  # pylint: disable=unused-argument
    return False


def can_extents(h):  # pylint: disable=unused-argument
    return False


def can_multi_conn(h):  # pylint: disable=unused-argument
    return False


def can_cache(h):  # pylint: disable=unused-argument
    return nbdkit.CACHE_NONE


def can_fua(h):  # pylint: disable=unused-argument
    return nbdkit.FUA_NONE


def is_rotational(h):  # pylint: disable=unused-argument
    return False


def pread(h, buf, offset, flags):  # pylint: disable=unused-argument
    # The dom0 block device xapi-nbd reads from takes whole 512-byte sectors only.
    if offset % SECTOR or len(buf) % SECTOR:
        nbdkit.set_error(errno.EINVAL)
        raise ValueError('unaligned read: offset %d length %d' % (offset, len(buf)))
    view = memoryview(buf)
    done = 0
    while done < len(view):
        # preadv fills nbdkit's buffer in place (no extra copy of large reads).
        got = os.preadv(h['fd'], [view[done:]], offset + done)
        if got <= 0:
            view[done:] = bytes(len(view) - done)  # a short file reads as zeros, like a sparse tail
            break
        done += got
