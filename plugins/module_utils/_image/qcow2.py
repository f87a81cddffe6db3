# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qcow2 (version 3) restore points: a streaming writer, a reader, chains of overlays, a structural check.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Pure Python, standard library only; no qemu is needed to write or read these files, and qemu reads
them (``qemu-img check`` finds no errors and no leaks, ``qemu-img convert -O raw`` yields the disk).

File layout written by :class:`Qcow2Writer` (all in units of clusters, 64 KiB by default):

* cluster 0: the header (version 3, 104 bytes, refcount_order 4, no encryption, no compression,
  no snapshots), then for an overlay a "backing file format" header extension (``qcow2``), the
  end-of-extensions marker and the backing file name (a path relative to the overlay's directory);
* clusters 1..N: guest data clusters, in the order they arrived (not guest order);
* after the data, written by :meth:`Qcow2Writer.finish`: the L2 tables in guest order, the L1 table,
  the refcount table and the refcount blocks.  Every cluster of the file is used exactly once, so
  every refcount is 1 and every L1/L2 entry carries the "copied" flag (bit 63).

Zero clusters: a standalone image (a full backup) does not store all-zero clusters at all (they
read as zeros because nothing is behind them).  An overlay (an incremental) must shadow its backing
file, so a block that became all zero is recorded with the qcow2 v3 zero flag (L2 entry bit 0, no
host cluster): it costs no data space and reads as zeros without falling through to the backing
file.  Such clusters count as stored (they are in :meth:`Qcow2Writer.stored_clusters` and in the
digest, with all-zero data) but add nothing to ``bytes_stored``.

Stored-blocks digest (:class:`ClusterDigest`), recomputed by :meth:`Qcow2Image.digest` for verify::

    S = sum over every stored cluster c (data or zero flag) of
            int.from_bytes(sha256(u64be(guest_offset(c)) + data(c)).digest(), 'big')   mod 2**256
    digest = sha256(b'xenserver.cbt_backup clusters v1\\n' + u64be(cluster_size) + u64be(virtual_size)
                    + u64be(number of stored clusters) + S.to_bytes(32, 'big')).hexdigest()

where ``data(c)`` is the guest content of the cluster cut at the virtual size (the last cluster
may be shorter), i.e. zeros for a zero-flag cluster.  The sum makes the digest independent of the
arrival order while keeping O(1) memory; it detects any accidental change of a stored cluster (it
is not meant to resist a forger who can also rewrite the manifest).
"""

from __future__ import absolute_import, division, print_function

import array
import collections
import hashlib
import os
import struct
import sys
import threading
import zlib

from .raw_file import WriteBehind, pwrite_all
from .._errors import CbtBackupError

try:
    import zstandard
except ImportError:  # optional: only zstd-compressed points need it
    zstandard = None

__metaclass__ = type

DEFAULT_CLUSTER_SIZE = 64 * 1024
QCOW2_MAGIC = b'QFI\xfb'
HEADER_V3_LENGTH = 104
MAX_BACKING_NAME = 1023
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xe2792aca

FLAG_COPIED = 1 << 63
FLAG_COMPRESSED = 1 << 62
FLAG_ZERO = 1
OFFSET_MASK = 0x00fffffffffffe00
L2_RESERVED_MASK = 0x3f000000000001fe   # bits 1-8 and 56-61 of a standard cluster descriptor
L1_RESERVED_MASK = 0x7f000000000001ff

INCOMPAT_DIRTY = 1
INCOMPAT_CORRUPT = 2
INCOMPAT_EXTERNAL_DATA = 4
INCOMPAT_COMPRESSION_TYPE = 8
INCOMPAT_EXTENDED_L2 = 16

COMPRESSIONS = ('zlib', 'zstd')  # what Qcow2Writer(compression=...) writes; None stores clusters as they are
COMPRESSION_TYPES = {'zlib': 0, 'zstd': 1}  # the header's compression_type byte (zstd: qemu 5.1 or later)
ZLIB_WINDOW_BITS = -12  # raw deflate with a 4 KiB window, as qemu writes and expects compressed clusters

KIND_DATA = 'data'
KIND_ZERO = 'zero'
KIND_COMPRESSED = 'compressed'
MAX_RUN = 8 * 1024 * 1024  # the longest run Qcow2Chain.runs yields (one read or copy_file_range)
# Per-cluster source in a chain's region map: image index in the chain (newest = 0), or one of these.
SOURCE_NONE = -1   # unallocated everywhere: zeros
SOURCE_ZERO = -2   # zero flag: zeros

_HEADER = struct.Struct('>4sIQIIQIIQQIIQQQQII')  # version 3 header up to header_length (104 bytes)
# l1_table_offset, refcount_table_offset, refcount_table_clusters: the 20 header bytes an in-place fold rewrites
# in one write (inside the first sector, so the switch from the old tables to the new ones is atomic)
HEADER_TABLES = struct.Struct('>QQI')
HEADER_TABLES_OFFSET = 40
_V2_HEADER_LENGTH = 72
_ZERO_MARK = 0xffffffff                          # writer table value: zero-flag cluster
_COMPRESSED_MARK = 0xfffffffe                    # writer table value: compressed cluster (descriptor kept apart)
_MAX_IOV = 512
_L2_CACHE = 64
_DIGEST_DOMAIN = b'xenserver.cbt_backup clusters v1\n'
_U64 = struct.Struct('>Q')
_BIG_ENDIAN = sys.byteorder == 'big'


class Qcow2Error(CbtBackupError):
    """A file is not a qcow2 image this module can read, or a writer was misused."""

    code = 'IMAGE_DAMAGED'


def _ceil_div(num, den):
    return -(-num // den)


def _to_be_bytes(arr):
    """The big-endian bytes of an array of integers (the array is not modified)."""
    if _BIG_ENDIAN:
        return arr.tobytes()
    swapped = array.array(arr.typecode, arr)
    swapped.byteswap()
    return swapped.tobytes()


def _from_be_bytes(typecode, data):
    arr = array.array(typecode)
    arr.frombytes(data)
    if not _BIG_ENDIAN:
        arr.byteswap()
    return arr


def _u64_array():
    arr = array.array('Q')
    if arr.itemsize != 8:  # pragma: no cover - every platform CPython supports has an 8-byte 'Q'
        raise Qcow2Error('array typecode Q is not 8 bytes here')
    return arr


def refcount_layout(start, cluster_size):
    """(table clusters, blocks) of 16-bit refcounts placed at host cluster ``start`` that cover the file up to and
    including themselves."""
    per_block = cluster_size * 8 // 16
    rt_clusters, blocks = 1, 1
    while True:
        total = start + rt_clusters + blocks
        need_blocks = _ceil_div(total, per_block)
        need_rt = _ceil_div(need_blocks * 8, cluster_size)
        if (need_blocks, need_rt) == (blocks, rt_clusters):
            return rt_clusters, blocks
        blocks, rt_clusters = max(blocks, need_blocks), max(rt_clusters, need_rt)


def _pwritev_all(fd, views, offset):
    """Write ``views`` back to back at ``offset`` with as few system calls as possible."""
    pending = [memoryview(v) for v in views if len(v)]
    while pending:
        batch = pending[:_MAX_IOV]
        done = os.pwritev(fd, batch, offset)
        offset += done
        while done and pending:
            head = pending[0]
            if done >= len(head):
                done -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[done:]
                done = 0


def _pread_exact(fd, length, offset):
    chunks = []
    got = 0
    while got < length:
        data = os.pread(fd, length - got, offset + got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    data = b''.join(chunks)
    if len(data) != length:
        raise Qcow2Error('short read: %d bytes at offset %d, file ends first' % (length, offset))
    return data


def _decompress(compression_type, data, cluster_size):
    """One compressed cluster (``data`` may run on into the next one's bytes: decompression stops at a cluster)."""
    if compression_type == 1:
        if zstandard is None:
            raise Qcow2Error('this image holds zstd-compressed clusters: reading it needs the Python package zstandard '
                             '(pip install zstandard)', code='LIBRARY_MISSING')
        try:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)[:cluster_size]
        except zstandard.ZstdError as exc:
            raise ValueError(str(exc))
    return zlib.decompressobj(-15).decompress(data, cluster_size)


def compressor(compression):
    """A function compressing one cluster the way qemu reads it, for ``compression`` (zlib or zstd)."""
    if compression == 'zstd':
        if zstandard is None:
            raise Qcow2Error('compress: zstd needs the Python package zstandard (pip install zstandard), or use '
                             'compress: zlib', code='LIBRARY_MISSING')
        context = threading.local()

        def zstd(data):
            if getattr(context, 'compressor', None) is None:
                context.compressor = zstandard.ZstdCompressor(level=3)
            return context.compressor.compress(data)
        return zstd
    if compression == 'zlib':
        def deflate(data):
            packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, ZLIB_WINDOW_BITS, 9)
            return packer.compress(data) + packer.flush()
        return deflate
    raise Qcow2Error('compression must be one of %s, not %r' % (', '.join(COMPRESSIONS), compression),
                     code='INVALID_OPTION')


def squeeze(compress, data, cluster_size):
    """The compressed form of one cluster's ``data``, or None when it does not save a sector (stored as is).

    The disk's last cluster, when shorter, is compressed padded with zeros to a whole cluster: qemu decompresses
    a compressed cluster to exactly ``cluster_size`` bytes and fails the read otherwise."""
    if len(data) < cluster_size:
        data = bytes(data) + bytes(cluster_size - len(data))
    squeezed = compress(data)
    return squeezed if len(squeezed) <= cluster_size - 512 else None


class ClusterDigest:
    """The order-independent digest of stored clusters defined in the module docstring. Thread-safe."""

    def __init__(self, cluster_size, virtual_size):
        self.cluster_size = cluster_size
        self.virtual_size = virtual_size
        self.count = 0
        self._sum = 0
        self._lock = threading.Lock()

    @staticmethod
    def cluster_value(guest_offset, data):
        """The summand of one cluster (``data`` is any bytes-like object)."""
        hasher = hashlib.sha256(_U64.pack(guest_offset))
        hasher.update(data)
        return int.from_bytes(hasher.digest(), 'big')

    def add_values(self, total, count):
        """Add a partial sum of ``count`` summands (computed outside the lock)."""
        with self._lock:
            self._sum = (self._sum + total) % (1 << 256)
            self.count += count

    def add(self, guest_offset, data):
        self.add_values(self.cluster_value(guest_offset, data), 1)

    def hexdigest(self):
        with self._lock:
            total, count = self._sum, self.count
        return hashlib.sha256(_DIGEST_DOMAIN + _U64.pack(self.cluster_size) + _U64.pack(self.virtual_size)
                              + _U64.pack(count) + total.to_bytes(32, 'big')).hexdigest()


class Qcow2WriteResult:
    """What :meth:`Qcow2Writer.finish` wrote."""

    def __init__(self, **fields):
        self.virtual_size = fields['virtual_size']
        self.cluster_size = fields['cluster_size']
        self.clusters_stored = fields['clusters_stored']
        self.zero_clusters = fields['zero_clusters']
        self.bytes_stored = fields['bytes_stored']
        self.digest = fields['digest']
        self.file_size = fields['file_size']
        self.backing_file = fields['backing_file']

    def as_dict(self):
        return dict(vars(self))


class Qcow2Writer:
    """Write a qcow2 v3 image from ``(offset, view)`` pieces arriving in any order from any thread.

    ``path_or_fd``: a path (created or truncated, fsynced and closed by :meth:`finish`) or an open,
    empty, writable file descriptor (left open and not fsynced: e.g. ``AtomicFile.fd``, whose
    ``commit`` does both).  ``backing_file`` makes an overlay: the name is stored as is (give a path
    relative to the overlay's directory) with backing format ``qcow2``.  ``store_zeros`` (default:
    true for an overlay, false for a standalone image) records all-zero clusters with the zero flag
    instead of leaving them unallocated.

    The writer is a reader sink: ``writer(offset, view)``.  ``offset`` must be cluster aligned and
    ``len(view)`` a multiple of the cluster size unless the piece ends at the virtual size.  As in
    the extent reader's contract, a memoryview must start at the beginning of its buffer
    (``view.obj``), which is used to find all-zero clusters without copying.  Each cluster may be
    written once.  Data goes to the file immediately; only a 4-byte host index per guest cluster of
    each touched 512 MiB region (one L2 table) stays in memory.

    ``compression`` (``zlib`` or ``zstd``) stores every data cluster that compresses by at least a sector as a
    standard qcow2 compressed cluster (packed byte by byte, as qemu-img convert -c does; zstd sets the
    header's compression type, which qemu reads from 5.1 on); the others are stored as they are.
    """

    def __init__(self, path_or_fd, virtual_size, backing_file=None, cluster_size=DEFAULT_CLUSTER_SIZE, store_zeros=None,
                 compression=None):
        if cluster_size < 512 or cluster_size > 2 * 1024 * 1024 or cluster_size & (cluster_size - 1):
            raise Qcow2Error('cluster size must be a power of two between 512 bytes and 2 MiB, not %r' % cluster_size)
        if virtual_size < 0:
            raise Qcow2Error('virtual size must not be negative')
        if backing_file is not None:
            encoded = backing_file.encode('utf-8')
            if not encoded or len(encoded) > MAX_BACKING_NAME:
                raise Qcow2Error('backing file name must be 1 to %d bytes long' % MAX_BACKING_NAME)
            self._backing_name = encoded
        else:
            self._backing_name = None
        self.virtual_size = virtual_size
        self.backing_file = backing_file
        self.cluster_size = cluster_size
        self.cluster_bits = cluster_size.bit_length() - 1
        self.store_zeros = (backing_file is not None) if store_zeros is None else bool(store_zeros)
        self.l2_entries = cluster_size // 8
        self.guest_clusters = _ceil_div(virtual_size, cluster_size)
        self.l1_size = _ceil_div(self.guest_clusters, self.l2_entries)
        self.bytes_stored = 0
        self.clusters_stored = 0
        self.zero_clusters = 0
        self._digest = ClusterDigest(cluster_size, virtual_size)
        self._tables = {}   # l1 index -> array('I') of host cluster indexes (0: unallocated, _ZERO_MARK: zero flag)
        self._next_host = 1  # cluster 0 is the header
        self.compression = compression
        self._compress = compressor(compression) if compression else None
        self._compressed = {}  # guest cluster -> L2 descriptor of its compressed bytes
        self._compressed_refs = collections.Counter()  # host cluster -> compressed clusters with bytes in it
        self._compressed_end = None  # file offset where the next compressed bytes may go
        self._lock = threading.Lock()
        self._zero = bytes(cluster_size)
        self._result = None
        self._closed = False
        if isinstance(path_or_fd, int):
            self.fd = path_or_fd
            self._own_fd = False
        else:
            self.fd = os.open(path_or_fd, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, 'O_CLOEXEC', 0), 0o600)
            self._own_fd = True
        self._write_behind = WriteBehind(self.fd)

    # -- the sink -----------------------------------------------------------------------------------

    def __call__(self, offset, view):
        if not isinstance(view, memoryview):
            view = memoryview(view)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast('B')
        length = len(view)
        cs = self.cluster_size
        end = offset + length
        if offset < 0 or offset % cs or end > self.virtual_size or (length % cs and end != self.virtual_size):
            raise Qcow2Error('piece (%d, %d) is not cluster aligned inside the %d-byte disk' % (offset, length, self.virtual_size))
        if not length:
            return
        data_views = []
        data_indexes = []
        zero_indexes = []
        partial_sum = 0
        obj = view.obj
        fast = isinstance(obj, (bytes, bytearray)) and len(obj) >= length
        pos = 0
        while pos < length:
            stop = min(pos + cs, length)
            if fast:
                is_zero = obj.startswith(self._zero if stop - pos == cs else self._zero[:stop - pos], pos, stop)
            else:
                is_zero = bytes(view[pos:stop]) == self._zero[:stop - pos]
            index = (offset + pos) // cs
            if is_zero:
                if self.store_zeros:
                    zero_indexes.append(index)
                    partial_sum += ClusterDigest.cluster_value(offset + pos, self._zero[:stop - pos])
            else:
                piece = view[pos:stop]
                data_views.append(piece)
                data_indexes.append(index)
                partial_sum += ClusterDigest.cluster_value(offset + pos, piece)
            pos = stop
        if not data_indexes and not zero_indexes:
            return
        packed = []  # (guest index, compressed bytes) of the clusters that compress by a sector or more
        if self._compress is not None:
            kept_views, kept_indexes = [], []
            for index, piece in zip(data_indexes, data_views):
                squeezed = squeeze(self._compress, piece, cs)
                if squeezed is not None:
                    packed.append((index, squeezed))
                else:
                    kept_views.append(piece)
                    kept_indexes.append(index)
            stored_bytes = sum(len(v) for v in data_views)
            data_views, data_indexes = kept_views, kept_indexes
        else:
            stored_bytes = sum(len(v) for v in data_views)
        with self._lock:
            if self._closed:
                raise Qcow2Error('the writer is already finished')
            for index in data_indexes + zero_indexes + [i for i, dummy in packed]:  # check all first
                table = self._tables.get(index // self.l2_entries)
                if table is not None and table[index % self.l2_entries]:
                    raise Qcow2Error('guest cluster at offset %d was written twice' % (index * cs))
            placed = [(self._place_compressed(index, len(squeezed)), squeezed) for index, squeezed in packed]
            host_start = self._next_host
            self._next_host += len(data_indexes)
            if self._next_host >= _ZERO_MARK:
                raise Qcow2Error('image file would exceed %d clusters' % (_ZERO_MARK - 1))
            for pos, index in enumerate(data_indexes):
                self._table_for(index)[index % self.l2_entries] = host_start + pos
            for index in zero_indexes:
                self._table_for(index)[index % self.l2_entries] = _ZERO_MARK
            self.clusters_stored += len(data_indexes) + len(zero_indexes) + len(packed)
            self.zero_clusters += len(zero_indexes)
            self.bytes_stored += stored_bytes
        self._digest.add_values(partial_sum, len(data_indexes) + len(zero_indexes) + len(packed))
        if data_views:
            _pwritev_all(self.fd, data_views, host_start * cs)
            self._write_behind.written(host_start * cs, sum(len(v) for v in data_views))
        for start, squeezed in placed:
            pwrite_all(self.fd, squeezed, start)
        if placed:  # placed back to back under the lock: one span
            self._write_behind.written(placed[0][0], placed[-1][0] + len(placed[-1][1]) - placed[0][0])

    def _place_compressed(self, index, length):
        """Reserve ``length`` bytes for guest cluster ``index``'s compressed data (under the lock); return the
        file offset.  Compressed clusters are packed back to back; they run on into the next host cluster only
        when nothing else was placed there."""
        cs = self.cluster_size
        start = self._compressed_end
        if start is None or start % cs == 0 or (
                (start + length - 1) // cs != start // cs and start // cs != self._next_host - 1):
            start = self._next_host * cs
        end = start + length
        self._next_host = max(self._next_host, (end - 1) // cs + 1)
        if self._next_host >= _COMPRESSED_MARK:
            raise Qcow2Error('image file would exceed %d clusters' % (_COMPRESSED_MARK - 1))
        for host in range(start // cs, (end - 1) // cs + 1):
            self._compressed_refs[host] += 1
        offset_bits = 62 - (self.cluster_bits - 8)
        self._compressed[index] = FLAG_COMPRESSED | (((end - 1) // 512 - start // 512) << offset_bits) | start
        self._table_for(index)[index % self.l2_entries] = _COMPRESSED_MARK
        self._compressed_end = end
        return start

    def _table_for(self, index):
        l1_index = index // self.l2_entries
        table = self._tables.get(l1_index)
        if table is None:
            table = array.array('I', [0]) * self.l2_entries
            if table.itemsize < 4:  # pragma: no cover
                raise Qcow2Error('array typecode I is too small here')
            self._tables[l1_index] = table
        return table

    # -- what was stored ----------------------------------------------------------------------------

    def stored_clusters(self):
        """Yield the guest offsets of the stored clusters (data and zero flag) in guest order."""
        cs = self.cluster_size
        with self._lock:
            regions = sorted(self._tables.items())
        for l1_index, table in regions:
            base = l1_index * self.l2_entries
            for l2_index, host in enumerate(table):
                if host:
                    yield (base + l2_index) * cs

    def digest(self):
        """The stored-blocks digest (module docstring) of what was written so far."""
        return self._digest.hexdigest()

    # -- finishing ----------------------------------------------------------------------------------

    def finish(self):
        """Write the metadata and the header; return a :class:`Qcow2WriteResult`.

        Call it after the last piece was written (no sink call may be running).
        """
        with self._lock:
            if self._closed:
                raise Qcow2Error('the writer is already finished')
            self._closed = True
        try:
            file_size = self._write_metadata()
            if self._own_fd:
                os.fsync(self.fd)
        finally:
            if self._own_fd:
                os.close(self.fd)
                self._own_fd = False
        self._result = Qcow2WriteResult(
            virtual_size=self.virtual_size, cluster_size=self.cluster_size, clusters_stored=self.clusters_stored,
            zero_clusters=self.zero_clusters, bytes_stored=self.bytes_stored, digest=self.digest(),
            file_size=file_size, backing_file=self.backing_file)
        return self._result

    def abort(self):
        """Stop without writing metadata; closes the file if the writer opened it (the caller removes it)."""
        with self._lock:
            self._closed = True
        if self._own_fd:
            os.close(self.fd)
            self._own_fd = False

    @property
    def result(self):
        return self._result

    def _layout(self):
        cs = self.cluster_size
        l2_start = self._next_host
        l1_start = l2_start + len(self._tables)
        rt_start = l1_start + _ceil_div(self.l1_size * 8, cs)
        rt_clusters, blocks = refcount_layout(rt_start, cs)
        return l2_start, l1_start, rt_start, rt_clusters, blocks, rt_start + rt_clusters + blocks

    def _write_metadata(self):
        cs = self.cluster_size
        l2_start, l1_start, rt_start, rt_clusters, blocks, total = self._layout()
        l1 = _u64_array()
        l1.extend([0] * self.l1_size)
        for position, l1_index in enumerate(sorted(self._tables)):
            table = self._tables[l1_index]
            entries = _u64_array()
            base = l1_index * self.l2_entries
            entries.extend([0 if not host else (FLAG_ZERO if host == _ZERO_MARK else (
                self._compressed[base + slot] if host == _COMPRESSED_MARK else (host * cs) | FLAG_COPIED))
                for slot, host in enumerate(table)])
            pwrite_all(self.fd, _to_be_bytes(entries), (l2_start + position) * cs)
            l1[l1_index] = ((l2_start + position) * cs) | FLAG_COPIED
        if self.l1_size:
            pwrite_all(self.fd, _to_be_bytes(l1), l1_start * cs)
        rb_start = rt_start + rt_clusters
        rt = _u64_array()
        rt.extend([(rb_start + block) * cs for block in range(blocks)])
        pwrite_all(self.fd, _to_be_bytes(rt), rt_start * cs)
        per_block = cs * 8 // 16
        one = b'\x00\x01'
        shared = collections.defaultdict(list)  # refcount block -> host clusters holding compressed clusters
        for host, count in self._compressed_refs.items():
            shared[host // per_block].append((host, count))
        for block in range(blocks):
            used = min(per_block, total - block * per_block)
            if block in shared:
                counts = array.array('H', [1]) * used
                for host, count in shared[block]:  # one reference per compressed cluster packed into it
                    counts[host - block * per_block] = count
                pwrite_all(self.fd, _to_be_bytes(counts), (rb_start + block) * cs)
            else:
                pwrite_all(self.fd, one * used, (rb_start + block) * cs)
        os.ftruncate(self.fd, total * cs)
        pwrite_all(self.fd, self._header(l1_start * cs if self.l1_size else 0, rt_start * cs, rt_clusters), 0)
        return total * cs

    def _header(self, l1_offset, rt_offset, rt_clusters):
        extensions = b''
        backing_offset = 0
        backing_size = 0
        if self._backing_name is not None:
            fmt = b'qcow2'
            extensions += struct.pack('>II', EXT_BACKING_FORMAT, len(fmt)) + fmt + bytes(-len(fmt) % 8)
        extensions += struct.pack('>II', EXT_END, 0)
        if self._backing_name is not None:
            backing_offset = HEADER_V3_LENGTH + len(extensions)
            backing_size = len(self._backing_name)
        zstd = self.compression == 'zstd'
        length = HEADER_V3_LENGTH + (8 if zstd else 0)  # zstd: the compression_type byte and its padding
        if self._backing_name is not None:
            backing_offset += length - HEADER_V3_LENGTH
        header = _HEADER.pack(QCOW2_MAGIC, 3, backing_offset, backing_size, self.cluster_bits, self.virtual_size, 0,
                              self.l1_size, l1_offset, rt_offset, rt_clusters, 0, 0,
                              INCOMPAT_COMPRESSION_TYPE if zstd else 0, 0, 0, 4, length)
        if zstd:
            header += struct.pack('>B7x', COMPRESSION_TYPES['zstd'])
        header += extensions + (self._backing_name or b'')
        if len(header) > self.cluster_size:
            raise Qcow2Error('header does not fit in one cluster')
        return header


class _Header:
    """Parsed header fields of an image."""

    def __init__(self, data, file_size):
        if len(data) < _V2_HEADER_LENGTH or data[:4] != QCOW2_MAGIC:
            raise Qcow2Error('not a qcow2 image (bad magic)')
        padded = data[:HEADER_V3_LENGTH] + bytes(max(0, HEADER_V3_LENGTH - len(data)))
        (_magic, self.version, self.backing_file_offset, self.backing_file_size, self.cluster_bits, self.size,
         self.crypt_method, self.l1_size, self.l1_table_offset, self.refcount_table_offset, self.refcount_table_clusters,
         self.nb_snapshots, self.snapshots_offset, self.incompatible_features, self.compatible_features,
         self.autoclear_features, self.refcount_order, self.header_length) = _HEADER.unpack(padded)
        if self.version not in (2, 3):
            raise Qcow2Error('unsupported qcow2 version %d' % self.version)
        if self.version == 2:
            self.incompatible_features = self.compatible_features = self.autoclear_features = 0
            self.refcount_order = 4
            self.header_length = _V2_HEADER_LENGTH
        elif self.header_length < HEADER_V3_LENGTH or self.header_length % 8:
            raise Qcow2Error('invalid header length %d' % self.header_length)
        if not 9 <= self.cluster_bits <= 21:
            raise Qcow2Error('unsupported cluster bits %d' % self.cluster_bits)
        self.cluster_size = 1 << self.cluster_bits
        if self.header_length > self.cluster_size or self.header_length > len(data):
            raise Qcow2Error('header length %d does not fit in the first cluster' % self.header_length)
        if self.crypt_method:
            raise Qcow2Error('encrypted images are not supported')
        unsupported = self.incompatible_features & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT)
        self.compression_type = data[HEADER_V3_LENGTH] if self.header_length > HEADER_V3_LENGTH else 0
        if unsupported & INCOMPAT_COMPRESSION_TYPE and self.compression_type in (0, 1):
            unsupported &= ~INCOMPAT_COMPRESSION_TYPE
        if unsupported:
            raise Qcow2Error('unsupported incompatible features 0x%x (external data file, extended L2 entries or an '
                             'unknown compression type)' % unsupported)
        if self.refcount_order > 6:
            raise Qcow2Error('invalid refcount order %d' % self.refcount_order)
        self.backing_format = None
        self._parse_extensions(data)
        self.backing_file = None
        if self.backing_file_offset:
            if self.backing_file_size > MAX_BACKING_NAME or self.backing_file_offset + self.backing_file_size > len(data):
                raise Qcow2Error('backing file name is not inside the first cluster')
            raw = data[self.backing_file_offset:self.backing_file_offset + self.backing_file_size]
            self.backing_file = raw.decode('utf-8', 'surrogateescape')
        if file_size < self.header_length:
            raise Qcow2Error('file is shorter than its header')

    def _parse_extensions(self, data):
        pos = self.header_length
        while self.version >= 3 and pos + 8 <= len(data):
            ext_type, ext_length = struct.unpack_from('>II', data, pos)
            if ext_type == EXT_END:
                return
            body = data[pos + 8:pos + 8 + ext_length]
            if len(body) != ext_length:
                raise Qcow2Error('header extension 0x%08x runs past the first cluster' % ext_type)
            if ext_type == EXT_BACKING_FORMAT:
                self.backing_format = body.decode('ascii', 'replace')
            pos += 8 + ext_length + (-ext_length % 8)


def patch_header(head, patch):
    """``head`` (the file's first bytes) with a :data:`HEADER_TABLES` patch laid over it (None: unchanged)."""
    if patch is None:
        return head
    start = HEADER_TABLES_OFFSET
    return head[:start] + patch + head[start + len(patch):]


class Qcow2Image:
    """One qcow2 file opened for reading (its backing file is not opened; see :class:`Qcow2Chain`).

    ``header_patch``: read the file as if the table fields of its header (:data:`HEADER_TABLES`) held these
    bytes, i.e. as it will read once an in-place fold (qcow2_fold.py) switches its header.
    """

    def __init__(self, path, header_patch=None):
        self.path = path
        self.header_patch = header_patch
        self._fd = os.open(path, os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
        try:
            self.file_size = os.fstat(self._fd).st_size
            head = os.pread(self._fd, DEFAULT_CLUSTER_SIZE, 0)  # the header lives in the first cluster
            if len(head) >= 24 and DEFAULT_CLUSTER_SIZE < (1 << min(32, struct.unpack_from('>I', head, 20)[0])) <= 2 * 1024 * 1024:
                head = os.pread(self._fd, 1 << struct.unpack_from('>I', head, 20)[0], 0)
            head = patch_header(head, header_patch)
            header = _Header(head, self.file_size)
            self.header = header
            head = head[:header.cluster_size]
            self.version = header.version
            self.virtual_size = header.size
            self.cluster_size = header.cluster_size
            self.cluster_bits = header.cluster_bits
            self.backing_file = header.backing_file
            self.backing_format = header.backing_format
            self.l2_entries = self.cluster_size // 8
            self.guest_clusters = _ceil_div(self.virtual_size, self.cluster_size)
            if header.l1_size > 32 * 1024 * 1024 // 8:
                raise Qcow2Error('L1 table of %d entries is too large' % header.l1_size)
            if header.l1_size and (header.l1_table_offset % self.cluster_size
                                   or header.l1_table_offset + header.l1_size * 8 > self.file_size):
                raise Qcow2Error('L1 table is not cluster aligned inside the file')
            self.l1 = _from_be_bytes('Q', _pread_exact(self._fd, header.l1_size * 8, header.l1_table_offset)
                                     if header.l1_size else b'')
            self._l2_cache = collections.OrderedDict()
            self._lock = threading.Lock()
        except BaseException:
            os.close(self._fd)
            raise

    def fileno(self):
        """The open file's descriptor (for reads and copy_file_range of data runs)."""
        return self._fd

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- mapping ------------------------------------------------------------------------------------

    def _l2_table(self, l1_index):
        """The L2 table of an L1 index as array('Q'), or None if it is not allocated."""
        if l1_index >= len(self.l1):
            return None
        offset = self.l1[l1_index] & OFFSET_MASK
        if not offset:
            return None
        with self._lock:
            table = self._l2_cache.get(l1_index)
            if table is not None:
                self._l2_cache.move_to_end(l1_index)
                return table
        if offset % self.cluster_size or offset + self.cluster_size > self.file_size:
            raise Qcow2Error('%s: L2 table at offset %d is not cluster aligned inside the file' % (self.path, offset))
        table = _from_be_bytes('Q', _pread_exact(self._fd, self.cluster_size, offset))
        with self._lock:
            self._l2_cache[l1_index] = table
            while len(self._l2_cache) > _L2_CACHE:
                self._l2_cache.popitem(last=False)
        return table

    def _entry(self, index):
        table = self._l2_table(index // self.l2_entries)
        return table[index % self.l2_entries] if table is not None else 0

    def _classify(self, entry):
        """(kind, host offset) of an L2 entry; kind is None for an unallocated cluster."""
        if entry & FLAG_COMPRESSED:
            return KIND_COMPRESSED, entry
        if entry & FLAG_ZERO and self.version >= 3:
            return KIND_ZERO, entry & OFFSET_MASK
        host = entry & OFFSET_MASK
        return (KIND_DATA, host) if host else (None, 0)

    def _cluster_length(self, index):
        return min(self.cluster_size, self.virtual_size - index * self.cluster_size)

    def iter_entries(self):
        """Yield ``(guest cluster index, kind, host)`` of every allocated cluster in guest order (``host``: see
        :meth:`_classify`)."""
        for l1_index in range(min(len(self.l1), _ceil_div(self.guest_clusters, self.l2_entries))):
            table = self._l2_table(l1_index)
            if table is None:
                continue
            base = l1_index * self.l2_entries
            for l2_index, entry in enumerate(table):
                if entry and base + l2_index < self.guest_clusters:
                    kind, host = self._classify(entry)
                    if kind is not None:
                        yield base + l2_index, kind, host

    def iter_clusters(self):
        """Yield ``(guest_offset, kind)`` of every allocated cluster (data, zero flag or compressed) in guest order."""
        for index, kind, dummy in self.iter_entries():
            yield index * self.cluster_size, kind

    def allocated_clusters(self):
        """Yield the guest offsets of the clusters this image defines (data, zero flag or compressed)."""
        for offset, _kind in self.iter_clusters():
            yield offset

    def read_cluster(self, index):
        """The content of guest cluster ``index`` in this image alone, or None if it is unallocated here.

        The bytes are cut at the virtual size (the last cluster may be shorter).
        """
        if index < 0 or index >= self.guest_clusters:
            raise Qcow2Error('cluster %d is outside the %d-byte disk' % (index, self.virtual_size))
        kind, host = self._classify(self._entry(index))
        length = self._cluster_length(index)
        if kind is None:
            return None
        if kind == KIND_ZERO:
            return bytes(length)
        if kind == KIND_COMPRESSED:
            return self._read_compressed(host)[:length]
        if host % self.cluster_size:
            raise Qcow2Error('%s: data cluster at host offset %d is not aligned' % (self.path, host))
        return _pread_exact(self._fd, length, host)

    def _read_compressed(self, entry):
        offset_bits = 62 - (self.cluster_bits - 8)
        host = entry & ((1 << offset_bits) - 1)
        sectors = ((entry & ~FLAG_COMPRESSED & ~FLAG_COPIED) >> offset_bits) + 1
        size = sectors * 512 - (host & 511)
        size = min(size, self.file_size - host)
        data = _pread_exact(self._fd, size, host)
        try:
            out = _decompress(self.header.compression_type, data, self.cluster_size)
        except (zlib.error, ValueError) as exc:
            raise Qcow2Error('%s: compressed cluster at %d does not decompress: %s' % (self.path, host, exc))
        if len(out) != self.cluster_size:
            raise Qcow2Error('%s: compressed cluster at %d is short' % (self.path, host))
        return out

    def read(self, offset, length):
        """``length`` bytes at ``offset`` of this image alone (unallocated clusters read as zeros)."""
        return Qcow2Chain([self], owns=False).read(offset, length)

    def digest(self):
        """Recompute the stored-blocks digest (module docstring) from the file."""
        digest = ClusterDigest(self.cluster_size, self.virtual_size)
        for offset, _kind in self.iter_clusters():
            digest.add(offset, self.read_cluster(offset // self.cluster_size))
        return digest.hexdigest()

    def bytes_stored(self):
        """Guest bytes held in data (or compressed) clusters, cut at the virtual size."""
        return sum(self._cluster_length(offset // self.cluster_size)
                   for offset, kind in self.iter_clusters() if kind != KIND_ZERO)

    # -- structural check ---------------------------------------------------------------------------

    def check(self):
        """Validate the structure; return a list of problems (empty: the image is sound).

        Checks the header, that every table and cluster is aligned and inside the file, that no host
        cluster is used twice (compressed clusters may share), that refcounts match the use of every
        cluster (no leaks, no missing references) and the copied flags.
        """
        return _Checker(self).run()


class _Checker:
    """The structural validation behind :meth:`Qcow2Image.check`."""

    def __init__(self, image):
        self.image = image
        self.header = image.header
        self.cs = image.cluster_size
        self.file_clusters = _ceil_div(image.file_size, self.cs)
        self.used = bytearray(self.file_clusters)
        self.shared = {}  # host cluster -> references by compressed clusters
        self.problems = []
        self.copied_checks = []  # (what, host cluster index, has copied flag)

    def problem(self, text):
        if len(self.problems) < 100:
            self.problems.append(text)
        elif len(self.problems) == 100:
            self.problems.append('more problems not shown')

    def mark(self, offset, count, what):
        if offset % self.cs:
            self.problem('%s at offset %d is not cluster aligned' % (what, offset))
            return False
        first = offset // self.cs
        for index in range(first, first + count):
            if index >= self.file_clusters:
                self.problem('%s at offset %d lies beyond the end of the file' % (what, index * self.cs))
                return False
            if self.used[index] or index in self.shared:
                self.problem('%s at offset %d overlaps another structure' % (what, index * self.cs))
            self.used[index] = min(255, self.used[index] + 1)
        return True

    def run(self):
        header = self.header
        image = self.image
        if header.incompatible_features & INCOMPAT_DIRTY:
            self.problem('the dirty bit is set (refcounts may be stale)')
        if header.incompatible_features & INCOMPAT_CORRUPT:
            self.problem('the corrupt bit is set')
        if header.nb_snapshots:
            self.problem('the image has %d internal snapshots, which this check does not cover' % header.nb_snapshots)
            return self.problems
        if header.l1_size * image.l2_entries < image.guest_clusters:
            self.problem('L1 table of %d entries is too small for the virtual size %d' % (header.l1_size, image.virtual_size))
        self.mark(0, 1, 'header')
        if header.l1_size:
            self.mark(header.l1_table_offset, _ceil_div(header.l1_size * 8, self.cs), 'L1 table')
        self.check_mapping()
        self.check_refcounts()
        return self.problems

    def check_mapping(self):
        image = self.image
        for l1_index, l1_entry in enumerate(image.l1):
            if l1_entry & L1_RESERVED_MASK:
                self.problem('L1 entry %d has reserved bits set' % l1_index)
            l2_offset = l1_entry & OFFSET_MASK
            if not l2_offset:
                continue
            if not self.mark(l2_offset, 1, 'L2 table %d' % l1_index):
                continue
            self.copied_checks.append(('L2 table %d' % l1_index, l2_offset // self.cs, bool(l1_entry & FLAG_COPIED)))
            table = image._l2_table(l1_index)  # pylint: disable=protected-access
            base = l1_index * image.l2_entries
            for l2_index, entry in enumerate(table):
                if entry:
                    self.check_entry(base + l2_index, entry)

    def check_entry(self, index, entry):
        image = self.image
        where = 'cluster at guest offset %d' % (index * self.cs)
        kind, host = image._classify(entry)  # pylint: disable=protected-access
        if kind is not None and index >= image.guest_clusters:
            self.problem('%s is mapped beyond the virtual size' % where)
        if kind == KIND_COMPRESSED:
            offset_bits = 62 - (image.cluster_bits - 8)
            start = entry & ((1 << offset_bits) - 1)
            sectors = ((entry & ~FLAG_COMPRESSED & ~FLAG_COPIED) >> offset_bits) + 1
            end = (start & ~511) + sectors * 512
            for cluster in range(start // self.cs, _ceil_div(end, self.cs)):
                if cluster >= self.file_clusters:
                    self.problem('compressed %s lies beyond the end of the file' % where)
                    break
                if self.used[cluster]:
                    self.problem('compressed %s overlaps another structure' % where)
                self.shared[cluster] = self.shared.get(cluster, 0) + 1
            return
        if entry & L2_RESERVED_MASK:
            self.problem('%s has reserved bits set in its L2 entry' % where)
        if not host:
            return
        if self.mark(host, 1, 'data ' + where):
            self.copied_checks.append((where, host // self.cs, bool(entry & FLAG_COPIED)))

    def check_refcounts(self):
        header = self.header
        image = self.image
        if not header.refcount_table_clusters:
            self.problem('the refcount table is empty')
            return
        if not self.mark(header.refcount_table_offset, header.refcount_table_clusters, 'refcount table'):
            return
        order = header.refcount_order
        bits = 1 << order
        per_block = self.cs * 8 // bits
        raw = _pread_exact(image._fd, header.refcount_table_clusters * self.cs, header.refcount_table_offset)  # pylint: disable=protected-access
        table = _from_be_bytes('Q', raw)
        blocks = {}
        for rt_index, entry in enumerate(table):
            offset = entry & OFFSET_MASK
            if entry & ~OFFSET_MASK:
                self.problem('refcount table entry %d has reserved bits set' % rt_index)
            if offset and self.mark(offset, 1, 'refcount block %d' % rt_index):
                blocks[rt_index] = offset
        for rt_index in range(_ceil_div(self.file_clusters, per_block)):
            first = rt_index * per_block
            expected = [min(self.used[i] + self.shared.get(i, 0), (1 << bits) - 1)
                        for i in range(first, min(first + per_block, self.file_clusters))]
            if rt_index in blocks:
                stored = self._refcounts(blocks[rt_index], order)
            else:
                stored = [0] * per_block
            if list(stored[:len(expected)]) == expected:
                continue
            for pos, want in enumerate(expected):
                have = stored[pos]
                if have != want:
                    offset = (first + pos) * self.cs
                    if want == 0:
                        self.problem('leaked cluster at offset %d (refcount %d, not referenced)' % (offset, have))
                    else:
                        self.problem('cluster at offset %d has refcount %d but %d references' % (offset, have, want))
        block_cache = {}  # rt index -> its refcounts (each block is read once per run of clusters it covers)
        for what, cluster, copied in self.copied_checks:
            rt_index, pos = divmod(cluster, per_block)
            if rt_index not in block_cache:
                if len(block_cache) >= 16:
                    block_cache.clear()
                block_cache[rt_index] = self._refcounts(blocks[rt_index], order) if rt_index in blocks else None
            refcount = block_cache[rt_index][pos] if block_cache[rt_index] is not None else 0
            if copied != (refcount == 1):
                self.problem('%s: copied flag is %s but the refcount is %d' % (what, 'set' if copied else 'clear', refcount))

    def _refcounts(self, offset, order):
        data = _pread_exact(self.image._fd, self.cs, offset)  # pylint: disable=protected-access
        if order >= 3:
            typecode = {3: 'B', 4: 'H', 5: 'I', 6: 'Q'}[order]
            if array.array(typecode).itemsize * 8 != (1 << order):  # pragma: no cover
                typecode = 'L' if order == 5 else typecode
            return _from_be_bytes(typecode, data) if order > 3 else array.array('B', data)
        bits = 1 << order
        per_byte = 8 // bits
        mask = (1 << bits) - 1
        return [(byte >> (bits * k)) & mask for byte in data for k in range(per_byte)]


def check(path):
    """Open and check ``path``; return a list of problems (an unreadable header is one problem)."""
    try:
        image = Qcow2Image(path)
    except (Qcow2Error, OSError) as exc:
        return [str(exc)]
    try:
        return image.check()
    except (Qcow2Error, OSError) as exc:
        return [str(exc)]
    finally:
        image.close()


class FileScan:
    """What one sequential read of an image file found (:func:`scan`)."""

    def __init__(self, sha256, digest, clusters_stored, bytes_stored, file_size):
        self.sha256 = sha256
        self.digest = digest
        self.clusters_stored = clusters_stored
        self.bytes_stored = bytes_stored
        self.file_size = file_size


def scan(path, header_patch=None, chunk_size=MAX_RUN):
    """The file's sha256 and its stored-blocks digest (module docstring) from one sequential read of the file.

    The L2 tables are read first (a map of 4 bytes per host cluster), then the file front to back: every byte
    is read once for both hashes (compressed clusters are read again to decompress them). ``header_patch``:
    scan the file as it will be once that patch is written over its header (see :class:`Qcow2Image`).
    """
    with Qcow2Image(path, header_patch) as image:
        cs = image.cluster_size
        file_clusters = _ceil_div(image.file_size, cs)
        guest_of = array.array('I', [0]) * file_clusters  # host cluster -> guest cluster + 1 (0: none)
        if guest_of.itemsize < 4:  # pragma: no cover
            raise Qcow2Error('array typecode I is too small here')
        digest = ClusterDigest(cs, image.virtual_size)
        compressed = []
        stored = bytes_stored = 0
        for index, kind, host in image.iter_entries():
            stored += 1
            length = image._cluster_length(index)
            if kind == KIND_ZERO:
                digest.add(index * cs, bytes(length))
                continue
            bytes_stored += length
            if kind == KIND_COMPRESSED:
                compressed.append(index)
            elif host % cs or host // cs >= file_clusters:
                raise Qcow2Error('%s: data cluster at host offset %d is not aligned inside the file' % (path, host))
            else:
                guest_of[host // cs] = index + 1
        sha = hashlib.sha256()
        fd = image.fileno()
        chunk_size -= chunk_size % cs
        offset = 0
        while offset < image.file_size:
            chunk = _pread_exact(fd, min(chunk_size, image.file_size - offset), offset)
            if offset == 0:
                chunk = patch_header(chunk, header_patch)
            sha.update(chunk)
            view = memoryview(chunk)
            total = count = 0
            for pos in range(0, len(chunk), cs):
                guest = guest_of[(offset + pos) // cs]
                if guest:
                    length = image._cluster_length(guest - 1)
                    total += ClusterDigest.cluster_value((guest - 1) * cs, view[pos:pos + length])
                    count += 1
            digest.add_values(total, count)
            offset += len(chunk)
        for index in compressed:
            digest.add(index * cs, image.read_cluster(index))
        return FileScan(sha.hexdigest(), digest.hexdigest(), stored, bytes_stored, image.file_size)


class Qcow2Chain:
    """A restore point and its backing files, newest first, read as one disk with few, large reads.

    ``images`` are :class:`Qcow2Image` objects or paths, newest..oldest, all with one cluster size; the chain
    closes the images it holds when ``owns`` (the default).  :meth:`open` follows the backing file names.
    The region map (:meth:`region`) resolves the clusters of a 512 MiB region through the chain once;
    :meth:`runs` turns it into runs of clusters that sit back to back in one file.
    """

    MAX_DEPTH = 1000

    def __init__(self, images, owns=True):
        self.images = []
        self._owns = owns
        try:
            for image in images:
                self.images.append(image if isinstance(image, Qcow2Image) else Qcow2Image(image))
        except BaseException:
            self.close()
            raise
        if not self.images:
            raise Qcow2Error('a chain needs at least one image')
        newest = self.images[0]
        self.virtual_size = newest.virtual_size
        self.cluster_size = newest.cluster_size
        if any(image.cluster_size != self.cluster_size for image in self.images):
            self.close()
            raise Qcow2Error('the files of the chain have different cluster sizes')
        self.l2_entries = newest.l2_entries
        self.guest_clusters = newest.guest_clusters
        self.region_size = self.l2_entries * self.cluster_size
        self._region_index = None
        self._region = None

    @classmethod
    def open(cls, path):
        """Open ``path`` and every backing file it names (relative names resolve against the directory of the
        image naming them)."""
        images = []
        seen = set()
        try:
            while path is not None:
                real = os.path.realpath(path)
                if real in seen or len(images) >= cls.MAX_DEPTH:
                    raise Qcow2Error('backing chain of %s loops or is too deep' % images[0].path)
                seen.add(real)
                image = Qcow2Image(path)
                images.append(image)
                if image.backing_format not in (None, 'qcow2'):
                    raise Qcow2Error('%s: backing format %s is not supported' % (path, image.backing_format))
                if image.backing_file is None:
                    path = None
                else:
                    path = os.path.join(os.path.dirname(os.path.abspath(path)), image.backing_file)
        except BaseException:
            for image in images:
                image.close()
            raise
        return cls(images)

    def close(self):
        if self._owns:
            for image in self.images:
                image.close()

    def truncate(self, count):
        """Keep only the ``count`` newest images (the older ones are not part of the disk)."""
        for image in self.images[count:]:
            if self._owns:
                image.close()
        del self.images[count:]
        self._region_index = self._region = None

    def skip(self, start, stop):
        """Leave out the images ``start..stop-1`` (the image before them now reads through ``stop``)."""
        for image in self.images[start:stop]:
            if self._owns:
                image.close()
        del self.images[start:stop]
        self._region_index = self._region = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- mapping ----------------------------------------------------------------------------------------

    def region(self, l1_index):
        """(sources, hosts) of the region's clusters: the chain index each cluster reads from (or SOURCE_NONE /
        SOURCE_ZERO) and its host offset there (-1 for a compressed cluster). The last region is cached."""
        if self._region_index == l1_index:
            return self._region
        base = l1_index * self.l2_entries
        count = max(0, min(self.l2_entries, self.guest_clusters - base))
        sources = [SOURCE_NONE] * count
        hosts = [0] * count
        pending = list(range(count))
        for position, image in enumerate(self.images):
            if not pending:
                break
            table = image._l2_table(l1_index)  # pylint: disable=protected-access
            if table is None:
                if base >= image.guest_clusters:
                    break  # beyond a smaller backing file: zeros
                continue
            unresolved = []
            for index in pending:
                if base + index >= image.guest_clusters:
                    continue  # zeros: nothing older can define it either
                entry = table[index]
                if not entry:
                    unresolved.append(index)
                    continue
                kind, host = image._classify(entry)  # pylint: disable=protected-access
                if kind is None:
                    unresolved.append(index)
                elif kind == KIND_ZERO:
                    sources[index] = SOURCE_ZERO
                elif kind == KIND_DATA:
                    if host % self.cluster_size:
                        raise Qcow2Error('%s: data cluster at host offset %d is not aligned' % (image.path, host))
                    sources[index] = position
                    hosts[index] = host
                else:  # compressed: read cluster by cluster
                    sources[index] = position
                    hosts[index] = -1
            pending = unresolved
        self._region_index, self._region = l1_index, (sources, hosts)
        return self._region

    def runs(self, offset=0, length=None):
        """Yield ``(guest_offset, length, source, host)`` covering [offset, offset+length) in guest order.

        ``source`` is a chain index (data at ``host`` in that file, contiguous for the whole run; ``host``
        -1 for a compressed cluster) or None (zeros). Runs are at most :data:`MAX_RUN` bytes long.
        """
        if length is None:
            length = self.virtual_size - offset
        end = offset + length
        if offset < 0 or length < 0 or end > self.virtual_size:
            raise Qcow2Error('read (%d, %d) is outside the %d-byte disk' % (offset, length, self.virtual_size))
        cs = self.cluster_size
        current = None  # [start, stop, source, host_start]
        pos = offset
        while pos < end:
            index = pos // cs
            sources, hosts = self.region(index // self.l2_entries)
            region_end = min(end, (index // self.l2_entries + 1) * self.region_size)
            while pos < region_end:
                index = pos // cs
                stop = min(region_end, (index + 1) * cs)
                slot = index % self.l2_entries
                source = sources[slot]
                host = hosts[slot] + (pos - index * cs) if source >= 0 and hosts[slot] >= 0 else -1
                source = source if source >= 0 else None
                if (current is not None and current[2] == source and current[1] - current[0] + stop - pos <= MAX_RUN
                        and (source is None or (host >= 0 and current[3] >= 0 and current[3] + current[1] - current[0] == host))):
                    current[1] = stop
                else:
                    if current is not None:
                        yield current[0], current[1] - current[0], current[2], current[3]
                    current = [pos, stop, source, host]
                pos = stop
        if current is not None:
            yield current[0], current[1] - current[0], current[2], current[3]

    def iter_allocated(self):
        """Yield, in guest order, the offsets of clusters whose resolved content comes from a data cluster.

        Clusters unallocated in every image and clusters whose newest definition is a zero flag read
        as zeros and are left out.
        """
        cs = self.cluster_size
        for l1_index in range(_ceil_div(self.guest_clusters, self.l2_entries)):
            sources = self.region(l1_index)[0]
            base = l1_index * self.l2_entries
            for slot, source in enumerate(sources):
                if source >= 0:
                    yield (base + slot) * cs

    def data_runs(self):
        """Like :meth:`runs` over the whole disk, without the zero runs."""
        for run in self.runs():
            if run[2] is not None:
                yield run

    # -- reading ----------------------------------------------------------------------------------------

    def read_run_into(self, view, run):
        """Fill ``view`` (``run`` length bytes) with the run's data."""
        offset, length, source, host = run
        if source is None:
            view[:length] = bytes(length)
            return
        image = self.images[source]
        if host < 0:
            cs = self.cluster_size
            pos = 0
            while pos < length:
                index = (offset + pos) // cs
                skip = offset + pos - index * cs
                data = image.read_cluster(index)
                step = min(length - pos, len(data) - skip)
                view[pos:pos + step] = data[skip:skip + step]
                pos += step
            return
        done = 0
        while done < length:
            got = os.preadv(image.fileno(), [view[done:length]], host + done)
            if got <= 0:
                raise Qcow2Error('%s: short read at host offset %d (the file ends first)' % (image.path, host + done))
            done += got

    def read(self, offset, length):
        """``length`` bytes at ``offset`` of the disk, resolving each cluster through the chain."""
        out = bytearray(length)
        view = memoryview(out)
        for run in self.runs(offset, length):
            start = run[0] - offset
            self.read_run_into(view[start:start + run[1]], run)
        return bytes(out)
