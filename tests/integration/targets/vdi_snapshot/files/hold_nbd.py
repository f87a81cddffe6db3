# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hold an NBD connection to a VDI open, as an export does, until told to close it.

Usage: hold_nbd.py VDI_UUID READY_FILE RELEASE_FILE [MAX_SECONDS]
Connects over TLS (the collection's NBD client) to the first address VDI.get_nbd_info gives, creates READY_FILE
once the connection is open (its dom0 VBD is attached then), closes it once RELEASE_FILE exists (or after
MAX_SECONDS, default 120) and prints JSON. Connection from the environment: XENLAB_URL, XENLAB_CA, XENLAB_USER,
XENLAB_PASSWORD.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import ssl
import sys
import time
import xmlrpc.client

import XenAPI

__metaclass__ = type


def collections_root():
    path = os.path.abspath(__file__)
    while os.path.basename(path) != 'ansible_collections':
        parent = os.path.dirname(path)
        if parent == path:
            raise SystemExit('hold_nbd.py must run from a collection below an ansible_collections directory')
        path = parent
    return os.path.dirname(path)


def main(argv):
    vdi_uuid, ready, release = argv[:3]
    max_seconds = float(argv[3]) if len(argv) > 3 else 120.0
    sys.path.insert(0, collections_root())
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup.export import make_target
    # pylint: disable-next=import-outside-toplevel
    from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import NbdConnection

    context = ssl.create_default_context(cafile=os.environ['XENLAB_CA'])
    session = XenAPI.Session(os.environ['XENLAB_URL'], transport=xmlrpc.client.SafeTransport(context=context))
    session.xenapi.login_with_password(os.environ['XENLAB_USER'], os.environ['XENLAB_PASSWORD'], '1.0', 'tests')
    try:
        info = session.xenapi.VDI.get_nbd_info(session.xenapi.VDI.get_by_uuid(vdi_uuid))[0]
        conn = NbdConnection.open(make_target(info, tls=True, timeout=10))
        try:
            with open(ready, 'w') as handle:
                handle.write('open\n')
            deadline = time.monotonic() + max_seconds
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            conn.close()
    finally:
        session.xenapi.session.logout()
    print(json.dumps({'vdi': vdi_uuid, 'released': os.path.exists(release)}))


if __name__ == '__main__':
    main(sys.argv[1:])
