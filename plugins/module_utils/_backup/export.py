# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export a disk (or its changed blocks) from an NBD server into a raw file.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Data flows one way: the caller says what to read (connection + optional CBT bitmap), the
extent reader fetches it, a file writer stores it.  ``dest`` is never left half-written: a full
export goes to a temporary name that is renamed over ``dest`` once complete and fsynced.  Changed
blocks are applied with a redo journal:

1. check that the file system has room for the staged blocks and for the holes of ``dest`` they fill;
2. stage every changed block in ``.<dest>.apply-staging`` (at its offset, sparse), fsync it;
3. write the journal ``.<dest>.apply-journal`` (dest size, extents), atomically: from now on the apply
   is decided;
4. copy the staged blocks onto ``dest``, fsync it;
5. delete the journal, then the staging file.

A run that fails or dies before step 3 leaves ``dest`` untouched (the staging file is deleted by the
next run); after step 3 the next run on the same ``dest`` first redoes step 4 from the staged blocks
(copying them again is harmless), so ``dest`` is never left between two snapshots.  Those two file
names are the only ones deleted, and only next to a ``dest`` given to this collection.

Fault injection: ``checkpoint``, when given (tests pass one), is called with the name of a step as the
apply reaches it: ``applying`` right after the first staged extent was copied onto ``dest``.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import stat

from .._xenapi import cbt_bitmap as _cbt
from .._extents import CBT_BLOCK_SIZE, total_length
from .._nbd.connection import DEFAULT_MIN_RATE_MIB_S, DEFAULT_TIMEOUT, ConnectionTarget, open_any
from .._nbd.reader import (
    DEFAULT_CONNECTIONS,
    DEFAULT_REQUEST_SIZE,
    DEFAULT_REQUESTS_IN_FLIGHT,
    DEFAULT_RETRIES,
    ExtentReader,
    ReadStats,
)
from .._nbd.tls import TlsSettings
from .._image.raw_file import AtomicFile, FileWriter, copy_extents, fsync_directory
from .._repository.store import SPACE_ERRNOS, write_file_atomically
from .._errors import Cancelled, CbtBackupError

__metaclass__ = type

EXPIRED_CERTIFICATE_ADVICE = ('Renew the host certificate (for example with xe host-refresh-server-certificate); '
                              'VDI.get_nbd_info then returns the new one.')

MIB = 1024 * 1024


APPLY_STAGING = '.%s.apply-staging'
APPLY_JOURNAL = '.%s.apply-journal'
SPACE_MARGIN = MIB


class ExportError(CbtBackupError):
    """An export that cannot be done as asked (bad destination, bitmap that does not fit...); ``code`` names it."""

    code = 'EXPORT_FAILED'


def make_target(nbd_info, tls=True, ca_path=None, timeout=DEFAULT_TIMEOUT, client_cert=None, client_key=None,
                min_rate_mib_s=DEFAULT_MIN_RATE_MIB_S):
    """Build a ConnectionTarget from one element of ``VDI.get_nbd_info``.

    Raises NbdOptionError (code INVALID_OPTION) for a port, timeout or min_rate_mib_s out of range.
    """
    settings = None
    if tls:
        settings = TlsSettings(pinned_cert_pem=nbd_info.get('cert'), subject=nbd_info.get('subject'),
                               ca_path=ca_path, client_cert=client_cert, client_key=client_key)
    port = nbd_info.get('port')
    return ConnectionTarget(nbd_info['address'], 10809 if port is None or port == '' else port, nbd_info['exportname'],
                            tls=settings, timeout=timeout, min_rate_mib_s=min_rate_mib_s)


def export_to_file(target, dest, changed_blocks=None, connections=DEFAULT_CONNECTIONS,
                   requests_in_flight=DEFAULT_REQUESTS_IN_FLIGHT, retries=DEFAULT_RETRIES, check_mode=False,
                   checkpoint=None, allocation=None, progress=None, cancel=None, size=None):
    """Export to the raw image ``dest``; return a result dict (see the vdi_export module's RETURN).

    ``progress`` and ``cancel``: see :func:`run_export`."""
    _check_dest(dest)
    finished = None
    if not check_mode and changed_blocks is not None:
        # an apply that a crashed or failed run decided (journaled) is completed before anything else;
        # a full export replaces dest and drops such a journal once it is done (_write_full)
        finished = finish_interrupted_apply(dest)
    if changed_blocks is None:
        def write(reader, extents, size):
            return _write_full(reader, extents, dest, size)
        check = None
    else:
        def write(reader, extents, size):
            return _apply_changes(reader, extents, dest, size, checkpoint or _no_checkpoint)

        def check(size):
            _check_incremental_dest(dest, size)
    result = run_export(target, changed_blocks, write, check=check, connections=connections,
                        requests_in_flight=requests_in_flight, retries=retries, check_mode=check_mode,
                        allocation=allocation, progress=progress, cancel=cancel, size=size)
    if check_mode and changed_blocks is not None:
        _check_space(dest, result['bytes_to_read'])  # check mode fails where the run would, for lack of space
    if finished:
        result['finished_apply'] = finished
        result['warnings'].append('the changed blocks of an interrupted earlier run were applied to %s first (%d '
                                  'bytes), so that it matched that run\'s snapshot before this export' % (dest, finished))
    return result


def full_extents(allocation, size):
    """What a full export of ``size`` bytes reads: ``(extents, allocation_source, fallback_reason)``.

    ``allocation``: None (read everything), ``{'map': VhdAllocation}`` (read only its blocks, when it
    describes this very disk) or ``{'reason': text}`` (the host gave no map: read everything, say why).
    """
    everything = [(0, size)] if size else []
    if not allocation:
        return everything, 'none', None
    found = allocation.get('map')
    if found is None:
        return everything, 'none', allocation.get('reason')
    if found.virtual_size != size:
        return everything, 'none', ('the allocation map describes %d bytes but the NBD export has %d'
                                    % (found.virtual_size, size))
    return found.extents(), allocation.get('source') or 'vhd_bat', None


def record_failover(result, passed_over, used):
    """Name the hosts passed over (``(address:port, error)`` pairs) in ``result``: ``nbd_failover`` and one
    warning each, saying which server (``used``, its ``where``) served the export instead."""
    result['nbd_failover'] = [{'nbd_address': where, 'error': str(exc)} for where, exc in passed_over]
    result['warnings'].extend('%s; the export was read from %s instead' % (exc, used) for dummy, exc in passed_over)


def run_export(target, changed_blocks, write, check=None, connections=DEFAULT_CONNECTIONS,
               requests_in_flight=DEFAULT_REQUESTS_IN_FLIGHT, retries=DEFAULT_RETRIES, check_mode=False,
               allocation=None, progress=None, cancel=None, size=None):
    """Plan what to read (all of the export, its allocated blocks, or the bitmap's blocks) and hand it to a
    destination.

    ``target``: a ConnectionTarget, or a list of them (the hosts that serve the export, in the order to try:
    the first that serves is read from, see :func:`connection.open_any`).

    ``check(size)`` may refuse the export before any data is read; ``write(reader, extents, size)``
    reads and stores, returning ``(stats, bytes_written)`` or ``(stats, bytes_written, extra_result)``.
    ``allocation``: for a full, see :func:`full_extents`.

    ``progress`` (optional): told ``started(bytes to read)`` once the export is planned, then ``read(length)``
    for every piece read (from the reader's threads). ``cancel`` (optional, ``is_set()``): checked before
    connecting and between the reader's requests; once set, the export stops with :class:`Cancelled` and its
    destination is left as a failed write leaves it.

    ``size`` (optional): the export's size as the XenAPI gave it. With it, an incremental whose bitmap lists no
    changed block opens no NBD connection at all (on a host, each connection plugs a VBD into dom0).
    """
    if cancel is not None and cancel.is_set():
        raise Cancelled('the export was cancelled before it connected')
    planned = None  # the bitmap's extents, when the XenAPI's size is known before connecting
    if size is not None and changed_blocks is not None:
        planned = _cbt.to_extents(_cbt.decode(changed_blocks), size)
        if not planned:
            return _export_nothing(target, write, check, size, check_mode, progress)
    known_size = size
    first, passed_over = open_any(target if isinstance(target, list) else [target])
    target = first.target
    try:
        size = first.export_size
        result = {
            'export_size': size,
            'tls': target.tls is not None,
            'connections': connections,
            'nbd_address': '%s:%d' % (target.address, target.port),
            'warnings': [],
        }
        if passed_over:
            record_failover(result, [('%s:%d' % (t.address, t.port), exc) for t, exc in passed_over], target.where)
        if target.tls is None:
            result['warnings'].append('the export was read without TLS: disk contents crossed the network unencrypted')
        elif first.tls_legacy_cipher:
            result['warnings'].append('the NBD server only offers a TLS suite without forward secrecy (%s); '
                                      'consider updating the host' % first.tls_description)
        # an expired pinned certificate: the NBD layer says so, the XenServer remedy is added here
        result['warnings'].extend('%s %s' % (warning, EXPIRED_CERTIFICATE_ADVICE) for warning in first.tls_warnings)
        if changed_blocks is None:
            extents, source, reason = full_extents(allocation, size)
            result['blocks_changed'] = _cbt.block_count(size)
            result['allocation_source'] = source
            if reason:
                result['allocation_fallback_reason'] = reason
                result['warnings'].append('the host gave no allocation map (%s): the full export reads the whole '
                                          'disk' % reason)
        else:
            # decoded once: the extents planned above serve when the server agrees on the size
            extents = planned if known_size == size else _cbt.to_extents(_cbt.decode(changed_blocks), size)
            result['blocks_changed'] = sum(-(-length // CBT_BLOCK_SIZE) for _o, length in extents)
        if check is not None:
            check(size)
        to_read = total_length(extents)
        result['connections'] = min(connections, max(1, -(-to_read // DEFAULT_REQUEST_SIZE)))
        if check_mode:
            result.update(changed=bool(extents) or changed_blocks is None, bytes_read=0, bytes_written=0,
                          bytes_to_read=to_read, seconds=0.0, throughput_mib_s=0.0)
            return result
        if progress is not None:
            progress.started(to_read)
        reader = ExtentReader(target, connections=connections, requests_in_flight=requests_in_flight,
                              retries=retries, first_connection=first,
                              on_read=progress.read if progress is not None else None, cancel=cancel)
        first = None  # the reader owns it now
        try:
            outcome = write(reader, extents, size)
        finally:
            reader.close()
    finally:
        if first is not None:
            first.close()
    stats, written = outcome[0], outcome[1]
    if len(outcome) > 2:
        result.update(outcome[2])
    result.update(
        changed=changed_blocks is None or bool(extents),
        bytes_read=stats.bytes_read,
        bytes_written=written,
        seconds=round(stats.seconds, 3),
        throughput_mib_s=round(stats.bytes_read / MIB / stats.seconds, 1) if stats.seconds > 0 else 0.0,
        connections=stats.connections,
        reconnects=stats.reconnects,
    )
    return result


class _NothingToRead:
    """The reader of an incremental without changed blocks: no connection, nothing read."""

    def read(self, extents, writer):  # pylint: disable=unused-argument
        if extents:
            raise AssertionError('an export without changed blocks was asked to read %d extent(s)' % len(extents))
        return ReadStats()

    def close(self):
        pass


def _export_nothing(target, write, check, size, check_mode, progress):
    """run_export for an incremental that lists no changed block: the destination gets its (empty) change and
    no NBD connection is opened."""
    first_target = target[0] if isinstance(target, list) else target
    result = {'export_size': size, 'tls': first_target.tls is not None, 'connections': 0, 'nbd_address': None,
              'warnings': [], 'blocks_changed': 0}
    if check is not None:
        check(size)
    if check_mode:
        result.update(changed=False, bytes_read=0, bytes_written=0, bytes_to_read=0, seconds=0.0, throughput_mib_s=0.0)
        return result
    if progress is not None:
        progress.started(0)
    outcome = write(_NothingToRead(), [], size)
    if len(outcome) > 2:
        result.update(outcome[2])
    result.update(changed=False, bytes_read=0, bytes_written=outcome[1], seconds=0.0, throughput_mib_s=0.0,
                  reconnects=0)
    return result


def _check_dest(dest):
    """A dest must be a regular file (or not exist yet) in an existing directory."""
    if os.path.isdir(dest):
        raise ExportError('dest %s is a directory; give the path of the raw image file to write (for example %s)'
                          % (dest, os.path.join(dest, 'disk.raw')), code='DEST_IS_DIRECTORY')
    if os.path.exists(dest) and not stat.S_ISREG(os.stat(dest).st_mode):
        raise ExportError('dest %s exists but is not a regular file (a device, a pipe...): vdi_export writes raw image '
                          'files and never replaces other things. Export to a file, then copy it onto the device '
                          '(qemu-img convert or dd).' % dest, code='DEST_NOT_REGULAR_FILE')
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise ExportError('the directory %s of dest does not exist; create it first' % parent,
                          code='DEST_PARENT_MISSING')


def _apply_paths(dest):
    directory, name = os.path.split(os.path.abspath(dest))
    return os.path.join(directory, APPLY_STAGING % name), os.path.join(directory, APPLY_JOURNAL % name)


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def finish_interrupted_apply(dest, redo=True):
    """Complete (``redo``) or drop an apply to ``dest`` that an earlier run journaled; return the bytes applied.

    Without a journal, a staging file left by a run that died while staging is deleted (``dest`` was not
    touched).  With ``redo=False`` (a full export has just replaced ``dest``) the journal is only dropped.
    """
    staging, journal_path = _apply_paths(dest)
    if not os.path.exists(journal_path):
        _unlink_quietly(staging)
        return 0
    applied = 0
    if redo:
        try:
            with open(journal_path) as handle:
                journal = json.load(handle)
            extents = [(int(offset), int(length)) for offset, length in journal['extents']]
            if os.path.getsize(staging) != journal['size'] or os.path.getsize(dest) != journal['size']:
                raise ValueError('sizes differ')
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExportError('an earlier run began applying changed blocks to %s but its journal %s or its staged '
                              'blocks cannot be used (%s): %s may be between two snapshots. Run a full export (without '
                              'changed_blocks) to replace it.' % (dest, journal_path, exc, dest), code='DEST_HALF_APPLIED')
        _copy_staged(staging, dest, extents)
        applied = total_length(extents)
    os.unlink(journal_path)
    _unlink_quietly(staging)
    fsync_directory(os.path.dirname(os.path.abspath(dest)))
    return applied


def _no_checkpoint(step):
    pass


def _copy_staged(staging, dest, extents, checkpoint=_no_checkpoint):
    src_fd = os.open(staging, os.O_RDONLY)
    try:
        dest_fd = os.open(dest, os.O_WRONLY)
        try:
            for number, extent in enumerate(extents):
                copy_extents(src_fd, dest_fd, [extent])
                if number == 0:
                    checkpoint('applying')
            os.fsync(dest_fd)
        finally:
            os.close(dest_fd)
    finally:
        os.close(src_fd)


def _check_space(dest, changed_bytes):
    """Room for the staged blocks and for the holes of dest they may fill; NO_SPACE before anything is written."""
    needed = 2 * changed_bytes + SPACE_MARGIN
    info = os.statvfs(os.path.dirname(os.path.abspath(dest)))
    available = info.f_bavail * info.f_frsize
    if available < needed:
        raise ExportError('not enough space next to %s to apply the changed blocks safely: %d bytes are needed (the '
                          'staged blocks, the holes of the image they fill and %d MiB of margin) but %d are free. '
                          'Nothing was written; %s is unchanged. Free some space and run again.'
                          % (dest, needed, SPACE_MARGIN // MIB, available, dest), code='NO_SPACE')


def _check_incremental_dest(dest, size):
    if not os.path.exists(dest):
        raise ExportError('changed_blocks needs an existing dest to apply them to, and %s does not exist: run a full '
                          'export (without changed_blocks) first' % dest)
    actual = os.path.getsize(dest)
    if actual != size:
        raise ExportError('%s has %d bytes but the export has %d: the changed blocks do not apply to it (was the VDI '
                          'resized?); run a full export' % (dest, actual, size))


def _write_full(reader, extents, dest, size):
    out = AtomicFile(dest, size=size)
    try:
        writer = FileWriter(out.fd, sparse=True)
        stats = reader.read(extents, writer)
        out.commit()
    except BaseException:
        out.discard()
        raise
    finish_interrupted_apply(dest, redo=False)  # an old apply journal no longer concerns the new dest
    return stats, writer.bytes_written


def _apply_changes(reader, extents, dest, size, checkpoint):
    """Steps 1-5 of the module docstring: stage, journal, apply, forget."""
    _check_space(dest, total_length(extents))
    staging, journal_path = _apply_paths(dest)
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, 'O_NOFOLLOW', 0), 0o600)
    try:
        try:
            os.ftruncate(fd, size)
            # no write-behind: the staged blocks are read back right after, and waiting on small scattered
            # ranges made an incremental 1.7x slower (docs/performance.md)
            stats = reader.read(extents, FileWriter(fd, sparse=False, write_behind=False))
            os.fsync(fd)
        finally:
            os.close(fd)
        write_file_atomically(journal_path, json.dumps({'size': size, 'extents': extents}).encode('utf-8'))
    except BaseException as exc:
        _unlink_quietly(staging)  # dest was not touched
        if getattr(exc, 'errno', None) in SPACE_ERRNOS:
            raise ExportError('not enough space next to %s to stage the changed blocks (%s); nothing was written to '
                              '%s, which is unchanged. Free some space and run again.'
                              % (dest, os.strerror(exc.errno), dest), code='NO_SPACE')
        raise
    try:
        _copy_staged(staging, dest, extents, checkpoint)
    except (IOError, OSError) as exc:
        raise ExportError('applying the changed blocks to %s stopped after part of them was written (%s). The staged '
                          'blocks and their journal were kept: the next vdi_export with this dest finishes the apply '
                          'first (free some space if the disk is full), or a full export replaces %s.'
                          % (dest, exc, dest), code='DEST_HALF_APPLIED')
    os.unlink(journal_path)
    _unlink_quietly(staging)
    fsync_directory(os.path.dirname(os.path.abspath(dest)))
    return stats, total_length(extents)
