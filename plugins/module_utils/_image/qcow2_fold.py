# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Folding overlays into their standalone base image in place, at the cost of what the overlays hold.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

``prepare(base, overlays)`` makes the base file able to read as the newest overlay reads, without changing
what the base reads today (copy on write at the level of the image's own structures):

1. the clusters the overlays define (the newest definition wins; a zero flag or an all-zero cluster
   becomes unallocated, as in a standalone image) are written into host clusters the base does not use
   (free clusters inside the file first, then appended ones);
2. every L2 table that changes is written as a new copy, then a new L1 table and new refcount structures
   (exact counts, computed from the tables: no leaks, freed clusters get refcount 0), all in unused clusters;
3. nothing of the base's current header, tables or data is touched, so until the switch the file reads
   exactly as before (``qemu-img check`` sees the new clusters as free space).

``switch(base, patch)`` then writes the 20 table fields of the header (one write inside the first sector)
and fsyncs: from that instant the file reads as the folded disk.  The caller hashes the future file with
``qcow2.scan(base, header_patch=patch)`` before switching, so a crash at any moment is recognised by hash.

With ``compress``, folded clusters are stored compressed (standard qcow2 compressed clusters, packed back to
back) with the compression type the base's header names, as its own compressed clusters are.

Bytes written: the folded clusters, the changed L2 tables, the L1 table and the refcount blocks (2 bytes
per host cluster of the file: 3 MiB per 100 GiB of image).  :class:`FoldUnsupported` says the base is not
one this module folds (the caller rewrites instead).
"""

from __future__ import absolute_import, division, print_function

import array
import os

from .qcow2 import (
    COMPRESSION_TYPES, FLAG_COPIED, FLAG_COMPRESSED, HEADER_TABLES, HEADER_TABLES_OFFSET, INCOMPAT_COMPRESSION_TYPE, OFFSET_MASK,
    Qcow2Chain, Qcow2Error, Qcow2Image, SOURCE_NONE, SOURCE_ZERO, _ceil_div, compressor, refcount_layout, squeeze,
    _from_be_bytes, _pread_exact, _pwritev_all, _to_be_bytes, _u64_array,
)
from .raw_file import pwrite_all

__metaclass__ = type

REFCOUNT_ORDER = 4  # 16-bit refcounts, what Qcow2Writer and qemu-img create write


class FoldUnsupported(Qcow2Error):
    """The base image has a feature an in-place fold does not handle (snapshots, a backing file...)."""


class FoldResult:
    """What :func:`prepare` wrote: ``patch`` (the header bytes to switch to), ``restore_patch`` (today's),
    ``clusters`` (guest clusters folded), ``bytes_written``, ``file_size`` (after the fold) and ``compression``
    (of the folded clusters: zlib, zstd or None)."""

    def __init__(self, patch, restore_patch, clusters, bytes_written, file_size, compression=None):
        self.patch = patch
        self.restore_patch = restore_patch
        self.clusters = clusters
        self.bytes_written = bytes_written
        self.file_size = file_size
        self.compression = compression


class _Allocator:
    """Host clusters for new structures: free ones inside the file (in order), then appended ones."""

    def __init__(self, counts):
        self.counts = counts  # references per host cluster in the folded image (updated as it goes)
        references_now = array.array('H', counts)  # the current state's: clusters it uses are never handed out
        self._free = (index for index in range(1, len(counts)) if not references_now[index])
        self.end = len(counts)

    def take(self):
        for index in self._free:
            if not self.counts[index]:
                self.counts[index] = 1
                return index
        return self.take_contiguous(1)

    def take_contiguous(self, count):
        start = self.end
        self.end += count
        self.counts.extend([1] * count)
        return start

    def take_after(self, index):
        """Host cluster ``index + 1`` when it is the next appended one, else None."""
        return self.take_contiguous(1) if index + 1 == self.end else None


class _CompressedPacker:
    """Places compressed clusters back to back in host clusters from the allocator (qcow2 compressed
    descriptors address bytes); one runs on into the next host cluster only when that one is appended next."""

    def __init__(self, image, allocator):
        self.cs = image.cluster_size
        self.offset_bits = 62 - (image.cluster_bits - 8)
        self.allocator = allocator
        self.end = None  # file offset where the next compressed bytes may go

    def place(self, length):
        """Reserve ``length`` bytes; return (file offset, L2 entry)."""
        cs = self.cs
        start = self.end
        if start is not None and start % cs and start // cs != (start + length - 1) // cs:
            if self.allocator.take_after(start // cs) is None:
                start = None
        elif start is not None and start % cs == 0:
            start = None
        if start is None:
            start = self.allocator.take() * cs
        else:
            _count(self.allocator.counts, start // cs, 1)  # one more compressed cluster in this host cluster
        end = start + length
        self.end = end
        return start, FLAG_COMPRESSED | (((end - 1) // 512 - start // 512) << self.offset_bits) | start


def _unsupported_feature(image):
    header = image.header
    if image.version != 3:
        return 'version %d' % image.version
    if header.refcount_order != REFCOUNT_ORDER:
        return 'refcount order %d' % header.refcount_order
    if header.nb_snapshots:
        return 'internal snapshots'
    if image.backing_file is not None:
        return 'a backing file'
    if header.incompatible_features & ~INCOMPAT_COMPRESSION_TYPE:  # a compression type the header keeps is fine
        return 'incompatible features 0x%x' % header.incompatible_features
    if header.l1_size * image.l2_entries < image.guest_clusters:
        return 'an L1 table too small for the disk'
    return None


def unsupported(path):
    """Why the standalone image at ``path`` cannot be folded into (text), or None."""
    with Qcow2Image(path) as image:
        return _unsupported_feature(image)


def _compressed_span(image, entry):
    """Host clusters a compressed cluster's bytes occupy."""
    offset_bits = 62 - (image.cluster_bits - 8)
    start = entry & ((1 << offset_bits) - 1)
    sectors = ((entry & ~FLAG_COMPRESSED & ~FLAG_COPIED) >> offset_bits) + 1
    end = (start & ~511) + sectors * 512
    return range(start // image.cluster_size, _ceil_div(end, image.cluster_size))


def _count(counts, cluster, delta):
    value = counts[cluster] + delta
    if not 0 <= value <= 0xffff:  # 16-bit refcounts (REFCOUNT_ORDER)
        raise FoldUnsupported('host cluster %d would have %d references' % (cluster, value))
    counts[cluster] = value


def _entry_clusters(image, entry):
    """Host clusters an L2 entry references."""
    if entry & FLAG_COMPRESSED:
        return _compressed_span(image, entry)
    host = entry & OFFSET_MASK
    return (host // image.cluster_size,) if host else ()


def _references(image):
    """array('H'): how many structures of the image's current state reference each host cluster."""
    cs = image.cluster_size
    counts = array.array('H', [0]) * _ceil_div(image.file_size, cs)

    def mark(cluster, what):
        if cluster >= len(counts):
            raise FoldUnsupported('%s lies beyond the end of %s' % (what, image.path))
        _count(counts, cluster, 1)
    mark(0, 'the header')
    header = image.header
    for cluster in range(header.l1_table_offset // cs, _ceil_div(header.l1_table_offset + header.l1_size * 8, cs)):
        mark(cluster, 'the L1 table')
    for l1_index, l1_entry in enumerate(image.l1):
        if not l1_entry & OFFSET_MASK:
            continue
        mark((l1_entry & OFFSET_MASK) // cs, 'an L2 table')
        for entry in image._l2_table(l1_index):  # pylint: disable=protected-access
            if entry:
                for cluster in _entry_clusters(image, entry):
                    mark(cluster, 'a data cluster')
    for cluster in _refcount_structures(image):
        mark(cluster, 'a refcount structure')
    return counts


def _refcount_structures(image):
    """Host clusters of the refcount table and blocks."""
    header = image.header
    cs = image.cluster_size
    first = header.refcount_table_offset // cs
    clusters = list(range(first, first + header.refcount_table_clusters))
    raw = _pread_exact(image.fileno(), header.refcount_table_clusters * cs, header.refcount_table_offset)
    table = _from_be_bytes('Q', raw)
    clusters.extend((entry & OFFSET_MASK) // cs for entry in table if entry & OFFSET_MASK)
    return clusters


def _write_refcounts(fd, counts, cs):
    """Append the refcount table and blocks for ``counts`` (which grows by their own clusters); return the patch
    fields (refcount table offset, clusters) and the bytes written."""
    per_block = cs * 8 // (1 << REFCOUNT_ORDER)
    start = len(counts)
    rt_clusters, blocks = refcount_layout(start, cs)
    counts.extend([1] * (rt_clusters + blocks))
    rb_start = start + rt_clusters
    table = _u64_array()
    table.extend((rb_start + block) * cs for block in range(blocks))
    table.extend([0] * (rt_clusters * cs // 8 - blocks))
    views = [_to_be_bytes(table)]
    for block in range(blocks):
        values = counts[block * per_block:(block + 1) * per_block]
        values.extend([0] * (per_block - len(values)))
        views.append(_to_be_bytes(values))
    _pwritev_all(fd, views, start * cs)
    return start * cs, rt_clusters, (rt_clusters + blocks) * cs


def prepare(base_path, overlay_paths, progress=None, compress=False):
    """Write the fold of ``overlay_paths`` (newest first; the oldest names ``base_path`` as its backing file)
    into unused clusters of ``base_path`` and fsync it; return a :class:`FoldResult` (nothing is switched).
    ``compress``: store the folded clusters compressed (module docstring).

    ``progress(done, total)`` is called after each L2 region with guest clusters examined so far.
    """
    with Qcow2Image(base_path) as base:
        problem = _unsupported_feature(base)
        if problem:
            raise FoldUnsupported('%s has %s' % (base_path, problem))
        with Qcow2Chain(overlay_paths) as overlays:
            if overlays.virtual_size != base.virtual_size or overlays.cluster_size != base.cluster_size:
                raise FoldUnsupported('the overlays and %s differ in virtual or cluster size' % base_path)
            compression = None
            if compress:
                types = dict((number, name) for name, number in COMPRESSION_TYPES.items())
                compression = types[base.header.compression_type]
            return _fold(base, overlays, progress, compression)


def _fold(base, overlays, progress, compression):
    cs = base.cluster_size
    header = base.header
    compress = compressor(compression) if compression else None
    fd = os.open(base.path, os.O_WRONLY | getattr(os, 'O_CLOEXEC', 0))
    try:
        counts = _references(base)
        allocator = _Allocator(counts)
        packer = _CompressedPacker(base, allocator)
        for cluster in _refcount_structures(base):  # replaced by new ones below
            _count(counts, cluster, -1)
        l1_clusters = _ceil_div(header.l1_size * 8, cs)
        for cluster in range(header.l1_table_offset // cs, header.l1_table_offset // cs + l1_clusters):
            _count(counts, cluster, -1)
        l1 = _u64_array()
        l1.extend(base.l1)
        l1.extend([0] * (header.l1_size - len(l1)))
        regions = _ceil_div(base.guest_clusters, base.l2_entries)
        folded = written = 0
        zero_cluster = bytes(cs)
        buffer = bytearray(overlays.region_size)
        for l1_index in range(regions):
            sources = overlays.region(l1_index)[0]
            if all(source == SOURCE_NONE for source in sources):
                continue
            old_table = base._l2_table(l1_index)  # pylint: disable=protected-access
            table = _u64_array()
            table.extend(old_table if old_table is not None else [0] * base.l2_entries)
            region_start = l1_index * overlays.region_size
            region_length = min(overlays.region_size, overlays.virtual_size - region_start)
            view = memoryview(buffer)[:region_length]
            pieces = []  # (host cluster, data view) of new data clusters, in allocation order
            packed = []  # (file offset, compressed bytes)
            for run in overlays.runs(region_start, region_length):
                first = (run[0] - region_start) // cs
                last = _ceil_div(run[0] + run[1] - region_start, cs)
                if run[2] is not None:
                    overlays.read_run_into(view[run[0] - region_start:run[0] - region_start + run[1]], run)
                for slot in range(first, last):
                    if sources[slot] == SOURCE_NONE:
                        continue
                    folded += 1
                    for cluster in _entry_clusters(base, table[slot]) if table[slot] else ():
                        _count(counts, cluster, -1)
                    data = view[slot * cs:min((slot + 1) * cs, region_length)]
                    if sources[slot] == SOURCE_ZERO or data == zero_cluster[:len(data)]:
                        table[slot] = 0
                        continue
                    squeezed = squeeze(compress, data, cs) if compress is not None else None
                    if squeezed is not None:
                        offset, table[slot] = packer.place(len(squeezed))
                        packed.append((offset, squeezed))
                        continue
                    host = allocator.take()
                    table[slot] = (host * cs) | FLAG_COPIED
                    pieces.append((host, data))
            written += _write_pieces(fd, pieces, cs)
            for offset, squeezed in packed:
                pwrite_all(fd, squeezed, offset)
                written += len(squeezed)
            if old_table is not None:
                _count(counts, (l1[l1_index] & OFFSET_MASK) // cs, -1)
            l2_host = allocator.take()
            _pwritev_all(fd, [_to_be_bytes(table)], l2_host * cs)
            written += cs
            l1[l1_index] = (l2_host * cs) | FLAG_COPIED
            if progress is not None:
                progress(min((l1_index + 1) * base.l2_entries, base.guest_clusters), base.guest_clusters)
        l1_host = allocator.take() if l1_clusters == 1 else allocator.take_contiguous(l1_clusters)
        l1_bytes = _to_be_bytes(l1)
        _pwritev_all(fd, [l1_bytes + bytes(l1_clusters * cs - len(l1_bytes))], l1_host * cs)
        written += l1_clusters * cs
        rt_offset, rt_clusters, rt_bytes = _write_refcounts(fd, counts, cs)
        written += rt_bytes
        os.fsync(fd)
        file_size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    patch = HEADER_TABLES.pack(l1_host * cs, rt_offset, rt_clusters)
    restore = HEADER_TABLES.pack(header.l1_table_offset, header.refcount_table_offset, header.refcount_table_clusters)
    return FoldResult(patch, restore, folded, written, file_size, compression)


def _write_pieces(fd, pieces, cs):
    """Write data clusters, one system call per run of consecutive host clusters; return the bytes written."""
    written = 0
    start = 0
    while start < len(pieces):
        stop = start + 1
        while stop < len(pieces) and pieces[stop][0] == pieces[stop - 1][0] + 1 and stop - start < 256:
            stop += 1
        views = [data for dummy, data in pieces[start:stop]]
        if len(views[-1]) < cs:
            views.append(bytes(cs - len(views[-1])))  # the last cluster of the disk, padded to a whole cluster
        _pwritev_all(fd, views, pieces[start][0] * cs)
        written += sum(len(v) for v in views)
        start = stop
    return written


def switch(path, patch):
    """Write the header's table fields (:data:`qcow2.HEADER_TABLES`, one write inside the first sector) and fsync."""
    fd = os.open(path, os.O_WRONLY | getattr(os, 'O_CLOEXEC', 0))
    try:
        done = os.pwrite(fd, patch, HEADER_TABLES_OFFSET)
        if done != len(patch):
            raise Qcow2Error('%s: short write of the header (%d of %d bytes)' % (path, done, len(patch)))
        os.fsync(fd)
    finally:
        os.close(fd)


def current_patch(path):
    """The header table fields ``path`` has now (compare with a :class:`FoldResult`'s patches)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
    try:
        return _pread_exact(fd, HEADER_TABLES.size, HEADER_TABLES_OFFSET)
    finally:
        os.close(fd)
