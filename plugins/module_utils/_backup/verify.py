# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backup_verify use case's spot check: random blocks of the newest point against its live snapshot.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
"""

from __future__ import absolute_import, division, print_function

from . import export as _export
from . import vm_configuration
from .._xenapi.ops import nbd_access as _nbd_access
from .._xenapi import model as _objects
from .._errors import CbtBackupError
from .._nbd.connection import open_any
from .._repository import inspection, rebuild
from .._repository.store import Repository
from .._xenapi.client import XenApiError

__metaclass__ = type


def skipped(reason, point=None):
    return {'skipped': True, 'reason': reason, 'point': point}


def spot_check_newest(verified, make_client, blocks, nbd_network=None, tls=True, tls_ca_path=None, timeout=60):
    """Compare ``blocks`` random blocks of the newest point of a verified repository with its snapshot.

    ``verified`` is ``inspection.verify_repository``'s result; ``make_client()`` returns a XenApiClient that is
    not yet open (opened here only when the snapshot has to be asked for, and closed again). Skipped, with the
    reason, when the points failed verification or the snapshot is gone or holds no data any more.
    """
    point_id = verified['points'][-1]['id']
    if not verified['ok']:
        return skipped('the restore points failed verification', point_id)
    with Repository(verified['repository']) as repo:
        snapshot_uuid = repo.point(point_id).get('snapshot_uuid')
    if not snapshot_uuid:
        return skipped('the manifest records no snapshot for restore point %s' % point_id, point_id)
    client = make_client()
    try:
        client.open()
        try:
            snap_ref, snap = _objects.find_vdi(client, snapshot_uuid, snapshot=True)
        except XenApiError as exc:
            if exc.code == 'NOT_FOUND':
                return skipped('snapshot %s no longer exists' % snapshot_uuid, point_id)
            raise
        if snap.get('type') == 'cbt_metadata':
            return skipped('snapshot %s holds no data any more (cbt_metadata: its data was destroyed after the backup)'
                           % snapshot_uuid, point_id)
        infos = _nbd_access.in_order(_nbd_access.require_nbd_info(client, snap_ref, snap), nbd_network,
                                     key=snap['uuid'])
        targets = [_export.make_target(info, tls=tls, ca_path=tls_ca_path, timeout=timeout) for info in infos]
        checked = inspection.spot_check(verified['repository'], point_id, lambda: open_any(targets)[0], blocks)
    finally:
        client.close()
    checked['skipped'] = False
    checked['snapshot'] = snapshot_uuid
    return checked


def verify(path, point=None, read_data=True, rebuild_manifest=False, spot_check=0, make_client=None, nbd_network=None,
           tls=True, tls_ca_path=None, timeout=60, check_mode=False):
    """The backup_verify use case for one repository: rebuild the manifest if asked, verify, spot-check.

    Returns the module result (``changed``, ``warnings``...). Raises CbtBackupError, with the result's facts
    on it, when a point is bad (``VERIFY_FAILED``, ``MANIFEST_DAMAGED``), the spot check finds a difference or
    fails, or the repository cannot be read (``READ_FAILED``).
    """
    rebuilt = None

    def facts(**more):
        more.update(ok=False, changed=bool(rebuilt and rebuilt['changed']), rebuilt=rebuilt)
        return more

    try:
        if rebuild_manifest:
            rebuilt = rebuild.rebuild_manifest(path, check_mode=check_mode)
            if rebuilt['changed'] and check_mode:
                return dict(changed=True, ok=False, points=[], rebuilt=rebuilt, msg=rebuilt['message'], warnings=[])
        result = inspection.verify_repository(path, point=point, read_data=read_data)
    except CbtBackupError as exc:
        exc.result = dict(facts(), **exc.result)
        raise
    except OSError as exc:
        raise CbtBackupError('reading the repository %s failed: %s' % (path, exc), code='READ_FAILED', result=facts())
    changed = bool(rebuilt and rebuilt['changed'])
    result['changed'] = changed
    result['warnings'] = []
    if rebuilt is not None:
        result['rebuilt'] = rebuilt
        if changed:
            result['warnings'].append(rebuilt['message'])

    if spot_check and result['points']:
        try:
            result['spot_check'] = spot_check_newest(result, make_client, spot_check, nbd_network=nbd_network, tls=tls,
                                                     tls_ca_path=tls_ca_path, timeout=timeout)
        except XenApiError as exc:
            exc.result = dict(result, **exc.result)
            raise
        except (CbtBackupError, OSError) as exc:
            raise CbtBackupError('the spot check of %s failed: %s' % (result['repository'], exc),
                                 code=getattr(exc, 'code', None) or 'SPOT_CHECK_FAILED', result=result)
        if result['spot_check'].get('ok') is False:
            result.update(ok=False, first_bad=result['spot_check']['point'], affected=[result['spot_check']['point']],
                          message=result['spot_check']['message'])
    if not result['ok']:
        raise CbtBackupError(result['message'], code='MANIFEST_DAMAGED' if result['manifest_damaged'] else 'VERIFY_FAILED',
                             result=result)
    check_configurations(path, result)
    return result


def check_configurations(path, result):
    """Add the check of the VM configurations beside the repository (``vm_configs``; null when there are none).
    A damaged configuration is a warning: the restore points are sound, only a whole-VM restore of its run is not."""
    try:
        with Repository(path) as repo:
            newest = repo.newest() if repo.points else None
        newest_run = vm_configuration.point_run(newest) if newest else None
        checked = vm_configuration.verify_configurations(path, newest_run)
    except (CbtBackupError, OSError) as exc:
        checked = {'checked': 0, 'problems': ['the VM configurations cannot be read: %s' % exc], 'unknown_files': [],
                   'newest_run_kept': None}
    result['vm_configs'] = checked
    if checked:
        for problem in checked['problems']:
            result['warnings'].append('VM configuration: %s' % problem)
        if checked['newest_run_kept'] is False:
            result['warnings'].append('the run %s of the newest restore point has no VM configuration: it can restore '
                                      'disks, not the whole VM' % newest_run)
