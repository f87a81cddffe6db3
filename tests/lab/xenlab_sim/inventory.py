# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seeded pool: one host, two networks, a CBT-capable SR, an ISO SR and two VMs."""

from __future__ import absolute_import, division, print_function

from .storage import guest_bytes

__metaclass__ = type

MIB = 1024 * 1024
HOSTNAME = 'lab-host-1'
ADDRESS = '127.0.0.1'

# An EXT (file-based VHD) SR: SM advertises VDI_CONFIG_CBT, so xapi lists the CBT operations.
CBT_SR_OPERATIONS = ['vdi_enable_cbt', 'vdi_disable_cbt', 'vdi_data_destroy', 'vdi_list_changed_blocks',
                     'vdi_create', 'vdi_destroy', 'vdi_resize', 'vdi_clone', 'vdi_snapshot', 'vdi_mirror',
                     'vdi_introduce', 'vdi_update', 'vdi_set_on_boot', 'scan', 'forget', 'plug', 'unplug',
                     'update', 'pbd_create', 'pbd_destroy', 'destroy']
ISO_SR_OPERATIONS = ['vdi_introduce', 'vdi_destroy', 'scan', 'forget', 'plug', 'unplug', 'update',
                     'pbd_create', 'pbd_destroy', 'destroy']


def seed(lab, sizes, data_seed=1):
    """Create the inventory described in docs/lab.md. ``sizes``: disk0, disk1, other (bytes)."""
    store = lab.store
    host = store.create('host', name_label=HOSTNAME, hostname=HOSTNAME, address=ADDRESS,
                        software_version={'product_brand': 'XCP-ng', 'product_version': '8.3.0',
                                          'platform_name': 'XCP', 'xapi': '24.19', 'xen': '4.17.4'},
                        API_version_major=2, API_version_minor=21,
                        license_params={'restrict_cbt': 'false'}, edition='xcp-ng')
    store.create('pool', name_label='lab-pool', master=host)
    dom0 = store.create('VM', name_label='Control domain on host: ' + HOSTNAME, is_control_domain=True,
                        power_state='Running', resident_on=host, domid=0)
    store.set('host', host, control_domain=dom0)

    for i, (label, bridge) in enumerate([('Pool-wide network associated with eth0', 'xenbr0'),
                                         ('backup-net', 'xenbr1')]):
        net = store.create('network', name_label=label, bridge=bridge, other_config={'automatic': 'true'})
        store.create('PIF', device='eth%d' % i, network=net, host=host, MAC='02:00:00:00:00:%02x' % (i + 1),
                     IP=ADDRESS, netmask='255.0.0.0', management=(i == 0), currently_attached=True)

    local = store.create('SR', name_label='Local storage', type='ext', content_type='user',
                         allowed_operations=list(CBT_SR_OPERATIONS), physical_size=64 * 1024 * MIB)
    iso = store.create('SR', name_label='ISO library', type='iso', content_type='iso',
                       allowed_operations=list(ISO_SR_OPERATIONS), physical_size=1024 * MIB)
    for sr in (local, iso):
        store.create('PBD', host=host, SR=sr, currently_attached=True)
    store.set('pool', store.all('pool')[0], default_SR=local, suspend_image_SR=local, crash_dump_SR=local)

    def disk(sr, label, size, **fields):
        vdi = store.create('VDI', SR=sr, name_label=label, virtual_size=size, **fields)
        rec = store.raw('VDI', vdi)
        rec['location'] = rec['uuid']
        lab.paths[rec['uuid']] = lab.storage.create(store.raw('SR', sr)['uuid'], rec['uuid'], size)
        return vdi

    def attach(vm, vdi, userdevice, running, **fields):
        store.create('VBD', VM=vm, VDI=vdi, userdevice=str(userdevice), device='xvd' + 'abcdefgh'[userdevice],
                     bootable=(userdevice == 0), currently_attached=running, **fields)

    demo = store.create('VM', name_label='demo-vm', power_state='Running', resident_on=host, domid=1,
                        memory_target=1073741824)
    disk0 = disk(local, 'demo-vm-disk0', sizes['disk0'])
    disk1 = disk(local, 'demo-vm-disk1', sizes['disk1'])
    _fill_disk0(lab, disk0, sizes['disk0'], data_seed)
    attach(demo, disk0, 0, True)
    attach(demo, disk1, 1, True)
    iso_vdi = disk(iso, 'lab-tools.iso', 4 * MIB, read_only=True)
    store.create('VBD', VM=demo, VDI=iso_vdi, userdevice='3', device='xvdd', type='CD', mode='RO',
                 currently_attached=True)

    other = store.create('VM', name_label='other-vm', power_state='Running', resident_on=host, domid=2)
    scratch = disk(local, 'other-vm-scratch', sizes['other'], on_boot='reset')
    attach(other, scratch, 0, True)
    return {'host': host, 'local_sr': local, 'iso_sr': iso, 'demo_vm': demo, 'other_vm': other}


def _fill_disk0(lab, vdi, size, data_seed):
    """disk0 holds data, then zero runs, then data: head, a middle island and the tail carry bytes."""
    path = lab.paths[lab.store.raw('VDI', vdi)['uuid']]
    piece = max(512, (size // 32) // 512 * 512)
    for n, offset in enumerate((0, (size // 2) // 512 * 512, size - piece)):
        lab.storage.write(path, offset, guest_bytes(piece, data_seed * 100 + n))
