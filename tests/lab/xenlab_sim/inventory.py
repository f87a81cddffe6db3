# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seeded pool: one host (or more, on a shared SR), three networks, a CBT-capable SR, an ISO SR, two VMs
(and optionally more)."""

from __future__ import absolute_import, division, print_function

import base64

from .lab import xapi_now
from .storage import guest_bytes
from .store import new_uuid
from .xapi_vm import gen_mac

__metaclass__ = type

MIB = 1024 * 1024
HOSTNAME = 'lab-host-1'
ADDRESS = '127.0.0.1'
CONTROL_DOMAIN = 'Control domain on host: ' + HOSTNAME
MAX_HOSTS = 8
# --extra-vms: lab-vm-01 .. lab-vm-99, each with one disk of sizes['extra'] bytes.
MAX_EXTRA_VMS = 99
EXTRA_VM_DISK_SIZE = 16 * MIB
BLOCK = 64 * 1024  # a CBT block
GIB = 1024 * MIB
DEFAULT_POOL_NAME = 'lab-pool'
# (name_label, bridge, host IP on its PIFs): eth0 is the management network, backup-net the one NBD purposes go
# on, lab-private carries VM traffic only (its PIFs have no address).
NETWORKS = (('Pool-wide network associated with eth0', 'xenbr0', ADDRESS), ('backup-net', 'xenbr1', ADDRESS),
            ('lab-private', 'xenbr2', ''))
# demo-vm's settings that a whole-VM backup must carry over (everything else of the VM keeps xapi's defaults).
DEMO_VM_CONFIG = {
    'name_description': 'Demo VM of the lab: UEFI, two network interfaces',
    'VCPUs_max': 4, 'VCPUs_at_startup': 2,
    'memory_static_min': 512 * MIB, 'memory_static_max': 2 * GIB,
    'memory_dynamic_min': 1 * GIB, 'memory_dynamic_max': 2 * GIB,
    'platform': {'viridian': 'true', 'nx': 'true', 'device-model': 'qemu-upstream-compat'},
    'HVM_boot_params': {'order': 'dc', 'firmware': 'uefi'},
    'NVRAM': {'EFI-variables': base64.b64encode(b'xenlab demo-vm EFI variables: BootOrder=0001,0000').decode()},
    'other_config': {'base_template_name': 'Debian Bookworm 12', 'xenlab-role': 'demo'},
}

# An EXT (file-based VHD) SR: SM advertises VDI_CONFIG_CBT, so xapi lists the CBT operations.
CBT_SR_OPERATIONS = ['vdi_enable_cbt', 'vdi_disable_cbt', 'vdi_data_destroy', 'vdi_list_changed_blocks',
                     'vdi_create', 'vdi_destroy', 'vdi_resize', 'vdi_clone', 'vdi_snapshot', 'vdi_mirror',
                     'vdi_introduce', 'vdi_update', 'vdi_set_on_boot', 'scan', 'forget', 'plug', 'unplug',
                     'update', 'pbd_create', 'pbd_destroy', 'destroy']
ISO_SR_OPERATIONS = ['vdi_introduce', 'vdi_destroy', 'scan', 'forget', 'plug', 'unplug', 'update',
                     'pbd_create', 'pbd_destroy', 'destroy']


def extra_vm_name(number):
    return 'lab-vm-%02d' % number


def host_name(number):
    """name_label and hostname of host ``number`` (1: the master)."""
    return 'lab-host-%d' % number


def control_domain_name(number):
    return 'Control domain on host: ' + host_name(number)


def vm_names(extra_vms=0, hosts=1):
    """name_label of every VM seed() creates with ``extra_vms`` extra VMs and ``hosts`` hosts."""
    return ([control_domain_name(n) for n in range(1, hosts + 1)] + ['demo-vm', 'other-vm']
            + [extra_vm_name(n) for n in range(1, extra_vms + 1)])


def extra_disk_data(number, size):
    """Where lab-vm-NN's disk holds data: [(offset, seed)] for the 64 KiB blocks 0, NN and the last one
    (indices modulo the block count; a short last block is filled only up to the disk's end). Each piece
    is guest_bytes(min(BLOCK, size - offset), seed) with seed = 1000 * NN + k; the rest is zeros."""
    blocks = -(-size // BLOCK)
    indices = sorted(set((0, number % blocks, blocks - 1)))
    return [(i * BLOCK, 1000 * number + k) for k, i in enumerate(indices)]


def seed(lab, sizes, data_seed=1, extra_vms=0, vm_tags=(), hosts=1, pool_name=DEFAULT_POOL_NAME):
    """Create the inventory described in docs/lab.md. ``sizes``: disk0, disk1, other and (optional) extra
    (bytes); ``extra_vms``: how many lab-vm-NN to add; ``vm_tags``: [(VM name_label, [tag, ...])];
    ``hosts``: lab-host-1 (the master) .. lab-host-N, every one attached to both SRs (shared when N > 1);
    ``pool_name``: the pool's name_label."""
    if not 0 <= extra_vms <= MAX_EXTRA_VMS:
        raise ValueError('extra_vms must be 0..%d' % MAX_EXTRA_VMS)
    if not 1 <= hosts <= MAX_HOSTS:
        raise ValueError('hosts must be 1..%d' % MAX_HOSTS)
    unknown = sorted(set(name for name, _tags in vm_tags) - set(vm_names(extra_vms, hosts)))
    if unknown:
        raise ValueError('no seeded VM named %s' % ', '.join(unknown))
    store = lab.store
    host_refs = []
    for number in range(1, hosts + 1):
        ref = store.create('host', name_label=host_name(number), hostname=host_name(number), address=ADDRESS,
                           software_version={'product_brand': 'XCP-ng', 'product_version': '8.3.0',
                                             'platform_name': 'XCP', 'xapi': '24.19', 'xen': '4.17.4'},
                           API_version_major=2, API_version_minor=21,
                           license_params={'restrict_cbt': 'false'}, edition='xcp-ng')
        dom0 = store.create('VM', name_label=control_domain_name(number), is_control_domain=True,
                            power_state='Running', resident_on=ref, domid=0, metrics=store.create('VM_metrics'))
        store.set('host', ref, control_domain=dom0)
        host_refs.append(ref)
    host = host_refs[0]
    store.create('pool', name_label=pool_name, master=host)

    networks = []
    for i, (label, bridge, address) in enumerate(NETWORKS):
        net = store.create('network', name_label=label, bridge=bridge, other_config={'automatic': 'true'})
        networks.append(net)
        for number, ref in enumerate(host_refs):
            store.create('PIF', device='eth%d' % i, network=net, host=ref,
                         MAC='02:00:00:00:%02x:%02x' % (number, i + 1), IP=address,
                         netmask='255.0.0.0' if address else '', ip_configuration_mode='Static' if address else 'None',
                         management=(i == 0), currently_attached=True)

    local = store.create('SR', name_label='Local storage', type='ext',  # the name tests know, shared or not
                         content_type='user', shared=hosts > 1,
                         allowed_operations=list(CBT_SR_OPERATIONS), physical_size=64 * 1024 * MIB)
    iso = store.create('SR', name_label='ISO library', type='iso', content_type='iso', shared=hosts > 1,
                       allowed_operations=list(ISO_SR_OPERATIONS), physical_size=1024 * MIB)
    # a second disk SR, empty, for restores onto another SR
    second = store.create('SR', name_label='Second storage', type='ext', content_type='user', shared=hosts > 1,
                          allowed_operations=list(CBT_SR_OPERATIONS), physical_size=64 * 1024 * MIB)
    for sr in (local, iso, second):
        for ref in host_refs:
            store.create('PBD', host=ref, SR=sr, currently_attached=True)
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

    def running_vm(name, domid, **fields):
        """A VM that has been booted: mac_seed (as VM.create sets it), VM_metrics, and its guest agent's report."""
        other_config = dict(fields.pop('other_config', {}), mac_seed=new_uuid())
        vm = store.create('VM', name_label=name, power_state='Running', resident_on=host, domid=domid,
                          other_config=other_config, metrics=store.create('VM_metrics'), **fields)
        rec = store.raw('VM', vm)
        vcpus = range(rec['VCPUs_at_startup'])
        store.set('VM_metrics', rec['metrics'], memory_actual=rec['memory_target'],
                  VCPUs_number=rec['VCPUs_at_startup'], VCPUs_utilisation=dict((n, 0.0) for n in vcpus),
                  VCPUs_CPU=dict((n, n) for n in vcpus), start_time=xapi_now(), last_updated=xapi_now(), hvm=True,
                  current_domain_type='hvm')
        return vm

    demo = running_vm('demo-vm', 1, memory_target=1073741824, **DEMO_VM_CONFIG)
    disk0 = disk(local, 'demo-vm-disk0', sizes['disk0'])
    disk1 = disk(local, 'demo-vm-disk1', sizes['disk1'])
    _fill_disk0(lab, disk0, sizes['disk0'], data_seed)
    attach(demo, disk0, 0, True)
    attach(demo, disk1, 1, True)
    iso_vdi = disk(iso, 'lab-tools.iso', 4 * MIB, read_only=True)
    store.create('VBD', VM=demo, VDI=iso_vdi, userdevice='3', device='xvdd', type='CD', mode='RO',
                 currently_attached=True)
    # Two interfaces, MACs derived from the VM's mac_seed as VIF.create does: eth0's network and lab-private.
    seed_of_demo = store.raw('VM', demo)['other_config']['mac_seed']
    for device, net in enumerate((networks[0], networks[2])):
        store.create('VIF', VM=demo, network=net, device=str(device), MAC=gen_mac(device, seed_of_demo),
                     MAC_autogenerated=True, MTU=1500, currently_attached=True)

    other = running_vm('other-vm', 2)
    scratch = disk(local, 'other-vm-scratch', sizes['other'], on_boot='reset')
    attach(other, scratch, 0, True)

    extra = []
    extra_size = sizes.get('extra', EXTRA_VM_DISK_SIZE)
    for number in range(1, extra_vms + 1):
        name = extra_vm_name(number)
        vm = running_vm(name, 2 + number, memory_target=1073741824)
        vdi = disk(local, name + '-disk0', extra_size)
        path = lab.paths[store.raw('VDI', vdi)['uuid']]
        for offset, piece_seed in extra_disk_data(number, extra_size):
            lab.storage.write(path, offset, guest_bytes(min(BLOCK, extra_size - offset), piece_seed))
        attach(vm, vdi, 0, True)
        extra.append(vm)

    for vm in [demo, other] + extra:
        lab.boots[vm] = 1
        lab.report_guest(vm)

    for name, tags in vm_tags:
        current = store.raw('VM', store.find('VM', name_label=name)[0])['tags']
        for tag in tags:
            if tag not in current:  # like VM.add_tags: a set, in the order given
                current.append(tag)
    return {'host': host, 'hosts': host_refs, 'local_sr': local, 'iso_sr': iso, 'demo_vm': demo, 'other_vm': other, 'extra_vms': extra}


def _fill_disk0(lab, vdi, size, data_seed):
    """disk0 holds data, then zero runs, then data: head, a middle island and the tail carry bytes."""
    path = lab.paths[lab.store.raw('VDI', vdi)['uuid']]
    piece = max(512, (size // 32) // 512 * 512)
    for n, offset in enumerate((0, (size // 2) // 512 * 512, size - piece)):
        lab.storage.write(path, offset, guest_bytes(piece, data_seed * 100 + n))
