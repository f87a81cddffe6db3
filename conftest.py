# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Make ``ansible_collections.xenserver.cbt_backup`` importable for plain ``pytest``.

ansible-test runs from a real ``ansible_collections/xenserver/cbt_backup`` copy and needs nothing;
a plain checkout gets a symlink tree under ``.tmp/collections`` put first on ``sys.path``.
"""

from __future__ import absolute_import, division, print_function

import os
import sys

__metaclass__ = type

_ROOT = os.path.dirname(os.path.abspath(__file__))


def _link_collection():
    parts = _ROOT.split(os.sep)
    if parts[-3:] == ['ansible_collections', 'xenserver', 'cbt_backup']:
        return
    base = os.path.join(_ROOT, '.tmp', 'collections')
    link_dir = os.path.join(base, 'ansible_collections', 'xenserver')
    link = os.path.join(link_dir, 'cbt_backup')
    if not os.path.islink(link):
        os.makedirs(link_dir, exist_ok=True)
        os.symlink(_ROOT, link)
    sys.path.insert(0, base)


_link_collection()
