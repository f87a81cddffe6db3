# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fill a (small, test-only) file system so that the next writes hit ENOSPC."""

from __future__ import absolute_import, division, print_function

import os

__metaclass__ = type


def fill(mount_point, leave):
    """Fill the file system at ``mount_point``, then free ``leave`` bytes; returns the filler's path."""
    filler = os.path.join(mount_point, 'filler')
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b'\xff' * 4096) == 4096:
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler
