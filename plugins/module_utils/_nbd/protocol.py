# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NBD wire format: the constants and structures of the fixed-newstyle protocol.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
Numbers and layouts follow the NBD protocol document (NetworkBlockDevice/nbd doc/proto.md).
All integers on the wire are big-endian.
"""

from __future__ import absolute_import, division, print_function

import struct

__metaclass__ = type

# Handshake
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT": newstyle negotiation
OLDSTYLE_MAGIC = 0x00420281861253      # oldstyle servers send this instead of IHAVEOPT
OPTION_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0           # handshake flags (server) and client flags
FLAG_NO_ZEROES = 1 << 1

GREETING = struct.Struct('>QQH')       # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct('>I')
OPTION_REQUEST = struct.Struct('>QII')  # IHAVEOPT, option, length (+ data)
OPTION_REPLY = struct.Struct('>QIII')   # magic, option, reply type, length (+ data)
EXPORT_INFO = struct.Struct('>QH')      # NBD_OPT_EXPORT_NAME reply: size, transmission flags
EXPORT_INFO_ZEROES = 124                # padding after EXPORT_INFO unless NO_ZEROES was agreed

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5

REP_ACK = 1
REP_ERROR_BIT = 1 << 31
OPTION_REPLY_NAMES = {
    1: 'NBD_REP_ACK',
    2: 'NBD_REP_SERVER',
    3: 'NBD_REP_INFO',
    REP_ERROR_BIT | 1: 'NBD_REP_ERR_UNSUP',
    REP_ERROR_BIT | 2: 'NBD_REP_ERR_POLICY',
    REP_ERROR_BIT | 3: 'NBD_REP_ERR_INVALID',
    REP_ERROR_BIT | 4: 'NBD_REP_ERR_PLATFORM',
    REP_ERROR_BIT | 5: 'NBD_REP_ERR_TLS_REQD',
    REP_ERROR_BIT | 6: 'NBD_REP_ERR_UNKNOWN',
    REP_ERROR_BIT | 7: 'NBD_REP_ERR_SHUTDOWN',
    REP_ERROR_BIT | 8: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
    REP_ERROR_BIT | 9: 'NBD_REP_ERR_TOO_BIG',
}
REP_ERR_UNSUP = REP_ERROR_BIT | 1
REP_ERR_POLICY = REP_ERROR_BIT | 2

# Transmission
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
REQUEST = struct.Struct('>IHHQQI')     # magic, command flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct('>IIQ')   # magic, error, cookie

CMD_READ = 0
CMD_DISC = 2

TRANSMISSION_FLAG_NAMES = (
    (1 << 0, 'HAS_FLAGS'),
    (1 << 1, 'READ_ONLY'),
    (1 << 2, 'SEND_FLUSH'),
    (1 << 3, 'SEND_FUA'),
    (1 << 4, 'ROTATIONAL'),
    (1 << 5, 'SEND_TRIM'),
    (1 << 6, 'SEND_WRITE_ZEROES'),
    (1 << 7, 'SEND_DF'),
    (1 << 8, 'CAN_MULTI_CONN'),
    (1 << 9, 'SEND_RESIZE'),
    (1 << 10, 'SEND_CACHE'),
    (1 << 11, 'SEND_FAST_ZERO'),
)

ERRNO_NAMES = {
    1: 'EPERM',
    5: 'EIO',
    12: 'ENOMEM',
    22: 'EINVAL',
    28: 'ENOSPC',
    75: 'EOVERFLOW',
    95: 'ENOTSUP',
    108: 'ESHUTDOWN',
}

# Portable request limits: without NBD_INFO_BLOCK_SIZE (unavailable with NBD_OPT_EXPORT_NAME)
# a client should stay within 32 MiB per request and 512-byte alignment.
MAX_REQUEST_SIZE = 32 * 1024 * 1024
REQUEST_ALIGNMENT = 512
# Sanity bound for announced export sizes (XenServer disks are at most 16 TiB): 1 PiB.
MAX_EXPORT_SIZE = 1 << 50


def option_reply_name(reply_type):
    """Return the symbolic name of an option reply type, e.g. ``NBD_REP_ERR_POLICY``."""
    return OPTION_REPLY_NAMES.get(reply_type, 'unknown reply 0x%08x' % reply_type)


def errno_name(error):
    """Return the symbolic name of an NBD error value (unknown values count as EINVAL)."""
    return ERRNO_NAMES.get(error, 'error %d (treated as EINVAL)' % error)


def transmission_flag_names(flags):
    """Return the names of the transmission flags set in ``flags``."""
    return [name for bit, name in TRANSMISSION_FLAG_NAMES if flags & bit]
