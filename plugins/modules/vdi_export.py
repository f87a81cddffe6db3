#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: vdi_export
short_description: Export a XenServer virtual disk, or only its changed blocks, over NBD
version_added: 0.1.0
description:
  - Reads a virtual disk (usually a snapshot) from the NBD server of a XenServer or XCP-ng host and writes it to a raw
    image file.
  - Without O(changed_blocks) it makes a full copy in O(dest), written as a sparse file (all-zero 64 KiB blocks become
    holes) under a temporary name, fsynced and renamed into place.
  - With O(changed_blocks), the bitmap that C(VDI.list_changed_blocks) returns, it reads only the changed 64 KiB blocks
    and applies them to an existing O(dest) that holds the previous copy. The blocks are staged first, so O(dest) is
    only touched once every changed block arrived.
  - Two ways to say what to read. B(Direct:) O(nbd), one element of the list that C(VDI.get_nbd_info) returns (its
    C(exportname) carries a XenAPI session reference and is valid only while that session stays logged in), plus an
    optional O(changed_blocks) bitmap. B(From a snapshot:) O(snapshot) and optionally O(base) with the XenAPI connection
    options (unused with O(nbd)); the module then calls C(VDI.get_nbd_info) and C(VDI.list_changed_blocks) itself inside one session, so
    the export name never leaves the process.
author:
  - xenserver.cbt_backup developers (@xenserver-cbt-backup)
extends_documentation_fragment:
  - xenserver.cbt_backup._nbd
  - xenserver.cbt_backup._xenapi
attributes:
  check_mode:
    description: Connects and negotiates (which validates address, certificate and export name) but reads no data.
    support: full
  diff_mode:
    description: Not supported.
    support: none
options:
  snapshot:
    description:
      - The snapshot to export, by uuid (or by name if unique among snapshots). Mutually exclusive with O(nbd).
    type: str
  base:
    description:
      - The older snapshot (usually a C(cbt_metadata) one) to compare O(snapshot) with; only the blocks changed since
        then are read and applied to O(dest). Needs O(snapshot).
    type: str
  nbd_network:
    description:
      - With O(snapshot) or O(exports), read through this network (uuid or name) when the hosts have several NBD
        addresses.
    type: str
  nbd:
    description:
      - One element of the list returned by C(VDI.get_nbd_info) (for example from M(xenserver.cbt_backup.vdi_nbd_info)).
      - Mutually exclusive with O(snapshot).
    type: dict
    suboptions:
      address:
        description: IP address or host name of the NBD server.
        type: str
        required: true
      port:
        description: TCP port of the NBD server (XenServer returns it as a string).
        type: int
        default: 10809
      exportname:
        description:
          - The export name. On XenServer it embeds a session reference, so it is treated as a secret.
        type: str
        required: true
      cert:
        description: PEM certificate of the host's NBD server; the server must present it (or one with its public key).
        type: str
      subject:
        description: Name in the certificate, used for SNI and for the O(tls_ca_path) fallback check.
        type: str
      network_names:
        description: Informational, as returned by M(xenserver.cbt_backup.vdi_nbd_info).
        type: list
        elements: str
      network_uuids:
        description: Informational, as returned by M(xenserver.cbt_backup.vdi_nbd_info).
        type: list
        elements: str
      purposes:
        description:
          - NBD purposes of the network serving O(nbd.address), as returned by M(xenserver.cbt_backup.vdi_nbd_info).
          - When given, a mismatch with O(tls) (C(insecure_nbd) with O(tls=true), or C(nbd) with O(tls=false)) fails
            before connecting, with an explanation.
        type: list
        elements: str
  changed_blocks:
    description:
      - With O(nbd) only.
      - Base64 bitmap from C(VDI.list_changed_blocks), one bit per 64 KiB block, most significant bit first.
      - When set, only these blocks are read and applied to the existing O(dest), which must have the export's size.
      - A bitmap for a larger disk is accepted only if all bits beyond this disk's last block are zero.
    type: str
  dest:
    description:
      - Raw image file to create (full export) or to update (with O(changed_blocks) or O(base)).
      - It must be a regular file or not exist yet, in an existing directory; a device, a pipe or a directory is refused
        (C(DEST_NOT_REGULAR_FILE), C(DEST_IS_DIRECTORY)) and never replaced.
      - Changed blocks are applied with a journal. They are first staged next to O(dest) in C(.<name>.apply-staging)
        (the free space for them is checked first, C(NO_SPACE)), then C(.<name>.apply-journal) is written, then they are
        copied onto O(dest). A run that fails or is killed while staging leaves O(dest) untouched. One that stops while
        copying (C(DEST_HALF_APPLIED)) is finished by the next run with changed blocks on the same O(dest), before
        anything else (RV(finished_apply)). A full export replaces O(dest) and drops such a journal.
      - Mutually exclusive with O(repository); one of the two is required.
    type: path
  repository:
    description:
      - A disk's backup repository directory (created if missing); the export becomes a new qcow2 restore point.
      - Without O(base) or O(changed_blocks) the point is a full backup; with them, an incremental on top of the
        newest point. With O(base), the repository's CBT anchor (the snapshot of its newest point) must be O(base),
        otherwise the export is refused and a full backup is needed.
      - With O(snapshot), the manifest also records the disk the snapshot was taken of and the VM that uses it
        (C(vm_uuid), C(vm_name), C(userdevice); null when no VM uses the disk).
      - See the repository format in C(docs/repository.md).
    type: path
  on_broken_chain:
    description:
      - With O(base), what to do when the changed blocks cannot be listed because the CBT chain between O(base) and
        O(snapshot) is broken (CBT was disabled and re-enabled, the base lost its CBT metadata or was destroyed, the
        storage backend calls the two unrelated).
      - V(fail) fails with the reason. V(full) exports the whole disk instead (a full restore point with O(repository)),
        which starts a new chain, and returns the reason in RV(fallback_reason) and a warning.
    type: str
    choices: [fail, full]
    default: fail
  compress:
    description:
      - With O(repository), store the restore point's clusters compressed, as standard qcow2 compressed clusters that
        C(qemu-img) reads. V(zlib) works with any qemu. V(zstd) is faster and smaller, and needs qemu 5.1 or later
        and the Python package C(zstandard) where the module runs. V(none) (the default) stores them as they are.
      - A cluster is stored compressed only when that saves at least 512 bytes. Merges by
        M(xenserver.cbt_backup.backup_prune) keep a point's compression. Blocks folded into a full's file in place
        are compressed with the compression type of that file (a zstd point folded into a zlib full is stored with
        zlib), because a qcow2 file has one compression type.
      - The restore point records it (C(compression)).
    type: str
    choices: [none, zlib, zstd]
    default: none
  allocation_map:
    description:
      - What a full export (no O(base), no O(changed_blocks)) reads, with O(snapshot).
      - V(auto) (the default) first reads the snapshot's block allocation table from the host
        (C(GET /export_raw_vdi?format=vhd), only the VHD header and table, then the connection is closed), and reads
        over NBD only the 2 MiB blocks it lists; what it does not list reads as zeros. Where the host gives no map (an
        older host, an SR whose VHD export fails), the whole disk is read and RV(allocation_fallback_reason) and a
        warning say why.
      - V(none) reads every byte of the disk (xapi-nbd offers no NBD block status to skip holes).
      - The O(nbd) form has no XenAPI snapshot to ask and always reads everything.
    type: str
    choices: [auto, none]
    default: auto
  min_rate_mib_s:
    description:
      - The slowest a read reply may arrive, in MiB/s, so that a server that trickles data (a few bytes now and
        then, never silent for O(timeout)) cannot hang the export.
      - Each reply must be complete within O(timeout) plus its size at this rate (for a 1 MiB read and the defaults,
        60 + 1 seconds), counted from the moment the client starts waiting for it. A slower reply fails with
        C(error_code=NBD_TIMEOUT); like a broken connection, it is retried on a new connection up to O(retries) times.
      - V(0) turns this bound off, leaving only O(timeout), which trips when the server sends nothing at all.
      - Independently of this option, the NBD handshake (greeting, TLS, export name) must end within twice
        O(timeout).
      - O(timeout) must be a finite number of seconds above 0 (at most 86400), this option a finite number of 0 or
        more, and O(nbd.port) between 1 and 65535; other values fail with C(error_code=INVALID_OPTION) before
        anything is connected to or written.
    type: float
    default: 1.0
  exports:
    description:
      - Many snapshots in one run, each into its own repository (the list form). Mutually exclusive with
        O(snapshot), O(nbd), O(base), O(dest) and O(repository); the other options apply to every item.
      - The XenAPI is asked about every item first (in this module's one session), then the exports run at once
        under one budget of O(max_host_connections) NBD connections per host. An export starts as soon as a host
        that can serve it has room for its O(connections) (the biggest exports first, each on the listed host
        with the most room), not in waves; a host that refuses, drops or does not answer is passed over for the
        rest of the run and its exports move to another host.
      - An item that fails fails alone (the others go on) and is reported in RV(exports) with its
        C(error_code); the task then fails with C(error_code=EXPORTS_FAILED) once every export has ended.
    type: list
    elements: dict
    suboptions:
      snapshot:
        description: The snapshot to export (uuid, or name if unique among snapshots).
        type: str
        required: true
      repository:
        description: The repository directory of the disk (as O(repository)).
        type: path
        required: true
      base:
        description: The older snapshot to compare with (as O(base)); omit for a full export.
        type: str
      run:
        description: The run identifier of this item's restore point (default O(run)).
        type: str
      label:
        description:
          - A name for the item in progress lines, the progress file and RV(exports) (for example C(web01/xvda));
            default the O(exports[].snapshot) as given.
        type: str
  progress_file:
    description:
      - With O(exports), a JSON file that the module rewrites once a second while the exports run, and removes
        when it ends (success or failure). M(xenserver.cbt_backup.export_wait) reads it to print progress while
        the task runs with C(async) and C(poll=0).
      - 'Its content: C(updated) (RFC 3339 UTC time, C(2026-12-02T15:43:31Z)) and C(disks), one per item in
        order: C(label), C(state) (C(queued), C(running), C(done), C(failed) or C(cancelled)), C(bytes_done),
        C(bytes_total) (what the export reads), C(percent), C(mib_s) (the last ten seconds; the average once
        done) and C(eta_s) (seconds, null while unknown).'
      - Written atomically (a new file of mode 0600 in the same directory, fsynced and renamed over it), so a
        reader never sees half a document. An absolute path (or starting with C(~)) in a directory that exists.
    type: path
  lease_seconds:
    description:
      - With O(progress_file), cancel the run when nobody waits for it any more. The module creates
        C(<progress_file>.lease) when it starts; whoever waits (M(xenserver.cbt_backup.export_wait)) renews its
        modification time about every second. Checked every second, a lease file that is gone or older than
        this many seconds cancels the run, which happens when the playbook stops waiting (an AWX job cancel,
        SIGINT or SIGTERM to ansible-playbook, a controller that died, a timeout of
        M(xenserver.cbt_backup.export_wait)).
      - On cancellation, exports not started yet are not started and running ones stop before their next NBD
        request; each of them fails with C(error_code=CANCELLED). Nothing is added to their repositories; a
        cancelled export leaves at most the files the repository's journal lists, which the next run deletes
        (RV(cleaned_up)). Then the module removes O(progress_file) and the lease file.
      - V(0) (the default) turns the lease off. Otherwise at least 2; give the waiter room for a slow
        connection to the host the module runs on (for example 60).
    type: int
    default: 0
  logout_on_abandon:
    description:
      - With O(lease_seconds), log out the XenAPI session given in O(session_id) when the run was abandoned,
        that is when its lease file grew older than O(lease_seconds) (an AWX job cancel, SIGINT or SIGTERM to
        ansible-playbook, a dead controller), so the playbook that would have logged out is gone. The session
        is logged out after the exports have stopped.
      - Since a playbook can be killed just before the exports end, the module then waits for one more renewal
        of the lease (about a second while M(xenserver.cbt_backup.export_wait) waits); a lease that instead grows
        older than O(lease_seconds) means the run was abandoned all the same.
      - A lease released on purpose (its file deleted, as M(xenserver.cbt_backup.export_wait) does on its
        timeout) cancels the run but leaves the session to the playbook, which goes on.
      - Set it only when the session belongs to the playbook run alone (the role sets it when it logged in
        itself, not with C(incremental_backup_session_id)). A session this module logged in itself (with
        O(username) and O(password)) is always logged out when the module ends.
    type: bool
    default: false
  max_host_connections:
    description:
      - With O(exports), at most this many NBD connections per host at any instant, across every export of the
        run (xapi-nbd serves 16 per host and closes the 17th). Lower it when other backup tools read from the
        same hosts.
    type: int
    default: 16
  run:
    description:
      - With O(repository), an identifier of the backup run, recorded in the new restore point as C(run).
      - The disks of one VM are snapshotted together but their snapshot times can differ by seconds; the same
        O(run) on all their exports lets a restore find the points that belong together (the role
        M(xenserver.cbt_backup.incremental_backup) passes the UTC time its run started).
    type: str
requirements:
  - cryptography >= 42 (when O(tls=true))
notes:
  - Use C(no_log) on tasks that register C(VDI.get_nbd_info) results; this module already hides O(nbd.exportname).
seealso:
  - name: XenServer changed block tracking guide
    description: How CBT snapshots, list_changed_blocks and the NBD server fit together.
    link: https://docs.xenserver.com/en-us/xenserver/8/developer/changed-block-tracking-guide.html
'''

EXAMPLES = r'''
- name: Export every disk of a run in one task, at most 12 NBD connections per host
  xenserver.cbt_backup.vdi_export:
    hostname: "{{ xenserver_host }}"
    username: "{{ xenserver_user }}"
    password: "{{ xenserver_password }}"
    exports:
      - snapshot: 2f0e0c5a-8d1e-4a4b-9a71-6d3f1c0a9b11
        base: 7b3c9d2e-1f4a-4c5b-8e6d-0a1b2c3d4e5f
        repository: /backups/vm1/disk0
      - snapshot: 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d
        repository: /backups/vm2/disk0
    max_host_connections: 12
  register: exported

- name: Export in the background with progress and a lease, then wait and print progress
  xenserver.cbt_backup.vdi_export:
    hostname: "{{ xenserver_host }}"
    username: "{{ xenserver_user }}"
    password: "{{ xenserver_password }}"
    exports:
      - snapshot: 2f0e0c5a-8d1e-4a4b-9a71-6d3f1c0a9b11
        repository: /backups/vm1/disk0
        label: vm1/xvda
    progress_file: /backups/progress-nightly.json
    lease_seconds: 60
  async: 86400
  poll: 0
  register: export_job

- name: Wait for it; the run cancels itself if this playbook is stopped
  xenserver.cbt_backup.export_wait:
    jid: "{{ export_job.ansible_job_id }}"
    progress_file: /backups/progress-nightly.json
  register: exported

- name: Full export of a snapshot over TLS, pinned to the host certificate
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    dest: /backups/vm1/disk0.raw
    connections: 4

- name: Apply the blocks that changed since the previous snapshot
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    changed_blocks: "{{ bitmap }}"
    dest: /backups/vm1/disk0.raw

- name: Incremental export from snapshots; the module asks the XenAPI for everything it needs
  xenserver.cbt_backup.vdi_export:
    hostname: xenserver01.example.com
    username: backup
    password: "{{ vault_xenserver_password }}"
    snapshot: "{{ new_snapshot_uuid }}"
    base: "{{ previous_snapshot_uuid }}"
    nbd_network: backup-net
    dest: /backups/vm1/disk0.raw

- name: Export from a network with purpose insecure_nbd (no TLS; the result carries a warning)
  xenserver.cbt_backup.vdi_export:
    nbd: "{{ nbd_info[0] }}"
    dest: /backups/vm1/disk0.raw
    tls: false
'''

RETURN = r'''
export_size:
  description: Size of the export in bytes.
  type: int
  returned: success
  sample: 10737418240
blocks_changed:
  description: Number of 64 KiB blocks read (all blocks of the disk for a full export).
  type: int
  returned: success
  sample: 1024
bytes_to_read:
  description: Bytes that would be read.
  type: int
  returned: check mode
  sample: 67108864
bytes_read:
  description: Bytes read from the NBD server.
  type: int
  returned: success
  sample: 67108864
bytes_written:
  description: Bytes written to O(dest) (zero blocks of a full export are left as holes and not counted).
  type: int
  returned: success
  sample: 41943040
seconds:
  description: Time spent reading and writing, in seconds.
  type: float
  returned: success
  sample: 1.5
throughput_mib_s:
  description: RV(bytes_read) per second, in MiB/s.
  type: float
  returned: success
  sample: 420.5
tls:
  description: Whether the data crossed the network inside TLS.
  type: bool
  returned: success
  sample: true
connections:
  description: NBD connections used (0 for an incremental without changed blocks, which reads nothing).
  type: int
  returned: success
  sample: 4
exports:
  description:
    - With O(exports), one result per item in the order given. A successful item holds what this module returns
      for one snapshot (RV(point), RV(bytes_read), RV(nbd_address), ...) and C(failed=false); a failed one holds
      C(snapshot), C(repository), C(failed=true), C(msg) and C(error_code).
    - Each holds the item's C(label) when it had one.
    - An item stopped or never started because the run was cancelled (O(lease_seconds)) has
      C(error_code=CANCELLED).
  type: list
  elements: dict
  returned: with O(exports)
  sample: [{"snapshot": "2f0e0c5a-8d1e-4a4b-9a71-6d3f1c0a9b11", "failed": false, "bytes_read": 6291456, "nbd_address": "192.0.2.10:10809"}]
hosts:
  description:
    - With O(exports), per NBD host (address:port) the exports started there, the most connections open to it at
      once (never more than O(max_host_connections)), the connections that failed, and why it was passed over
      (null when it was not).
    - A host whose connection fails (refused after the export name, closed before the greeting, no answer) rests
      1 s, then 2 s, and serves again; it is passed over for the rest of the run after three failures in a row, or
      at once when nothing accepts TCP connections on its port. A full xapi-nbd (16 connections, a slot freed only
      once the closed connection's VBD is unplugged) therefore costs a moment, not the host.
  type: dict
  returned: with O(exports)
  sample: {"192.0.2.10:10809": {"exports": 5, "peak_connections": 16, "failed_connections": 0, "passed_over": null}}
already_exported:
  description:
    - True when the newest point of O(repository) already holds O(snapshot) (a re-run of the same task). Nothing was
      read or written, the task reports C(changed=false) and RV(point) is that point.
  type: bool
  returned: when O(snapshot) and O(repository) were given and the point existed
  sample: true
snapshot:
  description: UUID of the exported snapshot.
  type: str
  returned: when O(snapshot) was given
  sample: 3f4e9a1c-7d0b-4c8e-9a55-0d6c1f3e2b7a
base:
  description: UUID of the base snapshot the changed blocks were listed against.
  type: str
  returned: when O(base) was given
  sample: 1b0c2f0e-5a4d-4c8e-9a55-0d6c1f3e2b7a
point:
  description: The restore point added to O(repository) (as recorded in its manifest).
  type: dict
  returned: success with O(repository), not in check mode
  sample: {id: 20261125T140233Z-incr, type: incremental, file: 20261125T140233Z-incr.qcow2, parent: 20261124T140101Z-full,
           snapshot_uuid: 3f4e..., virtual_size: 268435456, blocks: 12, bytes: 786432, sha256: 9b1c..., blocks_digest: 77aa...}
repository:
  description: The absolute path of O(repository).
  type: str
  returned: with O(repository)
  sample: /backups/8d2f1c3b-7a6e-4f5d-9c0b-1e2a3d4c5b6f/5f0c2a4e-0c1d-4a57-9a0e-3e2b1c7d9f10
recovered:
  description:
    - An interrupted M(xenserver.cbt_backup.backup_prune) that this run finished or rolled back before exporting.
  type: dict
  returned: with O(repository), when there was such a prune to finish or roll back
  sample: {action: finished, point: 20261125T140233Z-incr, deleted: [20261124T140101Z-full.qcow2]}
point_type:
  description: C(full) or C(incremental).
  type: str
  returned: with O(repository)
  sample: incremental
finished_apply:
  description:
    - Bytes of changed blocks that an interrupted earlier run had staged and journaled for O(dest), applied by this run
      before its own export (a warning says so too).
  type: int
  returned: when an interrupted apply was finished
  sample: 393216
cleaned_up:
  description:
    - Files of an interrupted earlier run that were removed from O(repository) (never restore points); only files the
      repository's journal says this collection wrote.
  type: list
  elements: str
  returned: with O(repository)
  sample: [.20261125T140233Z-incr.qcow2.partial-x1y2z3]
allocation_source:
  description:
    - For a full export, what told it which blocks to read; C(vhd_bat) (the host's VHD allocation table) or C(none)
      (every byte was read). Recorded in the restore point too.
  type: str
  returned: success, for a full export
  sample: vhd_bat
allocation_fallback_reason:
  description: Why a full export with O(allocation_map=auto) read the whole disk.
  type: str
  returned: when the host gave no allocation map
  sample: the host answered HTTP 404 Not Found to the VHD export
fallback_reason:
  description: Why the changed blocks could not be listed, when O(on_broken_chain=full) turned the export into a full one.
  type: str
  returned: when the export fell back to a full one
  sample: the snapshots are unrelated for the storage backend, CBT was disabled and re-enabled in between
nbd_address:
  description:
    - Address and port the data was read from.
    - In the snapshot form, every host that C(VDI.get_nbd_info) lists for the disk can serve it. The disks of a
      run spread over them (each disk is read from the host a stable hash of its snapshot's uuid picks), and a
      host that refuses the connection, drops it before the export opens or does not answer is passed over for
      the next one (see RV(nbd_failover)). A host whose TLS certificate does not verify is not passed over.
    - Null for an incremental whose changed block list is empty, which opens no NBD connection (RV(connections) is
      then 0).
  type: str
  returned: success
  sample: 192.0.2.10:10809
nbd_failover:
  description: The hosts passed over before RV(nbd_address) served the export, each with what went wrong (also as warnings of the task).
  type: list
  elements: dict
  returned: when a host was passed over
  contains:
    nbd_address:
      description: Address and port of the host passed over.
      type: str
      sample: 192.0.2.11:10809
    error:
      description: What the connection to it did.
      type: str
      sample: "cannot connect to NBD server 192.0.2.11:10809: Connection refused"
reconnects:
  description: Connections that broke during the export and were replaced.
  type: int
  returned: success
  sample: 0
'''


from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import progress as _progress
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup import vdi_export as _vdi_export
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import CbtBackupError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._image import qcow2 as _qcow2
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.connection import validate_options
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.errors import NbdOptionError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.reader import MAX_CONNECTIONS
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.tls import (
    CRYPTOGRAPHY_IMPORT_ERROR,
    HAS_CRYPTOGRAPHY,
)


def argument_spec():
    spec = _xenapi_module.argument_spec(
        exports=dict(type='list', elements='dict', options=dict(
            snapshot=dict(type='str', required=True),
            repository=dict(type='path', required=True),
            base=dict(type='str'),
            run=dict(type='str'),
            label=dict(type='str'),
        )),
        progress_file=dict(type='path'),
        lease_seconds=dict(type='int', default=0),
        logout_on_abandon=dict(type='bool', default=False),
        max_host_connections=dict(type='int', default=MAX_CONNECTIONS),
        snapshot=dict(type='str'),
        base=dict(type='str'),
        nbd_network=dict(type='str'),
        nbd=dict(type='dict', options=dict(
            address=dict(type='str', required=True),
            port=dict(type='int', default=10809),
            exportname=dict(type='str', required=True, no_log=True),
            cert=dict(type='str'),
            subject=dict(type='str'),
            network_names=dict(type='list', elements='str'),
            network_uuids=dict(type='list', elements='str'),
            purposes=dict(type='list', elements='str'),
        )),
        changed_blocks=dict(type='str'),
        dest=dict(type='path'),
        repository=dict(type='path'),
        min_rate_mib_s=dict(type='float', default=1.0),
        allocation_map=dict(type='str', default='auto', choices=['auto', 'none']),
        compress=dict(type='str', default='none', choices=['none', 'zlib', 'zstd']),
        on_broken_chain=dict(type='str', default='fail', choices=['fail', 'full']),
        run=dict(type='str'),
    )
    spec.update(_xenapi_module.nbd_argument_spec())  # the xenserver.cbt_backup._nbd doc fragment
    return spec


def check_params(module):
    params = module.params
    if params['tls'] and not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=str(CRYPTOGRAPHY_IMPORT_ERROR), error_code='LIBRARY_MISSING')
    if not 1 <= params['connections'] <= MAX_CONNECTIONS:
        module.fail_json(msg='connections must be between 1 and %d (a XenServer host accepts at most %d NBD '
                             'connections in total)' % (MAX_CONNECTIONS, MAX_CONNECTIONS), error_code='INVALID_OPTION')
    if params['requests_in_flight'] < 1 or params['retries'] < 0:
        module.fail_json(msg='requests_in_flight must be at least 1 and retries at least 0', error_code='INVALID_OPTION')
    try:
        validate_options(port=(params['nbd'] or {}).get('port'), timeout=params['timeout'],
                         min_rate_mib_s=params['min_rate_mib_s'])
    except NbdOptionError as exc:
        _xenapi_module.fail(module, exc)
    if (params['snapshot'] or params['exports']) and not params['hostname']:
        module.fail_json(msg='%s needs the XenAPI connection: set hostname (or XENSERVER_HOST)'
                             % ('exports' if params['exports'] else 'snapshot'), error_code='INVALID_OPTION')
    if params['nbd_network'] and not (params['snapshot'] or params['exports']):
        module.fail_json(msg='nbd_network needs snapshot or exports (with nbd, the address is given)', error_code='INVALID_OPTION')
    if params['exports'] is None and not (params['dest'] or params['repository']):
        module.fail_json(msg='one of the following is required: dest, repository', error_code='INVALID_OPTION')
    if params['exports'] is not None and not 1 <= params['max_host_connections'] <= MAX_CONNECTIONS:
        module.fail_json(msg='max_host_connections must be between 1 and %d (xapi-nbd serves at most %d connections '
                             'per host)' % (MAX_CONNECTIONS, MAX_CONNECTIONS), error_code='INVALID_OPTION')
    if (params['progress_file'] or params['lease_seconds']) and params['exports'] is None:
        module.fail_json(msg='progress_file and lease_seconds belong to the list form: give exports',
                         error_code='INVALID_OPTION')
    problem = _progress.option_problem(params['progress_file'], params['lease_seconds'], params['logout_on_abandon'])
    if problem:
        module.fail_json(msg=problem, error_code='INVALID_OPTION')
    if params['compress'] != 'none' and not (params['repository'] or params['exports']):
        module.fail_json(msg='compress: %s needs repository (a raw dest holds the disk bytes as they are); remove '
                             'compress or export into a repository' % params['compress'], error_code='INVALID_OPTION')
    if params['compress'] == 'zstd' and not _qcow2.zstandard:
        module.fail_json(msg=missing_required_lib('zstandard') + ' (for compress: zstd; compress: zlib needs nothing)',
                         error_code='LIBRARY_MISSING')
    nbd = params['nbd']
    if nbd and params['tls'] and not nbd.get('cert') and not params['tls_ca_path']:
        module.fail_json(msg='tls is true but nbd has no "cert" (the PEM from VDI.get_nbd_info) and no tls_ca_path '
                             'was given, so the server certificate cannot be verified. Pass the whole get_nbd_info '
                             'element, or tls_ca_path, or tls: false for an insecure_nbd network.', error_code='INVALID_OPTION')


def exit_with_items(module, items, outcome, cancellation=None):
    """The list form's end: one entry per item, warnings named by label (default snapshot), failure when any item
    failed; a cancelled run says so first."""
    entries = []
    for item, result in zip(items, outcome['exports']):
        name = item.get('label') or item['snapshot']
        if isinstance(result, CbtBackupError):
            entry = dict(_xenapi_module.error_facts(result), snapshot=item['snapshot'], repository=item['repository'],
                         failed=True)
        else:
            entry = dict(result, failed=False)
            for warning in entry.get('warnings', []):
                module.warn('%s: %s' % (name, warning))
        if item.get('label'):
            entry['label'] = item['label']
        entries.append(entry)
    failed = [e for e in entries if e['failed']]
    facts = dict(exports=entries, hosts=outcome['hosts'], changed=any(e.get('changed') for e in entries),
                 bytes_read=sum(e.get('bytes_read', 0) for e in entries))
    if failed:
        cancelled = [e for e in failed if e['error_code'] == 'CANCELLED']
        if cancelled and cancellation is not None and cancellation.is_set():
            others = [e for e in failed if e['error_code'] != 'CANCELLED']
            msg = '%d of %d exports were cancelled: %s' % (len(cancelled), len(entries), cancellation.reason)
            if others:
                msg += ' %d more failed: %s' % (len(others), '; '.join(
                    '%s: %s' % (e.get('label') or e['snapshot'], e['msg']) for e in others))
        else:
            msg = '%d of %d exports failed: %s' % (len(failed), len(entries), '; '.join(
                '%s: %s' % (e.get('label') or e['snapshot'], e['msg']) for e in failed))
        module.fail_json(msg=msg, error_code='EXPORTS_FAILED', **facts)
    module.exit_json(**facts)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[('nbd', 'snapshot', 'exports'), ('changed_blocks', 'snapshot'), ('nbd', 'base'),
                            ('dest', 'repository', 'exports'), ('base', 'exports'), ('changed_blocks', 'exports')],
        required_one_of=[('nbd', 'snapshot', 'exports')],
        required_by={'base': 'snapshot'},
        supports_check_mode=True,
    )
    check_params(module)
    params = module.params
    client = None
    watch = None
    try:
        try:
            if params['exports'] is not None:
                watch = _xenapi_module.start_progress(
                    module, params['progress_file'], [item.get('label') or item['snapshot'] for item in params['exports']],
                    params['lease_seconds'], 'nothing was exported')
                client = _xenapi_module.make_client(module)
                client.open()
                result = _vdi_export.export_snapshots(
                    client, params, check_mode=module.check_mode, progress=watch.disks if watch else None,
                    cancel=watch.cancellation if watch else None)
            elif params['snapshot']:
                client = _xenapi_module.make_client(module)
                client.open()
                result = _vdi_export.export_snapshot(client, params, check_mode=module.check_mode)
            else:
                if params['nbd'].get('purposes'):
                    _vdi_export.check_purpose(params['nbd'], params['tls'])
                result = _vdi_export.export_nbd(params, params['nbd'], params['changed_blocks'],
                                                check_mode=module.check_mode)
        finally:
            _xenapi_module.close_after_progress(module, client, watch, params['logout_on_abandon'])
    except CbtBackupError as exc:  # every error names its condition in ``code`` (NBD_TIMEOUT, REPOSITORY_DAMAGED...)
        _xenapi_module.fail(module, exc)
    except (IOError, OSError) as exc:
        where = params['dest'] or params['repository']
        module.fail_json(msg='writing %s failed: %s; %s was left as it was' % (where, exc, where), error_code='WRITE_FAILED')
    if params['exports'] is not None:
        if watch is not None and watch.file_error is not None:
            module.warn('progress_file %s could not always be written or removed: %s'
                        % (params['progress_file'], watch.file_error))
        exit_with_items(module, params['exports'], result, cancellation=watch.cancellation if watch else None)
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
