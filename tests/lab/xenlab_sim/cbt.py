# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Changed Block Tracking logs, modelled on SM's .cbtlog chain.

Every CBT-enabled VDI (live or snapshot) has one log: the set of 64 KiB blocks written while it
was the leaf, plus parent/child pointers by VDI uuid. A snapshot takes over the live VDI's log,
and the live VDI starts a fresh one whose parent is the snapshot.
"""

from __future__ import absolute_import, division, print_function

import base64

__metaclass__ = type

BLOCK_SIZE = 64 * 1024


class Unrelated(Exception):
    """The two VDIs are not on one chain (SM: "Source and target VDI are unrelated")."""


class CbtLog:
    def __init__(self, size, parent=None):
        self.size = size
        self.parent = parent
        self.child = None
        self.blocks = set()


def block_range(offset, length):
    """Indices of the 64 KiB blocks touched by a write of ``length`` bytes at ``offset``."""
    if length <= 0:
        return range(0)
    return range(offset // BLOCK_SIZE, (offset + length - 1) // BLOCK_SIZE + 1)


def encode_bitmap(blocks, size):
    """xapi's list_changed_blocks result: base64, block i is bit (0x80 >> i % 8) of byte i // 8."""
    nblocks = -(-size // BLOCK_SIZE)
    buf = bytearray(-(-nblocks // 8))
    for i in blocks:
        if i < nblocks:
            buf[i // 8] |= 0x80 >> (i % 8)
    return base64.b64encode(bytes(buf)).decode('ascii')


class CbtLogs:
    """All logs of the pool, keyed by VDI uuid."""

    def __init__(self):
        self.logs = {}

    def has(self, uuid):
        return uuid in self.logs

    def enable(self, uuid, size):
        if uuid not in self.logs:
            self.logs[uuid] = CbtLog(size)

    def disable(self, uuid):
        """Delete the leaf log; the parent's child pointer is nulled, so the chain ends there."""
        log = self.logs.pop(uuid, None)
        if log and log.parent in self.logs:
            self.logs[log.parent].child = None

    def mark(self, uuid, offset, length):
        log = self.logs.get(uuid)
        if log is not None:
            log.blocks.update(block_range(offset, length))

    def snapshot(self, vdi_uuid, snap_uuid):
        """Rotate: the snapshot takes the leaf log; the leaf gets an empty one after it."""
        log = self.logs.pop(vdi_uuid, None)
        if log is None:
            return
        self.logs[snap_uuid] = log
        if log.parent in self.logs:
            self.logs[log.parent].child = snap_uuid
        fresh = CbtLog(log.size, parent=snap_uuid)
        log.child = vdi_uuid
        self.logs[vdi_uuid] = fresh

    def destroy(self, uuid):
        """Unlink a log from its chain, ORing its blocks into the child (SM coalesce_bitmap)."""
        log = self.logs.pop(uuid, None)
        if log is None:
            return
        parent = self.logs.get(log.parent)
        child = self.logs.get(log.child)
        if parent is not None:
            parent.child = log.child if child is not None else None
        if child is not None:
            child.parent = log.parent if parent is not None else None
            child.blocks |= log.blocks

    def changed_blocks(self, from_uuid, to_uuid):
        """OR of every log after ``from_uuid`` up to and including ``to_uuid``."""
        if from_uuid not in self.logs or to_uuid not in self.logs:
            raise Unrelated()
        blocks = set()
        current = self.logs[from_uuid].child
        seen = set()
        while current is not None and current not in seen:
            seen.add(current)
            log = self.logs.get(current)
            if log is None:
                break
            blocks |= log.blocks
            if current == to_uuid:
                return blocks, log.size
            current = log.child
        raise Unrelated()
