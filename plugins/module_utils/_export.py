# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Export a disk (or its changed blocks) from an NBD server into a raw file.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Data flows one way: the caller says what to read (connection + optional CBT bitmap), the
extent reader fetches it, a file writer stores it.  ``dest`` is never left half-written: a full
export goes to a temporary name that is renamed over ``dest`` once complete and fsynced; changed
blocks are first staged in a temporary file and copied onto ``dest`` only after every block
arrived.
"""

from __future__ import absolute_import, division, print_function

import os

from . import _cbt
from ._extents import CBT_BLOCK_SIZE, total_length
from ._nbd.connection import DEFAULT_MIN_RATE_MIB_S, DEFAULT_TIMEOUT, ConnectionTarget, NbdConnection
from ._nbd.reader import DEFAULT_CONNECTIONS, DEFAULT_REQUEST_SIZE, DEFAULT_REQUESTS_IN_FLIGHT, DEFAULT_RETRIES, ExtentReader
from ._nbd.tls import TlsSettings
from ._repository.raw_file import AtomicFile, FileWriter, copy_extents

__metaclass__ = type

MIB = 1024 * 1024


class ExportError(Exception):
    """An export that cannot be done as asked (bad destination, bitmap that does not fit...)."""


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
                   requests_in_flight=DEFAULT_REQUESTS_IN_FLIGHT, retries=DEFAULT_RETRIES, check_mode=False):
    """Export to the raw image ``dest``; return a result dict (see the vdi_export module's RETURN)."""
    if changed_blocks is None:
        def write(reader, extents, size):
            return _write_full(reader, extents, dest, size)
        check = None
    else:
        def write(reader, extents, size):
            return _apply_changes(reader, extents, dest, size)

        def check(size):
            _check_incremental_dest(dest, size)
    return run_export(target, changed_blocks, write, check=check, connections=connections,
                      requests_in_flight=requests_in_flight, retries=retries, check_mode=check_mode)


def run_export(target, changed_blocks, write, check=None, connections=DEFAULT_CONNECTIONS,
               requests_in_flight=DEFAULT_REQUESTS_IN_FLIGHT, retries=DEFAULT_RETRIES, check_mode=False):
    """Plan what to read (all of the export, or the bitmap's blocks) and hand it to a destination.

    ``check(size)`` may refuse the export before any data is read; ``write(reader, extents, size)``
    reads and stores, returning ``(stats, bytes_written)`` or ``(stats, bytes_written, extra_result)``.
    """
    first = NbdConnection.open(target)
    try:
        size = first.export_size
        result = {
            'export_size': size,
            'tls': target.tls is not None,
            'connections': connections,
            'warnings': [],
        }
        if target.tls is None:
            result['warnings'].append('the export was read without TLS: disk contents crossed the network unencrypted')
        elif first.tls_legacy_cipher:
            result['warnings'].append('the NBD server only offers a TLS suite without forward secrecy (%s); '
                                      'consider updating the host' % first.tls_description)
        result['warnings'].extend(first.tls_warnings)  # an expired pinned certificate
        if changed_blocks is None:
            extents = [(0, size)] if size else []
            result['blocks_changed'] = _cbt.block_count(size)
        else:
            raw = _cbt.decode(changed_blocks)
            extents = _cbt.to_extents(raw, size)
            result['blocks_changed'] = sum(-(-length // CBT_BLOCK_SIZE) for _o, length in extents)
        if check is not None:
            check(size)
        to_read = total_length(extents)
        result['connections'] = min(connections, max(1, -(-to_read // DEFAULT_REQUEST_SIZE)))
        if check_mode:
            result.update(changed=bool(extents) or changed_blocks is None, bytes_read=0, bytes_written=0,
                          bytes_to_read=to_read, seconds=0.0, throughput_mib_s=0.0)
            return result
        reader = ExtentReader(target, connections=connections, requests_in_flight=requests_in_flight,
                              retries=retries, first_connection=first)
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
    return stats, writer.bytes_written


def _apply_changes(reader, extents, dest, size):
    # Stage every changed block first so that a failed read leaves dest untouched.
    staging = AtomicFile(dest, size=size, prefix='.changes-')
    try:
        stats = reader.read(extents, FileWriter(staging.fd, sparse=False))
        dest_fd = os.open(dest, os.O_WRONLY)
        try:
            copy_extents(staging.fd, dest_fd, extents)
            os.fsync(dest_fd)
        except (IOError, OSError) as exc:
            raise ExportError('applying the changed blocks to %s failed after part of them was written (%s): %s no '
                              'longer matches any snapshot; run a full export' % (dest, exc, dest))
        finally:
            os.close(dest_fd)
    finally:
        staging.discard()
    return stats, total_length(extents)
