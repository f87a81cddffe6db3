# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Add or remove a VM's tag straight through the XenAPI (the collection has no module for tags).

Usage: vm_tags.py add|remove VM_NAME TAG; prints the VM's tags as JSON.
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


def main(action, vm_name, tag):
    context = ssl.create_default_context(cafile=os.environ['XENLAB_CA'])
    session = XenAPI.Session(os.environ['XENLAB_URL'], transport=xmlrpc.client.SafeTransport(context=context))
    session.xenapi.login_with_password(os.environ['XENLAB_USER'], os.environ['XENLAB_PASSWORD'], '1.0', 'tests')
    try:
        api = session.xenapi
        refs = [r for r in api.VM.get_by_name_label(vm_name) if not api.VM.get_is_a_snapshot(r)]
        if len(refs) != 1:
            raise SystemExit('expected one VM named %s, found %d' % (vm_name, len(refs)))
        (api.VM.add_tags if action == 'add' else api.VM.remove_tags)(refs[0], tag)
        print(json.dumps(api.VM.get_tags(refs[0])))
    finally:
        session.xenapi.session.logout()


if __name__ == '__main__':
    main(*sys.argv[1:4])
