# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What to do about a failure, said in the incremental_backup role's variables.

Note that this module_util is **PRIVATE** to the collection. It can have breaking changes at any time.

Module messages name module options (``connections``, ``tls``, ``skip_disks``); a role user sets role variables
instead, and some module options (``timeout``) are not role variables at all. backup_report, run by the role with
``role_advice=true``, adds the matching line of ``ROLE_ADVICE`` to each failure by its ``error_code``. Codes not
listed here keep the module's message alone (it says what happened and, in XenServer's terms, what to do).
A code is listed only where it alone decides the remedy: ``NBD_TLS_FAILED`` also means a certificate that is
not the pinned one (never a reason to turn TLS off), and ``NBD_EXPORT_REFUSED`` an expired session as often as
a busy server, so both keep the module's advice, which knows the situation.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

_NBD_REFUSED = ('The host\'s NBD server refused or dropped connections: a host serves 16 at once, so lower '
                'incremental_backup_max_host_connections or incremental_backup_connections, and check that this '
                'machine reaches the addresses of incremental_backup_nbd_network on port 10809.')
_NBD_STALLED = ('The NBD connection stalled or broke again after the automatic reconnects: check the network between '
                'this machine and incremental_backup_nbd_network, then run the role again (it continues the chain).')
_NBD_TLS = ('Set incremental_backup_nbd_tls to match the purpose of incremental_backup_nbd_network: true for nbd '
            '(TLS), false for insecure_nbd.')
_NBD_NETWORK = ('Set incremental_backup_nbd_network to a network with purpose nbd or insecure_nbd that this machine '
                'reaches, or set incremental_backup_configure_nbd_network to true so that the role adds the purpose.')
_SKIP_OR_MOVE = ('List the disk in incremental_backup_skip_disks (uuid or name) to leave it out, or move it to a '
                 'storage repository that can snapshot and track changed blocks.')
_REPOSITORY_DAMAGED = ('Nothing in the repository was deleted. Run the role\'s verify entry point (tasks_from: verify) '
                       'to see what is damaged, and rebuild a lost manifest with backup_verify rebuild_manifest=true '
                       '(docs/guide.md, a lost manifest).')

ROLE_ADVICE = {
    'CONNECTION_FAILED': 'Check incremental_backup_hostname (the pool master) and that this machine reaches it.',
    'TLS_VERIFY_FAILED': ('Give the CA certificate of the pool in incremental_backup_ca_path, or set '
                          'incremental_backup_validate_certs to false (labs only).'),
    'SESSION_AUTHENTICATION_FAILED': ('Check incremental_backup_username and incremental_backup_password (or the '
                                      'XENSERVER_PASSWORD environment variable).'),
    'SESSION_INVALID': ('The session in incremental_backup_session_id has ended: pass a live one, or leave it empty '
                        'so that the role logs in itself.'),
    'HOST_IS_SLAVE': 'Set incremental_backup_hostname to the pool master.',
    'API_TIMEOUT': 'The pool answered too slowly: run the role again when the pool is less busy.',
    'NO_VM_SELECTED': 'No VM matched: check incremental_backup_vms and incremental_backup_vm_tags.',
    'NBD_NETWORK_NOT_FOUND': _NBD_NETWORK,
    'NO_NBD_ADDRESS': _NBD_NETWORK,
    'NBD_TLS_REQUIRED': _NBD_TLS,
    'NBD_TLS_UNAVAILABLE': _NBD_TLS,
    'NBD_CONNECT_FAILED': _NBD_REFUSED,
    'NBD_HANDSHAKE_INTERRUPTED': _NBD_REFUSED,
    'NBD_TIMEOUT': _NBD_STALLED,
    'NBD_CONNECTION_LOST': _NBD_STALLED,
    'NO_SPACE': ('The backup storage under incremental_backup_repository is full: free space there, or keep fewer '
                 'restore points (incremental_backup_retention). The points already written are whole.'),
    'REPOSITORY_FOREIGN': ('The directory where this disk\'s repository belongs holds files the collection did not '
                           'write; nothing was touched. Move them out of incremental_backup_repository, or choose '
                           'another incremental_backup_repository.'),
    'REPOSITORY_DAMAGED': _REPOSITORY_DAMAGED,
    'MANIFEST_DAMAGED': _REPOSITORY_DAMAGED,
    'REPOSITORY_BUSY': ('Another run is writing this repository: make sure that no two plays back up the same '
                        'incremental_backup_repository at the same time.'),
    'VDI_IN_USE': ('The snapshot was still attached (the host releases an NBD-attached snapshot a few seconds late); '
                   'the next run of the role destroys what this one left.'),
    'VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION': ('The disk is reset at every boot (on_boot=reset): set it to '
                                                     'persist, or list it in incremental_backup_skip_disks.'),
    'SR_OPERATION_NOT_SUPPORTED': _SKIP_OR_MOVE,
    'VDI_IS_SHARABLE': _SKIP_OR_MOVE,
}


def role_advice(code):
    """The remedy for ``code`` in the role's variables, or None."""
    return ROLE_ADVICE.get(code or '')
