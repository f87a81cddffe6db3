# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulated pool: database, VDI files, CBT logs and the hosts' NBD fronts, behind one lock."""

from __future__ import absolute_import, division, print_function

import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

from . import cbt
from .storage import Storage, guest_bytes
from .schema import NULL_REF
from .store import Store, XenAPIError

__metaclass__ = type

NBD_PURPOSES = ('nbd', 'insecure_nbd')
# a host's NBD switch (failover tests): serve like xapi-nbd, refuse connections (nothing listens), or drop
# every connection after NBD_OPT_EXPORT_NAME (the client sees EOF, as when xapi-nbd fails to plug the VBD)
NBD_SWITCHES = ('serve', 'refuse', 'drop')
# a VM's boot switch (xenlab vm-switch): its guest agent reports after a start (normal), or the guest never comes up
VM_BOOT_SWITCHES = ('normal', 'never')
# a bootable disk that starts with these bytes never boots (xenlab write --broken-boot-sector puts them there)
BROKEN_BOOT_SECTOR = b'XENLAB BROKEN BOOT SECTOR\n'
# a bootable disk that starts with these bytes and a name: its guest writes xenstore control/<name> at boot
GUEST_KEY_MARK = b'XENLAB GUEST KEY '

# What the simulated guest agent (xe-guest-utilities in a Debian guest) reports in VM_guest_metrics.
GUEST_OS = {'name': 'Debian GNU/Linux 12 (bookworm)', 'distro': 'debian', 'major': '12', 'minor': '5'}
GUEST_TOOLS = {'major': '8', 'minor': '4', 'micro': '0', 'build': '1'}
GUEST_FEATURES = {'feature-shutdown': '1', 'feature-poweroff': '1', 'feature-reboot': '1', 'feature-suspend': '1',
                  'feature-vcpu-hotplug': '1', 'platform-feature-multiprocessor-suspend': '1', 'has-vendor-device': '0'}
# Guest addresses per VIF device: the documentation ranges (RFC 5737), never a real network.
GUEST_NETS = ('192.0.2.', '198.51.100.', '203.0.113.')


def xapi_now():
    """xapi's datetime on the wire: YYYYMMDDTHH:MM:SSZ (UTC)."""
    return time.strftime('%Y%m%dT%H:%M:%SZ', time.gmtime())


class LabError(Exception):
    """A request to an internal endpoint (write, path, NBD open) that cannot be served."""


class Lab:
    def __init__(self, root, settings):
        self.root = root
        # username, password, host_cert_pem, subject, nbd_port, nbd_ports (host ref -> port), auth_failure_delay
        self.settings = settings
        self.store = Store()
        self.lock = self.store.lock
        self.cbt = cbt.CbtLogs()
        self.storage = Storage(root)
        self.fronts = {}  # host ref -> NbdFront, set by the server once started
        self.nbd_switches = {}  # host ref -> one of NBD_SWITCHES (absent: serve)
        self.nbd_connections = {}  # connection id -> dom0 VBD ref
        self.nbd_hosts = {}  # connection id -> host ref of the front that serves it
        self.nbd_peaks = {}  # host ref -> most connections its front held at once (since the last reset)
        self.nbd_drops_left = {}  # host ref -> connections a 'drop' switch still drops before serving again
        self.on_change = lambda: None  # the server rewrites lab.json
        self.paths = {}  # VDI uuid -> file holding its content (absent for cbt_metadata)
        self.vm_boot = {}  # VM ref -> one of VM_BOOT_SWITCHES (absent: normal)
        self.boots = {}  # VM ref -> how many times it was started: a guest agent only reports for its own boot
        self.agents = set()  # pending guest agent timers
        self.last_domid = 0  # Xen hands out increasing domain ids: a rebooted VM gets a new one
        self.store.computed[('VDI', 'allowed_operations')] = self._vdi_allowed_operations
        self.store.computed[('VIF', 'allowed_operations')] = self._vif_allowed_operations

    def _vdi_allowed_operations(self, vdi):
        """Like xapi: only the pre-Ely operations are ever listed, never the CBT ones (CA-260245);
        CBT support shows in SR.allowed_operations."""
        rec = self.store.raw('VDI', vdi)
        sr_ops = self.store.raw('SR', rec['SR'])['allowed_operations'] if self.store.exists('SR', rec['SR']) else []
        if rec['type'] == 'cbt_metadata':
            ops = ['forget', 'destroy', 'update', 'generate_config']
        elif any(self.store.raw('VBD', v)['currently_attached'] for v in self.store.find('VBD', VDI=vdi)):
            ops = ['snapshot', 'clone']
        else:
            ops = ['forget', 'destroy', 'copy', 'snapshot', 'clone', 'resize', 'update', 'generate_config']
        needs = {'snapshot': 'vdi_snapshot', 'clone': 'vdi_clone', 'resize': 'vdi_resize', 'destroy': 'vdi_destroy'}
        return [op for op in ops if op not in needs or needs[op] in sr_ops]

    def _vif_allowed_operations(self, vif):
        """Xapi_vif_helpers.valid_operations: plug or unplug only while the VM runs, as the VIF is."""
        rec = self.store.raw('VIF', vif)
        vm = rec['VM']
        if not self.store.exists('VM', vm) or self.store.raw('VM', vm)['power_state'] != 'Running':
            return ['attach']
        return ['attach', 'unplug' if rec['currently_attached'] else 'plug']

    # ----- lookups -----------------------------------------------------------------------------

    def vdi_path(self, vdi_ref):
        return self.paths.get(self.store.raw('VDI', vdi_ref)['uuid'])

    def control_domain(self, host=None):
        return self.store.raw('host', host or self.master())['control_domain']

    def master(self):
        return self.store.raw('pool', self.store.all('pool')[0])['master']

    def nbd_port(self, host):
        return self.settings.get('nbd_ports', {}).get(host, self.settings['nbd_port'])

    def host_by_name_or_uuid(self, value):
        for ref in self.store.all('host'):
            rec = self.store.raw('host', ref)
            if value in (rec['uuid'], rec['name_label']):
                return ref
        raise LabError('no host named %s' % value)

    def open_sessions(self):
        """The sessions logged in now: their originator and user (not their references, which are secrets)."""
        with self.lock:
            return sorted(({'originator': self.store.get('session', ref, 'originator'),
                            'user': self.store.get('session', ref, 'auth_user_name')}
                           for ref in self.store.all('session')), key=lambda s: (s['originator'] or '', s['user'] or ''))

    def nbd_connection_counts(self, reset=False):
        """``{'counts': host name -> NBD connections its front holds open now, 'peaks': the most at once since
        the last reset}``; ``reset`` starts the peaks again from now."""
        with self.lock:
            names = dict((ref, self.store.raw('host', ref)['name_label']) for ref in self.store.all('host'))
            counts = dict((name, 0) for name in names.values())
            for host in self.nbd_hosts.values():
                counts[names[host]] += 1
            peaks = dict((names[ref], self.nbd_peaks.get(ref, 0)) for ref in names)
            if reset:
                self.nbd_peaks = dict((ref, counts[names[ref]]) for ref in names)
            return {'counts': counts, 'peaks': peaks}

    def set_nbd_switch(self, host_name, switch, times=None):
        """Make a host's front serve, refuse or drop connections; returns when the front is so. With ``times``
        (drop only), the front drops that many connections, then serves again (a host full for a moment)."""
        if switch not in NBD_SWITCHES:
            raise LabError('the NBD switch is one of %s, not %s' % (', '.join(NBD_SWITCHES), switch))
        if times is not None and (switch != 'drop' or int(times) < 1):
            raise LabError('times goes with drop and is at least 1')
        with self.lock:
            host = self.host_by_name_or_uuid(host_name)
            self.nbd_switches[host] = switch
            if times is None:
                self.nbd_drops_left.pop(host, None)
            else:
                self.nbd_drops_left[host] = int(times)
        self.apply_nbd_mode()
        self.on_change()
        return {'host': host_name, 'switch': switch}

    def vm_by_name_or_uuid(self, value):
        """A VM by uuid, or by name_label among the VMs that are neither snapshots nor templates."""
        with self.lock:
            for ref in self.store.all('VM'):
                if self.store.raw('VM', ref)['uuid'] == value:
                    return ref
            refs = self.store.find('VM', name_label=value, is_a_snapshot=False, is_a_template=False)
        if len(refs) != 1:
            raise LabError('no VM named %s' % value if not refs else 'several VMs are named %s: use a uuid' % value)
        return refs[0]

    def vm_info(self, value):
        """What `xenlab guest-exec` needs to know of a VM."""
        vm = self.vm_by_name_or_uuid(value)
        with self.lock:
            rec = self.store.raw('VM', vm)
            return {'vm': rec['name_label'], 'uuid': rec['uuid'], 'power_state': rec['power_state'],
                    'guest_up': rec['guest_metrics'] != NULL_REF}

    def set_vm_switch(self, value, boot):
        """Make a VM's guest boot normally (its agent reports after each start) or never (Running, no agent)."""
        if boot not in VM_BOOT_SWITCHES:
            raise LabError('the boot switch is one of %s, not %s' % (', '.join(VM_BOOT_SWITCHES), boot))
        vm = self.vm_by_name_or_uuid(value)
        with self.lock:
            rec = self.store.raw('VM', vm)
            if boot == 'normal':
                self.vm_boot.pop(vm, None)
                if rec['power_state'] == 'Running' and rec['guest_metrics'] == NULL_REF:
                    self.start_guest_agent(vm)  # a guest that was stuck comes up now
            else:
                self.vm_boot[vm] = boot
            result = {'vm': rec['name_label'], 'uuid': rec['uuid'], 'boot': boot}
        self.on_change()
        return result

    def vm_switches(self):
        """name_label -> switch of the VMs that do not boot normally (for lab.json)."""
        with self.lock:
            return dict((self.store.raw('VM', vm)['name_label'], boot) for vm, boot in self.vm_boot.items()
                        if self.store.exists('VM', vm))

    # ----- the guest agent ---------------------------------------------------------------------

    def new_domid(self):
        """The next domain id (caller holds the lock)."""
        self.last_domid = max([self.last_domid] + [self.store.raw('VM', r)['domid'] for r in self.store.all('VM')]) + 1
        return self.last_domid

    def new_boot(self, vm):
        """The VM (re)started: forget the old guest and start its agent (caller holds the lock)."""
        self.boots[vm] = self.boots.get(vm, 0) + 1
        self.clear_guest(vm)
        self.start_guest_agent(vm)

    def end_boot(self, vm):
        """The VM halted or was destroyed: a pending agent report must not land (caller holds the lock)."""
        self.boots[vm] = self.boots.get(vm, 0) + 1
        self.clear_guest(vm)

    def start_guest_agent(self, vm):
        """The agent reports guest_boot_seconds from now, if the VM is still running the same boot then."""
        timer = threading.Timer(float(self.settings.get('guest_boot_seconds', 2.0)), self._agent_reports,
                                (vm, self.boots.get(vm, 0)))
        timer.daemon = True
        self.agents.add(timer)
        timer.start()

    def _agent_reports(self, vm, boot):
        with self.lock:
            self.agents = set(t for t in self.agents if t.is_alive() and t is not threading.current_thread())
            if not self.store.exists('VM', vm) or self.boots.get(vm, 0) != boot or self.vm_boot.get(vm) == 'never':
                return
            if self.boot_disk_is_broken(vm):
                return
            rec = self.store.raw('VM', vm)
            if rec['power_state'] == 'Running' and rec['guest_metrics'] == NULL_REF:
                self.report_guest(vm)

    def boot_sector(self, vm, length=128):
        """The first ``length`` bytes of the VM's bootable disk (b'' without one) (caller holds the lock)."""
        for vbd in self.store.find('VBD', VM=vm):
            record = self.store.raw('VBD', vbd)
            if record['bootable'] and record['type'] == 'Disk' and not record['empty']:
                path = self.paths.get(self.store.raw('VDI', record['VDI'])['uuid'])
                if path:
                    with open(path, 'rb') as handle:
                        return handle.read(length)
        return b''

    def boot_disk_is_broken(self, vm):
        """Whether the VM's bootable disk starts with BROKEN_BOOT_SECTOR: a guest that cannot boot, carried by the
        disk's content, so that a backup of it restores a VM that does not boot either (caller holds the lock)."""
        return self.boot_sector(vm).startswith(BROKEN_BOOT_SECTOR)

    def guest_control_keys(self, vm):
        """The control/* keys the guest's boot script writes (GUEST_KEY_MARK + name at the start of its bootable
        disk, so the script travels with the data): xapi copies each into VM_guest_metrics.other."""
        sector = self.boot_sector(vm)
        if not sector.startswith(GUEST_KEY_MARK):
            return {}
        name = sector[len(GUEST_KEY_MARK):].split(b'\n', 1)[0].decode('ascii', 'replace').strip()
        return {name: '1'} if name else {}

    def stop_guest_agents(self):
        with self.lock:
            agents, self.agents = self.agents, set()
        for timer in agents:
            timer.cancel()

    def report_guest(self, vm):
        """The guest agent's report: a VM_guest_metrics record with an address per VIF (caller holds the lock)."""
        rec = self.store.raw('VM', vm)
        networks = {}
        for vif in self.store.find('VIF', VM=vm):
            device = self.store.raw('VIF', vif)['device']
            prefix = GUEST_NETS[min(int(device) if device.isdigit() else 0, len(GUEST_NETS) - 1)]
            address = prefix + str(zlib.crc32(rec['uuid'].encode('ascii')) % 253 + 2)
            networks['%s/ip' % device] = address
            networks['%s/ipv4/0' % device] = address
        metrics = self.store.create('VM_guest_metrics', os_version=GUEST_OS, PV_drivers_version=GUEST_TOOLS,
                                    PV_drivers_up_to_date=True, networks=networks,
                                    other=dict(GUEST_FEATURES, **self.guest_control_keys(vm)),
                                    last_updated=xapi_now(), live=True, can_use_hotplug_vbd='yes',
                                    can_use_hotplug_vif='yes', PV_drivers_detected=True)
        rec['guest_metrics'] = metrics
        return metrics

    def clear_guest(self, vm):
        """Destroy the VM's guest metrics, as xapi does when the domain goes (caller holds the lock)."""
        rec = self.store.raw('VM', vm)
        if self.store.exists('VM_guest_metrics', rec['guest_metrics']):
            self.store.destroy('VM_guest_metrics', rec['guest_metrics'])
        rec['guest_metrics'] = NULL_REF

    def session_valid(self, session_ref):
        return isinstance(session_ref, str) and self.store.exists('session', session_ref)

    def nbd_mode(self):
        """What xapi-nbd would do for a new connection: 'tls', 'plain' or None (refuse)."""
        purposes = set()
        for ref in self.store.all('network'):
            purposes.update(self.store.raw('network', ref)['purpose'])
        if 'nbd' in purposes and 'insecure_nbd' in purposes:
            return None
        if 'nbd' in purposes:
            return 'tls'
        if 'insecure_nbd' in purposes:
            return 'plain'
        return None

    def apply_nbd_mode(self):
        """Bring the fronts in line with the purposes (and the hosts' switches). Call *without* holding the
        lock: stopping nbdkit waits for its plugin's close callbacks, which need the lock."""
        for host, front in list(self.fronts.items()):
            front.reconcile(lambda host=host: self._locked_nbd_mode(host))

    def _locked_nbd_mode(self, host):
        with self.lock:
            return None if self.nbd_switches.get(host) == 'refuse' else self.nbd_mode()

    # ----- guest writes (xenlab write) ---------------------------------------------------------

    def guest_write(self, vdi_uuid, offset, length, seed, data=None):
        """A guest writes ``length`` pseudo-random bytes of ``seed`` (or ``data``) at ``offset``."""
        with self.lock:
            ref = self._vdi_by_uuid(vdi_uuid)
            rec = self.store.raw('VDI', ref)
            if rec['type'] == 'cbt_metadata' or rec['is_a_snapshot']:
                raise LabError('a guest can only write to a live VDI with data, not %s' % vdi_uuid)
            if offset < 0 or length < 0 or offset + length > rec['virtual_size']:
                raise LabError('write [%d, %d) is outside the VDI (%d bytes)' % (offset, offset + length, rec['virtual_size']))
            self.storage.write(self.paths[vdi_uuid], offset, guest_bytes(length, seed) if data is None else data)
            # tapdisk logs every write into the leaf's CBT log.
            self.cbt.mark(vdi_uuid, offset, length)
            return {'vdi': vdi_uuid, 'offset': offset, 'length': length, 'seed': seed,
                    'blocks': list(cbt.block_range(offset, length)) if rec['cbt_enabled'] else []}

    def _vdi_by_uuid(self, vdi_uuid):
        try:
            return self.store.by_uuid('VDI', vdi_uuid)
        except XenAPIError:
            raise LabError('no VDI with uuid %s' % vdi_uuid) from None

    def content_path(self, vdi_uuid):
        with self.lock:
            self._vdi_by_uuid(vdi_uuid)
            path = self.paths.get(vdi_uuid)
            if path is None:
                raise LabError('VDI %s has no data (cbt_metadata)' % vdi_uuid)
            return path

    # ----- the NBD front's per-connection checks (called by the nbdkit plugin) -----------------

    def nbd_open(self, export_name, host=None):
        """Validate an xapi-nbd export token and plug a VBD to ``host``'s dom0 (a host uuid; default the
        master), or refuse (client sees EOF)."""
        parts = urlsplit(export_name)
        query = parse_qs(parts.query)
        if not parts.path.startswith('/') or 'session_id' not in query:
            raise LabError('export name is not /<vdi-uuid>?session_id=<ref>')
        vdi_uuid = parts.path[1:]
        session = query['session_id'][0]
        with self.lock:
            host_ref = self.store.by_uuid('host', host) if host else self.master()
            if self.nbd_switches.get(host_ref) == 'drop':
                if host_ref in self.nbd_drops_left:
                    self.nbd_drops_left[host_ref] -= 1
                    if not self.nbd_drops_left[host_ref]:  # the last one it drops: serve from the next one on
                        del self.nbd_drops_left[host_ref]
                        self.nbd_switches[host_ref] = 'serve'
                raise LabError('the NBD front of %s drops connections (xenlab nbd-switch)'
                               % self.store.raw('host', host_ref)['name_label'])
            if not self.session_valid(session):
                raise LabError('SESSION_INVALID %s' % session)
            vdi = self._vdi_by_uuid(vdi_uuid)
            rec = self.store.raw('VDI', vdi)
            if rec['type'] == 'cbt_metadata':
                raise LabError('VDI_INCOMPATIBLE_TYPE %s cbt_metadata' % vdi)
            # xapi-nbd does VBD.create(dom0, RO) + VBD.plug for every connection.
            vbd = self.store.create('VBD', VM=self.control_domain(host_ref), VDI=vdi, mode='RO', type='Disk',
                                    userdevice='autodetect', device='xvd%s' % chr(ord('b') + len(self.nbd_connections) % 24),
                                    currently_attached=True, other_config={'xenlab': 'nbd'})
            conn = self.store.raw('VBD', vbd)['uuid']
            self.nbd_connections[conn] = vbd
            self.nbd_hosts[conn] = host_ref
            now = sum(1 for host in self.nbd_hosts.values() if host == host_ref)
            self.nbd_peaks[host_ref] = max(self.nbd_peaks.get(host_ref, 0), now)
            return {'connection': conn, 'path': self.paths[vdi_uuid], 'size': rec['virtual_size']}

    def nbd_close(self, conn):
        with self.lock:
            vbd = self.nbd_connections.pop(conn, None)
            self.nbd_hosts.pop(conn, None)
            if vbd and self.store.exists('VBD', vbd):
                self.store.destroy('VBD', vbd)

    def drop_nbd_connections(self, host=None):
        """``host``'s front (default: every front) was restarted: its VBDs are cleaned up, like xapi-nbd's
        VBDs_to_clean_up."""
        with self.lock:
            for conn in list(self.nbd_connections):
                if host is None or self.nbd_hosts.get(conn) == host:
                    self.nbd_close(conn)

    # ----- HTTP import/export helpers ----------------------------------------------------------

    def http_session(self, query, cookie_session, basic):
        """The session for an HTTP handler: session_id (query or cookie), or Basic user:password."""
        session = (query.get('session_id') or [cookie_session])[0]
        with self.lock:
            if session and self.session_valid(session):
                return session, None
        if basic and basic == (self.settings['username'], self.settings['password']):
            with self.lock:
                ref = self.store.create('session', this_host=self.master(), originator='http-basic',
                                        last_active=xapi_now(), auth_user_name=basic[0])
            return ref, ref
        return None, None

    def vdi_ref_or_uuid(self, value):
        with self.lock:
            if value and self.store.exists('VDI', value):
                return value
            return self.store.by_uuid('VDI', value)

    def task_start(self, task_ref, label):
        with self.lock:
            if task_ref and self.store.exists('task', task_ref):
                self.store.set('task', task_ref, status='pending')
                return task_ref
            return self.store.create('task', name_label=label, created=xapi_now(), resident_on=self.master())

    def task_finish(self, task_ref, result='', error=None):
        with self.lock:
            if not self.store.exists('task', task_ref):
                return
            if error is None:
                self.store.set('task', task_ref, status='success', progress=1.0, result=result, finished=xapi_now())
            else:
                self.store.set('task', task_ref, status='failure', progress=1.0, error_info=list(error),
                               finished=xapi_now())

    def mark_import(self, vdi_uuid, offset, length):
        with self.lock:
            self.cbt.mark(vdi_uuid, offset, length)
