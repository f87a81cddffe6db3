# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XenAPI steps of the vdi_restore target, independent of the module under test.

Connection from the environment: XENLAB_URL, XENLAB_CA, XENLAB_USER, XENLAB_PASSWORD.
Commands (each prints JSON):
  uuid NAME            uuid of the disk (not a snapshot) with this name
  list SR_NAME         uuids of the VDIs (not snapshots) of the SR
  destroy UUID...      destroy these VDIs; missing ones are skipped; prints the destroyed uuids
"""

from __future__ import absolute_import, division, print_function

import json
import os
import ssl
import sys
import xmlrpc.client

import XenAPI

__metaclass__ = type


def main(argv):
    context = ssl.create_default_context(cafile=os.environ['XENLAB_CA'])
    session = XenAPI.Session(os.environ['XENLAB_URL'], transport=xmlrpc.client.SafeTransport(context=context))
    session.xenapi.login_with_password(os.environ['XENLAB_USER'], os.environ['XENLAB_PASSWORD'], '1.0', 'tests')
    api = session.xenapi
    try:
        if argv[0] == 'uuid':
            refs = [ref for ref in api.VDI.get_by_name_label(argv[1]) if not api.VDI.get_is_a_snapshot(ref)]
            result = api.VDI.get_uuid(refs[0])
        elif argv[0] == 'list':
            sr_ref = api.SR.get_by_name_label(argv[1])[0]
            result = sorted(api.VDI.get_uuid(ref) for ref in api.SR.get_VDIs(sr_ref) if not api.VDI.get_is_a_snapshot(ref))
        elif argv[0] == 'destroy':
            result = []
            for uuid in argv[1:]:
                try:
                    ref = api.VDI.get_by_uuid(uuid)
                except XenAPI.Failure:
                    continue
                api.VDI.destroy(ref)
                result.append(uuid)
        else:
            raise SystemExit('unknown command %s' % argv[0])
    finally:
        session.xenapi.session.logout()
    print(json.dumps(result))


if __name__ == '__main__':
    main(sys.argv[1:])
