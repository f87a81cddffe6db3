# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export a snapshot into a repository as a new restore point (full, or incremental on the newest one).

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Data flows one way: the NBD reader hands pieces to a Qcow2Writer on a temporary file; once every
piece arrived the image is finished, fsynced and renamed, and only then added to the manifest.
"""

from __future__ import absolute_import, division, print_function

import os
import time

from .._backup import export as _export
from . import retention
from .._image.qcow2 import Qcow2Writer
from .store import Repository, RepositoryError
from .._time import format_utc, normalize_if_time, utc_now

__metaclass__ = type

SECTOR = 512


def already_exported(repository, snapshot_uuid):
    """The result of an export of ``snapshot_uuid`` that the repository's newest point already holds, or None.

    Re-running the same task is then ok (``changed: false``) with that point, and nothing is read: a second
    point of the same snapshot would only cost space (and an incremental of a snapshot against itself is empty).
    """
    if not snapshot_uuid or not os.path.isdir(repository):
        return None
    with Repository(repository, allow_previous=False) as repo:
        newest = repo.newest()
        if not newest or newest.get('snapshot_uuid') != snapshot_uuid:
            return None
        return {'changed': False, 'already_exported': True, 'point': newest, 'point_type': newest['type'],
                'repository': repo.path, 'snapshot': snapshot_uuid, 'export_size': newest['virtual_size'],
                'bytes_read': 0, 'bytes_written': 0, 'blocks_changed': 0, 'seconds': 0.0, 'throughput_mib_s': 0.0,
                'cleaned_up': [],
                'warnings': ['restore point %s already holds snapshot %s, the newest point of %s: nothing was exported'
                             % (newest['id'], snapshot_uuid, repo.path)] + repo.notices()}


def export_to_repository(target, repository, changed_blocks=None, snapshot=None, base_uuid=None, disk=None, **options):
    """Add a restore point to the repository directory ``repository``; return the export result.

    ``snapshot``: dict with the exported snapshot's ``uuid``, ``snapshot_of`` (disk uuid), ``name`` and
    ``time``, recorded in the manifest (the snapshot uuid becomes the CBT anchor).  ``base_uuid``: the
    snapshot the bitmap was computed against; it must be the repository's anchor.  ``disk``: more facts
    about the source disk for the manifest's ``disk`` (``vm_uuid``, ``vm_name``, ``userdevice`` of the VM
    that uses it); they default to null.
    """
    snapshot = snapshot or {}
    compression = options.pop('compression', None)  # zlib or zstd: compressed qcow2 clusters; None: as they are
    kind = 'full' if changed_blocks is None else 'incremental'
    check_mode = options.get('check_mode', False)
    with Repository(repository, write=not check_mode, create=not check_mode, missing_ok=check_mode,
                    allow_previous=False) as repo:
        recovered = None
        cleaned = []
        if not check_mode:
            # Finish (or roll back) a prune that was interrupted, then delete what the repository's journal
            # says interrupted runs of this collection left (never a file it does not name).
            recovered = retention.recover(repo)
            cleaned = recovered['deleted']
        parent = repo.newest()

        def check(size):
            if size % SECTOR:
                # qcow2 sizes are whole sectors: qemu-img would read such a point shorter than it was exported
                raise RepositoryError(
                    'the export has %d bytes, not a multiple of %d: a qcow2 restore point cannot hold it exactly, so '
                    'nothing was written to %s. Export it to a raw file with dest: instead.' % (size, SECTOR, repo.path),
                    code='EXPORT_SIZE_UNALIGNED')
            if kind == 'full':
                return
            if parent is None:
                raise RepositoryError('the repository %s has no restore point for the changed blocks to build on; '
                                      'take a full backup first' % repo.path, code='NO_BASE_POINT')
            anchor = repo.manifest.get('cbt_anchor')
            if base_uuid and anchor != base_uuid:
                raise RepositoryError(
                    'the newest restore point of %s was taken from snapshot %s, but the changed blocks were listed '
                    'against %s: they would not apply to it. Take a full backup (or pass the matching base).'
                    % (repo.path, anchor, base_uuid), code='BASE_MISMATCH')
            if parent['virtual_size'] != size:
                raise RepositoryError('the disk has %d bytes now but %d in the newest restore point (it was resized): '
                                      'take a full backup' % (size, parent['virtual_size']), code='DISK_RESIZED')

        def write(reader, extents, size):
            started = time.monotonic()
            when = utc_now()
            ident, out = repo.new_point_file(kind, when)
            writer = Qcow2Writer(out.fd, size, backing_file=parent['file'] if kind == 'incremental' else None,
                                 compression=compression)
            try:
                stats = reader.read(extents, writer)
                written = writer.finish()
                out.commit()
            except BaseException:
                writer.abort()
                out.discard()
                repo.abandon_pending([ident + '.qcow2'])
                raise
            point = {
                'id': ident,
                'time': format_utc(when),
                'type': kind,
                'file': ident + '.qcow2',
                'parent': parent['id'] if kind == 'incremental' else None,
                'snapshot_uuid': snapshot.get('uuid'),
                'snapshot_time': normalize_if_time(snapshot.get('time')),
                'base_snapshot_uuid': base_uuid,
                'source_vdi_uuid': snapshot.get('snapshot_of'),
                'source_vdi_name': snapshot.get('name'),
                'virtual_size': size,
                'blocks': written.clusters_stored,
                'bytes': written.bytes_stored,
                'blocks_digest': written.digest,
                'bytes_read': stats.bytes_read,
                # the whole export: reading, writing, finishing, fsync and rename of the image
                'seconds': round(time.monotonic() - started, 3),
            }
            if compression:
                point['compression'] = compression
            if kind == 'full':
                # vhd_bat: only the blocks the host's allocation map lists were read; none: every byte
                point['allocation_source'] = _export.full_extents(options.get('allocation'), size)[1]
            if snapshot.get('run'):
                point['run'] = normalize_if_time(snapshot['run'])  # the backup run; one VM snapshot's disks share it
            if snapshot.get('fallback_reason'):
                # a full point taken because the CBT chain was broken: the report says why
                point['fallback_reason'] = snapshot['fallback_reason']
            disk_facts = {'vdi_uuid': snapshot.get('snapshot_of'), 'name': snapshot.get('name'), 'virtual_size': size,
                          'vm_uuid': None, 'vm_name': None, 'userdevice': None}
            disk_facts.update(disk or {})
            repo.add_point(point, disk=disk_facts)
            return stats, written.bytes_stored, {'point': point}

        result = _export.run_export(target, changed_blocks, write, check=check, **options)
        result['repository'] = repo.path
        result['cleaned_up'] = cleaned
        result.setdefault('warnings', []).extend(repo.notices())
        if recovered and recovered.get('action') not in (None, 'none'):
            result['recovered'] = recovered
        if check_mode:
            result['point_type'] = kind
        else:
            result['point_type'] = result['point']['type']
        return result
