# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""XenServer lab: a XenAPI simulator with a real NBD front (nbdkit), for tests and demos."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type
