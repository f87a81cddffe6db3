# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Direct XenAPI steps for the integration tests, independent of the modules under test.

Connection from the environment: XENLAB_URL, XENLAB_CA, XENLAB_USER, XENLAB_PASSWORD.
Commands (each prints JSON):
  state DISK_NAME...             uuid, cbt_enabled, snapshot uuids of each disk, plus the snapshot VMs
  vdi UUID                       type, cbt_enabled, VBDs of a VDI (null when it does not exist)
  cbt UUID on|off                enable / disable CBT on a disk
  vbd-create UUID                an unplugged VBD of the control domain on the VDI (it blocks data_destroy)
  vbd-destroy VBD_UUID [SECONDS] destroy the VBD, after sleeping SECONDS
  restore STATE_JSON             destroy every snapshot and snapshot VM that STATE_JSON did not list,
                                 and set CBT on each disk back to what STATE_JSON says
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


def connect():
    context = ssl.create_default_context(cafile=os.environ['XENLAB_CA'])
    session = XenAPI.Session(os.environ['XENLAB_URL'], transport=xmlrpc.client.SafeTransport(context=context))
    session.xenapi.login_with_password(os.environ['XENLAB_USER'], os.environ['XENLAB_PASSWORD'], '1.0', 'tests')
    return session


def disk_state(api, names):
    disks = {}
    for name in names:
        refs = [r for r in api.VDI.get_by_name_label(name) if not api.VDI.get_is_a_snapshot(r)]
        if len(refs) != 1:
            raise SystemExit('expected one disk named %s, found %d' % (name, len(refs)))
        rec = api.VDI.get_record(refs[0])
        disks[name] = {'uuid': rec['uuid'], 'cbt_enabled': rec['cbt_enabled'],
                       'snapshots': sorted(api.VDI.get_uuid(s) for s in rec['snapshots'])}
    snapshot_vms = sorted(r['uuid'] for r in api.VM.get_all_records().values() if r['is_a_snapshot'])
    return {'disks': disks, 'snapshot_vms': snapshot_vms}


def main(argv):
    session = connect()
    api = session.xenapi
    try:
        command, args = argv[0], argv[1:]
        if command == 'state':
            result = disk_state(api, args)
        elif command == 'vdi':
            try:
                ref = api.VDI.get_by_uuid(args[0])
            except XenAPI.Failure:
                result = None
            else:
                rec = api.VDI.get_record(ref)
                result = {'type': rec['type'], 'cbt_enabled': rec['cbt_enabled'], 'vbds': len(rec['VBDs']),
                          'is_a_snapshot': rec['is_a_snapshot']}
        elif command == 'cbt':
            ref = api.VDI.get_by_uuid(args[0])
            (api.VDI.enable_cbt if args[1] == 'on' else api.VDI.disable_cbt)(ref)
            result = {'cbt_enabled': api.VDI.get_cbt_enabled(ref)}
        elif command == 'vbd-create':
            vdi = api.VDI.get_by_uuid(args[0])
            dom0 = [ref for ref, rec in api.VM.get_all_records().items() if rec['is_control_domain']][0]
            vbd = api.VBD.create({'VM': dom0, 'VDI': vdi, 'userdevice': '9', 'bootable': False, 'mode': 'RO',
                                  'type': 'Disk', 'empty': False, 'other_config': {}, 'qos_algorithm_type': '',
                                  'qos_algorithm_params': {}})
            result = {'vbd': api.VBD.get_uuid(vbd)}
        elif command == 'vbd-destroy':
            if len(args) > 1:
                time.sleep(float(args[1]))
            api.VBD.destroy(api.VBD.get_by_uuid(args[0]))
            result = {'destroyed': args[0]}
        elif command == 'restore':
            before = json.loads(args[0])
            now = disk_state(api, sorted(before['disks']))
            destroyed = []
            for vm in now['snapshot_vms']:
                if vm not in before['snapshot_vms']:
                    api.VM.destroy(api.VM.get_by_uuid(vm))
                    destroyed.append(vm)
            for name, disk in now['disks'].items():
                for snap in disk['snapshots']:
                    if snap not in before['disks'][name]['snapshots']:
                        api.VDI.destroy(api.VDI.get_by_uuid(snap))
                        destroyed.append(snap)
                if disk['cbt_enabled'] != before['disks'][name]['cbt_enabled']:
                    ref = api.VDI.get_by_uuid(disk['uuid'])
                    (api.VDI.enable_cbt if before['disks'][name]['cbt_enabled'] else api.VDI.disable_cbt)(ref)
            result = {'destroyed': destroyed, 'state': disk_state(api, sorted(before['disks']))}
        else:
            raise SystemExit('unknown command %s' % command)
    finally:
        session.xenapi.session.logout()
    print(json.dumps(result, sort_keys=True))


if __name__ == '__main__':
    main(sys.argv[1:])
