# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's long-running process: seeds the pool, serves the API and runs each host's NBD front."""

from __future__ import absolute_import, division, print_function

import json
import os
import secrets
import signal
import threading

from . import inventory, pki, tls_policy
# Importing xapi_vm registers the VM and VIF calls with the dispatcher.
from . import xapi_vm  # noqa: F401 pylint: disable=unused-import
from .httpd import ApiHandler, ControlHandler, TLSServer, ThreadingServer
from .lab import Lab
from .nbd_front import NbdFront, reserve_port
from .xapi import Dispatcher

__metaclass__ = type

LAB_JSON = 'lab.json'


def write_json_atomic(path, obj, mode=0o600):
    tmp = '%s.tmp.%d.%d' % (path, os.getpid(), threading.get_ident())  # fronts' threads write it too
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'w') as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write('\n')
    os.replace(tmp, path)


class LabServer:
    def __init__(self, opts):
        self.opts = opts
        self.root = os.path.abspath(opts.dir)
        self.stopping = threading.Event()
        self.ready = False  # every front is started: `xenlab start` waits for state running
        self.paths = pki.make_host_pki(os.path.join(self.root, 'pki'), inventory.HOSTNAME, inventory.ADDRESS,
                                       ca_signed=opts.ca_signed)
        with open(self.paths['host_cert']) as handle:
            cert_pem = handle.read()
        self.secret = secrets.token_hex(16)
        # Each host's NBD port stays reserved for the lab's life, NBD enabled or not (reserve_port).
        self.port_reservations = [reserve_port(opts.nbd_port or 0)]
        self.nbd_port = self.port_reservations[0].getsockname()[1]
        self.lab = Lab(self.root, {
            'username': opts.username, 'password': opts.password, 'host_cert_pem': cert_pem,
            'subject': inventory.HOSTNAME, 'nbd_port': self.nbd_port, 'auth_failure_delay': opts.auth_failure_delay,
            'guest_boot_seconds': opts.guest_boot_seconds,
        })
        seeded = inventory.seed(self.lab, {'disk0': opts.disk0_size, 'disk1': opts.disk1_size,
                                           'other': opts.other_disk_size, 'extra': opts.extra_vm_disk_size},
                                extra_vms=opts.extra_vms, vm_tags=opts.vm_tags, hosts=getattr(opts, 'hosts', 1),
                                pool_name=opts.pool_name)
        self.hosts = seeded['hosts']  # the master first: its front keeps --nbd-port and the lab directory
        self.port_reservations += [reserve_port() for _host in self.hosts[1:]]
        self.lab.settings['nbd_ports'] = dict((host, reservation.getsockname()[1])
                                              for host, reservation in zip(self.hosts, self.port_reservations))
        self.api = self._api_server()
        self.control = self._control_server()
        for number, host in enumerate(self.hosts):
            workdir = self.root if number == 0 else os.path.join(self.root, 'hosts', inventory.host_name(number + 1))
            os.makedirs(workdir, exist_ok=True)
            self.lab.fronts[host] = NbdFront(
                workdir, self.lab.nbd_port(host), self.paths['dir'], self.control_url, self.secret, opts.tls_policy,
                on_change=self.write_lab_json, on_stop=lambda host=host: self.lab.drop_nbd_connections(host),
                host=self.lab.store.raw('host', host)['uuid'])
        self.front = self.lab.fronts[self.hosts[0]]
        self.lab.on_change = self.write_lab_json

    @property
    def control_url(self):
        return 'http://127.0.0.1:%d' % self.control.server_address[1]

    def _api_server(self):
        handler = type('LabApiHandler', (ApiHandler,), {'lab': self.lab, 'dispatcher': Dispatcher(self.lab)})
        # The API, like xapi's stunnel, always uses the current policy; --tls-policy is for the NBD front.
        context = tls_policy.server_context('current', self.paths['host_cert'], self.paths['host_key'])
        return TLSServer(('127.0.0.1', self.opts.api_port or 0), handler, context)

    def _control_server(self):
        handler = type('LabControlHandler', (ControlHandler,), {'lab': self.lab, 'secret': self.secret})
        return ThreadingServer(('127.0.0.1', 0), handler)

    def lab_json(self):
        fronts = [self.lab.fronts[host] for host in self.hosts]
        pids = [os.getpid()] + [front.pid for front in fronts if front.pid]
        return {
            'url': 'https://127.0.0.1:%d' % self.api.server_address[1],
            'username': self.opts.username,
            'password': self.opts.password,
            'ca_cert': self.paths['ca_cert'],
            'host_cert': self.paths['host_cert'],
            'pids': pids,
            'api_port': self.api.server_address[1],
            'nbd_port': self.nbd_port,
            'nbd_mode': self.front.mode,
            'tls_policy': self.opts.tls_policy,
            'ca_signed': bool(self.opts.ca_signed),
            'control_url': self.control_url,
            'control_secret': self.secret,
            'dir': self.root,
            'pool_name': self.opts.pool_name,
            'guest_boot_seconds': self.opts.guest_boot_seconds,
            'vm_boot': self.lab.vm_switches(),
            'hosts': [{'name': inventory.host_name(n + 1), 'uuid': self.lab.store.raw('host', host)['uuid'],
                       'nbd_port': front.port, 'nbd_mode': front.mode,
                       'nbd_switch': self.lab.nbd_switches.get(host, 'serve')}
                      for n, (host, front) in enumerate(zip(self.hosts, fronts))],
            'state': 'stopping' if self.stopping.is_set() else 'running' if self.ready else 'starting',
        }

    def write_lab_json(self):
        write_json_atomic(os.path.join(self.root, LAB_JSON), self.lab_json())

    def run(self):
        for server in (self.api, self.control):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        if self.opts.nbd_purpose != 'none':
            self._seed_purpose(self.opts.nbd_purpose)
        self.lab.apply_nbd_mode()
        self.ready = True
        self.write_lab_json()
        self.stopping.wait()
        self.shutdown()

    def _seed_purpose(self, purpose):
        store = self.lab.store
        net = store.find('network', name_label='backup-net')[0]
        store.raw('network', net)['purpose'].append(purpose)

    def shutdown(self):
        self.write_lab_json()
        self.lab.stop_guest_agents()
        for front in self.lab.fronts.values():
            front.stop()
        for server in (self.api, self.control):
            server.shutdown()
            server.server_close()
        self.write_lab_json()


def serve(opts):
    LabServer(opts).run()
