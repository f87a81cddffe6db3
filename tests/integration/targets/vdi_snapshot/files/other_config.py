# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Print the other_config of VDIs straight from the XenAPI (to check vdi_snapshot's marker).

Usage: other_config.py VDI_UUID...; prints {uuid: other_config} as JSON.
Connection from the environment: XENLAB_URL, XENLAB_CA, XENLAB_USER, XENLAB_PASSWORD.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import ssl
import sys
import xmlrpc.client

import XenAPI

__metaclass__ = type


def main(uuids):
    context = ssl.create_default_context(cafile=os.environ['XENLAB_CA'])
    session = XenAPI.Session(os.environ['XENLAB_URL'], transport=xmlrpc.client.SafeTransport(context=context))
    session.xenapi.login_with_password(os.environ['XENLAB_USER'], os.environ['XENLAB_PASSWORD'], '1.0', 'tests')
    try:
        api = session.xenapi
        print(json.dumps(dict((uuid, api.VDI.get_other_config(api.VDI.get_by_uuid(uuid))) for uuid in uuids),
                         sort_keys=True))
    finally:
        session.xenapi.session.logout()


if __name__ == '__main__':
    main(sys.argv[1:])
